/*
 * crash_nested.c: on_vm_started calls parse_config(NULL), which writes through the NULL pointer
 * (SIGSEGV, address 0x0).
 *
 * The tests build it twice, without and with -g: the crash report then names
 * `parse_config (crash_nested.so+0x...)` called from `on_vm_started (...)`, or
 * `parse_config (crash_nested.c:<line of CRASH_HERE>)` called from
 * `on_vm_started (crash_nested.c:<line of CALLED_HERE>)`.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `about_to_crash`; never `did_not_crash`.
 */
#include "ph_test.h"

struct config {
    int port;
};

__attribute__((noinline)) static int parse_config(struct config *volatile config)
{
    config->port = 8080; /* CRASH_HERE */
    return config->port;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("about_to_crash");
    int port = parse_config(NULL); /* CALLED_HERE */
    ph_log("did_not_crash");
    return port == 8080 ? -EFAULT : -EINVAL;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
