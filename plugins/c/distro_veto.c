/*
 * distro_veto.c: vetoes every distribution start with a message; the VM itself starts fine.
 *
 * on_distribution_started: plugin_error("distribution refused by policy"), return -1.
 * A vetoed distribution must get no on_distribution_stopping.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `vm_started`, `vm_stopping`, `distribution_started name=<name>`, and NO
 * `distribution_stopping name=<name>` line for a vetoed distribution.
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("vm_started");
    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    ph_log("vm_stopping");
    return PLUGHOST_OK;
}

static plughost_status on_distribution_started(const struct plughost_session *session,
                                               const struct plughost_distribution *d)
{
    (void)session;
    api->plugin_error("distribution refused by policy");
    char name[256];
    ph_log("distribution_started name=%s", ph_tok(d->name, name, sizeof name));
    return -1;
}

static plughost_status on_distribution_stopping(const struct plughost_session *session,
                                                const struct plughost_distribution *d)
{
    (void)session;
    char name[256];
    ph_log("distribution_stopping name=%s", ph_tok(d->name, name, sizeof name));
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    hooks->on_distribution_started = on_distribution_started;
    hooks->on_distribution_stopping = on_distribution_stopping;
    return PLUGHOST_OK;
}
