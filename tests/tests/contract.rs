//! The contract's rules at the library's edge (docs/PLUGIN_ABI.md): one latch, the first crash in
//! time; a host that dies between hooks fails the next operation before any hook is delivered;
//! lazy activation; a veto stops the delivery. Real hosts, real C plugins.

use std::time::Duration;

use plughost::PluginManager;
use plughost_sys::Pidfd;
use plughost_tests::*;

/// SIGKILLs the host of plugin `index` and waits until the manager has recorded its death (the
/// monitor latches it, no operation needed).
fn kill_host(manager: &PluginManager, index: usize) {
    let pid = manager.plugins()[index].host_pid.expect("host pid");
    Pidfd::open(pid)
        .expect("pidfd")
        .kill()
        .expect("kill the host");
    assert!(
        eventually(Duration::from_secs(5), || manager.plugins()[index]
            .last_error
            .is_some()),
        "the death of plugin {index}'s host was not recorded: {:?}",
        manager.plugins()[index].state
    );
}

#[test]
fn host_dead_between_hooks_fails_the_next_start_before_any_hook() {
    for _ in 0..5 {
        let fx = Fixture::new();
        let service = TestService::new();
        let manager = service.manager(vec![fx.c("printer"), fx.c("noop")]);
        let s = session(1);
        service.start_vm(&manager, &s).expect("vm starts");
        service.stop_vm(&manager, &s);
        kill_host(&manager, 1);
        assert_eq!(manager.plugins()[1].state, "crashed");
        let err = service.start_vm(&manager, &s).unwrap_err();
        assert_eq!(err, "plugin 'noop' crashed: killed by signal SIGKILL");
        // printer, before it in order, was not told of a start that was bound to fail.
        assert_eq!(fx.events("vm_started").len(), 1, "{:?}", fx.lines());
        assert_eq!(manager.plugins()[0].state, "ready");
    }
}

#[test]
fn first_crash_in_time_is_the_one_every_operation_reports() {
    for round in 0..6 {
        let fx = Fixture::new();
        let service = TestService::new();
        let manager = service.manager(vec![fx.c("printer"), fx.c("noop")]);
        // Even rounds: the later plugin in order crashes first.
        let (first, second) = if round % 2 == 0 { (1, 0) } else { (0, 1) };
        kill_host(&manager, first);
        kill_host(&manager, second);
        let name = ["printer", "noop"][first];
        let expected = format!("plugin '{name}' crashed: killed by signal SIGKILL");
        for _ in 0..3 {
            assert_eq!(
                service.start_vm(&manager, &session(1)).unwrap_err(),
                expected
            );
        }
        assert!(fx.events("vm_started").is_empty());
    }
}

#[test]
fn lazy_plugin_starts_at_its_first_hook_and_shows_not_started_until_then() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("printer").lazy(), fx.c("noop")]);
    let info = manager.plugins();
    assert_eq!(info[0].state, "not-started");
    assert_eq!(info[0].state.to_string(), "not started");
    assert!(info[0].host_pid.is_none());
    assert_eq!(info[1].state, "ready");
    // Only noop loaded so far (both log `loaded` from their entry point).
    fx.wait_for("loaded");
    assert_eq!(fx.events("loaded").len(), 1, "{:?}", fx.lines());
    service.start_vm(&manager, &session(1)).expect("vm starts");
    assert_eq!(fx.events("loaded").len(), 2);
    assert_eq!(fx.events("vm_started").len(), 1);
    let info = manager.plugins();
    assert_eq!(info[0].state, "ready");
    assert!(info[0].host_pid.is_some());
    assert_eq!(info[0].restarts, 0);
    // Started once: the next hook reuses the host.
    let pid = info[0].host_pid;
    service.start_vm(&manager, &session(2)).expect("vm starts");
    assert_eq!(manager.plugins()[0].host_pid, pid);
    assert_eq!(fx.events("loaded").len(), 2);
}

#[test]
fn lazy_plugin_that_fails_to_load_fails_its_first_operation_and_stays_latched() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("printer"), fx.c("entry_fails").lazy()]);
    assert!(manager.load_errors().is_empty());
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'entry_fails' failed to load: entry point returned status -22 (EINVAL)"
    );
    // The fail-fast ran before any hook: printer saw no start.
    assert!(fx.events("vm_started").is_empty());
    assert_eq!(service.start_vm(&manager, &session(1)).unwrap_err(), err);
    assert_eq!(manager.plugins()[1].state, "failed");
}

#[test]
fn a_veto_stops_the_delivery_to_later_plugins() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("veto"), fx.c("printer")]);
    for n in 1..=3 {
        service.start_vm(&manager, &session(1)).unwrap_err();
        assert_eq!(fx.events("veto n=").len(), n);
        // printer never sees the start, but gets the on_vm_stopping every plugin gets.
        assert!(fx.events("vm_started").is_empty(), "{:?}", fx.lines());
        assert_eq!(fx.events("vm_stopping").len(), 2 * n, "{:?}", fx.lines());
    }
}

/// A manager whose hosts are the fake host of `tests/src/bin/fake-host.rs` in mode `mode`.
fn fake_host_manager(
    service: &std::sync::Arc<TestService>,
    fx: &Fixture,
    mode: &str,
) -> PluginManager {
    let mut config = plughost::ManagerConfig::new(vec![fx.c("noop").env("PH_FAKE", mode)]);
    config.host_binary = Some(env!("CARGO_BIN_EXE_fake-host").into());
    PluginManager::new(config, service.clone()).expect("manager starts")
}

#[test]
fn host_of_another_protocol_version_is_refused_at_the_handshake() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = fake_host_manager(&service, &fx, "hello-protocol");
    let expected = "plugin 'noop' failed to load: host speaks protocol 2, the service speaks 1";
    let errors: Vec<String> = manager
        .load_errors()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors, [expected]);
    assert_eq!(
        service.start_vm(&manager, &session(1)).unwrap_err(),
        expected
    );
    assert_eq!(manager.plugins()[0].state, "failed");
}

#[test]
fn frame_of_another_protocol_version_is_a_protocol_violation() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = fake_host_manager(&service, &fx, "frame-version");
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert!(
        err.starts_with("plugin 'noop' crashed: protocol violation: ")
            && err.contains("protocol version 2 is not the supported version 1"),
        "{err}"
    );
}

#[test]
fn host_crash_during_the_load_is_latched_and_fails_every_start() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("printer"), fx.c("crash_in_entry")]);
    fx.wait_for("loading");
    let expected = "plugin 'crash_in_entry' crashed: killed by signal SIGSEGV";
    let errors: Vec<String> = manager
        .load_errors()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors, [expected]);
    for _ in 0..3 {
        assert_eq!(
            service.start_vm(&manager, &session(1)).unwrap_err(),
            expected
        );
    }
    assert!(fx.events("vm_started").is_empty());
    assert!(fx.events("did_not_crash").is_empty());
    assert_eq!(manager.plugins()[1].state, "crashed");
}

#[test]
fn crash_in_a_teardown_hook_fails_the_next_operation_fast() {
    for _ in 0..3 {
        let fx = Fixture::new();
        let service = TestService::new();
        let manager = service.manager(vec![fx.c("printer"), fx.c("crash_in_vm_stopping")]);
        let s = session(1);
        service.start_vm(&manager, &s).expect("vm starts");
        // The crash in a hook that may not veto does not fail the stop...
        service.stop_vm(&manager, &s);
        fx.wait_for("about_to_crash");
        // ...but it is latched: the next start fails before any plugin gets on_vm_started.
        let err = service.start_vm(&manager, &s).unwrap_err();
        assert_eq!(
            err,
            "plugin 'crash_in_vm_stopping' crashed: killed by signal SIGSEGV"
        );
        assert_eq!(fx.events("vm_started").len(), 2, "{:?}", fx.lines());
        assert!(fx.events("did_not_crash").is_empty());
    }
}

#[test]
fn hooks_reach_plugins_in_configuration_order() {
    for reversed in [false, true] {
        let fx = Fixture::new();
        let service = TestService::new();
        let mut plugins = vec![fx.c("printer"), fx.c("ok_mount_exec")];
        if reversed {
            plugins.reverse();
        }
        let manager = service.manager(plugins);
        let s = session(1);
        for _ in 0..3 {
            service.start_vm(&manager, &s).expect("vm starts");
            service.stop_vm(&manager, &s);
        }
        // printer logs `vm_started` / `vm_stopping`, ok_mount_exec the same words with fields.
        let order: Vec<String> = fx
            .lines()
            .into_iter()
            .filter(|l| l.starts_with("vm_"))
            .map(|l| {
                let who = if l.contains(' ') {
                    "ok_mount_exec"
                } else {
                    "printer"
                };
                format!("{} {who}", l.split(' ').next().unwrap_or_default())
            })
            .collect();
        let (first, second) = if reversed {
            ("ok_mount_exec", "printer")
        } else {
            ("printer", "ok_mount_exec")
        };
        let round = [
            format!("vm_started {first}"),
            format!("vm_started {second}"),
            format!("vm_stopping {first}"),
            format!("vm_stopping {second}"),
        ];
        let expected: Vec<String> = (0..3).flat_map(|_| round.iter().cloned()).collect();
        assert_eq!(order, expected, "{:?}", fx.lines());
    }
}
