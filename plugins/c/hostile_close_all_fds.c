/*
 * hostile_close_all_fds.c: on_vm_started closes every fd from 0 to 1023, then returns 0.
 *
 * That closes stdin/stdout/stderr and the host's channel to the service. It logs `closed_all` (the log
 * opens its file anew) and returns 0: the host can no longer answer and ends (sending the answer
 * fails, the channel's fd is no longer the channel: exit code 112). The service must classify the end
 * of the host and carry on.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `closed_all`; the VM start fails with "plugin 'hostile_close_all_fds'
 * crashed: closed its channel to the service".
 */
#include "ph_test.h"
#include "ph_hostile.h"

#include <signal.h>
#include <sys/prctl.h>

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    for (int fd = 0; fd < 1024; fd++)
        close(fd);
    ph_log("closed_all");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    ph_fork_witness();
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
