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
#include "ph_hostile.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int channel = ph_find_channel();
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
    ph_fork_witness();
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
