/*
 * hostile_unread_replies.c: floods the service with API calls and never reads a reply.
 *
 * The entry point (on the host's main thread) remembers that thread and installs for SIGUSR1 a handler
 * that never returns. The first on_vm_started returns 0 and starts a thread that, 200 ms later, sends
 * SIGUSR1 to the main thread (from then on no thread of the host reads the channel), logs
 * `flooding fd=<fd>` and sends up to 100 000 hand-built `HostMsg::Call { id: 1000000 + i, call:
 * ProcessGetExitCode { process: 999 } }` frames on the channel (found as garbage_writer.c does),
 * non-blocking while the socket takes them, then blocking. Every reply the service sends stays
 * unread: the host's receive queue fills and the service's sends block.
 *
 * The service must not let one host that stops reading hold its call pool (shared by every plugin):
 * it must kill the host within a bounded time and keep serving the other plugins' calls.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `witness pid=` (with PH_MARKER), `armed`, `flooding fd=`; `flood_sent
 * frames=<n> errno=<e>` only when the channel fails; the host is killed and the next VM start fails
 * with "plugin 'hostile_unread_replies' crashed: protocol violation: stopped reading the service's
 * replies (none read for 500 ms)".
 */
#include "ph_test.h"
#include "ph_hostile.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#define FRAMES 100000

static pthread_t main_thread;
static atomic_bool armed;

static void never_return(int signal_number)
{
    (void)signal_number;
    for (;;)
        pause();
}

static size_t put_varint(unsigned char *out, uint64_t value)
{
    size_t n = 0;
    while (value >= 0x80) {
        out[n++] = (unsigned char)(value | 0x80);
        value >>= 7;
    }
    out[n++] = (unsigned char)value;
    return n;
}

static void *flood_main(void *arg)
{
    (void)arg;
    usleep(200 * 1000);
    pthread_kill(main_thread, SIGUSR1);
    usleep(50 * 1000);
    int channel = ph_find_channel();
    if (channel < 0) {
        ph_log("no_channel");
        return NULL;
    }
    ph_log("flooding fd=%d", channel);
    int sent = 0;
    for (; sent < FRAMES; sent++) {
        /* Call (4) { id, ProcessGetExitCode (8) { process: 999 } } */
        unsigned char frame[32] = {'P', 'H', 1, 0, 4};
        size_t len = 5;
        len += put_varint(frame + len, 1000000u + (uint64_t)sent);
        frame[len++] = 8;
        len += put_varint(frame + len, 999);
        if (send(channel, frame, len, MSG_NOSIGNAL) < 0)
            break;
    }
    ph_log("flood_sent frames=%d errno=%d", sent, sent < FRAMES ? errno : 0);
    for (;;)
        pause();
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    if (atomic_exchange(&armed, true))
        return PLUGHOST_OK;
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, flood_main, NULL);
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
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = never_return;
    sigfillset(&action.sa_mask);
    sigaction(SIGUSR1, &action, NULL);
    ph_fork_witness();
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
