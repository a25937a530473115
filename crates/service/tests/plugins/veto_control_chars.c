/*
 * veto_control_chars.c: vetoes every VM start with an error message that holds terminal controls:
 * an OSC title sequence, a carriage return and a forged line, and a C1 CSI (U+009B) clearing the
 * screen. The user who ran `plughostctl vm start` (root, say) would see them on their terminal.
 *
 * on_vm_started: plugin_error(...), returns -EPERM. Env: PH_LOG (`loaded`).
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    api->plugin_error("no\x1b]0;owned\x07\rFORGED: all good\xc2\x9b" "2J");
    return -EPERM;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
