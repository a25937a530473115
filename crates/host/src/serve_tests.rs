//! The host's side of a teardown (`PLUGIN_ABI.md`, "API"; the header's "Shutdown"): calls waiting
//! for their reply when the service sends `Shutdown` or closes the channel, and calls made after
//! that, all return `PLUGHOST_E_SHUTTING_DOWN` (the call did not run). Real threads on a real
//! socket pair, many rounds.

use super::*;
use plughost_wire::{ApiCall, HostMsg, SessionId};

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
    let (service_socket, host_socket) = Seqpacket::pair().expect("socketpair");
    let (service_ring, ends) = Ring::create("test").expect("ring");
    let demux: &'static Demux = Box::leak(Box::new(Demux::new(host_socket)));
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
    if let Some((tag, text)) = passed {
        let tag = if tag == 0 { id.0 } else { tag };
        ring.send_fd(tag, pipe_with(text).as_fd()).expect("send fd");
    }
    let reply = ServiceMsg::Reply {
        id: RequestId(named.unwrap_or(id.0)),
        reply: ApiReply::Fd,
    };
    let mut out = Vec::new();
    encode(&reply, &mut out).expect("encode");
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
