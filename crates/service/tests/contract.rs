//! The contract's remaining rules through a real `plughostd` (docs/PLUGIN_ABI.md): calls while a
//! session VM stops, container sessions reaped when their application exits. Real namespaces,
//! processes and plugin hosts; each test has its own daemon.

mod common;

use common::*;

/// The status of PLUGHOST_E_NOT_RUNNING as the test plugins log it.
const NOT_RUNNING: &str = "-10004";

/// `csession stop`: container_create_process from on_session_vm_stopping, on the hook thread and on
/// a plugin thread the hook joins, runs in the session VM; once the hook returned, it is NOT_RUNNING.
#[test]
fn session_vm_serves_calls_during_its_stopping_hook() {
    if !need_root("session_vm_serves_calls_during_its_stopping_hook") {
        return;
    }
    let world = World::new(vec![service_plugin("stopping_calls")]);
    let daemon = world.start();
    let fx = &world.fx;
    for round in 0..3 {
        let name = format!("box{round}");
        daemon.ctl(&["csession", "create", &name]).ok();
        daemon.ctl(&["csession", "run", &name, "--", "true"]).ok();
        daemon.ctl(&["csession", "stop", &name]).ok();
        let hook = fx.events("stopping_hook");
        let thread = fx.events("stopping_thread");
        let after = fx.events("after_stop");
        assert_eq!(hook.len(), round + 1, "{:?}", fx.lines());
        let (hook, thread, after) = (&hook[round], &thread[round], &after[round]);
        assert_eq!(field(hook, "status"), "0", "{hook}");
        assert_eq!(field(hook, "content"), "hook_"); // "hook\n", logged as a token
        assert_eq!(field(hook, "exit"), "0");
        assert_eq!(field(thread, "status"), "0", "{thread}");
        assert_eq!(field(thread, "content"), "thread_");
        assert_eq!(field(thread, "exit"), "0");
        assert_eq!(field(after, "status"), NOT_RUNNING, "{after}");
    }
}

/// A `sleep` standing in for a container session's application.
fn application() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep")
}

/// Kills and reaps an application.
fn end(mut app: std::process::Child) {
    app.kill().expect("kill the application");
    app.wait().expect("reap the application");
}

/// Container sessions whose application exits are stopped with their hooks, each once, by one
/// watcher; the others keep running.
#[test]
fn container_session_is_stopped_when_its_application_exits() {
    if !need_root("container_session_is_stopped_when_its_application_exits") {
        return;
    }
    let world = World::new(vec![service_plugin("stopping_calls")]);
    let daemon = world.start();
    let fx = &world.fx;
    let mut apps = Vec::new();
    for i in 0..4 {
        let app = application();
        let pid = app.id().to_string();
        let name = format!("app{i}");
        daemon
            .ctl(&["csession", "create", &name, "--app-pid", &pid])
            .ok();
        assert_eq!(
            field(&fx.wait_for(&format!("created id={}", i + 1)), "pid"),
            pid
        );
        daemon.ctl(&["csession", "run", &name, "--", "true"]).ok();
        apps.push(app);
    }
    // End apps 2, 0 and 3 (ids 3, 1, 4); app1 (id 2) keeps running.
    let mut apps: Vec<Option<std::process::Child>> = apps.into_iter().map(Some).collect();
    for i in [2usize, 0, 3] {
        end(apps[i].take().expect("app"));
        let id = i + 1;
        let line = fx.wait_for(&format!("csession_stopping id={id}"));
        assert!(!line.is_empty());
        // Its session VM got on_session_vm_stopping first, and served calls during it.
        daemon
            .ctl(&["csession", "run", &format!("app{i}"), "--", "true"])
            .fails_with(&format!("no container session named 'app{i}'"));
    }
    assert_eq!(fx.events("stopping_hook").len(), 3, "{:?}", fx.lines());
    for line in fx.events("stopping_hook") {
        assert_eq!(field(&line, "status"), "0", "{line}");
    }
    assert_eq!(fx.events("csession_stopping").len(), 3);
    daemon.ctl(&["csession", "run", "app1", "--", "true"]).ok();
    // Stopped by hand, then its application exits: one stop, not two.
    daemon.ctl(&["csession", "stop", "app1"]).ok();
    end(apps[1].take().expect("app1"));
    let text = daemon.log_text();
    assert!(
        text.contains("the application exited: stopping its container session"),
        "{text}"
    );
    daemon.shutdown();
    let stops = fx.lines();
    let stops: Vec<&String> = stops
        .iter()
        .filter(|l| *l == "csession_stopping id=2")
        .collect();
    assert_eq!(stops.len(), 1, "{:?}", fx.lines());
    assert_eq!(fx.events("csession_stopping").len(), 4);
}

/// `csession stop` racing the application's exit: every session is stopped exactly once.
#[test]
fn stop_racing_the_application_exit_stops_once() {
    if !need_root("stop_racing_the_application_exit_stops_once") {
        return;
    }
    const ROUNDS: usize = 30;
    let world = World::new(vec![service_plugin("stopping_calls")]);
    let daemon = world.start();
    let fx = &world.fx;
    for round in 0..ROUNDS {
        let app = application();
        let name = format!("race{round}");
        daemon
            .ctl(&[
                "csession",
                "create",
                &name,
                "--app-pid",
                &app.id().to_string(),
            ])
            .ok();
        std::thread::scope(|s| {
            s.spawn(|| {
                // Either it stopped it, or the watcher was first.
                let out = daemon.ctl(&["csession", "stop", &name]);
                assert!(
                    out.code == 0
                        || out.stderr.contains("no container session named")
                        || out.stderr.contains("is stopping"),
                    "{}",
                    out.stderr
                );
            });
            end(app);
        });
        let id = round + 1;
        fx.wait_for(&format!("csession_stopping id={id}"));
    }
    daemon.shutdown();
    for id in 1..=ROUNDS {
        let stop = format!("csession_stopping id={id}");
        let stops: Vec<String> = fx.lines().into_iter().filter(|l| *l == stop).collect();
        assert_eq!(stops.len(), 1, "session {id}: {stops:?}");
    }
}

/// A user may tie a container session only to a process of their own.
#[test]
fn application_of_another_user_is_refused() {
    if !need_root("application_of_another_user_is_refused") {
        return;
    }
    let world = World::new(vec![service_plugin("stopping_calls")]);
    let daemon = world.start();
    daemon
        .ctl_as(4242, &["csession", "create", "x", "--app-pid", "1"])
        .fails_with("bad application: process 1 does not belong to uid 4242");
    daemon
        .ctl(&["csession", "create", "y", "--app-pid", "999999999"])
        .fails_with("bad application: no process 999999999: No such process (os error 3)");
    assert!(world.fx.events("created").is_empty());
}

/// `activation = "lazy"`: plughostd starts without the plugin's host, shows it "not started",
/// and the first hook (a VM start) starts it.
#[test]
fn lazy_plugin_is_not_started_until_its_first_hook() {
    if !need_root("lazy_plugin_is_not_started_until_its_first_hook") {
        return;
    }
    let mut lazy = c("printer");
    lazy.lazy = true;
    let world = World::new(vec![lazy]);
    let daemon = world.start();
    let rows = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(rows["plugins"][0]["state"], "not-started", "{rows}");
    assert_eq!(rows["plugins"][0]["detail"], "not started");
    assert!(rows["plugins"][0]["host_pid"].is_null());
    let table = daemon.ctl(&["plugins"]).ok().stdout;
    assert!(table.contains("not started"), "{table}");
    assert!(world.fx.events("loaded").is_empty());
    daemon.ctl(&["vm", "start"]).ok();
    world.fx.wait_for("vm_started");
    assert_eq!(world.fx.events("loaded").len(), 1);
    let rows = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(rows["plugins"][0]["state"], "ready", "{rows}");
    assert!(rows["plugins"][0]["host_pid"].is_u64());
}

/// `plughostd --socket NAME` (relative) serves at NAME in its working directory; an empty name is
/// refused with a message that says so.
#[test]
fn relative_socket_is_made_absolute_against_the_working_directory() {
    if !need_root("relative_socket_is_made_absolute_against_the_working_directory") {
        return;
    }
    let world = World::new(vec![c("noop")]);
    world.write_config_now();
    let run = |socket: &str| {
        std::process::Command::new(plughostd())
            .current_dir(world.dir.path())
            .arg("--config")
            .arg(world.config_path())
            .arg("--state-dir")
            .arg(world.state_dir())
            .arg("--socket")
            .arg(socket)
            .env_remove("PLUGHOST_SOCKET")
            .env("PLUGHOST_HOST", plughost_tests::host_binary())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn plughostd")
    };
    let mut daemon = run("rel.sock");
    let absolute = world.dir.path().join("rel.sock");
    wait_until("plughostd listens at the relative socket", || {
        std::os::unix::net::UnixStream::connect(&absolute).is_ok()
    });
    let out = std::process::Command::new(plughostctl())
        .env("PLUGHOST_SOCKET", &absolute)
        .args(["shutdown"])
        .output()
        .expect("plughostctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.wait().expect("wait").success());
    assert!(!absolute.exists(), "the socket is removed at exit");

    let refused = run("").wait_with_output().expect("wait");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("a value is required for '--socket <SOCKET>'"),
        "{stderr}"
    );
}

/// A vetoed container session is not handed out: the create fails with the plugin's text, the
/// name stays free and unknown, no session VM starts, and its stopping hook is still delivered.
#[test]
fn vetoed_container_session_is_not_handed_out() {
    if !need_root("vetoed_container_session_is_not_handed_out") {
        return;
    }
    let world = World::new(vec![service_plugin("csession_veto")]);
    let daemon = world.start();
    let fx = &world.fx;
    let expected =
        "plugin 'csession_veto' returned a fatal error: no container for you (status -1 (EPERM))";
    for round in 1..=3u32 {
        daemon
            .ctl(&["csession", "create", "box"])
            .fails_with(expected);
        daemon
            .ctl(&["csession", "run", "box", "--", "true"])
            .fails_with("no container session named 'box'");
        daemon
            .ctl(&["csession", "stop", "box"])
            .fails_with("no container session named 'box'");
        let created = fx.events("created");
        assert_eq!(created.len(), round as usize);
        assert_eq!(field(&created[round as usize - 1], "error_status"), "0");
        let stop = format!("csession_stopping id={round}");
        assert_eq!(
            fx.lines().iter().filter(|l| **l == stop).count(),
            1,
            "{:?}",
            fx.lines()
        );
    }
    assert!(fx.events("session_vm_started").is_empty());
}

/// In process, a plugin thread's call during a hook is served as a call outside the hook; with
/// plughostd, whose plugin API never waits for an operation in progress, it completes, so a hook
/// that joins such a worker returns (docs/PLUGIN_ABI.md, the in-process limit).
#[test]
fn in_process_worker_calls_during_a_hook_complete_with_plughostd() {
    if !need_root("in_process_worker_calls_during_a_hook_complete_with_plughostd") {
        return;
    }
    let mut plugin = c("join_worker");
    plugin.in_process = true;
    let mut world = World::new(vec![plugin]);
    world.daemon_has_plugin_env = true;
    let daemon = world.start();
    for _ in 0..5 {
        daemon.ctl(&["vm", "start"]).ok();
        daemon.ctl(&["vm", "stop"]).ok();
    }
    let joined = world.fx.events("joined");
    assert_eq!(joined.len(), 5, "{:?}", world.fx.lines());
    for line in joined {
        assert_eq!(field(&line, "mount"), "0", "{line}");
        assert_eq!(field(&line, "exec"), "0", "{line}");
        assert_eq!(field(&line, "content"), "OK", "{line}");
    }
}

/// plugin_error in a hook that may not veto (on_vm_stopping) is PLUGHOST_E_ILLEGAL_CALL, and the
/// stop succeeds.
#[test]
fn plugin_error_in_a_stopping_hook_is_an_illegal_call() {
    if !need_root("plugin_error_in_a_stopping_hook_is_an_illegal_call") {
        return;
    }
    let world = World::new(vec![c("api_errors")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    daemon.ctl(&["vm", "stop"]).ok();
    let line = world.fx.wait_for("error_in_stopping=");
    assert_eq!(field(&line, "error_in_stopping"), "-10002");
}

/// The documented failures of the container-session and process calls, through plughostd.
#[test]
fn container_and_process_call_errors_are_the_documented_statuses() {
    if !need_root("container_and_process_call_errors_are_the_documented_statuses") {
        return;
    }
    let world = World::new(vec![service_plugin("container_errors")]);
    let daemon = world.start();
    daemon.ctl(&["csession", "create", "box"]).ok();
    daemon.ctl(&["csession", "run", "box", "--", "true"]).ok();
    let expect = [
        ("cmount_missing", "-2"),
        ("cmount_null", "-14"),
        ("cunmount_unknown", "-22"),
        ("cunmount_relative", "-22"),
        ("cunmount_unknown_cs", "-10005"),
        ("create_null_path", "-14"),
        ("create_null_out", "-14"),
        ("create_missing", "-2"),
        ("create_missing_errno", "2"),
        ("create_unknown_cs", "-10005"),
        ("cat_started", "0"),
        ("get_fd_bad_which", "-22"),
        ("get_fd_null", "-14"),
        ("exit_fd_null", "-14"),
        ("exit_code_running", "-10003"),
        ("exit_code_null", "-14"),
        ("exit_code_after", "0"),
        ("exit_code_value", "0"),
    ];
    for (key, status) in expect {
        let line = world.fx.wait_for(&format!("{key}="));
        assert_eq!(field(&line, key), status, "{key}: {:?}", world.fx.lines());
    }
    daemon.ctl(&["csession", "stop", "box"]).ok();
}

/// plugin_error's rules (outside a hook, NULL, once per hook, the message the user sees) and the
/// documented failures of the VM calls, through plughostd.
#[test]
fn plugin_error_and_vm_call_rules_through_plughostd() {
    if !need_root("plugin_error_and_vm_call_rules_through_plughostd") {
        return;
    }
    let world = World::new(vec![service_plugin("vm_api_rules")]);
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    daemon
        .ctl(&[
            "distro",
            "register",
            "td",
            "--rootfs",
            rootfs.to_str().expect("utf-8"),
        ])
        .ok();
    world.fx.wait_for("registered");
    daemon
        .ctl(&["vm", "start"])
        .fails_with("plugin 'vm_api_rules' returned a fatal error: first (status -13 (EACCES))");
    let expect = [
        ("entry_error", "-10002"),
        ("exec_in_stopped_distro", "-10004"),
        ("exec_in_distro_null", "-14"),
        ("exec_unknown_session", "-10005"),
        ("mount_relative", "-22"),
        ("error_null", "-14"),
        ("error_first", "0"),
        ("error_second", "-10003"),
    ];
    for (key, status) in expect {
        let line = world.fx.wait_for(&format!("{key}="));
        assert_eq!(field(&line, key), status, "{key}: {:?}", world.fx.lines());
    }
}

/// A call from on_vm_stopping: served on `vm stop` (the VM still runs during the hook), refused
/// with PLUGHOST_E_SHUTTING_DOWN when the service is shutting down (the call did not run).
#[test]
fn calls_during_a_service_shutdown_get_shutting_down() {
    if !need_root("calls_during_a_service_shutdown_get_shutting_down") {
        return;
    }
    let world = World::new(vec![service_plugin("stopping_probe")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    daemon.ctl(&["vm", "stop"]).ok();
    daemon.ctl(&["vm", "start"]).ok();
    daemon.shutdown();
    let probes: Vec<String> = world
        .fx
        .events("stopping_mount=")
        .iter()
        .map(|l| field(l, "stopping_mount").to_owned())
        .collect();
    assert_eq!(probes, ["0", "-10006"], "{:?}", world.fx.lines());
}
