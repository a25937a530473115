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

mod outgoing;
mod phase;
pub(crate) mod spawn;

pub(crate) use outgoing::OutgoingHook;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use plughost_sys::{ChannelError, Pidfd, ProcessExit, Ring, Seqpacket};
use plughost_wire::{
    decode, encode, ApiCall, ApiReply, HookOutcome, HookSet, HostMsg, RequestId, ServiceMsg,
    MAX_FRAME,
};

use crate::callbacks::{CallContext, ServiceCallbacks};
use crate::error::CrashCause;
use crate::execute::{self, ProcessTable};
use crate::kicks::Kicks;
use phase::{DuringHook, HookLane, HookSocket, Idle, Outside, Phase, RingSlot};

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

/// Calls a pool thread claimed but has not begun serving, and whether a hook is in flight (module
/// docs). Whoever takes a call out of it serves it: the pool with the default callbacks while
/// `hooks == 0`, a dispatcher with its scope otherwise.
#[derive(Default)]
pub(crate) struct Backlog {
    /// Dispatchers of this host inside [`Host::call_hook`] (waiting for the token or holding it).
    hooks: u32,
    /// Claimed ring slots, one bit each.
    slots: u32,
    /// Calls read from the socket.
    socket: std::collections::VecDeque<(RequestId, ApiCall)>,
}

/// One call taken out of the backlog.
enum Work {
    Slot(usize),
    Socket(RequestId, ApiCall),
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.slots == 0 && self.socket.is_empty()
    }

    fn pop(&mut self) -> Option<Work> {
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

/// A dispatcher's mark in the backlog (`hooks`), from its entry into `call_hook`. Dropped on a
/// path that did not hand the backlog over (an error, a panicking `scope` callback): the mark goes
/// and the pool gets a turn for whatever is left.
/// How often the monitor tries for a dead host's read token a pool thread holds (500 µs apart).
const DEATH_TOKEN_TRIES: u32 = 200;

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

    /// Kills the host and everything it spawned, recording why (first reason wins).
    pub fn kill_for(&self, cause: CrashCause) {
        if self.killed_for.set(cause.clone()).is_ok() {
            tracing::warn!(plugin = %self.name, pid = self.pid(), "killing host: {cause}");
        }
        self.kill();
    }

    /// SIGKILL to the host and its process group; in pid-namespace mode the namespace's init dies with
    /// it (parent-death signal) and the kernel kills the rest. Only while the host is unreaped: its pid
    /// (and so its group id) cannot be reused before that.
    pub fn kill(&self) {
        let exit = lock(&self.exit);
        if exit.is_none() {
            let _ = self.pidfd.kill();
            let _ = plughost_sys::process::kill_process_group(self.pid());
        }
        drop(exit);
        self.channel.shutdown();
        self.ring.wake_service();
    }

    /// Called by the monitor when the pidfd says the host exited: reap, then wake any dispatcher.
    pub fn on_exit(&self) {
        self.dead.store(true, Ordering::Release);
        // Whatever the plugin left behind in the fallback process group goes too (before reaping,
        // while the group id cannot have been reused).
        if lock(&self.exit).is_none() {
            let _ = plughost_sys::process::kill_process_group(self.pid());
        }
        let exit = self.reap();
        self.channel.shutdown();
        self.hangups.forget(&self.channel);
        self.ring.wake_service();
        if self.killed_for.get().is_none() && !self.stopping.load(Ordering::Acquire) {
            if let Some(exit) = exit {
                tracing::warn!(plugin = %self.name, pid = self.pid(), "host {exit}");
            }
        }
    }

    fn reap(&self) -> Option<ProcessExit> {
        let mut exit = lock(&self.exit);
        if exit.is_none() {
            if let Ok(Some(status)) = self.pidfd.try_wait() {
                *exit = Some(status);
            }
        }
        *exit
    }

    /// Why the host is gone (waiting briefly for it to finish exiting, killing it if it does not).
    pub fn crash_cause(&self) -> CrashCause {
        self.dead.store(true, Ordering::Release);
        if let Some(cause) = self.killed_for.get() {
            return cause.clone();
        }
        if !self.pidfd.wait_exit_timeout(Some(EXIT_GRACE)) {
            self.kill_for(CrashCause::ChannelClosed);
            return CrashCause::ChannelClosed;
        }
        match self.reap() {
            Some(exit) => self.located(exit),
            None => self
                .killed_for
                .get()
                .cloned()
                .unwrap_or(CrashCause::ChannelClosed),
        }
    }

    /// `Faulted` with the report when the host died of a fault signal and left one, else `Exited`.
    fn located(&self, exit: ProcessExit) -> CrashCause {
        let (ProcessExit::Signal { signal, .. }, Some(crash)) = (exit, &self.crash) else {
            return CrashCause::Exited(exit);
        };
        if !plughost_sys::crash_report::SIGNALS.contains(&signal) {
            return CrashCause::Exited(exit);
        }
        let report = crash.report.get_or_init(|| {
            crate::symbolize::read_report(&crash.memfd, &crash.library, &crash.library_name)
                .filter(|report| report.signal == signal)
                .map(Arc::new)
        });
        match report {
            Some(report) => CrashCause::Faulted {
                exit,
                report: report.clone(),
            },
            None => CrashCause::Exited(exit),
        }
    }

    fn violation(&self, what: String) -> CrashCause {
        self.kill_for(CrashCause::ProtocolViolation(what));
        self.crash_cause()
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

    /// Runs one API call for the host.
    fn run_call(
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
    fn serve_call(&self, id: RequestId, call: ApiCall, handler: &dyn ServiceCallbacks) {
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
    fn serve_slot(
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
        // The fd goes first, on the fd lane, so that it is queued when the caller sees the reply
        // (which names it by request id). Never blocking: a host that leaves its fds untaken until
        // the lane is full is killed, and the fd it did not take is closed here.
        if let Some(fd) = &fd {
            match self.ring.send_fd(id.0, fd.as_fd()) {
                Ok(()) => {}
                Err(e @ plughost_sys::RingError::FdsNotTaken) => {
                    return Err(self.violation(e.to_string()))
                }
                Err(_) => return Err(self.crash_cause()),
            }
        }
        SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            match encode(&ServiceMsg::Reply { id, reply }, &mut buf) {
                Ok(()) => self.ring.reply(index, &buf),
                // A reply is a few bytes; this cannot fail, but never leave the caller waiting.
                Err(_) => self.ring.reply(index, &[]),
            }
        });
        // Our copy of the fd is closed once the caller is on its way, not before.
        drop(fd);
        Ok(())
    }

    /// Serves one call taken out of the backlog.
    fn serve_work(
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

    /// Why a host the monitor saw die died (`None` while it lives). With `wait` false, also `None`
    /// while someone holds the read token: a dispatcher in a hook classifies the death itself, and a
    /// pool thread leaves it to the next dispatch.
    pub fn death_cause(&self, wait: bool) -> Option<CrashCause> {
        if !self.is_dead() {
            return None;
        }
        let mut reader = if wait {
            lock(&self.reader)
        } else {
            let mut tries = 0;
            loop {
                match self.reader.try_lock() {
                    Ok(reader) => break reader,
                    Err(TryLockError::Poisoned(e)) => break e.into_inner(),
                    Err(TryLockError::WouldBlock) => {
                        // A dispatcher in a hook of this host records the death itself. Otherwise
                        // a pool thread holds the token, only while it claims work (it saw the
                        // same death on the socket, say): wait for it, briefly, rather than leave
                        // the death to the next operation.
                        if lock(&self.backlog).hooks > 0 || tries >= DEATH_TOKEN_TRIES {
                            return None;
                        }
                        tries += 1;
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            }
        };
        Some(self.classify_dead(&mut reader))
    }

    /// With the read token of a dead host: what it sent before it died may say why (`Blocked`).
    fn classify_dead(&self, reader: &mut Reader) -> CrashCause {
        while let Ok(Some(msg)) = self.recv(reader) {
            if let HostMsg::Blocked { syscall } = msg {
                self.kill_for(CrashCause::BlockedSyscall { syscall });
            }
        }
        self.crash_cause()
    }

    fn hung(&self, dispatch: &Dispatch<'_>) -> CrashCause {
        self.kill_for(CrashCause::Hung {
            hook: dispatch.hook.kind(),
            after: dispatch.deadline,
        });
        self.crash_cause()
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
    fn serve_round(&self, default: &dyn ServiceCallbacks, frame: &mut Vec<u8>) -> bool {
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

    fn serve_idle_msg(&self, msg: HostMsg, default: &dyn ServiceCallbacks) {
        match Idle.accept(msg) {
            Ok(Outside::Call(id, call)) => self.serve_call(id, call, default),
            Ok(Outside::Blocked(syscall)) => self.kill_for(CrashCause::BlockedSyscall { syscall }),
            Err(why) => {
                self.violation(why);
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
