/*
 * hostile_huge_length.c: on_vm_started sends a frame whose string length prefix claims 2^60 bytes.
 *
 * The frame is a well-formed header and the start of `HostMsg::HookDone { id: 1, status: 0, message:
 * Some(..) }` (postcard: variant 3, varint id 1, zigzag status 0, option tag 1), then the string's
 * LEB128 length 2^60 followed by only "abc". It logs `sending bytes=<n> fd=<fd>`, sends it on the
 * channel (found as garbage_writer.c does), sleeps 10 s and returns 0. The service must refuse the
 * frame without trusting (or allocating) the claimed length, and kill the host.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `sending bytes=`; the VM start fails with "plugin 'hostile_huge_length'
 * crashed: protocol violation: sent a malformed frame: malformed message body: Hit the end of buffer,
 * expected more data"; never `slept`.
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
    unsigned char frame[32] = {'P', 'H', 1, 0, 3, 1, 0, 1};
    size_t len = 8;
    uint64_t claim = (uint64_t)1 << 60;
    while (claim >= 0x80) {
        frame[len++] = (unsigned char)(claim | 0x80);
        claim >>= 7;
    }
    frame[len++] = (unsigned char)claim;
    memcpy(frame + len, "abc", 3);
    len += 3;
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
