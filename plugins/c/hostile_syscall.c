/*
 * hostile_syscall.c — makes the one syscall named by $PH_SYSCALL (issue 12, point 9) in on_vm_started.
 *
 * $PH_SYSCALL: clone_newuser, clone3, unshare_newuser, io_uring_setup, io_uring_enter,
 * io_uring_register, name_to_handle_at, open_by_handle_at, open_tree_attr, listmount, statmount.
 *
 * Logs `calling name=<call>`, then, if the call comes back, `returned name=<call> rc=<rc> errno=<e>`.
 * A process the call created (clone, clone3) exits at once. After clone3, it also starts and joins a
 * thread (libc falls back from clone3 to clone) and forks a child, logging `thread_ok` and `fork_ok`.
 * Returns 0.
 */
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "ph_test.h"

static void *thread_main(void *arg)
{
    (void)arg;
    return NULL;
}

static long call(const char *name)
{
    static char buffer[4096];
    memset(buffer, 0, sizeof buffer);
    if (strcmp(name, "clone_newuser") == 0)
        return syscall(SYS_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD), 0, 0, 0, 0);
    if (strcmp(name, "clone3") == 0) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_NEWUSER;
        args.exit_signal = SIGCHLD;
        return syscall(SYS_clone3, &args, sizeof args);
    }
    if (strcmp(name, "unshare_newuser") == 0)
        return syscall(SYS_unshare, CLONE_NEWUSER);
    if (strcmp(name, "io_uring_setup") == 0)
        return syscall(SYS_io_uring_setup, 1, buffer);
    if (strcmp(name, "io_uring_enter") == 0)
        return syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0);
    if (strcmp(name, "io_uring_register") == 0)
        return syscall(SYS_io_uring_register, -1, 0, NULL, 0);
    if (strcmp(name, "name_to_handle_at") == 0) {
        int mount_id = 0;
        *(unsigned int *)buffer = 128; /* handle_bytes */
        return syscall(SYS_name_to_handle_at, AT_FDCWD, "/", buffer, &mount_id, 0);
    }
    if (strcmp(name, "open_by_handle_at") == 0)
        return syscall(SYS_open_by_handle_at, AT_FDCWD, buffer, O_RDONLY);
    /* Numbers of the unified table (the same on every architecture since 424). */
    if (strcmp(name, "statmount") == 0)
        return syscall(457, NULL, NULL, 0, 0);
    if (strcmp(name, "listmount") == 0)
        return syscall(458, NULL, NULL, 0, 0);
    if (strcmp(name, "open_tree_attr") == 0)
        return syscall(467, AT_FDCWD, "/", 0, NULL, 0);
    errno = EINVAL;
    return -2;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    const char *name = ph_env("PH_SYSCALL", "none");
    ph_log("calling name=%s", name);
    errno = 0;
    long rc = call(name);
    if (rc == 0 && (strcmp(name, "clone_newuser") == 0 || strcmp(name, "clone3") == 0))
        _exit(0); /* the child the call made */
    ph_log("returned name=%s rc=%ld errno=%d", name, rc, errno);
    if (rc > 0 && (strcmp(name, "clone_newuser") == 0 || strcmp(name, "clone3") == 0))
        waitpid((pid_t)rc, NULL, 0);
    if (strcmp(name, "clone3") == 0) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, thread_main, NULL) == 0 && pthread_join(thread, NULL) == 0)
            ph_log("thread_ok");
        pid_t child = fork();
        if (child == 0)
            _exit(0);
        if (child > 0 && waitpid(child, NULL, 0) == child)
            ph_log("fork_ok");
    }
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
