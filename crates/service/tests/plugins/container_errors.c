/*
 * container_errors.c: the documented failures of the container-session and process calls, against a
 * real session VM (a test plugin of crates/service; built by tests/contract.rs with the same flags
 * as plugins/c). Everything runs in on_session_vm_started(cs) and logs one line `key=<status>`:
 *
 *   cmount_missing      container_mount_folder(cs, "/nonexistent/plughost-missing", "/mnt/m", true) -> -ENOENT
 *   cmount_null         container_mount_folder(cs, NULL, "/mnt/m", true)                           -> -EFAULT
 *   cunmount_unknown    container_unmount_folder(cs, "/mnt/never-mounted")                          -> -EINVAL
 *   cunmount_relative   container_unmount_folder(cs, "mnt/x")                                       -> -EINVAL
 *   cunmount_unknown_cs container_unmount_folder(0x7fffffff, "/mnt/x")                              -> NOT_FOUND
 *   create_null_path    container_create_process(cs, NULL, argv, NULL, &p, NULL)                    -> -EFAULT
 *   create_null_out     container_create_process(cs, "/bin/true", argv, NULL, NULL, NULL)          -> -EFAULT
 *   create_missing      container_create_process(cs, "/nonexistent/plughost-bin", ...)             -> -ENOENT,
 *                       and `create_missing_errno=` the errno_out it got (2)
 *   create_unknown_cs   container_create_process(0x7fffffff, "/bin/true", ...)                      -> NOT_FOUND
 *   Then with `cat` started (it waits for its stdin):
 *   get_fd_bad_which    process_get_fd(p, 7, &fd)                                                   -> -EINVAL
 *   get_fd_null         process_get_fd(p, PLUGHOST_PROCESS_STDOUT, NULL)                           -> -EFAULT
 *   exit_fd_null        process_get_exit_fd(p, NULL)                                               -> -EFAULT
 *   exit_code_running   process_get_exit_code(p, &code) while cat waits for stdin                  -> ILLEGAL_STATE
 *   exit_code_null      process_get_exit_code(p, NULL)                                             -> -EFAULT
 *   exit_code_after     process_get_exit_code(p, &code) once stdin closed and the exit fd readable -> 0,
 *                       and `exit_code_value=` the code (0)
 * Env: PH_LOG.
 */
#include "ph_test.h"

#include <poll.h>

static const struct plughost_api_v1 *api;

static plughost_status on_session_vm_started(const struct plughost_container_session *cs)
{
    const char *const true_argv[] = {"true", NULL};
    plughost_process *p = NULL;
    int err = 0;
    ph_log("cmount_missing=%d",
           api->container_mount_folder(cs->id, "/nonexistent/plughost-missing", "/mnt/m", true));
    ph_log("cmount_null=%d", api->container_mount_folder(cs->id, NULL, "/mnt/m", true));
    ph_log("cunmount_unknown=%d", api->container_unmount_folder(cs->id, "/mnt/never-mounted"));
    ph_log("cunmount_relative=%d", api->container_unmount_folder(cs->id, "mnt/x"));
    ph_log("cunmount_unknown_cs=%d", api->container_unmount_folder(0x7fffffff, "/mnt/x"));
    ph_log("create_null_path=%d", api->container_create_process(cs->id, NULL, true_argv, NULL, &p, NULL));
    ph_log("create_null_out=%d",
           api->container_create_process(cs->id, "/bin/true", true_argv, NULL, NULL, NULL));
    plughost_status s =
        api->container_create_process(cs->id, "/nonexistent/plughost-bin", true_argv, NULL, &p, &err);
    ph_log("create_missing=%d", s);
    ph_log("create_missing_errno=%d", err);
    ph_log("create_unknown_cs=%d",
           api->container_create_process(0x7fffffff, "/bin/true", true_argv, NULL, &p, NULL));

    const char *const cat_argv[] = {"cat", NULL};
    p = NULL;
    s = api->container_create_process(cs->id, "/bin/cat", cat_argv, NULL, &p, NULL);
    ph_log("cat_started=%d", s);
    if (s != PLUGHOST_OK)
        return PLUGHOST_OK;
    int fd = -1, code = -1;
    ph_log("get_fd_bad_which=%d", api->process_get_fd(p, (enum plughost_process_fd)7, &fd));
    ph_log("get_fd_null=%d", api->process_get_fd(p, PLUGHOST_PROCESS_STDOUT, NULL));
    ph_log("exit_fd_null=%d", api->process_get_exit_fd(p, NULL));
    ph_log("exit_code_running=%d", api->process_get_exit_code(p, &code));
    ph_log("exit_code_null=%d", api->process_get_exit_code(p, NULL));
    int in = -1, exit_fd = -1;
    if (api->process_get_fd(p, PLUGHOST_PROCESS_STDIN, &in) == PLUGHOST_OK)
        close(in); /* EOF: cat exits 0 */
    if (api->process_get_exit_fd(p, &exit_fd) == PLUGHOST_OK) {
        struct pollfd pfd = {.fd = exit_fd, .events = POLLIN};
        poll(&pfd, 1, 10000);
        close(exit_fd);
    }
    ph_log("exit_code_after=%d", api->process_get_exit_code(p, &code));
    ph_log("exit_code_value=%d", code);
    api->process_release(p);
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
