/*
 * nested_call.c: a hook with exactly one nested API call, for the benchmarks.
 *
 * on_vm_started calls mount_folder(sid, $PH_DIR (default "/"), "/mnt/n", true, "n") once and returns its
 * status; on_vm_stopping returns 0. No logging in hooks.
 *
 * Env: PH_LOG (optional), PH_DIR (optional, default "/").
 * Tests expect: `loaded` (when PH_LOG is set); the VM starts (the mount succeeded).
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    return api->mount_folder(session->id, ph_env("PH_DIR", "/"), "/mnt/n", true, "n");
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    return PLUGHOST_OK;
}
