/*
 * hostile_ring_spinner.c: keeps the hook's dispatcher awake without ever answering.
 *
 * on_vm_started finds the call ring (ph_ring.h), starts a thread that logs `spinning` and then, in
 * a tight loop forever, bumps the ring's up_seq (seq-cst add) and FUTEX_WAKEs it (the service's
 * dispatcher sleeps on that word during a hook), and never returns itself. Every wake-up is for
 * nothing: no slot holds a request and the lane no answer. The service must still kill the host at
 * the hook's deadline, not be held past it by a host that keeps it busy.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional).
 * Tests expect (tests/tests/ring.rs): `loaded`, `witness pid=`, `spinning`; with a short
 * on_vm_started deadline the VM start fails with "plugin 'hostile_ring_spinner' did not answer
 * on_vm_started within <deadline>" soon after the deadline; never `returned`. `no_ring error=` if
 * the ring is not found.
 */
#include "ph_test.h"
#include "ph_hostile.h"
#include "ph_ring.h"

#include <pthread.h>

static struct ph_ring ring;

static void *spin(void *arg)
{
    (void)arg;
    _Atomic uint32_t *up_seq = ph_ring_word(&ring, PH_RING_UP_SEQ);
    ph_log("spinning");
    for (;;) {
        atomic_fetch_add(up_seq, 1);
        syscall(SYS_futex, (uint32_t *)up_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    }
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int rc = ph_ring_find(&ring);
    if (rc != 0) {
        ph_log("no_ring error=%d", rc);
        return rc;
    }
    pthread_t thread;
    rc = pthread_create(&thread, NULL, spin, NULL);
    if (rc != 0) {
        ph_log("pthread_create_failed error=%d", rc);
        return -rc;
    }
    for (;;)
        pause();
    ph_log("returned");
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
