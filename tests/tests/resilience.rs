//! Watchdog, restart policy, manual control and metrics (issue 6), with real hosts.

use std::time::{Duration, Instant};

use plughost::{Deadlines, HookKind, PluginState, RestartPolicy};
use plughost_tests::*;

fn on_crash(max_restarts: u32, initial_ms: u64) -> RestartPolicy {
    RestartPolicy::OnCrash {
        max_restarts,
        window: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(initial_ms),
        backoff_max: Duration::from_secs(5),
    }
}

/// Waits until the plugin's backoff has elapsed (the restart itself happens at the next operation).
fn wait_out_backoff(manager: &plughost::PluginManager, index: usize) {
    let until = match &manager.plugins()[index].state {
        PluginState::BackingOff { until, .. } => *until,
        other => panic!("expected backing-off, got {other}"),
    };
    while std::time::SystemTime::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn hanging_hook_fails_its_operation_at_the_deadline_and_the_restarted_plugin_works() {
    let fx = Fixture::new();
    let service = TestService::new();
    let deadline = Duration::from_millis(300);
    let plugin = fx
        .c("fail_once")
        .env("PH_FAIL", "hang")
        .deadlines(Deadlines::default().with(HookKind::VmStarted, deadline))
        .restart(on_crash(3, 50));
    let manager = service.manager(vec![plugin]);
    let s = session(1);
    let started = Instant::now();
    let err = service.start_vm(&manager, &s).unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err,
        "plugin 'fail_once' did not answer on_vm_started within 300 ms"
    );
    // It waited for the deadline, and the watchdog (not some other timeout) ended the wait.
    assert!(
        took >= deadline && took < Duration::from_secs(10),
        "{took:?}"
    );
    fx.wait_for("hanging");
    // on_vm_stopping after the failed start: the plugin is backing off, so it is skipped.
    let info = &manager.plugins()[0];
    assert_eq!(
        info.crashes_by_cause
            .iter()
            .find(|c| c.0 == "hung")
            .map(|c| c.1),
        Some(1)
    );
    wait_out_backoff(&manager, 0);
    service
        .start_vm(&manager, &s)
        .expect("the restarted host serves the next start");
    assert_eq!(
        fx.events("loaded").len(),
        2,
        "a new host ran the entry point again"
    );
    fx.wait_for("vm_started");
    let info = &manager.plugins()[0];
    assert_eq!(info.restarts, 1);
    assert_eq!(info.state, "ready");
}

#[test]
fn plugin_that_crashes_on_every_start_is_restarted_up_to_its_limit_with_growing_backoff() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("crash_in_vm_started").restart(on_crash(2, 40))]);
    let s = session(1);
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let err = service.start_vm(&manager, &s).unwrap_err();
        assert_eq!(
            err,
            "plugin 'crash_in_vm_started' crashed: killed by signal SIGSEGV"
        );
        match manager.plugins()[0].state.clone() {
            PluginState::BackingOff { delay, .. } => {
                // While it backs off, a start fails fast naming the next attempt.
                let fast = service.start_vm(&manager, &s).unwrap_err();
                assert!(fast.starts_with(&err), "{fast}");
                assert!(fast.contains("next restart attempt at"), "{fast}");
                delays.push(delay);
                wait_out_backoff(&manager, 0);
            }
            PluginState::Crashed { cause } => {
                assert_eq!(attempt, 3, "latched too early");
                assert_eq!(cause, "killed by signal SIGSEGV");
            }
            other => panic!("unexpected state {other}"),
        }
    }
    assert_eq!(
        delays,
        [Duration::from_millis(40), Duration::from_millis(80)]
    );
    let info = &manager.plugins()[0];
    assert_eq!(info.restarts, 2);
    assert_eq!(info.crashes, 3);
    // Latched now: the next start fails fast with the crash, without a new host.
    let err = service.start_vm(&manager, &s).unwrap_err();
    assert_eq!(
        err,
        "plugin 'crash_in_vm_started' crashed: killed by signal SIGSEGV"
    );
    assert_eq!(fx.events("about_to_crash").len(), 3);
}

#[test]
fn manual_restart_clears_a_latch() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("fail_once")]);
    let s = session(1);
    let err = service.start_vm(&manager, &s).unwrap_err();
    assert_eq!(err, "plugin 'fail_once' crashed: killed by signal SIGSEGV");
    assert_eq!(service.start_vm(&manager, &s).unwrap_err(), err, "latched");
    manager.restart_plugin("fail_once").expect("restart");
    service
        .start_vm(&manager, &s)
        .expect("works after a manual restart");
    assert_eq!(manager.plugins()[0].restarts, 1);
    assert!(matches!(
        manager.restart_plugin("nope"),
        Err(plughost::ControlError::UnknownPlugin(_))
    ));
}

#[test]
fn disabled_plugin_gets_no_hooks_until_enabled() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("veto"), fx.c("ok_mount_exec")]);
    let s = session(1);
    manager.disable_plugin("veto").expect("disable");
    assert_eq!(manager.plugins()[0].state, "disabled");
    assert!(manager.plugins()[0].host_pid.is_none());
    service
        .start_vm(&manager, &s)
        .expect("the vetoing plugin is disabled");
    service.stop_vm(&manager, &s);
    manager.enable_plugin("veto").expect("enable");
    let err = service.start_vm(&manager, &s).unwrap_err();
    assert_eq!(
        err,
        "plugin 'veto' returned a fatal error: veto number 1 (status -22 (EINVAL))"
    );
}

#[test]
fn status_and_openmetrics_report_hooks_calls_and_crashes() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("ok_mount_exec"), fx.c("crash_in_vm_started")]);
    let s = session(1);
    service.start_vm(&manager, &s).unwrap_err();
    let info = manager.plugins();
    assert_eq!(info[0].api_calls, 2, "mount + exec");
    assert!(info[0].hooks_served >= 2, "on_vm_started + on_vm_stopping");
    assert!(info[0].uptime.is_some());
    let vm_started = info[0]
        .latency
        .iter()
        .find(|l| l.hook == HookKind::VmStarted)
        .unwrap();
    assert_eq!(vm_started.count, 1);
    assert!(vm_started.p50 <= vm_started.p99);
    assert_eq!(info[1].crashes, 1);

    let text = manager.openmetrics();
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{text}"));
    for family in [
        "plughost_plugin_up",
        "plughost_plugin",
        "plughost_plugin_restarts",
        "plughost_plugin_crashes",
        "plughost_plugin_api_calls",
        "plughost_hook_duration_seconds",
    ] {
        assert!(
            parsed.families.contains_key(family),
            "{family} missing in\n{text}"
        );
    }
    assert!(
        text.contains(
            "plughost_plugin_crashes_total{plugin=\"crash_in_vm_started\",cause=\"signal\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("plughost_plugin_api_calls_total{plugin=\"ok_mount_exec\"} 2"),
        "{text}"
    );
}

#[test]
fn teardown_hook_that_blocks_and_ignores_sigterm_is_cut_at_its_deadline() {
    let fx = Fixture::new();
    let service = TestService::new();
    let deadline = Duration::from_millis(300);
    let plugin = fx
        .c("hang_in_vm_stopping")
        .deadlines(Deadlines::default().with(HookKind::VmStopping, deadline));
    let mut manager = service.manager(vec![plugin, fx.c("ok_mount_exec")]);
    let s = session(1);
    service.start_vm(&manager, &s).expect("vm starts");
    let host = manager.plugins()[0].host_pid.expect("host pid");
    let started = Instant::now();
    service.stop_vm(&manager, &s);
    let took = started.elapsed();
    assert!(
        took >= deadline && took < Duration::from_secs(10),
        "{took:?}"
    );
    fx.wait_for("stopping_forever");
    // The teardown went on to the next plugin, and the stuck host is gone with its crash recorded.
    fx.wait_for("vm_stopping session=1");
    assert!(eventually(Duration::from_secs(2), || {
        plughost_sys::process::process_is_gone(host)
    }));
    let info = &manager.plugins()[0];
    assert_eq!(
        info.crashes_by_cause
            .iter()
            .find(|c| c.0 == "hung")
            .map(|c| c.1),
        Some(1)
    );
    // Shutting the manager down does not wait on anything left.
    let started = Instant::now();
    manager.shutdown();
    assert!(started.elapsed() < Duration::from_secs(5));
}
