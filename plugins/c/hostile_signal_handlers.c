/*
 * hostile_signal_handlers.c: sets its own signal handlers, ignores SIGTERM, and takes the host's main
 * thread hostage with a handler that never returns.
 *
 * The entry point (on the host's main thread) remembers that thread, installs a handler that swallows
 * SIGTERM, SIGINT and SIGHUP, ignores SIGQUIT, SIGPIPE and SIGUSR2, and installs for SIGUSR1 a handler
 * that writes `hijacked` to $PH_LOG and then pauses forever. With PH_MARKER set it also forks a
 * witness child named $PH_MARKER (session leader, SIGTERM/SIGINT/SIGHUP ignored, no fds, pausing
 * forever). The first on_vm_started logs `armed` and returns 0; 200 ms later a plugin thread sends
 * SIGUSR1 to the main thread, which by then waits for the next hook or the shutdown request: from
 * then on the host reads nothing, answers no hook and ignores `Shutdown`. Every later on_vm_started
 * (never reached) would log `vm_started_again`.
 *
 * Only SIGKILL ends it: the hook deadline and the manager's shutdown must both get there.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `witness pid=` (with PH_MARKER), `armed`, `hijacked`; SIGTERM to the host
 * changes nothing; the next VM start fails with "plugin 'hostile_signal_handlers' did not answer
 * on_vm_started within <deadline>"; dropping the manager ends the host and the witness.
 */
#include "ph_test.h"
#include "ph_hostile.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>

static pthread_t main_thread;
static int log_fd = -1;
static atomic_bool armed;

static void swallow(int signal_number)
{
    (void)signal_number;
}

static void never_return(int signal_number)
{
    (void)signal_number;
    static const char line[] = "hijacked\n";
    if (log_fd >= 0 && write(log_fd, line, sizeof line - 1) < 0) {
        /* Nothing to do: async-signal context. */
    }
    for (;;)
        pause();
}

static void handle(int signal_number, void (*handler)(int))
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigfillset(&action.sa_mask);
    sigaction(signal_number, &action, NULL);
}

static void *hijack_later(void *arg)
{
    (void)arg;
    usleep(200 * 1000);
    pthread_kill(main_thread, SIGUSR1);
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    if (atomic_exchange(&armed, true)) {
        ph_log("vm_started_again");
        return PLUGHOST_OK;
    }
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, hijack_later, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        ph_log("pthread_create_failed error=%d", rc);
        return -rc;
    }
    ph_log("armed");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    main_thread = pthread_self();
    const char *log_path = getenv("PH_LOG");
    if (log_path != NULL && log_path[0] != '\0')
        log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    handle(SIGTERM, swallow);
    handle(SIGINT, swallow);
    handle(SIGHUP, swallow);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    handle(SIGUSR1, never_return);
    ph_fork_witness();
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
