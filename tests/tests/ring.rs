//! The call ring (`plughost_sys::ring`) against hostile plugins, and under a storm of calls.
//!
//! The ring's memory is mapped in the host, so the plugin can write anything there at any time.
//! `hostile_ring_writer.c` finds the mapping (`plugins/c/ph_ring.h`) and writes a frame the test
//! encodes here with `plughost_wire::encode` (or garbage), with a length word that may lie, into a
//! request slot or the hook lane, during a hook or after it; `hostile_ring_spinner.c` keeps waking
//! the hook's dispatcher without ever answering.
//!
//! Each hostile test asserts the exact error the user sees (naming the plugin and what it did),
//! that the host and the plugin's witness are gone, that the same manager still serves another
//! plugin, and that the service got its fds back; the harness is `common/hostile.rs`, shared with
//! `hostile.rs`. The storm test checks that no call is lost or served twice while hooks come and go.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::hostile::*;
use plughost::{Deadlines, HookKind, PluginConfig};
use plughost_tests::*;
use plughost_wire::{encode, ApiCall, HostMsg, RequestId, SessionId};

const WRITER: &str = "hostile_ring_writer";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn frame(msg: &HostMsg) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(msg, &mut buf).expect("encode");
    buf
}

/// The frame the host itself sends for an API call through the ring (request id 0: the slot is
/// the request).
fn call_frame(call: ApiCall) -> Vec<u8> {
    frame(&HostMsg::Call {
        id: RequestId(0),
        call,
    })
}

/// `execute_binary(1, "/bin/touch", [touch, <path>])`: its reply carries an fd, so it may only
/// travel on the socket. If the service ever ran it, `path` would exist. The tests put `path` in a
/// directory of their own, which the plugin cannot write (Landlock): only the service could create
/// it.
fn touch_frame(path: &Path) -> Vec<u8> {
    call_frame(ApiCall::ExecuteBinary {
        session: SessionId(1),
        path: "/bin/touch".into(),
        argv: vec!["touch".into(), path.to_string_lossy().into_owned()],
    })
}

/// Where `hostile_ring_writer` posts its frame, and when.
#[derive(Clone, Copy)]
enum Target {
    Slot,
    Lane,
    /// The hook-request lane (service -> host): the host's own main thread reads it.
    Hook,
}

#[derive(Clone, Copy)]
enum When {
    /// During `on_vm_started` (the hook's dispatcher consumes the ring).
    Hook,
    /// Once the hook round trip is over (the call pool consumes the ring).
    AfterHook,
}

fn writer(
    target: Target,
    when: When,
    frame: &[u8],
    claimed_len: Option<u32>,
) -> impl FnOnce(PluginConfig) -> PluginConfig {
    let hex = hex(frame);
    move |c| {
        let c = c
            .env("PH_FRAME_HEX", hex)
            .env(
                "PH_RING_TARGET",
                match target {
                    Target::Slot => "slot",
                    Target::Lane => "lane",
                    Target::Hook => "hook",
                },
            )
            .env(
                "PH_RING_WHEN",
                match when {
                    When::Hook => "hook",
                    When::AfterHook => "after_hook",
                },
            );
        match claimed_len {
            Some(len) => c.env("PH_FRAME_LEN", len.to_string()),
            None => c,
        }
    }
}

/// The plugin found the ring the service created for it (and its doorbell).
fn assert_found_the_ring(a: &Attack) {
    let found = a.fx.wait_for("ring name=");
    assert_eq!(field(&found, "name"), format!("plughost-ring:{}", a.name));
    assert_ne!(field(&found, "doorbell"), "-1", "{found}");
}

/// The hostile plugin made no API call the service ran (its counter counts every call served).
fn assert_no_call_ran(a: &Attack) {
    assert_eq!(a.manager.plugins()[0].api_calls, 0);
}

/// `plugins/c/ph_ring.h` repeats `plughost_sys::ring::layout` (which the unit test
/// `the_published_layout_matches_the_struct` pins to the struct): compiled here, its numbers must be
/// the published ones, or the hostile plugins would write somewhere the service never looks.
#[test]
fn ph_ring_h_mirrors_the_published_layout() {
    use plughost_sys::ring::{self, layout};
    let root = workspace();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    let names = [
        "SIZE",
        "UP_SEQ",
        "UP_SOCKET",
        "UP_PENDING",
        "UP_MAIN_WAITING",
        "OWNER",
        "SERVICE_WAITING",
        "HOOK_SEQ",
        "DOWN_SOCKET",
        "CLOSED",
        "LANE_OFFSET",
        "HOOK_OFFSET",
        "SLOTS_OFFSET",
        "SLOT_SIZE",
        "SLOT_DATA",
        "SLOT_BY_LANE",
        "SLOT_BYTES",
        "SLOTS",
        "STATE_FREE",
        "STATE_WRITING",
        "STATE_REQUEST",
        "STATE_SERVING",
        "STATE_REPLY",
    ];
    let prints: String = names
        .iter()
        .map(|n| format!("    printf(\"{n}=%lu\\n\", (unsigned long)PH_RING_{n});\n"))
        .collect();
    std::fs::write(
        &source,
        format!(
            "#include \"ph_test.h\"\n#include \"ph_ring.h\"\nint main(void)\n{{\n{prints}    \
             return 0;\n}}\n"
        ),
    )
    .expect("write layout.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = std::process::Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg("-I")
        .arg(root.join("plugins/c"))
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(status.success(), "compiling ph_ring.h failed");
    let output = std::process::Command::new(&exe)
        .output()
        .expect("run layout");
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let published = [
        layout::SIZE,
        layout::UP_SEQ,
        layout::UP_SOCKET,
        layout::UP_PENDING,
        layout::UP_MAIN_WAITING,
        layout::OWNER,
        layout::SERVICE_WAITING,
        layout::HOOK_SEQ,
        layout::DOWN_SOCKET,
        layout::CLOSED,
        layout::LANE,
        layout::HOOK,
        layout::SLOTS,
        layout::SLOT_SIZE,
        layout::SLOT_DATA,
        layout::SLOT_BY_LANE,
        ring::SLOT_BYTES,
        ring::SLOTS,
        layout::STATE_FREE as usize,
        layout::STATE_WRITING as usize,
        layout::STATE_REQUEST as usize,
        layout::STATE_SERVING as usize,
        layout::STATE_REPLY as usize,
    ];
    let expected: String = names
        .iter()
        .zip(published)
        .map(|(n, v)| format!("{n}={v}\n"))
        .collect();
    assert_eq!(printed, expected);
}

/// Posts `frame` during `on_vm_started`; the start fails with `expected`; then the usual checks.
fn attack_through_the_ring(target: Target, frame: &[u8], claimed_len: Option<u32>, expected: &str) {
    let rss_before = rss_kib();
    let a = attack_in_vm_started_with(
        WRITER,
        writer(target, When::Hook, frame, claimed_len),
        expected,
    );
    assert_found_the_ring(&a);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn slot_length_past_the_slot_is_a_protocol_violation() {
    let _serial = serial();
    let mount = mount_frame(1, "/", "x");
    attack_through_the_ring(
        Target::Slot,
        &mount,
        Some(u32::MAX),
        "plugin 'hostile_ring_writer' crashed: protocol violation: sent a frame of 4294967295 \
         bytes in slot 0 (a slot holds 960) of the call ring",
    );
}

/// The lane's length word is bounded like a slot's. The error names the lane as "slot
/// 18446744073709551615" (`usize::MAX`, the index `take_answer` gives `copy_out`): reported as a
/// wart of `RingError::BadLength`; update this text when the message is fixed.
#[test]
fn lane_length_past_the_lane_is_a_protocol_violation() {
    let _serial = serial();
    let done = frame(&HostMsg::HookDone {
        id: RequestId(1),
        status: 0,
        message: None,
    });
    attack_through_the_ring(
        Target::Lane,
        &done,
        Some(u32::MAX),
        "plugin 'hostile_ring_writer' crashed: protocol violation: sent a frame of 4294967295 \
         bytes on the hook lane (it holds 960)",
    );
}

#[test]
fn garbage_in_a_slot_is_a_protocol_violation() {
    let _serial = serial();
    attack_through_the_ring(
        Target::Slot,
        &[0xff; 64],
        None,
        "plugin 'hostile_ring_writer' crashed: protocol violation: sent a malformed frame through \
         the call ring: bad frame magic [ff, ff]",
    );
}

/// A valid header, then a body cut short: decoded from the copy, bounded by the copy's length.
#[test]
fn truncated_frame_in_a_slot_is_a_protocol_violation() {
    let _serial = serial();
    let mount = mount_frame(1, &"/".repeat(200), "x");
    attack_through_the_ring(
        Target::Slot,
        &mount[..mount.len() / 2],
        None,
        "plugin 'hostile_ring_writer' crashed: protocol violation: sent a malformed frame through \
         the call ring: malformed message body: Hit the end of buffer, expected more data",
    );
}

/// `mount_folder(session, host_path, "/mnt/<name>", read-only, name)`.
fn mount_frame(session: u32, host_path: &str, name: &str) -> Vec<u8> {
    call_frame(ApiCall::MountFolder {
        session: SessionId(session),
        host_path: host_path.into(),
        vm_path: format!("/mnt/{name}"),
        read_only: true,
        name: name.into(),
    })
}

/// `execute_binary(1, "/bin/true", [true])`: its reply carries an fd, which the service passes on
/// the ring's fd lane before writing the reply into the slot.
fn true_frame() -> Vec<u8> {
    call_frame(ApiCall::ExecuteBinary {
        session: SessionId(1),
        path: "/bin/true".into(),
        argv: vec!["true".into()],
    })
}

const HOARDER: &str = "plugin 'hostile_ring_writer' crashed: protocol violation: did not take the \
                       file descriptors passed with its replies";

/// A plugin that calls `execute_binary` through a slot again and again (writing the ring itself)
/// and never takes the fds the service passes with the replies: the fd lane fills, the service's
/// send fails at once instead of blocking, the host is killed for it, and every fd the service
/// passed or failed to pass is closed again (the lane dies with the host).
#[test]
fn a_host_that_never_takes_its_fds_is_killed_and_the_service_keeps_none() {
    let _serial = serial();
    hoard_the_fd_lane(&true_frame(), false);
}

/// The same through slots marked `by_lane` (the caller says it waits for its reply on the fd
/// lane, and never reads it): whether the replies carry an fd (`execute_binary`) or not (an
/// unknown session's `mount_folder`), the lane fills, the service's send fails at once, and the
/// host is killed for it.
#[test]
fn a_host_that_asks_for_replies_on_the_fd_lane_and_never_reads_them_is_killed() {
    let _serial = serial();
    hoard_the_fd_lane(&true_frame(), true);
    hoard_the_fd_lane(&mount_frame(99, "/", "lane"), true);
}

/// A VM start whose plugin posts `frame` in a slot again and again (marked `by_lane` or not) and
/// never reads the fd lane: killed once the lane is full, the service unharmed.
fn hoard_the_fd_lane(frame: &[u8], by_lane: bool) {
    let repeat = |c: PluginConfig| {
        writer(Target::Slot, When::Hook, frame, None)(c)
            .env("PH_RING_REPEAT", "100000")
            .env("PH_RING_BY_LANE", if by_lane { "1" } else { "0" })
    };
    let a = or_abort("a VM start with an fd hoarder", || {
        attack_in_vm_started_with(WRITER, repeat, HOARDER)
    });
    assert_found_the_ring(&a);
    let served = a.manager.plugins()[0].api_calls;
    assert!(served > 32, "the lane filled after {served} calls");
    a.assert_service_carries_on(2);
    a.finish();
}

#[test]
fn call_posted_on_the_hook_lane_is_a_protocol_violation() {
    let _serial = serial();
    let mount = mount_frame(1, "/", "lane");
    attack_through_the_ring(
        Target::Lane,
        &mount,
        None,
        "plugin 'hostile_ring_writer' crashed: protocol violation: sent a call on the hook lane \
         during on_vm_started",
    );
}

/// The lane carries hook answers only: a call found there must be refused, not run.
#[test]
fn call_posted_on_the_hook_lane_is_refused_before_it_runs() {
    let _serial = serial();
    let probe = tempfile::tempdir().expect("tempdir");
    let touched = probe.path().join("touched");
    let a = attack_in_vm_started_with(
        WRITER,
        writer(Target::Lane, When::Hook, &touch_frame(&touched), None),
        "plugin 'hostile_ring_writer' crashed: protocol violation: sent a call on the hook lane \
         during on_vm_started",
    );
    assert_no_call_ran(&a);
    a.assert_service_carries_on(2);
    assert!(!touched.exists(), "the service ran the refused call");
    a.finish();
}

#[test]
fn hook_answer_with_the_wrong_request_id_on_the_lane_is_a_protocol_violation() {
    let _serial = serial();
    let done = frame(&HostMsg::HookDone {
        id: RequestId(424242),
        status: 0,
        message: None,
    });
    attack_through_the_ring(
        Target::Lane,
        &done,
        None,
        "plugin 'hostile_ring_writer' crashed: protocol violation: answered hook request 424242 \
         while on_vm_started was request 1",
    );
}

/// A frame published once the hook is over is the call pool's: the pool classifies it and kills
/// the host; the hook itself succeeded, so the next start reports it.
fn attack_outside_any_hook(frame: &[u8], expected: &str) -> Attack {
    attack_outside_any_hook_on(Target::Slot, frame, None, expected)
}

fn attack_outside_any_hook_on(
    target: Target,
    frame: &[u8],
    claimed_len: Option<u32>,
    expected: &str,
) -> Attack {
    let a = attack(WRITER, writer(target, When::AfterHook, frame, claimed_len));
    a.service
        .start_vm(&a.manager, &session(1))
        .expect("the hook itself succeeds");
    assert_found_the_ring(&a);
    a.fx.wait_for("sending bytes=");
    a.assert_contained();
    let err = a
        .service
        .start_vm(&a.manager, &session(2))
        .expect_err("the next start reports the violation");
    assert_eq!(err, expected);
    a.assert_reported(&err);
    a.assert_service_carries_on(3);
    a
}

#[test]
fn garbage_in_a_slot_outside_any_hook_is_classified_by_the_call_pool() {
    let _serial = serial();
    let a = attack_outside_any_hook(
        &[0xff; 64],
        "plugin 'hostile_ring_writer' crashed: protocol violation: sent a malformed frame through \
         the call ring: bad frame magic [ff, ff]",
    );
    a.finish();
}

/// The hook-request lane (service -> host) is the host's to read: a plugin that writes garbage
/// there and wakes its host's main thread as the service would fails only its own host, which ends
/// at once (the service never reads that lane back). The hook before it succeeded; the next start
/// reports the host's end, and the service carries on.
#[test]
fn garbage_on_the_hook_request_lane_ends_only_its_own_host() {
    let _serial = serial();
    let a = attack_outside_any_hook_on(Target::Hook, &[0xff; 64], None, HOOK_LANE_SCRIBBLED);
    a.fx.wait_for("sending bytes=64 target=hook");
    a.finish();
}

/// The same with a length word past the lane (the copy is bounded by the host, not trusted).
#[test]
fn hook_request_lane_length_past_the_lane_ends_only_its_own_host() {
    let _serial = serial();
    let a = attack_outside_any_hook_on(
        Target::Hook,
        &true_frame(),
        Some(u32::MAX),
        HOOK_LANE_SCRIBBLED,
    );
    a.finish();
}

/// What the user sees of a host whose main thread found garbage on its hook-request lane.
const HOOK_LANE_SCRIBBLED: &str = "plugin 'hostile_ring_writer' crashed: exited with status 0";

/// The same outside any hook: the call pool passes the fds, and its threads never block either.
#[test]
fn a_host_that_never_takes_its_fds_outside_any_hook_is_killed_by_the_call_pool() {
    let _serial = serial();
    let a = or_abort("the call pool with an fd hoarder", || {
        let a = attack(WRITER, |c| {
            writer(Target::Slot, When::AfterHook, &true_frame(), None)(c)
                .env("PH_RING_REPEAT", "100000")
        });
        a.service
            .start_vm(&a.manager, &session(1))
            .expect("the hook itself succeeds");
        assert_found_the_ring(&a);
        a.fx.wait_for("sending bytes=");
        a.processes.assert_gone();
        let err = a
            .service
            .start_vm(&a.manager, &session(2))
            .expect_err("the next start reports the violation");
        assert_eq!(err, HOARDER);
        a.assert_reported(&err);
        a
    });
    a.assert_service_carries_on(3);
    a.finish();
}

/// Threads racing for their fds on the fd lane each get their own (8 threads x 40
/// `execute_binary` calls, each printing its own text), and error answers carry none, whether the
/// hook's dispatcher or the call pool serves them. Three rounds each.
#[test]
fn fds_of_calls_from_many_threads_reach_their_own_callers() {
    let _serial = serial();
    for when in ["hook", "after_hook"] {
        for round in 0..3 {
            let fds_before = open_fds();
            let fx = Fixture::new();
            let service = TestService::new();
            let manager = service.manager(vec![fx.c("fd_calls_from_threads").env("PH_WHEN", when)]);
            service
                .start_vm(&manager, &session(1))
                .expect("the VM starts");
            let done = fx.wait_for("fd_calls ");
            assert_eq!(
                done, "fd_calls ok=320 wrong=0 failed=0 missing_error=0",
                "{when}, round {round}"
            );
            assert_eq!(manager.plugins()[0].state, "ready");
            service.stop_vm(&manager, &session(1));
            drop(manager);
            assert_fds_back(fds_before, "fd_calls_from_threads");
        }
    }
}

/// Every turn of the dispatcher checks the deadline first: a host that wakes it without end (and
/// never answers) is killed at the deadline like one that sleeps.
#[test]
fn host_that_keeps_waking_the_dispatcher_is_killed_at_the_hook_deadline() {
    let _serial = serial();
    let deadline = Duration::from_millis(300);
    let a = attack("hostile_ring_spinner", |c| {
        c.deadlines(Deadlines::default().with(HookKind::VmStarted, deadline))
    });
    let started = Instant::now();
    let err = a
        .service
        .start_vm(&a.manager, &session(1))
        .expect_err("the spinner never answers");
    let took = started.elapsed();
    assert_eq!(
        err,
        "plugin 'hostile_ring_spinner' did not answer on_vm_started within 300 ms"
    );
    assert!(took >= deadline && took < PATIENCE, "{took:?}");
    a.fx.wait_for("spinning");
    assert!(a.fx.events("no_ring").is_empty(), "{:?}", a.fx.lines());
    a.assert_reported(&err);
    a.assert_contained();
    a.assert_service_carries_on(2);
    a.finish();
}

/// `call_storm.c`: 8 threads of 3000 calls each.
const STORM_CALLS: u64 = 8 * 3000;
/// Far more than a storm takes even on one busy core: only a call that lost its wake-up (and so
/// never returns) runs into it.
const STORM_PATIENCE: Duration = Duration::from_secs(120);

/// Calls cross hook boundaries both ways (published while a hook is in flight and served by its
/// dispatcher, or published as it ends and left to the pool), and none is lost, served twice or
/// refused. The VM starts and stops in a loop while three quarters of the storm runs; the rest has
/// no hook to rescue it, so a call whose doorbell wake-up the pool lost would hang its thread.
#[test]
fn call_storm_across_hooks_loses_no_call_and_no_wake_up() {
    let _serial = serial();
    for round in 0..3 {
        let fx = Fixture::new();
        let service = TestService::new();
        let manager = service.manager(vec![fx.c("call_storm")]);
        let mut cycles = 0u32;
        while manager.plugins()[0].api_calls < STORM_CALLS * 3 / 4
            && fx.events("storm_done").is_empty()
        {
            let s = session(1 + cycles % 2);
            service.start_vm(&manager, &s).expect("the VM starts");
            service.stop_vm(&manager, &s);
            cycles += 1;
        }
        let done = fx.wait_for_within("storm_done", STORM_PATIENCE);
        assert_eq!(field(&done, "threads"), "8", "round {round}: {done}");
        assert_eq!(field(&done, "other"), "0", "round {round}: {done}");
        assert_eq!(field(&done, "shutting_down"), "0", "round {round}: {done}");
        let calls: u64 = field(&done, "calls").parse().expect("calls");
        assert_eq!(calls, STORM_CALLS, "round {round}: {done}");
        let info = &manager.plugins()[0];
        assert_eq!(info.api_calls, calls, "round {round}: {done}");
        assert_eq!(info.state, "ready", "round {round}");
        // Each call ran exactly once, in some hook's scope or on the pool's default callbacks.
        let in_scope = service.calls_in_scope.load(Ordering::Relaxed);
        let on_default = service.calls_on_default.load(Ordering::Relaxed);
        assert_eq!(
            (in_scope + on_default) as u64,
            calls,
            "round {round}: {done}"
        );
        println!(
            "round {round}: {cycles} start/stop cycles; {in_scope} calls served in a hook's \
             scope, {on_default} by the pool; {done}"
        );
    }
}

/// Runs `f`, and ends the whole test binary if it has not returned within `PATIENCE`: what these
/// tests guard against is a service thread blocked forever, which would otherwise hang the suite
/// instead of failing it.
fn or_abort<T>(what: &'static str, f: impl FnOnce() -> T) -> T {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watched = done.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        while !watched.load(Ordering::Acquire) {
            if started.elapsed() > PATIENCE * 4 {
                eprintln!(
                    "{what} did not return within {:?}: a service thread is blocked",
                    PATIENCE * 4
                );
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let result = f();
    done.store(true, Ordering::Release);
    result
}

/// The doorbell's open file is shared with the host, which can make it blocking and fill its
/// counter: a service that wrote it (to hand the host to its pool after a hook, or when a pool
/// thread gives up its turn) would block forever. The service never does I/O on it.
#[test]
fn a_host_that_jams_its_doorbell_cannot_block_the_service() {
    let _serial = serial();
    let call = call_frame(ApiCall::ProcessGetExitCode {
        process: plughost_wire::ProcessHandle(12345),
    });
    let a = attack("hostile_doorbell_jam", |c| {
        c.env("PH_FRAME_HEX", hex(&call))
    });
    let started = Instant::now();
    or_abort("the VM start with a jammed doorbell", || {
        a.service
            .start_vm(&a.manager, &session(1))
            .expect("the jammer's hook returns 0")
    });
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    assert_eq!(a.fx.events("jammed write=8").len(), 1, "{:?}", a.fx.lines());
    a.fx.wait_for("returned");
    // The pool keeps serving the jammer's slots (it never needs the doorbell for that), and a second
    // VM start with the jammer still enabled goes through.
    or_abort("a second VM start", || {
        a.service
            .start_vm(&a.manager, &session(3))
            .expect("a second VM starts")
    });
    let info = &a.manager.plugins()[0];
    assert_eq!(info.state, "ready", "{info:?}");
    assert!(
        eventually(PATIENCE, || a.manager.plugins()[0].api_calls > 0),
        "the jammer's calls were never served"
    );
    a.assert_service_carries_on(2);
    a.finish();
}

/// A host that keeps its socket full during a hook (and reads its replies slowly, so each reply
/// waits for room) cannot hold the dispatcher past the hook's deadline: it is checked before every
/// frame, not only between turns.
#[test]
fn a_host_that_floods_its_socket_during_a_hook_is_killed_at_the_deadline() {
    let _serial = serial();
    let deadline = Duration::from_millis(300);
    let call = frame(&HostMsg::Call {
        id: RequestId(1 << 40),
        call: ApiCall::ProcessGetExitCode {
            process: plughost_wire::ProcessHandle(12345),
        },
    });
    let a = attack("hostile_socket_flood", |c| {
        c.env("PH_FRAME_HEX", hex(&call))
            .deadlines(Deadlines::default().with(HookKind::VmStarted, deadline))
    });
    let started = Instant::now();
    let err = or_abort("the VM start with a socket flood", || {
        a.service
            .start_vm(&a.manager, &session(1))
            .expect_err("the flooder never answers")
    });
    let took = started.elapsed();
    assert_eq!(
        err,
        "plugin 'hostile_socket_flood' did not answer on_vm_started within 300 ms"
    );
    // The deadline, plus at most one reply's send timeout (500 ms).
    assert!(took >= deadline && took < PATIENCE, "{took:?}");
    a.fx.wait_for("flooding");
    assert!(a.fx.events("returned").is_empty());
    a.assert_reported(&err);
    a.assert_contained();
    a.assert_service_carries_on(2);
    a.finish();
}

/// Issue 13 point 6: a call a plugin thread published before its hook began, that no pool thread
/// had begun serving when it began, is served with the hook's scope (never on the default
/// callbacks), whatever the timing.
///
/// The test holds the service's state lock, which the default callbacks take (as `start_vm` does
/// for a whole dispatch). `scope_race.c` launches one call (a pool thread takes it and blocks in the
/// default callbacks), then seven at once (the other pool thread claims what it finds, takes one
/// and blocks: whatever else it claimed waits behind it). Then the hook is dispatched, and it
/// waits until every call but the two blocked ones completed: the ones the pool had claimed but not
/// begun must reach the dispatcher. 200 rounds; each counts exactly 6 calls in scope.
#[test]
fn calls_a_pool_thread_claimed_before_a_hook_began_are_served_with_its_scope() {
    let _serial = serial();
    const ROUNDS: usize = 200;
    const STUCK: usize = 2; // the call pool's threads
    let fx = Fixture::new();
    let control = fx.dir.path().join("control");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &control,
        rustix::fs::Mode::from_raw_mode(0o666),
    )
    .expect("mkfifo");
    rustix::fs::chmod(&control, rustix::fs::Mode::from_raw_mode(0o666)).expect("chmod");
    // Read-write: the open does not wait for the plugin, and the FIFO never reaches end of file.
    let mut control = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&control)
        .expect("open the control FIFO");
    let service = TestService::new();
    let manager = service.manager(vec![fx
        .c("scope_race")
        .env(
            "PH_CONTROL",
            fx.dir.path().join("control").to_string_lossy(),
        )
        .env("PH_STUCK", STUCK.to_string())]);
    let entered = |n: usize| {
        assert!(
            eventually(PATIENCE, || service.calls_on_default.load(Ordering::SeqCst)
                >= n),
            "the pool threads did not take the first calls: {} of {n} on the default \
             callbacks, {} in scope; {:?}",
            service.calls_on_default.load(Ordering::SeqCst),
            service.calls_in_scope.load(Ordering::SeqCst),
            fx.lines()
        );
    };
    use std::io::Write;
    for round in 0..ROUNDS {
        let scope_before = service.calls_in_scope.load(Ordering::SeqCst);
        let default_before = service.calls_on_default.load(Ordering::SeqCst);
        let scope = Scope::new(&service);
        control.write_all(&[1]).expect("launch one call");
        entered(default_before + 1);
        control.write_all(&[7]).expect("launch seven calls");
        entered(default_before + STUCK);
        let result = or_abort("a hook racing claimed calls", || {
            manager.on_vm_started(&session(1), &Default::default(), &scope)
        });
        let in_scope = service.calls_in_scope.load(Ordering::SeqCst) - scope_before;
        let on_default = service.calls_on_default.load(Ordering::SeqCst) - default_before;
        drop(scope);
        assert!(
            result.is_ok(),
            "round {round}: {result:?}; {:?}",
            fx.lines()
        );
        assert_eq!((in_scope, on_default), (6, STUCK), "round {round}");
        // The two blocked calls finish on the default callbacks once the lock is free (before
        // the next round takes it again).
        let served = 8 * (round as u64 + 1);
        assert!(
            eventually(PATIENCE, || manager.plugins()[0].api_calls == served),
            "round {round}: {:?}",
            manager.plugins()[0]
        );
    }
    assert!(fx.events("stuck").is_empty());
}
