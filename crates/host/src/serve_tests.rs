//! The host's side of a teardown (`PLUGIN_ABI.md`, "API"; the header's "Shutdown"): calls waiting
//! for their reply when the service sends `Shutdown` or closes the channel, and calls made after
//! that, all return `PLUGHOST_E_SHUTTING_DOWN` (the call did not run). Real threads on a real
//! socket pair, many rounds.

use super::*;
use plughost_wire::{ApiCall, HostMsg};

fn mount() -> ApiCall {
    ApiCall::MountFolder {
        session: 1,
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
    assert!(matches!(demux.next_hook(), MainEvent::Closed));
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
