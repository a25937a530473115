//! The call ring's tests: its published layout, every lane byte for byte, wake-ups under races, and
//! what a host scribbling on the shared pages can and cannot do.

use super::*;

fn pair() -> (Ring, Ring) {
    let (service, ends) = Ring::create("test").expect("create");
    let host = Ring::attach(ends).expect("attach");
    (service, host)
}

#[test]
fn the_published_layout_matches_the_struct() {
    use std::mem::{offset_of, size_of};
    assert_eq!(offset_of!(Shared, up), layout::UP_SEQ);
    assert_eq!(layout::UP_SEQ + offset_of!(Up, socket), layout::UP_SOCKET);
    assert_eq!(layout::UP_SEQ + offset_of!(Up, pending), layout::UP_PENDING);
    assert_eq!(
        layout::UP_SEQ + offset_of!(Up, main_waiting),
        layout::UP_MAIN_WAITING
    );
    assert_eq!(offset_of!(Shared, down), layout::OWNER);
    assert_eq!(
        layout::OWNER + offset_of!(Down, waiting),
        layout::SERVICE_WAITING
    );
    assert_eq!(layout::OWNER + offset_of!(Down, hook_seq), layout::HOOK_SEQ);
    assert_eq!(
        layout::OWNER + offset_of!(Down, socket),
        layout::DOWN_SOCKET
    );
    assert_eq!(offset_of!(Shared, closed), layout::CLOSED);
    assert_eq!(offset_of!(Shared, lane), layout::LANE);
    assert_eq!(offset_of!(Shared, hook), layout::HOOK);
    assert_eq!(offset_of!(Shared, slots), layout::SLOTS);
    assert_eq!(size_of::<Slot>(), layout::SLOT_SIZE);
    assert_eq!(offset_of!(Slot, data), layout::SLOT_DATA);
    assert_eq!(offset_of!(Slot, len), 4);
    assert_eq!(offset_of!(Slot, by_lane), layout::SLOT_BY_LANE);
    assert!(size_of::<Shared>() <= layout::SIZE);
}

#[test]
fn every_frame_length_is_copied_through_a_slot_byte_for_byte() {
    let (service, host) = pair();
    let mut out = Vec::new();
    for len in (0..=64).chain([SLOT_BYTES - 1, SLOT_BYTES]) {
        let frame: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        assert!(host.post_answer(&frame));
        assert!(service.take_answer(&mut out).expect("take"), "len {len}");
        assert_eq!(out, frame, "len {len}");
    }
}

#[test]
fn a_call_through_a_slot_gets_its_reply() {
    let (service, host) = pair();
    let host = std::sync::Arc::new(host);
    let caller = {
        let host = host.clone();
        std::thread::spawn(move || {
            let mut reply = Vec::new();
            assert!(host.call(b"hello ring", &mut reply, None).expect("call"));
            reply
        })
    };
    let mut frame = Vec::new();
    let claimed = loop {
        let seen = service.seq();
        let claimed = service.claim_requests();
        if claimed != 0 {
            break claimed;
        }
        service.wait(seen, Duration::from_millis(50));
    };
    assert_eq!(claimed.count_ones(), 1);
    let index = claimed.trailing_zeros() as usize;
    service.request(index, &mut frame).expect("request");
    assert_eq!(frame, b"hello ring");
    service.reply(index, b"and back");
    assert_eq!(caller.join().expect("caller"), b"and back");
}

#[test]
fn the_lane_carries_one_answer() {
    let (service, host) = pair();
    let mut out = Vec::new();
    assert!(!service.take_answer(&mut out).expect("empty lane"));
    assert!(host.post_answer(b"done"));
    assert!(service.take_answer(&mut out).expect("lane"));
    assert_eq!(out, b"done");
    assert!(!service.take_answer(&mut out).expect("taken"));
}

#[test]
fn every_hook_length_is_copied_through_the_hook_request_lane_byte_for_byte() {
    let (service, host) = pair();
    let mut out = vec![0u8; 64 * 1024];
    assert_eq!(host.take_hook(&mut out).expect("empty lane"), None);
    for len in (0..=64).chain([SLOT_BYTES - 1, SLOT_BYTES]) {
        let frame: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
        assert!(service.post_hook(&frame));
        let got = host.take_hook(&mut out).expect("take").expect("a hook");
        assert_eq!(&out[..got], &frame[..], "len {len}");
        assert_eq!(host.take_hook(&mut out).expect("taken"), None, "len {len}");
    }
    assert!(!service.post_hook(&[0; SLOT_BYTES + 1]));
}

/// Whatever the host writes into the hook-request lane garbles only the hooks it reads itself:
/// the service reads nothing back, and its next hook arrives whole.
#[test]
fn a_host_scribbling_on_the_hook_request_lane_garbles_only_its_own_hooks() {
    let (service, host) = pair();
    let mut out = vec![0u8; 64 * 1024];
    let lane = &host.shared().hook;
    for (state, len) in [
        (REQUEST, u32::MAX),
        (REQUEST, SLOT_BYTES as u32 + 1),
        (77, 5),
    ] {
        for word in &lane.data {
            word.store(u64::MAX, Ordering::Relaxed);
        }
        lane.len.store(len, Ordering::Relaxed);
        lane.state.store(state, Ordering::SeqCst);
        host.shared().down.hook_seq.store(len, Ordering::SeqCst);
        host.shared().up.main_waiting.store(state, Ordering::SeqCst);
        match host.take_hook(&mut out) {
            Err(RingError::BadHookLength { len: got }) => assert_eq!(got, len),
            Ok(None) => assert_ne!(state, REQUEST),
            other => panic!("{other:?} for state {state} len {len}"),
        }
        assert!(service.post_hook(b"the next hook"));
        let got = host.take_hook(&mut out).expect("take").expect("a hook");
        assert_eq!(&out[..got], b"the next hook");
    }
}

/// The main thread's sleep on the hook word never misses a hook: each wait ends because the
/// word moved, never by its (long) timeout. Many rounds, racing the service's post.
#[test]
fn a_hook_posted_while_the_main_thread_falls_asleep_always_wakes_it() {
    const ROUNDS: u32 = 5_000;
    let (service, host) = pair();
    let host = std::sync::Arc::new(host);
    let main = {
        let host = host.clone();
        std::thread::spawn(move || {
            let mut out = vec![0u8; 64 * 1024];
            let mut timeouts = 0;
            for round in 0..ROUNDS {
                host.main_waits(true);
                let got = loop {
                    let seen = host.main_word();
                    if let Some(len) = host.take_hook(&mut out).expect("take") {
                        break len;
                    }
                    host.wait_main(seen, Duration::from_secs(10));
                    if host.main_word() == seen {
                        timeouts += 1;
                    }
                };
                host.main_waits(false);
                assert_eq!(&out[..got], round.to_le_bytes());
                // The answer, so that the service posts the next hook only after this one.
                assert!(host.post_answer(b"done"));
            }
            timeouts
        })
    };
    let mut answer = Vec::new();
    for round in 0..ROUNDS {
        assert!(service.post_hook(&round.to_le_bytes()));
        loop {
            let seen = service.seq();
            if service.take_answer(&mut answer).expect("answer") {
                break;
            }
            service.set_dispatcher(true);
            service.wait(seen, Duration::from_millis(50));
        }
    }
    assert_eq!(main.join().expect("main thread"), 0, "wake-ups lost");
}

#[test]
fn a_length_past_the_slot_is_refused() {
    let (service, _host) = pair();
    let lane = &service.shared().lane;
    lane.len.store(u32::MAX, Ordering::Relaxed);
    lane.state.store(REQUEST, Ordering::Release);
    let mut out = Vec::new();
    assert!(matches!(
        service.take_answer(&mut out),
        Err(RingError::BadLaneLength { len: u32::MAX })
    ));
}

#[test]
fn frames_that_do_not_fit_take_the_socket() {
    let (_service, host) = pair();
    let mut reply = Vec::new();
    assert!(!host
        .call(&[0; SLOT_BYTES + 1], &mut reply, None)
        .expect("call"));
    assert!(!host.post_answer(&[0; SLOT_BYTES + 1]));
}

#[test]
fn the_host_cannot_shrink_the_ring() {
    let (_service, ends) = Ring::create("test").expect("create");
    assert!(rustix::fs::ftruncate(&ends.memory, 0).is_err());
}

#[test]
fn closing_wakes_a_waiting_caller() {
    let (_service, host) = pair();
    let host = std::sync::Arc::new(host);
    let caller = {
        let host = host.clone();
        std::thread::spawn(move || host.call(b"never served", &mut Vec::new(), None))
    };
    // The caller either sees `closed` before it sleeps or is woken by `close`.
    host.close();
    assert!(caller.join().expect("caller").is_err());
}

fn pipe_with(text: &[u8]) -> OwnedFd {
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    rustix::io::write(&write, text).expect("write");
    read
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = rustix::io::read(fd, &mut buf).expect("read");
    buf[..n].to_vec()
}

#[test]
fn an_fd_passed_before_the_reply_is_taken_without_waiting() {
    let (service, host) = pair();
    service
        .send_fd(7, pipe_with(b"seven").as_fd())
        .expect("send");
    assert_eq!(read_all(&host.take_fd(7).expect("take")), b"seven");
}

/// Callers take their fds in any order; each gets the one sent for its request id.
#[test]
fn fds_taken_out_of_order_go_to_their_own_callers() {
    let (service, host) = pair();
    for id in 1..=5u64 {
        let text = format!("fd{id}");
        service
            .send_fd(id, pipe_with(text.as_bytes()).as_fd())
            .expect("send");
    }
    for id in [4u64, 2, 5, 1, 3] {
        let text = format!("fd{id}");
        assert_eq!(read_all(&host.take_fd(id).expect("take")), text.as_bytes());
    }
    assert!(matches!(
        host.take_fd(1),
        Err(RingError::FdMissing { id: 1 })
    ));
}

/// A reply naming an fd that never came (or another request's) fails at once; the fds that did
/// come stay for their own callers.
#[test]
fn a_reply_naming_an_fd_that_never_came_fails_without_blocking() {
    let (service, host) = pair();
    assert!(matches!(
        host.take_fd(9),
        Err(RingError::FdMissing { id: 9 })
    ));
    service
        .send_fd(3, pipe_with(b"three").as_fd())
        .expect("send");
    assert!(matches!(
        host.take_fd(9),
        Err(RingError::FdMissing { id: 9 })
    ));
    assert_eq!(read_all(&host.take_fd(3).expect("take")), b"three");
}

/// Threads racing for their fds on one lane: none ever gets another's, none is lost.
#[test]
fn racing_callers_never_take_each_others_fds() {
    let (service, host) = pair();
    let host = std::sync::Arc::new(host);
    let service = std::sync::Arc::new(service);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (host, service) = (host.clone(), service.clone());
            std::thread::spawn(move || {
                for i in 0..300u64 {
                    let id = t << 32 | i;
                    let text = id.to_string();
                    service
                        .send_fd(id, pipe_with(text.as_bytes()).as_fd())
                        .expect("send");
                    let fd = host.take_fd(id).expect("take");
                    assert_eq!(read_all(&fd), text.as_bytes());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("caller");
    }
}

/// A host that never takes its fds fills the lane: the service's send fails at once instead of
/// blocking, and the fds it could not pass stay its own (closed by the caller).
#[test]
fn a_host_that_never_takes_its_fds_cannot_block_the_service() {
    let (service, host) = pair();
    let (read, _write) = rustix::pipe::pipe().expect("pipe");
    let mut sent = 0u64;
    loop {
        match service.send_fd(sent, read.as_fd()) {
            Ok(()) => sent += 1,
            Err(RingError::FdsNotTaken) => break,
            Err(e) => panic!("send {sent}: {e}"),
        }
        assert!(sent < 100_000, "the lane never filled");
    }
    assert!(sent >= SLOTS as u64, "only {sent} fds fit the lane");
    drop(host);
}

/// Nothing travels host -> service on the fd lane.
#[test]
fn the_host_cannot_send_on_the_fd_lane() {
    let (_service, ends) = Ring::create("test").expect("create");
    let lane = Seqpacket::from_fd(ends.fds);
    assert!(lane.try_send(b"junk", &[]).is_err());
}

#[test]
fn every_slot_of_many_threads_is_served_exactly_once() {
    let (service, host) = pair();
    let host = std::sync::Arc::new(host);
    let callers: Vec<_> = (0..8u8)
        .map(|t| {
            let host = host.clone();
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    let request = [t, (i & 0xff) as u8, (i >> 8) as u8];
                    let mut reply = Vec::new();
                    if host.call(&request, &mut reply, None).expect("call") {
                        assert_eq!(reply, [request[0], request[1], request[2], 1]);
                    }
                }
            })
        })
        .collect();
    let server = Server::start(service, |service, index, frame| {
        frame.push(1);
        service.reply(index, frame);
    });
    for caller in callers {
        caller.join().expect("caller");
    }
    server.stop();
}

/// A service thread serving every slot it claims with `serve` (given the slot's request frame),
/// until stopped.
struct Server {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    fn start(
        service: Ring,
        mut serve: impl FnMut(&Ring, usize, &mut Vec<u8>) + Send + 'static,
    ) -> Server {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut frame = Vec::new();
                while !done.load(Ordering::Acquire) {
                    let seen = service.seq();
                    let claimed = service.claim_requests();
                    for index in (0..SLOTS).filter(|i| claimed & (1 << i) != 0) {
                        service.request(index, &mut frame).expect("request");
                        serve(&service, index, &mut frame);
                    }
                    if claimed == 0 {
                        service.set_dispatcher(true);
                        service.wait(seen, Duration::from_millis(5));
                    }
                }
            })
        };
        Server { done, thread }
    }

    fn stop(self) {
        self.done.store(true, Ordering::Release);
        self.thread.join().expect("server");
    }
}

/// Calls waiting on the fd lane (one reader at a time) mixed with calls waiting on their slots,
/// answered with and without fds: every caller gets its own reply and exactly its own fd, whoever
/// received it from the lane, and no call is left waiting.
#[test]
fn lane_readers_and_slot_waiters_each_get_their_own_reply_and_fd() {
    // A lost wake-up would leave a caller waiting for ever: bounded here, it fails the test.
    let (finished, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        lane_readers_and_slot_waiters();
        let _ = finished.send(());
    });
    done.recv_timeout(Duration::from_secs(120))
        .expect("every call was answered (a caller panicked or waits for ever)");
}

fn lane_readers_and_slot_waiters() {
    let (service, host) = pair();
    let host = std::sync::Arc::new(host);
    let lane_replies = std::sync::Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..8u8)
        .map(|t| {
            let host = host.clone();
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    let id = u64::from(t) << 32 | u64::from(i);
                    let request = id.to_le_bytes();
                    let mut reply = Vec::new();
                    let mut lane_fd = None;
                    // Every other call of a thread may wait on the lane.
                    let fd_of = (i % 2 == 0).then_some((id, &mut lane_fd));
                    assert!(host.call(&request, &mut reply, fd_of).expect("call"));
                    assert_eq!(reply[..8], request, "thread {t} call {i}");
                    // The service answers every third call with an fd (its id as text).
                    if reply[8] == 1 {
                        let fd = match lane_fd {
                            Some(fd) => fd,
                            None => host.take_fd(id).expect("take"),
                        };
                        assert_eq!(read_all(&fd), id.to_string().as_bytes());
                    } else {
                        assert!(lane_fd.is_none(), "an fd came with an error answer");
                    }
                }
            })
        })
        .collect();
    let server = {
        let lane_replies = lane_replies.clone();
        Server::start(service, move |service, index, frame| {
            let id = u64::from_le_bytes(frame[..8].try_into().expect("id"));
            let pipe = (id % 3 == 0).then(|| pipe_with(id.to_string().as_bytes()));
            frame.push(u8::from(pipe.is_some()));
            let fd = pipe.as_ref().map(|p| p.as_fd());
            if service.answers_on_lane(index) {
                lane_replies.fetch_add(1, Ordering::Relaxed);
                service
                    .reply_on_lane(index, id, frame, fd)
                    .expect("reply on lane");
            } else {
                if let Some(fd) = fd {
                    service.send_fd(id, fd).expect("send");
                }
                service.reply(index, frame);
            }
        })
    };
    for caller in callers {
        caller.join().expect("caller");
    }
    server.stop();
    // Both ways were taken (one reader at a time: the other lane-capable calls waited on slots).
    let on_lane = lane_replies.load(Ordering::Relaxed);
    assert!(
        on_lane > 0 && on_lane < 4000,
        "{on_lane} of 4000 replies on the lane"
    );
}

/// A caller waiting on the fd lane for a reply that never comes returns when the host closes the
/// ring.
#[test]
fn a_lane_reader_returns_when_the_ring_closes() {
    let (_service, host) = pair();
    let host = std::sync::Arc::new(host);
    let caller = {
        let host = host.clone();
        std::thread::spawn(move || {
            let mut fd = None;
            host.call(b"never served", &mut Vec::new(), Some((1, &mut fd)))
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    host.close();
    assert!(matches!(
        caller.join().expect("caller"),
        Err(RingError::Closed)
    ));
}

/// The service writes a lane caller's reply into the slot, then sends on the lane; a caller whose
/// receive ticks between the two (the service thread preempted there) still waits for the lane's
/// message, so it gets its fd with the wake-up instead of leaving it behind.
#[test]
fn a_lane_reader_ticking_between_the_reply_and_its_fd_still_gets_the_fd() {
    let (service, host) = pair();
    let host = std::sync::Arc::new(host);
    let caller = {
        let host = host.clone();
        std::thread::spawn(move || {
            let mut fd = None;
            let mut reply = Vec::new();
            assert!(host
                .call(b"req", &mut reply, Some((7, &mut fd)))
                .expect("call"));
            (reply, fd)
        })
    };
    let index = loop {
        let claimed = service.claim_requests();
        if claimed != 0 {
            break claimed.trailing_zeros() as usize;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(service.answers_on_lane(index));
    // `reply_on_lane`'s two steps, with more than a receive tick (50 ms) between them.
    service.write_reply(index, b"reply");
    std::thread::sleep(Duration::from_millis(120));
    service
        .send_fd(7, pipe_with(b"seven").as_fd())
        .expect("send");
    let (reply, fd) = caller.join().expect("caller");
    assert_eq!(reply, b"reply");
    assert_eq!(
        read_all(&fd.expect("the fd came with the wake-up")),
        b"seven"
    );
}
