//! The service's handle on one host process (crosvm's `ProxyDevice`): sends hooks, serves the
//! plugin's calls, and classifies how the host ended.
//!
//! # Two transports
//! - The **socket** carries the handshake, hooks too large for the ring and `Shutdown` to the host,
//!   the replies to socket calls (with their fd), and from the host: calls that do not fit the ring
//!   (or find every slot busy), `Blocked`, and whatever a hostile plugin writes on it. After every
//!   frame it sends there (and when it reads the socket's end) the service wakes the host's main
//!   thread through the ring (`Ring::wake_main_for_socket`): that thread sleeps on the ring, not in
//!   `recv`.
//! - The **call ring** ([`plughost_sys::ring`], shared memory) carries the hooks (the hook-request
//!   lane), every other API call (a slot each, answered in place; an fd the reply carries goes
//!   first on the ring's fd lane, named by the request id) and the hook answers (the lane). The
//!   frames are the same in both.
//!
//! # Who consumes what
//! - A thread dispatching a hook holds [`Host::reader`] (the read token) for the whole round trip:
//!   it marks the ring as its own (`set_dispatcher`), posts the hook, then sleeps on the ring's
//!   futex (bounded by [`DEADLINE_TICK`] to check the deadline) and serves every call that arrives
//!   meanwhile, from any plugin thread, on its own thread with the dispatch's `scope` callbacks.
//! - Outside hooks, the [`Pool`](crate::pool::Pool) serves: it watches the ring's doorbell eventfd
//!   and the socket (edge-triggered). A pool thread `try_lock`s the token only to *claim* work (ring
//!   slots by compare-and-swap, or one socket frame), releases it and then serves with the default
//!   callbacks. Because claims happen under the token, no pool thread takes a call published after a
//!   dispatcher took the token: every call a hook causes is served with that hook's `scope`.
//! - A pool thread that sees a socket frame while a dispatcher holds the token sets
//!   `socket_pending` and wakes the dispatcher, which reads the socket itself.
//! - What a pool thread claimed goes into the host's [`Backlog`] first; the pool takes one call at
//!   a time out of it to serve with the default callbacks, and only while no hook of the host is in
//!   flight (from a dispatcher's entry into [`Host::call_hook`], before it waits for the token, to
//!   its return). While one is, the dispatcher takes the backlog and serves it with its `scope`
//!   (the seed's "reroute into the hook's pump"). So every call whose serving had not begun when a
//!   hook of its plugin began is served with that hook's scope, whatever the timing; a call the
//!   pool had already begun finishes on the default callbacks.
//! - When the service itself hands the host to the pool (a dispatcher leaving calls published after
//!   its last look, a pool thread giving up its turn after `POOL_ROUNDS`), it uses the pool's
//!   [`Kicks`]: the service never reads or writes the host's doorbell, whose open file the host
//!   shares (it could make it blocking and fill it).
//!
//! # Locks (in order)
//! 1. `reader`: the read token (above). Held by a dispatcher across its hook round trip (waiting on
//!    this host only, bounded by the deadline), by a pool thread only while claiming (no I/O but
//!    non-blocking reads; a dead host is classified after the token is released).
//! 2. `exit`, `processes`, `backlog`: leaves, never held across I/O or callbacks.
//!
//! # Death
//! The [`Monitor`](crate::monitor::Monitor) watches the host's pidfd: when the host dies it reaps it,
//! shuts the channel down and wakes the ring's waiter, even if a grandchild of the plugin still holds
//! the other end. Every error path ends in [`Host::crash_cause`].
//!
//! # Rooms
//! This file: the handle, its transports and the hook round trip. `calls.rs`: serving the host's
//! API calls and the backlog. `death.rs`: killing, reaping and classifying the host's end.
//! `phase.rs`: which message is accepted in which phase. `outgoing.rs`: a hook encoded once per
//! dispatch. `spawn.rs`: starting the host process.

mod calls;
mod death;
mod outgoing;
mod phase;
pub(crate) mod spawn;

pub(crate) use calls::Backlog;
pub(crate) use outgoing::OutgoingHook;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use plughost_sys::{ChannelError, Pidfd, ProcessExit, Ring, Seqpacket};
use plughost_wire::{
    decode, encode, HookOutcome, HookSet, HostMsg, RequestId, ServiceMsg, MAX_FRAME,
};

use crate::callbacks::ServiceCallbacks;
use crate::error::CrashCause;
use crate::execute::ProcessTable;
use crate::kicks::Kicks;
use phase::{DuringHook, HookLane, HookSocket, Phase};

/// How long a host has, after its channel closed, to finish exiting before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// A dispatcher waiting for its hook's answer wakes at least this often to check the deadline.
pub(crate) const DEADLINE_TICK: Duration = Duration::from_millis(20);
/// Longest a send to a host that stopped reading may block.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_millis(500);
/// Most rounds one pool thread serves one host per wake-up (then it rings the doorbell for a later
/// turn), so a host flooding calls cannot hold a pool thread.
const POOL_ROUNDS: usize = 64;

/// The read token's state: buffers reused for every frame.
pub(crate) struct Reader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// A frame copied out of the ring.
    frame: Vec<u8>,
    /// The host's count of announced socket frames when the socket was last read.
    socket_seen: u32,
}

pub(crate) struct Host {
    pub name: Arc<str>,
    /// Unique per manager; the epoll keys.
    pub id: u64,
    pub hooks: HookSet,
    pidfd: Pidfd,
    channel: Seqpacket,
    ring: Ring,
    /// Asks the pool to look at this host (a service-private wake-up: the service never writes the
    /// host's doorbell).
    kicks: Arc<Kicks>,
    /// Whether the host's end of the channel closed, without reading the socket (`hangups.rs`).
    hangups: Arc<crate::hangups::Hangups>,
    /// Lock 1: the read token (see the module docs).
    reader: Mutex<Reader>,
    /// The pool saw the socket readable while it could not read it (a dispatcher reads it then).
    socket_pending: AtomicBool,
    /// Lock 2 (leaf): calls claimed by the pool and not begun yet, and the hooks in flight.
    pub(crate) backlog: Mutex<Backlog>,
    next_hook: AtomicU64,
    /// Lock 2 (leaf): how the host process ended, once reaped.
    exit: Mutex<Option<ProcessExit>>,
    /// Why the service killed it, if it did (takes precedence over the exit status).
    killed_for: OnceLock<CrashCause>,
    dead: AtomicBool,
    /// The service asked the host to exit (its exit is then expected, not a crash).
    stopping: AtomicBool,
    /// Lock 2 (leaf).
    pub(crate) processes: Mutex<ProcessTable>,
    stats: Arc<crate::stats::Stats>,
    pub started_at: Instant,
    /// Where the host's fault handler leaves its report, and the library to name its frames with.
    pub(crate) crash: Option<CrashMemo>,
}

/// A host's crash report: read once, after it died of a fault signal.
pub(crate) struct CrashMemo {
    pub memfd: OwnedFd,
    pub library: crate::symbolize::LibrarySource,
    /// The library's file name, for frames (`x.so+0x1234`).
    pub library_name: String,
    pub report: OnceLock<Option<Arc<crate::symbolize::CrashReport>>>,
}

thread_local! {
    static SEND_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A pool thread's copy of the ring frame it serves.
    static SLOT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slot indices set in a claim mask.
fn slots(mask: u32) -> impl Iterator<Item = usize> {
    (0..32).filter(move |i| mask & (1 << i) != 0)
}

/// A socket read failed: the host is gone, or was just killed for what it sent.
struct Gone;

/// A dispatcher's mark in the backlog (`hooks`), from its entry into `call_hook`. Dropped on a
/// path that did not hand the backlog over (an error, a panicking `scope` callback): the mark goes
/// and the pool gets a turn for whatever is left.
struct InFlight<'a> {
    host: &'a Host,
    finished: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let left = {
            let mut backlog = lock(&self.host.backlog);
            backlog.hooks -= 1;
            !backlog.is_empty()
        };
        if left {
            self.host.kicks.kick(self.host.id);
        }
    }
}

/// One hook in flight.
struct Dispatch<'a> {
    id: RequestId,
    hook: &'a OutgoingHook<'a>,
    scope: &'a dyn ServiceCallbacks,
    started: Instant,
    deadline: Duration,
}

/// Hands the ring back to the pool if a dispatch unwinds (a panicking `scope` callback): the owner
/// word goes back to the pool and the pool gets a turn, so the host's calls are not stranded.
struct HandBack<'a> {
    host: &'a Host,
    armed: bool,
}

impl Drop for HandBack<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.host.ring.set_dispatcher(false);
            self.host.kicks.kick(self.host.id);
        }
    }
}

/// What a dispatcher does with one frame of its host.
enum Step {
    Continue,
    Done(HookOutcome),
}

impl Host {
    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    pub fn pidfd(&self) -> &Pidfd {
        &self.pidfd
    }

    pub fn channel_fd(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }

    pub fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.ring.doorbell()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Sends one frame (any thread; a seqpacket send is atomic), waiting up to `SEND_TIMEOUT` for
    /// room in the host's queue.
    fn send(&self, msg: &ServiceMsg, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_with(msg, fds, false)
    }

    fn send_with(
        &self,
        msg: &ServiceMsg,
        fds: &[BorrowedFd<'_>],
        nonblocking: bool,
    ) -> Result<(), ChannelError> {
        SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if let Err(e) = encode(msg, &mut buf) {
                return Err(ChannelError::Io(std::io::Error::other(e.to_string())));
            }
            let sent = if nonblocking {
                self.channel.try_send(&buf, fds)
            } else {
                self.channel.send(&buf, fds)
            };
            // The host's main thread sleeps on the ring, not on the socket: it reads the socket
            // when woken (`Ring::wake_main_for_socket`).
            self.ring.wake_main_for_socket();
            sent
        })
    }

    /// Receives one frame from the socket with the read token held, without blocking. Every failure
    /// means the host is gone or has just been killed for what it sent (`killed_for` records why):
    /// the caller classifies it with [`Host::crash_cause`], after releasing the token if it is a pool
    /// thread (that may wait for the host to finish exiting).
    fn recv(&self, reader: &mut Reader) -> Result<Option<HostMsg>, Gone> {
        let Reader { buf, fds, .. } = reader;
        let refuse = |what: String| {
            self.kill_for(CrashCause::ProtocolViolation(what));
            Err(Gone)
        };
        let len = match self.channel.try_recv(buf, fds) {
            Ok(Some(len)) => len,
            Ok(None) | Err(ChannelError::TimedOut) => return Ok(None),
            Err(ChannelError::Disconnected) => {
                // A host whose own end closed (a plugin closed it) learns it from its read of the
                // socket, which its main thread makes when woken: it exits saying so at once,
                // instead of after the service's grace.
                self.ring.wake_main_for_socket();
                return Err(Gone);
            }
            Err(ChannelError::Empty) => return refuse("sent an empty frame".into()),
            Err(ChannelError::Oversized { len, limit }) => {
                return refuse(format!("sent a frame of {len} bytes (limit {limit})"))
            }
            Err(ChannelError::TooManyFds { .. }) => {
                fds.clear();
                return refuse("sent file descriptors".into());
            }
            Err(ChannelError::Io(e)) => return refuse(format!("channel error: {e}")),
        };
        if !fds.is_empty() {
            fds.clear();
            return refuse("sent file descriptors".into());
        }
        match decode::<HostMsg>(&buf[..len]) {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => refuse(format!("sent a malformed frame: {e}")),
        }
    }

    /// Decodes a frame copied out of the ring.
    fn decode_ring(&self, frame: &[u8]) -> Result<HostMsg, CrashCause> {
        decode::<HostMsg>(frame).map_err(|e| {
            self.violation(format!("sent a malformed frame through the call ring: {e}"))
        })
    }

    /// Dispatches one hook and waits for its answer, serving the plugin's calls meanwhile with `scope`.
    pub fn call_hook(
        &self,
        hook: &OutgoingHook<'_>,
        scope: &dyn ServiceCallbacks,
        deadline: Duration,
    ) -> Result<HookOutcome, CrashCause> {
        // From here on the pool leaves what it claimed to this dispatch (module docs). Declared
        // first, so dropped last (after the token is released).
        lock(&self.backlog).hooks += 1;
        let mut in_flight = InFlight {
            host: self,
            finished: false,
        };
        // Declared before the token, so dropped after it: if a `scope` callback panics, the ring
        // still goes back to the pool (and the pool gets a turn) once the token is released.
        let mut hand_back = HandBack {
            host: self,
            armed: false,
        };
        let mut reader = lock(&self.reader);
        if self.is_dead() {
            return Err(self.classify_dead(&mut reader));
        }
        let dispatch = Dispatch {
            id: RequestId(self.next_hook.fetch_add(1, Ordering::Relaxed)),
            hook,
            scope,
            started: Instant::now(),
            deadline,
        };
        hand_back.armed = true;
        self.ring.set_dispatcher(true);
        let result = self.hook_round_trip(&mut reader, &dispatch);
        hand_back.armed = false;
        self.ring.set_dispatcher(false);
        // Killed or gone: nothing of it is served any more.
        let outcome = result?;
        let seen = self.ring.seq();
        // Calls published after our last look, and whatever the pool left in the backlog: served
        // here while the scope is still ours (the pool would serve them with the default
        // callbacks). The mark goes only with the backlog empty, under its lock: a call the pool
        // puts there later is the pool's.
        loop {
            let claimed = self.ring.claim_requests();
            for index in slots(claimed) {
                // A violation here kills the host after its hook answered: the hook's outcome
                // stands, the crash is reported by the next operation.
                if self.serve_slot(index, &mut reader.frame, scope).is_err() {
                    return Ok(outcome);
                }
            }
            let work = {
                let mut backlog = lock(&self.backlog);
                let work = backlog.pop();
                if work.is_none() && claimed == 0 {
                    backlog.hooks -= 1;
                    in_flight.finished = true;
                    break;
                }
                work
            };
            if let Some(work) = work {
                if self.serve_work(work, &mut reader.frame, scope).is_err() {
                    return Ok(outcome);
                }
            }
        }
        // Release the token before waking the pool: a pool thread must find it free.
        drop(reader);
        if self.socket_pending.load(Ordering::SeqCst) || self.ring.seq() != seen {
            self.kicks.kick(self.id);
        }
        Ok(outcome)
    }

    /// One frame during a hook: its answer, a call to serve with `scope`, or a violation.
    fn during_hook(&self, msg: HostMsg, dispatch: &Dispatch<'_>) -> Result<Step, CrashCause> {
        let (id, kind) = (dispatch.id, dispatch.hook.kind());
        let msg = HookSocket(kind)
            .accept(msg)
            .map_err(|why| self.violation(why))?;
        match msg {
            DuringHook::Done(got, outcome) if got == id => Ok(Step::Done(outcome)),
            DuringHook::Call(id, call) => {
                self.serve_call(id, call, dispatch.scope);
                Ok(Step::Continue)
            }
            DuringHook::Blocked(syscall) => {
                self.kill_for(CrashCause::BlockedSyscall { syscall });
                Err(self.crash_cause())
            }
            DuringHook::Done(got, _) => Err(self.violation(format!(
                "answered hook request {} while {kind} was request {}",
                got.0, id.0
            ))),
        }
    }

    /// Whether the socket has frames to read: the host announced some since the last look, or the
    /// pool saw it readable. Consumes both signals (call with the token held).
    fn socket_announced(&self, reader: &mut Reader) -> bool {
        let frames = self.ring.socket_frames();
        let announced = frames != reader.socket_seen;
        reader.socket_seen = frames;
        // Read before the swap: no read-modify-write on the usual turn, where it is false.
        let pending = self.socket_pending.load(Ordering::SeqCst)
            && self.socket_pending.swap(false, Ordering::SeqCst);
        pending | announced
    }

    /// Reads every frame waiting on the socket during a hook, checking the deadline after each (a
    /// host that keeps the socket full cannot hold the dispatcher past it; the caller checked it
    /// just before, so an empty socket costs no clock read).
    fn drain_socket(
        &self,
        reader: &mut Reader,
        dispatch: &Dispatch<'_>,
    ) -> Result<Option<HookOutcome>, CrashCause> {
        loop {
            let Some(msg) = self.recv(reader).map_err(|Gone| self.crash_cause())? else {
                return Ok(None);
            };
            if let Step::Done(outcome) = self.during_hook(msg, dispatch)? {
                return Ok(Some(outcome));
            }
            if dispatch.started.elapsed() > dispatch.deadline {
                return Err(self.hung(dispatch));
            }
        }
    }

    fn hook_round_trip(
        &self,
        reader: &mut Reader,
        dispatch: &Dispatch<'_>,
    ) -> Result<HookOutcome, CrashCause> {
        let (id, kind) = (dispatch.id, dispatch.hook.kind());
        // The hook was encoded once for the whole dispatch; only the request id is this host's. It
        // goes down the ring's hook-request lane (a futex wake-up, no socket round trip), or on the
        // socket when it does not fit there.
        let sent = SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            match dispatch.hook.frame(id, &mut buf) {
                Ok(()) if self.ring.post_hook(&buf) => Ok(()),
                Ok(()) => {
                    let sent = self.channel.send(&buf, &[]);
                    self.ring.wake_main_for_socket();
                    sent
                }
                Err(e) => Err(ChannelError::Io(std::io::Error::other(e.to_string()))),
            }
        });
        if let Err(e) = sent {
            return Err(match e {
                ChannelError::Disconnected => self.crash_cause(),
                ChannelError::TimedOut => self.hung(dispatch),
                e => self.violation(format!("cannot send {kind}: {e}")),
            });
        }
        // The first turn starts with the whole deadline (the clock was read when the dispatch began).
        let mut left = dispatch.deadline;
        let mut first = true;
        loop {
            // The deadline comes first on every later turn: a host that keeps the ring busy cannot
            // hold the dispatcher past it.
            if !std::mem::take(&mut first) {
                match dispatch.deadline.checked_sub(dispatch.started.elapsed()) {
                    Some(rest) => left = rest,
                    None => return Err(self.hung(dispatch)),
                }
            }
            let seen = self.ring.seq();
            let dead = self.is_dead();
            if dead || self.socket_announced(reader) {
                if let Some(outcome) = self.drain_socket(reader, dispatch)? {
                    return Ok(outcome);
                }
            }
            if dead {
                return Err(self.crash_cause());
            }
            let answered = self
                .ring
                .take_answer(&mut reader.frame)
                .map_err(|e| self.violation(format!("sent {e}")))?;
            if answered {
                // Whatever the host sent on the socket before its answer belongs to this hook: an
                // honest host announced it before it answered, and a channel the plugin closed in
                // the hook shows in `hangups` (no `recvmsg` on a cold socket per hook otherwise).
                // Frames that plugin code wrote on the channel itself without a word are found by
                // the pool's watch of the socket, during the hook or after it.
                let announced = self.socket_announced(reader)
                    || self.is_dead()
                    || self.hangups.maybe_hung_up(self.id);
                if announced {
                    if let Some(outcome) = self.drain_socket(reader, dispatch)? {
                        return Ok(outcome);
                    }
                }
                // Only this hook's answer belongs on the lane: anything else is refused before it
                // has any effect.
                let (got, outcome) = HookLane(kind)
                    .accept(self.decode_ring(&reader.frame)?)
                    .map_err(|why| self.violation(why))?;
                return if got == id {
                    Ok(outcome)
                } else {
                    Err(self.violation(format!(
                        "answered hook request {} while {kind} was request {}",
                        got.0, id.0
                    )))
                };
            }
            let claimed = self.ring.claim_requests();
            for index in slots(claimed) {
                self.serve_slot(index, &mut reader.frame, dispatch.scope)?;
            }
            // Calls the pool claimed before this dispatch and had not begun: this hook's now.
            let mut rerouted = false;
            loop {
                // Not held while serving.
                let Some(work) = lock(&self.backlog).pop() else {
                    break;
                };
                rerouted = true;
                self.serve_work(work, &mut reader.frame, dispatch.scope)?;
            }
            if claimed == 0 && !rerouted {
                self.ring.wait(seen, left.min(DEADLINE_TICK));
            }
        }
    }

    /// Asks the host to exit (it does at once); kills it if it is still there after `grace`.
    pub fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        if !self.is_dead() {
            let _ = self.send(&ServiceMsg::Shutdown, &[]);
            if !self.pidfd.wait_exit_timeout(Some(grace)) {
                self.kill();
            }
        }
        self.kill();
        self.dead.store(true, Ordering::Release);
        self.reap();
    }
}

pub(crate) fn new_reader() -> Reader {
    Reader {
        buf: vec![0; MAX_FRAME],
        fds: Vec::new(),
        frame: Vec::with_capacity(plughost_sys::ring::SLOT_BYTES),
        socket_seen: 0,
    }
}
