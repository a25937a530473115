/*
 * fork_then_crash.c: on_vm_started forks a child that keeps every inherited fd open (the host's channel
 * to the service included) and pauses forever, then the host crashes (invalid memory write, SIGSEGV).
 *
 * The service must still see the crash promptly (it cannot rely on EOF on the channel, which the child
 * keeps open) and the child must not survive the host's cleanup.
 *
 * Env: PH_LOG, PH_MARKER (process name of the child; default "ph_orphan").
 * Tests expect: `loaded`, `forked`; the VM start fails with "plugin '<name>' crashed: ..."; afterwards no
 * process named $PH_MARKER remains.
 */
#include "ph_test.h"

#include <sys/prctl.h>

static int *volatile null_pointer = NULL;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    const char *marker = ph_env("PH_MARKER", "ph_orphan");

    pid_t child = fork();
    if (child < 0) {
        ph_log("fork_failed errno=%d", errno);
        return -errno;
    }
    if (child == 0) {
        prctl(PR_SET_NAME, (unsigned long)marker, 0, 0, 0);
        for (;;)
            pause();
    }

    ph_log("forked");
    *(volatile int *)null_pointer = 1;
    ph_log("did_not_crash");
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
