//! The service's handle on one host process (crosvm's `ProxyDevice`): sends hooks, serves the
//! plugin's calls, and classifies how the host ended.
//!
//! # Who reads the channel
//! Exactly one thread at a time receives from a host's channel: the holder of [`Host::reader`].
//! - A thread dispatching a hook holds it for the whole round trip: it sends the hook, then receives
//!   itself (no reader thread, no hand-off: the reply wakes the dispatcher directly) and serves every
//!   API call that arrives meanwhile, on its own thread, with the dispatch's `scope` callbacks.
//! - When no hook is in flight, the socket is armed (`EPOLLONESHOT`) in the [`Pool`]'s epoll; a pool
//!   thread that sees it readable `try_lock`s the reader, takes one frame, re-arms, and serves it with
//!   the default callbacks. A pool thread never waits for the reader.
//!
//! # Locks (in order)
//! 1. `reader`: the read token (above). Held across blocking `recv` on this host's channel only, by
//!    design: everything the host sends while a hook is in flight belongs to that dispatch.
//! 2. `exit`, `processes`: leaves, never held across I/O.
//!
//! # Death
//! The [`Monitor`](crate::monitor::Monitor) watches the host's pidfd: when the host dies it reaps it and
//! shuts the channel down, which wakes a dispatcher blocked in `recv` even if a grandchild of the plugin
//! still holds the other end. Every error path ends in [`Host::crash_cause`].

pub(crate) mod execute;
pub(crate) mod spawn;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use plughost_sys::{ChannelError, Pidfd, ProcessExit, Seqpacket};
use plughost_wire::{
    decode, encode, ApiCall, Hook, HookSet, HostMsg, RequestId, ServiceMsg, MAX_FRAME,
};

use crate::callbacks::{CallContext, ServiceCallbacks};
use crate::error::CrashCause;
use crate::pool::Pool;
use execute::ProcessTable;
use plughost_host::HookOutcome;

/// How long a host has, after its channel closed, to finish exiting before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// A dispatcher blocked in `recv` wakes this often to check its hook's deadline (`SO_RCVTIMEO`: no
/// cost while frames flow).
pub(crate) const DEADLINE_TICK: Duration = Duration::from_millis(20);
/// Longest a send to a host that stopped reading may block.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// The read token's state: buffers reused for every frame.
pub(crate) struct Reader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

pub(crate) struct Host {
    pub name: Arc<str>,
    /// Unique per manager; the epoll key.
    pub id: u64,
    pub hooks: HookSet,
    pidfd: Pidfd,
    channel: Seqpacket,
    /// Lock 1: the read token (see the module docs).
    reader: Mutex<Reader>,
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
    pool: Arc<Pool>,
    stats: Arc<crate::stats::Stats>,
    pub started_at: Instant,
}

thread_local! {
    static SEND_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn host_msg_name(msg: &HostMsg) -> &'static str {
    match msg {
        HostMsg::Hello(_) => "Hello",
        HostMsg::Loaded { .. } => "Loaded",
        HostMsg::LoadFailed(_) => "LoadFailed",
        HostMsg::HookDone { .. } => "HookDone",
        HostMsg::Call { .. } => "Call",
        HostMsg::Blocked { .. } => "Blocked",
    }
}

impl Host {
    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    pub fn pidfd(&self) -> &Pidfd {
        &self.pidfd
    }

    pub fn channel_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.channel.as_fd()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Sends one frame (any thread; a seqpacket send is atomic), waiting up to `SEND_TIMEOUT` for
    /// room in the host's queue.
    fn send(&self, msg: &ServiceMsg, fd: Option<&OwnedFd>) -> Result<(), ChannelError> {
        self.send_with(msg, fd, false)
    }

    fn send_with(
        &self,
        msg: &ServiceMsg,
        fd: Option<&OwnedFd>,
        nonblocking: bool,
    ) -> Result<(), ChannelError> {
        SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if let Err(e) = encode(msg, &mut buf) {
                return Err(ChannelError::Io(std::io::Error::other(e.to_string())));
            }
            let fds: &[std::os::fd::BorrowedFd<'_>] = match fd {
                Some(fd) => &[fd.as_fd()],
                None => &[],
            };
            if nonblocking {
                self.channel.try_send(&buf, fds)
            } else {
                self.channel.send(&buf, fds)
            }
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
            Some(exit) => CrashCause::Exited(exit),
            None => self
                .killed_for
                .get()
                .cloned()
                .unwrap_or(CrashCause::ChannelClosed),
        }
    }

    fn violation(&self, what: String) -> CrashCause {
        self.kill_for(CrashCause::ProtocolViolation(what));
        self.crash_cause()
    }

    /// Receives one frame with the read token held. Every failure kills and classifies the host.
    fn recv(&self, reader: &mut Reader, blocking: bool) -> Result<Option<HostMsg>, CrashCause> {
        let Reader { buf, fds } = reader;
        let received = if blocking {
            self.channel.recv(buf, fds).map(Some)
        } else {
            self.channel.try_recv(buf, fds)
        };
        let len = match received {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(ChannelError::Disconnected) => return Err(self.crash_cause()),
            Err(ChannelError::TimedOut) => return Ok(None),
            Err(ChannelError::Empty) => return Err(self.violation("sent an empty frame".into())),
            Err(ChannelError::Oversized { len, limit }) => {
                return Err(self.violation(format!("sent a frame of {len} bytes (limit {limit})")))
            }
            Err(ChannelError::TooManyFds { .. }) => {
                fds.clear();
                return Err(self.violation("sent file descriptors".into()));
            }
            Err(ChannelError::Io(e)) => return Err(self.violation(format!("channel error: {e}"))),
        };
        if !fds.is_empty() {
            fds.clear();
            return Err(self.violation("sent file descriptors".into()));
        }
        match decode::<HostMsg>(&buf[..len]) {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => Err(self.violation(format!("sent a malformed frame: {e}"))),
        }
    }

    /// Runs one API call and sends the reply.
    fn serve_call(&self, id: RequestId, call: ApiCall, handler: &dyn ServiceCallbacks) {
        let name = call.name();
        let ctx = CallContext { plugin: &self.name };
        let (reply, fd) = execute::execute(ctx, call, handler, &self.processes);
        self.stats.api_calls.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(plugin = %self.name, call = name, ?reply, "api call");
        // A host's threads read their replies, so a full queue means it keeps calling without
        // reading: wait at most SEND_TIMEOUT for room (never longer: that holds a service thread).
        let msg = ServiceMsg::Reply { id, reply };
        let sent = match self.send_with(&msg, fd.as_ref(), true) {
            Err(ChannelError::TimedOut) => self.send(&msg, fd.as_ref()),
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

    /// Dispatches one hook and waits for its answer, serving the plugin's calls meanwhile with `scope`.
    pub fn call_hook(
        &self,
        hook: &Hook,
        scope: &dyn ServiceCallbacks,
        deadline: Duration,
    ) -> Result<HookOutcome, CrashCause> {
        let mut reader = lock(&self.reader);
        if self.is_dead() {
            return Err(self.crash_cause());
        }
        self.pool.disarm(self);
        let id = RequestId(self.next_hook.fetch_add(1, Ordering::Relaxed));
        let result = self.hook_round_trip(&mut reader, id, hook, scope, deadline);
        // Release the token before re-arming: a pool thread woken by the re-arm (a call queued
        // meanwhile) must find the token free, or the event would be dropped.
        drop(reader);
        if result.is_ok() {
            self.pool.arm(self);
        }
        result
    }

    fn hook_round_trip(
        &self,
        reader: &mut Reader,
        id: RequestId,
        hook: &Hook,
        scope: &dyn ServiceCallbacks,
        deadline: Duration,
    ) -> Result<HookOutcome, CrashCause> {
        let started = Instant::now();
        let hung = |host: &Host| {
            host.kill_for(CrashCause::Hung {
                hook: hook.kind(),
                after: deadline,
            });
            host.crash_cause()
        };
        let msg = ServiceMsg::Hook {
            id,
            hook: hook.clone(),
        };
        if let Err(e) = self.send(&msg, None) {
            return Err(match e {
                ChannelError::Disconnected => self.crash_cause(),
                ChannelError::TimedOut => hung(self),
                e => self.violation(format!("cannot send {}: {e}", hook.kind())),
            });
        }
        loop {
            if started.elapsed() > deadline {
                return Err(hung(self));
            }
            match self.recv(reader, true)? {
                Some(HostMsg::HookDone {
                    id: got,
                    status,
                    message,
                }) if got == id => return Ok(HookOutcome { status, message }),
                Some(HostMsg::Call { id, call }) => self.serve_call(id, call, scope),
                Some(HostMsg::Blocked { syscall }) => {
                    self.kill_for(CrashCause::BlockedSyscall { syscall });
                    return Err(self.crash_cause());
                }
                Some(HostMsg::HookDone { id: got, .. }) => {
                    return Err(self.violation(format!(
                        "answered hook request {} while {} was request {}",
                        got.0,
                        hook.kind(),
                        id.0
                    )))
                }
                Some(other) => {
                    return Err(self.violation(format!(
                        "sent {} during {}",
                        host_msg_name(&other),
                        hook.kind()
                    )))
                }
                None => {} // a deadline tick
            }
        }
    }

    /// A pool thread saw the channel readable with no hook in flight (or a dispatcher about to start).
    pub fn serve_idle(&self, default: &dyn ServiceCallbacks) {
        let msg = {
            let Ok(mut reader) = self.reader.try_lock() else {
                // A dispatcher holds the token; it re-arms when it is done.
                return;
            };
            match self.recv(&mut reader, false) {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    drop(reader);
                    self.pool.arm(self);
                    return;
                }
                // Dead or killed: the monitor and the next dispatcher report it.
                Err(_) => return,
            }
        };
        self.pool.arm(self);
        match msg {
            HostMsg::Call { id, call } => self.serve_call(id, call, default),
            HostMsg::Blocked { syscall } => self.kill_for(CrashCause::BlockedSyscall { syscall }),
            HostMsg::HookDone { id, .. } => {
                self.violation(format!(
                    "answered hook request {} that was never sent",
                    id.0
                ));
            }
            other => {
                self.violation(format!("sent {} outside a hook", host_msg_name(&other)));
            }
        }
    }

    /// Asks the host to exit (it does at once); kills it if it is still there after `grace`.
    pub fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        if !self.is_dead() {
            let _ = self.send(&ServiceMsg::Shutdown, None);
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
    }
}
