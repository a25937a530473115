/*
 * leak_thread_per_vm.c: every on_vm_started starts a detached thread that sleeps forever (a thread
 * leak that `plughost check` must name: "threads grew from A to B across N lifecycles").
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`.
 */
#include "ph_test.h"

#include <pthread.h>

static void *sleep_forever(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    pthread_t thread;
    if (pthread_create(&thread, NULL, sleep_forever, NULL) == 0)
        pthread_detach(thread);
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
