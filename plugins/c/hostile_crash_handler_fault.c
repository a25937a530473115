/*
 * hostile_crash_handler_fault.c: on_vm_started makes the host's alternate signal stack read-only,
 * then writes through NULL: the kernel cannot even start the crash handler (its frame would go on
 * that stack) and kills the process with SIGSEGV, the way a fault inside the handler ends.
 *
 * The error is today's, exactly "plugin 'hostile_crash_handler_fault' crashed: killed by signal
 * SIGSEGV", and nothing hangs.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `alt_stack_readonly` (or `no_alt_stack` when the host set none).
 */
#include "ph_test.h"

#include <signal.h>
#include <sys/mman.h>

static int *volatile null_pointer = NULL;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    stack_t current;
    if (sigaltstack(NULL, &current) == 0 && !(current.ss_flags & SS_DISABLE) &&
        mprotect(current.ss_sp, current.ss_size, PROT_READ) == 0)
        ph_log("alt_stack_readonly");
    else
        ph_log("no_alt_stack");
    *null_pointer = 1;
    return -EFAULT;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
