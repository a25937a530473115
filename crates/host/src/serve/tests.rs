//! The host's side of a teardown (`PLUGIN_ABI.md`, "API"; the header's "Shutdown"): calls waiting
//! for their reply when the service sends `Shutdown` or closes the channel, and calls made after
//! that, all return `PLUGHOST_E_SHUTTING_DOWN` (the call did not run). Real threads on a real
//! socket pair, many rounds.

use super::*;
use plughost_wire::{ApiCall, HostMsg, SessionId};
use std::sync::atomic::Ordering;

fn mount() -> ApiCall {
    ApiCall::MountFolder {
        session: SessionId(1),
        host_path: "/".into(),
        vm_path: "/mnt/t".into(),
        read_only: true,
        name: "t".into(),
    }
}

/// Four plugin threads call; the service receives the four calls, then ends the channel with `end`.
fn late_calls_get_shutting_down(end: impl FnOnce(Seqpacket)) {
    const THREADS: usize = 4;
    let (service, host) = Seqpacket::pair().expect("socket pair");
    // 'static like the real demux: plugin threads may outlive anything else.
    let demux: &'static Demux = Box::leak(Box::new(Demux::new(host)));
    let callers: Vec<_> = (0..THREADS)
        .map(|_| std::thread::spawn(move || demux.call(mount()).err()))
        .collect();
    let mut buf = vec![0; MAX_FRAME];
    let mut fds = Vec::new();
    for _ in 0..THREADS {
        let len = service.recv(&mut buf, &mut fds).expect("recv a call");
        let msg: HostMsg = decode(&buf[..len]).expect("decode");
        assert!(matches!(msg, HostMsg::Call { .. }));
    }
    // Every call is now waiting for its reply.
    end(service);
    for caller in callers {
        assert_eq!(
            caller.join().expect("caller thread"),
            Some(PLUGHOST_E_SHUTTING_DOWN)
        );
    }
    assert_eq!(demux.call(mount()).err(), Some(PLUGHOST_E_SHUTTING_DOWN));
    assert!(matches!(
        demux.next_hook(&mut HookFrame::new()),
        MainEvent::Closed
    ));
}

#[test]
fn calls_waiting_at_a_shutdown_and_after_it_get_shutting_down() {
    for _ in 0..50 {
        late_calls_get_shutting_down(|service| {
            let mut frame = Vec::new();
            encode(&ServiceMsg::Shutdown, &mut frame).expect("encode");
            service.send(&frame, &[]).expect("send Shutdown");
            // The service keeps its end open: the Shutdown alone ends the calls.
            std::mem::forget(service);
        });
    }
}

#[test]
fn calls_waiting_when_the_channel_closes_and_after_it_get_shutting_down() {
    for _ in 0..50 {
        late_calls_get_shutting_down(drop);
    }
}

// The fd lane: calls whose answer carries an fd take the ring too.

use plughost_wire::ApiReply;
use std::os::fd::AsFd;

/// A demux on the ring, and the service's ends (its socket and ring).
fn demux() -> (&'static Demux, Seqpacket, Ring) {
    demux_checking_every(IDLE_CHECK)
}

/// [`demux`] whose main thread, asleep on the ring, reads the socket anyway every `idle_check`.
fn demux_checking_every(idle_check: std::time::Duration) -> (&'static Demux, Seqpacket, Ring) {
    let (service_socket, host_socket) = Seqpacket::pair().expect("socketpair");
    let (service_ring, ends) = Ring::create("test").expect("ring");
    let mut demux = Demux::new(host_socket);
    demux.idle_check = idle_check;
    let demux: &'static Demux = Box::leak(Box::new(demux));
    demux.use_ring(Ring::attach(ends).expect("attach"));
    (demux, service_socket, service_ring)
}

fn pipe_with(text: &[u8]) -> OwnedFd {
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    rustix::io::write(&write, text).expect("write");
    read
}

/// Serves the one call the demux puts in the ring: passes `passed` (request id, text) on the fd
/// lane and answers naming `named`.
fn serve_one(ring: &Ring, passed: Option<(u64, &[u8])>, named: Option<u64>) {
    let claimed = loop {
        let seen = ring.seq();
        let claimed = ring.claim_requests();
        if claimed != 0 {
            break claimed;
        }
        ring.wait(seen, std::time::Duration::from_millis(20));
    };
    let index = claimed.trailing_zeros() as usize;
    let mut frame = Vec::new();
    ring.request(index, &mut frame).expect("request");
    let Ok(HostMsg::Call { id, .. }) = decode::<HostMsg>(&frame) else {
        panic!("not a call: {frame:?}");
    };
    let passed = passed.map(|(tag, text)| (if tag == 0 { id.0 } else { tag }, pipe_with(text)));
    let reply = ServiceMsg::Reply {
        id: RequestId(named.unwrap_or(id.0)),
        reply: ApiReply::Fd,
    };
    let mut out = Vec::new();
    encode(&reply, &mut out).expect("encode");
    // As the service does: a caller waiting on the fd lane gets its reply in the slot, then its
    // request id (with its own fd, if one was passed for it) on the lane; another id's fd goes
    // on the lane first, as for a caller waiting on its slot.
    if ring.answers_on_lane(index) {
        let own = match &passed {
            Some((tag, fd)) if *tag == id.0 => Some(fd.as_fd()),
            Some((tag, fd)) => {
                ring.send_fd(*tag, fd.as_fd()).expect("send fd");
                None
            }
            None => None,
        };
        ring.reply_on_lane(index, id.0, &out, own)
            .expect("reply on the lane");
        return;
    }
    if let Some((tag, fd)) = &passed {
        ring.send_fd(*tag, fd.as_fd()).expect("send fd");
    }
    ring.reply(index, &out);
}

fn exec() -> ApiCall {
    ApiCall::ExecuteBinary {
        session: SessionId(1),
        path: "/bin/true".into(),
        argv: vec!["true".into()],
    }
}

#[test]
fn an_fd_answer_through_the_ring_brings_the_fd_passed_for_that_call() {
    let (demux, _socket, ring) = demux();
    let service = std::thread::spawn(move || serve_one(&ring, Some((0, b"mine")), None));
    let (reply, fd) = demux.call(exec()).expect("call");
    service.join().expect("service");
    assert_eq!(reply, ApiReply::Fd);
    let mut buf = [0u8; 8];
    let fd = fd.expect("an fd");
    let n = rustix::io::read(&fd, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"mine");
}

/// A reply naming another request than the call's is refused: the call fails and takes no fd,
/// not even one that is there.
#[test]
fn a_reply_naming_another_request_takes_no_fd() {
    let (demux, _socket, ring) = demux();
    let service = std::thread::spawn(move || {
        serve_one(&ring, Some((12345, b"other")), Some(12345));
        ring
    });
    let result = demux.call(exec());
    let ring = service.join().expect("service");
    assert!(
        matches!(result, Err(PLUGHOST_E_SHUTTING_DOWN)),
        "{result:?}"
    );
    // The fd passed for request 12345 is still there for it.
    let fd = demux
        .ring
        .get()
        .expect("ring")
        .take_fd(12345)
        .expect("kept");
    let mut buf = [0u8; 8];
    let n = rustix::io::read(&fd, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"other");
    drop(ring);
}

/// A reply naming the call whose fd never came fails at once instead of waiting for it.
#[test]
fn a_reply_whose_fd_never_came_fails_without_blocking() {
    let (demux, _socket, ring) = demux();
    let service = std::thread::spawn(move || serve_one(&ring, None, None));
    let result = demux.call(exec());
    service.join().expect("service");
    assert!(
        matches!(result, Err(PLUGHOST_E_SHUTTING_DOWN)),
        "{result:?}"
    );
}

// The main thread asleep on the ring (module docs, "The main thread sleeps on the ring"): hooks
// come down the hook-request lane or the socket, and whatever the service sends on the socket
// reaches it.

use plughost_wire::{Hook, Session, VmSettings};

/// The frame of `on_vm_started` as request `id`, for a user whose name is `name_len` bytes.
fn hook_frame(id: u64, name_len: usize) -> Vec<u8> {
    let msg = ServiceMsg::Hook {
        id: RequestId(id),
        hook: Hook::VmStarted {
            session: Session {
                id: SessionId(1),
                uid: 2,
                gid: 3,
                user_name: "u".repeat(name_len),
            },
            settings: VmSettings { flags: 0 },
        },
    };
    let mut frame = Vec::new();
    encode(&msg, &mut frame).expect("encode");
    frame
}

/// Sends `msg` on the socket as the service does: then wakes the host's main thread.
fn send_down(socket: &Seqpacket, ring: &Ring, msg: &ServiceMsg) {
    let mut frame = Vec::new();
    encode(msg, &mut frame).expect("encode");
    socket.send(&frame, &[]).expect("send");
    ring.wake_main_for_socket();
}

fn hook_id(frame: &HookFrame) -> u64 {
    frame.hook().expect("a hook").0 .0
}

/// The host's main thread: serves hooks (answering each on the lane) until the channel closes;
/// the request ids it served.
fn serve_hooks(demux: &'static Demux) -> std::thread::JoinHandle<Vec<u64>> {
    serve_hooks_as(demux, "idle-main")
}

/// [`serve_hooks`] on a thread of that name (a test that looks for its own main thread among the
/// process's tasks names it: the other tests, running in parallel, have theirs).
fn serve_hooks_as(demux: &'static Demux, name: &str) -> std::thread::JoinHandle<Vec<u64>> {
    let main = std::thread::Builder::new().name(name.into());
    main.spawn(move || {
        let mut frame = HookFrame::new();
        let mut ids = Vec::new();
        while let MainEvent::Hook = demux.next_hook(&mut frame) {
            let id = hook_id(&frame);
            ids.push(id);
            let done = HostMsg::HookDone {
                id: RequestId(id),
                status: 0,
                message: None,
            };
            demux.answer_hook(&done).expect("answer");
        }
        ids
    })
    .expect("spawn the main thread")
}

/// The dispatcher's side of one hook: posted on the hook-request lane, or on the socket when it
/// does not fit; then its answer, taken from the lane.
fn dispatch(socket: &Seqpacket, ring: &Ring, frame: &[u8]) -> u64 {
    if !ring.post_hook(frame) {
        socket.send(frame, &[]).expect("send the hook");
        ring.wake_main_for_socket();
    }
    let mut answer = Vec::new();
    ring.set_dispatcher(true);
    loop {
        let seen = ring.seq();
        if ring.take_answer(&mut answer).expect("answer") {
            break;
        }
        ring.wait(seen, std::time::Duration::from_millis(20));
    }
    match decode::<HostMsg>(&answer) {
        Ok(HostMsg::HookDone { id, .. }) => id.0,
        other => panic!("not an answer: {other:?}"),
    }
}

/// Many hooks, every third too large for the hook-request lane: each reaches the main thread once,
/// in order, whichever way it came, and the `Shutdown` after them ends it.
#[test]
fn hooks_reach_the_main_thread_on_the_hook_lane_and_too_large_ones_on_the_socket() {
    let (demux, socket, ring) = demux_checking_every(NEVER);
    let main = serve_hooks(demux);
    let sent: Vec<u64> = (1..=300).collect();
    for &id in &sent {
        let name_len = if id % 3 == 0 {
            2 * plughost_sys::ring::SLOT_BYTES
        } else {
            8
        };
        assert_eq!(dispatch(&socket, &ring, &hook_frame(id, name_len)), id);
    }
    send_down(&socket, &ring, &ServiceMsg::Shutdown);
    assert_eq!(main.join().expect("main thread"), sent);
    assert_eq!(
        demux.idle_timeouts.load(Ordering::Relaxed),
        0,
        "a wake-up was lost"
    );
}

/// An idle check long enough that a lost wake-up shows as a timeout (the test then fails, after
/// that long) rather than being covered by the check.
const NEVER: std::time::Duration = std::time::Duration::from_secs(10);

/// A `Shutdown` on the socket reaches the main thread asleep on the ring, racing its fall asleep.
#[test]
fn a_shutdown_on_the_socket_wakes_the_main_thread_asleep_on_the_ring() {
    for round in 0..100 {
        let (demux, socket, ring) = demux_checking_every(NEVER);
        let main = serve_hooks(demux);
        assert_eq!(dispatch(&socket, &ring, &hook_frame(round, 8)), round);
        send_down(&socket, &ring, &ServiceMsg::Shutdown);
        assert_eq!(main.join().expect("main thread"), [round]);
        assert_eq!(
            demux.idle_timeouts.load(Ordering::Relaxed),
            0,
            "a wake-up was lost"
        );
    }
}

/// A plugin thread waiting for a socket reply is the socket's reader while the main thread sleeps
/// on the ring: the reply is its own, and the `Shutdown` right behind it reaches the main thread
/// (the leaving reader wakes it through the ring), whoever reads it.
#[test]
fn a_shutdown_behind_a_socket_reply_reaches_the_main_thread() {
    for _ in 0..100 {
        let (demux, socket, ring) = demux_checking_every(NEVER);
        let main = serve_hooks(demux);
        // A call too large for a slot takes the socket.
        let caller = std::thread::spawn(move || {
            demux.call(ApiCall::MountFolder {
                session: SessionId(1),
                host_path: "h".repeat(2 * plughost_sys::ring::SLOT_BYTES),
                vm_path: "/mnt/t".into(),
                read_only: true,
                name: "t".into(),
            })
        });
        let mut buf = vec![0; MAX_FRAME];
        let mut fds = Vec::new();
        let len = socket.recv(&mut buf, &mut fds).expect("recv the call");
        let Ok(HostMsg::Call { id, .. }) = decode::<HostMsg>(&buf[..len]) else {
            panic!("not a call");
        };
        let reply = ServiceMsg::Reply {
            id,
            reply: ApiReply::Status(0),
        };
        send_down(&socket, &ring, &reply);
        send_down(&socket, &ring, &ServiceMsg::Shutdown);
        let got = caller.join().expect("caller");
        assert!(
            matches!(
                got,
                Ok((ApiReply::Status(0), None)) | Err(PLUGHOST_E_SHUTTING_DOWN)
            ),
            "{got:?}"
        );
        assert_eq!(main.join().expect("main thread"), Vec::<u64>::new());
        assert_eq!(
            demux.idle_timeouts.load(Ordering::Relaxed),
            0,
            "a wake-up was lost"
        );
        // Kept open until the host is done: only the `Shutdown` ended it.
        drop(socket);
    }
}

/// A socket that ends with nothing announced (a service that died without taking the host with
/// it) still ends the main thread: its sleep on the ring is bounded, then it reads the socket.
#[test]
fn a_socket_closed_without_a_word_still_ends_the_main_thread() {
    let (demux, socket, ring) = demux();
    // A name of its own: another test's main thread asleep on its ring is not this one.
    let main = serve_hooks_as(demux, "closed-main");
    assert_eq!(dispatch(&socket, &ring, &hook_frame(7, 8)), 7);
    // Closed only once the main thread sleeps on the ring (its first look at the socket would see
    // the end at once): its task's wait channel says futex (or, where the kernel hides wait
    // channels, the syscall it is in is futex: 202 on x86_64, 98 on aarch64).
    let futex_nr = if cfg!(target_arch = "aarch64") {
        "98 "
    } else {
        "202 "
    };
    let tid = loop {
        // Asleep, not merely inside a futex call: a thread preempted in the FUTEX_WAKE of its
        // answer is in syscall 202 too, and would see the end at its first look.
        let futex_wait = |call: &str| {
            let mut fields = call.split_whitespace();
            fields.next() == Some(futex_nr.trim())
                && fields
                    .next()
                    .and_then(|op| u64::from_str_radix(op.trim_start_matches("0x"), 16).ok())
                    .is_some_and(|op| matches!(op & 0x7f, 0 | 9)) // FUTEX_WAIT, FUTEX_WAIT_BITSET
        };
        let asleep = std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
            .find(|task| {
                let read = |file: &str| std::fs::read_to_string(task.path().join(file));
                let sleeping = read("stat").is_ok_and(|stat| {
                    stat.rfind(')')
                        .and_then(|at| stat[at + 1..].split_whitespace().next())
                        == Some("S")
                });
                read("comm").is_ok_and(|comm| comm.trim() == "closed-main")
                    && sleeping
                    && (read("wchan").is_ok_and(|wchan| wchan.contains("futex"))
                        || read("syscall").is_ok_and(|call| futex_wait(&call)))
            });
        if let Some(task) = asleep {
            break task.file_name();
        }
        std::thread::yield_now();
    };
    drop(socket);
    assert_eq!(main.join().expect("main thread"), [7], "task {tid:?}");
    assert!(demux.idle_timeouts.load(Ordering::Relaxed) >= 1);
}
