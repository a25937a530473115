/*
 * hostile_close_channel.c: on_vm_started closes the host's channel to the service, then keeps running.
 *
 * It closes the one SOCK_SEQPACKET fd (found as garbage_writer.c does) while the hook is in flight,
 * logs `closed fd=<fd>`, sleeps 10 s and returns 0. The service sees end-of-file from a host that
 * has not exited: it must give it a short grace, then kill it and report the closed channel.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect: `loaded`, `closed fd=`; the VM start fails with "plugin 'hostile_close_channel'
 * crashed: closed its channel to the service" within a few seconds; never `slept`.
 */
#include "ph_test.h"
#include "ph_hostile.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int channel = ph_find_channel();
    if (channel < 0) {
        ph_log("no_channel");
        return -EIO;
    }
    close(channel);
    ph_log("closed fd=%d", channel);
    sleep(10);
    ph_log("slept");
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
