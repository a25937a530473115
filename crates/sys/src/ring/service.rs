//! The service's side of the call ring: waiting for and claiming what the host publishes, posting
//! hooks, taking hook answers, and answering a slot (waking its caller by futex, or on the fd lane
//! with its fd). Everything here treats the region as written by an untrusted host (the module
//! docs of `ring`, "Trust"). Not here: the host's side (`host.rs`).

use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use rustix::thread::futex;

use super::{
    copy_in, copy_out, post, wake, ChannelError, Ring, RingError, Slot, DISPATCHER, FREE, POOL,
    REPLY, REQUEST, SERVING, SLOTS, SLOT_BYTES,
};

impl Ring {
    pub fn seq(&self) -> u32 {
        self.shared().up.seq.load(Ordering::SeqCst)
    }

    /// Service: how many socket frames the host announced (compare with the last value seen; the
    /// host can write any number here, so this only says "look at the socket").
    pub fn socket_frames(&self) -> u32 {
        self.shared().up.socket.load(Ordering::SeqCst)
    }

    /// Service: a dispatcher takes over the ring (its hook is about to be sent) or hands it back.
    pub fn set_dispatcher(&self, dispatching: bool) {
        let owner = if dispatching { DISPATCHER } else { POOL };
        self.shared().down.owner.store(owner, Ordering::SeqCst);
    }

    /// Service (dispatcher): sleeps until the host publishes after `seen` was read, someone calls
    /// [`Ring::wake_service`], or `timeout` passes.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        let s = self.shared();
        s.down.waiting.store(1, Ordering::SeqCst);
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let _ = futex::wait(&s.up.seq, futex::Flags::empty(), seen, Some(&ts));
        s.down.waiting.store(0, Ordering::Relaxed);
    }

    /// Service: wakes a dispatcher waiting on this ring (the host died, or a frame came on the socket).
    pub fn wake_service(&self) {
        let s = self.shared();
        s.up.seq.fetch_add(1, Ordering::SeqCst);
        wake(&s.up.seq, u32::MAX);
    }

    /// Service (dispatcher): posts a hook's frame on the hook-request lane and wakes the host's
    /// main thread. `false`: it does not fit (send it on the socket, then
    /// [`Ring::wake_main_for_socket`]). Nothing is read back from the lane: the host may have
    /// written anything there.
    pub fn post_hook(&self, frame: &[u8]) -> bool {
        let posted = post(&self.shared().hook, frame);
        if posted {
            self.wake_main();
        }
        posted
    }

    /// Service: takes the hook answer from the lane, if one is there.
    pub fn take_answer(&self, out: &mut Vec<u8>) -> Result<bool, RingError> {
        let lane = &self.shared().lane;
        if lane
            .state
            .compare_exchange(REQUEST, SERVING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(false);
        }
        let copied = copy_out(lane, 0, out).map_err(|e| match e {
            RingError::BadLength { len, .. } => RingError::BadLaneLength { len },
            other => other,
        });
        lane.state.store(FREE, Ordering::Release);
        copied.map(|()| true)
    }

    /// Service: claims every slot with a request waiting, as a bit mask of slot indices. Only the
    /// slots the host marked pending are looked at; a mark on a slot without a request is ignored.
    pub fn claim_requests(&self) -> u32 {
        let s = self.shared();
        if s.up.pending.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let marked = s.up.pending.swap(0, Ordering::SeqCst);
        let mut claimed = 0u32;
        for index in (0..SLOTS).filter(|i| marked & (1 << i) != 0) {
            if s.slots[index]
                .state
                .compare_exchange(REQUEST, SERVING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                claimed |= 1 << index;
            }
        }
        claimed
    }

    /// Service: the request frame of a slot it claimed.
    pub fn request(&self, index: usize, out: &mut Vec<u8>) -> Result<(), RingError> {
        let slot = &self.shared().slots[index % SLOTS];
        copy_out(slot, index, out)
    }

    /// Service: passes `fd` on the fd lane for the reply to request `id`, before that reply is
    /// written into its slot. Never blocks: a full lane (the host does not take its fds) is
    /// [`RingError::FdsNotTaken`]. The service's own fd stays the caller's to close.
    pub fn send_fd(&self, id: u64, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), RingError> {
        self.send_on_lane(id, &[fd])
    }

    fn send_on_lane(&self, id: u64, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), RingError> {
        match self.fd_lane.try_send(&id.to_le_bytes(), fds) {
            Ok(()) => Ok(()),
            Err(ChannelError::TimedOut) => Err(RingError::FdsNotTaken),
            Err(ChannelError::Io(e)) => Err(RingError::FdSend(e)),
            Err(e) => Err(RingError::FdSend(std::io::Error::other(e.to_string()))),
        }
    }

    /// Service: answers a slot it claimed and wakes the waiting plugin thread.
    pub fn reply(&self, index: usize, frame: &[u8]) {
        let slot = self.write_reply(index, frame);
        wake(&slot.state, 1);
    }

    pub(super) fn write_reply(&self, index: usize, frame: &[u8]) -> &Slot {
        let slot = &self.shared().slots[index % SLOTS];
        // The service only writes frames it encoded itself, and they fit (checked by the caller);
        // a reply that does not fit is cut to an empty frame, which the host reports.
        if frame.len() <= SLOT_BYTES {
            copy_in(slot, frame);
        } else {
            slot.len.store(0, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        slot.state.store(REPLY, Ordering::Release);
        slot
    }

    /// Service: the caller of a slot it claimed waits for its reply on the fd lane (the host says
    /// so; a host that says it falsely only delays its own call, or fills its lane and is killed
    /// for [`RingError::FdsNotTaken`]).
    pub fn answers_on_lane(&self, index: usize) -> bool {
        self.shared().slots[index % SLOTS]
            .by_lane
            .load(Ordering::Relaxed)
            != 0
    }

    /// Service: answers a slot whose caller waits on the fd lane ([`Ring::answers_on_lane`]): the
    /// reply into the slot, then request `id` on the lane with `fd`, if any, which wakes the
    /// caller. Never blocks, like [`Ring::send_fd`]. The service's own fd stays the caller's to
    /// close.
    pub fn reply_on_lane(
        &self,
        index: usize,
        id: u64,
        frame: &[u8],
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(), RingError> {
        self.write_reply(index, frame);
        self.send_on_lane(id, fd.as_slice())
    }
}
