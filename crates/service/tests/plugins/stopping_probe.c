/*
 * stopping_probe.c: one API call from each teardown hook of a user session (a test plugin of
 * crates/service; built by tests/contract.rs with the same flags as plugins/c).
 *
 * on_vm_started(s)   -> `vm_started session=`
 * on_vm_stopping(s): mount_folder(s, "/", "/mnt/probe", true, "probe") -> `stopping_mount=<status>`
 *   (a `vm stop`: the VM still runs, 0; a service shutdown: PLUGHOST_E_SHUTTING_DOWN)
 * Env: PH_LOG.
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    ph_log("vm_started session=%u", session->id);
    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    ph_log("stopping_mount=%d", api->mount_folder(session->id, "/", "/mnt/probe", true, "probe"));
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
