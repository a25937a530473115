/*
 * csession_veto.c: vetoes every container session (a test plugin of crates/service; built by
 * tests/contract.rs with the same flags as plugins/c).
 *
 * on_container_session_created(cs): plugin_error("no container for you"), returns -EPERM
 *                                   -> `created id= error_status=`
 * on_container_session_stopping(cs) -> `csession_stopping id=` (delivered after the veto too)
 * on_session_vm_started(cs)         -> `session_vm_started id=` (must never appear)
 * Env: PH_LOG.
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;

static plughost_status on_container_session_created(const struct plughost_container_session *cs)
{
    plughost_status s = api->plugin_error("no container for you");
    ph_log("created id=%u error_status=%d", cs->id, s);
    return -EPERM;
}

static plughost_status on_container_session_stopping(const struct plughost_container_session *cs)
{
    ph_log("csession_stopping id=%u", cs->id);
    return PLUGHOST_OK;
}

static plughost_status on_session_vm_started(const struct plughost_container_session *cs)
{
    ph_log("session_vm_started id=%u", cs->id);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_container_session_created = on_container_session_created;
    hooks->on_container_session_stopping = on_container_session_stopping;
    hooks->on_session_vm_started = on_session_vm_started;
    return PLUGHOST_OK;
}
