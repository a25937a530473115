/*
 * threads_in_vm_started.c: API calls from 4 plugin threads at once, while the hook waits for them.
 *
 * on_vm_started starts 4 pthreads and joins them. Thread i:
 *   in_flight++ (and raises max_in_flight), mount_folder(sid, $PH_DIR, "/mnt/t<i>", true, "t<i>"),
 *   execute_binary(sid, "/bin/cat", {"cat","/mnt/t<i>/file",NULL}, &fd), reads all, closes;
 *   a success = both calls returned 0 and the content is exactly "OK";
 *   then waits on a 4-party barrier (so all four are in flight together before any leaves), in_flight--.
 * The hook returns 0 when all four succeeded, else plugin_error("...") and -EIO.
 * The calls are made while the hook of the same session runs: they must not deadlock against it.
 *
 * Env: PH_LOG, PH_DIR.
 * Tests expect: `loaded`, `threads ok=4 max_concurrency=4`.
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 4

static const struct plughost_api_v1 *api;
static atomic_int in_flight;
static atomic_int max_in_flight;
static atomic_int successes;
static pthread_barrier_t barrier;

struct worker {
    int index;
    plughost_session_id session_id;
};

static void *worker_main(void *arg)
{
    const struct worker *w = arg;

    int now = atomic_fetch_add(&in_flight, 1) + 1;
    int max = atomic_load(&max_in_flight);
    while (now > max && !atomic_compare_exchange_weak(&max_in_flight, &max, now)) {
    }

    char vm_path[64], name[32], file[80];
    snprintf(vm_path, sizeof vm_path, "/mnt/t%d", w->index);
    snprintf(name, sizeof name, "t%d", w->index);
    snprintf(file, sizeof file, "%s/file", vm_path);

    plughost_status m =
        api->mount_folder(w->session_id, ph_env("PH_DIR", "/nonexistent/PH_DIR-unset"), vm_path, true, name);
    const char *const argv[] = {"cat", file, NULL};
    int fd = -1;
    plughost_status e = api->execute_binary(w->session_id, "/bin/cat", argv, &fd);
    char content[256] = "";
    if (e == PLUGHOST_OK) {
        if (ph_read_all(fd, content, sizeof content) < 0)
            content[0] = '\0';
        close(fd);
    }
    if (m == PLUGHOST_OK && e == PLUGHOST_OK && strcmp(content, "OK") == 0)
        atomic_fetch_add(&successes, 1);
    else {
        char tok[256];
        ph_log("thread_failed i=%d mount=%d exec=%d content=%s", w->index, m, e,
               ph_tok(content, tok, sizeof tok));
    }

    pthread_barrier_wait(&barrier);
    atomic_fetch_sub(&in_flight, 1);
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    atomic_store(&in_flight, 0);
    atomic_store(&max_in_flight, 0);
    atomic_store(&successes, 0);
    if (pthread_barrier_init(&barrier, NULL, THREADS) != 0) {
        api->plugin_error("pthread_barrier_init failed");
        return -EIO;
    }

    struct worker workers[THREADS];
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i].index = i;
        workers[i].session_id = session->id;
        int rc = pthread_create(&threads[i], NULL, worker_main, &workers[i]);
        if (rc != 0) {
            /* Cannot recover: the started threads would wait on the barrier forever. */
            ph_log("pthread_create_failed error=%d", rc);
            abort();
        }
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&barrier);

    int ok = atomic_load(&successes);
    ph_log("threads ok=%d max_concurrency=%d", ok, atomic_load(&max_in_flight));
    if (ok != THREADS) {
        char msg[64];
        snprintf(msg, sizeof msg, "only %d of %d threads succeeded", ok, THREADS);
        api->plugin_error(msg);
        return -EIO;
    }
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
