/*
 * hostile_oversized_frame.c: on_vm_started sends the service one 200 KiB datagram (a frame header
 * followed by zeros) on the host's channel, more than three times the 64 KiB frame limit.
 *
 * It finds the channel as garbage_writer.c does (the one SOCK_SEQPACKET fd), raises its SO_SNDBUF so
 * the kernel accepts the datagram whole, logs `sending bytes=204800 fd=<fd>`, sends it, then sleeps
 * 10 s and returns 0. The service must refuse the frame by its size (the kernel tells it the real
 * length: MSG_TRUNC) and kill the host long before the sleep ends.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `witness pid=` (with PH_MARKER), `sending bytes=204800 fd=`; the VM start
 * fails with "plugin 'hostile_oversized_frame' crashed: protocol violation: sent a frame of 204800
 * bytes (limit 65536)"; never `slept`.
 */
#include "ph_test.h"
#include "ph_hostile.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#define FRAME_BYTES (200 * 1024)

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int channel = ph_find_channel();
    unsigned char *frame = calloc(FRAME_BYTES, 1);
    if (channel < 0 || frame == NULL) {
        ph_log("no_channel");
        return -EIO;
    }
    int sndbuf = 4 * FRAME_BYTES;
    (void)setsockopt(channel, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    memcpy(frame, "PH\x01\x00", 4);
    ph_log("sending bytes=%d fd=%d", FRAME_BYTES, channel);
    if (send(channel, frame, FRAME_BYTES, MSG_NOSIGNAL) < 0)
        ph_log("send_failed errno=%d", errno);
    free(frame);
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
