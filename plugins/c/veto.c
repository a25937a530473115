/*
 * veto.c: on_vm_started always vetoes, alternating the two forms of a veto.
 *
 * Call n (1, 2, 3, ... counted per host process):
 *   odd n:  plugin_error("veto number <n>") then return -22 (-EINVAL): the user sees the message.
 *   even n: return -5 (-EIO) without a message.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`; `veto n=<n> error_status=<status returned by plugin_error, 0 expected>` (odd n);
 * `veto n=<n>` (even n); `vm_stopping` (every plugin gets on_vm_stopping after a vetoed start).
 */
#include "ph_test.h"

#include <stdatomic.h>

static const struct plughost_api_v1 *api;
static atomic_int calls;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int n = atomic_fetch_add(&calls, 1) + 1;
    if (n % 2 == 1) {
        char msg[64];
        snprintf(msg, sizeof msg, "veto number %d", n);
        plughost_status s = api->plugin_error(msg);
        ph_log("veto n=%d error_status=%d", n, s);
        return -22;
    }
    ph_log("veto n=%d", n);
    return -5;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    ph_log("vm_stopping");
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
