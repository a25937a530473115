//! End to end: `plughostctl` against a real `plughostd`, real namespaces, mounts and processes,
//! real plugin hosts. Each test has its own daemon, state dir, socket and config.

mod common;

use common::*;

/// VM start, mounts and programs, distributions, container sessions: the whole success flow.
#[test]
fn success_flow_with_real_mounts_and_processes() {
    if !need_root("success_flow_with_real_mounts_and_processes") {
        return;
    }
    let world = World::new(vec![c("ok_mount_exec")]);
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    let fx = &world.fx;

    let started = daemon.ctl(&["--json", "vm", "start"]).ok().json();
    assert_eq!(started["running"], true);
    let line = fx.wait_for("vm_started");
    assert_eq!(field(&line, "user"), "root");
    assert_eq!(field(&line, "uid"), "0");
    assert_eq!(field(&fx.wait_for("mount "), "status"), "0");
    assert_eq!(field(&fx.wait_for("read "), "content"), "OK");

    // The plugin's read-only mount is real in the VM...
    let out = daemon.ctl(&["exec", "--", "cat", "/mnt/ph/file"]).ok();
    assert_eq!(out.stdout, "OK");
    // ...and read-only: a write through it fails in the VM, and nothing reaches the host.
    let out = daemon.ctl(&["exec", "--", "sh", "-c", "echo x > /mnt/ph/new"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    assert!(!fx.dir.path().join("new").exists());
    // The VM's root is the host's behind a private writable layer; /tmp is its own scratch.
    daemon
        .ctl(&["exec", "--", "sh", "-c", "touch /etc/plughost-x"])
        .ok();
    assert!(!std::path::Path::new("/etc/plughost-x").exists());
    let out = daemon
        .ctl(&[
            "exec",
            "--",
            "sh",
            "-c",
            "echo scratch > /tmp/s && cat /tmp/s && hostname",
        ])
        .ok();
    assert_eq!(out.stdout, "scratch\nplughost-vm\n");
    // Its own pid namespace: the VM's init is pid 1 there.
    let out = daemon.ctl(&["exec", "--", "cat", "/proc/1/cmdline"]).ok();
    assert!(out.stdout.contains("__vm-init"), "{}", out.stdout);
    // Exit codes and stdin pass through.
    assert_eq!(daemon.ctl(&["exec", "--", "sh", "-c", "exit 7"]).code, 7);
    let out = daemon
        .ctl_input(&["exec", "--", "cat"], "piped through\n")
        .ok();
    assert_eq!(out.stdout, "piped through\n");

    // A distribution: registered (hook), started (hook with real values), used, restarted.
    let reg = daemon
        .ctl(&[
            "--json",
            "distro",
            "register",
            "td",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--package",
            "pkg",
        ])
        .ok()
        .json();
    let id = reg["id"].as_str().expect("id").to_owned();
    // The JSON's id is the dashed uuid the table shows; plugins log its 32 hex digits.
    let id_hex = id.replace('-', "");
    let line = fx.wait_for("distribution_registered");
    assert_eq!(field(&line, "name"), "td");
    assert_eq!(field(&line, "id"), id_hex);

    let d = daemon.ctl(&["--json", "distro", "start", "td"]).ok().json();
    let init_pid = d["init_pid"].as_u64().expect("init pid") as u32;
    let line = fx.wait_for("distribution_started");
    assert_eq!(field(&line, "id"), id_hex);
    assert_eq!(field(&line, "init_pid"), init_pid.to_string());
    assert_eq!(field(&line, "package"), "pkg");
    assert_eq!(field(&line, "flavor"), "testos");
    assert_eq!(field(&line, "version"), "1.0");
    let ns = std::fs::metadata(format!("/proc/{init_pid}/ns/pid")).expect("ns");
    assert_eq!(
        field(&line, "pid_ns"),
        std::os::unix::fs::MetadataExt::ino(&ns).to_string()
    );
    // The plugin's thread ran cat in the distribution after its hook returned; the VM's /mnt
    // (where plugins mount) is visible there.
    let late = fx.wait_for("late_exec");
    assert_eq!(field(&late, "status"), "0", "{late}");
    assert_eq!(field(&late, "content"), "OK");
    // exec --distro runs in its root, as pid-namespace child of its init.
    let out = daemon
        .ctl(&[
            "exec",
            "--distro",
            "td",
            "--",
            "sh",
            "-c",
            "cat /etc/marker; echo; cat /proc/1/cmdline",
        ])
        .ok();
    assert!(out.stdout.starts_with("distro\n"), "{}", out.stdout);
    assert!(out.stdout.contains("__distro-init"), "{}", out.stdout);

    daemon.ctl(&["distro", "stop", "td"]).ok();
    assert_eq!(field(&fx.wait_for("distribution_stopping"), "name"), "td");
    wait_until("the distribution's init is gone", || gone(init_pid));
    let again = daemon.ctl(&["--json", "distro", "start", "td"]).ok().json();
    let second_pid = again["init_pid"].as_u64().expect("init pid") as u32;
    assert_ne!(
        second_pid, init_pid,
        "a restarted distribution has a new init"
    );
    daemon.ctl(&["distro", "stop", "td"]).ok();
    daemon
        .ctl(&["exec", "--distro", "td", "--", "true"])
        .fails_with("distribution 'td' is not running");
    daemon.ctl(&["distro", "unregister", "td"]).ok();
    assert_eq!(
        field(&fx.wait_for("distribution_unregistered"), "id"),
        id_hex
    );
    daemon
        .ctl(&["distro", "start", "td"])
        .fails_with("no distribution named 'td'");

    // A container session: created (hook, with the client's pid), session VM on first run.
    daemon.ctl(&["csession", "create", "app"]).ok();
    let line = fx.wait_for("container_session_created");
    assert_eq!(field(&line, "name"), "app");
    assert_eq!(field(&line, "id"), "1");
    assert!(fx.events("session_vm_started").is_empty());
    let out = daemon
        .ctl(&[
            "csession",
            "run",
            "app",
            "--",
            "sh",
            "-c",
            "hostname; exit 3",
        ])
        .stdout;
    assert_eq!(out, "plughost-session-vm\n");
    assert_eq!(field(&fx.wait_for("session_vm_started"), "id"), "1");
    assert_eq!(
        daemon
            .ctl(&["csession", "run", "app", "--", "sh", "-c", "exit 3"])
            .code,
        3
    );
    assert_eq!(
        fx.events("session_vm_started").len(),
        1,
        "started once, lazily"
    );
    daemon.ctl(&["csession", "stop", "app"]).ok();
    fx.wait_for("session_vm_stopping id=1");
    fx.wait_for("container_session_stopping id=1");
    daemon
        .ctl(&["csession", "run", "app", "--", "true"])
        .fails_with("no container session named 'app'");

    let vm_pid = daemon.ctl(&["--json", "vm", "status"]).ok().json()["init_pid"]
        .as_u64()
        .expect("init pid") as u32;
    daemon.ctl(&["vm", "stop"]).ok();
    fx.wait_for("vm_stopping");
    wait_until("the VM's init is gone", || gone(vm_pid));
    daemon
        .ctl(&["vm", "stop"])
        .fails_with("the VM is not running");
    daemon.shutdown();
}

/// Calls made while a hook of the same session runs: from a thread the hook joins (served on a
/// pool thread) and from four threads at once.
/// With `RUST_LOG=debug`, plughostd's log reads as a story per plugin: the daemon's own line about
/// a mount a plugin made during its hook carries the hook's span (plugin, hook, session) and the
/// call's inside it.
#[test]
fn debug_log_names_the_plugin_hook_call_and_session_of_each_line() {
    if !need_root("debug_log_names_the_plugin_hook_call_and_session_of_each_line") {
        return;
    }
    let world = World::new(vec![c("ok_mount_exec")]);
    world.write_config_now();
    let mut command = world.daemon_command();
    command.env("RUST_LOG", "debug");
    let daemon = world.start_command(command);
    daemon.ctl(&["vm", "start"]).ok();
    assert_eq!(field(&world.fx.wait_for("mount "), "status"), "0");
    let log = daemon.log_text();
    let spans = "hook{plugin=ok_mount_exec hook=on_vm_started session=1}:\
                 call{plugin=ok_mount_exec call=mount_folder session=1}: ";
    let mounted = log
        .lines()
        .find(|line| line.contains(" mounted "))
        .unwrap_or_else(|| panic!("no line of the mount in:\n{log}"));
    assert!(mounted.contains(spans), "{mounted}");
    assert!(mounted.contains("target=\"/mnt/ph\""), "{mounted}");
    daemon.ctl(&["vm", "stop"]).ok();
}

#[test]
fn api_calls_during_a_hook_do_not_deadlock() {
    if !need_root("api_calls_during_a_hook_do_not_deadlock") {
        return;
    }
    let world = World::new(vec![c("join_worker"), c("threads_in_vm_started")]);
    let daemon = world.start();
    for round in 0..3 {
        daemon.ctl(&["vm", "start"]).ok();
        let joined = world.fx.events("joined");
        assert_eq!(joined.len(), round + 1);
        let line = joined.last().expect("joined");
        assert_eq!(line, "joined mount=0 exec=0 content=OK");
        let threads = world.fx.events("threads ");
        assert_eq!(
            threads.last().expect("threads"),
            "threads ok=4 max_concurrency=4"
        );
        daemon.ctl(&["vm", "stop"]).ok();
    }
}

#[test]
fn vm_veto_texts_are_the_specs() {
    if !need_root("vm_veto_texts_are_the_specs") {
        return;
    }
    let world = World::new(vec![c("ok_mount_exec"), c("veto")]);
    let daemon = world.start();
    daemon
        .ctl(&["vm", "start"])
        .fails_with("plugin 'veto' returned a fatal error: veto number 1 (status -22 (EINVAL))");
    // Every plugin got on_vm_stopping, and the VM is gone.
    assert_eq!(
        world.fx.events("vm_stopping").len(),
        2,
        "{:?}",
        world.fx.lines()
    );
    assert_eq!(
        daemon.ctl(&["--json", "vm", "status"]).ok().json()["running"],
        false
    );
    daemon
        .ctl(&["exec", "--", "true"])
        .fails_with("plugin 'veto' returned a fatal error (status -5 (EIO))");
}

#[test]
fn distribution_veto_and_message_with_success() {
    if !need_root("distribution_veto_and_message_with_success") {
        return;
    }
    let world = World::new(vec![c("distro_veto")]);
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    daemon
        .ctl(&[
            "distro",
            "register",
            "td",
            "--rootfs",
            rootfs.to_str().unwrap(),
        ])
        .ok();
    daemon.ctl(&["distro", "start", "td"]).fails_with(
        "plugin 'distro_veto' returned a fatal error: distribution refused by policy (status -1 (EPERM))",
    );
    let list = daemon.ctl(&["--json", "distro", "list"]).ok().json();
    assert_eq!(list["distros"][0]["running"], false);
    daemon.ctl(&["vm", "stop"]).ok();
    world.fx.wait_for("vm_stopping");
    assert!(world.fx.events("distribution_stopping").is_empty());
    drop(daemon);

    let world = World::new(vec![c("message_then_success")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).fails_with(
        "plugin 'message_then_success' returned a fatal error: message set but success returned (status -10003 (PLUGHOST_E_ILLEGAL_STATE))",
    );
}

#[test]
fn load_failures_are_reported_on_vm_start() {
    if !need_root("load_failures_are_reported_on_vm_start") {
        return;
    }
    let world = World::new(vec![c("noop"), c("entry_fails")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).fails_with(
        "plugin 'entry_fails' failed to load: entry point returned status -22 (EINVAL)",
    );
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(plugins["plugins"][1]["name"], "entry_fails");
    assert_eq!(plugins["plugins"][1]["state"], "failed");
    drop(daemon);

    let world = World::new(vec![c("requires_future")]);
    let daemon = world.start();
    let out = daemon.ctl(&["vm", "start"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .starts_with("plugin 'requires_future' requires a newer version of plughost than "),
        "{}",
        out.stderr
    );
}

#[test]
fn plugin_api_errors_through_the_daemon() {
    if !need_root("plugin_api_errors_through_the_daemon") {
        return;
    }
    let world = World::new(vec![c("api_errors")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    let expect = [
        ("missing_host_path", "-2"),
        ("missing_binary", "-2"),
        ("unknown_session", "-10005"),
        ("null_host_path", "-14"),
        ("null_fd_out", "-14"),
        ("null_argv", "-14"),
        ("error_from_thread", "-10002"),
        ("unknown_distribution", "-10005"),
        ("container_unknown", "-10005"),
        ("container_relative", "-22"),
    ];
    for (key, status) in expect {
        let line = world.fx.wait_for(&format!("{key}="));
        assert_eq!(field(&line, key), status, "{key}");
    }
}

/// A host crash during one user's `vm start` costs that operation; the daemon keeps serving.
#[test]
fn host_crash_during_vm_start_leaves_the_daemon_serving() {
    if !need_root("host_crash_during_vm_start_leaves_the_daemon_serving") {
        return;
    }
    let world = World::new(vec![c("crash_in_vm_started")]);
    let daemon = world.start();
    // Not 65534: the plugin hosts run as nobody, and their uid is refused (SECURITY.md).
    daemon
        .ctl_as(65532, &["vm", "start"])
        .fails_starting_with(CRASH);
    world.fx.wait_for("about_to_crash");
    assert!(world.fx.events("did_not_crash").is_empty());
    // Another user is still served.
    let status = daemon
        .ctl_as(65533, &["--json", "vm", "status"])
        .ok()
        .json();
    assert_eq!(status["running"], false);
    assert_eq!(status["user"], "uid65533");
    daemon.ctl_as(65533, &["distro", "list"]).ok();
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    let state = plugins["plugins"][0]["state"]
        .as_str()
        .expect("state")
        .to_owned();
    assert_ne!(state, "ready", "{plugins}");
}

#[test]
fn two_users_sessions_are_isolated() {
    if !need_root("two_users_sessions_are_isolated") {
        return;
    }
    let world = World::new(vec![]);
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    for (uid, word) in [(65534, "first"), (65533, "second")] {
        let out = daemon
            .ctl_as(
                uid,
                &[
                    "exec",
                    "--",
                    "sh",
                    "-c",
                    &format!("echo {word} > /tmp/who; id -u"),
                ],
            )
            .ok();
        assert_eq!(
            out.stdout.trim(),
            uid.to_string(),
            "programs run as the caller"
        );
    }
    assert_eq!(
        daemon
            .ctl_as(65534, &["exec", "--", "cat", "/tmp/who"])
            .ok()
            .stdout,
        "first\n"
    );
    assert_eq!(
        daemon
            .ctl_as(65533, &["exec", "--", "cat", "/tmp/who"])
            .ok()
            .stdout,
        "second\n"
    );
    let a = daemon
        .ctl_as(65534, &["--json", "vm", "status"])
        .ok()
        .json();
    let b = daemon
        .ctl_as(65533, &["--json", "vm", "status"])
        .ok()
        .json();
    assert_ne!(a["init_pid"], b["init_pid"]);
    assert_ne!(a["session_id"], b["session_id"]);
    assert_eq!(a["user"], "nobody");

    daemon
        .ctl_as(
            65534,
            &[
                "distro",
                "register",
                "mine",
                "--rootfs",
                rootfs.to_str().unwrap(),
            ],
        )
        .ok();
    let list = daemon
        .ctl_as(65533, &["--json", "distro", "list"])
        .ok()
        .json();
    assert_eq!(list["distros"].as_array().map(Vec::len), Some(0));
    daemon
        .ctl_as(65533, &["distro", "start", "mine"])
        .fails_with("no distribution named 'mine'");
    // Stopping one user's VM leaves the other's running.
    daemon.ctl_as(65534, &["vm", "stop"]).ok();
    let b_after = daemon
        .ctl_as(65533, &["--json", "vm", "status"])
        .ok()
        .json();
    assert_eq!(b_after["running"], true);
}

#[test]
fn non_root_user_is_refused_root_only_commands() {
    if !need_root("non_root_user_is_refused_root_only_commands") {
        return;
    }
    let world = World::new(vec![c("noop")]);
    let mut daemon = world.start();
    // Not 65534: the plugin hosts run as nobody, and their uid is refused (SECURITY.md).
    daemon
        .ctl_as(65532, &["shutdown"])
        .fails_with("permission denied: `plughostctl shutdown` is root-only");
    daemon
        .ctl_as(65532, &["plugins"])
        .fails_with("permission denied: `plughostctl plugins` is root-only");
    daemon
        .ctl_as(65532, &["metrics"])
        .fails_with("permission denied: `plughostctl metrics` is root-only");
    assert!(daemon.is_running());
    let out = daemon.ctl(&["plugins"]).ok();
    assert!(out.stdout.starts_with("NAME"), "{}", out.stdout);
    assert!(out.stdout.contains("noop"), "{}", out.stdout);
}

#[test]
fn distribution_ids_survive_a_daemon_restart() {
    if !need_root("distribution_ids_survive_a_daemon_restart") {
        return;
    }
    let world = World::new(vec![]);
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    let reg = daemon
        .ctl(&[
            "--json",
            "distro",
            "register",
            "keep",
            "--rootfs",
            rootfs.to_str().unwrap(),
        ])
        .ok()
        .json();
    let id = reg["id"].as_str().expect("id").to_owned();
    // The canonical dashed form, the same as the table's ID column.
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
    daemon
        .ctl(&[
            "distro",
            "register",
            "keep",
            "--rootfs",
            rootfs.to_str().unwrap(),
        ])
        .fails_with("a distribution named 'keep' is already registered");
    daemon.shutdown();

    let daemon = world.start();
    let list = daemon.ctl(&["--json", "distro", "list"]).ok().json();
    assert_eq!(list["distros"][0]["id"], id.as_str());
    assert_eq!(list["distros"][0]["name"], "keep");
    let table = daemon.ctl(&["distro", "list"]).ok().stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("testos 1.0"), "{table}");
    assert!(table.contains(&id), "{table}");
}

#[test]
fn corrupt_state_file_is_reported_not_reset() {
    let world = World::new(vec![]);
    std::fs::create_dir_all(world.state_dir()).expect("state dir");
    let state = world.state_dir().join("distributions.json");
    std::fs::write(&state, "{\"version\": 1, \"distributions\": [").expect("write");
    world.write_bad_config("");
    let out = world.daemon_command().output().expect("run plughostd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("corrupt state file {}", state.display())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&state).expect("read"),
        "{\"version\": 1, \"distributions\": ["
    );
}

#[test]
fn bad_config_is_refused_with_file_line_and_reason() {
    let world = World::new(vec![]);
    world.write_bad_config(
        "idle_timeout_secs = 5\n[[plugin]]\nname = \"x\"\npath = \"relative.so\"\n",
    );
    let out = world.daemon_command().output().expect("run plughostd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "plughostd: {}:4:8: plugin \"x\": path must be absolute",
        world.config_path().display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

/// SIGKILL the daemon: its hosts, VM inits and distribution inits all die with it.
#[test]
fn killed_daemon_leaves_no_process_behind() {
    if !need_root("killed_daemon_leaves_no_process_behind") {
        return;
    }
    let world = World::new(vec![c("ok_mount_exec")]);
    let rootfs = make_rootfs(world.dir.path());
    let mut daemon = world.start();
    daemon
        .ctl(&[
            "distro",
            "register",
            "td",
            "--rootfs",
            rootfs.to_str().unwrap(),
        ])
        .ok();
    let d = daemon.ctl(&["--json", "distro", "start", "td"]).ok().json();
    let distro_init = d["init_pid"].as_u64().expect("init pid") as u32;
    daemon.ctl(&["csession", "create", "app"]).ok();
    daemon.ctl(&["csession", "run", "app", "--", "true"]).ok();
    let vm_init = daemon.ctl(&["--json", "vm", "status"]).ok().json()["init_pid"]
        .as_u64()
        .expect("vm init") as u32;
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    let host = plugins["plugins"][0]["host_pid"]
        .as_u64()
        .expect("host pid") as u32;
    let helpers: Vec<u32> = processes_of(plughostd())
        .into_iter()
        .filter(|p| *p != daemon.pid())
        .collect();
    assert!(
        helpers.len() >= 4,
        "VM and distribution processes: {helpers:?}"
    );

    daemon.child.kill().expect("SIGKILL plughostd");
    daemon.child.wait().expect("reap plughostd");
    for (what, pid) in [
        ("host", host),
        ("VM init", vm_init),
        ("distribution init", distro_init),
    ] {
        wait_until(&format!("{what} {pid} is gone"), || gone(pid));
    }
    for pid in helpers {
        wait_until(&format!("sandbox process {pid} is gone"), || gone(pid));
    }
}

/// container_mount_folder, container_unmount_folder, container_create_process and the process
/// calls, from a plugin, against a real session VM.
#[test]
fn container_session_api_works_for_real() {
    if !need_root("container_session_api_works_for_real") {
        return;
    }
    let world = World::new(vec![service_plugin("container_ops")]);
    let daemon = world.start();
    daemon.ctl(&["csession", "create", "box"]).ok();
    daemon.ctl(&["csession", "run", "box", "--", "true"]).ok();
    let fx = &world.fx;
    assert_eq!(field(&fx.wait_for("cmount"), "status"), "0");
    let line = fx.wait_for("cproc");
    assert_eq!(field(&line, "content"), "OK", "{:?}", fx.lines());
    assert_eq!(field(&line, "exit"), "0");
    assert_eq!(field(&line, "status"), "0");
    assert_eq!(field(&fx.wait_for("cunmount"), "status"), "0");
    let line = fx.wait_for("after");
    assert_eq!(field(&line, "content"), "-", "unmounted: {:?}", fx.lines());
    assert_eq!(field(&line, "exit"), "5");
    // The mount is visible to the client's programs too, until unmounted (it was).
    let out = daemon.ctl(&[
        "csession",
        "run",
        "box",
        "--",
        "sh",
        "-c",
        "ls /mnt/c 2>&1; exit 0",
    ]);
    assert_eq!(out.code, 0);
    daemon.ctl(&["csession", "stop", "box"]).ok();
}

#[test]
fn idle_vm_is_stopped_after_the_timeout() {
    if !need_root("idle_vm_is_stopped_after_the_timeout") {
        return;
    }
    let mut world = World::new(vec![c("ok_mount_exec")]);
    world.idle_timeout_secs = 1;
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    wait_until("the idle VM is stopped", || {
        daemon.ctl(&["--json", "vm", "status"]).ok().json()["running"] == false
    });
    world.fx.wait_for("vm_stopping");
}
