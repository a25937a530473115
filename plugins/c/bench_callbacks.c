/*
 * bench_callbacks.c: API calls from the plugin's own threads, outside any hook (plughost-bench's
 * callback_rtt and callbacks_per_s).
 *
 * The plugin sets no hook. Its entry point starts one controller thread and THREADS worker threads
 * (all detached). The controller reads commands from the FIFO $PH_BENCH_CTL and answers each one on the
 * FIFO $PH_BENCH_DONE (the bench holds both open read-write, so neither open blocks). Every measured call
 * is mount_folder(session, "/", "/mnt/bench", true, "bench"), which the bench service answers at once
 * with success: what is timed is plughost's path, not the service's work. As no hook is ever in flight,
 * every call is served by the service's pool threads, as a call from a plugin's own thread is in real use.
 *
 * Commands: three native-endian uint32_t (mode, count, session).
 *   1 LATENCY     the controller makes `count` calls one after the other (count <= MAX_LATENCY_CALLS),
 *                 timing each one with clock_gettime(CLOCK_MONOTONIC) just before and just after it;
 *                 answer: uint32_t failures, uint32_t count, then count uint64_t durations in ns.
 *   2 THROUGHPUT  the THREADS workers, released together by a barrier, make count / THREADS calls each
 *                 as fast as they can; the controller times from the release to the end of the last
 *                 worker; answer: uint32_t failures, uint32_t calls made, uint64_t elapsed ns.
 *   anything else answer: uint32_t 0xffffffff, uint32_t 0.
 * The controller thread ends when the command FIFO reaches end of file.
 *
 * Env: PH_BENCH_CTL and PH_BENCH_DONE (required: the entry point fails with -EINVAL without them),
 * PH_LOG (optional).
 * Log events: `loaded`, `bench_thread_failed error=` if a thread cannot be started (entry point then
 * fails with -EAGAIN).
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define THREADS 4
#define MAX_LATENCY_CALLS 65536

enum { MODE_LATENCY = 1, MODE_THROUGHPUT = 2 };

static const struct plughost_api_v1 *api;
static const char *ctl_path;
static const char *done_path;
static pthread_barrier_t start_barrier;
static pthread_barrier_t end_barrier;
/* Written by the controller before the start barrier, read by the workers after it. */
static unsigned per_thread_calls;
static atomic_uint bench_session;
static atomic_uint failures;
static uint64_t samples[MAX_LATENCY_CALLS];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static plughost_status one_call(void)
{
    return api->mount_folder(atomic_load(&bench_session), "/", "/mnt/bench", true, "bench");
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int read_exact(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_barrier_wait(&start_barrier);
        unsigned failed = 0;
        for (unsigned i = 0; i < per_thread_calls; i++) {
            if (one_call() != PLUGHOST_OK)
                failed++;
        }
        atomic_fetch_add(&failures, failed);
        pthread_barrier_wait(&end_barrier);
    }
    return NULL;
}

static void latency(int done, uint32_t count)
{
    uint32_t n = count < MAX_LATENCY_CALLS ? count : MAX_LATENCY_CALLS;
    uint32_t failed = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        plughost_status s = one_call();
        uint64_t t1 = now_ns();
        samples[i] = t1 - t0;
        if (s != PLUGHOST_OK)
            failed++;
    }
    uint32_t head[2] = {failed, n};
    if (write_all(done, head, sizeof head) == 0)
        write_all(done, samples, (size_t)n * sizeof samples[0]);
}

static void throughput(int done, uint32_t count)
{
    per_thread_calls = count / THREADS;
    atomic_store(&failures, 0);
    uint64_t t0 = now_ns();
    pthread_barrier_wait(&start_barrier);
    pthread_barrier_wait(&end_barrier);
    uint64_t elapsed = now_ns() - t0;
    uint32_t head[2] = {atomic_load(&failures), per_thread_calls * THREADS};
    if (write_all(done, head, sizeof head) == 0)
        write_all(done, &elapsed, sizeof elapsed);
}

static void *controller_main(void *arg)
{
    (void)arg;
    int ctl = open(ctl_path, O_RDONLY | O_CLOEXEC);
    int done = open(done_path, O_WRONLY | O_CLOEXEC);
    if (ctl < 0 || done < 0) {
        ph_log("bench_fifo_failed errno=%d", errno);
        return NULL;
    }
    uint32_t cmd[3];
    while (read_exact(ctl, cmd, sizeof cmd) == 0) {
        atomic_store(&bench_session, cmd[2]);
        if (cmd[0] == MODE_LATENCY) {
            latency(done, cmd[1]);
        } else if (cmd[0] == MODE_THROUGHPUT) {
            throughput(done, cmd[1]);
        } else {
            uint32_t head[2] = {0xffffffffu, 0};
            write_all(done, head, sizeof head);
        }
    }
    close(ctl);
    close(done);
    return NULL;
}

static int start_detached(void *(*thread_main)(void *))
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, thread_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        ph_log("bench_thread_failed error=%d", rc);
    return rc;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)hooks;
    ph_log("loaded");
    api = a;
    ctl_path = ph_env("PH_BENCH_CTL", NULL);
    done_path = ph_env("PH_BENCH_DONE", NULL);
    if (ctl_path == NULL || done_path == NULL)
        return -EINVAL;
    pthread_barrier_init(&start_barrier, NULL, THREADS + 1);
    pthread_barrier_init(&end_barrier, NULL, THREADS + 1);
    for (int i = 0; i < THREADS; i++) {
        if (start_detached(worker_main) != 0)
            return -EAGAIN;
    }
    if (start_detached(controller_main) != 0)
        return -EAGAIN;
    return PLUGHOST_OK;
}
