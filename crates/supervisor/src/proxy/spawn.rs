//! Starting a host: spawn, handshake, load.
//!
//! Hosts are spawned by one long-lived thread (the [`Spawner`]): a child's parent-death signal fires
//! when the *thread* that spawned it exits, so spawning from a caller's short-lived thread would kill
//! the host with that thread. The spawn uses plain `std::process::Command` (posix_spawn/vfork, no
//! `pre_exec`): the channel goes in as stdin, stdout and stderr go to one pipe that the monitor logs,
//! the environment is exactly the plugin's configured one, and the host leads a new process group.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use plughost_sys::{Pidfd, Ring, Seqpacket};
use plughost_wire::{
    Confinement, FsRules, HostMsg, LoadFailure, PluginSource, ServiceMsg, Version, Welcome,
    PROTOCOL_VERSION,
};

use super::phase::{Handshake, Load, Loading, Phase};
use super::{new_reader, Backlog, Host};
use crate::callbacks::ServiceCallbacks;
use crate::config::PluginConfig;
use crate::error::CrashCause;

/// How long a host has to say hello, and then to load its plugin.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

type SpawnJob = (Command, mpsc::Sender<std::io::Result<u32>>);

/// The thread that spawns every host of one manager, and lives as long as the manager.
pub(crate) struct Spawner {
    jobs: Mutex<Option<mpsc::Sender<SpawnJob>>>,
}

impl Spawner {
    pub fn start() -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("plughost-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // The Child handle is dropped without waiting: the host is reaped through its pidfd.
                    let _ = reply.send(command.spawn().map(|child| child.id()));
                }
            })?;
        Ok(Spawner {
            jobs: Mutex::new(Some(tx)),
        })
    }

    fn spawn(&self, command: Command) -> std::io::Result<u32> {
        let (tx, rx) = mpsc::channel();
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let sender = jobs
            .as_ref()
            .ok_or_else(|| std::io::Error::other("manager shut down"))?;
        sender
            .send((command, tx))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        drop(jobs);
        rx.recv()
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?
    }

    /// Lets the thread end (after the hosts it spawned are gone).
    pub fn stop(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Why a host could not be started; becomes `PluginError::LoadFailed` / `RequiresUpdate` / `Crashed`.
#[derive(Debug)]
pub(crate) enum StartError {
    Load(String),
    RequiresUpdate,
    Crashed(CrashCause),
}

/// What a started host hands the monitor: the read end of its output pipe.
pub(crate) struct Started {
    pub host: Arc<Host>,
    pub output: OwnedFd,
    /// sha256 of the library bytes the host loaded.
    pub sha256: String,
}

pub(crate) struct StartParams<'a> {
    pub id: u64,
    pub config: &'a PluginConfig,
    pub host_binary: &'a Path,
    pub service_version: Version,
    pub spawner: &'a Spawner,
    pub kicks: &'a Arc<crate::kicks::Kicks>,
    pub hangups: &'a Arc<crate::hangups::Hangups>,
    pub default: &'a dyn ServiceCallbacks,
    pub stats: &'a Arc<crate::stats::Stats>,
    pub trust: &'a crate::config::Trust,
    /// The host's cgroup, which it joins first thing (`--cgroup`).
    pub cgroup: Option<&'a crate::cgroups::HostCgroup>,
}

pub(crate) fn start(p: StartParams<'_>) -> Result<Started, (StartError, Option<OwnedFd>)> {
    let name = &p.config.name;
    // Verified before anything runs; the host gets exactly these bytes.
    let (library, sha256) =
        crate::integrity::prepare(p.config, p.trust).map_err(|e| (StartError::Load(e), None))?;
    let user = p
        .config
        .user
        .resolve()
        .map_err(|e| (StartError::Load(e), None))?;
    let (ours, theirs) =
        Seqpacket::pair().map_err(|e| (StartError::Load(format!("socketpair: {e}")), None))?;
    let (ring, ring_ends) =
        Ring::create(name).map_err(|e| (StartError::Load(e.to_string()), None))?;
    let crash = crash_memo(name, p.config, &library).map_err(|e| (StartError::Load(e), None))?;
    let (out_read, out_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| (StartError::Load(format!("pipe: {e}")), None))?;
    let out_write2 = out_write
        .try_clone()
        .map_err(|e| (StartError::Load(format!("pipe: {e}")), None))?;
    let mut command = Command::new(p.host_binary);
    command
        .arg("--name")
        .arg(name)
        .arg("--parent-pid")
        .arg(std::process::id().to_string());
    if let Some(cgroup) = p.cgroup {
        command.arg("--cgroup").arg(cgroup.path());
    }
    command
        .stdin(Stdio::from(theirs.into_fd()))
        .stdout(Stdio::from(out_write))
        .stderr(Stdio::from(out_write2))
        .env_clear()
        .envs(p.config.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .process_group(0);
    let pid = p.spawner.spawn(command).map_err(|e| {
        (
            StartError::Load(format!("cannot start {}: {e}", p.host_binary.display())),
            None,
        )
    })?;
    // The pid is our unreaped child, so it cannot have been recycled yet.
    let pidfd =
        Pidfd::open(pid).map_err(|e| (StartError::Load(format!("pidfd_open: {e}")), None))?;
    if let Err(e) = ours.set_timeouts(super::DEADLINE_TICK, super::SEND_TIMEOUT) {
        let _ = pidfd.kill();
        return Err((StartError::Load(format!("socket timeouts: {e}")), None));
    }
    if let Err(e) = p.hangups.watch(&ours, p.id) {
        let _ = pidfd.kill();
        return Err((StartError::Load(format!("epoll_ctl: {e}")), None));
    }
    let host = Arc::new(Host {
        name: Arc::from(name.as_str()),
        id: p.id,
        hooks: Default::default(),
        pidfd,
        channel: ours,
        ring,
        kicks: p.kicks.clone(),
        hangups: p.hangups.clone(),
        reader: Mutex::new(new_reader()),
        socket_pending: AtomicBool::new(false),
        backlog: Mutex::new(Backlog::default()),
        next_hook: AtomicU64::new(1),
        exit: Mutex::new(None),
        killed_for: OnceLock::new(),
        dead: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        processes: Mutex::new(Default::default()),
        stats: p.stats.clone(),
        started_at: Instant::now(),
        crash: Some(crash),
    });
    match handshake(&host, &p, library, user, ring_ends) {
        Ok(hooks) => {
            // Safe to rebuild: nobody else holds the Arc yet.
            let host = match Arc::try_unwrap(host) {
                Ok(mut host) => {
                    host.hooks = hooks;
                    Arc::new(host)
                }
                Err(host) => host,
            };
            Ok(Started {
                host,
                output: out_read,
                sha256,
            })
        }
        Err(e) => {
            host.kill();
            let _ = host.pidfd.wait_exit_timeout(Some(Duration::from_secs(5)));
            let _ = host.pidfd.try_wait();
            Err((e, Some(out_read)))
        }
    }
}

/// Waits until the channel is readable or `deadline` passes.
fn wait_readable(host: &Host, deadline: Instant) -> Result<(), StartError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StartError::Load(format!(
                "the host did not answer within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        }
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [
            PollFd::new(&host.channel, PollFlags::IN),
            PollFd::new(host.pidfd(), PollFlags::IN),
        ];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(StartError::Load(format!("poll: {e}"))),
        }
    }
}

fn next(host: &Host, deadline: Instant) -> Result<HostMsg, StartError> {
    let mut reader = host.reader.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        wait_readable(host, deadline)?;
        match host.recv(&mut reader) {
            Ok(Some(msg)) => return Ok(msg),
            Ok(None) => {
                if host.pidfd.has_exited() {
                    return Err(StartError::Crashed(host.crash_cause()));
                }
            }
            Err(super::Gone) => return Err(StartError::Crashed(host.crash_cause())),
        }
    }
}

fn handshake(
    host: &Host,
    p: &StartParams<'_>,
    library: crate::integrity::Library,
    user: Option<(u32, u32)>,
    ring: plughost_sys::HostEnds,
) -> Result<plughost_wire::HookSet, StartError> {
    let name = &p.config.name;
    let hello = Handshake
        .accept(next(host, Instant::now() + HANDSHAKE_TIMEOUT)?)
        .map_err(|why| StartError::Crashed(host.violation(why)))?;
    if hello.protocol != PROTOCOL_VERSION {
        return Err(StartError::Load(format!(
            "host speaks protocol {}, the service speaks {PROTOCOL_VERSION}",
            hello.protocol
        )));
    }
    if hello.plugin != *name || hello.pid == 0 {
        return Err(StartError::Crashed(host.violation(format!(
            "handshake names plugin {:?} pid {}, expected {name:?} pid {}",
            hello.plugin,
            hello.pid,
            host.pid()
        ))));
    }
    let (plugin, fd) = match library {
        crate::integrity::Library::Sealed(fd) => (PluginSource::SealedFd, Some(fd)),
        crate::integrity::Library::Path(path) => (
            PluginSource::Path(path.to_string_lossy().into_owned()),
            None,
        ),
    };
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        service_version: p.service_version,
        plugin,
        confinement: Confinement {
            user,
            // A limit the cgroup enforces is not also an rlimit (see `cgroups.rs`).
            limits: p
                .cgroup
                .map_or(p.config.limits, |c| c.rlimits(p.config.limits)),
            seccomp: p.config.seccomp,
            filesystem: p.config.filesystem.landlock.then(|| {
                let strings = |paths: &[std::path::PathBuf]| {
                    paths
                        .iter()
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect()
                };
                FsRules {
                    read: strings(&p.config.filesystem.read),
                    write: strings(&p.config.filesystem.write),
                }
            }),
        },
        call_ring: true,
        crash_report: host.crash.is_some(),
    };
    // The library's fd (if any), then the ring's memory, doorbell and fd lane
    // (`Welcome::call_ring`), then the crash report's memfd (`Welcome::crash_report`).
    let mut fds: Vec<BorrowedFd<'_>> = fd.iter().map(|fd| fd.as_fd()).collect();
    fds.extend([ring.memory.as_fd(), ring.doorbell.as_fd(), ring.fds.as_fd()]);
    fds.extend(host.crash.as_ref().map(|crash| crash.memfd.as_fd()));
    if host.send(&ServiceMsg::Welcome(welcome), &fds).is_err() {
        return Err(StartError::Crashed(host.crash_cause()));
    }
    let deadline = Instant::now() + LOAD_TIMEOUT;
    loop {
        let msg = Load
            .accept(next(host, deadline)?)
            .map_err(|why| StartError::Crashed(host.violation(why)))?;
        match msg {
            Loading::Loaded(hooks) => return Ok(hooks),
            Loading::Failed(LoadFailure::Open(reason)) => {
                return Err(StartError::Load(name_the_library(&reason, &p.config.path)))
            }
            Loading::Failed(LoadFailure::NoEntryPoint) => {
                return Err(StartError::Load(format!(
                    "{} does not export {}",
                    p.config.path.display(),
                    plughost_abi::PLUGHOST_ENTRY_POINT_V1
                )))
            }
            Loading::Failed(LoadFailure::EntryFailed(status))
                if status == plughost_abi::PLUGHOST_E_REQUIRES_UPDATE =>
            {
                return Err(StartError::RequiresUpdate)
            }
            Loading::Failed(LoadFailure::Confine(reason)) => {
                return Err(StartError::Load(format!(
                    "cannot confine the host: {reason}"
                )))
            }
            Loading::Blocked(syscall) => {
                host.kill_for(CrashCause::BlockedSyscall { syscall });
                return Err(StartError::Crashed(host.crash_cause()));
            }
            Loading::Failed(LoadFailure::EntryFailed(status)) => {
                return Err(StartError::Load(format!(
                    "entry point returned status {}",
                    crate::error::status_text(status)
                )))
            }
            // The entry point may already call the API.
            Loading::Call(id, call) => host.serve_call(id, call, p.default),
        }
    }
}

/// The crash report's memfd (`plughost_sys::crash_report::layout::SIZE` bytes, sealed against resizing so
/// the host cannot make the service read more) and a handle on the verified library bytes.
fn crash_memo(
    name: &str,
    config: &PluginConfig,
    library: &crate::integrity::Library,
) -> Result<super::CrashMemo, String> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let memfd = rustix::fs::memfd_create(
        format!("plughost-crash:{name}"),
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| format!("crash report memfd: {e}"))?;
    rustix::fs::ftruncate(&memfd, plughost_sys::crash_report::layout::SIZE as u64)
        .map_err(|e| format!("crash report memfd: {e}"))?;
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .map_err(|e| format!("sealing the crash report memfd: {e}"))?;
    let library = match library {
        crate::integrity::Library::Sealed(fd) => crate::symbolize::LibrarySource::Sealed(
            fd.try_clone()
                .map_err(|e| format!("duplicating the library's memfd: {e}"))?,
        ),
        crate::integrity::Library::Path(path) => {
            crate::symbolize::LibrarySource::Path(path.clone())
        }
    };
    Ok(super::CrashMemo {
        memfd,
        library,
        library_name: config
            .path
            .file_name()
            .map_or_else(|| name.to_owned(), |n| n.to_string_lossy().into_owned()),
        report: OnceLock::new(),
    })
}

/// The host opens a sealed copy of the library as `/proc/self/fd/N`, so `dlerror()` names that;
/// the user configured a path, and that is what the error must say.
fn name_the_library(reason: &str, configured: &Path) -> String {
    const PREFIX: &str = "/proc/self/fd/";
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(at) = rest.find(PREFIX) {
        let digits = rest[at + PREFIX.len()..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        out.push_str(&rest[..at]);
        if digits == 0 {
            out.push_str(PREFIX);
        } else {
            out.push_str(&configured.display().to_string());
        }
        rest = &rest[at + PREFIX.len() + digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod library_name_tests {
    use super::*;

    #[test]
    fn dlerror_names_the_configured_path_not_the_fd() {
        let path = Path::new("/usr/lib/plughost/audit.so");
        assert_eq!(
            name_the_library("/proc/self/fd/4: undefined symbol: missing_fn", path),
            "/usr/lib/plughost/audit.so: undefined symbol: missing_fn"
        );
        assert_eq!(
            name_the_library("/proc/self/fd/12: x; /proc/self/fd/ y", path),
            "/usr/lib/plughost/audit.so: x; /proc/self/fd/ y"
        );
        assert_eq!(name_the_library("no fd here", path), "no fd here");
    }
}
