//! The host's side of the call ring: a plugin thread's call through a slot (waiting on the slot's
//! futex, or on the fd lane as its reader), taking the fd of a reply, the main thread's hooks and
//! its sleep, and closing. The layout, the trust rules and who wakes whom: the module docs of
//! `ring`. Not here: the service's side (`service.rs`).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;

use super::{
    copy_in, copy_out, copy_out_into, post, wake, ChannelError, Ring, RingError, CLOSE_POLL,
    CLOSE_POLL_DURATION, DISPATCHER, FREE, REPLY, REQUEST, SLOTS, SLOT_BYTES, WRITING,
};

/// Most fds a host keeps that arrived for another caller and were not taken yet (an honest host
/// has at most one per slot in flight); past it the oldest is closed.
pub(super) const FD_STASH: usize = 2 * SLOTS;

/// The host's fds received on the fd lane for another caller, and the buffer each receive fills
/// (kept, so taking an fd allocates nothing).
#[derive(Default)]
pub(super) struct FdStash {
    pub(super) kept: VecDeque<(u64, OwnedFd)>,
    pub(super) received: Vec<OwnedFd>,
    /// A host thread is blocked receiving on the fd lane for its own reply (it holds `received`
    /// meanwhile): a message it takes for another caller reaches that caller only through `kept`.
    pub(super) reader: bool,
    /// Threads in [`Ring::take_fd`] waiting for that reader to stash their fd.
    pub(super) waiting: u32,
}

impl FdStash {
    /// Keeps `fd`, passed for request `tag`, for its caller; past [`FD_STASH`] the oldest is closed.
    fn keep(&mut self, tag: u64, fd: OwnedFd) {
        if self.kept.len() == FD_STASH {
            self.kept.pop_front();
        }
        self.kept.push_back((tag, fd));
    }
}

/// The request id a message on the fd lane names (its first 8 bytes, little-endian).
fn tag_of(message: &[u8; 16]) -> u64 {
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&message[..8]);
    u64::from_le_bytes(tag)
}

/// Longest a caller waits in [`Ring::take_fd`] for the lane reader to hand it an fd that the
/// service sent before writing the reply (so it was on the lane already): the reader stashes it
/// as soon as it receives it, so only a lost fd (a service bug) waits this long.
const FD_WAIT: Duration = Duration::from_secs(1);

impl Ring {
    /// Host: tells the service there is something new (after a publish).
    fn notify_service(&self) {
        let s = self.shared();
        s.up.seq.fetch_add(1, Ordering::SeqCst);
        if s.down.owner.load(Ordering::SeqCst) == DISPATCHER {
            if s.down.waiting.load(Ordering::SeqCst) != 0 {
                wake(&s.up.seq, u32::MAX);
            }
        } else {
            self.ring_doorbell();
        }
    }

    /// Host: sends `request` through a free slot and waits for the reply frame, written to `reply`.
    /// `Ok(false)`: no slot free or the frame does not fit (use the socket); `Err`: the ring is
    /// closed (the host is shutting down) or the service wrote a bad reply.
    ///
    /// `fd_of`: the call's request id and where to put an fd, for a call whose reply may carry one.
    /// When no other thread of this host is receiving on the fd lane, this one waits for its reply
    /// there (blocked in `recvmsg`, the slot marked `by_lane`): the service then writes the reply
    /// into the slot and sends the request id on the lane, with the fd if there is one, and that one
    /// `sendmsg` both passes the fd and wakes the caller (no futex round, no second receive). An fd
    /// that arrives this way is put into `fd_of`; otherwise it is taken with [`Ring::take_fd`].
    pub fn call(
        &self,
        request: &[u8],
        reply: &mut Vec<u8>,
        fd_of: Option<(u64, &mut Option<OwnedFd>)>,
    ) -> Result<bool, RingError> {
        let s = self.shared();
        if s.closed.0.load(Ordering::Acquire) != 0 {
            return Err(RingError::Closed);
        }
        if request.len() > SLOT_BYTES {
            return Ok(false);
        }
        let Some((index, slot)) = s.slots.iter().enumerate().find(|(_, slot)| {
            slot.state
                .compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        }) else {
            return Ok(false);
        };
        copy_in(slot, request);
        let reader = fd_of.and_then(|(id, out)| Some((id, out, self.become_lane_reader()?)));
        slot.by_lane
            .store(u32::from(reader.is_some()), Ordering::Relaxed);
        slot.state.store(REQUEST, Ordering::SeqCst);
        s.up.pending.fetch_or(1 << index, Ordering::SeqCst);
        self.notify_service();
        if let Some((id, out, received)) = reader {
            // Returns once its own request id came (the reply is in the slot then), the ring
            // closes or the lane ends (then the wait below notices `closed`).
            self.wait_on_lane(id, out, received);
        }
        loop {
            let state = slot.state.load(Ordering::Acquire);
            if state == REPLY {
                break;
            }
            if s.closed.0.load(Ordering::Acquire) != 0 {
                // The slot stays taken: the process is about to end.
                return Err(RingError::Closed);
            }
            // Bounded: `close` cannot change the slot's word, so a caller that checked `closed`
            // just before it was set looks again within CLOSE_POLL.
            match futex::wait(&slot.state, futex::Flags::empty(), state, Some(&CLOSE_POLL)) {
                Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::TIMEDOUT) => {}
                Err(e) => return Err(RingError::Setup(e.into())),
            }
        }
        let copied = copy_out(slot, index, reply);
        slot.state.store(FREE, Ordering::Release);
        copied.map(|()| true)
    }

    fn lock_stash(&self) -> MutexGuard<'_, FdStash> {
        // Poisoned only by a panic in this module's own bookkeeping; the stash stays consistent.
        self.fd_stash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Host: becomes the one thread receiving on the fd lane, if no other is; gives the receive
    /// buffer it uses meanwhile.
    fn become_lane_reader(&self) -> Option<Vec<OwnedFd>> {
        let mut stash = self.lock_stash();
        if stash.reader {
            return None;
        }
        stash.reader = true;
        Some(std::mem::take(&mut stash.received))
    }

    /// Host: the lane reader receives until its own request id comes (with its fd, if any). What
    /// comes for another caller (an fd for a caller waiting on its slot) is stashed for it.
    fn wait_on_lane(&self, id: u64, out: &mut Option<OwnedFd>, mut fds: Vec<OwnedFd>) {
        let mut buf = [0u8; 16];
        loop {
            fds.clear();
            let tag = match self.fd_lane.recv(&mut buf, &mut fds) {
                Ok(8) => tag_of(&buf),
                // Not something the service sends: ignore it.
                Ok(_) | Err(ChannelError::Empty) | Err(ChannelError::Oversized { .. }) => continue,
                // A tick: only a closing host ends the wait here. Not a reply already in the slot:
                // the service writes it *before* it sends on the lane, so leaving then would
                // leave this call's fd behind on the lane.
                Err(ChannelError::TimedOut) => {
                    if self.shared().closed.0.load(Ordering::Acquire) != 0 {
                        break;
                    }
                    continue;
                }
                // A message whose fd could not be received (this process is at its fd limit): it
                // may have been ours, so stop reading; our reply is then in the slot and its fd
                // is reported missing (the caller's wait below does not depend on the lane).
                Err(ChannelError::TooManyFds { .. }) => break,
                // The lane ended: the service is gone (the caller's wait sees `closed` soon).
                Err(_) => break,
            };
            if tag == id {
                *out = fds.pop();
                break;
            }
            if let Some(fd) = fds.pop() {
                let mut stash = self.lock_stash();
                stash.keep(tag, fd);
                if stash.waiting > 0 {
                    self.fd_stashed.notify_all();
                }
            }
        }
        fds.clear();
        let mut stash = self.lock_stash();
        stash.reader = false;
        stash.received = fds;
        if stash.waiting > 0 {
            self.fd_stashed.notify_all();
        }
    }

    /// Host: announces a frame it just sent on the socket, so that a dispatcher reads the socket
    /// without depending on any other service thread.
    pub fn announce_socket_frame(&self) {
        self.shared().up.socket.fetch_add(1, Ordering::SeqCst);
        self.notify_service();
    }

    /// Host: posts a hook's answer on the lane. `false`: it does not fit (use the socket).
    pub fn post_answer(&self, frame: &[u8]) -> bool {
        let posted = post(&self.shared().lane, frame);
        if posted {
            self.notify_service();
        }
        posted
    }

    /// Host: takes the fd the service passed with the reply to request `id`, for a caller that
    /// waited on its slot (call it once the reply is in the slot: the service sent the fd before
    /// writing the reply, so it is queued). It waits only while another thread reads the lane (that
    /// thread may hold the fd and stashes it), at most `FD_WAIT` (1 s) in all; an fd that is not there
    /// is [`RingError::FdMissing`]. Fds that arrive for other callers are kept for them; frames that
    /// are not one id with one fd are dropped (closed).
    pub fn take_fd(&self, id: u64) -> Result<OwnedFd, RingError> {
        let started = std::time::Instant::now();
        let mut guard = self.lock_stash();
        loop {
            let stash = &mut *guard;
            if let Some(at) = stash.kept.iter().position(|(tag, _)| *tag == id) {
                if let Some((_, fd)) = stash.kept.remove(at) {
                    return Ok(fd);
                }
            }
            if !stash.reader {
                return self.receive_fd(stash, id);
            }
            // A thread blocked on the lane for its own reply may have taken ours (or be about to):
            // it stashes it, or stops reading, and says so. Bounded, like every wait on the ring.
            if self.shared().closed.0.load(Ordering::Acquire) != 0 || started.elapsed() > FD_WAIT {
                return Err(RingError::FdMissing { id });
            }
            stash.waiting += 1;
            let (again, _) = self
                .fd_stashed
                .wait_timeout(guard, CLOSE_POLL_DURATION)
                .unwrap_or_else(|e| e.into_inner());
            guard = again;
            guard.waiting -= 1;
        }
    }

    /// [`Ring::take_fd`] when no thread reads the lane: receives without blocking until `id`'s fd
    /// comes, stashing the others.
    fn receive_fd(&self, stash: &mut FdStash, id: u64) -> Result<OwnedFd, RingError> {
        let mut fds = std::mem::take(&mut stash.received);
        let mut buf = [0u8; 16];
        let found = loop {
            fds.clear();
            let len = match self.fd_lane.try_recv(&mut buf, &mut fds) {
                Ok(Some(len)) => len,
                Ok(None) | Err(_) => break Err(RingError::FdMissing { id }),
            };
            if len != 8 || fds.len() != 1 {
                continue;
            }
            let Some(fd) = fds.pop() else { continue };
            let tag = tag_of(&buf);
            if tag == id {
                break Ok(fd);
            }
            stash.keep(tag, fd);
        };
        fds.clear();
        stash.received = fds;
        found
    }

    /// Host: wakes every thread waiting for a reply (and the main thread); their calls fail from
    /// now on.
    pub fn close(&self) {
        let s = self.shared();
        s.closed.0.store(1, Ordering::SeqCst);
        for slot in &s.slots {
            wake(&slot.state, u32::MAX);
        }
        self.wake_main_for_socket();
    }

    /// Host (main thread): the hook word, read before looking at the hook-request lane and the
    /// socket (see [`Ring::wait_main`]).
    pub fn main_word(&self) -> u32 {
        self.shared().down.hook_seq.load(Ordering::SeqCst)
    }

    /// Host (main thread): how often the socket was announced (compare with the last value seen;
    /// the host's own threads can write any number here, so this only says "look at the socket").
    pub fn main_socket_word(&self) -> u32 {
        self.shared().down.socket.load(Ordering::SeqCst)
    }

    /// Host (main thread): says it is about to sleep on the hook word (`true`, before its last look
    /// at the hook-request lane and the socket) or is busy (`false`: the service then skips the
    /// futex wake).
    pub fn main_waits(&self, waiting: bool) {
        self.shared()
            .up
            .main_waiting
            .store(u32::from(waiting), Ordering::SeqCst);
    }

    /// Host (main thread): takes the hook the service posted on the hook-request lane, if one is
    /// there, into the start of `out`; its length. `Err`: the lane claims more than it holds (the
    /// service never writes that: the host's own threads scribbled on it).
    pub fn take_hook(&self, out: &mut [u8]) -> Result<Option<usize>, RingError> {
        let hook = &self.shared().hook;
        if hook.state.load(Ordering::Acquire) != REQUEST {
            return Ok(None);
        }
        // Only the main thread takes hooks, so the lane is free again before the copy: the service
        // posts the next hook only after this one's answer.
        hook.state.store(FREE, Ordering::Relaxed);
        copy_out_into(hook, out).map(Some)
    }

    /// Host (main thread): sleeps until the hook word moves from `seen` (a hook was posted, the
    /// service sent on the socket, a host thread wants the main thread) or `timeout` passes
    /// (`false`).
    pub fn wait_main(&self, seen: u32, timeout: Duration) -> bool {
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let waited = futex::wait(
            &self.shared().down.hook_seq,
            futex::Flags::empty(),
            seen,
            Some(&ts),
        );
        waited != Err(Errno::TIMEDOUT)
    }
}
