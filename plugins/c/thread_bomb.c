/*
 * thread_bomb.c: on_vm_started creates threads until the kernel refuses one, then abort()s, as a
 * program that treats a failed pthread_create as fatal does.
 *
 * Threads (64 KiB stacks) block forever. At most 1024 are created, which keeps a machine without a
 * limit safe; with a process limit below that, pthread_create fails first. On the refusal it logs
 * `thread_refused threads=<created> errno=<e>` and calls abort() (SIGABRT). If none was refused it logs
 * `thread_cap_reached threads=1024` and returns 0.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `thread_refused threads= errno=11`; the VM start fails with "plugin
 * 'thread_bomb' crashed: killed by signal SIGABRT, probably at its process limit of <limit>".
 */
#include "ph_test.h"

#include <pthread.h>

#define PH_THREAD_CAP 1024

static void *block_forever(void *arg)
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
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int created = 0; created < PH_THREAD_CAP; created++) {
        pthread_t thread;
        int err = pthread_create(&thread, &attr, block_forever, NULL);
        if (err != 0) {
            ph_log("thread_refused threads=%d errno=%d", created, err);
            abort();
        }
    }
    ph_log("thread_cap_reached threads=%d", PH_THREAD_CAP);
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
