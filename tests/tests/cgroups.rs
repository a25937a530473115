//! cgroup v2 per host (issue 5), with real hosts: membership of every host process, `cgroup.kill` and
//! removal when the host dies, stale cgroups, and `Auto` on a machine without controllers.
//!
//! Each test with an explicit parent uses a parent of its own beneath the test process's cgroup and
//! removes it at the end. They need root and a cgroup2 mount (CI has both) and say why they skip.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use plughost::{CgroupPolicy, Limits, ManagerConfig};
use plughost_sys::cgroup::{self, Cgroup};
use plughost_sys::process::process_is_gone;
use plughost_tests::*;

const PATIENCE: Duration = Duration::from_secs(10);

/// A parent directory for host cgroups beneath our own cgroup (not created), or why there is none.
fn test_parent(tag: &str) -> Result<PathBuf, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("needs root to create cgroups".into());
    }
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let own = cgroup::own_cgroup().map_err(|e| e.to_string())?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(own
        .path()
        .join(format!("plughost-test-{tag}-{}-{n}", std::process::id())))
}

/// The cgroup v2 directory of process `pid` (from `/proc/<pid>/cgroup`).
fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = cgroup::own_cgroup_in(&text)?;
    let mount = cgroup::cgroup2_mount().ok()?;
    Some(mount.join(relative.strip_prefix("/").unwrap_or(&relative)))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and every live process below it.
fn tree(pid: u32) -> Vec<u32> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|p| parent_of(**p) == Some(parent)));
        i += 1;
    }
    found.retain(|p| !process_is_gone(*p));
    found
}

/// Removes a test parent once the manager is gone (its host cgroups first).
fn remove_parent(parent: &Path) {
    let parent = Cgroup::at(parent);
    for child in parent.children().unwrap_or_default() {
        let _ = Cgroup::at(parent.path().join(child)).kill_and_remove(PATIENCE);
    }
    let _ = parent.remove();
}

#[test]
fn explicit_parent_holds_every_host_process_and_is_killed_and_removed_when_the_host_dies() {
    let parent = match test_parent("members") {
        Ok(parent) => parent,
        Err(why) => return println!("skipped: {why}"),
    };
    let fx = Fixture::new();
    let service = TestService::new();
    let daemon = marker("cgd");
    let mut config = ManagerConfig::new(vec![fx.c("fork_daemon").env("PH_MARKER", &daemon)]);
    config.cgroups = CgroupPolicy::Parent(parent.clone());
    let manager = service.manager_with(config);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    fx.wait_for("daemon_started");
    let host = manager.plugins()[0].host_pid.expect("host pid");
    let cgroup = cgroup_of(host).expect("the host's cgroup");
    assert_eq!(cgroup.parent(), Some(parent.as_path()), "{cgroup:?}");
    let name = cgroup.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(name.starts_with("host-"), "{name}");
    assert!(
        eventually(PATIENCE, || pids_named(&daemon).len() == 1),
        "the daemon did not start"
    );
    let daemon_pid = pids_named(&daemon)[0];
    // Every process of the host (outer, namespace init, plugin process, the setsid daemon the
    // plugin double-forked) is in the cgroup, and nothing else is.
    let mut members = Cgroup::at(&cgroup).procs().expect("cgroup.procs");
    members.sort_unstable();
    let mut processes = tree(host);
    processes.sort_unstable();
    assert!(processes.contains(&daemon_pid), "{processes:?}");
    assert_eq!(members, processes);
    assert_eq!(cgroup_of(daemon_pid), Some(cgroup.clone()));

    // The host dies: the cgroup is killed (the daemon with it) and removed.
    let pid = rustix::process::Pid::from_raw(i32::try_from(host).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill the host");
    assert!(
        eventually(PATIENCE, || process_is_gone(daemon_pid)),
        "the daemon survived its host"
    );
    assert!(
        eventually(PATIENCE, || !cgroup.exists()),
        "{} was not removed",
        cgroup.display()
    );
    let err = service.start_vm(&manager, &session(2)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'fork_daemon' crashed: killed by signal SIGKILL"
    );
    drop(manager);
    remove_parent(&parent);
}

#[test]
fn stale_host_cgroups_of_a_service_that_is_gone_are_removed_at_manager_start() {
    let parent = match test_parent("stale") {
        Ok(parent) => parent,
        Err(why) => return println!("skipped: {why}"),
    };
    // A service pid that is certainly gone: a child that exited and was reaped.
    let mut gone = std::process::Command::new("true").spawn().expect("spawn");
    let gone_pid = gone.id();
    gone.wait().expect("wait");
    let parent_cgroup = Cgroup::at(&parent);
    parent_cgroup.ensure_exists().expect("create the parent");
    let stale = parent_cgroup
        .create_child(&format!("host-{gone_pid}-1-1"))
        .expect("create a stale host cgroup");
    let mut left_behind = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn");
    stale.join(left_behind.id()).expect("join");
    // Another live service's (ours) is left alone.
    let live = parent_cgroup
        .create_child(&format!("host-{}-999-1", std::process::id()))
        .expect("create");

    let fx = Fixture::new();
    let service = TestService::new();
    let mut config = ManagerConfig::new(vec![fx.c("noop")]);
    config.cgroups = CgroupPolicy::Parent(parent.clone());
    let manager = service.manager_with(config);
    assert!(!stale.path().exists(), "the stale cgroup is still there");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(left_behind.wait().expect("wait").signal(), Some(9));
    assert!(live.path().exists());
    live.remove().expect("remove");
    drop(manager);
    remove_parent(&parent);
}

#[test]
fn auto_gives_hosts_no_cgroup_where_no_controller_enforces_their_limits() {
    if !rustix::process::geteuid().is_root() {
        return println!(
            "skipped: needs root (without a pid namespace, Auto gives every host a cgroup)"
        );
    }
    let own = match cgroup::own_cgroup() {
        Ok(own) => own,
        Err(e) => return println!("skipped: {e}"),
    };
    let offered = match own.subtree_control() {
        Ok(offered) => offered,
        Err(e) => return println!("skipped: {e}"),
    };
    if offered.any() {
        return println!(
            "skipped: this machine delegates [{offered}] to {}; Auto gives hosts with limits a cgroup",
            own.path().display()
        );
    }
    let fx = Fixture::new();
    let service = TestService::new();
    let plugin = fx.c("whoami").limits(Limits {
        address_space: Some(512 * 1024 * 1024),
        processes: Some(64),
        ..Limits::default()
    });
    let manager = service.manager(vec![plugin]);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    fx.wait_for("whoami ");
    let host = manager.plugins()[0].host_pid.expect("host pid");
    assert_eq!(cgroup_of(host), Some(own.path().to_path_buf()));
    let service_cgroup = cgroup_of(std::process::id());
    for pid in tree(host) {
        assert_eq!(cgroup_of(pid), service_cgroup, "process {pid} of the host");
    }
}

/// Race-ish (the monitor removes the cgroup while its processes are still exiting): many host
/// deaths, each cgroup killed and removed.
#[test]
fn every_dead_host_cgroup_is_removed_round_after_round() {
    let parent = match test_parent("rounds") {
        Ok(parent) => parent,
        Err(why) => return println!("skipped: {why}"),
    };
    let fx = Fixture::new();
    let service = TestService::new();
    let daemon = marker("cgr");
    let mut config = ManagerConfig::new(vec![fx.c("fork_daemon").env("PH_MARKER", &daemon)]);
    config.cgroups = CgroupPolicy::Parent(parent.clone());
    let manager = service.manager_with(config);
    for round in 0..10 {
        if round > 0 {
            manager.restart_plugin("fork_daemon").expect("restart");
        }
        service
            .start_vm(&manager, &session(round + 1))
            .expect("vm starts");
        let host = manager.plugins()[0].host_pid.expect("host pid");
        let cgroup = cgroup_of(host).expect("the host's cgroup");
        assert_eq!(cgroup.parent(), Some(parent.as_path()));
        assert!(
            eventually(PATIENCE, || pids_named(&daemon).len() == 1),
            "round {round}: the daemon did not start"
        );
        let pid = rustix::process::Pid::from_raw(i32::try_from(host).expect("pid")).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
        assert!(
            eventually(PATIENCE, || !cgroup.exists()
                && pids_named(&daemon).is_empty()),
            "round {round}: {} or the daemon survived",
            cgroup.display()
        );
    }
    assert_eq!(
        Cgroup::at(&parent).children().expect("children"),
        Vec::<String>::new()
    );
    drop(manager);
    remove_parent(&parent);
}

/// `Parent` is a promise: a directory that is not a cgroup fails every host, naming why.
#[test]
fn explicit_parent_that_is_not_a_cgroup_fails_the_plugin_to_load() {
    let not_a_cgroup = tempfile::tempdir().expect("tempdir");
    let service = TestService::new();
    let fx = Fixture::new();
    let mut config = ManagerConfig::new(vec![fx.c("noop")]);
    config.cgroups = CgroupPolicy::Parent(not_a_cgroup.path().to_path_buf());
    let manager = service.manager_with(config);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    let expected = format!(
        "plugin 'noop' failed to load: cannot create its cgroup: cannot read {}: ",
        not_a_cgroup.path().join("cgroup.controllers").display()
    );
    assert!(err.starts_with(&expected), "{err}");
}
