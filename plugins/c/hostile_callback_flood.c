/*
 * hostile_callback_flood.c: 64 threads call mount_folder in a tight loop for one second, during and
 * after the first on_vm_started.
 *
 * The first on_vm_started stores the session id and starts 64 threads that call
 * mount_folder(<current session>, $PH_DIR, "/mnt/flood", true, "flood") back to back until one second
 * after the hook began, plus a reporter thread that joins them and logs the counts; the hook itself
 * waits 300 ms (so part of the flood arrives while the hook is in flight and part after) and returns
 * 0. Later on_vm_started calls only update the session id. Every call's status is counted: ok (0),
 * not_running / not_found (the VM went away), shutting_down, other.
 *
 * This is legal use of the API at an abusive rate: the service must keep serving other plugins and
 * other operations, stay bounded in memory, and lose no call.
 *
 * Env: PH_LOG, PH_DIR.
 * Tests expect: `loaded`, `vm_started session=<id>` per call, then once
 * `flood_done threads=64 calls=<n> ok=<n> not_running=<n> not_found=<n> shutting_down=<n> other=0`.
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define THREADS 64
#define FLOOD_NS 1000000000LL
#define HOOK_WAIT_US (300 * 1000)

static const struct plughost_api_v1 *api;
static atomic_uint current_session;
static atomic_bool started;
static long long flood_end_ns;
static atomic_long calls, count_ok, count_not_running, count_not_found, count_shutting_down,
    count_other;
static pthread_t threads[THREADS];
static int threads_started;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *flood_main(void *arg)
{
    (void)arg;
    const char *dir = ph_env("PH_DIR", "/nonexistent/PH_DIR-unset");
    while (now_ns() < flood_end_ns) {
        plughost_status s =
            api->mount_folder(atomic_load(&current_session), dir, "/mnt/flood", true, "flood");
        atomic_fetch_add(&calls, 1);
        switch (s) {
        case PLUGHOST_OK:
            atomic_fetch_add(&count_ok, 1);
            break;
        case PLUGHOST_E_NOT_RUNNING:
            atomic_fetch_add(&count_not_running, 1);
            break;
        case PLUGHOST_E_NOT_FOUND:
            atomic_fetch_add(&count_not_found, 1);
            break;
        case PLUGHOST_E_SHUTTING_DOWN:
            atomic_fetch_add(&count_shutting_down, 1);
            break;
        default:
            atomic_fetch_add(&count_other, 1);
            break;
        }
    }
    return NULL;
}

static void *reporter_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < threads_started; i++)
        pthread_join(threads[i], NULL);
    ph_log("flood_done threads=%d calls=%ld ok=%ld not_running=%ld not_found=%ld shutting_down=%ld "
           "other=%ld",
           threads_started, atomic_load(&calls), atomic_load(&count_ok),
           atomic_load(&count_not_running), atomic_load(&count_not_found),
           atomic_load(&count_shutting_down), atomic_load(&count_other));
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    atomic_store(&current_session, session->id);
    ph_log("vm_started session=%u", session->id);
    if (atomic_exchange(&started, true))
        return PLUGHOST_OK;
    flood_end_ns = now_ns() + FLOOD_NS;
    for (int i = 0; i < THREADS; i++) {
        int rc = pthread_create(&threads[i], NULL, flood_main, NULL);
        if (rc != 0) {
            ph_log("pthread_create_failed i=%d error=%d", i, rc);
            break;
        }
        threads_started++;
    }
    pthread_t reporter;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&reporter, &attr, reporter_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        ph_log("pthread_create_failed reporter error=%d", rc);
    usleep(HOOK_WAIT_US);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
