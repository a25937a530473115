/*
 * fork_daemon.c: on_vm_started leaves a daemon behind (double fork + setsid) that outlives the hook.
 *
 * The child calls setsid(), forks again and _exit(0)s; the grandchild renames itself to $PH_MARKER
 * (prctl(PR_SET_NAME), at most 15 characters, visible in /proc/<pid>/comm), closes nothing (it keeps every
 * inherited fd, the host's channel to the service included) and sleeps forever. The hook waits for the
 * intermediate child, logs `daemon_started` and returns 0.
 *
 * Env: PH_LOG, PH_MARKER (process name of the daemon; default "ph_daemon").
 * Tests expect: `loaded`, `daemon_started`; then, when the plugin's host is stopped (or the service
 * exits), no process named $PH_MARKER survives (the host's process containment must reap it).
 */
#include "ph_test.h"

#include <sys/prctl.h>
#include <sys/wait.h>

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    /* Everything the children need is prepared before fork (the host may be multithreaded). */
    const char *marker = ph_env("PH_MARKER", "ph_daemon");

    pid_t child = fork();
    if (child < 0) {
        ph_log("fork_failed errno=%d", errno);
        return -errno;
    }
    if (child == 0) {
        setsid();
        pid_t grandchild = fork();
        if (grandchild != 0)
            _exit(grandchild < 0 ? 1 : 0);
        prctl(PR_SET_NAME, (unsigned long)marker, 0, 0, 0);
        for (;;)
            sleep(1);
    }

    int wstatus = 0;
    while (waitpid(child, &wstatus, 0) < 0 && errno == EINTR) {
    }
    ph_log("daemon_started");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
