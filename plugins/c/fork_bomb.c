/*
 * fork_bomb.c: on_vm_started forks children that fork again, until the kernel refuses a fork.
 *
 * The hook's process forks up to 64 children; each child renames itself $PH_MARKER and forks up to 4
 * children of its own (named the same, forking no further), then every child pauses forever. Every
 * process stops forking at its first refused fork. The caps (at most 321 processes) keep a machine
 * without the limit safe; with a process limit below 64, the hook's process itself is refused,
 * however its children's forks interleave with its own.
 *
 * When a fork of the hook's process is refused it logs `fork_refused forked=<its children> errno=<e>`,
 * sets plugin_error("fork refused at the process limit") and returns -errno (-EAGAIN, -11). If no fork
 * was refused it logs `fork_cap_reached forked=64` and returns 0.
 *
 * Env: PH_LOG, PH_MARKER (process name of the children; default "ph_bomb").
 * Tests expect: `loaded`, `fork_refused forked= errno=11`; the VM start fails with "plugin 'fork_bomb'
 * returned a fatal error: fork refused at the process limit (status -11 (EAGAIN))"; the processes stay bounded
 * by the limit and none survives the host.
 */
#include "ph_test.h"

#include <sys/prctl.h>

/* Children of the hook's process, and of each of those. */
#define PH_FORK_CAP 64
#define PH_FORK_CAP_CHILD 4

static const struct plughost_api_v1 *api;

/* Forks up to PH_FORK_CAP children (PH_FORK_CAP_CHILD at depth 1); at depth 0 each child forks its
 * own, then every child pauses forever. Returns the number forked; *refused_errno is the errno of the
 * refused fork, or 0. */
static int fork_children(const char *marker, int depth, int *refused_errno)
{
    int cap = depth == 0 ? PH_FORK_CAP : PH_FORK_CAP_CHILD;
    *refused_errno = 0;
    for (int forked = 0; forked < cap; forked++) {
        pid_t pid = fork();
        if (pid < 0) {
            *refused_errno = errno;
            return forked;
        }
        if (pid == 0) {
            prctl(PR_SET_NAME, (unsigned long)marker, 0, 0, 0);
            if (depth == 0) {
                int ignored;
                fork_children(marker, 1, &ignored);
            }
            for (;;)
                pause();
        }
    }
    return cap;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    const char *marker = ph_env("PH_MARKER", "ph_bomb");
    int refused = 0;
    int forked = fork_children(marker, 0, &refused);
    if (refused == 0) {
        ph_log("fork_cap_reached forked=%d", forked);
        return PLUGHOST_OK;
    }
    ph_log("fork_refused forked=%d errno=%d", forked, refused);
    api->plugin_error("fork refused at the process limit");
    return -refused;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
