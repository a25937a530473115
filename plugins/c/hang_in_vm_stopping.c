/*
 * hang_in_vm_stopping.c — ignores SIGTERM and blocks forever in on_vm_stopping.
 *
 * on_vm_started logs `vm_started` and returns 0; on_vm_stopping logs `stopping_forever`, sets
 * SIGTERM to SIG_IGN and pauses forever. Only the watchdog's SIGKILL ends it. Used by the shutdown
 * test: stopping the VM must complete within the hook's deadline, and shutting the manager down
 * must not wait for this host.
 */
#include <signal.h>
#include <unistd.h>

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
    ph_log("stopping_forever");
    signal(SIGTERM, SIG_IGN);
    for (;;)
        pause();
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    signal(SIGTERM, SIG_IGN);
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    return PLUGHOST_OK;
}
