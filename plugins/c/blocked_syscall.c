/*
 * blocked_syscall.c — makes a syscall the default seccomp profile forbids.
 *
 * on_vm_started logs `calling_ptrace`, calls ptrace(PTRACE_TRACEME), logs
 * `ptrace_returned value=<rc>` if it comes back (it does only with seccomp off) and returns 0.
 */
#include <sys/ptrace.h>

#include "ph_test.h"

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("calling_ptrace");
    long rc = ptrace(PTRACE_TRACEME, 0, NULL, NULL);
    ph_log("ptrace_returned value=%ld", rc);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
