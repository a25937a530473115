/*
 * crash_in_thread.c: on_vm_started starts a thread whose `parse_in_worker` writes through NULL
 * (SIGSEGV on the plugin's thread, which has no alternate signal stack: the handler runs on the
 * thread's own stack), and joins it.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `starting_thread`; the error names `parse_in_worker`, called from `worker`.
 */
#include "ph_test.h"

#include <pthread.h>

static int *volatile null_pointer = NULL;

__attribute__((noinline)) static void parse_in_worker(void)
{
    *null_pointer = 1;
}

static void *worker(void *arg)
{
    (void)arg;
    parse_in_worker();
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    pthread_t thread;
    /* Logged before the thread exists: it may crash the host before any later line. */
    ph_log("starting_thread");
    if (pthread_create(&thread, NULL, worker, NULL) != 0)
        return -EAGAIN;
    pthread_join(thread, NULL);
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
