//! Hostile plugins (issue 5): each plugin of `plugins/c/hostile_*.c` attacks the service through its
//! host's channel (frames built by hand in C), its host process (fds, signals, threads) or the API.
//!
//! Each test asserts: the exact error the user sees, naming the plugin and what it did; that the host
//! and every process of the plugin (down to a forked witness that ignores SIGTERM and left the
//! session) are gone; that the same manager still serves another plugin; and that the service (this
//! test process) got back every fd and kept its memory bounded.
//!
//! The harness is `common/hostile.rs` (shared with `ring.rs`, the call ring's hostile tests). The
//! tests take one lock ([`serial`]), so each runs alone in this binary and the fd and memory counts
//! of the test process are its own.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::*;
use plughost::{Deadlines, HookKind};
use plughost_sys::process::process_is_gone;
use plughost_tests::*;

#[test]
fn datagram_over_the_frame_limit_is_a_protocol_violation() {
    let _serial = serial();
    let a = attack_in_vm_started(
        "hostile_oversized_frame",
        "plugin 'hostile_oversized_frame' crashed: protocol violation: sent a frame of 204800 \
         bytes (limit 65536)",
    );
    assert_eq!(field(&a.fx.wait_for("sending bytes="), "bytes"), "204800");
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn length_prefix_claiming_two_to_the_sixty_bytes_is_a_protocol_violation() {
    let _serial = serial();
    let rss_before = rss_kib();
    let a = attack_in_vm_started(
        "hostile_huge_length",
        "plugin 'hostile_huge_length' crashed: protocol violation: sent a malformed frame: \
         malformed message body: Hit the end of buffer, expected more data",
    );
    // The claim was not believed: nothing near 2^60 (nor even 64 MiB) was allocated.
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn frame_of_an_unknown_kind_is_a_protocol_violation() {
    let _serial = serial();
    let a = attack_in_vm_started(
        "hostile_unknown_kind",
        "plugin 'hostile_unknown_kind' crashed: protocol violation: sent a malformed frame: \
         unknown message kind 100 (HostMsg has 6)",
    );
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn valid_frame_of_the_wrong_kind_is_a_protocol_violation() {
    let _serial = serial();
    let a = attack_in_vm_started(
        "hostile_wrong_kind",
        "plugin 'hostile_wrong_kind' crashed: protocol violation: sent Loaded during on_vm_started",
    );
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn answer_to_a_hook_request_never_sent_is_a_protocol_violation() {
    let _serial = serial();
    let a = attack_in_vm_started(
        "hostile_unsolicited_reply",
        "plugin 'hostile_unsolicited_reply' crashed: protocol violation: answered hook request \
         424242 while on_vm_started was request 1",
    );
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn answer_to_a_hook_request_never_sent_outside_any_hook_is_a_protocol_violation() {
    let _serial = serial();
    let a = attack("hostile_reply_outside_hook", |c| c);
    a.service
        .start_vm(&a.manager, &session(1))
        .expect("the hook itself succeeds");
    a.fx.wait_for("sending bytes=");
    // The call pool reads the frame (no hook is in flight) and kills the host at once.
    a.assert_contained();
    let err = a
        .service
        .start_vm(&a.manager, &session(2))
        .expect_err("the next start reports the violation");
    assert_eq!(
        err,
        "plugin 'hostile_reply_outside_hook' crashed: protocol violation: answered hook request \
         424242 that was never sent"
    );
    a.assert_reported(&err);
    a.assert_service_carries_on(3);
    a.finish();
}

/// The kernel refuses more than SCM_MAX_FD (253) fds in one message, so "10 000 fds in one message"
/// cannot reach the service: the plugin tries it (and logs the kernel's refusal), then sends 253 per
/// message, as many messages as the kernel lets it.
#[test]
fn file_descriptors_from_a_plugin_are_refused_and_none_stays_open() {
    let _serial = serial();
    let a = attack("hostile_fd_flood", |c| c);
    let file = std::fs::canonicalize(a.fx.dir.path().join("file")).expect("fixture file");
    let err = a
        .service
        .start_vm(&a.manager, &session(1))
        .expect_err("the hostile plugin must fail the VM start");
    assert_eq!(
        err,
        "plugin 'hostile_fd_flood' crashed: protocol violation: sent file descriptors"
    );
    let refused = a.fx.wait_for("ten_thousand");
    assert_ne!(field(&refused, "errno"), "0", "{refused}");
    println!("the kernel on 10 000 fds in one message: {refused}");
    a.fx.wait_for("sending fds_per_message=253");
    a.assert_reported(&err);
    a.assert_contained();
    // None of the fds the plugin attached is open in the service.
    let leaked: Vec<_> = fd_targets().into_iter().filter(|t| *t == file).collect();
    assert!(leaked.is_empty(), "{} plugin fds leaked", leaked.len());
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn channel_closed_from_inside_the_plugin_is_classified_and_the_host_killed() {
    let _serial = serial();
    let a = attack("hostile_close_channel", |c| c);
    let started = Instant::now();
    let err = a
        .service
        .start_vm(&a.manager, &session(1))
        .expect_err("the hostile plugin must fail the VM start");
    assert_eq!(
        err,
        "plugin 'hostile_close_channel' crashed: closed its channel to the service"
    );
    // The host kept running after closing: the service waited its short grace, not the 10 s sleep.
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    a.fx.wait_for("closed fd=");
    assert!(a.fx.events("slept").is_empty());
    a.assert_reported(&err);
    a.assert_contained();
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn plugin_closing_fds_0_to_1023_ends_its_host_and_is_classified() {
    let _serial = serial();
    let a = attack("hostile_close_all_fds", |c| c);
    let err = a
        .service
        .start_vm(&a.manager, &session(1))
        .expect_err("the hostile plugin must fail the VM start");
    assert_eq!(
        err,
        "plugin 'hostile_close_all_fds' crashed: closed its channel to the service"
    );
    a.fx.wait_for("closed_all");
    a.assert_reported(&err);
    a.assert_contained();
    a.assert_service_carries_on(2);
    a.finish();
}

/// `SOCK_SEQPACKET` delivers empty packets: one from a host that keeps its channel open is not
/// end-of-file (which would cost the 2 s grace of a closed channel) but a protocol violation.
#[test]
fn empty_frame_is_a_protocol_violation() {
    let _serial = serial();
    let a = attack("hostile_empty_frame", |c| c);
    let started = Instant::now();
    let err = a
        .service
        .start_vm(&a.manager, &session(1))
        .expect_err("the hostile plugin must fail the VM start");
    assert_eq!(
        err,
        "plugin 'hostile_empty_frame' crashed: protocol violation: sent an empty frame"
    );
    // Killed for the frame at once, not after the grace a host that closed its channel gets.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    a.fx.wait_for("sending bytes=0");
    assert!(a.fx.events("slept").is_empty());
    a.assert_reported(&err);
    a.assert_contained();
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn plugin_that_ignores_sigterm_and_hijacks_its_main_thread_is_killed_at_the_hook_deadline() {
    let _serial = serial();
    let deadline = Duration::from_millis(300);
    let a = attack("hostile_signal_handlers", |c| {
        c.deadlines(Deadlines::default().with(HookKind::VmStarted, deadline))
    });
    a.service
        .start_vm(&a.manager, &session(1))
        .expect("the first start succeeds");
    a.fx.wait_for("hijacked");
    // SIGTERM to the plugin's process changes nothing (the service never relies on it: it sends
    // SIGKILL). Without a pid namespace the plugin runs in the host itself.
    let plugin_process = a
        .processes
        .plugin
        .first()
        .copied()
        .unwrap_or(a.processes.host);
    let pid = rustix::process::Pid::from_raw(plugin_process as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!process_is_gone(plugin_process), "SIGTERM ended the plugin");
    let started = Instant::now();
    let err = a
        .service
        .start_vm(&a.manager, &session(2))
        .expect_err("the hijacked host cannot answer");
    let took = started.elapsed();
    assert_eq!(
        err,
        "plugin 'hostile_signal_handlers' did not answer on_vm_started within 300 ms"
    );
    assert!(took >= deadline && took < PATIENCE, "{took:?}");
    assert!(a.fx.events("vm_started_again").is_empty());
    a.assert_reported(&err);
    a.assert_contained();
    a.assert_service_carries_on(3);
    a.finish();
}

#[test]
fn plugin_that_ignores_sigterm_and_shutdown_is_killed_when_the_manager_drops() {
    let _serial = serial();
    let a = attack("hostile_signal_handlers", |c| c);
    a.service
        .start_vm(&a.manager, &session(1))
        .expect("the first start succeeds");
    a.fx.wait_for("hijacked");
    let Attack {
        manager,
        processes,
        fds_before,
        ..
    } = a;
    let started = Instant::now();
    drop(manager);
    let took = started.elapsed();
    assert!(took < PATIENCE, "dropping the manager took {took:?}");
    processes.assert_gone();
    assert_fds_back(fds_before, processes.name);
}

#[test]
fn callback_flood_from_64_threads_leaves_the_service_responsive_and_bounded() {
    let _serial = serial();
    let fds_before = open_fds();
    let rss_before = rss_kib();
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("hostile_callback_flood"), fx.c("ok_mount_exec")]);
    let host = manager.plugins()[0].host_pid.expect("host pid");
    // The flood starts in the first hook and lasts 1 s: the hook waits 300 ms of it, then the other
    // plugin's hook and a second VM start run while it goes on (served by the pool meanwhile).
    let started = Instant::now();
    service
        .start_vm(&manager, &session(1))
        .expect("the first VM starts");
    let first = started.elapsed();
    let second_started = Instant::now();
    service
        .start_vm(&manager, &session(2))
        .expect("a second VM starts during the flood");
    let second = second_started.elapsed();
    // Once the flood's second is over, one more hook drains whatever calls are still queued, so that
    // this test checks the rest deterministically.
    while started.elapsed() < FLOOD + Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(10));
    }
    service
        .start_vm(&manager, &session(3))
        .expect("a third VM starts");
    let done = fx.wait_for("flood_done");
    assert!(
        first < PATIENCE && second < PATIENCE,
        "{first:?} {second:?}"
    );
    assert_eq!(
        fx.events("read content=OK").len(),
        3,
        "the other plugin served every start: {:?}",
        fx.lines()
    );
    assert_eq!(field(&done, "threads"), "64");
    assert_eq!(field(&done, "other"), "0", "{done}");
    let calls: u64 = field(&done, "calls").parse().expect("calls");
    let ok: u64 = field(&done, "ok").parse().expect("ok");
    assert!(ok >= 64, "{done}");
    // Every call was served (none lost, none refused), and the plugin is still in good standing.
    let info = &manager.plugins()[0];
    assert_eq!(info.api_calls, calls, "{done}");
    assert_eq!(info.state, "ready");
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB during {calls} calls"
    );
    drop(manager);
    assert!(eventually(PATIENCE, || process_is_gone(host)));
    assert_fds_back(fds_before, "the flood");
    println!("flood: {done}; first start {first:?}, second start {second:?}, RSS +{grown} KiB");
}

/// A host that stops reading its channel while its plugin floods the service with calls must not
/// hold the call pool, which serves every plugin of the manager: the service kills it within a bounded
/// time, and another plugin's calls outside hooks are still served meanwhile.
#[test]
fn host_that_stops_reading_its_replies_is_killed_and_does_not_hold_the_call_pool() {
    let _serial = serial();
    let a = attack("hostile_unread_replies", |c| c);
    let s = session(1);
    a.service.start_vm(&a.manager, &s).expect("the VM starts");
    a.fx.wait_for("flooding fd=");
    let flooding = Instant::now();
    // `ok_mount_exec` runs `cat` in the distribution 200 ms after its hook: a call outside hooks,
    // served by the pool.
    a.service
        .start_distribution(&a.manager, &s, &distribution(1))
        .expect("the distribution starts");
    let late = a.fx.wait_for("late_exec");
    let served_after = flooding.elapsed();
    assert_eq!(field(&late, "content"), "OK", "{late}");
    let killed = eventually(Duration::from_secs(20), || {
        process_is_gone(a.processes.host)
    });
    let killed_after = flooding.elapsed();
    assert!(
        served_after < Duration::from_secs(2),
        "another plugin's call waited {served_after:?} behind the flood"
    );
    assert!(
        killed && killed_after < Duration::from_secs(10),
        "{killed_after:?}"
    );
    let err = a
        .service
        .start_vm(&a.manager, &session(2))
        .expect_err("the next start reports the crash");
    assert_eq!(
        err,
        "plugin 'hostile_unread_replies' crashed: protocol violation: stopped reading the \
         service's replies (none read for 500 ms)"
    );
    a.assert_reported(&err);
    a.assert_contained();
    a.assert_service_carries_on(3);
    a.finish();
}

/// Counts what plugins print, the way a logger touches every byte, keeping none of it.
#[derive(Default)]
struct CountingSink {
    lines: std::sync::atomic::AtomicU64,
    checksum: std::sync::atomic::AtomicU64,
}

impl plughost::OutputSink for CountingSink {
    fn line(&self, _plugin: &str, line: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let sum = line
            .bytes()
            .fold(0u64, |a, b| a.rotate_left(5) ^ u64::from(b));
        self.checksum.fetch_xor(sum, Relaxed);
        // The monitor logs a burst, then 20 lines a second, and says how many it did not log.
        let not_logged = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(" lines not logged: more than 20 a second]"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        self.lines.fetch_add(1 + not_logged, Relaxed);
    }
}

/// The service logs plugin output on the thread that also sees hosts die: a plugin that writes without
/// end must not keep it from noticing another host's death. `fork_then_crash` crashes while its forked
/// child holds the channel open, so only the death watch (pidfd) can end its hook.
#[test]
fn output_flood_does_not_delay_the_detection_of_another_crash() {
    let _serial = serial();
    let fds_before = open_fds();
    let rss_before = rss_kib();
    let fx = Fixture::new();
    let service = TestService::new();
    let child = marker("of");
    let sink = Arc::new(CountingSink::default());
    let mut config = plughost::ManagerConfig::new(vec![
        fx.c("hostile_output_flood"),
        fx.c("fork_then_crash")
            .env("PH_MARKER", child.as_str())
            .deadlines(Deadlines::default().with(HookKind::VmStarted, Duration::from_secs(20))),
    ]);
    config.output = sink.clone();
    let manager = service.manager_with(config);
    let flooder = manager.plugins()[0].host_pid.expect("host pid");
    // Start the flood first, with the crasher out of the way.
    manager.disable_plugin("fork_then_crash").expect("disable");
    service
        .start_vm(&manager, &session(1))
        .expect("the VM starts");
    fx.wait_for("flooding");
    let lines = || sink.lines.load(std::sync::atomic::Ordering::Relaxed);
    assert!(eventually(PATIENCE, || lines() > 1000), "no flood seen");
    manager.enable_plugin("fork_then_crash").expect("enable");
    let started = Instant::now();
    let err = service
        .start_vm(&manager, &session(2))
        .expect_err("fork_then_crash crashes");
    let took = started.elapsed();
    assert_null_write_in(&err, "fork_then_crash", "on_vm_started");
    assert!(took < PATIENCE, "the crash was reported after {took:?}");
    assert!(
        eventually(PATIENCE, || pids_named(&child).is_empty()),
        "the crashed plugin's child survived"
    );
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // The flooder itself is a legal (if noisy) plugin: still ready, then shut down with the manager.
    assert_eq!(manager.plugins()[0].state, "ready");
    println!(
        "output flood: {} lines logged, crash reported after {took:?}",
        lines()
    );
    drop(manager);
    assert!(eventually(PATIENCE, || process_is_gone(flooder)));
    assert_fds_back(fds_before, "the output flood");
}

/// How long `hostile_callback_flood` floods, from the start of its first hook.
const FLOOD: Duration = Duration::from_secs(1);

/// Calls that arrive while a hook ends must be served by the call pool, without waiting for the next
/// hook to that host. The flood keeps calls arriving; the VM starts make hook after hook end.
#[test]
fn calls_arriving_as_a_hook_ends_are_served_without_another_hook() {
    let _serial = serial();
    for round in 0..12 {
        let fx = Fixture::new();
        let service = TestService::new();
        let manager = service.manager(vec![fx.c("hostile_callback_flood")]);
        let started = Instant::now();
        let mut hooks = 0;
        while started.elapsed() < FLOOD {
            service
                .start_vm(&manager, &session(1 + hooks % 2))
                .expect("the VM starts");
            hooks += 1;
        }
        // No hook from here on: the pool alone must serve what is left of the flood.
        assert!(
            eventually(PATIENCE, || !fx.events("flood_done").is_empty()),
            "round {round}: flood calls stuck after {hooks} hooks (the pool was not woken)"
        );
        let done = fx.wait_for("flood_done");
        let calls: u64 = field(&done, "calls").parse().expect("calls");
        assert_eq!(manager.plugins()[0].api_calls, calls, "{done}");
    }
}

/// Dozens of hostile hosts, one after another: the service's fds and memory do not grow with them.
#[test]
fn repeated_violations_leave_no_fds_and_bounded_memory() {
    let _serial = serial();
    let fx = Fixture::new();
    let service = TestService::new();
    let round = || {
        for name in [
            "hostile_fd_flood",
            "hostile_oversized_frame",
            "hostile_huge_length",
            "hostile_unknown_kind",
        ] {
            let manager = service.manager(vec![fx.c(name)]);
            for attempt in 0..5 {
                if attempt > 0 {
                    manager.restart_plugin(name).expect("restart");
                }
                let err = service
                    .start_vm(&manager, &session(1))
                    .expect_err("the hostile plugin must fail the VM start");
                let expected = format!("plugin '{name}' crashed: protocol violation: ");
                assert!(err.starts_with(&expected), "{err}");
            }
        }
    };
    round();
    let fds = open_fds();
    let rss = rss_kib();
    round();
    round();
    assert_fds_back(fds, "40 more hostile hosts");
    let grown = rss_kib().saturating_sub(rss);
    println!(
        "40 hostile hosts: RSS +{grown} KiB, {} fds ({fds} before)",
        open_fds()
    );
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB over 40 hostile hosts"
    );
}
