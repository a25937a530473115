//! Serving a host's API calls: a ring slot or a socket frame run against the callbacks (a
//! dispatcher's `scope` during a hook, the default ones from the pool outside hooks), and the
//! backlog of calls a pool thread claimed but has not begun (module docs of `proxy`, "Who consumes
//! what"). Not here: the hook round trip (`mod.rs`), the pool's threads (`pool.rs`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::TryLockError;

use plughost_sys::ChannelError;
use plughost_wire::{encode, ApiCall, ApiReply, HostMsg, RequestId, ServiceMsg};

use super::phase::{Idle, Outside, Phase, RingSlot};
use super::{lock, Gone, Host, POOL_ROUNDS, SEND_BUF, SEND_TIMEOUT, SLOT_BUF};
use crate::callbacks::{CallContext, ServiceCallbacks};
use crate::error::CrashCause;
use crate::execute;

/// Calls a pool thread claimed but has not begun serving, and whether a hook is in flight (module
/// docs). Whoever takes a call out of it serves it: the pool with the default callbacks while
/// `hooks == 0`, a dispatcher with its scope otherwise.
#[derive(Default)]
pub(crate) struct Backlog {
    /// Dispatchers of this host inside [`Host::call_hook`] (waiting for the token or holding it).
    pub(super) hooks: u32,
    /// Claimed ring slots, one bit each.
    pub(super) slots: u32,
    /// Calls read from the socket.
    pub(super) socket: std::collections::VecDeque<(RequestId, ApiCall)>,
}

/// One call taken out of the backlog.
pub(super) enum Work {
    Slot(usize),
    Socket(RequestId, ApiCall),
}

impl Backlog {
    pub(super) fn is_empty(&self) -> bool {
        self.slots == 0 && self.socket.is_empty()
    }

    pub(super) fn pop(&mut self) -> Option<Work> {
        if self.slots != 0 {
            let index = self.slots.trailing_zeros() as usize;
            self.slots &= !(1 << index);
            return Some(Work::Slot(index));
        }
        self.socket
            .pop_front()
            .map(|(id, call)| Work::Socket(id, call))
    }
}

impl Host {
    /// Runs one API call for the host.
    pub(super) fn run_call(
        &self,
        call: ApiCall,
        handler: &dyn ServiceCallbacks,
    ) -> (ApiReply, Option<OwnedFd>) {
        let name = call.name();
        let ctx = CallContext { plugin: &self.name };
        let (reply, fd) = execute::execute(ctx, call, handler, &self.processes);
        self.stats.api_calls.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(plugin = %self.name, call = name, ?reply, "api call");
        (reply, fd)
    }

    /// Runs one API call that came on the socket and sends the reply there.
    pub(super) fn serve_call(&self, id: RequestId, call: ApiCall, handler: &dyn ServiceCallbacks) {
        let (reply, fd) = self.run_call(call, handler);
        // A host's threads read their replies, so a full queue means it keeps calling without
        // reading: wait at most SEND_TIMEOUT for room (never longer: that holds a service thread).
        let msg = ServiceMsg::Reply { id, reply };
        let fds: &[BorrowedFd<'_>] = match &fd {
            Some(fd) => &[fd.as_fd()],
            None => &[],
        };
        let sent = match self.send_with(&msg, fds, true) {
            Err(ChannelError::TimedOut) => self.send(&msg, fds),
            other => other,
        };
        // Any other failure means the host is gone; whoever reads next classifies it.
        if let Err(ChannelError::TimedOut) = sent {
            self.kill_for(CrashCause::ProtocolViolation(format!(
                "stopped reading the service's replies (none read for {} ms)",
                SEND_TIMEOUT.as_millis()
            )));
        }
    }

    /// Serves the call in ring slot `index` (claimed by this thread) and answers it in place.
    pub(super) fn serve_slot(
        &self,
        index: usize,
        frame: &mut Vec<u8>,
        handler: &dyn ServiceCallbacks,
    ) -> Result<(), CrashCause> {
        self.ring
            .request(index, frame)
            .map_err(|e| self.violation(format!("sent {e} of the call ring")))?;
        let (id, call) = RingSlot
            .accept(self.decode_ring(frame)?)
            .map_err(|why| self.violation(why))?;
        let (reply, fd) = self.run_call(call, handler);
        let passed = fd.as_ref().map(|fd| fd.as_fd());
        let by_lane = self.ring.answers_on_lane(index);
        // For a caller waiting on its slot the fd goes first, on the fd lane, so that it is queued
        // when the caller sees the reply (which names it by request id). Never blocking: a host
        // that leaves its fds untaken until the lane is full is killed, and the fd it did not take
        // is closed here.
        if let (false, Some(passed)) = (by_lane, passed) {
            self.lane_sent(self.ring.send_fd(id.0, passed))?;
        }
        let sent = SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            // A reply is a few bytes: encoding cannot fail, but never leave the caller waiting.
            let frame: &[u8] = match encode(&ServiceMsg::Reply { id, reply }, &mut buf) {
                Ok(()) => &buf,
                Err(_) => &[],
            };
            if by_lane {
                // The caller waits on the fd lane: the reply into the slot, then one message
                // there (with the fd, if any) passes the fd and wakes it.
                self.ring.reply_on_lane(index, id.0, frame, passed)
            } else {
                self.ring.reply(index, frame);
                Ok(())
            }
        });
        self.lane_sent(sent)?;
        // Our copy of the fd is closed once the caller is on its way, not before.
        drop(fd);
        Ok(())
    }

    /// What a send on the fd lane means for the host: a full lane is its fault (it does not take
    /// what it is sent), any other failure its death.
    fn lane_sent(&self, sent: Result<(), plughost_sys::RingError>) -> Result<(), CrashCause> {
        match sent {
            Ok(()) => Ok(()),
            Err(e @ plughost_sys::RingError::FdsNotTaken) => Err(self.violation(e.to_string())),
            Err(_) => Err(self.crash_cause()),
        }
    }

    /// Serves one call taken out of the backlog.
    pub(super) fn serve_work(
        &self,
        work: Work,
        frame: &mut Vec<u8>,
        handler: &dyn ServiceCallbacks,
    ) -> Result<(), CrashCause> {
        match work {
            Work::Slot(index) => self.serve_slot(index, frame, handler),
            Work::Socket(id, call) => {
                self.serve_call(id, call, handler);
                Ok(())
            }
        }
    }

    /// A pool thread was woken for this host (its doorbell, or its socket when `socket` is true)
    /// with no hook in flight, or with a dispatcher about to start (then it leaves everything to the
    /// dispatcher).
    pub fn serve_idle(&self, default: &dyn ServiceCallbacks, socket: bool) {
        if socket {
            self.socket_pending.store(true, Ordering::SeqCst);
        }
        SLOT_BUF.with(|frame| {
            let mut frame = frame.borrow_mut();
            for _ in 0..POOL_ROUNDS {
                if !self.serve_round(default, &mut frame) {
                    return;
                }
            }
            // More is waiting: give it a later turn rather than holding this thread.
            self.kicks.kick(self.id);
        })
    }

    /// One round of [`serve_idle`]: claim under the token, serve without it. Returns whether to look
    /// again.
    pub(super) fn serve_round(&self, default: &dyn ServiceCallbacks, frame: &mut Vec<u8>) -> bool {
        let mut reader = match self.reader.try_lock() {
            Ok(reader) => reader,
            // A panic in a callback of an earlier holder: the buffers are still sound.
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // A dispatcher (which must hear of socket frames) or another pool thread (which
                // looks again before it stops) holds the token.
                if self.socket_pending.load(Ordering::SeqCst) {
                    self.ring.wake_service();
                }
                return false;
            }
        };
        let seen = self.ring.seq();
        let claimed = self.ring.claim_requests();
        let msg = if self.socket_announced(&mut reader) {
            match self.recv(&mut reader) {
                Ok(Some(msg)) => {
                    // There may be more behind it.
                    self.socket_pending.store(true, Ordering::SeqCst);
                    Some(msg)
                }
                Ok(None) => None,
                // Dead or killed: the monitor and the next dispatcher report it (classifying it
                // here could wait for the exit with the token held).
                Err(Gone) => return false,
            }
        } else {
            None
        };
        drop(reader);
        let mut found = claimed != 0;
        let call = match msg {
            Some(HostMsg::Call { id, call }) => Some((id, call)),
            Some(other) => {
                found = true;
                self.serve_idle_msg(other, default);
                None
            }
            None => None,
        };
        // Claimed calls go through the backlog: a hook that begins before one of them is begun
        // takes it (module docs).
        if claimed != 0 || call.is_some() {
            found = true;
            let mut backlog = lock(&self.backlog);
            backlog.slots |= claimed;
            backlog.socket.extend(call);
        }
        loop {
            let work = {
                let mut backlog = lock(&self.backlog);
                if backlog.hooks > 0 {
                    if !backlog.is_empty() {
                        // The dispatcher looks at the backlog on its next turn.
                        self.ring.wake_service();
                    }
                    return false;
                }
                backlog.pop()
            };
            let Some(work) = work else { break };
            if self.serve_work(work, frame, default).is_err() {
                return false;
            }
        }
        found || self.ring.seq() != seen || self.socket_pending.load(Ordering::SeqCst)
    }

    pub(super) fn serve_idle_msg(&self, msg: HostMsg, default: &dyn ServiceCallbacks) {
        match Idle.accept(msg) {
            Ok(Outside::Call(id, call)) => self.serve_call(id, call, default),
            Ok(Outside::Blocked(syscall)) => self.kill_for(CrashCause::BlockedSyscall { syscall }),
            Err(why) => {
                self.violation(why);
            }
        }
    }
}
