/*
 * error_in_vm_stopping.c: on_vm_stopping calls plugin_error("cannot stop") and returns -EIO:
 * plugin_error outside a hook that may veto, which `plughost check` fails ("plugin_error outside a
 * veto hook: cannot stop (status -5)"). on_vm_started returns 0.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`.
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    api->plugin_error("cannot stop");
    return -EIO;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *the_api,
                                                        struct plughost_hooks_v1 *hooks)
{
    api = the_api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    return PLUGHOST_OK;
}
