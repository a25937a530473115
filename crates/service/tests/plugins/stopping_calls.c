/*
 * stopping_calls.c: calls into a session VM while it stops (a test plugin of crates/service; built by
 * tests/daemon.rs with the same flags as plugins/c).
 *
 * on_container_session_created(cs)  -> `created id= pid=`
 * on_session_vm_started(cs)         -> `session_vm_started id=`
 * on_session_vm_stopping(cs): the session VM still serves calls (PLUGIN_ABI.md, "Hooks"):
 *   from the hook thread: container_create_process(cs, "/bin/echo", {"echo","hook"})
 *                                     -> `stopping_hook status= errno= content= exit=`
 *   from a plugin thread, joined by the hook: the same with "thread"
 *                                     -> `stopping_thread status= errno= content= exit=`
 * on_container_session_stopping(cs): after on_session_vm_stopping, the session VM is gone:
 *   container_create_process          -> `after_stop status=` (PLUGHOST_E_NOT_RUNNING expected)
 *                                     -> `csession_stopping id=`
 * Env: PH_LOG.
 */
#include "ph_test.h"

#include <poll.h>
#include <pthread.h>

static const struct plughost_api_v1 *api;

/* Runs /bin/echo <word> in the session VM and logs how it went under <event>. */
static void echo(plughost_container_session_id id, const char *word, const char *event)
{
    const char *const argv[] = {"echo", word, NULL};
    plughost_process *p = NULL;
    int err = 0;
    plughost_status s = api->container_create_process(id, "/bin/echo", argv, NULL, &p, &err);
    if (s != PLUGHOST_OK) {
        ph_log("%s status=%d errno=%d content=- exit=-1", event, s, err);
        return;
    }
    int out = -1, exit_fd = -1, code = -1;
    char content[256] = "";
    if (api->process_get_fd(p, PLUGHOST_PROCESS_STDOUT, &out) == PLUGHOST_OK) {
        if (ph_read_all(out, content, sizeof content) < 0)
            content[0] = '\0';
        close(out);
    }
    if (api->process_get_exit_fd(p, &exit_fd) == PLUGHOST_OK) {
        struct pollfd pfd = {.fd = exit_fd, .events = POLLIN};
        poll(&pfd, 1, 10000);
        close(exit_fd);
    }
    api->process_get_exit_code(p, &code);
    api->process_release(p);
    char tok[256];
    ph_log("%s status=%d errno=%d content=%s exit=%d", event, s, err, ph_tok(content, tok, sizeof tok), code);
}

static void *worker(void *arg)
{
    echo((plughost_container_session_id)(uintptr_t)arg, "thread", "stopping_thread");
    return NULL;
}

static plughost_status on_container_session_created(const struct plughost_container_session *cs)
{
    ph_log("created id=%u pid=%u", cs->id, cs->application_pid);
    return PLUGHOST_OK;
}

static plughost_status on_session_vm_started(const struct plughost_container_session *cs)
{
    ph_log("session_vm_started id=%u", cs->id);
    return PLUGHOST_OK;
}

static plughost_status on_session_vm_stopping(const struct plughost_container_session *cs)
{
    echo(cs->id, "hook", "stopping_hook");
    pthread_t t;
    if (pthread_create(&t, NULL, worker, (void *)(uintptr_t)cs->id) == 0)
        pthread_join(t, NULL);
    else
        ph_log("stopping_thread status=thread_failed");
    return PLUGHOST_OK;
}

static plughost_status on_container_session_stopping(const struct plughost_container_session *cs)
{
    const char *const argv[] = {"echo", "late", NULL};
    plughost_process *p = NULL;
    plughost_status s = api->container_create_process(cs->id, "/bin/echo", argv, NULL, &p, NULL);
    if (s == PLUGHOST_OK)
        api->process_release(p);
    ph_log("after_stop status=%d", s);
    ph_log("csession_stopping id=%u", cs->id);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_container_session_created = on_container_session_created;
    hooks->on_session_vm_started = on_session_vm_started;
    hooks->on_session_vm_stopping = on_session_vm_stopping;
    hooks->on_container_session_stopping = on_container_session_stopping;
    return PLUGHOST_OK;
}
