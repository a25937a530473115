/*
 * crash_in_vm_started.c: on_vm_started crashes its host with a real invalid memory write (SIGSEGV).
 *
 * Not raise()/abort(): the host may be pid 1 of a pid namespace, where signals it sends itself are
 * ignored. The pointer is read through a volatile variable so no optimisation level can turn the write
 * into a trap instruction (SIGILL) or drop it.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `about_to_crash`, then the VM start fails with
 * "plugin '<name>' crashed: ... SIGSEGV ..."; never `did_not_crash`.
 * on_vm_stopping (if this plugin's host is ever asked again) logs `vm_stopping`.
 */
#include "ph_test.h"

static int *volatile null_pointer = NULL;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("about_to_crash");
    *(volatile int *)null_pointer = 1;
    ph_log("did_not_crash");
    return -EFAULT;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    ph_log("vm_stopping");
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
