//! Operations through the daemon (issue 6): plugin restart/disable/enable, metrics, SIGHUP reload,
//! graceful shutdown with a plugin that ignores SIGTERM and blocks in its teardown hook.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn signal(daemon: &Daemon, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(daemon.pid() as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal plughostd");
}

#[test]
fn plugins_are_restarted_disabled_and_enabled_through_plughostctl() {
    if !need_root("plugins_are_restarted_disabled_and_enabled_through_plughostctl") {
        return;
    }
    let world = World::new(vec![c("crash_in_vm_started"), c("ok_mount_exec")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).fails_starting_with(CRASH);
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(plugins["plugins"][0]["state"], "crashed");
    assert_eq!(plugins["plugins"][0]["crashes"], 1);
    // The last crash's stack, innermost frame first.
    let stack = plugins["plugins"][0]["last_crash"]
        .as_str()
        .expect("last_crash");
    assert!(
        stack.starts_with("#0 0x") && stack.contains("on_vm_started [crash_in_vm_started.so+0x"),
        "{stack}"
    );
    // Latched: fails fast; a manual restart clears it (and it crashes again, counted).
    daemon.ctl(&["vm", "start"]).fails_starting_with(CRASH);
    daemon
        .ctl(&["plugin", "restart", "crash_in_vm_started"])
        .ok();
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(plugins["plugins"][0]["state"], "ready");
    assert_eq!(plugins["plugins"][0]["restarts"], 1);
    // Disabled, it is skipped and the VM starts.
    daemon
        .ctl(&["plugin", "disable", "crash_in_vm_started"])
        .ok();
    daemon.ctl(&["vm", "start"]).ok();
    let table = daemon.ctl(&["plugins"]).ok().stdout;
    assert!(table.contains("disabled"), "{table}");
    daemon.ctl(&["vm", "stop"]).ok();
    daemon
        .ctl(&["plugin", "enable", "crash_in_vm_started"])
        .ok();
    daemon.ctl(&["vm", "start"]).fails_starting_with(CRASH);
    daemon
        .ctl(&["plugin", "restart", "nope"])
        .fails_with("no plugin named 'nope'");
    daemon
        .ctl_as(65532, &["plugin", "disable", "ok_mount_exec"])
        .fails_with("permission denied: `plughostctl plugin disable` is root-only");
}

#[test]
fn metrics_are_openmetrics() {
    if !need_root("metrics_are_openmetrics") {
        return;
    }
    let world = World::new(vec![c("ok_mount_exec")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    // plugins --json carries the counters and the per-hook latency too.
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    let auditor = &plugins["plugins"][0];
    assert_eq!(auditor["api_calls"], 2);
    assert_eq!(auditor["latency"][0]["hook"], "on_vm_started");
    assert_eq!(auditor["latency"][0]["count"], 1);
    assert!(auditor["uptime_secs"].is_u64(), "{auditor}");
    let text = daemon.ctl(&["metrics"]).ok().stdout;
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{text}"));
    assert!(
        parsed
            .families
            .contains_key("plughost_hook_duration_seconds"),
        "{text}"
    );
    assert!(
        text.contains("plughost_plugin_api_calls_total{plugin=\"ok_mount_exec\"} 2"),
        "{text}"
    );
}

#[test]
fn sighup_applies_a_new_plugin_list_and_refuses_a_broken_one() {
    if !need_root("sighup_applies_a_new_plugin_list_and_refuses_a_broken_one") {
        return;
    }
    let mut world = World::new(vec![c("ok_mount_exec")]);
    let daemon = world.start();
    let before = daemon.ctl(&["--json", "plugins"]).ok().json();
    let host = before["plugins"][0]["host_pid"].clone();

    // A broken file: refused, the running configuration kept.
    world.write_bad_config("[[plugin]]\nname = 3\n");
    signal(&daemon, rustix::process::Signal::HUP);
    assert!(eventually(Duration::from_secs(10), || daemon
        .log_text()
        .contains("configuration reload refused")));
    let still = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(still["plugins"][0]["host_pid"], host);

    // A plugin added: loaded; the unchanged one keeps its host.
    world.plugins.push(c("veto"));
    world.write_config_now();
    signal(&daemon, rustix::process::Signal::HUP);
    assert!(eventually(Duration::from_secs(10), || daemon
        .log_text()
        .contains("plugin 'veto' added")));
    let after = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(
        after["plugins"][0]["host_pid"], host,
        "unchanged plugin restarted"
    );
    assert_eq!(after["plugins"][1]["name"], "veto");
    daemon
        .ctl(&["vm", "start"])
        .fails_with("plugin 'veto' returned a fatal error: veto number 1 (status -22 (EINVAL))");
}

/// A reload holds the manager exclusively only to swap the plugin list: while a plugin it added
/// is still loading (3 s in its entry point), requests that do not need that plugin are served.
#[test]
fn a_reload_does_not_hold_up_requests_while_a_new_plugin_starts() {
    if !need_root("a_reload_does_not_hold_up_requests_while_a_new_plugin_starts") {
        return;
    }
    let mut world = World::new(vec![c("noop")]);
    let daemon = world.start();
    world.plugins.push(c("slow_entry"));
    world.write_config_now();
    signal(&daemon, rustix::process::Signal::HUP);
    world.fx.wait_for("entered");
    // The slow plugin is in its entry point (a write lock held across its start would block these).
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(plugins["plugins"][1]["name"], "slow_entry", "{plugins}");
    daemon.ctl(&["vm", "status"]).ok();
    daemon.ctl(&["distro", "list"]).ok();
    assert!(
        world.fx.events("loaded").len() < 2,
        "the requests waited for the new plugin's start: {:?}",
        world.fx.lines()
    );
    // It does load, and the reload says so.
    assert!(eventually(Duration::from_secs(10), || daemon
        .log_text()
        .contains("plugin 'slow_entry' added")));
    assert!(eventually(Duration::from_secs(10), || world
        .fx
        .events("loaded")
        .len()
        == 2));
    daemon.shutdown();
}

#[test]
fn shutdown_with_a_plugin_that_blocks_in_teardown_completes_within_deadline_and_grace() {
    if !need_root("shutdown_with_a_plugin_that_blocks_in_teardown") {
        return;
    }
    let mut world = World::new(vec![c("hang_in_vm_stopping"), c("ok_mount_exec")]);
    world.extra_config = "teardown_timeout_secs = 1\n".into();
    let mut daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    let started = Instant::now();
    signal(&daemon, rustix::process::Signal::TERM);
    let status = daemon.child.wait().expect("wait plughostd");
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    world.fx.wait_for("stopping_forever");
    // The next plugin still got its teardown hook.
    world.fx.wait_for("vm_stopping session=");
    assert!(!world.socket().exists(), "the socket is removed");
}

#[test]
fn socket_directory_writable_by_others_is_refused() {
    let world = World::new(vec![]);
    world.write_config_now();
    let open_dir = world.dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open_dir.join("plughostd.sock");
    let out = std::process::Command::new(plughostd())
        .arg("--config")
        .arg(world.config_path())
        .arg("--state-dir")
        .arg(world.state_dir())
        .arg("--socket")
        .arg(&socket)
        .env_remove("PLUGHOST_SOCKET")
        .env("PLUGHOST_HOST", host_binary())
        .output()
        .expect("run plughostd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the socket directory {} is writable by others (mode 777)",
            open_dir.display()
        )),
        "{stderr}"
    );
    assert!(!socket.exists());
}
