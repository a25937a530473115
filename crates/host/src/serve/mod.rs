//! The host's side of the channel: serving hooks on the main thread and carrying API calls from any
//! plugin thread, with no thread of our own.
//!
//! # The call ring first
//! Once the plugin is loaded, an API call takes a slot of the call ring ([`plughost_sys::ring`]):
//! the calling thread writes its frame, wakes the service and sleeps on the slot's futex until the
//! reply is written in place. No other host thread is involved, whatever the main thread is doing.
//! A reply that carries an fd names the call's request id; the service sent the fd on the ring's fd
//! lane before writing the reply, so the caller takes it there without another wake-up
//! ([`Ring::take_fd`]; it waits only for a thread reading the lane to hand it over).
//! A call of a kind that last answered with an fd waits on the fd lane itself when no other thread
//! does, so the fd and its wake-up come in one message (`Demux::last_without_fd`, `Ring::call`).
//! A hook comes down the ring's hook-request lane and its answer goes up the ring's lane. The
//! socket remains for hooks too large for the hook-request lane, `Shutdown`, calls whose frame does
//! not fit a slot (or when every slot is busy) and their replies; each frame sent up the socket is
//! announced on the ring.
//!
//! # The main thread sleeps on the ring, not in `recv`
//! With the ring, the main thread waits for a hook on the ring's hook word (a futex), never blocked
//! in `recv`: a hook then costs no `sendmsg`/`recvmsg` pair (BENCHMARKS.md, "fanout_100"). It still
//! learns of everything that comes on the socket, because the service bumps the hook word after
//! every frame it sends there (and when it sees the socket end): woken with no hook on the lane,
//! the main thread reads the socket *without blocking* (unless a plugin thread is the reader, which
//! routes to it as below, waking it through the same word). A dead service needs no frame: its
//! death kills the host (PDEATHSIG, `crates/host/README.md`); should it not, the main thread's
//! sleep ends every [`IDLE_CHECK`] and the non-blocking read sees the end of the socket. That costs
//! a wake-up per second while idle, nothing per hook. (Rejected: a thread blocked in `recv` beside
//! the main thread costs a hand-off per socket frame and a thread per host; `poll` on an eventfd
//! the service writes costs the same syscalls as the socket.)
//!
//! # The socket: leader/follower
//! Every thread that waits for something from the socket (the main thread waiting for the next hook,
//! a plugin thread waiting for the reply to a socket call) may become *the reader*: the one thread
//! blocked in `recv` on the socket. The reader routes each frame it receives: its own reply or hook
//! ends its wait at once (no hand-off); a frame for another waiter is stored in that waiter's slot and
//! the waiter is unparked. When a reader leaves with its answer it unparks one remaining waiter, which
//! takes the reader role. Sends need no lock: a `SOCK_SEQPACKET` send is one atomic message.
//!
//! # Locks
//! `Demux::state`: guards the pending-call table, the hook queue and the reader flag. Never held
//! across `recv`, `send` or plugin code. The ring's fd stash (`Ring::take_fd`): a leaf, held across
//! non-blocking receives on the fd lane only (never across the lane reader's blocking one), never
//! with `state`.
//!
//! # Shutdown
//! When the channel closes or the service sends `Shutdown`, every waiter (on the socket or on a ring
//! slot) wakes with `PLUGHOST_E_SHUTTING_DOWN`, new calls fail with it at once, and the main thread ends the process
//! with `_exit` (no C destructors run under plugin threads). The demux is `'static`, so a plugin thread
//! racing the exit never touches freed memory.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::Thread;

use plughost_abi::PLUGHOST_E_SHUTTING_DOWN;
use plughost_sys::{ChannelError, Ring, Seqpacket};
use plughost_wire::{
    decode, decode_hook, encode, ApiCall, HookRef, HostMsg, RequestId, ServiceMsg, WireError,
    MAX_FRAME,
};

use plughost_runtime::{Backend, BackendReply};

/// Longest the main thread sleeps on the ring before it reads the socket anyway (an end of the
/// socket nobody announced: a service that died without taking the host with it).
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What the main thread waits for.
pub enum MainEvent {
    /// A hook: its frame is in the [`HookFrame`] given to [`Demux::next_hook`].
    Hook,
    /// The channel closed or the service asked us to exit.
    Closed,
}

/// The main thread's buffer for the hook it serves: the frame is received straight into it (or
/// copied in from the queue when a plugin thread received it), checked as a hook when received, and
/// decoded for the call without copying its strings. One buffer for the life of the host: the hook
/// path allocates nothing (BENCHMARKS.md, "fanout_100").
pub struct HookFrame {
    buf: Vec<u8>,
    len: usize,
    /// The ring's socket word when the main thread last looked at the socket (`None`: never).
    socket_seen: Option<u32>,
}

impl HookFrame {
    pub fn new() -> HookFrame {
        HookFrame {
            // A frame may be this long; the handshake's answer is received here too.
            buf: vec![0; MAX_FRAME],
            len: 0,
            socket_seen: None,
        }
    }

    /// The hook in the buffer (checked when it was received, so an error here is a bug).
    pub fn hook(&self) -> Result<(RequestId, HookRef<'_>), WireError> {
        match decode_hook(&self.buf[..self.len]) {
            Ok(Some(hook)) => Ok(hook),
            Ok(None) => Err(WireError::Invalid("not a hook")),
            Err(e) => Err(e),
        }
    }

    fn set(&mut self, frame: &[u8]) {
        self.buf[..frame.len()].copy_from_slice(frame);
        self.len = frame.len();
    }
}

impl Default for HookFrame {
    fn default() -> HookFrame {
        HookFrame::new()
    }
}

#[derive(Default)]
struct State {
    /// A thread is blocked in `recv` (or about to be).
    reader_active: bool,
    /// Next API request id.
    next_id: u64,
    /// API calls waiting for their reply: the caller's thread, and the reply once it came.
    pending: HashMap<u64, (Thread, Option<BackendReply>)>,
    /// Hook frames received by a plugin thread acting as reader, for the main thread.
    hooks: VecDeque<Vec<u8>>,
    /// The main thread, while it is parked waiting for a hook.
    main_waiting: Option<Thread>,
    /// The channel is gone or shutting down.
    closed: bool,
}

pub struct Demux {
    channel: Seqpacket,
    /// The call ring, once the plugin is loaded (calls made by the entry point take the socket:
    /// the service serves the socket only while it loads the plugin).
    ring: OnceLock<Ring>,
    /// Request ids of calls through the ring (the fd lane pairs an fd with its reply by id). Apart
    /// from the socket's ids (`State::next_id`, counting up from 1): these count down from
    /// `u64::MAX`.
    ring_ids: AtomicU64,
    /// Per call kind that answers with an fd when it succeeds (`ApiCall::fd_call_kind`): whether its last
    /// answer through the ring came without one (an error). Until then the next call of that kind
    /// waits for its reply on the fd lane, where the fd comes with the wake-up (`Ring::call`);
    /// after an error it waits on its slot, where an answer without an fd costs less than a
    /// message on the lane.
    last_without_fd: [AtomicBool; plughost_wire::FD_CALL_KINDS],
    state: Mutex<State>,
    /// The main thread's longest sleep on the ring ([`IDLE_CHECK`]; the tests lengthen it, so that
    /// a lost wake-up shows in `idle_timeouts`).
    idle_check: std::time::Duration,
    /// How often that sleep ended by its timeout (a diagnostic for the tests).
    idle_timeouts: AtomicU64,
}

thread_local! {
    static SEND_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static RECV_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static REPLY_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What one waiter wants.
enum Want<'f> {
    /// The next hook, into the main thread's buffer.
    Main(&'f mut HookFrame),
    Reply(u64),
}

/// One frame received and checked: a hook, left in the buffer it was received into (its length), or
/// another message, decoded.
enum Received {
    Hook(usize),
    /// Boxed: the hook path moves this enum, and a `Welcome` is large.
    Msg(Box<ServiceMsg>, Vec<OwnedFd>),
}

/// One frame the reader received: a hook (in the main thread's buffer, or copied out of a plugin
/// thread's) or another message.
enum Incoming {
    HookInFrame,
    Hook(Vec<u8>),
    Msg(Box<ServiceMsg>, Vec<OwnedFd>),
}

enum Got {
    Main(MainEvent),
    Reply(Result<BackendReply, i32>),
}

impl Demux {
    pub fn new(channel: Seqpacket) -> Demux {
        Demux {
            channel,
            ring: OnceLock::new(),
            ring_ids: AtomicU64::new(u64::MAX),
            last_without_fd: Default::default(),
            state: Mutex::new(State::default()),
            idle_check: IDLE_CHECK,
            idle_timeouts: AtomicU64::new(0),
        }
    }

    /// From now on calls and hook answers take the ring where they can.
    pub fn use_ring(&'static self, ring: Ring) {
        if self.ring.set(ring).is_ok() {
            if let Some(ring) = self.ring.get() {
                crate::seccomp::report_on_ring(ring);
            }
        }
    }

    /// Sends a hook's answer: on the ring's lane, or on the socket when it does not fit there.
    pub fn answer_hook(&self, msg: &HostMsg) -> Result<(), ChannelError> {
        let Some(ring) = self.ring.get() else {
            return self.send(msg);
        };
        // The usual answer (no message) is written on the stack: no send buffer, no serializer.
        if let HostMsg::HookDone {
            id,
            status,
            message: None,
        } = msg
        {
            let (frame, len) = plughost_wire::hook_done_frame(*id, *status);
            if ring.post_answer(&frame[..len]) {
                return Ok(());
            }
        }
        let posted = SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            encode(msg, &mut buf).is_ok() && ring.post_answer(&buf)
        });
        if posted {
            Ok(())
        } else {
            self.send(msg)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic in our own routing code: the state is still consistent
        // (every update is a single assignment), so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one message on the socket (any thread).
    pub fn send(&self, msg: &HostMsg) -> Result<(), ChannelError> {
        SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if encode(msg, &mut buf).is_err() {
                // Only an oversized call can fail to encode; the plugin's arguments were too large.
                return Err(ChannelError::Oversized {
                    len: buf.len(),
                    limit: MAX_FRAME,
                });
            }
            self.channel.send(&buf, &[])?;
            if let Some(ring) = self.ring.get() {
                ring.announce_socket_frame();
            }
            Ok(())
        })
    }

    /// Receives the handshake answer (and the library fd it may carry) before any other thread
    /// exists, into the main thread's hook buffer (one 64 KiB buffer on that thread, not two).
    pub fn recv_direct(&self, frame: &mut HookFrame) -> Result<(ServiceMsg, Vec<OwnedFd>), String> {
        match self.recv_into(&mut frame.buf) {
            Ok(Received::Msg(msg, fds)) => Ok((*msg, fds)),
            Ok(Received::Hook(_)) => Err("a hook before the handshake's answer".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Receives one frame into `buf` (`MAX_FRAME` long) and checks it: a hook is left there (its
    /// length returned), any other message is decoded.
    fn recv_into(&self, buf: &mut [u8]) -> Result<Received, ChannelError> {
        let mut fds = Vec::new();
        let len = self.channel.recv(buf, &mut fds)?;
        Self::check(buf, len, fds)
    }

    /// [`Demux::recv_into`] without blocking: `None` when nothing is waiting.
    fn try_recv_into(&self, buf: &mut [u8]) -> Result<Option<Received>, ChannelError> {
        let mut fds = Vec::new();
        match self.channel.try_recv(buf, &mut fds)? {
            Some(len) => Self::check(buf, len, fds).map(Some),
            None => Ok(None),
        }
    }

    /// Checks a frame received into `buf` (see [`Demux::recv_into`]).
    fn check(buf: &[u8], len: usize, fds: Vec<OwnedFd>) -> Result<Received, ChannelError> {
        let bad = |e: WireError| {
            ChannelError::Io(std::io::Error::other(format!(
                "bad frame from service: {e}"
            )))
        };
        let frame = &buf[..len];
        let msg = match decode_hook(frame) {
            Ok(Some(_)) => None,
            Ok(None) => Some(Box::new(decode::<ServiceMsg>(frame).map_err(bad)?)),
            Err(e) => return Err(bad(e)),
        };
        let expected = msg.as_ref().map_or(0, |msg| msg.fds_expected());
        if fds.len() != expected {
            return Err(ChannelError::Io(std::io::Error::other(format!(
                "{} file descriptors from service, expected {expected}",
                fds.len(),
            ))));
        }
        Ok(match msg {
            None => Received::Hook(len),
            Some(msg) => Received::Msg(msg, fds),
        })
    }

    /// Receives one frame as the reader: into the main thread's buffer when the main thread reads.
    fn recv_incoming(&self, want: &mut Want<'_>) -> Result<Incoming, ChannelError> {
        if let Want::Main(frame) = want {
            return Ok(match self.recv_into(&mut frame.buf)? {
                Received::Hook(len) => {
                    frame.len = len;
                    Incoming::HookInFrame
                }
                Received::Msg(msg, fds) => Incoming::Msg(msg, fds),
            });
        }
        RECV_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(MAX_FRAME, 0);
            Ok(match self.recv_into(&mut buf)? {
                Received::Hook(len) => Incoming::Hook(buf[..len].to_vec()),
                Received::Msg(msg, fds) => Incoming::Msg(msg, fds),
            })
        })
    }

    /// Marks the channel closed and wakes every waiter.
    fn close(&self, state: &mut State) {
        state.closed = true;
        if let Some(ring) = self.ring.get() {
            ring.close();
        }
        for (thread, _) in state.pending.values() {
            thread.unpark();
        }
        if let Some(main) = state.main_waiting.take() {
            main.unpark();
        }
        // With the ring, the main thread sleeps on it: `ring.close` above woke it.
    }

    fn take_ready(state: &mut State, want: &mut Want<'_>) -> Option<Got> {
        match want {
            Want::Main(frame) => {
                if let Some(hook) = state.hooks.pop_front() {
                    frame.set(&hook);
                    return Some(Got::Main(MainEvent::Hook));
                }
                state.closed.then_some(Got::Main(MainEvent::Closed))
            }
            Want::Reply(id) => {
                let id = *id;
                let ready = state
                    .pending
                    .get(&id)
                    .is_some_and(|(_, reply)| reply.is_some());
                if ready {
                    let (_, reply) = state.pending.remove(&id)?;
                    return reply.map(|r| Got::Reply(Ok(r)));
                }
                if state.closed {
                    state.pending.remove(&id);
                    return Some(Got::Reply(Err(PLUGHOST_E_SHUTTING_DOWN)));
                }
                None
            }
        }
    }

    /// Wakes one waiter other than the caller (`from_main`: the main thread) so it can take over
    /// reading. With the ring, the main thread is woken through it (it sleeps there, and reads the
    /// socket without blocking when woken): a frame that came after the last reader's last `recv`
    /// is read by someone.
    fn promote_one(&self, state: &mut State, from_main: bool) {
        if let Some((thread, _)) = state.pending.values().find(|(_, reply)| reply.is_none()) {
            thread.unpark();
        } else if !from_main {
            self.wake_main(state);
        }
    }

    /// Tells the main thread to look at the demux and the socket (a hook queued for it, a reader
    /// left): through the ring when it sleeps there.
    fn wake_main(&self, state: &State) {
        if let Some(ring) = self.ring.get() {
            ring.wake_main_for_socket();
        } else if let Some(main) = &state.main_waiting {
            main.unpark();
        }
    }

    fn wait(&self, mut want: Want<'_>) -> Got {
        let mut state = self.lock();
        loop {
            if let Some(got) = Self::take_ready(&mut state, &mut want) {
                if matches!(want, Want::Main(_)) {
                    state.main_waiting = None;
                }
                if !state.reader_active {
                    self.promote_one(&mut state, matches!(want, Want::Main(_)));
                }
                return got;
            }
            if state.reader_active {
                if matches!(want, Want::Main(_)) {
                    state.main_waiting = Some(std::thread::current());
                }
                drop(state);
                std::thread::park();
                state = self.lock();
                continue;
            }
            state.reader_active = true;
            drop(state);
            let received = self.recv_incoming(&mut want);
            state = self.lock();
            state.reader_active = false;
            match received {
                Err(ChannelError::Disconnected) => self.close(&mut state),
                Err(e) => {
                    host_log(&format!("closing the channel: {e}"));
                    self.close(&mut state);
                }
                // The main thread read its own hook: it serves it now (the queue is empty: it
                // looked before reading, and only the reader adds to it).
                Ok(Incoming::HookInFrame) => {
                    state.main_waiting = None;
                    self.promote_one(&mut state, true);
                    return Got::Main(MainEvent::Hook);
                }
                Ok(Incoming::Hook(frame)) => {
                    state.hooks.push_back(frame);
                    self.wake_main(&state);
                }
                Ok(Incoming::Msg(msg, fds)) => {
                    let mine = match want {
                        Want::Reply(id) => Some(id),
                        Want::Main(_) => None,
                    };
                    self.route(&mut state, mine, *msg, fds);
                }
            }
        }
    }

    /// Routes a message other than a hook; `mine` is the reader's own request, if it waits for one.
    fn route(&self, state: &mut State, mine: Option<u64>, msg: ServiceMsg, mut fds: Vec<OwnedFd>) {
        match msg {
            // Hooks are told apart when received (`Incoming`); a hook here would be a decoding bug.
            ServiceMsg::Hook { .. } => {
                host_log("a hook decoded as another message: closing");
                self.close(state);
            }
            ServiceMsg::Reply { id, reply } => match state.pending.get_mut(&id.0) {
                Some((thread, slot)) if slot.is_none() => {
                    *slot = Some((reply, fds.pop()));
                    if mine != Some(id.0) {
                        thread.unpark();
                    }
                }
                _ => {
                    host_log(&format!("reply to unknown request {}: closing", id.0));
                    self.close(state);
                }
            },
            ServiceMsg::Shutdown => self.close(state),
            ServiceMsg::Welcome(_) => {
                host_log("unexpected second welcome: closing");
                self.close(state);
            }
        }
    }
}

impl Backend for Demux {
    fn call(&self, call: ApiCall) -> Result<BackendReply, i32> {
        let call = match self.call_on_ring(call) {
            Ok(reply) => return reply,
            Err(call) => call,
        };
        let id = {
            let mut state = self.lock();
            if state.closed {
                return Err(PLUGHOST_E_SHUTTING_DOWN);
            }
            state.next_id += 1;
            let id = state.next_id;
            state.pending.insert(id, (std::thread::current(), None));
            id
        };
        if self
            .send(&HostMsg::Call {
                id: RequestId(id),
                call,
            })
            .is_err()
        {
            self.lock().pending.remove(&id);
            return Err(PLUGHOST_E_SHUTTING_DOWN);
        }
        match self.wait(Want::Reply(id)) {
            Got::Reply(reply) => reply,
            Got::Main(_) => Err(PLUGHOST_E_SHUTTING_DOWN),
        }
    }
}

impl AsFd for Demux {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.channel.as_fd()
    }
}

/// One diagnostic line on stderr (the service prefixes it with the plugin's name).
pub fn host_log(line: &str) {
    eprintln!("plughost-host: {line}");
}

mod main_thread;
mod ring_calls;

#[cfg(test)]
mod tests;
