/*
 * abort_in_vm_started.c: on_vm_started calls check_limits(), which calls abort() (SIGABRT).
 *
 * The crash starts in libc (raise); the report finds the plugin's frames on the stack and names
 * `check_limits`, called from `on_vm_started`.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `about_to_abort`.
 */
#include "ph_test.h"

#include <stdlib.h>

__attribute__((noinline)) static void check_limits(const struct plughost_vm_settings *settings)
{
    if (settings != NULL)
        abort();
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    ph_log("about_to_abort");
    check_limits(settings);
    return -EFAULT;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
