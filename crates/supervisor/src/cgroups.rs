//! Which hosts get a cgroup v2 of their own, with which limits, and how it ends (the mechanics are
//! `plughost_sys::cgroup`).
//!
//! - **Where**: beneath a parent cgroup, `<the service's own cgroup>/plughost` by default
//!   ([`CgroupPolicy::Auto`]) or the configured directory ([`CgroupPolicy::Parent`]). At manager start
//!   the parent is created, the `memory` and `pids` controllers it is offered are enabled for its
//!   children (what it is not offered is said once in the log: those limits stay rlimits), and host
//!   cgroups left by a service process that is gone are killed and removed.
//! - **Which hosts**: with `Parent`, every host. With `Auto`, only where the cgroup enforces
//!   something, since joining one costs about 1 ms per host start: a memory limit with the memory
//!   controller, a process limit with the pids controller, or hosts without a pid namespace (a
//!   service that is not root), for which `cgroup.kill` is the only reliable end of a double-forked
//!   daemon.
//! - **Limits**: `memory.max` (and `memory.swap.max = 0`, `memory.oom.group = 1`) from the plugin's
//!   memory limit, `pids.max` from its process limit. A limit the cgroup enforces is not also set as
//!   an rlimit ([`HostCgroup::rlimits`]): `RLIMIT_AS` counts address space, not memory, and
//!   `RLIMIT_NPROC` counts every process of the host's user, so hosts sharing a user would share it.
//! - **Joining**: the host moves itself in (`--cgroup`) before it forks its pid namespace, so no
//!   plugin code runs outside and everything it forks inherits the cgroup.
//! - **End**: when the host dies the monitor writes `cgroup.kill`, records the event counters (for
//!   the classification: `memory.events` `oom_kill`, `pids.events` `max`) and removes the directory
//!   once it is empty; a start-up failure and the manager's shutdown do the same, blocking briefly.
//!
//! # Lock
//! `Cgroups::live` (leaf): the host cgroups not yet removed, for the shutdown sweep. Never held
//! across a file operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use plughost_sys::cgroup::{Cgroup, CgroupError, Controllers, EventsWatch};
use plughost_sys::ProcessExit;

use crate::config::{CgroupPolicy, Limits, PluginConfig};
use crate::error::CrashCause;

/// How long a blocking teardown waits for the killed processes to be gone.
const TEARDOWN_PATIENCE: Duration = Duration::from_secs(2);
const MIB: u64 = 1024 * 1024;

/// Numbers managers within one service process, so their host cgroups' names never collide.
static NEXT_MANAGER: AtomicU64 = AtomicU64::new(1);

/// Hosts get a pid namespace when the service is root (see `plughost_sys::confine::contain`).
fn hosts_get_pid_namespace() -> bool {
    rustix::process::geteuid().is_root()
}

/// The parent of a manager's host cgroups, ready for use.
struct Parent {
    cgroup: Cgroup,
    /// The controllers enabled for the host cgroups.
    enabled: Controllers,
}

enum Mode {
    /// Hosts get no cgroup.
    Off,
    /// `Auto` with a usable parent.
    Auto(Parent),
    /// `Parent(..)`: every host gets a cgroup, or fails to load with this reason.
    Explicit(Result<Parent, String>),
}

/// The cgroup policy of one manager.
pub(crate) struct Cgroups {
    mode: Mode,
    pid_namespace: bool,
    /// `host-<service pid>-<manager>-`: the prefix of this manager's host cgroups.
    prefix: String,
    /// Leaf lock: host cgroups that may still exist.
    live: Mutex<Vec<Weak<HostCgroup>>>,
}

impl Cgroups {
    /// Sets the policy up. Never fails: what cannot be had is logged once, and with `Parent` every
    /// host start then fails with the reason.
    pub fn new(policy: &CgroupPolicy) -> Cgroups {
        let pid_namespace = hosts_get_pid_namespace();
        let mode = match policy {
            CgroupPolicy::Off => Mode::Off,
            CgroupPolicy::Auto => match auto_parent(pid_namespace) {
                Ok(Some(parent)) => Mode::Auto(parent),
                Ok(None) => Mode::Off,
                Err(e) => {
                    tracing::info!("cgroups (auto): {e}; hosts get no cgroup");
                    Mode::Off
                }
            },
            CgroupPolicy::Parent(dir) => {
                let parent = prepare(Cgroup::at(dir)).map_err(|e| e.to_string());
                if let Err(e) = &parent {
                    tracing::error!("cgroups: {e}; no host can start");
                }
                Mode::Explicit(parent)
            }
        };
        let manager = NEXT_MANAGER.fetch_add(1, Ordering::Relaxed);
        Cgroups {
            mode,
            pid_namespace,
            prefix: format!("host-{}-{manager}-", std::process::id()),
            live: Mutex::new(Vec::new()),
        }
    }

    /// A new cgroup for host `id` of `plugin`, with its limits, if the policy gives it one.
    pub fn for_host(
        &self,
        plugin: &PluginConfig,
        id: u64,
    ) -> Result<Option<Arc<HostCgroup>>, String> {
        let parent = match &self.mode {
            Mode::Off => return Ok(None),
            Mode::Explicit(Err(reason)) => return Err(reason.clone()),
            Mode::Explicit(Ok(parent)) => parent,
            Mode::Auto(parent) => {
                if !worth_a_cgroup(parent.enabled, &plugin.limits, self.pid_namespace) {
                    return Ok(None);
                }
                parent
            }
        };
        let cgroup = parent
            .cgroup
            .create_child(&format!("{}{id}", self.prefix))
            .map_err(|e| e.to_string())?;
        let host = HostCgroup::configure(cgroup, parent.enabled, &plugin.limits).map_err(
            |(cgroup, e)| {
                let _ = cgroup.remove();
                e.to_string()
            },
        )?;
        let host = Arc::new(host);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|weak| weak.strong_count() > 0);
        live.push(Arc::downgrade(&host));
        Ok(Some(host))
    }

    /// Kills and removes every host cgroup still there (the manager's hosts are stopped).
    pub fn shutdown(&self) {
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(|e| e.into_inner()));
        for host in live.iter().filter_map(Weak::upgrade) {
            host.destroy();
        }
    }
}

/// With `Auto`: does a host with these limits gain anything from a cgroup?
fn worth_a_cgroup(enabled: Controllers, limits: &Limits, pid_namespace: bool) -> bool {
    (enabled.memory && limits.address_space.is_some())
        || (enabled.pids && limits.processes.is_some())
        || !pid_namespace
}

/// `Auto`'s parent, `<own cgroup>/plughost`, when hosts can gain from it; `None` when they cannot
/// (no controller, and a pid namespace does the killing), after removing stale host cgroups there.
fn auto_parent(pid_namespace: bool) -> Result<Option<Parent>, CgroupError> {
    let own = plughost_sys::cgroup::own_cgroup()?;
    let parent = Cgroup::at(own.path().join("plughost"));
    // What the parent has, or would get from our own cgroup.
    let offered = if parent.exists() {
        parent.controllers()?
    } else {
        own.subtree_control()?
    };
    if !offered.any() && pid_namespace {
        tracing::info!(
            "cgroups (auto): {} enables neither the memory nor the pids controller for its \
             children, and hosts get a pid namespace: hosts get no cgroup; memory and process \
             limits are rlimits",
            own.path().display()
        );
        if parent.exists() {
            remove_stale(&parent);
        }
        return Ok(None);
    }
    prepare(parent).map(Some)
}

/// Creates the parent, enables the controllers it is offered for its children, and removes stale
/// host cgroups.
fn prepare(cgroup: Cgroup) -> Result<Parent, CgroupError> {
    cgroup.ensure_exists()?;
    let offered = cgroup.controllers()?;
    let wanted = Controllers {
        memory: offered.memory,
        pids: offered.pids,
    };
    if let Err(e) = cgroup.enable_for_children(wanted) {
        tracing::warn!("cgroups: {e}");
    }
    let enabled = cgroup.subtree_control()?;
    let mut fallbacks = Vec::new();
    if !enabled.memory {
        fallbacks.push("memory limits are RLIMIT_AS (no memory controller)");
    }
    if !enabled.pids {
        fallbacks.push("process limits are RLIMIT_NPROC (no pids controller)");
    }
    if !fallbacks.is_empty() {
        tracing::info!(
            "cgroups: {} has controllers [{enabled}] for its host cgroups; {}",
            cgroup.path().display(),
            fallbacks.join("; ")
        );
    }
    remove_stale(&cgroup);
    Ok(Parent { cgroup, enabled })
}

/// The service pid in a host cgroup's name, `host-<pid>-<manager>-<host>`.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("host-")?.split('-').next()?.parse().ok()
}

/// Kills and removes the host cgroups of service processes that are gone.
fn remove_stale(parent: &Cgroup) {
    let children = match parent.children() {
        Ok(children) => children,
        Err(e) => {
            tracing::warn!("cgroups: {e}");
            return;
        }
    };
    let ours = std::process::id();
    for name in children {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == ours || !plughost_sys::process::process_is_gone(pid) {
            continue;
        }
        let stale = Cgroup::at(parent.path().join(&name));
        match stale.kill_and_remove(TEARDOWN_PATIENCE) {
            Ok(()) => tracing::info!(
                "cgroups: removed {} (left by service process {pid})",
                stale.path().display()
            ),
            Err(e) => tracing::warn!("cgroups: stale host cgroup: {e}"),
        }
    }
}

/// The counters that classify a host's death, read before its cgroup goes.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    oom_kills: u64,
    forks_refused: u64,
}

/// One host's cgroup.
pub(crate) struct HostCgroup {
    cgroup: Cgroup,
    /// `memory.max`, if the memory controller enforces the plugin's memory limit.
    memory_max: Option<u64>,
    /// `pids.max`, if the pids controller enforces the plugin's process limit.
    pids_max: Option<u64>,
    /// The counters as they were when the cgroup was torn down.
    last: OnceLock<Counters>,
}

/// Where a non-blocking teardown stands.
pub(crate) enum Teardown {
    Done,
    /// Killed, but processes are still exiting: retry when `cgroup.events` changes.
    Draining(EventsWatch),
}

impl HostCgroup {
    /// Writes the limits the enabled controllers can enforce. On failure the caller removes it.
    fn configure(
        cgroup: Cgroup,
        enabled: Controllers,
        limits: &Limits,
    ) -> Result<HostCgroup, (Cgroup, CgroupError)> {
        let memory_max = limits.address_space.filter(|_| enabled.memory);
        let pids_max = limits.processes.filter(|_| enabled.pids);
        let applied = (|| {
            if let Some(bytes) = memory_max {
                cgroup.set_memory_max(bytes)?;
                cgroup.set_swap_max(0)?;
                // The host is one unit: an OOM kill ends all of it at once.
                cgroup.set_oom_group()?;
            }
            if let Some(count) = pids_max {
                cgroup.set_pids_max(count)?;
            }
            Ok(())
        })();
        match applied {
            Ok(()) => Ok(HostCgroup {
                cgroup,
                memory_max,
                pids_max,
                last: OnceLock::new(),
            }),
            Err(e) => Err((cgroup, e)),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.cgroup.path()
    }

    /// The rlimits the host still sets itself: those the cgroup does not enforce.
    pub fn rlimits(&self, mut limits: Limits) -> Limits {
        if self.memory_max.is_some() {
            limits.address_space = None;
        }
        if self.pids_max.is_some() {
            limits.processes = None;
        }
        limits
    }

    fn read_counters(&self) -> Option<Counters> {
        let mut counters = Counters::default();
        if self.memory_max.is_some() {
            counters.oom_kills = self.cgroup.memory_events().ok()?.oom_kill;
        }
        if self.pids_max.is_some() {
            counters.forks_refused = self.cgroup.pids_events().ok()?.max;
        }
        Some(counters)
    }

    /// The counters now, or as recorded at teardown once the cgroup is gone.
    fn counters(&self) -> Counters {
        if let Some(last) = self.last.get() {
            return *last;
        }
        // Teardown records before it removes: if the read fails because the cgroup just went, the
        // record is there.
        self.read_counters()
            .or_else(|| self.last.get().copied())
            .unwrap_or_default()
    }

    fn record(&self) {
        if self.last.get().is_none() {
            if let Some(counters) = self.read_counters() {
                let _ = self.last.set(counters);
            }
        }
    }

    /// Names the limit the cgroup shows the host died of: an OOM kill at `memory.max` for sure; an
    /// abort or fault after `pids.max` refused a fork, probably.
    pub fn explain(&self, cause: &CrashCause) -> Option<CrashCause> {
        const SIGABRT: i32 = 6;
        const SIGBUS: i32 = 7;
        const SIGSEGV: i32 = 11;
        let counters = self.counters();
        if let Some(bytes) = self.memory_max.filter(|_| counters.oom_kills > 0) {
            return Some(CrashCause::LimitExceeded(format!(
                "its memory limit of {} MiB",
                bytes / MIB
            )));
        }
        match cause {
            CrashCause::Exited(
                exit @ ProcessExit::Signal {
                    signal: SIGABRT | SIGBUS | SIGSEGV,
                    ..
                },
            )
            | CrashCause::Faulted {
                exit:
                    exit @ ProcessExit::Signal {
                        signal: SIGABRT | SIGBUS | SIGSEGV,
                        ..
                    },
                ..
            } if counters.forks_refused > 0 => self
                .pids_max
                .map(|limit| CrashCause::ProbableProcessLimit { exit: *exit, limit }),
            _ => None,
        }
    }

    /// Whether the cgroup enforces the memory limit (then RLIMIT_AS is not set).
    #[cfg(test)]
    fn enforces_memory(&self) -> bool {
        self.memory_max.is_some()
    }

    /// Whether the cgroup enforces the process limit (then RLIMIT_NPROC is not set).
    #[cfg(test)]
    fn enforces_processes(&self) -> bool {
        self.pids_max.is_some()
    }

    /// For the monitor, when the host died: records the counters, kills what is left, and removes
    /// the cgroup if it is empty already. Never blocks.
    pub fn begin_teardown(&self) -> Teardown {
        self.record();
        if let Err(e) = self.cgroup.kill() {
            if self.cgroup.exists() {
                tracing::warn!("cgroups: {e}");
            }
        }
        // Watch before the attempt, so that the cgroup emptying just after it is not missed.
        let watch = self.cgroup.events_watch();
        match watch {
            Ok(watch) if !self.try_remove() => Teardown::Draining(watch),
            Ok(_) => Teardown::Done,
            Err(_) => {
                self.try_remove();
                Teardown::Done
            }
        }
    }

    /// Removes the cgroup if it is empty; `false` while processes are still exiting.
    pub fn try_remove(&self) -> bool {
        match self.cgroup.remove() {
            Ok(_) => true,
            Err(e) if Cgroup::is_busy(&e) => false,
            Err(e) => {
                tracing::warn!("cgroups: {e}");
                true
            }
        }
    }

    /// Blocking teardown (start-up failure, shutdown): kill, wait briefly, remove.
    pub fn destroy(&self) {
        self.record();
        if let Err(e) = self.cgroup.kill_and_remove(TEARDOWN_PATIENCE) {
            if self.cgroup.exists() {
                tracing::warn!("cgroups: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plughost_sys::cgroup::test_util::fake_cgroup;

    const BOTH: Controllers = Controllers {
        memory: true,
        pids: true,
    };

    fn limits() -> Limits {
        Limits {
            address_space: Some(256 * MIB),
            processes: Some(32),
            ..Limits::default()
        }
    }

    #[test]
    fn auto_gives_a_cgroup_only_where_it_enforces_something() {
        let none = Controllers::default();
        let memory_only = Controllers {
            memory: true,
            pids: false,
        };
        // This machine kind: no controllers, root (pid namespace): nothing to gain.
        assert!(!worth_a_cgroup(none, &limits(), true));
        assert!(worth_a_cgroup(memory_only, &limits(), true));
        assert!(!worth_a_cgroup(memory_only, &Limits::default(), true));
        assert!(!worth_a_cgroup(
            Controllers {
                memory: false,
                pids: true
            },
            &Limits {
                processes: None,
                ..limits()
            },
            true
        ));
        // No pid namespace: cgroup.kill is what ends a double-forked daemon.
        assert!(worth_a_cgroup(none, &Limits::default(), false));
    }

    #[test]
    fn limits_go_to_memory_max_swap_and_pids_max_and_leave_the_rlimits() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(&tmp.path().join("host-1-1-1"), BOTH);
        let host = HostCgroup::configure(cg.clone(), BOTH, &limits())
            .map_err(|(_, e)| e)
            .unwrap();
        let read = |name| std::fs::read_to_string(cg.path().join(name)).unwrap();
        assert_eq!(read("memory.max"), (256 * MIB).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("pids.max"), "32");
        let left = host.rlimits(Limits {
            cpu_seconds: Some(5),
            open_files: Some(64),
            ..limits()
        });
        assert_eq!(
            left,
            Limits {
                address_space: None,
                processes: None,
                cpu_seconds: Some(5),
                open_files: Some(64),
            }
        );
    }

    #[test]
    fn without_controllers_the_limits_stay_rlimits_and_no_file_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(&tmp.path().join("host-1-1-1"), Controllers::default());
        let host = HostCgroup::configure(cg.clone(), Controllers::default(), &limits())
            .map_err(|(_, e)| e)
            .unwrap();
        assert!(!host.enforces_memory() && !host.enforces_processes());
        assert_eq!(host.rlimits(limits()), limits());
        assert!(!cg.path().join("memory.max").exists());
        assert!(!cg.path().join("pids.max").exists());
    }

    #[test]
    fn a_limit_file_that_cannot_be_written_fails_the_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        // Enabled per the parent, but the files are missing (a kernel that refuses).
        let cg = fake_cgroup(&tmp.path().join("host-1-1-1"), Controllers::default());
        let err = HostCgroup::configure(cg, BOTH, &limits())
            .err()
            .map(|(_, e)| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("memory.max"), "{err}");
    }

    #[test]
    fn an_oom_kill_in_memory_events_names_the_memory_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(&tmp.path().join("host-1-1-1"), BOTH);
        let host = HostCgroup::configure(cg.clone(), BOTH, &limits())
            .map_err(|(_, e)| e)
            .unwrap();
        let killed = CrashCause::Exited(ProcessExit::Signal {
            signal: 9,
            core_dumped: false,
        });
        assert_eq!(host.explain(&killed), None);
        std::fs::write(
            cg.path().join("memory.events"),
            "low 0\nhigh 0\nmax 40\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let cause = host.explain(&killed).unwrap();
        assert_eq!(cause.to_string(), "exceeded its memory limit of 256 MiB");
        // Recorded at teardown: still known once the directory is gone.
        host.record();
        std::fs::remove_dir_all(cg.path()).unwrap();
        assert_eq!(host.explain(&killed), Some(cause));
    }

    #[test]
    fn an_abort_after_pids_max_refused_a_fork_names_the_process_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(&tmp.path().join("host-1-1-1"), BOTH);
        let host = HostCgroup::configure(cg.clone(), BOTH, &limits())
            .map_err(|(_, e)| e)
            .unwrap();
        let aborted = CrashCause::Exited(ProcessExit::Signal {
            signal: 6,
            core_dumped: false,
        });
        assert_eq!(host.explain(&aborted), None);
        std::fs::write(cg.path().join("pids.events"), "max 12\n").unwrap();
        assert_eq!(
            host.explain(&aborted).map(|c| c.to_string()),
            Some("killed by signal SIGABRT, probably at its process limit of 32".into())
        );
        // An exit code is not a failed fork's doing.
        assert_eq!(
            host.explain(&CrashCause::Exited(ProcessExit::Code(1))),
            None
        );
    }

    #[test]
    fn stale_cgroups_are_told_by_their_owner_pid() {
        assert_eq!(owner_pid("host-4242-1-7"), Some(4242));
        assert_eq!(owner_pid("host-x-1-7"), None);
        assert_eq!(owner_pid("something-else"), None);
    }
}
