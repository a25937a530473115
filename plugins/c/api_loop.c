/*
 * api_loop.c: 4 detached threads hammer the API forever, across VM starts and stops.
 *
 * on_vm_started stores the session id in a global atomic; the first time, it starts 4 DETACHED threads
 * that loop forever (200 us apart):
 *   mount_folder(sid, $PH_DIR, "/mnt/loop", true, "loop"); if that returned 0,
 *   execute_binary(sid, "/bin/cat", {"cat","/mnt/loop/file",NULL}, &fd) + read all + close.
 * Each call's status is counted: ok (0; for exec, 0 AND content "OK"), not_running
 * (PLUGHOST_E_NOT_RUNNING), not_found (PLUGHOST_E_NOT_FOUND), shutting_down (PLUGHOST_E_SHUTTING_DOWN),
 * other (anything else); an exec that succeeded but did not print OK counts as stale (the VM
 * was recycled between the mount and the exec).
 * Calls racing with a VM teardown must fail cleanly (NOT_RUNNING / NOT_FOUND / SHUTTING_DOWN), never hang
 * the hook nor return another error.
 *
 * Env: PH_LOG, PH_DIR.
 * Tests expect: `loaded`, `vm_started session=<id>`, and at on_vm_stopping
 * `loop ok=<n> not_running=<n> not_found=<n> shutting_down=<n> other=<n> stale=<n>` (ok > 0, other == 0).
 */
#include "ph_test.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 4

static const struct plughost_api_v1 *api;
static atomic_uint current_session;
static atomic_bool started;
static atomic_long count_ok, count_not_running, count_not_found, count_shutting_down, count_other;
/* exec succeeded but did not print OK: the VM was stopped and restarted between the mount and the
 * exec, so the mount is gone. A legitimate race of this scenario, counted apart from `other`. */
static atomic_long count_stale;

static void count(plughost_status s)
{
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

static void *loop_main(void *arg)
{
    (void)arg;
    const char *ph_dir = ph_env("PH_DIR", "/nonexistent/PH_DIR-unset");
    const char *const argv[] = {"cat", "/mnt/loop/file", NULL};
    for (;;) {
        plughost_session_id sid = atomic_load(&current_session);
        plughost_status s = api->mount_folder(sid, ph_dir, "/mnt/loop", true, "loop");
        count(s);
        if (s == PLUGHOST_OK) {
            int fd = -1;
            s = api->execute_binary(sid, "/bin/cat", argv, &fd);
            if (s == PLUGHOST_OK) {
                char content[256] = "";
                if (ph_read_all(fd, content, sizeof content) < 0)
                    content[0] = '\0';
                close(fd);
                if (strcmp(content, "OK") != 0) {
                    atomic_fetch_add(&count_stale, 1);
                    usleep(200);
                    continue;
                }
            }
            count(s);
        }
        usleep(200);
    }
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    atomic_store(&current_session, session->id);
    if (!atomic_exchange(&started, true)) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        for (int i = 0; i < THREADS; i++) {
            pthread_t thread;
            int rc = pthread_create(&thread, &attr, loop_main, NULL);
            if (rc != 0)
                ph_log("pthread_create_failed error=%d", rc);
        }
        pthread_attr_destroy(&attr);
    }
    ph_log("vm_started session=%u", session->id);
    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    ph_log("loop ok=%ld not_running=%ld not_found=%ld shutting_down=%ld other=%ld stale=%ld",
           atomic_load(&count_ok), atomic_load(&count_not_running), atomic_load(&count_not_found),
           atomic_load(&count_shutting_down), atomic_load(&count_other), atomic_load(&count_stale));
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
