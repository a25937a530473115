/*
 * hostile_ring_writer.c: writes a frame of the test's choosing into the host's call ring (shared
 * memory with the service, see ph_ring.h) and wakes the service as the host does.
 *
 * The frame is $PH_FRAME_HEX (hex digits, at most 960 bytes: one slot), written into request slot
 * $PH_RING_SLOT (default 0) when $PH_RING_TARGET is `slot` (the default), into the hook answer's lane
 * when it is `lane`, or into the hook-request lane (service -> host: where the host's own main thread takes
 * its hooks) when it is `hook`, with $PH_FRAME_LEN (decimal or 0x hex; default the frame's real
 * length) as the length the slot claims. Then the state becomes REQUEST, up_seq is bumped, the futex
 * woken and the doorbell rung (ph_ring_post; for `hook`: hook_seq is bumped and the host's main
 * thread woken, as the service does after posting a hook).
 *
 * By lane: with $PH_RING_BY_LANE = 1 (slots only), the slot's by_lane word is set before each post,
 * as a host thread waiting for its reply on the fd lane does (this plugin never reads that lane).
 *
 * Repeat: with $PH_RING_REPEAT = n (default 1), once the service answered the slot (state REPLY) the
 * plugin frees it and posts the same frame again, n times in all, without ever taking what the
 * service passed with the replies (an fd on the ring's fd lane, for a call that answers with one),
 * then logs `reposted n=<n>`.
 *
 * When: with $PH_RING_WHEN = `hook` (the default), on_vm_started logs `sending bytes=<n> target=<t>
 * len=<claimed>`, posts the frame, sleeps 10 s, logs `slept` and returns 0: the hook's dispatcher
 * consumes the ring. With `after_hook`, on_vm_started starts a thread and returns 0 at once; the
 * thread waits until the ring's `owner` word says the service's call pool consumes the ring again
 * (the hook round trip is over), then logs `sending ...`, posts the frame and pauses forever.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_MARKER (optional), PH_FRAME_HEX, PH_FRAME_LEN, PH_RING_TARGET, PH_RING_SLOT,
 * PH_RING_WHEN, PH_RING_REPEAT, PH_RING_BY_LANE.
 * Tests expect (tests/tests/ring.rs): `loaded`, `witness pid=`, `ring name=plughost-ring:<plugin>
 * doorbell=<fd>`, `sending bytes=`; the service kills the host for a protocol violation naming what
 * the frame was ("plugin 'hostile_ring_writer' crashed: protocol violation: ..."), the VM start fails
 * with it (`hook`) or the next one does (`after_hook`); never `slept`. Failures to set up are logged
 * as `no_ring error=`, `bad_hex`, `post_failed error=`.
 */
#include "ph_test.h"
#include "ph_hostile.h"
#include "ph_ring.h"

#include <pthread.h>
#include <sched.h>

static struct ph_ring ring;
static unsigned char frame[PH_RING_SLOT_BYTES];
static size_t frame_len;
static uint32_t claimed_len;
static int target;

/* Reads the env into the statics; 0 or -errno. */
static int prepare(void)
{
    int rc = ph_ring_find(&ring);
    if (rc != 0) {
        ph_log("no_ring error=%d", rc);
        return rc;
    }
    ph_log("ring name=%s doorbell=%d", ring.name, ring.doorbell);
    long len = ph_ring_frame_from_env(frame, sizeof frame);
    if (len < 0) {
        ph_log("bad_hex");
        return -EINVAL;
    }
    frame_len = (size_t)len;
    const char *len_text = ph_env("PH_FRAME_LEN", NULL);
    claimed_len = len_text != NULL ? (uint32_t)strtoul(len_text, NULL, 0) : (uint32_t)frame_len;
    const char *where = ph_env("PH_RING_TARGET", "slot");
    target = strcmp(where, "lane") == 0   ? PH_RING_LANE
             : strcmp(where, "hook") == 0 ? PH_RING_HOOK
                                          : atoi(ph_env("PH_RING_SLOT", "0"));
    return 0;
}

/* Sets the target slot's by_lane word when $PH_RING_BY_LANE asks for it (before the post). */
static void mark_by_lane(void)
{
    if (target < 0 || target >= (int)PH_RING_SLOTS || strcmp(ph_env("PH_RING_BY_LANE", "0"), "1") != 0)
        return;
    atomic_store((_Atomic uint32_t *)(ph_ring_slot(&ring, target) + PH_RING_SLOT_BY_LANE), 1u);
}

static void post(void)
{
    ph_log("sending bytes=%zu target=%s len=%u", frame_len,
           target == PH_RING_LANE   ? "lane"
           : target == PH_RING_HOOK ? "hook"
                                    : "slot",
           claimed_len);
    mark_by_lane();
    int rc = ph_ring_post(&ring, target, frame, frame_len, claimed_len);
    if (rc != 0) {
        ph_log("post_failed error=%d", rc);
        return;
    }
    long repeat = atol(ph_env("PH_RING_REPEAT", "1"));
    if (repeat <= 1 || target < 0)
        return;
    long n = 1;
    for (; n < repeat; n++) {
        _Atomic uint32_t *state = ph_ring_state(&ring, target);
        while (atomic_load(state) != PH_RING_STATE_REPLY)
            sched_yield();
        atomic_store(state, PH_RING_STATE_FREE);
        mark_by_lane();
        if (ph_ring_post(&ring, target, frame, frame_len, claimed_len) != 0)
            break;
    }
    ph_log("reposted n=%ld", n);
}

static void *post_after_hook(void *arg)
{
    (void)arg;
    /* The hook that started this thread is in flight, so `owner` reads DISPATCHER until the
     * service has its answer; polled (no futex is woken for it). */
    while (atomic_load(ph_ring_word(&ring, PH_RING_OWNER)) != PH_RING_OWNER_POOL)
        usleep(1000);
    post();
    for (;;)
        pause();
    return NULL;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int rc = prepare();
    if (rc != 0)
        return rc;
    if (strcmp(ph_env("PH_RING_WHEN", "hook"), "after_hook") == 0) {
        pthread_attr_t attr;
        pthread_t thread;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&thread, &attr, post_after_hook, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            ph_log("pthread_create_failed error=%d", rc);
            return -rc;
        }
        return PLUGHOST_OK;
    }
    post();
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
