/*
 * scope_race.c: calls a plugin thread published before its hook began, still unserved when it
 * begins, must be served with the hook's scope (PLUGIN_ABI "one callback", issue 13 point 6).
 *
 * The entry point starts a detached controller thread that opens the FIFO $PH_CONTROL and reads
 * one byte per command: n, the number of calls to launch. For each it starts a detached thread
 * that makes one call mount_folder(1, $PH_DIR, "/mnt/race", true, "race") (whatever the status)
 * and counts it completed. `launched` counts every call of a command before any of its threads
 * starts.
 *
 * on_vm_started waits (100 us polls, at most 5 s) until at least `launched - $PH_STUCK` calls
 * completed, then returns 0; on timeout it logs `stuck completed=<c> launched=<l>` and returns
 * -ETIMEDOUT. The test holds the service's state lock (which its default callbacks take) while it
 * launches the calls and dispatches the hook, so exactly $PH_STUCK calls (one per pool thread) sit
 * in the default callbacks; every other call must reach the hook's dispatcher, including those a
 * pool thread claimed before the hook began.
 *
 * Env: PH_LOG, PH_DIR, PH_CONTROL, PH_STUCK (default 2).
 * Tests expect (tests/tests/ring.rs): `loaded`, never `stuck`.
 */
#include "ph_test.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static const struct plughost_api_v1 *api;
static atomic_long launched, completed;

static void *call_main(void *arg)
{
    (void)arg;
    api->mount_folder(1, ph_env("PH_DIR", "/nonexistent/PH_DIR-unset"), "/mnt/race", true, "race");
    atomic_fetch_add(&completed, 1);
    return NULL;
}

static void start_detached(void *(*main)(void *))
{
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        ph_log("pthread_create_failed error=%d", rc);
}

static void *controller_main(void *arg)
{
    (void)arg;
    int fd = open(ph_env("PH_CONTROL", "/nonexistent/PH_CONTROL-unset"), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ph_log("control_open_failed errno=%d", errno);
        return NULL;
    }
    unsigned char n;
    while (read(fd, &n, 1) == 1) {
        /* The whole batch is counted before its first thread starts: the test dispatches the hook
         * as soon as the stuck calls are in, and the hook must wait for every call of the batch,
         * not only for those this thread had started by then (a preempted controller made the
         * hook return early under load). */
        atomic_fetch_add(&launched, n);
        for (unsigned i = 0; i < n; i++)
            start_detached(call_main);
    }
    close(fd);
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    long stuck = atol(ph_env("PH_STUCK", "2"));
    for (int i = 0; i < 50000; i++) {
        if (atomic_load(&completed) >= atomic_load(&launched) - stuck)
            return PLUGHOST_OK;
        usleep(100);
    }
    ph_log("stuck completed=%ld launched=%ld", atomic_load(&completed), atomic_load(&launched));
    return -ETIMEDOUT;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api_table,
                                                        struct plughost_hooks_v1 *hooks)
{
    api = api_table;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    start_detached(controller_main);
    return PLUGHOST_OK;
}
