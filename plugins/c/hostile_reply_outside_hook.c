/*
 * hostile_reply_outside_hook.c: answers a hook request the service never sent, while no hook is in
 * flight.
 *
 * on_vm_started starts a detached thread and returns 0 at once; 100 ms later the thread logs
 * `sending bytes=<n> fd=<fd>` and sends a correct `HostMsg::HookDone { id: 424242, status: 0,
 * message: None }` frame on the channel (found as garbage_writer.c does), then sleeps. The service
 * reads it on its call pool (no dispatcher is waiting) and must kill the host; the next VM start
 * reports why.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `vm_started`, `sending bytes=`; the VM start succeeds, the host is then
 * killed, and the next VM start fails with "plugin 'hostile_reply_outside_hook' crashed: protocol
 * violation: answered hook request 424242 that was never sent".
 */
#include "ph_test.h"
#include "ph_hostile.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <pthread.h>

static void *send_later(void *arg)
{
    (void)arg;
    /* 424242 = 0x67932: LEB128 b2 f2 19. */
    static const unsigned char frame[] = {'P', 'H', 1, 0, 3, 0xb2, 0xf2, 0x19, 0, 0};
    usleep(100 * 1000);
    int channel = ph_find_channel();
    if (channel < 0) {
        ph_log("no_channel");
        return NULL;
    }
    ph_log("sending bytes=%zu fd=%d", sizeof frame, channel);
    if (send(channel, frame, sizeof frame, MSG_NOSIGNAL) < 0)
        ph_log("send_failed errno=%d", errno);
    for (;;)
        pause();
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, send_later, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        ph_log("pthread_create_failed error=%d", rc);
        return -rc;
    }
    ph_log("vm_started session=%u", session->id);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    ph_fork_witness();
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
