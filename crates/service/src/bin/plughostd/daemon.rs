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
//!    `Shared::pinned`, `Shared::running`, `Daemon::host_uids`, `AppWatch::watched`,
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

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use plughost::{
    CallContext, ContainerProcess, ContainerSession, CreateProcessError, Distribution, Isolation,
    ManagerConfig, OfflineDistribution, PluginError, PluginManager, ProcessStream,
    ServiceCallbacks, Session, Status, VmSettings,
};
use plughost_service::{uuid_hex, DistroInfo, ErrorKind, PluginRow, VmInfo};

use crate::app_watch::{App, AppWatch};
use crate::config::Config;
use crate::ids::IdRanges;
use crate::store::{new_uuid, os_release, Registered, Store};
use crate::userfs::{self, open_path_as, UserCred};
use crate::vm::{exit_code, wait_or_hangup, DistroProcess, ExecError, ExecSpec, Sandbox, Vm};

/// The overflow user, `nobody`.
const NOBODY: u32 = 65534;
const ENOENT: i32 = 2;
const EBADF: i32 = 9;
const EINVAL: i32 = 22;
const EIO: i32 = 5;

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
    distros: Mutex<HashMap<[u8; 16], Arc<RunningDistro>>>,
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
    by_id: HashMap<u32, Arc<UserSession>>,
}

#[derive(Default)]
struct CSessions {
    by_id: HashMap<u32, Arc<CSession>>,
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

/// The uids the configured plugin hosts run as, root excepted (a host that runs as the service
/// is recognised by its cgroup or its ancestry instead).
fn host_uids(config: &Config) -> Vec<(u32, String)> {
    config
        .plugins
        .iter()
        .filter(|p| p.config.isolation == Isolation::Process)
        .filter_map(|p| match p.config.user.resolve() {
            Ok(Some((uid, _))) if uid != 0 => Some((uid, p.name.clone())),
            _ => None,
        })
        .collect()
}

/// Why process `pid` is (a descendant of) a plugin host, if it is: it lives in a host's cgroup
/// (`host-<plughostd's pid>-...`, which its descendants cannot leave), or one of its ancestors
/// runs the host binary.
fn host_process(pid: u32) -> Option<String> {
    let own = std::process::id();
    let marker = format!("host-{own}-");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    for line in cgroup.lines().take(64) {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        if path.split('/').any(|c| c.starts_with(&marker)) {
            return Some(format!("process {pid} is in a plugin host's cgroup"));
        }
    }
    let mut current = pid;
    for _ in 0..64 {
        if current <= 1 || current == own {
            return None;
        }
        let exe = std::fs::read_link(format!("/proc/{current}/exe")).ok();
        if exe
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "plughost-host")
        {
            return Some(format!("process {pid} descends from plugin host {current}"));
        }
        let stat = std::fs::read_to_string(format!("/proc/{current}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; the last ')' ends it.
        let after = &stat[stat.rfind(')')? + 1..];
        current = after.split_whitespace().nth(1)?.parse().ok()?;
    }
    None
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
                        daemon.application_exited(id, pid);
                        true
                    }
                    None => false,
                })
            })
            .context("start the application watcher thread")?;
        Ok(daemon)
    }

    /// Why `caller` is a plugin host (or one of its processes), if it is: such a caller is refused
    /// every control request (a program it ran through `exec` would leave the host's seccomp,
    /// `no_new_privs` and Landlock behind).
    ///
    /// The strongest sign is the pid namespace: every process of a host (double-forked and
    /// `setsid()`ed ones included) lives in the one its outer process made. A host's dedicated
    /// user is refused too; `nobody` is not refused by uid alone (ordinary unprivileged clients
    /// run as it), only by the process checks.
    pub fn plugin_host(&self, caller: Caller) -> Option<String> {
        if caller.uid != 0 && caller.uid != NOBODY {
            let uids = lock(&self.host_uids);
            if let Some((_, plugin)) = uids.iter().find(|(uid, _)| *uid == caller.uid) {
                return Some(format!(
                    "uid {} is the user of plugin '{plugin}'",
                    caller.uid
                ));
            }
        }
        if let Some(why) = self.in_a_hosts_pid_namespace(caller.pid) {
            return Some(why);
        }
        host_process(caller.pid)
    }

    /// Whether process `pid` lives in the pid namespace of one of our plugin hosts.
    fn in_a_hosts_pid_namespace(&self, pid: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let ns = |path: String| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let peer = ns(format!("/proc/{pid}/ns/pid"))?;
        if Some(peer) == ns("/proc/self/ns/pid".into()) {
            return None;
        }
        let hosts = self
            .with_manager(|m| {
                m.plugins()
                    .into_iter()
                    .filter_map(|p| Some((p.name, p.host_pid?)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        hosts.into_iter().find_map(|(plugin, host)| {
            (ns(format!("/proc/{host}/ns/pid_for_children")) == Some(peer))
                .then(|| format!("process {pid} lives in the pid namespace of plugin '{plugin}'"))
        })
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

    /// The caller's session, created on first use.
    pub fn session_for(&self, caller: Caller) -> Arc<UserSession> {
        if let Some(s) = lock(&self.shared.sessions).by_uid.get(&caller.uid) {
            return s.clone();
        }
        // Read before the lock: no file I/O under a lock every user's request takes.
        let (user_name, gid) =
            passwd_entry(caller.uid).unwrap_or_else(|| (format!("uid{}", caller.uid), caller.gid));
        let mut sessions = lock(&self.shared.sessions);
        if let Some(s) = sessions.by_uid.get(&caller.uid) {
            return s.clone();
        }
        // Ids are opaque cookies, not uids (PLUGIN_ABI.md, "Types"): number them from 1.
        let id = sessions.by_id.len() as u32 + 1;
        let session = Arc::new(UserSession {
            info: Session {
                id,
                uid: caller.uid,
                gid,
                user_name,
            },
            op: Mutex::new(()),
            vm: Mutex::new(None),
            distros: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
            busy: AtomicUsize::new(0),
        });
        tracing::info!(session = id, uid = caller.uid, user = %session.info.user_name, "user session created");
        sessions.by_uid.insert(caller.uid, session.clone());
        sessions.by_id.insert(id, session.clone());
        session
    }

    fn vm_info(&self, s: &UserSession) -> VmInfo {
        let vm = s.vm().filter(|vm| vm.is_alive());
        VmInfo {
            session_id: s.info.id,
            user: s.info.user_name.clone(),
            running: vm.is_some(),
            init_pid: vm.map(|vm| vm.init_pid()),
            idle_timeout_secs: self.shared.config.idle_timeout_secs,
        }
    }

    // ---- the user's VM ----

    /// Starts the session's VM unless it runs. The caller holds `s.op`.
    fn ensure_vm(&self, s: &UserSession) -> OpResult<Arc<Vm>> {
        if let Some(vm) = s.vm() {
            if vm.is_alive() {
                return Ok(vm);
            }
            tracing::warn!(session = s.info.id, "the VM died on its own; cleaning up");
            self.stop_vm_locked(s);
        }
        self.check_running()?;
        let sandbox = self.sandbox()?;
        let label = format!("vm:{}", s.info.user_name);
        let ids = self.shared.vm_ids(s.info.uid, s.info.gid)?;
        let vm = Vm::start(sandbox, &label, "plughost-vm", ids)
            .map(Arc::new)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        *lock(&s.vm) = Some(vm.clone());
        let result =
            self.with_manager(|m| m.on_vm_started(&s.info, &VmSettings::default(), &*self.shared))?;
        if let Err(error) = result {
            // The manager already delivered on_vm_stopping to every plugin (PLUGIN_ABI.md, "Hooks").
            lock(&s.vm).take();
            vm.kill();
            return Err(error.into());
        }
        s.touch();
        Ok(vm)
    }

    /// Stops the session's distributions, then its VM, with their hooks. The caller holds `s.op`.
    fn stop_vm_locked(&self, s: &UserSession) -> bool {
        let distros: Vec<Arc<RunningDistro>> = lock(&s.distros).values().cloned().collect();
        for d in distros {
            self.stop_distro_locked(s, &d);
        }
        let Some(vm) = s.vm() else {
            return false;
        };
        let _ = self.with_manager(|m| m.on_vm_stopping(&s.info, &*self.shared));
        lock(&s.vm).take();
        vm.kill();
        true
    }

    pub fn vm_start(&self, caller: Caller) -> OpResult<VmInfo> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        self.ensure_vm(&s)?;
        Ok(self.vm_info(&s))
    }

    pub fn vm_stop(&self, caller: Caller) -> OpResult<String> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        if self.stop_vm_locked(&s) {
            Ok("VM stopped".into())
        } else {
            Err(OpError::new(ErrorKind::NotRunning, "the VM is not running"))
        }
    }

    pub fn vm_status(&self, caller: Caller) -> VmInfo {
        let s = self.session_for(caller);
        self.vm_info(&s)
    }

    // ---- distributions ----

    /// What `distro list` shows: the registration, with what os-release said at registration (a
    /// user's file is never read again for a listing).
    fn distro_info(&self, s: &UserSession, r: &Registered) -> DistroInfo {
        let running = lock(&s.distros)
            .get(&r.id_bytes())
            .cloned()
            .filter(|d| d.process.is_alive());
        DistroInfo {
            id: plughost_service::uuid_text(&r.id_bytes()),
            name: r.name.clone(),
            rootfs: r.rootfs.clone(),
            package: r.package.clone(),
            flavor: r.flavor.clone(),
            version: r.version.clone(),
            running: running.is_some(),
            init_pid: running.as_ref().map(|d| d.info.init_pid),
            pid_namespace: running.as_ref().map(|d| d.info.pid_namespace),
        }
    }

    fn offline(r: &Registered) -> OfflineDistribution {
        OfflineDistribution {
            id: r.id_bytes(),
            name: r.name.clone(),
            package: r.package.clone(),
            flavor: r.flavor.clone(),
            version: r.version.clone(),
        }
    }

    /// The registration's rootfs as pinned at registration; after a daemon restart, opened again
    /// as its owner (`userfs`), never as root.
    #[allow(dead_code)] // for the distribution start (issue 12 point 3, its start half)
    pub fn pinned_rootfs(&self, entry: &Registered) -> OpResult<Arc<OwnedFd>> {
        if let Some(fd) = lock(&self.shared.pinned).get(&entry.id) {
            return Ok(fd.clone());
        }
        let gid = passwd_entry(entry.owner).map_or(entry.owner, |(_, gid)| gid);
        let user = UserCred::of(entry.owner, gid);
        let fd = userfs::open_dir_as(&user, &entry.rootfs)
            .map(Arc::new)
            .map_err(|e| {
                OpError::new(
                    ErrorKind::Invalid,
                    format!("rootfs {}: {e}", entry.rootfs.display()),
                )
            })?;
        Ok(lock(&self.shared.pinned)
            .entry(entry.id.clone())
            .or_insert(fd)
            .clone())
    }

    fn find_registered(&self, owner: u32, name: &str) -> OpResult<Registered> {
        lock(&self.shared.store).find(owner, name).ok_or_else(|| {
            OpError::new(
                ErrorKind::NotFound,
                format!("no distribution named '{name}'"),
            )
        })
    }

    /// Registers a rootfs. Every file of it is read as the caller (`userfs`): the directory is
    /// opened and pinned, its os-release read bounded and cached. No lock is held while that I/O
    /// runs, nor across the hook.
    pub fn distro_register(
        &self,
        caller: Caller,
        name: &str,
        rootfs: &Path,
        package: Option<&str>,
    ) -> OpResult<DistroInfo> {
        self.check_running()?;
        let s = self.session_for(caller);
        let limits = &self.shared.config.limits;
        let registered = lock(&self.shared.store).of_owner(caller.uid).len();
        if caller.uid != 0 && registered >= limits.distributions {
            return Err(limit_reached(format!(
                "{} distributions are registered for uid {}: the limit is {} (unregister one first)",
                registered, caller.uid, limits.distributions
            )));
        }
        let user = UserCred::of(caller.uid, caller.gid);
        let root = userfs::open_dir_as(&user, rootfs).map_err(|e| {
            OpError::new(
                ErrorKind::Invalid,
                format!("rootfs {}: {e}", rootfs.display()),
            )
        })?;
        // The directory as the kernel resolved it for the caller (for display and for reopening
        // after a restart, as the owner again).
        let resolved = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&root)
        ))
        .map_err(|e| {
            OpError::new(
                ErrorKind::Internal,
                format!(
                    "rootfs {}: cannot name the opened directory: {e}",
                    rootfs.display()
                ),
            )
        })?;
        let (flavor, version) = os_release(&user, &root).map_err(|reason| {
            OpError::new(
                ErrorKind::Invalid,
                format!("rootfs {}: {reason}", resolved.display()),
            )
        })?;
        let id = new_uuid()
            .map_err(|e| OpError::new(ErrorKind::Internal, format!("cannot make an id: {e}")))?;
        let entry = Registered {
            id: uuid_hex(&id),
            name: name.to_owned(),
            rootfs: resolved,
            package: package.unwrap_or_default().to_owned(),
            owner: caller.uid,
            flavor,
            version,
        };
        {
            let mut store = lock(&self.shared.store);
            if store.find(caller.uid, name).is_some() {
                return Err(OpError::new(
                    ErrorKind::AlreadyExists,
                    format!("a distribution named '{name}' is already registered"),
                ));
            }
            if caller.uid != 0 {
                let count = store.of_owner(caller.uid).len();
                if count >= limits.distributions {
                    return Err(limit_reached(format!(
                        "{count} distributions are registered for uid {}: the limit is {} (unregister one first)",
                        caller.uid, limits.distributions
                    )));
                }
                let bytes = store.bytes_of_owner(caller.uid) + Store::entry_bytes(&entry);
                if bytes > limits.state_bytes {
                    return Err(limit_reached(format!(
                        "the registrations of uid {} would take {bytes} bytes of state: the limit is {}",
                        caller.uid, limits.state_bytes
                    )));
                }
            }
            store
                .add(entry.clone())
                .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        }
        lock(&self.shared.pinned).insert(entry.id.clone(), Arc::new(root));
        tracing::info!(distribution = name, id = %entry.id, uid = caller.uid,
            rootfs = %entry.rootfs.display(), "registered");
        let offline = Self::offline(&entry);
        self.with_manager(|m| m.on_distribution_registered(&s.info, &offline, &*self.shared))?;
        Ok(self.distro_info(&s, &entry))
    }

    pub fn distro_unregister(&self, caller: Caller, name: &str) -> OpResult<String> {
        self.check_running()?;
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        let entry = self.find_registered(caller.uid, name)?;
        if lock(&s.distros).contains_key(&entry.id_bytes()) {
            return Err(OpError::new(
                ErrorKind::Invalid,
                format!("distribution '{name}' is running: stop it first"),
            ));
        }
        lock(&self.shared.store)
            .remove(caller.uid, name)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        lock(&self.shared.pinned).remove(&entry.id);
        tracing::info!(distribution = name, id = %entry.id, uid = caller.uid, "unregistered");
        let offline = Self::offline(&entry);
        self.with_manager(|m| m.on_distribution_unregistered(&s.info, &offline, &*self.shared))?;
        Ok(format!("distribution '{name}' unregistered"))
    }

    pub fn distro_start(&self, caller: Caller, name: &str) -> OpResult<DistroInfo> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        let entry = self.find_registered(caller.uid, name)?;
        let id = entry.id_bytes();
        if lock(&s.distros).contains_key(&id) {
            return Err(OpError::new(
                ErrorKind::AlreadyExists,
                format!("distribution '{name}' is already running"),
            ));
        }
        let limit = self.shared.config.limits.running_distributions;
        let count = lock(&s.distros).len();
        if caller.uid != 0 && count >= limit {
            return Err(limit_reached(format!(
                "uid {} runs {count} distributions: the limit is {limit} (stop one first)",
                caller.uid
            )));
        }
        // Pinned at registration with the owner's rights, never root's (re-opened as the owner
        // after a restart): a later symlink swap of the path changes nothing.
        let rootfs = self.pinned_rootfs(&entry)?;
        let vm = self.ensure_vm(&s)?;
        let process = vm
            .start_distribution(name, &entry.id, &rootfs)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        let info = Distribution {
            id,
            name: entry.name.clone(),
            pid_namespace: process.pid_namespace,
            package: entry.package.clone(),
            init_pid: process.init_pid(),
            flavor: entry.flavor.clone(),
            version: entry.version.clone(),
        };
        let running = Arc::new(RunningDistro { info, process });
        lock(&s.distros).insert(id, running.clone());
        let result = self
            .with_manager(|m| m.on_distribution_started(&s.info, &running.info, &*self.shared))?;
        if let Err(error) = result {
            // A vetoed distribution gets no on_distribution_stopping (PLUGIN_ABI.md, "Hooks").
            lock(&s.distros).remove(&id);
            running.process.kill();
            return Err(error.into());
        }
        s.touch();
        Ok(self.distro_info(&s, &entry))
    }

    fn stop_distro_locked(&self, s: &UserSession, d: &RunningDistro) {
        let _ = self.with_manager(|m| m.on_distribution_stopping(&s.info, &d.info, &*self.shared));
        lock(&s.distros).remove(&d.info.id);
        d.process.kill();
        s.touch();
        tracing::info!(distribution = %d.info.name, "distribution stopped");
    }

    pub fn distro_stop(&self, caller: Caller, name: &str) -> OpResult<String> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        let entry = self.find_registered(caller.uid, name)?;
        let running = lock(&s.distros).get(&entry.id_bytes()).cloned();
        let Some(d) = running else {
            return Err(OpError::new(
                ErrorKind::NotRunning,
                format!("distribution '{name}' is not running"),
            ));
        };
        self.stop_distro_locked(&s, &d);
        Ok(format!("distribution '{name}' stopped"))
    }

    pub fn distro_list(&self, caller: Caller) -> Vec<DistroInfo> {
        let s = self.session_for(caller);
        let entries = lock(&self.shared.store).of_owner(caller.uid);
        entries.iter().map(|r| self.distro_info(&s, r)).collect()
    }

    /// Runs `argv` as the caller in its VM (started on demand) or in one of its running
    /// distributions, with the client's stdio; returns the exit code (`None`: the client left).
    pub fn exec(
        &self,
        caller: Caller,
        distro: Option<&str>,
        argv: &[String],
        stdio: [OwnedFd; 3],
        client: &UnixStream,
    ) -> OpResult<Option<i32>> {
        let _slot = ProcessSlot::take(&self.shared, caller.uid)?;
        let s = self.session_for(caller);
        s.busy.fetch_add(1, Ordering::SeqCst);
        let result = self.exec_in_session(&s, caller, distro, argv, stdio, client);
        s.touch();
        s.busy.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn exec_in_session(
        &self,
        s: &UserSession,
        caller: Caller,
        distro: Option<&str>,
        argv: &[String],
        stdio: [OwnedFd; 3],
        client: &UnixStream,
    ) -> OpResult<Option<i32>> {
        let (vm, inside) = {
            let _op = lock(&s.op);
            let inside = match distro {
                Some(name) => {
                    let entry = self.find_registered(caller.uid, name)?;
                    let running = lock(&s.distros).get(&entry.id_bytes()).cloned();
                    match running {
                        Some(d) => Some(d),
                        None => {
                            return Err(OpError::new(
                                ErrorKind::NotRunning,
                                format!("distribution '{name}' is not running"),
                            ))
                        }
                    }
                }
                None => None,
            };
            (self.ensure_vm(s)?, inside)
        };
        let spec = ExecSpec {
            path: &argv[0],
            argv,
            uid: Some(caller.uid),
            gid: Some(s.info.gid),
            env: None,
        };
        let what = match (distro, &inside) {
            (Some(name), Some(_)) => format!("distribution '{name}'"),
            _ => format!("the VM of {}", s.info.user_name),
        };
        run_client_program(
            &vm,
            inside.as_ref().map(|d| &d.process),
            &spec,
            stdio,
            client,
            &what,
        )
    }

    // ---- container sessions ----

    fn find_csession(&self, caller: Caller, name: &str) -> OpResult<Arc<CSession>> {
        lock(&self.shared.csessions)
            .by_id
            .values()
            .find(|c| c.owner == caller.uid && c.info.display_name == name)
            .cloned()
            .ok_or_else(|| {
                OpError::new(
                    ErrorKind::NotFound,
                    format!("no container session named '{name}'"),
                )
            })
    }

    pub fn csession_create(
        &self,
        caller: Caller,
        name: &str,
        application_pid: Option<u32>,
    ) -> OpResult<(u32, String)> {
        self.check_running()?;
        // No application named (a client with no process of the caller's own above it, as under
        // `sudo -u`): the session is not tied to one and lives until `csession stop`.
        let app = application_pid
            .map(|pid| App::open(pid, caller.uid))
            .transpose()
            .map_err(|e| OpError::new(ErrorKind::Invalid, format!("bad application: {e}")))?;
        let s = self.session_for(caller);
        let cs = {
            let mut all = lock(&self.shared.csessions);
            if all
                .by_id
                .values()
                .any(|c| c.owner == caller.uid && c.info.display_name == name)
            {
                return Err(OpError::new(
                    ErrorKind::AlreadyExists,
                    format!("a container session named '{name}' exists"),
                ));
            }
            let limit = self.shared.config.limits.container_sessions;
            let count = all.by_id.values().filter(|c| c.owner == caller.uid).count();
            if caller.uid != 0 && count >= limit {
                return Err(limit_reached(format!(
                    "uid {} has {count} container sessions: the limit is {limit} (stop one first)",
                    caller.uid
                )));
            }
            let id = all.next;
            all.next += 1;
            let cs = Arc::new(CSession {
                info: ContainerSession {
                    id,
                    display_name: name.to_owned(),
                    application_pid: app.as_ref().map_or(caller.pid, App::pid),
                    uid: caller.uid,
                    gid: s.info.gid,
                },
                owner: caller.uid,
                op: Mutex::new(()),
                vm: Mutex::new(None),
                mounts: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
            });
            // Published before the hook: the plugin may already mount folders for it.
            all.by_id.insert(id, cs.clone());
            cs
        };
        let _op = lock(&cs.op);
        let result =
            self.with_manager(|m| m.on_container_session_created(&cs.info, &*self.shared))?;
        if let Err(error) = result {
            // The manager delivered on_container_session_stopping (PLUGIN_ABI.md, "Hooks").
            cs.stopping.store(true, Ordering::SeqCst);
            lock(&self.shared.csessions).by_id.remove(&cs.info.id);
            return Err(error.into());
        }
        if let Some(app) = app {
            if let Err(e) = self.apps.watch(cs.info.id, app) {
                // Without a watch the session would outlive its application: refuse it.
                self.stop_csession_locked(&cs);
                return Err(OpError::new(ErrorKind::Internal, e.to_string()));
            }
        }
        tracing::info!(
            csession = cs.info.id,
            name,
            uid = caller.uid,
            "container session created"
        );
        Ok((cs.info.id, name.to_owned()))
    }

    /// Starts the session VM unless it runs. The caller holds `cs.op`.
    fn ensure_session_vm(&self, cs: &CSession) -> OpResult<Arc<Vm>> {
        if let Some(vm) = lock(&cs.vm).clone() {
            if vm.is_alive() {
                return Ok(vm);
            }
            self.stop_session_vm_locked(cs);
        }
        self.check_running()?;
        let sandbox = self.sandbox()?;
        let label = format!("session-vm:{}#{}", cs.info.display_name, cs.info.id);
        let ids = self.shared.vm_ids(cs.info.uid, cs.info.gid)?;
        let vm = Vm::start(sandbox, &label, "plughost-session-vm", ids)
            .map(Arc::new)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        let user = UserCred::of(cs.info.uid, cs.info.gid);
        for m in lock(&cs.mounts).clone() {
            let mounted = open_path_as(&user, &m.host)
                .map_err(|e| e.raw_os_error().unwrap_or(EIO))
                .and_then(|folder| vm.mount(&folder, &m.mountpoint, m.read_only));
            if let Err(errno) = mounted {
                tracing::warn!(csession = cs.info.id, mountpoint = %m.mountpoint,
                    "cannot re-apply a mount: errno {errno}");
            }
        }
        *lock(&cs.vm) = Some(vm.clone());
        self.with_manager(|m| m.on_session_vm_started(&cs.info, &*self.shared))?;
        Ok(vm)
    }

    fn stop_session_vm_locked(&self, cs: &CSession) {
        let Some(vm) = lock(&cs.vm).clone() else {
            return;
        };
        // The session VM still serves calls during the hook (PLUGIN_ABI.md, "Hooks").
        let _ = self.with_manager(|m| m.on_session_vm_stopping(&cs.info, &*self.shared));
        lock(&cs.vm).take();
        vm.kill();
    }

    pub fn csession_run(
        &self,
        caller: Caller,
        name: &str,
        argv: &[String],
        stdio: [OwnedFd; 3],
        client: &UnixStream,
    ) -> OpResult<Option<i32>> {
        let _slot = ProcessSlot::take(&self.shared, caller.uid)?;
        let cs = self.find_csession(caller, name)?;
        let vm = {
            let _op = lock(&cs.op);
            if cs.stopping.load(Ordering::SeqCst) {
                return Err(OpError::new(
                    ErrorKind::NotRunning,
                    format!("container session '{name}' is stopping"),
                ));
            }
            self.ensure_session_vm(&cs)?
        };
        let spec = ExecSpec {
            path: &argv[0],
            argv,
            uid: Some(cs.info.uid),
            gid: Some(cs.info.gid),
            env: None,
        };
        let what = format!("the session VM of container session '{name}'");
        run_client_program(&vm, None, &spec, stdio, client, &what)
    }

    fn stop_csession_locked(&self, cs: &CSession) {
        // Marked stopping only once on_session_vm_stopping returned: the session VM serves calls,
        // from any plugin thread, until then (PLUGIN_ABI.md, "Hooks"). Client operations cannot
        // slip in meanwhile: they wait for `cs.op`, which the caller holds.
        self.stop_session_vm_locked(cs);
        cs.stopping.store(true, Ordering::SeqCst);
        let _ = self.with_manager(|m| m.on_container_session_stopping(&cs.info, &*self.shared));
        lock(&self.shared.csessions).by_id.remove(&cs.info.id);
        self.apps.unwatch(cs.info.id);
        tracing::info!(csession = cs.info.id, "container session stopped");
    }

    /// The application of container session `id` exited: stop the session with its hooks, as
    /// `csession stop` would (unless it stopped already).
    fn application_exited(&self, id: u32, pid: u32) {
        let Some(cs) = lock(&self.shared.csessions).by_id.get(&id).cloned() else {
            return;
        };
        let _op = lock(&cs.op);
        if cs.stopping.load(Ordering::SeqCst) {
            return;
        }
        tracing::info!(
            csession = id,
            pid,
            "the application exited: stopping its container session"
        );
        self.stop_csession_locked(&cs);
    }

    pub fn csession_stop(&self, caller: Caller, name: &str) -> OpResult<String> {
        let cs = self.find_csession(caller, name)?;
        let _op = lock(&cs.op);
        if cs.stopping.load(Ordering::SeqCst) {
            return Err(OpError::new(
                ErrorKind::NotRunning,
                format!("container session '{name}' is stopping"),
            ));
        }
        self.stop_csession_locked(&cs);
        Ok(format!("container session '{name}' stopped"))
    }

    // ---- administration ----

    pub fn plugins(&self) -> OpResult<Vec<PluginRow>> {
        self.with_manager(|m| {
            m.plugins()
                .into_iter()
                .map(|p| PluginRow {
                    name: p.name,
                    path: p.path,
                    isolation: match p.isolation {
                        Isolation::Process => "process".into(),
                        Isolation::InProcess => "in-process".into(),
                    },
                    host_pid: p.host_pid,
                    state: p.state.name().into(),
                    detail: p.state.to_string(),
                    crashes: p.crashes,
                    restarts: p.restarts,
                    uptime_secs: p.uptime.map(|u| u.as_secs()),
                    hooks_served: p.hooks_served,
                    api_calls: p.api_calls,
                    latency: p
                        .latency
                        .iter()
                        .map(|l| plughost_service::HookLatencyRow {
                            hook: l.hook.name().into(),
                            count: l.count,
                            p50_us: u64::try_from(l.p50.as_micros()).unwrap_or(u64::MAX),
                            p99_us: u64::try_from(l.p99.as_micros()).unwrap_or(u64::MAX),
                        })
                        .collect(),
                    last_error: p.last_error,
                    last_crash: p.last_crash,
                })
                .collect()
        })
    }

    /// `plugin restart|disable|enable NAME`.
    pub fn plugin_control(
        &self,
        name: &str,
        action: PluginAction,
    ) -> OpResult<plughost_service::Reply> {
        let result = self.with_manager(|m| match action {
            PluginAction::Restart => m.restart_plugin(name),
            PluginAction::Disable => m.disable_plugin(name),
            PluginAction::Enable => m.enable_plugin(name),
        })?;
        let done = match action {
            PluginAction::Restart => "restarted",
            PluginAction::Disable => "disabled",
            PluginAction::Enable => "enabled",
        };
        match result {
            Ok(()) => Ok(plughost_service::Reply::Done {
                message: format!("plugin '{name}' {done}"),
            }),
            Err(plughost::ControlError::UnknownPlugin(_)) => Err(OpError::new(
                ErrorKind::NotFound,
                format!("no plugin named '{name}'"),
            )),
            Err(plughost::ControlError::Start(e)) => {
                Err(OpError::new(ErrorKind::Plugin, e.to_string()))
            }
        }
    }

    /// SIGHUP: re-reads the configuration and applies its plugin list (unchanged plugins keep
    /// running). A bad file is refused and the running configuration kept.
    pub fn reload(&self, path: &std::path::Path) {
        let config = match crate::config::Config::load(path, true) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("configuration reload refused, keeping the running one: {e}");
                return;
            }
        };
        *lock(&self.host_uids) = host_uids(&config);
        let plugins = config.plugins.iter().map(|p| p.config.clone()).collect();
        // The manager is held exclusively only to swap the plugin list: hosts are started and
        // stopped afterwards under the shared lock, so no operation waits for a process start.
        let (mut changes, pending) = {
            let mut guard = self.manager.write().unwrap_or_else(|e| e.into_inner());
            let Some(manager) = guard.as_mut() else {
                return;
            };
            manager.reconfigure_deferred(plugins, config.trust, config.deadlines)
        };
        if let Ok(more) = self.with_manager(|m| m.finish_reconfigure(pending)) {
            changes.extend(more);
        }
        if changes.is_empty() {
            tracing::info!(config = %path.display(), "configuration reloaded: no plugin changed");
        }
        for change in changes {
            tracing::info!(config = %path.display(), "configuration reloaded: {change}");
        }
    }

    /// The plugins' status in the OpenMetrics text format.
    pub fn metrics(&self) -> OpResult<String> {
        self.with_manager(|m| m.openmetrics())
    }

    /// Stops every VM and container session (with their hooks), then the plugins.
    pub fn shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("shutting down");
        let sessions: Vec<Arc<UserSession>> = lock(&self.shared.sessions)
            .by_uid
            .values()
            .cloned()
            .collect();
        for s in sessions {
            let _op = lock(&s.op);
            self.stop_vm_locked(&s);
        }
        let csessions: Vec<Arc<CSession>> = lock(&self.shared.csessions)
            .by_id
            .values()
            .cloned()
            .collect();
        for cs in csessions {
            let _op = lock(&cs.op);
            // Stopped meanwhile (by its client or because its application exited).
            if !cs.stopping.load(Ordering::SeqCst) {
                self.stop_csession_locked(&cs);
            }
        }
        let manager = self
            .manager
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut manager) = manager {
            manager.shutdown();
        }
    }

    /// Stops VMs unused for the idle timeout (never one with a running distribution or process).
    pub fn reap_idle(&self) {
        let idle = self.shared.config.idle_timeout_secs;
        let sessions: Vec<Arc<UserSession>> = lock(&self.shared.sessions)
            .by_uid
            .values()
            .cloned()
            .collect();
        for s in sessions {
            let Some(vm) = s.vm() else { continue };
            let dead = !vm.is_alive();
            let unused = idle > 0
                && s.busy.load(Ordering::SeqCst) == 0
                && lock(&s.distros).is_empty()
                && lock(&s.last_used).elapsed() >= Duration::from_secs(idle);
            if !(dead || unused) {
                continue;
            }
            // Never wait for an operation in progress: try again on the next tick.
            let Ok(_op) = s.op.try_lock() else { continue };
            if dead {
                tracing::warn!(session = s.info.id, "the VM died on its own");
            } else {
                tracing::info!(session = s.info.id, "stopping the VM after {idle} s unused");
            }
            self.stop_vm_locked(&s);
        }
    }
}

/// Runs a client's program with the client's own stdio and waits for it (or for the client to go).
/// A program that cannot start is an error naming why, never an exit code it could have returned.
fn run_client_program(
    vm: &Vm,
    inside: Option<&DistroProcess>,
    spec: &ExecSpec<'_>,
    stdio: [OwnedFd; 3],
    client: &UnixStream,
    what: &str,
) -> OpResult<Option<i32>> {
    let mut child = vm
        .spawn_program(inside, spec, stdio, false)
        .map_err(|e| match e {
            ExecError::Stopping => {
                OpError::new(ErrorKind::NotRunning, format!("{what} is stopping"))
            }
            ExecError::Refused { errno, message } => OpError::new(
                if errno == ENOENT {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Invalid
                },
                format!("cannot run {} in {what}: {message}", spec.path),
            ),
            ExecError::Internal(why) => OpError::new(
                ErrorKind::Internal,
                format!("cannot start the program in {what}: {why}"),
            ),
        })?;
    let status = wait_or_hangup(&mut child, client)
        .map_err(|e| OpError::new(ErrorKind::Internal, format!("lost the program: {e}")))?;
    Ok(status.map(exit_code))
}

/// A process created by `container_create_process`: the helper that mirrors it, our ends of its
/// stdio pipes (handed over once each), and a pidfd opened before it could be reaped.
struct CProcess {
    /// The session VM it runs in: once that is gone the handle's calls are NOT_RUNNING.
    vm: Arc<Vm>,
    /// The service's shutdown flag: during a shutdown every call is SHUTTING_DOWN.
    shutting_down: Arc<AtomicBool>,
    /// `None` only once dropped.
    child: Option<Child>,
    pidfd: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    exit: Option<i32>,
}

impl CProcess {
    /// The contract's answer for a call on this handle now, if not its own (header, section 7).
    fn check(&self, needs_vm: bool) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::SHUTTING_DOWN);
        }
        if needs_vm && !self.vm.is_alive() {
            return Err(Status::NOT_RUNNING);
        }
        Ok(())
    }
}

impl ContainerProcess for CProcess {
    fn fd(&mut self, stream: ProcessStream) -> Result<OwnedFd, Status> {
        self.check(true)?;
        let slot = match stream {
            ProcessStream::Stdin => &mut self.stdin,
            ProcessStream::Stdout => &mut self.stdout,
            ProcessStream::Stderr => &mut self.stderr,
        };
        // Handed over, not duplicated: a copy kept here would hold the process's stdin open.
        slot.take().ok_or(Status::errno(EBADF))
    }

    fn exit_fd(&mut self) -> Result<OwnedFd, Status> {
        self.check(true)?;
        self.pidfd.try_clone().map_err(|e| Status::from_io(&e))
    }

    fn exit_code(&mut self) -> Result<i32, Status> {
        self.check(false)?;
        if let Some(code) = self.exit {
            return Ok(code);
        }
        let Some(child) = self.child.as_mut() else {
            return Err(Status::ILLEGAL_STATE);
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                let code = exit_code(status);
                self.exit = Some(code);
                Ok(code)
            }
            Ok(None) => Err(Status::ILLEGAL_STATE),
            Err(e) => Err(Status::from_io(&e)),
        }
    }
}

impl Drop for CProcess {
    fn drop(&mut self) {
        if let (None, Some(mut child)) = (self.exit, self.child.take()) {
            // Released while running: it keeps running; reap it when it ends.
            let _ = std::thread::Builder::new()
                .name("plughostd-reap".into())
                .spawn(move || child.wait());
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Status::errno(e.raw_os_error()))
}

impl Shared {
    /// The ids of a VM of user `uid` (its range recorded on first use).
    fn vm_ids(&self, uid: u32, gid: u32) -> OpResult<crate::ids::VmIds> {
        lock(&self.id_ranges)
            .for_user(uid, gid)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))
    }

    fn check_not_shutting_down(&self) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::SHUTTING_DOWN);
        }
        Ok(())
    }

    fn user_vm(&self, session: u32) -> Result<(Arc<UserSession>, Arc<Vm>), Status> {
        self.check_not_shutting_down()?;
        let s = lock(&self.sessions)
            .by_id
            .get(&session)
            .cloned()
            .ok_or(Status::NOT_FOUND)?;
        let vm = s.vm().ok_or(Status::NOT_RUNNING)?;
        s.touch();
        Ok((s, vm))
    }

    fn csession(&self, id: u32) -> Result<Arc<CSession>, Status> {
        self.check_not_shutting_down()?;
        let cs = lock(&self.csessions)
            .by_id
            .get(&id)
            .cloned()
            .ok_or(Status::NOT_FOUND)?;
        if cs.stopping.load(Ordering::SeqCst) {
            return Err(Status::NOT_RUNNING);
        }
        Ok(cs)
    }

    /// Runs a plugin's program as the VM's root with stdin/stdout on a socket (the caller's end is
    /// returned) and stderr into the log; answers once the program runs, or why it could not.
    fn run_for_plugin(
        ctx: CallContext<'_>,
        vm: &Vm,
        inside: Option<&DistroProcess>,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        check_absolute(path)?;
        let (ours, theirs) = UnixStream::pair().map_err(|e| Status::from_io(&e))?;
        let theirs_in = theirs.try_clone().map_err(|e| Status::from_io(&e))?;
        let (log_r, log_w) = pipe()?;
        let spec = ExecSpec {
            path,
            argv,
            uid: None,
            gid: None,
            env: None,
        };
        let child = vm
            .spawn_program(
                inside,
                &spec,
                [OwnedFd::from(theirs_in), OwnedFd::from(theirs), log_w],
                true,
            )
            .map_err(|e| exec_status(&e))?;
        vm.log_stderr(
            &format!("{} {path}", ctx.plugin),
            std::fs::File::from(log_r),
        );
        let mut child = child;
        let _ = std::thread::Builder::new()
            .name("plughostd-reap".into())
            .spawn(move || child.wait());
        Ok(ours.into())
    }
}

/// What a plugin sees when its program could not start: NOT_RUNNING when the VM is stopping,
/// else the errno (ENOENT, EACCES, ...).
fn exec_status(e: &ExecError) -> Status {
    match e {
        ExecError::Stopping => Status::NOT_RUNNING,
        other => Status::errno(other.errno()),
    }
}

/// Opens the folder a plugin shares with the session user's rights: the share can never give the
/// VM more than the user has (SECURITY.md, "The VM boundary").
fn open_share(host_path: &str, uid: u32, gid: u32) -> Result<OwnedFd, Status> {
    let path = Path::new(host_path);
    if !path.is_absolute() || host_path.contains('\0') {
        return Err(Status::errno(EINVAL));
    }
    open_path_as(&UserCred::of(uid, gid), path).map_err(|e| Status::from_io(&e))
}

fn check_absolute(path: &str) -> Result<(), Status> {
    if path.starts_with('/') && !path.contains('\0') {
        Ok(())
    } else {
        Err(Status::errno(EINVAL))
    }
}

impl ServiceCallbacks for Shared {
    fn mount_folder(
        &self,
        ctx: CallContext<'_>,
        session: u32,
        host_path: &str,
        vm_path: &str,
        read_only: bool,
        name: &str,
    ) -> Result<(), Status> {
        let (s, vm) = self.user_vm(session)?;
        check_absolute(vm_path)?;
        let folder = open_share(host_path, s.info.uid, s.info.gid)?;
        vm.mount(&folder, vm_path, read_only)
            .map_err(Status::errno)?;
        tracing::info!(plugin = ctx.plugin, vm = %vm.label, name, host = host_path, target = vm_path,
            read_only, "mounted");
        Ok(())
    }

    fn execute_binary(
        &self,
        ctx: CallContext<'_>,
        session: u32,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        let (_s, vm) = self.user_vm(session)?;
        Self::run_for_plugin(ctx, &vm, None, path, argv)
    }

    fn execute_binary_in_distribution(
        &self,
        ctx: CallContext<'_>,
        session: u32,
        distribution: [u8; 16],
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        let (s, vm) = self.user_vm(session)?;
        let running = lock(&s.distros).get(&distribution).cloned();
        let Some(d) = running else {
            let registered = lock(&self.store)
                .find_id(&distribution)
                .is_some_and(|r| r.owner == s.info.uid);
            return Err(if registered {
                Status::NOT_RUNNING
            } else {
                Status::NOT_FOUND
            });
        };
        Self::run_for_plugin(ctx, &vm, Some(&d.process), path, argv)
    }

    fn container_mount_folder(
        &self,
        ctx: CallContext<'_>,
        container_session: u32,
        host_path: &str,
        mountpoint: &str,
        read_only: bool,
    ) -> Result<(), Status> {
        check_absolute(mountpoint)?;
        let cs = self.csession(container_session)?;
        let folder = open_share(host_path, cs.info.uid, cs.info.gid)?;
        let host = PathBuf::from(host_path);
        let vm = lock(&cs.vm).clone();
        if let Some(vm) = vm {
            vm.mount(&folder, mountpoint, read_only)
                .map_err(Status::errno)?;
        }
        let mut mounts = lock(&cs.mounts);
        mounts.retain(|m| m.mountpoint != mountpoint);
        mounts.push(CMount {
            host,
            mountpoint: mountpoint.to_owned(),
            read_only,
        });
        tracing::info!(
            plugin = ctx.plugin,
            csession = container_session,
            host = host_path,
            mountpoint,
            read_only,
            "container mount"
        );
        Ok(())
    }

    fn container_unmount_folder(
        &self,
        _ctx: CallContext<'_>,
        container_session: u32,
        mountpoint: &str,
    ) -> Result<(), Status> {
        check_absolute(mountpoint)?;
        let cs = self.csession(container_session)?;
        {
            let mut mounts = lock(&cs.mounts);
            let before = mounts.len();
            mounts.retain(|m| m.mountpoint != mountpoint);
            if mounts.len() == before {
                return Err(Status::errno(EINVAL));
            }
        }
        let vm = lock(&cs.vm).clone();
        if let Some(vm) = vm {
            vm.unmount(mountpoint).map_err(Status::errno)?;
        }
        Ok(())
    }

    fn container_create_process(
        &self,
        ctx: CallContext<'_>,
        container_session: u32,
        path: &str,
        argv: &[String],
        envp: Option<&[String]>,
    ) -> Result<Box<dyn ContainerProcess>, CreateProcessError> {
        let cs = self.csession(container_session)?;
        // Never starts a session VM (PLUGIN_ABI.md, "API").
        let vm = lock(&cs.vm).clone().ok_or(Status::NOT_RUNNING)?;
        if !path.starts_with('/') || path.contains('\0') {
            // VM paths are absolute (PLUGIN_ABI.md, "Types"); the modelled system says ENOENT.
            return Err(CreateProcessError {
                status: Status::errno(EINVAL),
                errno: ENOENT,
            });
        }
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let spec = ExecSpec {
            path,
            argv,
            uid: Some(cs.info.uid),
            gid: Some(cs.info.gid),
            env: envp,
        };
        let child = vm
            .spawn_program(None, &spec, [stdin_r, stdout_w, stderr_w], false)
            .map_err(|e| CreateProcessError {
                status: exec_status(&e),
                errno: e.errno(),
            })?;
        let pidfd = crate::vm::exit_fd(child.id()).map_err(|e| Status::from_io(&e))?;
        tracing::info!(
            plugin = ctx.plugin,
            csession = container_session,
            path,
            "container process"
        );
        Ok(Box::new(CProcess {
            vm: vm.clone(),
            shutting_down: self.shutting_down.clone(),
            child: Some(child),
            pidfd,
            stdin: Some(stdin_w),
            stdout: Some(stdout_r),
            stderr: Some(stderr_r),
            exit: None,
        }))
    }
}

/// What [`Daemon::plugin_control`] does.
#[derive(Clone, Copy, Debug)]
pub enum PluginAction {
    Restart,
    Disable,
    Enable,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose parent runs a binary named `plughost-host` is a host's: refused.
    #[test]
    fn a_descendant_of_a_host_binary_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake_host = dir.path().join("plughost-host");
        std::fs::copy("/bin/sh", &fake_host).expect("copy sh");
        // ETXTBSY while another test thread's fork still holds the copy's write fd: retry.
        let mut tries = 0;
        let mut shell = loop {
            match std::process::Command::new(&fake_host)
                .args(["-c", "sleep 30; true"])
                .spawn()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.expect("spawn"),
            }
        };
        let children = format!("/proc/{0}/task/{0}/children", shell.id());
        let mut child = None;
        for _ in 0..500 {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            child = text.split_whitespace().next().and_then(|p| p.parse().ok());
            // Once it runs sleep (before its exec it is a copy of the fake host itself).
            let execed = child.is_some_and(|pid: u32| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|n| n != "plughost-host"))
            });
            if execed {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let child: u32 = child.expect("the shell started sleep");
        let why = host_process(child);
        if let Some(pid) = rustix::process::Pid::from_raw(child as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = shell.kill();
        let _ = shell.wait();
        assert_eq!(
            why,
            Some(format!(
                "process {child} descends from plugin host {}",
                shell.id()
            ))
        );
        assert_eq!(host_process(std::process::id()), None);
    }
}
