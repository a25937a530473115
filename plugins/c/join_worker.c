/*
 * join_worker.c: the hook blocks on a worker thread that calls the API (the classic deadlock: the call
 * must be served while the hook of the same session is still running).
 *
 * on_vm_started creates a worker that calls mount_folder(sid, $PH_DIR, "/mnt/w", true, "w") and then
 * execute_binary(sid, "/bin/cat", {"cat","/mnt/w/file",NULL}, &fd) + read all + close; the hook
 * pthread_join()s it. Returns 0 when both calls returned 0 and the content is "OK", else -EIO.
 *
 * Env: PH_LOG, PH_DIR.
 * Tests expect: `loaded`, `joined mount=0 exec=0 content=OK`.
 */
#include "ph_test.h"

#include <pthread.h>

static const struct plughost_api_v1 *api;

struct job {
    plughost_session_id session_id;
    plughost_status mount;
    plughost_status exec;
    char content[256];
};

static void *worker_main(void *arg)
{
    struct job *job = arg;
    job->mount =
        api->mount_folder(job->session_id, ph_env("PH_DIR", "/nonexistent/PH_DIR-unset"), "/mnt/w", true, "w");
    const char *const argv[] = {"cat", "/mnt/w/file", NULL};
    int fd = -1;
    job->exec = api->execute_binary(job->session_id, "/bin/cat", argv, &fd);
    job->content[0] = '\0';
    if (job->exec == PLUGHOST_OK) {
        if (ph_read_all(fd, job->content, sizeof job->content) < 0)
            job->content[0] = '\0';
        close(fd);
    }
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    struct job job = {.session_id = session->id, .mount = 1, .exec = 1, .content = ""};
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, worker_main, &job);
    if (rc != 0) {
        ph_log("pthread_create_failed error=%d", rc);
        return -rc;
    }
    pthread_join(thread, NULL);
    char tok[256];
    ph_log("joined mount=%d exec=%d content=%s", job.mount, job.exec, ph_tok(job.content, tok, sizeof tok));
    if (job.mount != PLUGHOST_OK || job.exec != PLUGHOST_OK || strcmp(job.content, "OK") != 0)
        return -EIO;
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
