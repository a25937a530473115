/*
 * hostile_crash_handler_reset.c: on_vm_started puts SIGSEGV back to its default action (taking the
 * host's crash handler away), then writes through NULL.
 *
 * No report can be written: the error is today's, exactly
 * "plugin 'hostile_crash_handler_reset' crashed: killed by signal SIGSEGV".
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `handler_reset`.
 */
#include "ph_test.h"

#include <signal.h>

static int *volatile null_pointer = NULL;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    signal(SIGSEGV, SIG_DFL);
    ph_log("handler_reset");
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
