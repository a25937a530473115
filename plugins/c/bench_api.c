/*
 * bench_api.c: every plugin API call kind, timed one call at a time from the hook's thread or from a
 * plugin thread outside any hook (plughost-bench's api_* cases).
 *
 * The entry point starts a detached controller thread that reads commands from the FIFO
 * $PH_BENCH_CTL and answers each on the FIFO $PH_BENCH_DONE (the bench holds both open read-write).
 * Commands: three native-endian uint32_t (mode, kind, count), count <= MAX_CALLS.
 *   1 WORKER   the controller (a plugin thread; no hook is in flight: the service's call pool serves
 *              it) makes `count` calls of `kind`, timing each with clock_gettime(CLOCK_MONOTONIC)
 *              just before and after it; answer: uint32_t failures, uint32_t count, count uint64_t ns.
 *   2 ARM      the next on_vm_started makes `count` calls of `kind` the same way (from the hook's
 *              thread: the hook's dispatcher serves them); answer: uint32_t 0, uint32_t 0.
 *   3 COLLECT  the samples of the last hook, answered as WORKER.
 * A failure is a call whose outcome is not the one expected of its kind.
 *
 * Kinds (the order of API_KINDS in crates/bench/src/api.rs). The bench service answers every call at
 * once: success, or PLUGHOST_E_NOT_FOUND for session 2, container session 2, distribution 2...2,
 * the program /nonexistent (create_process: errno 2) and, for the process calls, the process created
 * from /bin/false. A success of an fd call passes a dup of one open file: the fd is closed after the
 * second timestamp. Process handles are made (and created processes released) outside the timing.
 *   0 mount_folder            1 mount_folder_err
 *   2 execute_binary          3 execute_binary_err
 *   4 execute_binary_in_distribution                5 execute_binary_in_distribution_err
 *   6 container_mount_folder  7 container_mount_folder_err
 *   8 container_unmount_folder                      9 container_unmount_folder_err
 *  10 container_create_process                     11 container_create_process_err
 *  12 container_process_get_fd                     13 container_process_get_fd_err
 *  14 container_process_get_exit_fd                15 container_process_get_exit_fd_err
 *  16 container_process_get_exit_code              17 container_process_get_exit_code_err
 *  18 container_process_release
 *
 * Env: PH_BENCH_CTL and PH_BENCH_DONE (required: the entry point fails with -EINVAL without them),
 * PH_LOG (optional). Log events: `loaded`, `bench_fifo_failed errno=`, `bench_thread_failed error=`.
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define MAX_CALLS 4000
#define KINDS 19

enum { MODE_WORKER = 1, MODE_ARM = 2, MODE_COLLECT = 3 };

static const struct plughost_api_v1 *api;
static const char *ctl_path;
static const char *done_path;
static uint64_t samples[MAX_CALLS];
static uint32_t sample_count, sample_failures;
static uint32_t armed_kind, armed_count;
/* Handles made outside the timing: a process whose calls succeed, one whose calls fail, and fresh
 * ones for process_release; created ones, released after the timing. */
static plughost_process *good, *bad;
static plughost_process *handles[MAX_CALLS];
static uint32_t handle_count;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static plughost_process *create(const char *path)
{
    const char *const argv[] = {"p", NULL};
    plughost_process *process = NULL;
    int err = 0;
    if (api->container_create_process(1, path, argv, NULL, &process, &err) != PLUGHOST_OK)
        return NULL;
    return process;
}

/* What the timed calls need, made before the timing. */
static void prepare(uint32_t kind, uint32_t count)
{
    if (good == NULL)
        good = create("/bin/true");
    if (bad == NULL)
        bad = create("/bin/false");
    handle_count = 0;
    if (kind == 18)
        for (uint32_t i = 0; i < count; i++)
            if ((handles[handle_count] = create("/bin/true")) != NULL)
                handle_count++;
}

/* After the timing: release what the timed calls created. */
static void finish(uint32_t kind)
{
    if (kind == 10)
        for (uint32_t i = 0; i < handle_count; i++)
            api->process_release(handles[i]);
    handle_count = 0;
}

/* One call of `kind` (the i-th of its batch); 0 when its outcome is the one expected. An fd it
 * received is left in *fd_out for the caller to close after its timestamp. */
static int one_call(uint32_t kind, uint32_t i, int *fd_out)
{
    static const struct plughost_uuid distro_ok = {{1}}, distro_err = {{2, 2, 2, 2, 2, 2, 2, 2, 2,
                                                                        2, 2, 2, 2, 2, 2, 2}};
    const char *const argv[] = {"true", NULL};
    int fd = -1, code = -1, err = 0;
    plughost_status s;
    plughost_process *process = NULL;
    bool ok = kind % 2 == 0 || kind == 18;
    switch (kind) {
    case 0:
    case 1:
        s = api->mount_folder(ok ? 1 : 2, "/", "/mnt/bench", true, "bench");
        break;
    case 2:
    case 3:
        s = api->execute_binary(ok ? 1 : 2, "/bin/true", argv, &fd);
        break;
    case 4:
    case 5:
        s = api->execute_binary_in_distribution(1, ok ? &distro_ok : &distro_err, "/bin/true", argv,
                                                &fd);
        break;
    case 6:
    case 7:
        s = api->container_mount_folder(ok ? 1 : 2, "/", "/mnt/bench", true);
        break;
    case 8:
    case 9:
        s = api->container_unmount_folder(ok ? 1 : 2, "/mnt/bench");
        break;
    case 10:
    case 11:
        s = api->container_create_process(1, ok ? "/bin/true" : "/nonexistent", argv, NULL, &process,
                                          &err);
        if (s == PLUGHOST_OK && handle_count < MAX_CALLS)
            handles[handle_count++] = process;
        break;
    case 12:
    case 13:
        s = api->process_get_fd(ok ? good : bad, PLUGHOST_PROCESS_STDOUT, &fd);
        break;
    case 14:
    case 15:
        s = api->process_get_exit_fd(ok ? good : bad, &fd);
        break;
    case 16:
    case 17:
        s = api->process_get_exit_code(ok ? good : bad, &code);
        break;
    case 18:
        if (i >= handle_count)
            return 1;
        api->process_release(handles[i]);
        s = PLUGHOST_OK;
        break;
    default:
        return 1;
    }
    *fd_out = fd;
    if (ok)
        return s == PLUGHOST_OK ? 0 : 1;
    return s == PLUGHOST_E_NOT_FOUND ? 0 : 1;
}

/* `count` timed calls of `kind` into samples[]. */
static void run(uint32_t kind, uint32_t count)
{
    uint32_t n = count < MAX_CALLS ? count : MAX_CALLS;
    uint32_t failed = kind < KINDS ? 0 : n;
    for (uint32_t i = 0; i < n && kind < KINDS; i++) {
        int fd = -1;
        uint64_t t0 = now_ns();
        failed += (uint32_t)one_call(kind, i, &fd);
        samples[i] = now_ns() - t0;
        if (fd >= 0)
            close(fd);
    }
    sample_count = n;
    sample_failures = failed;
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

static void answer_samples(int done)
{
    uint32_t head[2] = {sample_failures, sample_count};
    if (write_all(done, head, sizeof head) == 0)
        write_all(done, samples, (size_t)sample_count * sizeof samples[0]);
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
        uint32_t kind = cmd[1], count = cmd[2] < MAX_CALLS ? cmd[2] : MAX_CALLS;
        if (cmd[0] == MODE_WORKER) {
            prepare(kind, count);
            run(kind, count);
            finish(kind);
            answer_samples(done);
        } else if (cmd[0] == MODE_ARM) {
            prepare(kind, count);
            armed_kind = kind;
            armed_count = count;
            uint32_t head[2] = {0, 0};
            write_all(done, head, sizeof head);
        } else if (cmd[0] == MODE_COLLECT) {
            finish(armed_kind);
            answer_samples(done);
        } else {
            uint32_t head[2] = {0xffffffffu, 0};
            write_all(done, head, sizeof head);
        }
    }
    close(ctl);
    close(done);
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    run(armed_kind, armed_count);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    ctl_path = ph_env("PH_BENCH_CTL", NULL);
    done_path = ph_env("PH_BENCH_DONE", NULL);
    if (ctl_path == NULL || done_path == NULL)
        return -EINVAL;
    hooks->on_vm_started = on_vm_started;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, controller_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        ph_log("bench_thread_failed error=%d", rc);
        return -EAGAIN;
    }
    return PLUGHOST_OK;
}
