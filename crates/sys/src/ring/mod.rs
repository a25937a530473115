//! The call ring: a small shared-memory region between the service and one host, so that a plugin's
//! API call and a hook's answer cost a futex wake-up instead of a socket round trip.
//!
//! # What travels where
//! - **Slots** (host → service → host): a plugin thread writes one request frame into a free slot and
//!   waits on the slot's futex; the service copies the frame out, serves it and writes the reply frame
//!   into the same slot. Calls whose frame does not fit a slot (or that find every slot busy) keep
//!   using the socket.
//! - **The fd lane** (service → host): a `SOCK_SEQPACKET` pair of its own, paired with the slots. When
//!   a reply carries an fd, the service first sends the fd on the fd lane (SCM_RIGHTS, the payload is
//!   the call's request id, 8 bytes little-endian), then writes the reply (naming that id) into the
//!   slot. The caller, woken by the slot, takes its fd with a non-blocking receive
//!   ([`Ring::take_fd`]): the message is already queued, so no other wake-up is involved. Error
//!   replies to such a caller never touch it. Nothing travels host → service there (the service shut
//!   its read side).
//!
//!   Or the caller waits *on the lane* (one host thread at a time, the lane reader: it marks its
//!   slot `by_lane` and blocks in `recvmsg`): the service writes the reply into the slot, then
//!   sends the request id on the lane, with the fd if the reply carries one. That one `sendmsg`
//!   passes the fd and wakes the caller: no futex round and no second receive (BENCHMARKS.md,
//!   "fd answers on the lane"). It suits calls that usually answer with an fd; an answer without one
//!   costs more there than a futex wake-up. What the reader receives for another caller (that
//!   caller's fd) goes to the stash, and a caller that finds neither its fd in the stash nor on the
//!   lane while a reader is at work waits for the reader to stash it or stop (a condvar, bounded).
//! - **Lane** (host → service): the host's main thread posts a hook's answer here.
//! - **Hook-request lane** (service → host): the dispatcher writes a hook's frame here, bumps
//!   `Down::hook_seq` (the host's main thread's futex word) and wakes the main thread if it said it
//!   sleeps (`Up::main_waiting`). A hook that does not fit takes the socket.
//! - `Shutdown`, the replies to socket calls (with their fds) and hooks too large for the
//!   hook-request lane go down the socket; after each frame it sends there (and when it sees the
//!   socket end) the service bumps `Down::socket`, then `Down::hook_seq`
//!   ([`Ring::wake_main_for_socket`]), so the main thread, asleep on the ring, reads the socket
//!   (without blocking) only then. The host announces each frame it sends up the socket
//!   (`Up::socket`, then the usual wake-up), so the thread that consumes the ring knows when to
//!   read the socket too.
//!
//! The frames are the ordinary wire frames (header + postcard body): the ring is a transport, not a
//! second protocol, and the service decodes and checks what it copies out exactly as a socket frame.
//!
//! # Waking the service
//! After every publish the host bumps `Up::seq` (the futex word), then wakes whoever the service said
//! consumes this ring: the dispatcher of a hook in flight (`owner == DISPATCHER`: futex wake, only when
//! it said it sleeps) or the service's call pool (`owner == POOL`: a write to the doorbell eventfd).
//! (A "pool thread is scanning, skip the doorbell" flag was tried and dropped: it saved no
//! measurable time and let one slow service callback starve that host's other calls.) Each pair
//! "host stores `Up::seq`, then
//! loads the flag" / "service stores the flag, then loads `Up::seq`" is `SeqCst` on both sides (a
//! Dekker pattern), so at least one side sees the other: no request is left without a consumer.
//!
//! # Trust
//! The host is untrusted and can write anything anywhere in the region at any time. The service:
//! - seals the memfd against shrinking and growing (a shrunk mapping would fault in the service);
//! - only ever reads through atomics, copies a frame out before decoding it, bounds every length;
//! - takes a slot only by `compare_exchange(REQUEST → SERVING)`, so two service threads never serve
//!   one slot;
//! - never lets a flag the host can write decide anything but whom the *host* wakes: a host that
//!   lies only delays its own calls (or its own hooks: `Up::main_waiting`), and every service wait
//!   on the ring is bounded by a timeout;
//! - never reads the hook-request lane, `Down::hook_seq` or `Down::socket` back: it only stores a
//!   frame, its length and its state there, and bumps the words (a host that scribbles on them
//!   garbles only its own hooks);
//! - never reads or writes the doorbell eventfd, whose open file the host shares (it could make it
//!   blocking or fill it): the service only watches it (the pool's own wake-ups use an eventfd only
//!   the service holds).
//!
//! # Files
//! This file: the layout, the errors, setting the ring up and the wake-ups both sides use;
//! `host.rs`: the host's side (calls, the fd lane's reader and stash, the main thread's hooks);
//! `service.rs`: the service's side (claiming, answering, hooks); `tests.rs`.
//!
//! # Safety
//! This module maps memory and waits on futexes in it. The region is only ever accessed as the
//! `#[repr(C)]` `Shared` of atomics, which are sound to access concurrently from other processes.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

use crate::channel::{ChannelError, Seqpacket};
use std::sync::{Condvar, Mutex};

/// Request slots: at most this many calls of one host are in flight through the ring (more take
/// the socket).
pub const SLOTS: usize = 32;
const SLOT_WORDS: usize = 120;
/// Largest frame one slot carries.
pub const SLOT_BYTES: usize = SLOT_WORDS * 8;
/// How often a host thread waiting for a reply checks whether the host is closing.
const CLOSE_POLL: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 50_000_000,
};
const CLOSE_POLL_DURATION: Duration = Duration::from_millis(50);
/// "PHR3": the layout with the hook-request lane and the slots' `by_lane` word (a host of an
/// earlier layout refuses the ring: a service that ignored `by_lane` would leave its caller
/// waiting on the lane).
const MAGIC: u32 = 0x5048_5233;

/// Slot states. The host moves FREE → WRITING → REQUEST and REPLY → FREE; the service REQUEST →
/// SERVING → REPLY.
const FREE: u32 = 0;
const WRITING: u32 = 1;
const REQUEST: u32 = 2;
const SERVING: u32 = 3;
const REPLY: u32 = 4;

/// Who consumes the ring now (written by the service, read by the host).
const POOL: u32 = 0;
const DISPATCHER: u32 = 1;

#[repr(C, align(64))]
struct Slot {
    state: AtomicU32,
    len: AtomicU32,
    /// Host: 1 when the caller waits for its reply on the fd lane instead of on `state`
    /// ([`Ring::call`] with `fd_of`). Read by the service only to choose how to wake the caller.
    by_lane: AtomicU32,
    /// Atomics too: the host may write any byte of the region.
    _pad: [AtomicU32; 13],
    data: [AtomicU64; SLOT_WORDS],
}

/// What the host writes and the service reads on every turn: one cache line, so a dispatcher
/// looking at a cold host (a fan-out over many plugins) touches as few lines as possible.
#[repr(C, align(64))]
struct Up {
    /// Bumped after every publish. The dispatcher's futex word.
    seq: AtomicU32,
    /// Frames the host sent on the socket (bumped after each, before `seq`).
    socket: AtomicU32,
    /// One bit per slot holding a request (set after the slot's state), so the service looks only
    /// at those slots.
    pending: AtomicU32,
    /// The host's main thread is asleep (or about to be) on `Down::hook_seq`.
    main_waiting: AtomicU32,
}

/// What the service writes and the host reads.
#[repr(C, align(64))]
struct Down {
    /// [`POOL`] or [`DISPATCHER`].
    owner: AtomicU32,
    /// The dispatcher is asleep (or about to be) on `Up::seq`.
    waiting: AtomicU32,
    /// Bumped after every hook posted on the hook-request lane and every frame sent down the
    /// socket. The host's main thread's futex word (the host's own threads bump it too, to wake
    /// that thread).
    hook_seq: AtomicU32,
    /// Bumped (before `hook_seq`) for every frame sent down the socket: the main thread reads the
    /// socket only when this moved, so a hook on the lane costs it no `recvmsg`. The host's own
    /// threads bump it too ("look at the socket and the demux").
    socket: AtomicU32,
}

#[repr(C, align(64))]
struct Line(AtomicU32);

#[repr(C)]
struct Shared {
    magic: AtomicU32,
    up: Up,
    down: Down,
    /// Host: the host is shutting down; its waiters return.
    closed: Line,
    lane: Slot,
    /// Service → host: the hook to serve (written only by the service, read only by the host).
    hook: Slot,
    slots: [Slot; SLOTS],
}

const SIZE: usize = std::mem::size_of::<Shared>().next_multiple_of(4096);

/// Byte offsets in the region, for tools and for the hostile test plugins that write into it
/// (`plugins/c/ph_ring.h` repeats them; a unit test keeps the two in step with `Shared`).
pub mod layout {
    /// Size of the mapping.
    pub const SIZE: usize = super::SIZE;
    /// The host's line: `u32 seq`, `u32 socket`, `u32 pending`, `u32 main_waiting`.
    pub const UP_SEQ: usize = 64;
    pub const UP_SOCKET: usize = 68;
    pub const UP_PENDING: usize = 72;
    pub const UP_MAIN_WAITING: usize = 76;
    /// The service's line: `u32 owner` (0 pool, 1 dispatcher), `u32 waiting`, `u32 hook_seq`,
    /// `u32 socket`.
    pub const OWNER: usize = 128;
    pub const SERVICE_WAITING: usize = 132;
    pub const HOOK_SEQ: usize = 136;
    pub const DOWN_SOCKET: usize = 140;
    pub const CLOSED: usize = 192;
    /// The hook answer's lane (host → service), then the hook-request lane (service → host): slots.
    pub const LANE: usize = 256;
    pub const HOOK: usize = 1280;
    pub const SLOTS: usize = 2304;
    /// One slot: `u32 state`, `u32 len`, `u32 by_lane`, 52 bytes of padding, then the frame.
    pub const SLOT_SIZE: usize = 1024;
    pub const SLOT_BY_LANE: usize = 8;
    pub const SLOT_DATA: usize = 64;
    /// Slot states: free, being written by the host, request, being served, reply.
    pub const STATE_FREE: u32 = super::FREE;
    pub const STATE_WRITING: u32 = super::WRITING;
    pub const STATE_REQUEST: u32 = super::REQUEST;
    pub const STATE_SERVING: u32 = super::SERVING;
    pub const STATE_REPLY: u32 = super::REPLY;
}

// The lines a hook touches on both sides (the words, both lanes) share the first page: a cold host
// in a fan-out pays a TLB miss per page it touches.
const _: () = assert!(layout::HOOK + layout::SLOT_SIZE <= 4096);

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot set up the call ring: {0}")]
    Setup(#[source] std::io::Error),
    #[error("the call ring is {0} bytes, expected {SIZE}")]
    BadSize(u64),
    #[error("the call ring has no magic number")]
    BadMagic,
    #[error("the host is shutting down")]
    Closed,
    #[error("a frame of {len} bytes in slot {slot} (a slot holds {SLOT_BYTES})")]
    BadLength { slot: usize, len: u32 },
    #[error("a frame of {len} bytes on the hook lane (it holds {SLOT_BYTES})")]
    BadLaneLength { len: u32 },
    /// Host: the hook-request lane claims a frame longer than it holds (only the host can have
    /// written it).
    #[error("a hook of {len} bytes on the ring (the hook-request lane holds {SLOT_BYTES})")]
    BadHookLength { len: u32 },
    /// Service: the fd lane is full: the host left that many fds of earlier replies untaken.
    #[error("did not take the file descriptors passed with its replies")]
    FdsNotTaken,
    #[error("cannot pass a file descriptor on the fd lane: {0}")]
    FdSend(#[source] std::io::Error),
    /// Host: a reply named an fd that is not on the fd lane.
    #[error("the fd of request {id} is not on the fd lane")]
    FdMissing { id: u64 },
}

/// The fds a host needs for its end of the ring (sent with `Welcome`).
pub struct HostEnds {
    pub memory: OwnedFd,
    pub doorbell: OwnedFd,
    /// The host's end of the fd lane.
    pub fds: OwnedFd,
}

/// One end of the ring: the mapping, the doorbell eventfd and the fd lane.
pub struct Ring {
    shared: NonNull<Shared>,
    doorbell: OwnedFd,
    fd_lane: Seqpacket,
    /// Host: fds received for another caller than the one that read them, by request id, and who
    /// reads the lane. A leaf lock, held across non-blocking receives only (never across the lane
    /// reader's blocking one).
    fd_stash: Mutex<host::FdStash>,
    /// Host: signalled when the lane reader stashed an fd or stopped reading (only when
    /// `FdStash::waiting` says someone waits: a notify is a syscall).
    fd_stashed: Condvar,
}

// SAFETY: the mapping is only accessed through the atomics of `Shared`, which are Sync; the pointer
// stays valid until drop (munmap).
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `shared` is the start of a mapping of SIZE bytes made by `map`, not used after this.
        let _ = unsafe { rustix::mm::munmap(self.shared.as_ptr().cast(), SIZE) };
    }
}

fn map(fd: &OwnedFd) -> std::io::Result<NonNull<Shared>> {
    // SAFETY: a fresh shared mapping of a memfd of at least SIZE bytes (checked or sized by the
    // callers); the kernel picks the address, so no existing memory is replaced.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            SIZE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    NonNull::new(ptr.cast::<Shared>()).ok_or_else(|| std::io::Error::other("mmap returned NULL"))
}

fn copy_in(slot: &Slot, frame: &[u8]) {
    // Whole words, then the tail assembled by shifts: no `memcpy` call per word (a call into libc
    // on every hook answer and every call, on a page a cold host would have to fault in).
    let mut words = slot.data.iter();
    let mut chunks = frame.chunks_exact(8);
    // `chunks` first: `zip` stops at it without taking another word, which the tail needs.
    for (chunk, word) in chunks.by_ref().zip(words.by_ref()) {
        let mut bytes = [0u8; 8];
        for (byte, from) in bytes.iter_mut().zip(chunk) {
            *byte = *from;
        }
        word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if let Some(word) = words.next() {
            let value = tail
                .iter()
                .enumerate()
                .fold(0u64, |value, (i, &byte)| value | u64::from(byte) << (8 * i));
            word.store(u64::from_ne_bytes(value.to_le_bytes()), Ordering::Relaxed);
        }
    }
    slot.len.store(frame.len() as u32, Ordering::Relaxed);
}

/// Copies a frame out of `slot` into `out` (bounded; the other side may be scribbling meanwhile).
fn copy_out(slot: &Slot, index: usize, out: &mut Vec<u8>) -> Result<(), RingError> {
    let len = slot.len.load(Ordering::Relaxed);
    if len as usize > SLOT_BYTES {
        return Err(RingError::BadLength { slot: index, len });
    }
    out.clear();
    let len = len as usize;
    for word in slot.data.iter().take(len.div_ceil(8)) {
        out.extend_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
    }
    out.truncate(len);
    Ok(())
}

/// Copies a frame out of `slot` into the start of `out` (the host's hook buffer, at least
/// [`SLOT_BYTES`] long) and returns its length; bounded like [`copy_out`], and no `memcpy` call
/// (see [`copy_in`]).
fn copy_out_into(slot: &Slot, out: &mut [u8]) -> Result<usize, RingError> {
    let len = slot.len.load(Ordering::Relaxed);
    if len as usize > SLOT_BYTES || len as usize > out.len() {
        return Err(RingError::BadHookLength { len });
    }
    let len = len as usize;
    for (chunk, word) in out[..len].chunks_mut(8).zip(&slot.data) {
        let bytes = word.load(Ordering::Relaxed).to_ne_bytes();
        for (to, from) in chunk.iter_mut().zip(bytes) {
            *to = from;
        }
    }
    Ok(len)
}

/// Writes `frame` into a lane (the hook answer's or the hook-request one) and marks it a request;
/// `false` when it does not fit (it takes the socket). The caller wakes the other side.
fn post(lane: &Slot, frame: &[u8]) -> bool {
    if frame.len() > SLOT_BYTES {
        return false;
    }
    copy_in(lane, frame);
    lane.state.store(REQUEST, Ordering::SeqCst);
    true
}

fn wake(word: &AtomicU32, count: u32) {
    // Not FUTEX_PRIVATE: the word is shared between processes.
    let _ = futex::wake(word, futex::Flags::empty(), count);
}

impl Ring {
    fn shared(&self) -> &Shared {
        // SAFETY: valid for SIZE bytes until drop; only atomics inside (module docs).
        unsafe { self.shared.as_ref() }
    }

    /// The service's end, and the fds for the host's.
    pub fn create(plugin: &str) -> Result<(Ring, HostEnds), RingError> {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let memory = rustix::fs::memfd_create(format!("plughost-ring:{plugin}"), flags)
            .map_err(|e| RingError::Setup(e.into()))?;
        rustix::fs::ftruncate(&memory, SIZE as u64).map_err(|e| RingError::Setup(e.into()))?;
        // The host must not be able to shrink the mapping under the service (SIGBUS).
        rustix::fs::fcntl_add_seals(
            &memory,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(|e| RingError::Setup(e.into()))?;
        let shared = map(&memory).map_err(RingError::Setup)?;
        let doorbell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| RingError::Setup(e.into()))?;
        let host_doorbell = doorbell.try_clone().map_err(RingError::Setup)?;
        let (fd_lane, host_fds) = Seqpacket::pair().map_err(RingError::Setup)?;
        // Nothing travels host -> service on the fd lane: the host's sends fail (EPIPE) instead of
        // queueing bytes or fds at the service.
        rustix::net::shutdown(&fd_lane, rustix::net::Shutdown::Read)
            .map_err(|e| RingError::Setup(e.into()))?;
        let ring = Ring {
            shared,
            doorbell,
            fd_lane,
            fd_stash: Mutex::new(host::FdStash::default()),
            fd_stashed: Condvar::new(),
        };
        ring.shared().magic.store(MAGIC, Ordering::Release);
        Ok((
            ring,
            HostEnds {
                memory,
                doorbell: host_doorbell,
                fds: host_fds.into_fd(),
            },
        ))
    }

    /// The host's end, from the fds of `Welcome`.
    pub fn attach(ends: HostEnds) -> Result<Ring, RingError> {
        let size = rustix::fs::fstat(&ends.memory)
            .map_err(|e| RingError::Setup(e.into()))?
            .st_size as u64;
        if size != SIZE as u64 {
            return Err(RingError::BadSize(size));
        }
        let shared = map(&ends.memory).map_err(RingError::Setup)?;
        let ring = Ring {
            shared,
            doorbell: ends.doorbell,
            fd_lane: Seqpacket::from_fd(ends.fds),
            fd_stash: Mutex::new(host::FdStash::default()),
            fd_stashed: Condvar::new(),
        };
        // The lane reader's tick to notice `close` (its blocking receive is bounded like a futex
        // wait on a slot).
        ring.fd_lane
            .set_timeouts(CLOSE_POLL_DURATION, CLOSE_POLL_DURATION)
            .map_err(RingError::Setup)?;
        if ring.shared().magic.load(Ordering::Acquire) != MAGIC {
            return Err(RingError::BadMagic);
        }
        Ok(ring)
    }

    /// The doorbell eventfd (the service's pool watches it).
    pub fn doorbell(&self) -> std::os::fd::BorrowedFd<'_> {
        self.doorbell.as_fd()
    }

    fn ring_doorbell(&self) {
        let _ = rustix::io::write(&self.doorbell, &1u64.to_ne_bytes());
    }

    /// Either side: tells the host's main thread to look at the socket (a frame was sent down it,
    /// or it ended) and at the demux (a host thread routed something to it), and wakes it.
    pub fn wake_main_for_socket(&self) {
        self.shared().down.socket.fetch_add(1, Ordering::SeqCst);
        self.wake_main();
    }

    /// Wakes the host's main thread (a hook was posted; [`Ring::wake_main_for_socket`] for
    /// the rest). The futex call only when it said it sleeps (`Up::main_waiting`): it bumps the
    /// word first and looks at the flag after, and the main thread sets the flag before it reads
    /// the word (both `SeqCst`), so no wake-up is lost.
    fn wake_main(&self) {
        let s = self.shared();
        s.down.hook_seq.fetch_add(1, Ordering::SeqCst);
        if s.up.main_waiting.load(Ordering::SeqCst) != 0 {
            wake(&s.down.hook_seq, 1);
        }
    }
}

mod host;
mod service;

#[cfg(test)]
mod tests;
