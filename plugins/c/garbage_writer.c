/*
 * garbage_writer.c: on_vm_started writes garbage into the host's channel to the service.
 *
 * For every fd 0..1023 whose getsockopt(SO_TYPE) is SOCK_SEQPACKET, it sends 64 bytes of 0xff
 * (MSG_NOSIGNAL) and logs `garbage fd=<fd>`; then it sleeps 10 s and returns 0. The service must treat
 * the garbage as a protocol violation and kill the host long before the sleep ends.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, at least one `garbage fd=<fd>`; the VM start fails with
 * "plugin '<name>' crashed: protocol violation ..." well within 10 s; never `slept`.
 */
#include "ph_test.h"

#include <sys/socket.h>

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    unsigned char garbage[64];
    memset(garbage, 0xff, sizeof garbage);

    for (int fd = 0; fd < 1024; fd++) {
        int type = 0;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET)
            continue;
        (void)send(fd, garbage, sizeof garbage, MSG_NOSIGNAL);
        ph_log("garbage fd=%d", fd);
    }

    sleep(10);
    ph_log("slept");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
