/*
 * call_storm.c: a fixed number of API calls from 8 threads, racing the service's hooks.
 *
 * The first on_vm_started stores the session id and starts 8 threads that each make exactly 3000
 * calls mount_folder(<current session>, $PH_DIR, "/mnt/storm", true, "storm") back to back, plus a
 * detached reporter thread that joins them and logs the counts; the hook returns 0 at once. Later
 * on_vm_started calls only update the session id; on_vm_stopping returns 0 (so that VM stops are
 * hooks too). Every call's status is counted: ok (0), not_running / not_found (no VM, or another
 * session's), shutting_down, other.
 *
 * While a hook is in flight the service's dispatcher serves the calls; between hooks its call pool
 * does. A call whose wake-up is lost (service side or plugin side) never returns, and then
 * `storm_done` never comes.
 *
 * Env: PH_LOG, PH_DIR.
 * Tests expect (tests/tests/ring.rs): `loaded`, `vm_started session=<id>` per call, then once
 * `storm_done threads=8 calls=24000 ok=<n> not_running=<n> not_found=<n> shutting_down=0 other=0`.
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 8
#define CALLS_PER_THREAD 3000

static const struct plughost_api_v1 *api;
static atomic_uint current_session;
static atomic_bool started;
static atomic_long calls, count_ok, count_not_running, count_not_found, count_shutting_down,
    count_other;
static pthread_t threads[THREADS];
static int threads_started;

static void *storm_main(void *arg)
{
    (void)arg;
    const char *dir = ph_env("PH_DIR", "/nonexistent/PH_DIR-unset");
    for (int i = 0; i < CALLS_PER_THREAD; i++) {
        plughost_status s =
            api->mount_folder(atomic_load(&current_session), dir, "/mnt/storm", true, "storm");
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
    ph_log("storm_done threads=%d calls=%ld ok=%ld not_running=%ld not_found=%ld shutting_down=%ld "
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
    for (int i = 0; i < THREADS; i++) {
        int rc = pthread_create(&threads[i], NULL, storm_main, NULL);
        if (rc != 0) {
            ph_log("pthread_create_failed i=%d error=%d", i, rc);
            break;
        }
        threads_started++;
    }
    pthread_attr_t attr;
    pthread_t reporter;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&reporter, &attr, reporter_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        ph_log("pthread_create_failed reporter error=%d", rc);
    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    return PLUGHOST_OK;
}
