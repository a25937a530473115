/*
 * hostile_socket_flood.c: keeps the service busy reading the host's socket during a hook that never
 * returns, while answering slowly.
 *
 * on_vm_started starts 16 threads that send the frame $PH_FRAME_HEX (a valid Call, whose reply the
 * service sends back on the socket) on the host's channel back to back, and one thread that reads a
 * reply only every 400 ms, so each reply waits for room in the socket; it announces one socket frame
 * on the ring as the host does, logs `flooding`, and never returns.
 *
 * A dispatcher that drained the socket until it is empty, checking its deadline only between turns,
 * would never get back to the deadline: the hook must fail as hung at its deadline (plus at most one
 * reply's send timeout).
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional), PH_FRAME_HEX.
 * Tests expect (tests/tests/ring.rs): `loaded`, `witness pid=`, `flooding`; the VM start fails with
 * "plugin 'hostile_socket_flood' did not answer on_vm_started within <deadline>"; never `returned`.
 */
#include "ph_test.h"
#include "ph_hostile.h"
#include "ph_ring.h"

#include <pthread.h>
#include <sys/socket.h>

static int channel = -1;
static unsigned char frame[PH_RING_SLOT_BYTES];
static size_t frame_len;

static void *slow_reader(void *arg)
{
    (void)arg;
    static unsigned char buf[70000];
    for (;;) {
        (void)recv(channel, buf, sizeof buf, 0);
        usleep(400 * 1000);
    }
    return NULL;
}

static void *sender(void *arg)
{
    (void)arg;
    for (;;)
        (void)send(channel, frame, frame_len, MSG_NOSIGNAL);
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    struct ph_ring ring;
    channel = ph_find_channel();
    int rc = ph_ring_find(&ring);
    long len = ph_ring_frame_from_env(frame, sizeof frame);
    if (channel < 0 || rc != 0 || len <= 0) {
        ph_log("no_ring error=%d channel=%d len=%ld", rc, channel, len);
        return -EIO;
    }
    frame_len = (size_t)len;
    pthread_t thread;
    pthread_create(&thread, NULL, slow_reader, NULL);
    for (int i = 0; i < 16; i++)
        pthread_create(&thread, NULL, sender, NULL);
    atomic_fetch_add(ph_ring_word(&ring, PH_RING_UP_SOCKET), 1);
    ph_ring_wake_service(&ring);
    ph_log("flooding");
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
