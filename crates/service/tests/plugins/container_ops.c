/*
 * container_ops.c: the container-session API against a real session VM (a test plugin of
 * crates/service; built by tests/daemon.rs with the same flags as plugins/c).
 *
 * on_session_vm_started(cs):
 *   container_mount_folder(cs, $PH_DIR, "/mnt/c", true)                          -> `cmount status=`
 *   container_create_process(cs, "/bin/cat", {"cat","/mnt/c/file"}, envp)        -> `create status=`
 *   reads the process's stdout to EOF, polls its exit fd, reads its exit code    -> `cproc content= exit=`
 *   process_get_exit_code before it could have run is not checked (racy); after exit it must be 0
 *   container_unmount_folder(cs, "/mnt/c")                                       -> `cunmount status=`
 *   runs `sh -c 'cat /mnt/c/file; exit 5'` again: the file is gone               -> `after content= exit=`
 * Env: PH_LOG, PH_DIR.
 */
#include "ph_test.h"

#include <poll.h>

static const struct plughost_api_v1 *api;

static void run(plughost_container_session_id id, const char *const *argv, const char *event)
{
    const char *const envp[] = {"PATH=/usr/bin:/bin", NULL};
    plughost_process *p = NULL;
    int err = 0;
    plughost_status s = api->container_create_process(id, argv[0][0] == '/' ? argv[0] : "/bin/sh", argv, envp, &p, &err);
    ph_log("create status=%d errno=%d", s, err);
    if (s != PLUGHOST_OK)
        return;
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
    s = api->process_get_exit_code(p, &code);
    api->process_release(p);
    char tok[256];
    ph_log("%s content=%s exit=%d status=%d", event, ph_tok(content, tok, sizeof tok), code, s);
}

static plughost_status on_session_vm_started(const struct plughost_container_session *cs)
{
    plughost_status s = api->container_mount_folder(cs->id, ph_env("PH_DIR", "/nonexistent"), "/mnt/c", true);
    ph_log("cmount status=%d", s);
    const char *const cat[] = {"/bin/cat", "/mnt/c/file", NULL};
    run(cs->id, cat, "cproc");
    s = api->container_unmount_folder(cs->id, "/mnt/c");
    ph_log("cunmount status=%d", s);
    const char *const sh[] = {"sh", "-c", "cat /mnt/c/file 2>/dev/null; exit 5", NULL};
    run(cs->id, sh, "after");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_session_vm_started = on_session_vm_started;
    return PLUGHOST_OK;
}
