/*
 * ok_mount_exec.c: the success flow.
 *
 * on_vm_started mounts $PH_DIR read-only at /mnt/ph in the session's VM, runs `cat /mnt/ph/file` there and
 * checks it printed exactly "OK" (else plugin_error("cat did not print OK") and -EIO).
 * on_distribution_started logs the distribution and starts a detached thread that, 200 ms after the hook
 * returned, runs `cat /mnt/ph/file` inside that distribution (an API call made outside any hook).
 * Every other hook only logs.
 *
 * Env: PH_LOG (log file), PH_DIR (directory holding `file` = "OK").
 * Tests expect (in $PH_LOG):
 *   loaded
 *   vm_started session=<id> uid=<uid> gid=<gid> user=<user_name> flags=<flags>
 *   mount status=0 / exec status=0 / read content=OK
 *   distribution_started session=<id> name=<name> id=<hex32> pid_ns=<u64> init_pid=<u32> package=<p|-> flavor=<f|-> version=<v|->
 *   late_exec status=<s> content=<content|->
 *   distribution_stopping name=<name>, distribution_registered name=<name> id=<hex>,
 *   distribution_unregistered name=<name> id=<hex>, vm_stopping session=<id>,
 *   container_session_created id=<id> name=<display_name> pid=<application_pid>,
 *   container_session_stopping id=<id>, session_vm_started id=<id>, session_vm_stopping id=<id>
 */
#include "ph_test.h"

#include <pthread.h>

static const struct plughost_api_v1 *api;

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    char user[256];
    ph_log("vm_started session=%u uid=%u gid=%u user=%s flags=%u", session->id, session->uid, session->gid,
           ph_tok(session->user_name, user, sizeof user), settings != NULL ? settings->flags : 0u);

    plughost_status s = api->mount_folder(session->id, ph_env("PH_DIR", "/nonexistent/PH_DIR-unset"), "/mnt/ph",
                                          true, "ph");
    ph_log("mount status=%d", s);

    const char *const argv[] = {"cat", "/mnt/ph/file", NULL};
    int fd = -1;
    s = api->execute_binary(session->id, "/bin/cat", argv, &fd);
    ph_log("exec status=%d", s);

    char content[256] = "";
    if (s == PLUGHOST_OK) {
        if (ph_read_all(fd, content, sizeof content) < 0)
            content[0] = '\0';
        close(fd);
        char tok[256];
        ph_log("read content=%s", ph_tok(content, tok, sizeof tok));
    }
    if (strcmp(content, "OK") != 0) {
        api->plugin_error("cat did not print OK");
        return -EIO;
    }
    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    ph_log("vm_stopping session=%u", session->id);
    return PLUGHOST_OK;
}

struct late_exec_args {
    plughost_session_id session_id;
    struct plughost_uuid distribution;
};

static void *late_exec_thread(void *arg)
{
    struct late_exec_args args = *(struct late_exec_args *)arg;
    free(arg);

    usleep(200 * 1000);

    const char *const argv[] = {"cat", "/mnt/ph/file", NULL};
    int fd = -1;
    plughost_status s =
        api->execute_binary_in_distribution(args.session_id, &args.distribution, "/bin/cat", argv, &fd);
    char content[256] = "";
    if (s == PLUGHOST_OK) {
        if (ph_read_all(fd, content, sizeof content) < 0)
            content[0] = '\0';
        close(fd);
    }
    char tok[256];
    ph_log("late_exec status=%d content=%s", s, ph_tok(content, tok, sizeof tok));
    return NULL;
}

static plughost_status on_distribution_started(const struct plughost_session *session,
                                               const struct plughost_distribution *d)
{
    char hex[33], name[256], package[256], flavor[256], version[256];
    ph_uuid_hex(&d->id, hex);
    ph_log("distribution_started session=%u name=%s id=%s pid_ns=%llu init_pid=%u package=%s flavor=%s version=%s",
           session->id, ph_tok(d->name, name, sizeof name), hex, (unsigned long long)d->pid_namespace,
           d->init_pid, ph_tok(d->package, package, sizeof package), ph_tok(d->flavor, flavor, sizeof flavor),
           ph_tok(d->version, version, sizeof version));

    /* The hook's pointers die when it returns: the thread gets copies. */
    struct late_exec_args *args = malloc(sizeof *args);
    if (args == NULL) {
        ph_log("late_exec_thread_failed error=%d", ENOMEM);
        return PLUGHOST_OK;
    }
    args->session_id = session->id;
    args->distribution = d->id;

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, late_exec_thread, args);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        free(args);
        ph_log("late_exec_thread_failed error=%d", rc);
    }
    return PLUGHOST_OK;
}

static plughost_status on_distribution_stopping(const struct plughost_session *session,
                                                const struct plughost_distribution *d)
{
    (void)session;
    char name[256];
    ph_log("distribution_stopping name=%s", ph_tok(d->name, name, sizeof name));
    return PLUGHOST_OK;
}

static plughost_status on_distribution_registered(const struct plughost_session *session,
                                                  const struct plughost_offline_distribution *d)
{
    (void)session;
    char hex[33], name[256];
    ph_uuid_hex(&d->id, hex);
    ph_log("distribution_registered name=%s id=%s", ph_tok(d->name, name, sizeof name), hex);
    return PLUGHOST_OK;
}

static plughost_status on_distribution_unregistered(const struct plughost_session *session,
                                                    const struct plughost_offline_distribution *d)
{
    (void)session;
    char hex[33], name[256];
    ph_uuid_hex(&d->id, hex);
    ph_log("distribution_unregistered name=%s id=%s", ph_tok(d->name, name, sizeof name), hex);
    return PLUGHOST_OK;
}

static plughost_status on_container_session_created(const struct plughost_container_session *cs)
{
    char name[256];
    ph_log("container_session_created id=%u name=%s pid=%u", cs->id, ph_tok(cs->display_name, name, sizeof name),
           cs->application_pid);
    return PLUGHOST_OK;
}

static plughost_status on_container_session_stopping(const struct plughost_container_session *cs)
{
    ph_log("container_session_stopping id=%u", cs->id);
    return PLUGHOST_OK;
}

static plughost_status on_session_vm_started(const struct plughost_container_session *cs)
{
    ph_log("session_vm_started id=%u", cs->id);
    return PLUGHOST_OK;
}

static plughost_status on_session_vm_stopping(const struct plughost_container_session *cs)
{
    ph_log("session_vm_stopping id=%u", cs->id);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    hooks->on_distribution_started = on_distribution_started;
    hooks->on_distribution_stopping = on_distribution_stopping;
    hooks->on_distribution_registered = on_distribution_registered;
    hooks->on_distribution_unregistered = on_distribution_unregistered;
    hooks->on_container_session_created = on_container_session_created;
    hooks->on_container_session_stopping = on_container_session_stopping;
    hooks->on_session_vm_started = on_session_vm_started;
    hooks->on_session_vm_stopping = on_session_vm_stopping;
    return PLUGHOST_OK;
}
