/*
 * hostile_output_flood.c: floods its stdout, which the service logs, without end.
 *
 * The first on_vm_started starts a detached thread that writes 64 KiB lines ('x' * 65535 + '\n') to
 * fd 1 as fast as the pipe takes them, forever, logs `flooding`, and returns 0. Every later
 * on_vm_started logs `vm_started_again` and returns 0.
 *
 * The service reads plugin output on the thread that also watches every host's death; it must keep
 * noticing other hosts' deaths (and stay bounded in memory) while this plugin writes.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `flooding`; another plugin's crash is still reported at once.
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>

#define LINE_BYTES (64 * 1024)

static atomic_bool started;

static void *flood_main(void *arg)
{
    (void)arg;
    static char line[LINE_BYTES];
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\n';
    for (;;) {
        if (write(1, line, sizeof line) < 0 && errno != EINTR)
            return NULL;
    }
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    if (atomic_exchange(&started, true)) {
        ph_log("vm_started_again");
        return PLUGHOST_OK;
    }
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, flood_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        ph_log("pthread_create_failed error=%d", rc);
        return -rc;
    }
    ph_log("flooding");
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
