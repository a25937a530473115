//! Re-entrancy and races, with real host processes and real plugin threads, many iterations each.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use plughost_tests::*;

#[test]
fn four_plugin_threads_inside_a_hook_all_mount_and_execute() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("threads_in_vm_started")]);
    let s = session(1);
    for i in 1..=20 {
        service.start_vm(&manager, &s).expect("vm starts");
        let lines = fx.events("threads ");
        assert_eq!(lines.len(), i);
        let line = &lines[i - 1];
        assert_eq!(field(line, "ok"), "4", "{line}");
        assert_eq!(field(line, "max_concurrency"), "4", "{line}");
        service.stop_vm(&manager, &s);
    }
    // Every one of those calls came in during the hook: served in the dispatch's scope.
    assert_eq!(service.calls_on_default.load(Ordering::Relaxed), 0);
    assert_eq!(service.calls_in_scope.load(Ordering::Relaxed), 20 * 8);
}

#[test]
fn hook_that_joins_a_worker_blocked_in_an_api_call_completes() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("join_worker")]);
    let s = session(1);
    for i in 1..=50 {
        // The service holds its state lock across the dispatch: the worker's calls must be served
        // on the dispatching thread, or this deadlocks.
        service.start_vm(&manager, &s).expect("vm starts");
        let lines = fx.events("joined ");
        assert_eq!(lines.len(), i);
        assert_eq!(lines[i - 1], "joined mount=0 exec=0 content=OK");
        service.stop_vm(&manager, &s);
    }
}

#[test]
fn api_calls_looping_across_vm_shutdown_never_crash_and_the_next_start_works() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("api_loop")]);
    let s = session(1);
    for i in 1..=25 {
        service.start_vm(&manager, &s).expect("vm starts");
        std::thread::sleep(Duration::from_millis(10));
        service.stop_vm(&manager, &s);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(manager.plugins()[0].state, "ready", "iteration {i}");
    }
    service
        .start_vm(&manager, &s)
        .expect("vm starts after the loop");
    service.stop_vm(&manager, &s);
    let last = fx.events("loop ").pop().expect("loop counters");
    assert!(field(&last, "ok").parse::<u64>().unwrap() > 0, "{last}");
    assert!(
        field(&last, "not_running").parse::<u64>().unwrap() > 0,
        "{last}"
    );
    assert_eq!(field(&last, "other"), "0", "{last}");
    assert_eq!(field(&last, "not_found"), "0", "{last}");
    // Between VMs the calls were served on pool threads (no hook in flight).
    assert!(service.calls_on_default.load(Ordering::Relaxed) > 0);
}

#[test]
fn killing_the_service_takes_every_host_and_everything_they_spawned() {
    if !rustix::process::geteuid().is_root() {
        // The plugin double-forks a setsid() daemon, which only a pid namespace holds.
        println!("skipped: needs root (only a pid namespace holds a setsid() daemon)");
        return;
    }
    for _ in 0..3 {
        let fx = Fixture::new();
        let name = marker("svc");
        let mut service = Command::new(env!("CARGO_BIN_EXE_test-service"))
            .arg(fx.dir.path())
            .arg(&fx.log)
            .arg(&name)
            .arg(c_plugin("fork_daemon"))
            .arg(c_plugin("noop"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start test-service");
        let mut line = String::new();
        let stdout = service.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("READY line");
        let hosts: Vec<u32> = line
            .trim()
            .strip_prefix("READY")
            .expect(&line)
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(hosts.len(), 2, "{line}");
        assert!(eventually(Duration::from_secs(2), || pids_named(&name)
            .len()
            == 1));

        service.kill().expect("SIGKILL the service");
        let _ = service.wait();
        let gone = eventually(Duration::from_secs(1), || {
            pids_named(&name).is_empty()
                && hosts
                    .iter()
                    .all(|&pid| plughost_sys::process::process_is_gone(pid))
        });
        assert!(
            gone,
            "left behind: daemon {:?}, hosts {:?}",
            pids_named(&name),
            hosts
        );
    }
}
