/*
 * fd_calls_from_threads.c: 8 threads make execute_binary calls at once, each with its own output,
 * and check that the fd each gets is its own (the service passes each fd on the call ring's fd
 * lane, named by the call's request id; threads racing for the lane must never take another's).
 *
 * Each thread makes 40 calls execute_binary(sid, "/bin/echo", {"echo", "t<thread>-<call>"}), reads
 * the fd to the end and compares it with "t<thread>-<call>\n"; plus one call per thread of a
 * program that does not exist (an error answer: no fd, and none may be taken). Counts: ok (the
 * right text), wrong (another text: someone else's fd), failed (the call failed), missing_error
 * (the nonexistent program did not fail with an errno status).
 *
 * With $PH_WHEN = `hook` (the default) on_vm_started joins the threads (the hook's dispatcher
 * serves the calls); with `after_hook` it starts them detached and returns; they first wait until
 * the hook is over (1 ms polls of a flag set just before returning plus 20 ms) so the call pool
 * serves them. Either way the last thread logs
 * `fd_calls ok=<n> wrong=<n> failed=<n> missing_error=<n>`.
 *
 * Env: PH_LOG, PH_WHEN.
 * Tests expect (tests/tests/ring.rs): `loaded`, `fd_calls ok=320 wrong=0 failed=0 missing_error=0`.
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 8
#define CALLS 40

static const struct plughost_api_v1 *api;
static plughost_session_id session_id;
static atomic_bool hook_over;
static atomic_int finished;
static atomic_long count_ok, count_wrong, count_failed, count_missing_error;

static void *worker_main(void *arg)
{
    long t = (long)arg;
    if (strcmp(ph_env("PH_WHEN", "hook"), "after_hook") == 0) {
        while (!atomic_load(&hook_over))
            usleep(1000);
        usleep(20000);
    }
    for (int i = 0; i < CALLS; i++) {
        char word[32], expected[40], got[64];
        snprintf(word, sizeof word, "t%ld-%d", t, i);
        snprintf(expected, sizeof expected, "%s\n", word);
        const char *const argv[] = {"echo", word, NULL};
        int fd = -1;
        plughost_status s = api->execute_binary(session_id, "/bin/echo", argv, &fd);
        if (s != PLUGHOST_OK || fd < 0) {
            atomic_fetch_add(&count_failed, 1);
            continue;
        }
        ssize_t n = ph_read_all(fd, got, sizeof got);
        close(fd);
        if (n >= 0 && strcmp(got, expected) == 0)
            atomic_fetch_add(&count_ok, 1);
        else
            atomic_fetch_add(&count_wrong, 1);
    }
    const char *const argv[] = {"nothing", NULL};
    int fd = -1;
    plughost_status s = api->execute_binary(session_id, "/nonexistent/program", argv, &fd);
    if (s >= 0 || fd != -1)
        atomic_fetch_add(&count_missing_error, 1);
    if (atomic_fetch_add(&finished, 1) == THREADS - 1)
        ph_log("fd_calls ok=%ld wrong=%ld failed=%ld missing_error=%ld", atomic_load(&count_ok),
               atomic_load(&count_wrong), atomic_load(&count_failed),
               atomic_load(&count_missing_error));
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    session_id = session->id;
    bool join = strcmp(ph_env("PH_WHEN", "hook"), "after_hook") != 0;
    pthread_t threads[THREADS];
    for (long t = 0; t < THREADS; t++) {
        int rc = pthread_create(&threads[t], NULL, worker_main, (void *)t);
        if (rc != 0) {
            ph_log("pthread_create_failed error=%d", rc);
            return -rc;
        }
        if (!join)
            pthread_detach(threads[t]);
    }
    if (join)
        for (int t = 0; t < THREADS; t++)
            pthread_join(threads[t], NULL);
    atomic_store(&hook_over, true);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api_table,
                                                        struct plughost_hooks_v1 *hooks)
{
    api = api_table;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
