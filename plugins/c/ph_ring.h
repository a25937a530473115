/*
 * ph_ring.h — the call ring (crates/sys/src/ring/mod.rs) seen from inside a hostile test plugin: find the
 * host's mapping of it, write any frame into a request slot or the hook lane, and wake the service
 * the way the host does. Static inline helpers only; include after ph_test.h.
 *
 * The ring is a shared memfd the service creates and the host maps; the host closes the memfd after
 * mapping it, so the plugin finds it in /proc/self/maps as `/memfd:plughost-ring:<plugin> (deleted)`.
 * The doorbell is the host's only eventfd (/proc/self/fd/N -> `anon_inode:[eventfd]`).
 *
 * The offsets below mirror `plughost_sys::ring::layout`; the Rust unit test
 * `the_published_layout_matches_the_struct` (crates/sys/src/ring/mod.rs) pins those to the `#[repr(C)]`
 * struct, so a change of the struct fails there first: update this file with it. The integration
 * test `ph_ring_h_mirrors_the_published_layout` (tests/tests/ring.rs) compiles this header and checks
 * its numbers against `layout`.
 *
 *   ph_ring_find(&ring)            maps nothing, only finds: fills base/size/name/doorbell; 0 or -errno
 *                                  (-ENOENT: no ring mapping, -EPROTO: the magic number is wrong).
 *   ph_ring_frame_from_env(buf, cap) $PH_FRAME_HEX decoded: its length, or -1.
 *   ph_ring_word(&ring, offset)    the 32-bit atomic word at a region offset (PH_RING_UP_SEQ, ...).
 *   ph_ring_state(&ring, target)   the state word of slot `target` (0..31), of the hook answer's lane
 *                                  (PH_RING_LANE) or of the hook-request lane (PH_RING_HOOK).
 *   ph_ring_write(&ring, target, bytes, len, claimed_len)
 *                                  writes a frame as the host does: a slot is taken FREE -> WRITING by
 *                                  compare-and-swap (-EBUSY if it is not free; the lanes are written in
 *                                  place), at most PH_RING_SLOT_BYTES bytes are copied (-E2BIG past
 *                                  that), `claimed_len` goes into the length word (it may lie), then
 *                                  the state becomes REQUEST (seq-cst store).
 *   ph_ring_wake_service(&ring)    bumps up_seq (seq-cst add), FUTEX_WAKE on it (shared futex, not
 *                                  FUTEX_PRIVATE: the word is shared with the service), and writes 1
 *                                  to the doorbell: whichever service thread consumes the ring wakes.
 *   ph_ring_wake_main(&ring)       bumps hook_seq and FUTEX_WAKE on it: the host's main thread wakes
 *                                  and looks at the hook-request lane, as when the service posted a hook.
 *   ph_ring_post(...)              ph_ring_write, then ph_ring_wake_service (ph_ring_wake_main for
 *                                  the hook-request lane).
 */
#ifndef PH_RING_H
#define PH_RING_H

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ph_test.h"

/* plughost_sys::ring::layout (byte offsets in the region). */
#define PH_RING_SIZE 36864u /* size_of::<Shared>() rounded up to 4096 */
#define PH_RING_MAGIC 0x50485233u /* "PHR3", at offset 0 */
#define PH_RING_UP_SEQ 64u     /* the host's line: seq, socket, pending, main_waiting */
#define PH_RING_UP_SOCKET 68u
#define PH_RING_UP_PENDING 72u /* one bit per slot holding a request */
#define PH_RING_UP_MAIN_WAITING 76u
#define PH_RING_OWNER 128u     /* the service's line: owner, waiting, hook_seq, socket */
#define PH_RING_SERVICE_WAITING 132u
#define PH_RING_HOOK_SEQ 136u  /* the host main thread's futex word */
#define PH_RING_DOWN_SOCKET 140u /* frames sent down the socket: the main thread reads it then */
#define PH_RING_CLOSED 192u
#define PH_RING_LANE_OFFSET 256u /* the hook answer (host -> service) */
#define PH_RING_HOOK_OFFSET 1280u /* the hook (service -> host) */
#define PH_RING_SLOTS_OFFSET 2304u
#define PH_RING_SLOT_SIZE 1024u
/* In a slot: u32 state at 0, u32 len at 4, u32 by_lane at 8 (the caller waits for its reply on
 * the fd lane), the frame from PH_RING_SLOT_DATA. */
#define PH_RING_SLOT_LEN 4u
#define PH_RING_SLOT_BY_LANE 8u
#define PH_RING_SLOT_DATA 64u
#define PH_RING_SLOT_BYTES 960u /* SLOT_WORDS (120) * 8 */
#define PH_RING_SLOTS 32

#define PH_RING_STATE_FREE 0u
#define PH_RING_STATE_WRITING 1u
#define PH_RING_STATE_REQUEST 2u
#define PH_RING_STATE_SERVING 3u
#define PH_RING_STATE_REPLY 4u

/* The `owner` word: who consumes the ring now (written by the service). */
#define PH_RING_OWNER_POOL 0u
#define PH_RING_OWNER_DISPATCHER 1u

/* `target` of the helpers for the hook answer's lane and the hook-request lane (slots are
 * 0..PH_RING_SLOTS-1). */
#define PH_RING_LANE (-1)
#define PH_RING_HOOK (-2)

struct ph_ring {
    unsigned char *base;
    size_t size;
    /* The doorbell eventfd, -1 if none was found. */
    int doorbell;
    /* The memfd's name without the "/memfd:" prefix and " (deleted)" suffix. */
    char name[256];
};

static inline int ph_ring_find_doorbell(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return -1;
    int found = -1;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        char target[64];
        ssize_t n = readlinkat(dirfd(dir), entry->d_name, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        if (strcmp(target, "anon_inode:[eventfd]") == 0) {
            found = atoi(entry->d_name);
            break;
        }
    }
    closedir(dir);
    return found;
}

static inline int ph_ring_find(struct ph_ring *ring)
{
    static const char prefix[] = "/memfd:plughost-ring:";
    memset(ring, 0, sizeof *ring);
    ring->doorbell = -1;
    FILE *maps = fopen("/proc/self/maps", "re");
    if (maps == NULL)
        return -errno;
    char line[4096];
    int rc = -ENOENT;
    while (fgets(line, sizeof line, maps) != NULL) {
        unsigned long start = 0, end = 0;
        char perms[8] = {0};
        int path_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &start, &end, perms, &path_at) < 3 ||
            path_at == 0)
            continue;
        char *path = line + path_at;
        if (strncmp(path, prefix, sizeof prefix - 1) != 0 || perms[0] != 'r' || perms[1] != 'w' ||
            end - start < PH_RING_SIZE)
            continue;
        path[strcspn(path, "\n")] = '\0';
        char *deleted = strstr(path, " (deleted)");
        if (deleted != NULL)
            *deleted = '\0';
        snprintf(ring->name, sizeof ring->name, "%s", path + strlen("/memfd:"));
        ring->base = (unsigned char *)start;
        ring->size = end - start;
        rc = 0;
        break;
    }
    fclose(maps);
    if (rc != 0)
        return rc;
    if (atomic_load((_Atomic uint32_t *)ring->base) != PH_RING_MAGIC)
        return -EPROTO;
    ring->doorbell = ph_ring_find_doorbell();
    return 0;
}

static inline _Atomic uint32_t *ph_ring_word(const struct ph_ring *ring, size_t offset)
{
    return (_Atomic uint32_t *)(ring->base + offset);
}

static inline unsigned char *ph_ring_slot(const struct ph_ring *ring, int target)
{
    if (target == PH_RING_LANE)
        return ring->base + PH_RING_LANE_OFFSET;
    if (target == PH_RING_HOOK)
        return ring->base + PH_RING_HOOK_OFFSET;
    return ring->base + PH_RING_SLOTS_OFFSET + (size_t)target * PH_RING_SLOT_SIZE;
}

static inline _Atomic uint32_t *ph_ring_state(const struct ph_ring *ring, int target)
{
    return (_Atomic uint32_t *)ph_ring_slot(ring, target);
}

static inline int ph_ring_write(const struct ph_ring *ring, int target, const unsigned char *bytes,
                                size_t len, uint32_t claimed_len)
{
    int lane = target == PH_RING_LANE || target == PH_RING_HOOK;
    if (!lane && (target < 0 || target >= PH_RING_SLOTS))
        return -EINVAL;
    if (len > PH_RING_SLOT_BYTES)
        return -E2BIG;
    unsigned char *slot = ph_ring_slot(ring, target);
    _Atomic uint32_t *state = ph_ring_state(ring, target);
    if (!lane) {
        uint32_t expected = PH_RING_STATE_FREE;
        if (!atomic_compare_exchange_strong(state, &expected, PH_RING_STATE_WRITING))
            return -EBUSY;
    }
    memcpy(slot + PH_RING_SLOT_DATA, bytes, len);
    atomic_store_explicit((_Atomic uint32_t *)(slot + PH_RING_SLOT_LEN), claimed_len,
                          memory_order_relaxed);
    atomic_store(state, PH_RING_STATE_REQUEST);
    /* As the host does: mark the slot pending, so the service looks at it. */
    if (!lane)
        atomic_fetch_or(ph_ring_word(ring, PH_RING_UP_PENDING), 1u << target);
    return 0;
}

/* Wakes the host's own main thread as the service does after posting a hook: bumps hook_seq and
 * FUTEX_WAKE on it (shared futex). */
static inline void ph_ring_wake_main(const struct ph_ring *ring)
{
    _Atomic uint32_t *hook_seq = ph_ring_word(ring, PH_RING_HOOK_SEQ);
    atomic_fetch_add(hook_seq, 1);
    syscall(SYS_futex, (uint32_t *)hook_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static inline void ph_ring_wake_service(const struct ph_ring *ring)
{
    _Atomic uint32_t *up_seq = ph_ring_word(ring, PH_RING_UP_SEQ);
    atomic_fetch_add(up_seq, 1);
    /* FUTEX_WAKE without FUTEX_PRIVATE_FLAG: the service sleeps on this word in another process. */
    syscall(SYS_futex, (uint32_t *)up_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    if (ring->doorbell >= 0) {
        uint64_t one = 1;
        ssize_t w = write(ring->doorbell, &one, sizeof one);
        (void)w;
    }
}

/* The frame the test passes in $PH_FRAME_HEX (hex digits), decoded into out: its length, or -1 if
 * the text is not an even number of hex digits or longer than cap bytes. */
static inline long ph_ring_frame_from_env(unsigned char *out, size_t cap)
{
    const char *hex = ph_env("PH_FRAME_HEX", "");
    size_t digits = strlen(hex);
    if (digits % 2 != 0 || digits / 2 > cap)
        return -1;
    for (size_t i = 0; i < digits / 2; i++) {
        int hi = -1, lo = -1;
        for (int half = 0; half < 2; half++) {
            char c = hex[2 * i + (size_t)half];
            int v = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (half == 0)
                hi = v;
            else
                lo = v;
        }
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return (long)(digits / 2);
}

static inline int ph_ring_post(const struct ph_ring *ring, int target, const unsigned char *bytes,
                               size_t len, uint32_t claimed_len)
{
    int rc = ph_ring_write(ring, target, bytes, len, claimed_len);
    if (rc == 0 && target == PH_RING_HOOK)
        ph_ring_wake_main(ring);
    else if (rc == 0)
        ph_ring_wake_service(ring);
    return rc;
}

#endif
