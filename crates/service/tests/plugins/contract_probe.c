/*
 * contract_probe.c: the conformance suite's plugin (tests/conformance.rs, docs/CONFORMANCE.md): one
 * plugin whose behaviour in each hook the test chooses. Built once per instance with
 * -DPROBE_NAME='"<name>"', its name in the configuration and in its log lines.
 *
 * Every hook first logs `<hook> plugin=<name>` (hook: on_vm_started, on_distribution_stopping, ...,
 * the header's names), then does what the first word of $PH_DIR/<name>.<hook> says (nothing when
 * the file is missing; the hook then returns PLUGHOST_OK):
 *   veto        return -EPERM, no message
 *   fail        return -EIO (in a hook that may not veto: logged, ignored)
 *   crash       write through NULL in the hook's own function (SIGSEGV, address 0x0)
 *   hang        never return (past any deadline)
 *   error       plugin_error("probe"); logs `error hook=<hook> plugin=<name> status=<s>`; returns 0
 *   calls       the calls the hook's object allows, on the hook thread, then on a plugin thread the
 *               hook joins; each logs `call hook=<hook> plugin=<name> thread=hook|worker k=<s> ...`:
 *                 user-session hooks: exec     execute_binary(session, "/bin/echo", {"echo","vm"})
 *                                     exec_out what it printed (whitespace as _)
 *                 distribution hooks: exec_in  execute_binary_in_distribution(..., "/bin/echo", {"echo","in"})
 *                                     exec_in_out
 *                 container hooks:    cmount   container_mount_folder(cs, $PH_DIR, "/mnt/probe", true)
 *                                     cunmount container_unmount_folder(cs, "/mnt/probe")
 *                                     create   container_create_process(cs, "/bin/echo", {"echo","cs"})
 *                                     create_out, create_exit
 *   api_errors  the documented argument errors; logs `api hook=<hook> plugin=<name> k=<s> ...`:
 *                 user-session hooks: exec_relative     execute_binary(session, "bin/true")       -EINVAL
 *                 distribution hooks: exec_in_relative  ..._in_distribution(..., "bin/echo")      -EINVAL
 *                                     exec_in_missing   ..._in_distribution(..., "/bin/missing")  -ENOENT
 *                 container hooks:    cunmount_null     container_unmount_folder(cs, NULL)        -EFAULT
 *                                     create_relative   container_create_process(cs, "echo", ...) -EINVAL
 *                                     create_relative_errno  its errno_out
 *                                     cunmount_hidden   container_unmount_folder of /mnt/p/q after
 *                                                       $PH_DIR/empty was mounted over /mnt/p: the
 *                                                       unmount fails, -ENOENT
 *   keep        (a container hook) container_create_process(cs, "/bin/cat"), kept for use_kept;
 *               logs `keep hook= plugin= status=`
 *   use_kept    process_get_fd(STDERR), process_get_exit_fd, process_get_exit_code on the kept
 *               handle, then process_release; logs `kept hook= plugin= get_fd= exit_fd= exit_code= code=`
 * Env: PH_LOG, PH_DIR.
 */
#include "ph_test.h"

#include <poll.h>
#include <pthread.h>

#ifndef PROBE_NAME
#error "build with -DPROBE_NAME='\"<name>\"'"
#endif

static const struct plughost_api_v1 *api;

enum action { NONE, VETO, FAIL, CRASH, HANG, ERROR, CALLS, API_ERRORS, KEEP, USE_KEPT };

/* The process `keep` started (a container hook), for `use_kept` in a later hook. */
static plughost_process *kept;

/* What a hook is about: a user session (and maybe a distribution) or a container session. */
struct target {
    const char *hook;
    bool container;
    plughost_session_id session;
    bool has_distribution;
    struct plughost_uuid distribution;
    plughost_container_session_id cs;
};

static enum action action_for(const char *hook)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.%s", ph_env("PH_DIR", "/nonexistent"), PROBE_NAME, hook);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NONE;
    char word[64];
    ssize_t n = ph_read_all(fd, word, sizeof word);
    close(fd);
    if (n < 0)
        return NONE;
    word[strcspn(word, " \n")] = '\0';
    static const struct {
        const char *word;
        enum action action;
    } words[] = {{"veto", VETO},   {"fail", FAIL},   {"crash", CRASH},         {"hang", HANG},
                 {"error", ERROR}, {"calls", CALLS}, {"api_errors", API_ERRORS},
                 {"keep", KEEP},   {"use_kept", USE_KEPT}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcmp(word, words[i].word) == 0)
            return words[i].action;
    ph_log("bad_action hook=%s plugin=%s word=%s", hook, PROBE_NAME, word);
    return NONE;
}

static void hang(void)
{
    for (;;)
        pause();
}

/* Reads fd to EOF into out (a log token), closes it. */
static void drain(int fd, char *out, size_t cap)
{
    char buf[256];
    if (ph_read_all(fd, buf, sizeof buf) < 0)
        buf[0] = '\0';
    close(fd);
    ph_tok(buf, out, cap);
}

/* Runs a program with execute_binary(_in_distribution); logs `<key>=<s> <key>_out=<output>`. */
static void exec_one(const struct target *t, bool in_distribution, char *line, size_t cap)
{
    const char *const argv[] = {"echo", in_distribution ? "in" : "vm", NULL};
    int fd = -1;
    plughost_status s = in_distribution
                            ? api->execute_binary_in_distribution(t->session, &t->distribution,
                                                                  "/bin/echo", argv, &fd)
                            : api->execute_binary(t->session, "/bin/echo", argv, &fd);
    char out[256] = "-";
    if (s == PLUGHOST_OK)
        drain(fd, out, sizeof out);
    const char *key = in_distribution ? "exec_in" : "exec";
    size_t len = strlen(line);
    snprintf(line + len, cap - len, " %s=%d %s_out=%s", key, s, key, out);
}

/* container_create_process of /bin/echo cs: logs `create=<s> create_out= create_exit=`. */
static void create_one(const struct target *t, char *line, size_t cap)
{
    const char *const argv[] = {"echo", "cs", NULL};
    plughost_process *p = NULL;
    plughost_status s = api->container_create_process(t->cs, "/bin/echo", argv, NULL, &p, NULL);
    char out[256] = "-";
    int code = -1;
    if (s == PLUGHOST_OK) {
        int fd = -1, exit_fd = -1;
        if (api->process_get_fd(p, PLUGHOST_PROCESS_STDOUT, &fd) == PLUGHOST_OK)
            drain(fd, out, sizeof out);
        if (api->process_get_exit_fd(p, &exit_fd) == PLUGHOST_OK) {
            struct pollfd pfd = {.fd = exit_fd, .events = POLLIN};
            poll(&pfd, 1, 10000);
            close(exit_fd);
        }
        api->process_get_exit_code(p, &code);
        api->process_release(p);
    }
    size_t len = strlen(line);
    snprintf(line + len, cap - len, " create=%d create_out=%s create_exit=%d", s, out, code);
}

static void calls(const struct target *t, const char *thread)
{
    char line[2048];
    snprintf(line, sizeof line, "call hook=%s plugin=%s thread=%s", t->hook, PROBE_NAME, thread);
    if (t->container) {
        size_t len = strlen(line);
        plughost_status m =
            api->container_mount_folder(t->cs, ph_env("PH_DIR", "/nonexistent"), "/mnt/probe", true);
        plughost_status u = api->container_unmount_folder(t->cs, "/mnt/probe");
        snprintf(line + len, sizeof line - len, " cmount=%d cunmount=%d", m, u);
        create_one(t, line, sizeof line);
    } else {
        exec_one(t, false, line, sizeof line);
        if (t->has_distribution)
            exec_one(t, true, line, sizeof line);
    }
    ph_log("%s", line);
}

static void *worker(void *arg)
{
    calls(arg, "worker");
    return NULL;
}

static void api_errors(const struct target *t)
{
    char line[2048];
    int n = snprintf(line, sizeof line, "api hook=%s plugin=%s", t->hook, PROBE_NAME);
    size_t len = n > 0 ? (size_t)n : 0;
    if (t->container) {
        const char *const argv[] = {"echo", NULL};
        plughost_process *p = NULL;
        int err = 0;
        plughost_status null = api->container_unmount_folder(t->cs, NULL);
        plughost_status relative = api->container_create_process(t->cs, "echo", argv, NULL, &p, &err);
        if (relative == PLUGHOST_OK)
            api->process_release(p);
        /* /mnt/p/q mounted, then a folder without q mounted over /mnt/p: /mnt/p/q is gone. */
        char empty[4096];
        snprintf(empty, sizeof empty, "%s/empty", ph_env("PH_DIR", "/nonexistent"));
        plughost_status deep = api->container_mount_folder(t->cs, empty, "/mnt/p/q", true);
        plughost_status over = api->container_mount_folder(t->cs, empty, "/mnt/p", true);
        plughost_status hidden = api->container_unmount_folder(t->cs, "/mnt/p/q");
        snprintf(line + len, sizeof line - len,
                 " cunmount_null=%d create_relative=%d create_relative_errno=%d cmount_deep=%d "
                 "cmount_over=%d cunmount_hidden=%d",
                 null, relative, err, deep, over, hidden);
    } else {
        const char *const argv[] = {"true", NULL};
        int fd = -1;
        plughost_status relative = api->execute_binary(t->session, "bin/true", argv, &fd);
        if (relative == PLUGHOST_OK)
            close(fd);
        len += (size_t)snprintf(line + len, sizeof line - len, " exec_relative=%d", relative);
        if (t->has_distribution && len < sizeof line) {
            fd = -1;
            plughost_status in_relative = api->execute_binary_in_distribution(
                t->session, &t->distribution, "bin/echo", argv, &fd);
            if (in_relative == PLUGHOST_OK)
                close(fd);
            fd = -1;
            plughost_status in_missing = api->execute_binary_in_distribution(
                t->session, &t->distribution, "/bin/missing", argv, &fd);
            if (in_missing == PLUGHOST_OK)
                close(fd);
            snprintf(line + len, sizeof line - len, " exec_in_relative=%d exec_in_missing=%d",
                     in_relative, in_missing);
        }
    }
    ph_log("%s", line);
}

/* What every hook does after its entry line; CRASH is handled in the hook itself (so the crash
 * report names the hook's function). */
static plughost_status act(enum action action, const struct target *t)
{
    switch (action) {
    case VETO:
        return -EPERM;
    case FAIL:
        return -EIO;
    case HANG:
        hang();
        return PLUGHOST_OK;
    case ERROR:
        ph_log("error hook=%s plugin=%s status=%d", t->hook, PROBE_NAME, api->plugin_error("probe"));
        return PLUGHOST_OK;
    case CALLS: {
        calls(t, "hook");
        pthread_t thread;
        if (pthread_create(&thread, NULL, worker, (void *)t) == 0)
            pthread_join(thread, NULL);
        else
            ph_log("call hook=%s plugin=%s thread=failed", t->hook, PROBE_NAME);
        return PLUGHOST_OK;
    }
    case API_ERRORS:
        api_errors(t);
        return PLUGHOST_OK;
    case KEEP: {
        const char *const argv[] = {"cat", NULL};
        plughost_status s = api->container_create_process(t->cs, "/bin/cat", argv, NULL, &kept, NULL);
        ph_log("keep hook=%s plugin=%s status=%d", t->hook, PROBE_NAME, s);
        return PLUGHOST_OK;
    }
    case USE_KEPT: {
        int fd = -1, exit_fd = -1, code = -1;
        plughost_status get_fd = api->process_get_fd(kept, PLUGHOST_PROCESS_STDERR, &fd);
        if (get_fd == PLUGHOST_OK)
            close(fd);
        plughost_status get_exit_fd = api->process_get_exit_fd(kept, &exit_fd);
        if (get_exit_fd == PLUGHOST_OK)
            close(exit_fd);
        plughost_status exit_code = api->process_get_exit_code(kept, &code);
        ph_log("kept hook=%s plugin=%s get_fd=%d exit_fd=%d exit_code=%d code=%d", t->hook,
               PROBE_NAME, get_fd, get_exit_fd, exit_code, code);
        api->process_release(kept);
        kept = NULL;
        return PLUGHOST_OK;
    }
    case NONE:
    case CRASH:
        break;
    }
    return PLUGHOST_OK;
}

/* The start of every hook: the entry line, the action, and the crash in the hook's own frame. */
#define ENTER(name)                                                                                \
    ph_log("%s plugin=%s", name, PROBE_NAME);                                                      \
    enum action action = action_for(name);                                                         \
    if (action == CRASH)                                                                           \
    *(volatile int *)0 = 0

static struct target user_target(const char *hook, const struct plughost_session *session)
{
    struct target t = {.hook = hook, .session = session->id};
    return t;
}

static struct target container_target(const char *hook, const struct plughost_container_session *cs)
{
    struct target t = {.hook = hook, .container = true, .cs = cs->id};
    return t;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    ENTER("on_vm_started");
    struct target t = user_target("on_vm_started", session);
    return act(action, &t);
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    ENTER("on_vm_stopping");
    struct target t = user_target("on_vm_stopping", session);
    return act(action, &t);
}

static plughost_status on_distribution_started(const struct plughost_session *session,
                                               const struct plughost_distribution *d)
{
    ENTER("on_distribution_started");
    struct target t = user_target("on_distribution_started", session);
    t.has_distribution = true;
    t.distribution = d->id;
    return act(action, &t);
}

static plughost_status on_distribution_stopping(const struct plughost_session *session,
                                                const struct plughost_distribution *d)
{
    ENTER("on_distribution_stopping");
    struct target t = user_target("on_distribution_stopping", session);
    t.has_distribution = true;
    t.distribution = d->id;
    return act(action, &t);
}

static plughost_status on_distribution_registered(const struct plughost_session *session,
                                                  const struct plughost_offline_distribution *d)
{
    ENTER("on_distribution_registered");
    struct target t = user_target("on_distribution_registered", session);
    t.has_distribution = true;
    t.distribution = d->id;
    return act(action, &t);
}

static plughost_status on_distribution_unregistered(const struct plughost_session *session,
                                                    const struct plughost_offline_distribution *d)
{
    ENTER("on_distribution_unregistered");
    struct target t = user_target("on_distribution_unregistered", session);
    t.has_distribution = true;
    t.distribution = d->id;
    return act(action, &t);
}

static plughost_status on_container_session_created(const struct plughost_container_session *cs)
{
    ENTER("on_container_session_created");
    struct target t = container_target("on_container_session_created", cs);
    return act(action, &t);
}

static plughost_status on_container_session_stopping(const struct plughost_container_session *cs)
{
    ENTER("on_container_session_stopping");
    struct target t = container_target("on_container_session_stopping", cs);
    return act(action, &t);
}

static plughost_status on_session_vm_started(const struct plughost_container_session *cs)
{
    ENTER("on_session_vm_started");
    struct target t = container_target("on_session_vm_started", cs);
    return act(action, &t);
}

static plughost_status on_session_vm_stopping(const struct plughost_container_session *cs)
{
    ENTER("on_session_vm_stopping");
    struct target t = container_target("on_session_vm_stopping", cs);
    return act(action, &t);
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    api = a;
    ph_log("loaded plugin=%s", PROBE_NAME);
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
