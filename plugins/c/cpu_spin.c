/*
 * cpu_spin.c — burns CPU in on_vm_started until something stops it (the host's RLIMIT_CPU, or the
 * hook's deadline). Logs `spinning` first.
 */
#include "ph_test.h"

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("spinning");
    volatile unsigned long n = 0;
    for (;;)
        n++;
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
