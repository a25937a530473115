/*
 * leak_fd_per_vm.c: every on_vm_started opens /dev/null and never closes it (an fd leak that
 * `plughost check` must name: "open fds grew from A to B across N lifecycles"). on_vm_stopping
 * returns 0.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`.
 */
#include "ph_test.h"

#include <fcntl.h>

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    return open("/dev/null", O_RDONLY | O_CLOEXEC) >= 0 ? PLUGHOST_OK : PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    return PLUGHOST_OK;
}
