//! The hostile-plugin harness shared by `hostile.rs` and `ring.rs`: one hostile plugin loaded
//! before `ok_mount_exec` in one manager, its processes (down to its witness) tracked, and the checks
//! every hostile test makes (the exact error, containment, the service carrying on, fds back).
//!
//! Tests using it take [`serial`], so each runs alone in its binary and the fd and memory counts of
//! the test process are its own.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use plughost::{PluginConfig, PluginManager};
use plughost_sys::process::process_is_gone;
use plughost_tests::*;

/// Long enough for any host to start or die on a loaded 2-core machine; the attacks' own sleeps
/// are 10 s, so an outcome within this bound was not reached by the plugin giving up.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open fds of this process (the service).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Targets of this process's fds.
pub fn fd_targets() -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes from `pid`'s parent up to, not including, `host`; `None` if `host` is not an
/// ancestor of `pid`. Empty without a pid namespace, where the plugin runs in the host itself.
pub fn lineage(pid: u32, host: u32) -> Option<Vec<u32>> {
    let mut chain = Vec::new();
    let mut current = pid;
    while let Some(parent) = parent_of(current) {
        if parent == host {
            return Some(chain);
        }
        if parent <= 1 || chain.len() > 8 {
            break;
        }
        chain.push(parent);
        current = parent;
    }
    None
}

/// The processes of one hostile plugin.
pub struct Processes {
    pub name: &'static str,
    /// The host the service spawned.
    pub host: u32,
    /// The processes between the witness and the host (the plugin's process, the namespace's init).
    pub plugin: Vec<u32>,
    /// The name of the plugin's witness child (see the plugins' header comments).
    pub witness: String,
}

impl Processes {
    /// The host, every process of the plugin and its witness are gone.
    pub fn assert_gone(&self) {
        assert!(
            eventually(PATIENCE, || process_is_gone(self.host)),
            "host {} of {} survived",
            self.host,
            self.name
        );
        for pid in &self.plugin {
            assert!(
                eventually(PATIENCE, || process_is_gone(*pid)),
                "process {pid} of {} survived its host",
                self.name
            );
        }
        if !rustix::process::geteuid().is_root() {
            // No pid namespace without root: the process group is the only container, and the
            // witness left it with setsid(). Clean it up by hand.
            println!("skipped the witness check: needs root (pid namespace)");
            for pid in pids_named(&self.witness) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            return;
        }
        assert!(
            eventually(PATIENCE, || pids_named(&self.witness).is_empty()),
            "the witness {} of {} survived its host",
            self.witness,
            self.name
        );
    }
}

/// Every fd the service opened since `before` was counted is closed again.
pub fn assert_fds_back(before: usize, after: &str) {
    assert!(
        eventually(PATIENCE, || open_fds() <= before),
        "after {after}: {} fds open, {before} before: {:?}",
        open_fds(),
        fd_targets()
    );
}

/// A hostile plugin loaded before `ok_mount_exec` in one manager, with its witness running.
pub struct Attack {
    pub fx: Fixture,
    pub service: Arc<TestService>,
    pub manager: PluginManager,
    pub name: &'static str,
    pub processes: Processes,
    pub fds_before: usize,
}

pub fn attack(name: &'static str, configure: impl FnOnce(PluginConfig) -> PluginConfig) -> Attack {
    let fds_before = open_fds();
    let fx = Fixture::new();
    let service = TestService::new();
    let witness = marker("hw");
    let hostile = configure(fx.c(name).env("PH_MARKER", witness.as_str()));
    let manager = service.manager(vec![hostile, fx.c("ok_mount_exec")]);
    let info = manager.plugins();
    assert_eq!(info[0].state, "ready", "{name} did not load: {:?}", info[0]);
    let host = info[0].host_pid.expect("host pid");
    assert!(
        eventually(PATIENCE, || pids_named(&witness).len() == 1),
        "{name}'s witness {witness} did not start"
    );
    let plugin = lineage(pids_named(&witness)[0], host)
        .unwrap_or_else(|| panic!("the witness of {name} is not a descendant of host {host}"));
    Attack {
        fx,
        service,
        manager,
        name,
        processes: Processes {
            name,
            host,
            plugin,
            witness,
        },
        fds_before,
    }
}

impl Attack {
    /// The error is the plugin's latched state too.
    pub fn assert_reported(&self, err: &str) {
        let info = &self.manager.plugins()[0];
        assert_eq!(info.name, self.name);
        assert_eq!(info.state, "crashed", "{info:?}");
        assert_eq!(info.last_error.as_deref(), Some(err));
        assert!(info.host_pid.is_none());
    }

    pub fn assert_contained(&self) {
        self.processes.assert_gone();
    }

    /// The same manager serves the other plugin: with the hostile one disabled, a VM starts and
    /// `ok_mount_exec` mounts a folder and runs `cat` in it.
    pub fn assert_service_carries_on(&self, session_id: u32) {
        self.manager.disable_plugin(self.name).expect("disable");
        let s = session(session_id);
        let reads_before = self.fx.events("read content=").len();
        self.service
            .start_vm(&self.manager, &s)
            .expect("the other plugin still serves VM starts");
        assert!(
            eventually(PATIENCE, || self.fx.events("read content=").len()
                > reads_before),
            "ok_mount_exec did not run cat for session {session_id}: {:?}",
            self.fx.lines()
        );
        let read = self.fx.events("read content=").pop().unwrap_or_default();
        assert_eq!(field(&read, "content"), "OK");
        self.service.stop_vm(&self.manager, &s);
        self.fx
            .wait_for(&format!("vm_stopping session={session_id}"));
        assert_eq!(self.manager.plugins()[1].state, "ready");
    }

    /// Drops the manager: every fd the service held for it and for the hosts is closed again.
    pub fn finish(self) {
        let Attack {
            manager,
            fds_before,
            name,
            processes,
            ..
        } = self;
        drop(manager);
        // The host and its witness went with the manager (without root the witness, which left
        // the process group, is killed here: no test leaves a process behind).
        processes.assert_gone();
        assert_fds_back(fds_before, name);
    }
}

/// The common case: the attack happens in `on_vm_started`; the start fails with `expected`.
pub fn attack_in_vm_started(name: &'static str, expected: &str) -> Attack {
    attack_in_vm_started_with(name, |c| c, expected)
}

/// [`attack_in_vm_started`] with the plugin's configuration adjusted by `configure`.
pub fn attack_in_vm_started_with(
    name: &'static str,
    configure: impl FnOnce(PluginConfig) -> PluginConfig,
    expected: &str,
) -> Attack {
    let a = attack(name, configure);
    let started = Instant::now();
    let err = a
        .service
        .start_vm(&a.manager, &session(1))
        .expect_err("the hostile plugin must fail the VM start");
    assert_eq!(err, expected);
    assert!(
        started.elapsed() < PATIENCE,
        "{name}: took {:?}",
        started.elapsed()
    );
    a.fx.wait_for("sending bytes=");
    assert!(a.fx.events("slept").is_empty());
    a.assert_reported(&err);
    a.assert_contained();
    a
}
