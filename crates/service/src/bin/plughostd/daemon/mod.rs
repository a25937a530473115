//! The daemon's state and operations: user sessions with their VM and distributions, container
//! sessions with their session VM, and the plugin API served against them.
//!
//! # Locks and order
//! 1. `UserSession::op` / `CSession::op`: serialise the *operations* on one session (start, stop,
//!    a distribution's start...). Held across hook dispatches; never taken by the plugin API.
//!    Only that session's own requests wait for it.
//! 2. `Daemon::manager` (read): held across a dispatch; written by shutdown and by a reload, which
//!    holds it only to swap the plugin list (`reconfigure_deferred`): the hosts it adds or removes
//!    start and stop after, under the read lock (`finish_reconfigure`), so no request waits for a
//!    host's start but one that dispatches to that very plugin.
//! 3. Leaves, never held across I/O with a host, a dispatch, a process start or any I/O on a file
//!    a user names: `Shared::sessions`, `Shared::csessions`, `Shared::store` (held across the
//!    atomic write of the daemon's own state file, which is root's, in the state directory),
//!    `Shared::pinned`, `Shared::running`, `Sandbox::scratch_held`, `Daemon::host_uids`,
//!    `AppWatch::watched`,
//!    `UserSession::{vm, distros, last_used}`, `CSession::{vm, mounts}`; and the control socket's
//!    admission counts (`server.rs`).
//!
//! A user's files are read only on `userfs`'s own short-lived threads, with that user's rights and
//! a deadline, before any lock is taken; what they said is cached in the registration. So a FIFO,
//! a slow FUSE file or `/dev/zero` in one user's rootfs cannot stall another user's request, a
//! reload or a shutdown.
//!
//! # Re-entrancy
//! The plugin API (`impl ServiceCallbacks for Shared`) touches only the leaves: a VM or distribution
//! is *published* in its leaf slot before the hook that announces it is dispatched and withdrawn
//! after the hook that says it is going away. So a call made during a hook, whether it is served on
//! the dispatching thread (the scope) or on a pool thread (a plugin thread the hook joins, or a
//! call after the hook), never waits for the operation lock that the dispatcher holds; and a call
//! after teardown began finds the slot empty and gets `PLUGHOST_E_NOT_RUNNING`. The scope and the
//! default callbacks are therefore the same object.
//!
//! # Rooms
//! This file holds the state (`Daemon`, `Shared`, the sessions) and the helpers every operation
//! uses. The operations live beside it, one module per concern: `sessions` (user sessions, their
//! VM, `exec`), `distros` (registration, start, stop, list), `csessions` (container sessions),
//! `admin` (plugins, plugin control, reload, metrics, shutdown, idle reaping), `callers` (the
//! plugin-host checks on a caller) and `plugin_api` (`impl ServiceCallbacks for Shared`).

mod admin;
mod callers;
mod csessions;
mod distros;
mod plugin_api;
mod sessions;

pub use admin::PluginAction;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use anyhow::Context;
use plughost::{
    ContainerSession, ContainerSessionId, Distribution, DistributionId, Isolation, ManagerConfig,
    PluginError, PluginManager, Session, SessionId,
};
use plughost_service::ErrorKind;

use self::callers::host_uids;
use crate::app_watch::AppWatch;
use crate::config::Config;
use crate::ids::IdRanges;
use crate::store::Store;
use crate::vm::{DistroProcess, Sandbox, Vm};

use libc::{EBADF, EINVAL, EIO, ENOENT};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A failed request: what the user sees.
#[derive(Debug)]
pub struct OpError {
    pub kind: ErrorKind,
    pub message: String,
}

impl OpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            message: message.into(),
        }
    }
}

impl From<PluginError> for OpError {
    fn from(e: PluginError) -> Self {
        OpError::new(ErrorKind::Plugin, e.to_string())
    }
}

pub type OpResult<T> = Result<T, OpError>;

fn limit_reached(message: String) -> OpError {
    OpError::new(ErrorKind::LimitReached, message)
}

/// A VM that could not start: a per-user limit, or the sandbox machinery.
fn sandbox_error(error: crate::vm::SandboxError) -> OpError {
    let kind = match error {
        crate::vm::SandboxError::ScratchLimit { .. } => ErrorKind::LimitReached,
        crate::vm::SandboxError::Spawn { .. } | crate::vm::SandboxError::Start { .. } => {
            ErrorKind::Internal
        }
    };
    OpError::new(kind, error.to_string())
}

/// One of a uid's concurrent processes (`limits.processes`), given back when dropped.
struct ProcessSlot<'a> {
    shared: &'a Shared,
    uid: u32,
}

impl<'a> ProcessSlot<'a> {
    fn take(shared: &'a Shared, uid: u32) -> OpResult<ProcessSlot<'a>> {
        let limit = shared.config.limits.processes;
        let mut running = lock(&shared.running);
        let count = running.entry(uid).or_insert(0);
        if uid != 0 && *count >= limit {
            return Err(limit_reached(format!(
                "uid {uid} already runs {count} programs through plughostd: the limit is {limit}"
            )));
        }
        *count += 1;
        Ok(ProcessSlot { shared, uid })
    }
}

impl Drop for ProcessSlot<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.shared.running);
        if let Some(count) = running.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.uid);
            }
        }
    }
}

/// Who is calling, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A running distribution of a user session.
pub struct RunningDistro {
    pub info: Distribution,
    pub process: DistroProcess,
}

/// One user's session: created on the user's first request, kept for the daemon's life.
pub struct UserSession {
    pub info: Session,
    /// Lock order 1.
    op: Mutex<()>,
    /// Leaf: the published VM.
    vm: Mutex<Option<Arc<Vm>>>,
    /// Leaf: published running distributions, by id.
    distros: Mutex<HashMap<DistributionId, Arc<RunningDistro>>>,
    /// Leaf.
    last_used: Mutex<Instant>,
    /// Processes a client runs in the VM right now (the idle timer waits for them).
    busy: AtomicUsize,
}

impl UserSession {
    fn vm(&self) -> Option<Arc<Vm>> {
        lock(&self.vm).clone()
    }

    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }
}

/// A folder a plugin mounted in a container session (re-applied when its session VM is recreated).
#[derive(Clone)]
struct CMount {
    host: PathBuf,
    mountpoint: String,
    read_only: bool,
}

/// A container session.
pub struct CSession {
    pub info: ContainerSession,
    owner: u32,
    /// Lock order 1.
    op: Mutex<()>,
    /// Leaf: the published session VM.
    vm: Mutex<Option<Arc<Vm>>>,
    /// Leaf.
    mounts: Mutex<Vec<CMount>>,
    stopping: AtomicBool,
}

#[derive(Default)]
struct Sessions {
    by_uid: HashMap<u32, Arc<UserSession>>,
    by_id: HashMap<SessionId, Arc<UserSession>>,
}

#[derive(Default)]
struct CSessions {
    by_id: HashMap<ContainerSessionId, Arc<CSession>>,
    next: u32,
}

/// Everything the plugin API needs (the manager's default callbacks and every dispatch's scope).
pub struct Shared {
    pub config: Config,
    sandbox: Option<Arc<Sandbox>>,
    /// Why VMs are unavailable (not root, namespaces refused).
    missing: Option<String>,
    sessions: Mutex<Sessions>,
    csessions: Mutex<CSessions>,
    store: Mutex<Store>,
    /// Leaf: the host id ranges of the VMs' user namespaces, by user.
    id_ranges: Mutex<IdRanges>,
    /// Leaf: each registered rootfs, pinned by a directory fd opened as its owner (by id). A
    /// later swap of the path for a symlink changes nothing; after a restart it is re-opened as
    /// the owner on first use.
    pinned: Mutex<HashMap<String, Arc<OwnedFd>>>,
    /// Leaf: processes (`exec`, `csession run`) each uid runs through the control socket now.
    running: Mutex<HashMap<u32, usize>>,
    shutting_down: Arc<AtomicBool>,
}

/// The daemon.
pub struct Daemon {
    pub shared: Arc<Shared>,
    /// Lock order 2: read for every dispatch, written once by shutdown.
    manager: RwLock<Option<PluginManager>>,
    /// Leaf: the uids plugin hosts run as (other than root), by plugin name; set at start and by
    /// each reload.
    host_uids: Mutex<Vec<(u32, String)>>,
    /// The container sessions' applications (its lock is a leaf).
    apps: Arc<AppWatch>,
}

/// `(name, gid)` of `uid` from `/etc/passwd`; a uid with no entry is named `uid<N>`.
fn passwd_entry(uid: u32) -> Option<(String, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[2].parse() == Ok(uid) {
            Some((fields[0].to_owned(), fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

impl Daemon {
    pub fn new(
        config: Config,
        store: Store,
        id_ranges: IdRanges,
        sandbox: Option<Arc<Sandbox>>,
        missing: Option<String>,
    ) -> anyhow::Result<Arc<Daemon>> {
        let shared = Arc::new(Shared {
            config: config.clone(),
            sandbox,
            missing,
            sessions: Mutex::new(Sessions::default()),
            csessions: Mutex::new(CSessions {
                by_id: HashMap::new(),
                next: 1,
            }),
            store: Mutex::new(store),
            id_ranges: Mutex::new(id_ranges),
            pinned: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            shutting_down: Arc::new(AtomicBool::new(false)),
        });
        let plugins = config.plugins.iter().map(|p| p.config.clone()).collect();
        let mut manager_config = ManagerConfig::new(plugins);
        manager_config.host_binary = config.host_binary.clone();
        manager_config.trust = config.trust.clone();
        manager_config.deadlines = config.deadlines;
        manager_config.cgroups = config.cgroups.clone();
        let manager = PluginManager::new(manager_config, shared.clone())?;
        for error in manager.load_errors() {
            tracing::error!("{error}");
        }
        let apps = Arc::new(AppWatch::new().context("create the application watcher")?);
        let daemon = Arc::new(Daemon {
            shared,
            manager: RwLock::new(Some(manager)),
            host_uids: Mutex::new(host_uids(&config)),
            apps: apps.clone(),
        });
        let weak = Arc::downgrade(&daemon);
        std::thread::Builder::new()
            .name("plughostd-apps".into())
            .spawn(move || {
                apps.run(|id, pid| match weak.upgrade() {
                    Some(daemon) => {
                        daemon.application_exited(ContainerSessionId(id), pid);
                        true
                    }
                    None => false,
                })
            })
            .context("start the application watcher thread")?;
        Ok(daemon)
    }

    fn with_manager<R>(&self, f: impl FnOnce(&PluginManager) -> R) -> OpResult<R> {
        let guard = self.manager.read().unwrap_or_else(|e| e.into_inner());
        match &*guard {
            Some(manager) => Ok(f(manager)),
            None => Err(OpError::new(
                ErrorKind::ShuttingDown,
                "plughostd is shutting down",
            )),
        }
    }

    fn sandbox(&self) -> OpResult<&Arc<Sandbox>> {
        self.shared.sandbox.as_ref().ok_or_else(|| {
            OpError::new(
                ErrorKind::Unsupported,
                format!(
                    "this needs Linux namespaces (CAP_SYS_ADMIN), which plughostd does not have: {}",
                    self.shared.missing.as_deref().unwrap_or("unavailable")
                ),
            )
        })
    }

    fn check_running(&self) -> OpResult<()> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(OpError::new(
                ErrorKind::ShuttingDown,
                "plughostd is shutting down",
            ));
        }
        Ok(())
    }
}

impl Shared {
    /// The ids of a VM of user `uid` (its range recorded on first use).
    fn vm_ids(&self, uid: u32, gid: u32) -> OpResult<crate::ids::VmIds> {
        lock(&self.id_ranges)
            .for_user(uid, gid)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))
    }
}
