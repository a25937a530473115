//! The plugin lifecycle through real host processes: hooks in order, vetoes and their texts, load
//! failures, API errors.

use plughost_tests::*;

#[test]
fn success_flow_mounts_executes_and_sees_every_hook() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("ok_mount_exec"), fx.rust("rust_mount_exec")]);
    let s = session(1);
    service.start_vm(&manager, &s).expect("vm starts");

    let started = fx.wait_for("vm_started session=1 uid=");
    assert_eq!(field(&started, "session"), "1");
    assert_eq!(field(&started, "user"), "user1");
    assert_eq!(field(&started, "uid"), "1001");
    assert_eq!(field(&fx.wait_for("mount "), "status"), "0");
    assert_eq!(field(&fx.wait_for("exec "), "status"), "0");
    // Both the C plugin and the Rust one read OK through the returned socket.
    assert_eq!(fx.events("read content=OK").len(), 2, "{:?}", fx.lines());
    // The mount is real in the service's state, read-only.
    let mount = service.lock().vms[&plughost::SessionId(1)].mounts["/mnt/ph"].clone();
    assert_eq!(mount, (fx.dir.path().to_path_buf(), true));

    let d = distribution(7);
    service
        .start_distribution(&manager, &s, &d)
        .expect("distribution starts");
    let line = fx.wait_for("distribution_started");
    assert_eq!(field(&line, "name"), "distro7");
    assert_eq!(field(&line, "id"), "07070707070707070707070707070707");
    assert_eq!(field(&line, "pid_ns"), "4026531836");
    assert_eq!(field(&line, "init_pid"), "4242");
    assert_eq!(field(&line, "package"), "pkg");
    assert_eq!(field(&line, "flavor"), "debian");
    assert_eq!(field(&line, "version"), "12");
    // A worker thread calls execute_binary_in_distribution 200 ms after its hook returned.
    let late = fx.wait_for("late_exec");
    assert_eq!(field(&late, "status"), "0", "{late}");
    assert_eq!(field(&late, "content"), "OK");

    service.stop_distribution(&manager, &s, &d);
    assert_eq!(
        field(&fx.wait_for("distribution_stopping"), "name"),
        "distro7"
    );
    service.stop_vm(&manager, &s);
    assert_eq!(fx.events("vm_stopping").len(), 2);
}

#[test]
fn vm_start_veto_names_plugin_and_status_and_still_delivers_vm_stopping() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("ok_mount_exec"), fx.c("veto"), fx.c("noop")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'veto' returned a fatal error: veto number 1 (status -22 (EINVAL))"
    );
    // Every plugin gets on_vm_stopping after the failed start.
    assert_eq!(fx.events("vm_stopping").len(), 2, "{:?}", fx.lines());
}

#[test]
fn plugin_error_message_is_shown_each_time_and_never_stale() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("veto")]);
    let s = session(1);
    let first = service.start_vm(&manager, &s).unwrap_err();
    let second = service.start_vm(&manager, &s).unwrap_err();
    let third = service.start_vm(&manager, &s).unwrap_err();
    assert_eq!(
        first,
        "plugin 'veto' returned a fatal error: veto number 1 (status -22 (EINVAL))"
    );
    assert_eq!(
        second,
        "plugin 'veto' returned a fatal error (status -5 (EIO))"
    );
    assert_eq!(
        third,
        "plugin 'veto' returned a fatal error: veto number 3 (status -22 (EINVAL))"
    );
    assert_eq!(field(&fx.wait_for("veto n=1"), "error_status"), "0");
}

#[test]
fn message_with_success_is_an_illegal_state() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("message_then_success")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'message_then_success' returned a fatal error: message set but success returned \
         (status -10003 (PLUGHOST_E_ILLEGAL_STATE))"
    );
    let line = fx.wait_for("message_then_success");
    assert_eq!(field(&line, "first"), "0");
    assert_eq!(field(&line, "second"), "-10003");
}

#[test]
fn distribution_start_veto_fails_the_start_without_distribution_stopping() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("distro_veto")]);
    let s = session(1);
    service.start_vm(&manager, &s).expect("vm starts");
    let err = service
        .start_distribution(&manager, &s, &distribution(1))
        .unwrap_err();
    assert_eq!(
        err,
        "plugin 'distro_veto' returned a fatal error: distribution refused by policy (status -1 (EPERM))"
    );
    service.stop_vm(&manager, &s);
    fx.wait_for("vm_stopping");
    assert!(
        fx.events("distribution_stopping").is_empty(),
        "{:?}",
        fx.lines()
    );
}

#[test]
fn failures_of_stop_and_registration_hooks_are_ignored() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("failing_teardown"), fx.c("ok_mount_exec")]);
    let s = session(1);
    let d = distribution(2);
    service.start_vm(&manager, &s).expect("vm starts");
    service
        .start_distribution(&manager, &s, &d)
        .expect("distribution starts");
    let offline = plughost::OfflineDistribution {
        id: d.id,
        name: d.name.clone(),
        package: String::new(),
        flavor: String::new(),
        version: String::new(),
    };
    manager.on_distribution_registered(&s, &offline, &*service);
    manager.on_distribution_unregistered(&s, &offline, &*service);
    service.stop_distribution(&manager, &s, &d);
    service.stop_vm(&manager, &s);
    // The later plugin still got every hook after the failing one.
    for event in [
        "distribution_registered",
        "distribution_unregistered",
        "distribution_stopping",
        "vm_stopping",
    ] {
        assert_eq!(fx.events(event).len(), 2, "{event}: {:?}", fx.lines());
    }
    // And the plugin is not latched: the next start works.
    service.start_vm(&manager, &s).expect("vm starts again");
}

#[test]
fn entry_point_failure_blocks_vm_start() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("noop"), fx.c("entry_fails")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'entry_fails' failed to load: entry point returned status -22 (EINVAL)"
    );
    let again = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(err, again);
}

#[test]
fn require_version_failure_blocks_vm_start() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("requires_future")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        format!(
            "plugin 'requires_future' requires a newer version of plughost than {}",
            plughost::service_version()
        )
    );
    assert!(fx.events("version_ok").is_empty());
}

#[test]
fn missing_library_is_a_load_failure_naming_the_plugin() {
    let service = TestService::new();
    let manager = service.manager(vec![plughost::PluginConfig::new(
        "ghost",
        "/nonexistent/ghost.so",
    )]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert!(err.starts_with("plugin 'ghost' failed to load: "), "{err}");
    assert!(err.contains("ghost.so"), "{err}");
}

#[test]
fn a_library_dlopen_refuses_is_named_by_its_configured_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("plughost-notelf")
        .tempdir_in(target_dir())
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("notelf.so");
    std::fs::write(&path, b"this is not an ELF file\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let service = TestService::new();
    let manager = service.manager(vec![plughost::PluginConfig::new("notelf", &path)]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    // dlopen() saw a sealed copy at /proc/self/fd/N; the user configured `path`.
    assert!(err.starts_with("plugin 'notelf' failed to load: "), "{err}");
    assert!(err.contains(&format!("{}: ", path.display())), "{err}");
    assert!(!err.contains("/proc/self/fd"), "{err}");
}

#[test]
fn duplicated_plugin_is_loaded_once() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("ok_mount_exec"), fx.c("ok_mount_exec")]);
    assert_eq!(manager.plugins().len(), 1);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    assert_eq!(fx.events("loaded").len(), 1);
    assert_eq!(fx.events("vm_started").len(), 1);
}

#[test]
fn api_errors_reach_the_plugin_as_statuses() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("api_errors")]);
    let s = session(1);
    service.start_vm(&manager, &s).expect("vm starts");
    let expect = [
        ("missing_host_path", "-2"),
        ("missing_binary", "-2"),
        ("unknown_session", "-10005"),
        ("null_host_path", "-14"),
        ("null_fd_out", "-14"),
        ("null_argv", "-14"),
        ("error_from_thread", "-10002"),
        ("unknown_distribution", "-10005"),
        ("container_unknown", "-38"),
        ("container_relative", "-22"),
    ];
    for (key, status) in expect {
        let line = fx.wait_for(&format!("{key}="));
        assert_eq!(field(&line, key), status, "{key}");
    }
    service.stop_vm(&manager, &s);
    assert_eq!(
        field(&fx.wait_for("error_in_stopping="), "error_in_stopping"),
        "-10002"
    );
}

#[test]
fn rust_plugin_panic_is_a_veto_with_the_panic_message() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.rust("rust_panic_in_hook")]);
    let s = session(1);
    for _ in 0..2 {
        let err = service.start_vm(&manager, &s).unwrap_err();
        assert_eq!(
            err,
            "plugin 'rust_panic_in_hook' returned a fatal error: panicked: boom in on_vm_started \
             (status -5 (EIO))"
        );
    }
    assert_eq!(fx.events("vm_stopping").len(), 2);
}

#[test]
fn plugin_output_is_logged_line_by_line_with_its_name() {
    let fx = Fixture::new();
    let service = TestService::new();
    let output = std::sync::Arc::new(CapturedOutput::default());
    let mut config = plughost::ManagerConfig::new(vec![fx.c("printer")]);
    config.output = output.clone();
    let manager = service.manager_with(config);
    let s = session(1);
    service.start_vm(&manager, &s).expect("vm starts");
    assert!(output.wait_for("printer", "hello from stdout"));
    assert!(output.wait_for("printer", "hello from stderr"));
    service.stop_vm(&manager, &s);
    drop(manager);
    // The partial last line is flushed when the host exits.
    assert!(output.wait_for("printer", "partial"));
}

/// A log reads as a story per plugin: each plugin's turn of a hook is a span naming the plugin, the
/// hook and the session, and each call it makes during the hook (served on the dispatching thread)
/// is a span inside it naming the call. Checked on the formatted log of a real dispatch.
#[test]
fn hook_and_call_spans_name_the_plugin_the_hook_the_call_and_the_session() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);
    impl Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("ok_mount_exec")]);
    let log = Log::default();
    let writer = log.clone();
    // Only this thread's events: the dispatch and the calls it serves run here.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("plughost=debug"))
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::NEW)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let s = session(3);
    tracing::subscriber::with_default(subscriber, || {
        service.start_vm(&manager, &s).expect("vm starts")
    });
    let text =
        String::from_utf8_lossy(&log.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let hook = "hook{plugin=ok_mount_exec hook=on_vm_started session=3}";
    assert!(
        text.contains(&format!("{hook}: plughost::manager: new")),
        "{text}"
    );
    for call in ["mount_folder", "execute_binary"] {
        let nested = format!("{hook}:call{{plugin=ok_mount_exec call={call} session=3}}: ");
        assert!(text.contains(&nested), "no {nested:?} in {text}");
    }
    service.stop_vm(&manager, &s);
}
