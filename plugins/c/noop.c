/*
 * noop.c: sets every hook to a function that returns 0 and does nothing else (no logging in hooks).
 * Used by the benchmarks to measure the bare cost of delivering a hook.
 *
 * Env: PH_LOG (optional).
 * Tests expect: `loaded` (only written when PH_LOG is set), every hook succeeds.
 */
#include "ph_test.h"

static plughost_status vm_started(const struct plughost_session *session, const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    return PLUGHOST_OK;
}

static plughost_status session_hook(const struct plughost_session *session)
{
    (void)session;
    return PLUGHOST_OK;
}

static plughost_status distribution_hook(const struct plughost_session *session,
                                         const struct plughost_distribution *distribution)
{
    (void)session;
    (void)distribution;
    return PLUGHOST_OK;
}

static plughost_status offline_distribution_hook(const struct plughost_session *session,
                                                 const struct plughost_offline_distribution *distribution)
{
    (void)session;
    (void)distribution;
    return PLUGHOST_OK;
}

static plughost_status container_hook(const struct plughost_container_session *container_session)
{
    (void)container_session;
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = vm_started;
    hooks->on_vm_stopping = session_hook;
    hooks->on_distribution_started = distribution_hook;
    hooks->on_distribution_stopping = distribution_hook;
    hooks->on_distribution_registered = offline_distribution_hook;
    hooks->on_distribution_unregistered = offline_distribution_hook;
    hooks->on_container_session_created = container_hook;
    hooks->on_container_session_stopping = container_hook;
    hooks->on_session_vm_started = container_hook;
    hooks->on_session_vm_stopping = container_hook;
    return PLUGHOST_OK;
}
