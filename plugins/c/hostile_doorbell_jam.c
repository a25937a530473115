/*
 * hostile_doorbell_jam.c: turns the call ring's doorbell (the eventfd the host shares with the
 * service) into a trap for anyone who writes it, then keeps the ring's slots full.
 *
 * on_vm_started finds the ring (ph_ring.h), clears O_NONBLOCK on the doorbell (the flag belongs to
 * the open file, which the service's copy shares) and writes 0xfffffffffffffffe to it: the eventfd
 * counter is then full, so any further write would block forever. It starts a thread that keeps
 * every request slot filled with the frame $PH_FRAME_HEX (recycling answered slots) and bumps
 * `up_seq` without waking anyone, logs `jammed write=<n>`, sleeps 100 ms and returns 0. Later
 * on_vm_started calls return 0 at once.
 *
 * A service that wrote the doorbell itself (to hand the host to its call pool) would block there
 * forever, after the hook or in a pool thread. The service must never do I/O on it: the VM start
 * returns, and the other plugin keeps being served.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional), PH_FRAME_HEX (a valid Call frame, at most 960 bytes).
 * Tests expect (tests/tests/ring.rs): `loaded`, `witness pid=`, `jammed write=8`, `returned`;
 * set-up failures are logged as `no_ring error=` or `bad_hex`.
 */
#include "ph_test.h"
#include "ph_hostile.h"
#include "ph_ring.h"

#include <fcntl.h>
#include <pthread.h>

static struct ph_ring ring;
static unsigned char frame[PH_RING_SLOT_BYTES];
static size_t frame_len;

static void *fill_slots(void *arg)
{
    (void)arg;
    _Atomic uint32_t *up_seq = ph_ring_word(&ring, PH_RING_UP_SEQ);
    for (;;) {
        for (int i = 0; i < PH_RING_SLOTS; i++) {
            uint32_t answered = PH_RING_STATE_REPLY;
            atomic_compare_exchange_strong(ph_ring_state(&ring, i), &answered, PH_RING_STATE_FREE);
            if (ph_ring_write(&ring, i, frame, frame_len, (uint32_t)frame_len) == 0)
                atomic_fetch_add(up_seq, 1);
        }
        usleep(100);
    }
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    static bool jammed;
    if (jammed) /* later VM starts: the jam and the filler are in place */
        return PLUGHOST_OK;
    jammed = true;
    int rc = ph_ring_find(&ring);
    if (rc != 0 || ring.doorbell < 0) {
        ph_log("no_ring error=%d", rc);
        return -EIO;
    }
    long len = ph_ring_frame_from_env(frame, sizeof frame);
    if (len <= 0) {
        ph_log("bad_hex");
        return -EINVAL;
    }
    frame_len = (size_t)len;
    int flags = fcntl(ring.doorbell, F_GETFL);
    fcntl(ring.doorbell, F_SETFL, flags & ~O_NONBLOCK);
    uint64_t full = 0xfffffffffffffffeULL;
    ssize_t written = write(ring.doorbell, &full, sizeof full);
    ph_log("jammed write=%zd", written);
    pthread_t thread;
    pthread_create(&thread, NULL, fill_slots, NULL);
    usleep(100 * 1000);
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
