/*
 * hostile_stack_smash.c: on_vm_started points the stack pointer at unmapped memory (0x1000) and
 * pushes: SIGSEGV with no readable stack at all.
 *
 * The handler runs on the alternate stack; its copy of the stack is empty, so the report has the
 * faulting frame only: "plugin 'hostile_stack_smash' crashed: killed by signal SIGSEGV (address
 * 0xff8) in on_vm_started (hostile_stack_smash.so+0x...)". (Not x86_64: writes through NULL.)
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `smashing`.
 */
#include "ph_test.h"

static int *volatile null_pointer = NULL;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("smashing");
#if defined(__x86_64__)
    __asm__ volatile("mov $0x1000, %%rsp\n\tpush %%rax" ::: "memory");
#endif
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
