/*
 * plughost plugin API, version 1: the plugin author's manual.
 *
 * This header states the plugin contract, version 1, in full; docs/PLUGIN_ABI.md in the plughost
 * repository is its normative summary, and the two agree. Names, struct field order and types are
 * normative: a plugin compiled against them keeps building and loading.
 *
 * ==================================================================================================
 * 1. What plughost is
 * ==================================================================================================
 *
 * plughost lets a Linux service load native plugins: shared libraries with a C ABI. The service runs,
 * per user SESSION, one VM (the utility environment; in the reference service plughostd, a Linux
 * namespace sandbox) that hosts DISTRIBUTIONS (registered root filesystems, started as containers in
 * the VM). CONTAINER SESSIONS are a second, lighter kind of session, created per application, each with
 * its own lazily started SESSION VM. The service tells every plugin about lifecycle events through
 * HOOKS (struct plughost_hooks_v1) and gives it an API of calls back into the service
 * (struct plughost_api_v1).
 *
 * Process model. By default each plugin runs in its own host process, plughost-host: one host per
 * plugin, started by the service and bound to the service's lifetime (when the service dies, the host
 * dies with it). Hooks and API calls travel between the service and the host over a private channel; a
 * plugin that crashes, hangs or leaks takes down only its own host. An administrator may opt in to
 * loading a trusted plugin directly into the service process (in-process mode). A plugin must work
 * unmodified in both modes, so:
 *   - do not change process-wide state you do not own: signal dispositions, the working directory,
 *     umask, the environment, rlimits, uid/gid; do not close descriptors you did not open; never call
 *     exit(), _exit() or abort() on purpose (in process, they would end the service);
 *   - do not rely on getpid(), getuid() or the process being yours: the service runs as root and acts
 *     on behalf of the user in struct plughost_session (use its uid/gid/user_name);
 *   - processes you fork yourself belong to the host: they are killed with it. To run something in the
 *     VM, use execute_binary / execute_binary_in_distribution / container_create_process.
 *
 * ==================================================================================================
 * 2. Building a plugin
 * ==================================================================================================
 *
 *     cc -shared -fPIC -o myplugin.so myplugin.c -I/path/to/include
 *
 * Add -pthread if the plugin uses threads. The only symbol plughost looks up is the entry point,
 * plughost_plugin_entry_v1 (spelled PLUGHOST_ENTRY_POINT_V1, exported by PLUGHOST_EXPORT even under
 * -fvisibility=hidden). The header is C11 and C++ compatible. A minimal complete plugin:
 *
 * ---- example plugin: myplugin.c ----
 * #include <stdio.h>
 * #include <sys/socket.h>
 * #include <unistd.h>
 *
 * #include <plughost/plugin_api.h>
 *
 * static const struct plughost_api_v1 *g_api; // valid for the plugin's whole lifetime
 *
 * static plughost_status on_vm_started(const struct plughost_session *session,
 *                                      const struct plughost_vm_settings *settings)
 * {
 *     (void)settings;
 *     plughost_status rc = g_api->mount_folder(session->id, "/opt/mytool", "/mnt/mytool",
 *                                              true, "mytool");
 *     if (rc != PLUGHOST_OK) {
 *         // A veto: the VM start fails and the user sees this message, naming the plugin.
 *         g_api->plugin_error("cannot share /opt/mytool with the VM");
 *         return rc;
 *     }
 *
 *     static const char *const argv[] = {"/mnt/mytool/setup", "--quiet", NULL};
 *     int fd = -1;
 *     rc = g_api->execute_binary(session->id, "/mnt/mytool/setup", argv, &fd);
 *     if (rc != PLUGHOST_OK)
 *         return rc; // without a message: "returned a fatal error (status <rc>)"
 *     shutdown(fd, SHUT_WR); // no input: EOF on the tool's stdin
 *     char buf[256];
 *     ssize_t n;
 *     while ((n = read(fd, buf, sizeof buf)) > 0) // the tool's stdout, until it closes it
 *         fwrite(buf, 1, (size_t)n, stderr);
 *     close(fd); // the fd is ours
 *     fprintf(stderr, "VM ready for %s\n", session->user_name);
 *     return PLUGHOST_OK;
 * }
 *
 * static plughost_status on_vm_stopping(const struct plughost_session *session)
 * {
 *     fprintf(stderr, "VM of session %u stopping\n", (unsigned)session->id);
 *     return PLUGHOST_OK;
 * }
 *
 * PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
 *                                                         struct plughost_hooks_v1 *hooks)
 * {
 *     PLUGHOST_REQUIRE_VERSION(0, 1, 0, api); // refuse to load on an older service
 *     g_api = api;
 *     hooks->on_vm_started = on_vm_started;
 *     hooks->on_vm_stopping = on_vm_stopping;
 *     return PLUGHOST_OK;
 * }
 * ---- end of example ----
 *
 * ==================================================================================================
 * 3. Rules every plugin relies on
 * ==================================================================================================
 *
 * Threads.
 *   - Every API function may be called from any thread, during a hook or not. The plugin may start its
 *     own threads and call the API from them at any time.
 *   - A call made from a plugin thread while a hook of the same session is running completes; it does
 *     not deadlock against the hook. (A hook may hand work to a thread of its own that calls the API,
 *     and wait for it; in process, see the one limit below.)
 *   - In-process mode has one limit: a call made during a hook from another thread than the hook
 *     thread is served as a call made outside any hook. With the reference service plughostd it
 *     completes; with a service whose callbacks wait for what the running operation holds, it waits
 *     until the hook has returned, so a hook that waits for such a call never returns (and is
 *     classified as hung out of process, where the limit does not exist). A plugin meant for both
 *     modes makes the calls a hook waits for on the hook thread itself.
 *   - The HOOK THREAD is the thread that called the hook, for the duration of that call. plugin_error
 *     is accepted only there.
 *   - Hooks of one plugin are delivered one at a time: the next hook (of any session) reaches the
 *     plugin only after the previous one returned. Keep hooks short: a hook blocks the operation it
 *     reports, and a hook that never returns may be classified as hung and treated as a crash.
 *   - Across plugins, a hook is delivered in configuration order; a veto (see the hooks) stops the
 *     delivery of that hook to the later plugins.
 *
 * Lifetimes.
 *   - Every pointer handed to a hook (the structs and every string in them) is valid only for the
 *     duration of that call: copy what you keep.
 *   - api stays valid for the plugin's lifetime; keep the pointer.
 *   - Strings, in both directions, are NUL-terminated UTF-8. The service copies the strings you pass
 *     before the call returns.
 *   - Every descriptor an API call returns is owned by the caller, who must close it; it is created
 *     with FD_CLOEXEC set.
 *
 * Output. What the plugin writes to its stdout and stderr goes to the service's log, each line
 * prefixed with the plugin's name. It never corrupts the channel to the service. Output is logged line
 * by line: end lines with '\n', and use line-buffered output (setvbuf(stdout, NULL, _IOLBF, 0)) or
 * fflush, or a message may show up late, or be lost if the process is killed.
 *
 * The host process (out of process, the default). Before the plugin's constructors run, the host
 * confines itself; a plugin that needs more must say so in the service's configuration:
 *   - it runs as an unprivileged user (the service's configuration names it; often "plughost" or
 *     "nobody"), with no capabilities and no_new_privs, in a session and process group of its own
 *     (a service without root keeps its own user and gives the host only a process group),
 *     with an empty environment apart from what the configuration passes, cwd "/", umask 077, and
 *     the configured limits (address space / memory, open files, processes, CPU time);
 *   - Landlock (where the kernel has it): files open read-only beneath /usr /lib /lib64 /lib32 /bin
 *     /sbin /etc /proc /sys /dev and the configured read paths, read-write only beneath the
 *     configured write paths; anything else fails with EACCES, and nothing else reports it. The
 *     host logs its rules once at start ("plughost-host: Landlock: the plugin may open ...") in
 *     the service's log; a path the plugin needs goes into its configuration (plughostd:
 *     read_paths / write_paths of the plugin's [[plugin]] entry);
 *   - a seccomp filter (unless the configuration turns it off for the plugin): ptrace,
 *     process_vm_readv/writev, mount and the other mount-API calls, pivot_root, chroot, unshare,
 *     setns, kexec, bpf, module loading, reboot, swapon/swapoff, keyctl/add_key/request_key,
 *     personality, userfaultfd, perf_event_open, acct, setting the clock, open_by_handle_at,
 *     quotactl, syslog and vhangup kill the host at once ("crashed: blocked syscall N (name)");
 *   - what the host itself uses is off limits: its channel to the service (a SOCK_SEQPACKET
 *     socket), one eventfd, and a small shared-memory region (shown in /proc/self/maps as
 *     "memfd:plughost-ring:<plugin name>") through which API calls and hook answers travel. Do not
 *     close, read, write or remap them: a plugin that does breaks only its own host (its API calls
 *     may fail or stall), and the service kills that host when it sees what was done, reporting a
 *     protocol violation (or "closed its channel to the service").
 *
 * Crashes. If the plugin's host crashes (signal, unexpected exit, protocol violation, or a hook that
 * hangs), the host and every process it spawned, even double-forked daemons, are killed. If that
 * happened during a veto hook, the operation fails with "plugin '<name>' crashed: <how>". The plugin is
 * then latched as crashed: later VM starts fail fast with that error instead of loading it again. A
 * crash at any other time (in a hook that may not veto, in a plugin thread, between hooks) is logged
 * and latches the plugin the same way, as soon as the service sees the host die: the next operation
 * fails before any plugin gets its hook. The service keeps one latch: when several plugins crashed,
 * every operation reports the first crash in time. In in-process mode a crash takes the service
 * down: the reason why that mode is for trusted plugins only. A fault (SIGSEGV, SIGBUS, SIGILL,
 * SIGFPE, SIGABRT) is located: the host's handler for those signals records the crashing thread's
 * stack, and the service names where, e.g. "killed by signal SIGSEGV (address 0x0) in parse_config
 * (x.c:42), called from on_vm_started (x.c:88)": file and line when the library has debug info
 * (-g), else the nearest symbol and the library offset. A plugin that installs its own handler for
 * those signals, or replaces the main thread's alternate signal stack, loses that report (the crash
 * is still reported by its signal).
 *
 * Shutdown. Calls made while the host or the service shuts down return PLUGHOST_E_SHUTTING_DOWN (the
 * call did not run); calls that need something the service has begun tearing down return
 * PLUGHOST_E_NOT_RUNNING. After the stopping hooks (on_vm_stopping, on_distribution_stopping,
 * on_container_session_stopping, on_session_vm_stopping) have returned, the process may be killed
 * without further notice: destructors and atexit handlers may not run. Save what matters in the hook.
 *
 * User-visible errors. When a veto hook fails the operation, the operation fails with one of (the
 * wording may be refined; the plugin's name, the status code and the cause are always in it):
 *   plugin '<name>' returned a fatal error: <message> (status <code>)    a message was set
 *   plugin '<name>' returned a fatal error (status <code>)              no message
 *     (<code>: the status and its name, when it has one: "-30 (EROFS)", "-10005 (PLUGHOST_E_NOT_FOUND)")
 *   plugin '<name>' crashed: <signal name [(address A) in where] / exit status / protocol violation / hung>
 *   plugin '<name>' failed to load: <reason>                           the entry point failed
 *   plugin '<name>' requires a newer version of plughost than <running version>
 *                                            the entry point returned PLUGHOST_E_REQUIRES_UPDATE
 */
#ifndef PLUGHOST_PLUGIN_API_H
#define PLUGHOST_PLUGIN_API_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==================================================================================================
 * 4. Status codes
 * ==================================================================================================
 *
 * Every hook and API function returns a plughost_status: 0 is success; a negative value is a failure,
 * either -errno (e.g. -ENOENT, from <errno.h>) or one of the PLUGHOST_E_* codes below, which lie
 * outside the errno range. A hook may return any negative value; the user sees it as "(status <code>)".
 * Argument errors of every API function: -EINVAL (a bad value) and -EFAULT (NULL where a pointer is
 * required).
 */
typedef int32_t plughost_status;

/* Success. */
#define PLUGHOST_OK ((plughost_status)0)
/* Returned by PLUGHOST_REQUIRE_VERSION when the running service is older than the plugin needs. As the
 * entry point's result it fails the load with "requires a newer version of plughost". */
#define PLUGHOST_E_REQUIRES_UPDATE ((plughost_status)-10001)
/* plugin_error called outside a hook, during a hook that may not veto, or on another thread than the
 * hook thread. */
#define PLUGHOST_E_ILLEGAL_CALL ((plughost_status)-10002)
/* plugin_error called twice during one hook; or a hook set a message and returned success (the
 * operation then fails with this code). Also: process_get_exit_code while the process runs. */
#define PLUGHOST_E_ILLEGAL_STATE ((plughost_status)-10003)
/* The VM, session VM or distribution the call needs is not running. */
#define PLUGHOST_E_NOT_RUNNING ((plughost_status)-10004)
/* Unknown session, container session or distribution id. Never means the host died. */
#define PLUGHOST_E_NOT_FOUND ((plughost_status)-10005)
/* The host or the service is shutting down; the call did not run. */
#define PLUGHOST_E_SHUTTING_DOWN ((plughost_status)-10006)
/* Used by the service in its own errors (a plugin's host crashed); never returned to a plugin. */
#define PLUGHOST_E_HOST_CRASHED ((plughost_status)-10007)

/* ==================================================================================================
 * 5. Types handed to hooks
 * ==================================================================================================
 * Never NULL when handed to a hook; valid only during that call (see "Lifetimes"). */

/* The running service's version (api->version); compare with PLUGHOST_REQUIRE_VERSION. */
struct plughost_version {
    uint32_t major;
    uint32_t minor;
    uint32_t revision;
};

/* A UUID, RFC 9562 byte order (bytes[0] is the first byte of the text form). */
struct plughost_uuid {
    uint8_t bytes[16];
};

/* An opaque cookie per user session: not a uid; pass it back to the API unchanged. */
typedef uint32_t plughost_session_id;

/* The user on whose behalf the service acts. The service runs as root: use uid/gid/user_name, never
 * getuid(). */
struct plughost_session {
    plughost_session_id id;
    uint32_t uid;
    uint32_t gid;
    const char *user_name;
};

/* Bits of plughost_vm_settings.flags. Ignore bits you do not know: later versions may add some. */
#define PLUGHOST_VM_CUSTOM_KERNEL 1u         /* the user's configuration asks for a custom kernel */
#define PLUGHOST_VM_CUSTOM_KERNEL_CMDLINE 2u /* ... for a custom kernel command line */

/* How the VM was configured (the reference service passes the flags through from its session
 * settings). */
struct plughost_vm_settings {
    uint32_t flags;
};

/* A running distribution. */
struct plughost_distribution {
    struct plughost_uuid id; /* stable across restarts of the service */
    const char *name;
    uint64_t pid_namespace; /* inode number of the distribution's pid namespace */
    const char *package;    /* "" when none */
    uint32_t init_pid;      /* pid of its init as seen from the service (the service's pid namespace,
                               which need not be the plugin's) */
    const char *flavor;     /* ID= of the rootfs's /etc/os-release, "" when unknown */
    const char *version;    /* VERSION_ID= of the same file, "" when unknown */
};

/* A registered distribution, for registration events, when nothing of it runs. Fields as above. */
struct plughost_offline_distribution {
    struct plughost_uuid id;
    const char *name;
    const char *package;
    const char *flavor;
    const char *version;
};

/* Container sessions are numbered separately from user sessions, starting at 1. */
typedef uint32_t plughost_container_session_id;

struct plughost_container_session {
    plughost_container_session_id id;
    const char *display_name;
    uint32_t application_pid; /* the application the session was created for, as seen from the
                                 service (its pid namespace need not be the plugin's) */
    uint32_t uid;
    uint32_t gid;
};

/* A process created in a container session by container_create_process; used only by pointer. */
typedef struct plughost_process plughost_process;

/* The standard streams of a plughost_process, for process_get_fd. */
enum plughost_process_fd {
    PLUGHOST_PROCESS_STDIN = 0,
    PLUGHOST_PROCESS_STDOUT = 1,
    PLUGHOST_PROCESS_STDERR = 2
};

/* ==================================================================================================
 * 6. Hooks
 * ==================================================================================================
 * The service zero-fills struct plughost_hooks_v1 before the entry point runs; set the hooks you want
 * and leave the others NULL. Every hook returns PLUGHOST_OK or a negative status.
 *
 * A hook that MAY VETO fails the operation it reports by returning a negative status, optionally after
 * calling api->plugin_error(message) once; the operation then fails with the user-visible error of
 * section 3 and the hook is not delivered to the later plugins. A hook that may not veto has its errors
 * logged and otherwise ignored, and may not call plugin_error (PLUGHOST_E_ILLEGAL_CALL).
 *
 * Because a veto stops delivery, a plugin can receive a stopping hook for something whose started or
 * created hook it never saw or vetoed itself: stopping hooks must tolerate unknown ids.
 * In every hook the plugin may call any API function (see "Threads").
 */
typedef plughost_status (*plughost_on_vm_started_fn)(const struct plughost_session *session,
                                                     const struct plughost_vm_settings *settings);
typedef plughost_status (*plughost_on_vm_stopping_fn)(const struct plughost_session *session);
typedef plughost_status (*plughost_on_distribution_started_fn)(
    const struct plughost_session *session, const struct plughost_distribution *distribution);
typedef plughost_status (*plughost_on_distribution_stopping_fn)(
    const struct plughost_session *session, const struct plughost_distribution *distribution);
typedef plughost_status (*plughost_on_distribution_registered_fn)(
    const struct plughost_session *session, const struct plughost_offline_distribution *distribution);
typedef plughost_status (*plughost_on_distribution_unregistered_fn)(
    const struct plughost_session *session, const struct plughost_offline_distribution *distribution);
typedef plughost_status (*plughost_on_container_session_created_fn)(
    const struct plughost_container_session *container_session);
typedef plughost_status (*plughost_on_container_session_stopping_fn)(
    const struct plughost_container_session *container_session);
typedef plughost_status (*plughost_on_session_vm_started_fn)(
    const struct plughost_container_session *container_session);
typedef plughost_status (*plughost_on_session_vm_stopping_fn)(
    const struct plughost_container_session *container_session);

struct plughost_hooks_v1 {
    /* on_vm_started(session, settings)
     * The VM of a user session has started. settings: how it was configured (flags, section 5).
     * MAY VETO: the VM start fails, and every plugin then gets on_vm_stopping.
     * The VM serves calls from here on: the place for mount_folder and execute_binary. */
    plughost_on_vm_started_fn on_vm_started;

    /* on_vm_stopping(session)
     * The session's VM is stopping; also delivered after a vetoed start, to every plugin.
     * May not veto: errors are logged. The VM may already be going down: calls for it may fail with
     * PLUGHOST_E_NOT_RUNNING. Release what you hold for the session here. */
    plughost_on_vm_stopping_fn on_vm_stopping;

    /* on_distribution_started(session, distribution)
     * A distribution has started in the session's VM. MAY VETO: the start fails, and that
     * distribution gets no on_distribution_stopping (plugins that accepted it must cope, e.g. by
     * cleaning up on on_vm_stopping). execute_binary_in_distribution works here. */
    plughost_on_distribution_started_fn on_distribution_started;

    /* on_distribution_stopping(session, distribution)
     * A distribution is stopping. May not veto: errors are logged. */
    plughost_on_distribution_stopping_fn on_distribution_stopping;

    /* on_distribution_registered(session, distribution)
     * A distribution was registered for the session's user; nothing of it runs (hence the offline
     * struct). May not veto: errors are logged. */
    plughost_on_distribution_registered_fn on_distribution_registered;

    /* on_distribution_unregistered(session, distribution)
     * A distribution was unregistered. May not veto: errors are logged. */
    plughost_on_distribution_unregistered_fn on_distribution_unregistered;

    /* on_container_session_created(container_session)
     * A container session is being created for an application. Its session VM need not run yet.
     * MAY VETO: the session is not created, and its on_container_session_stopping is still
     * delivered. */
    plughost_on_container_session_created_fn on_container_session_created;

    /* on_container_session_stopping(container_session)
     * A container session is stopping: it was stopped, its application (application_pid) exited, or
     * its creation was vetoed. May not veto: errors are logged. */
    plughost_on_container_session_stopping_fn on_container_session_stopping;

    /* on_session_vm_started(container_session)
     * The session VM of a container session was created, or re-created: fires each time it is.
     * May not veto: errors are logged. container_create_process works from here on. */
    plughost_on_session_vm_started_fn on_session_vm_started;

    /* on_session_vm_stopping(container_session)
     * The session VM is stopping: exactly once per on_session_vm_started. May not veto: errors are
     * logged. The session VM still serves calls during this hook, from any plugin thread. */
    plughost_on_session_vm_stopping_fn on_session_vm_stopping;
};

/* ==================================================================================================
 * 7. API
 * ==================================================================================================
 * Every function returns PLUGHOST_OK or a negative status. Besides those listed per function, every
 * function may return -EFAULT (NULL where a pointer is required), -EINVAL (a bad value),
 * PLUGHOST_E_SHUTTING_DOWN and, when what it needs is being torn down, PLUGHOST_E_NOT_RUNNING.
 * "The VM" of a session runs from on_vm_started until on_vm_stopping. Paths inside a VM are absolute.
 * Container-session functions return -ENOSYS where the service does not implement container sessions.
 */
typedef plughost_status (*plughost_mount_folder_fn)(plughost_session_id session,
                                                    const char *host_path, const char *vm_path,
                                                    bool read_only, const char *name);
typedef plughost_status (*plughost_execute_binary_fn)(plughost_session_id session, const char *path,
                                                      const char *const *argv, int *fd_out);
typedef plughost_status (*plughost_plugin_error_fn)(const char *message);
typedef plughost_status (*plughost_execute_binary_in_distribution_fn)(
    plughost_session_id session, const struct plughost_uuid *distribution, const char *path,
    const char *const *argv, int *fd_out);
typedef plughost_status (*plughost_container_mount_folder_fn)(
    plughost_container_session_id container_session, const char *host_path, const char *mountpoint,
    bool read_only);
typedef plughost_status (*plughost_container_unmount_folder_fn)(
    plughost_container_session_id container_session, const char *mountpoint);
typedef plughost_status (*plughost_container_create_process_fn)(
    plughost_container_session_id container_session, const char *path, const char *const *argv,
    const char *const *envp, plughost_process **process_out, int *errno_out);
typedef plughost_status (*plughost_process_get_fd_fn)(plughost_process *process,
                                                      enum plughost_process_fd which, int *fd_out);
typedef plughost_status (*plughost_process_get_exit_fd_fn)(plughost_process *process, int *fd_out);
typedef plughost_status (*plughost_process_get_exit_code_fn)(plughost_process *process,
                                                             int *exit_code);
typedef void (*plughost_process_release_fn)(plughost_process *process);

struct plughost_api_v1 {
    /* The running service's version. Check it with PLUGHOST_REQUIRE_VERSION. */
    struct plughost_version version;

    /* mount_folder(session, host_path, vm_path, read_only, name)
     * Bind-mounts host_path at vm_path in the session's VM, creating missing directories.
     *   session    a plughost_session.id
     *   host_path  the directory or file to share, a path on the host
     *   vm_path    where it appears in the VM: any absolute path (the VM's root is its own)
     *   read_only  true: the VM cannot write to it
     *   name       a short name for the mount, by which the service identifies it (e.g. in its log)
     * A share gives the VM's programs the session user's rights on host_path, never more: a write
     * the user could not make on the host fails in the VM with EACCES, whoever makes it, the VM's
     * root included (in plughostd the folder is opened as the user, so one the user cannot reach
     * fails here with -EACCES). Root in the VM is root of the VM only: a service may (plughostd
     * does) map it to an unprivileged host user, so a program a plugin starts cannot touch the
     * host beyond what is shared with the VM.
     * Errors: -ENOENT host_path does not exist; -EACCES the session user may not reach host_path;
     * -EINVAL a path is not absolute; -EFAULT a string is NULL; PLUGHOST_E_NOT_FOUND unknown
     * session; PLUGHOST_E_NOT_RUNNING the session's VM is not running. */
    plughost_mount_folder_fn mount_folder;

    /* execute_binary(session, path, argv, fd_out)
     * Starts a program in the session's VM and returns at once, without waiting for it.
     *   path    the program, an absolute path in the VM (no PATH search)
     *   argv    its arguments, NULL-terminated, argv[0] included
     *   fd_out  receives a SOCK_STREAM unix socket connected to the process's stdin and stdout: write
     *           to it to feed stdin, shutdown(fd, SHUT_WR) to send EOF, read it for stdout (EOF when
     *           the process closes its stdout or exits). The caller owns it and closes it
     *           (FD_CLOEXEC set).
     * The process's stderr goes to the service's log. Read its output, or the process may block once
     * the socket buffer is full. If it may exit before reading all its input, prefer
     * send(fd, buf, len, MSG_NOSIGNAL) to write(): whether SIGPIPE is ignored in the process the plugin
     * runs in is not part of the contract.
     * The program runs as root of the VM (see mount_folder for what that is) and the call returns
     * once it runs: PLUGHOST_OK means it started.
     * Errors: -EFAULT path, argv or fd_out NULL; -EINVAL path is not absolute; PLUGHOST_E_NOT_FOUND
     * unknown session; PLUGHOST_E_NOT_RUNNING the session's VM is not running or is stopping;
     * -errno when the program cannot be started (e.g. -ENOENT, -EACCES). */
    plughost_execute_binary_fn execute_binary;

    /* plugin_error(message)
     * Sets the message the user sees when the current hook fails its operation (section 3); call it,
     * then return a negative status from the hook. The message is copied.
     * Allowed only on the hook thread, during a hook that may veto (on_vm_started,
     * on_distribution_started, on_container_session_created), once per hook.
     * Errors: PLUGHOST_E_ILLEGAL_CALL called outside a hook, on another thread than the hook thread,
     * or during a hook that may not veto; PLUGHOST_E_ILLEGAL_STATE already called during this hook;
     * -EFAULT message is NULL.
     * A hook that sets a message and then returns PLUGHOST_OK makes its operation fail with
     * PLUGHOST_E_ILLEGAL_STATE. */
    plughost_plugin_error_fn plugin_error;

    /* execute_binary_in_distribution(session, distribution, path, argv, fd_out)
     * As execute_binary, inside a running distribution of the session (its root filesystem and
     * namespaces): path and every symlink on the way resolve inside the distribution's root.
     *   distribution  the distribution's plughost_distribution.id
     * Errors: as execute_binary; PLUGHOST_E_NOT_FOUND also for an unknown distribution;
     * PLUGHOST_E_NOT_RUNNING also when the distribution is not running. */
    plughost_execute_binary_in_distribution_fn execute_binary_in_distribution;

    /* container_mount_folder(container_session, host_path, mountpoint, read_only)
     * Bind-mounts host_path at mountpoint in the container session.
     *   container_session  a plughost_container_session.id
     *   host_path          the directory or file to share, a path on the host
     *   mountpoint         where it appears, an absolute path
     *   read_only          true: the session cannot write to it
     * Errors: -EINVAL mountpoint is not absolute; -ENOENT host_path does not exist; -EFAULT a string
     * is NULL; PLUGHOST_E_NOT_FOUND unknown container session; PLUGHOST_E_NOT_RUNNING the session VM
     * the call needs is not running; -ENOSYS no container sessions in this service. */
    plughost_container_mount_folder_fn container_mount_folder;

    /* container_unmount_folder(container_session, mountpoint)
     * Removes the mount a container_mount_folder made at mountpoint.
     * Errors: -EINVAL mountpoint is not absolute; -EFAULT mountpoint is NULL; PLUGHOST_E_NOT_FOUND
     * unknown container session; PLUGHOST_E_NOT_RUNNING; -ENOSYS; -errno when the unmount fails. */
    plughost_container_unmount_folder_fn container_unmount_folder;

    /* container_create_process(container_session, path, argv, envp, process_out, errno_out)
     * Starts a program in the container session's session VM. Never starts a session VM: call it
     * between on_session_vm_started and the end of on_session_vm_stopping.
     *   path         the program, an absolute path in the session VM
     *   argv         its arguments, NULL-terminated, argv[0] included
     *   envp         its environment, NULL-terminated "NAME=value" strings; may be NULL
     *   process_out  receives the process handle: get its streams with process_get_fd, wait with
     *                process_get_exit_fd, read the result with process_get_exit_code, and always
     *                free it with process_release
     *   errno_out    optional (may be NULL): when the program could not be started, receives the
     *                errno of the failed start
     * Errors: -EFAULT path, argv or process_out NULL; PLUGHOST_E_NOT_FOUND unknown container session;
     * PLUGHOST_E_NOT_RUNNING the session VM is not running; -ENOSYS; -errno when the program cannot
     * be started. */
    plughost_container_create_process_fn container_create_process;

    /* process_get_fd(process, which, fd_out)
     * *fd_out receives a descriptor for one standard stream of the process: PLUGHOST_PROCESS_STDIN
     * (write to it; close it to send EOF), PLUGHOST_PROCESS_STDOUT or PLUGHOST_PROCESS_STDERR (read
     * them). The caller owns it and closes it (FD_CLOEXEC set).
     * Errors: -EINVAL which is not a plughost_process_fd; -EFAULT process or fd_out NULL;
     * PLUGHOST_E_NOT_RUNNING the session VM is gone. */
    plughost_process_get_fd_fn process_get_fd;

    /* process_get_exit_fd(process, fd_out)
     * *fd_out receives a descriptor that becomes readable (poll: POLLIN) when the process exits:
     * pidfd semantics. The caller owns it and closes it (FD_CLOEXEC set).
     * Errors: -EFAULT process or fd_out NULL; PLUGHOST_E_NOT_RUNNING the session VM is gone. */
    plughost_process_get_exit_fd_fn process_get_exit_fd;

    /* process_get_exit_code(process, exit_code)
     * *exit_code receives the exit status (0-255) of the exited process, or 128 + the signal number
     * when a signal killed it.
     * Errors: PLUGHOST_E_ILLEGAL_STATE the process is still running; -EFAULT process or exit_code
     * NULL. */
    plughost_process_get_exit_code_fn process_get_exit_code;

    /* process_release(process)
     * Frees the handle; it must not be used again (like free()). Descriptors obtained from it stay
     * open and remain the caller's. Returns nothing. */
    plughost_process_release_fn process_release;
};

/* ==================================================================================================
 * 8. Entry point and version check
 * ==================================================================================================
 * Each plugin exports one function, under the symbol name plughost_plugin_entry_v1:
 *
 *     PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
 *                                                             struct plughost_hooks_v1 *hooks)
 *     { ... }
 *
 * The service calls it once, after loading the plugin (in its host process by default) and before any
 * hook (at the service's start, or just before the first hook when the service activates the plugin
 * lazily), with *hooks zero-filled. Set the hooks you want, synchronously, keep api, and return
 * PLUGHOST_OK. Any other return value is a load failure ("plugin '<name>' failed to load: ..."; with
 * PLUGHOST_E_REQUIRES_UPDATE "requires a newer version of plughost than <running version>"). No
 * session exists yet, and plugin_error returns PLUGHOST_E_ILLEGAL_CALL here.
 */

/* The symbol name of the entry point. */
#define PLUGHOST_ENTRY_POINT_V1 plughost_plugin_entry_v1

/* Exports a definition from the plugin, also when built with -fvisibility=hidden; C linkage in C++. */
#if defined(__GNUC__) || defined(__clang__)
#define PLUGHOST_VISIBILITY_DEFAULT __attribute__((visibility("default")))
#else
#define PLUGHOST_VISIBILITY_DEFAULT
#endif
#ifdef __cplusplus
#define PLUGHOST_EXPORT extern "C" PLUGHOST_VISIBILITY_DEFAULT
#else
#define PLUGHOST_EXPORT PLUGHOST_VISIBILITY_DEFAULT
#endif

/* The entry point's type, e.g. for the result of dlsym(handle, "plughost_plugin_entry_v1"). */
typedef plughost_status (*plughost_plugin_entry_v1_fn)(const struct plughost_api_v1 *api,
                                                       struct plughost_hooks_v1 *hooks);

/* Defined by the plugin. */
PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks);

/* Is running at least major.minor.revision? Compares major, then minor, then revision. */
static inline bool plughost_version_at_least(const struct plughost_version *running, uint32_t major,
                                             uint32_t minor, uint32_t revision)
{
    if (running->major != major)
        return running->major > major;
    if (running->minor != minor)
        return running->minor > minor;
    return running->revision >= revision;
}

/* A statement: returns PLUGHOST_E_REQUIRES_UPDATE from the enclosing function (normally the entry
 * point) when api->version is older than major.minor.revision. */
#define PLUGHOST_REQUIRE_VERSION(major, minor, revision, api)                                         \
    do {                                                                                              \
        if (!plughost_version_at_least(&(api)->version, (major), (minor), (revision)))                \
            return PLUGHOST_E_REQUIRES_UPDATE;                                                        \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif /* PLUGHOST_PLUGIN_API_H */
