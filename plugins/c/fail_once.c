/*
 * fail_once.c — fails in on_vm_started the first time only, across host restarts.
 *
 * The first on_vm_started (no file "$PH_DIR/failed-once" yet) creates that file and then, as
 * PH_FAIL says: "hang" blocks forever (ignoring SIGTERM, so only SIGKILL ends it), "crash" writes
 * through a NULL pointer. Every later on_vm_started (in any host) logs `vm_started` and returns 0.
 * Used by the watchdog and restart-policy tests.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ph_test.h"

static int *volatile null_pointer;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    char marker[4096];
    snprintf(marker, sizeof marker, "%s/failed-once", ph_env("PH_DIR", "/nonexistent"));
    int fd = open(marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        ph_log("vm_started");
        return PLUGHOST_OK;
    }
    close(fd);
    if (strcmp(ph_env("PH_FAIL", "crash"), "hang") == 0) {
        ph_log("hanging");
        signal(SIGTERM, SIG_IGN);
        for (;;)
            pause();
    }
    ph_log("crashing");
    *null_pointer = 1;
    return PLUGHOST_OK;
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
