/*
 * hostile_empty_frame.c: on_vm_started sends a zero-length datagram on the host's channel.
 *
 * SOCK_SEQPACKET delivers empty messages; a receiver that takes every 0-byte read for end-of-file
 * mistakes this for the host closing its channel. It logs `sending bytes=0 fd=<fd>`, sends it on the
 * channel (found as garbage_writer.c does), sleeps 10 s and returns 0, keeping the channel open.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `sending bytes=0`; the VM start fails at once with "plugin
 * 'hostile_empty_frame' crashed: protocol violation: sent an empty frame"; never `slept`.
 */
#include "ph_test.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>

static int find_channel(void)
{
    for (int fd = 0; fd < 1024; fd++) {
        int type = 0;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET)
            return fd;
    }
    return -1;
}

static void fork_witness(void)
{
    const char *marker = getenv("PH_MARKER");
    if (marker == NULL || marker[0] == '\0')
        return;
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        prctl(PR_SET_NAME, (unsigned long)marker, 0, 0, 0);
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        for (int fd = 0; fd < 1024; fd++)
            close(fd);
        for (;;)
            pause();
    }
    ph_log("witness pid=%d", (int)pid);
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int channel = find_channel();
    if (channel < 0) {
        ph_log("no_channel");
        return -EIO;
    }
    static const unsigned char frame[1] = {0};
    size_t len = 0;
    ph_log("sending bytes=%zu fd=%d", len, channel);
    if (send(channel, frame, len, MSG_NOSIGNAL) < 0)
        ph_log("send_failed errno=%d", errno);
    sleep(10);
    ph_log("slept");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    fork_witness();
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
