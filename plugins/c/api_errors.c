/*
 * api_errors.c: calls the API with bad arguments from on_vm_started and logs every status.
 *
 * One log line per call, `key=<status>` (the line is exactly that), in this order:
 *   missing_host_path     mount_folder(sid, "/nonexistent/plughost-missing", "/mnt/missing", false, "missing")  -> -ENOENT (-2)
 *   missing_binary        execute_binary(sid, "/nonexistent/plughost-binary", {"x",NULL}, &fd)                 -> negative
 *   unknown_session       mount_folder(0x7fffffff, $PH_DIR, "/mnt/x", true, "x")                                -> PLUGHOST_E_NOT_FOUND (-10005)
 *   null_host_path        mount_folder(sid, NULL, "/mnt/x", true, "x")                                          -> -EFAULT (-14)
 *   null_fd_out           execute_binary(sid, "/bin/true", {"true",NULL}, NULL)                                 -> -EFAULT (-14)
 *   null_argv             execute_binary(sid, "/bin/true", NULL, &fd)                                           -> -EFAULT (-14)
 *   error_from_thread     plugin_error("x") from a pthread the hook creates and joins                           -> PLUGHOST_E_ILLEGAL_CALL (-10002)
 *   unknown_distribution  execute_binary_in_distribution(sid, &{0xEE x16}, "/bin/true", {"true",NULL}, &fd)     -> PLUGHOST_E_NOT_FOUND (-10005)
 *   container_unknown     container_mount_folder(0x7fffffff, $PH_DIR, "/mnt/c", true)                           -> PLUGHOST_E_NOT_FOUND (-10005)
 *   container_relative    container_mount_folder(1, $PH_DIR, "relative/path", true)                             -> -EINVAL (-22)
 * Any fd a call returned is closed. The hook returns 0.
 * on_vm_stopping: plugin_error("not allowed here") (not a veto hook) -> logs `error_in_stopping=<s>`
 * (PLUGHOST_E_ILLEGAL_CALL expected); returns 0.
 *
 * Env: PH_LOG, PH_DIR.
 * Tests expect: `loaded` and the lines above (exact expected values are the tests' business).
 */
#include "ph_test.h"

#include <pthread.h>

static const struct plughost_api_v1 *api;

static void close_if_returned(plughost_status s, int fd)
{
    if (s == PLUGHOST_OK && fd >= 0)
        close(fd);
}

static void *error_thread(void *arg)
{
    plughost_status *out = arg;
    *out = api->plugin_error("x");
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    const char *ph_dir = ph_env("PH_DIR", "/nonexistent/PH_DIR-unset");
    plughost_status s;
    int fd;

    s = api->mount_folder(session->id, "/nonexistent/plughost-missing", "/mnt/missing", false, "missing");
    ph_log("missing_host_path=%d", s);

    {
        const char *const argv[] = {"x", NULL};
        fd = -1;
        s = api->execute_binary(session->id, "/nonexistent/plughost-binary", argv, &fd);
        close_if_returned(s, fd);
        ph_log("missing_binary=%d", s);
    }

    s = api->mount_folder(0x7fffffff, ph_dir, "/mnt/x", true, "x");
    ph_log("unknown_session=%d", s);

    s = api->mount_folder(session->id, NULL, "/mnt/x", true, "x");
    ph_log("null_host_path=%d", s);

    const char *const true_argv[] = {"true", NULL};

    s = api->execute_binary(session->id, "/bin/true", true_argv, NULL);
    ph_log("null_fd_out=%d", s);

    fd = -1;
    s = api->execute_binary(session->id, "/bin/true", NULL, &fd);
    close_if_returned(s, fd);
    ph_log("null_argv=%d", s);

    {
        plughost_status thread_status = 1; /* not a status any call returns */
        pthread_t thread;
        int rc = pthread_create(&thread, NULL, error_thread, &thread_status);
        if (rc == 0)
            pthread_join(thread, NULL);
        else
            thread_status = -rc;
        ph_log("error_from_thread=%d", thread_status);
    }

    {
        struct plughost_uuid unknown;
        memset(unknown.bytes, 0xEE, sizeof unknown.bytes);
        fd = -1;
        s = api->execute_binary_in_distribution(session->id, &unknown, "/bin/true", true_argv, &fd);
        close_if_returned(s, fd);
        ph_log("unknown_distribution=%d", s);
    }

    s = api->container_mount_folder(0x7fffffff, ph_dir, "/mnt/c", true);
    ph_log("container_unknown=%d", s);

    s = api->container_mount_folder(1, ph_dir, "relative/path", true);
    ph_log("container_relative=%d", s);

    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    plughost_status s = api->plugin_error("not allowed here");
    ph_log("error_in_stopping=%d", s);
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
