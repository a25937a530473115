/*
 * crash_in_vm_stopping.c: on_vm_started succeeds; on_vm_stopping (a teardown hook, which may not veto)
 * crashes its host with a real invalid memory write (SIGSEGV), as crash_in_vm_started.c does.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `vm_started`, `about_to_crash`; the stop succeeds, and the next VM start
 * fails fast with "plugin '<name>' crashed: killed by signal SIGSEGV"; never `did_not_crash`.
 */
#include "ph_test.h"

static int *volatile null_pointer = NULL;

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
    ph_log("about_to_crash");
    *(volatile int *)null_pointer = 1;
    ph_log("did_not_crash");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    return PLUGHOST_OK;
}
