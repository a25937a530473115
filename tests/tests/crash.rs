//! Crash isolation: a host that dies, forks, or talks garbage costs one operation, never the service.

use std::time::Duration;

use plughost_sys::Pidfd;

use plughost_tests::*;

#[test]
fn segfault_in_vm_started_is_contained_named_and_latched() {
    for _ in 0..5 {
        let fx = Fixture::new();
        let service = TestService::new();
        let manager = service.manager(vec![fx.c("noop"), fx.c("crash_in_vm_started")]);
        let s = session(1);
        let err = service.start_vm(&manager, &s).unwrap_err();
        assert_null_write_in(&err, "crash_in_vm_started", "on_vm_started");
        fx.wait_for("about_to_crash");
        // The next VM start fails fast with the same (latched) error, without reaching the plugin.
        let again = service.start_vm(&manager, &s).unwrap_err();
        assert_eq!(again, err);
        assert_eq!(fx.events("about_to_crash").len(), 1);
        let info = manager.plugins();
        assert_eq!(info[1].state, "crashed");
        assert_eq!(info[1].last_error.as_deref(), Some(err.as_str()));
        assert_eq!(info[0].state, "ready");
    }
}

#[test]
fn crash_with_a_forked_child_holding_the_channel_is_detected_and_the_child_killed() {
    for _ in 0..5 {
        let fx = Fixture::new();
        let service = TestService::new();
        let name = marker("orph");
        let manager = service.manager(vec![fx
            .c("fork_then_crash")
            .env("PH_MARKER", name.as_str())]);
        let err = service.start_vm(&manager, &session(1)).unwrap_err();
        assert_null_write_in(&err, "fork_then_crash", "on_vm_started");
        fx.wait_for("forked");
        assert!(
            eventually(Duration::from_secs(2), || pids_named(&name).is_empty()),
            "the plugin's child {name} survived its host"
        );
    }
}

#[test]
fn garbage_on_the_channel_is_a_protocol_violation() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("garbage_writer"), fx.c("noop")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert!(
        err.starts_with(
            "plugin 'garbage_writer' crashed: protocol violation: sent a malformed frame"
        ),
        "{err}"
    );
    // (The plugin logs after its send, so the kill usually comes first: no log assertion here.)
    // The service carries on; the host is gone.
    assert_eq!(manager.plugins()[0].state, "crashed");
    assert!(manager.plugins()[0].host_pid.is_none());
}

#[test]
fn daemon_spawned_by_a_plugin_dies_with_its_host() {
    if !rustix::process::geteuid().is_root() {
        // Without a pid namespace a setsid() daemon leaves the host's process group: it would
        // escape (README, "Requirements"), so the plugin is not even started.
        println!("skipped: needs root (only a pid namespace holds a setsid() daemon)");
        return;
    }
    let fx = Fixture::new();
    let service = TestService::new();
    let name = marker("dmn");
    let manager = service.manager(vec![fx.c("fork_daemon").env("PH_MARKER", name.as_str())]);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    fx.wait_for("daemon_started");
    assert!(eventually(Duration::from_secs(2), || pids_named(&name)
        .len()
        == 1));
    drop(manager);
    assert!(
        eventually(Duration::from_secs(2), || pids_named(&name).is_empty()),
        "the setsid double-forked daemon {name} survived its host"
    );
}

/// `pid`'s children (`/proc/PID/task/*/children`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// What each open fd of `pid` is (`/dev/null`, `pipe:[N]`, `socket:[N]`, ...), by fd number.
fn fd_targets(pid: u32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the fds")
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// The outer host and the namespace init only wait, so they exec the tiny static waiter
/// (`crates/sys/waiter/waiter.c`): a few pages resident instead of the Rust runtime, and exactly the
/// fds the Rust waiting loops held: the outer its stdio and the two pipes to the init, the init
/// those two pipes and its SIGCHLD signalfd; neither holds the channel or (the init) the output pipe.
#[test]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn idle_host_waits_in_the_tiny_waiter_holding_only_its_pipes() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("noop")]);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    let outer = manager.plugins()[0].host_pid.expect("host pid");
    let Some(&init) = children(outer).first() else {
        println!("skipped: no pid namespace (needs root), the host is one process");
        return;
    };
    assert!(
        eventually(Duration::from_secs(5), || comm(outer) == "plughost-outer"
            && comm(init) == "plughost-init"),
        "outer {outer} is {:?}, init {init} is {:?}",
        comm(outer),
        comm(init)
    );
    let plugin = children(init);
    assert_eq!(plugin.len(), 1, "the init's children: {plugin:?}");
    assert_eq!(comm(plugin[0]), "plughost-host");

    let outer_fds = fd_targets(outer);
    let kinds: Vec<&str> = outer_fds
        .iter()
        .map(|(_, t)| t.split(':').next().unwrap_or(t))
        .collect();
    assert_eq!(
        kinds,
        ["/dev/null", "pipe", "pipe", "pipe", "pipe"],
        "outer fds {outer_fds:?}"
    );
    let output_pipe = &outer_fds[1].1;
    assert_eq!(&outer_fds[2].1, output_pipe, "stdout and stderr: one pipe");
    let mut init_kinds: Vec<String> = fd_targets(init)
        .into_iter()
        .map(|(_, t)| {
            assert_ne!(&t, output_pipe, "the init holds the output pipe");
            t.split(':').next().unwrap_or(&t).to_owned()
        })
        .collect();
    init_kinds.sort();
    assert_eq!(init_kinds, ["anon_inode", "pipe", "pipe"], "init fds");

    // The Rust processes they replace kept ~2 MiB each.
    for pid in [outer, init] {
        let rss = rss_kib(pid);
        assert!(rss <= 256, "{} keeps {rss} KiB resident", comm(pid));
    }
}

/// The outer mirrors the init when the init dies without a report: the crash is the init's signal,
/// and the namespace (the plugin process) goes with it.
#[test]
fn killing_the_namespace_init_is_a_crash_by_its_signal() {
    for _ in 0..3 {
        let fx = Fixture::new();
        let service = TestService::new();
        let manager = service.manager(vec![fx.c("noop")]);
        service.start_vm(&manager, &session(1)).expect("vm starts");
        let outer = manager.plugins()[0].host_pid.expect("host pid");
        let Some(&init) = children(outer).first() else {
            println!("skipped: no pid namespace (needs root), the host is one process");
            return;
        };
        let plugin = children(init);
        assert_eq!(plugin.len(), 1, "the init's children: {plugin:?}");
        let pidfd = Pidfd::open(init).expect("pidfd of the init");
        // Not our child, but a pidfd signals exactly that process.
        pidfd.kill().expect("SIGKILL the init");
        assert!(eventually(Duration::from_secs(5), || {
            manager.plugins()[0].state != "ready"
        }));
        // The monitor saw the host go; the next hook names how.
        let err = service.start_vm(&manager, &session(2)).unwrap_err();
        assert_eq!(err, "plugin 'noop' crashed: killed by signal SIGKILL");
        assert!(eventually(Duration::from_secs(2), || {
            plughost_sys::process::process_is_gone(outer)
                && plughost_sys::process::process_is_gone(plugin[0])
        }));
    }
}

/// The fallback where the waiter cannot be built or exec'd (forced here with `PLUGHOST_NO_WAITER=1`):
/// the outer and the init wait in Rust, the host says so in one line, and deaths are classified the
/// same.
#[test]
fn without_the_waiter_the_rust_loops_wait_and_classify_the_same() {
    let fx = Fixture::new();
    let service = TestService::new();
    let output = std::sync::Arc::new(CapturedOutput::default());
    let mut config = plughost::ManagerConfig::new(vec![fx
        .c("crash_in_vm_started")
        .env("PLUGHOST_NO_WAITER", "1")]);
    config.output = output.clone();
    let manager = service.manager_with(config);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_null_write_in(&err, "crash_in_vm_started", "on_vm_started");
    drop(manager);

    let mut config =
        plughost::ManagerConfig::new(vec![fx.c("noop").env("PLUGHOST_NO_WAITER", "1")]);
    config.output = output.clone();
    let manager = service.manager_with(config);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    let outer = manager.plugins()[0].host_pid.expect("host pid");
    if let Some(&init) = children(outer).first() {
        assert!(output.wait_for(
            "noop",
            "no waiter (disabled by PLUGHOST_NO_WAITER=1); the outer and the namespace init wait in Rust"
        ));
        assert_eq!(
            (comm(outer), comm(init)),
            ("plughost-host".into(), "plughost-host".into())
        );
        Pidfd::open(init)
            .expect("pidfd of the init")
            .kill()
            .expect("SIGKILL the init");
        assert!(eventually(Duration::from_secs(5), || {
            manager.plugins()[0].state != "ready"
        }));
        let err = service.start_vm(&manager, &session(2)).unwrap_err();
        assert_eq!(err, "plugin 'noop' crashed: killed by signal SIGKILL");
    } else {
        println!("skipped the init checks: no pid namespace (needs root)");
    }
    let lines = output.lines.lock().unwrap_or_else(|e| e.into_inner());
    for plugin in ["crash_in_vm_started", "noop"] {
        let about_the_waiter = lines
            .iter()
            .filter(|(p, l)| p == plugin && l.contains("waiter"))
            .count();
        assert!(about_the_waiter <= 1, "{plugin}: {lines:?}");
    }
}
