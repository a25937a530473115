/*
 * message_then_success.c: on_vm_started sets an error message, tries to set a second one, then returns
 * success anyway (a contract violation: a hook that set a message and returned success).
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`; `message_then_success first=<s1> second=<s2>` with s1 = 0 and
 * s2 = PLUGHOST_E_ILLEGAL_STATE (-10003); the service treats the hook's result as
 * PLUGHOST_E_ILLEGAL_STATE (the start fails).
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    plughost_status s1 = api->plugin_error("message set but success returned");
    plughost_status s2 = api->plugin_error("second message");
    ph_log("message_then_success first=%d second=%d", s1, s2);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
