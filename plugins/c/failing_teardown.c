/*
 * failing_teardown.c: every hook that may NOT veto fails (returns -1); the ones that may veto succeed.
 *
 * Returning 0: on_vm_started, on_distribution_started, on_container_session_created (they may veto; keep
 * them succeeding so the flow goes on).
 * Returning -1: on_vm_stopping, on_distribution_stopping, on_distribution_registered,
 * on_distribution_unregistered, on_container_session_stopping, on_session_vm_started,
 * on_session_vm_stopping. The service must only log those errors and carry on.
 *
 * Env: PH_LOG.
 * Tests expect one line per call, named for the hook: `loaded`, `vm_started`, `vm_stopping`,
 * `distribution_started`, `distribution_stopping`, `distribution_registered`, `distribution_unregistered`,
 * `container_session_created`, `container_session_stopping`, `session_vm_started`, `session_vm_stopping`.
 */
#include "ph_test.h"

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
    return -1;
}

static plughost_status on_distribution_started(const struct plughost_session *session,
                                               const struct plughost_distribution *d)
{
    (void)session;
    (void)d;
    ph_log("distribution_started");
    return PLUGHOST_OK;
}

static plughost_status on_distribution_stopping(const struct plughost_session *session,
                                                const struct plughost_distribution *d)
{
    (void)session;
    (void)d;
    ph_log("distribution_stopping");
    return -1;
}

static plughost_status on_distribution_registered(const struct plughost_session *session,
                                                  const struct plughost_offline_distribution *d)
{
    (void)session;
    (void)d;
    ph_log("distribution_registered");
    return -1;
}

static plughost_status on_distribution_unregistered(const struct plughost_session *session,
                                                    const struct plughost_offline_distribution *d)
{
    (void)session;
    (void)d;
    ph_log("distribution_unregistered");
    return -1;
}

static plughost_status on_container_session_created(const struct plughost_container_session *cs)
{
    (void)cs;
    ph_log("container_session_created");
    return PLUGHOST_OK;
}

static plughost_status on_container_session_stopping(const struct plughost_container_session *cs)
{
    (void)cs;
    ph_log("container_session_stopping");
    return -1;
}

static plughost_status on_session_vm_started(const struct plughost_container_session *cs)
{
    (void)cs;
    ph_log("session_vm_started");
    return -1;
}

static plughost_status on_session_vm_stopping(const struct plughost_container_session *cs)
{
    (void)cs;
    ph_log("session_vm_stopping");
    return -1;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    hooks->on_distribution_started = on_distribution_started;
    hooks->on_distribution_stopping = on_distribution_stopping;
    hooks->on_distribution_registered = on_distribution_registered;
    hooks->on_distribution_unregistered = on_distribution_unregistered;
    hooks->on_container_session_created = on_container_session_created;
    hooks->on_container_session_stopping = on_container_session_stopping;
    hooks->on_session_vm_started = on_session_vm_started;
    hooks->on_session_vm_stopping = on_session_vm_stopping;
    return PLUGHOST_OK;
}
