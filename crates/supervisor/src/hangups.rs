//! Which hosts' sockets have hung up, known without touching their sockets: one level-triggered
//! epoll per manager, each host's channel in it for `EPOLLRDHUP` only (plus the `EPOLLHUP` and
//! `EPOLLERR` every registration reports), keyed by host id.
//!
//! Why: a dispatcher that took a hook's answer off the ring reads the host's socket only when the
//! host announced a frame there (a `recvmsg` on a cold socket is a large share of a fan-out over
//! many hosts: BENCHMARKS.md, "fanout_100"). A plugin that closed its channel inside the hook
//! announces nothing; its hook must still fail with the closed channel, not the next operation
//! (`tests/tests/hostile.rs`). The kernel queues the hang-up on this epoll's ready list when the
//! host's end closes, before the host can answer, so one `epoll_wait` with a zero timeout (on an
//! fd every dispatcher shares, whose ready list is empty while no host hung up) tells the
//! dispatcher, with no race against the pool's own watch of the socket. Data arriving on a socket
//! does not make it ready here (not in the interest set).
//!
//! A registration ends by itself when the socket's last fd closes (the host proxy dropped).

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::epoll::{self, EventData, EventFlags};

/// Most ready hosts looked at per check; with more hung up at once, the check says "maybe".
const BATCH: usize = 8;

pub(crate) struct Hangups {
    epoll: OwnedFd,
}

impl Hangups {
    pub(crate) fn new() -> std::io::Result<Hangups> {
        Ok(Hangups {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Watches host `id`'s end of its channel from now on.
    pub(crate) fn watch(&self, channel: impl AsFd, id: u64) -> std::io::Result<()> {
        epoll::add(
            &self.epoll,
            channel,
            EventData::new_u64(id),
            EventFlags::RDHUP,
        )?;
        Ok(())
    }

    /// Stops watching a dead host's channel (a hung-up socket stays ready until it is closed or
    /// forgotten: a dead host kept around would be reported to every check).
    pub(crate) fn forget(&self, channel: impl AsFd) {
        let _ = epoll::delete(&self.epoll, channel);
    }

    /// Whether host `id`'s socket may have hung up (also when the check itself fails, or more
    /// hosts than it looks at hung up at once: the caller then reads the socket to know).
    pub(crate) fn maybe_hung_up(&self, id: u64) -> bool {
        let mut events = [const { std::mem::MaybeUninit::<epoll::Event>::uninit() }; BATCH];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match epoll::wait(&self.epoll, &mut events[..], Some(&zero)) {
            Ok((ready, _)) => {
                ready.len() == BATCH || ready.iter().any(|event| event.data.u64() == id)
            }
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plughost_sys::Seqpacket;

    #[test]
    fn only_the_host_whose_peer_closed_is_reported() {
        let hangups = Hangups::new().expect("epoll");
        let (ours_a, theirs_a) = Seqpacket::pair().expect("pair");
        let (ours_b, theirs_b) = Seqpacket::pair().expect("pair");
        hangups.watch(&ours_a, 1).expect("watch a");
        hangups.watch(&ours_b, 2).expect("watch b");
        assert!(!hangups.maybe_hung_up(1));
        // Data waiting is not a hang-up.
        theirs_b.send(b"frame", &[]).expect("send");
        assert!(!hangups.maybe_hung_up(2));
        drop(theirs_a);
        assert!(hangups.maybe_hung_up(1));
        assert!(!hangups.maybe_hung_up(2));
        // Level-triggered: it stays reported.
        assert!(hangups.maybe_hung_up(1));
        drop(theirs_b);
        assert!(hangups.maybe_hung_up(2));
    }

    /// A registration ends with the socket (a dropped host) or when forgotten (a dead one): neither
    /// leaves anything ready behind.
    #[test]
    fn a_dropped_or_forgotten_socket_leaves_the_watch() {
        let hangups = Hangups::new().expect("epoll");
        let (ours, theirs) = Seqpacket::pair().expect("pair");
        hangups.watch(&ours, 1).expect("watch");
        drop(theirs);
        assert!(hangups.maybe_hung_up(1));
        drop(ours);
        assert!(!hangups.maybe_hung_up(1));
        let (ours, theirs) = Seqpacket::pair().expect("pair");
        hangups.watch(&ours, 2).expect("watch");
        drop(theirs);
        assert!(hangups.maybe_hung_up(2));
        hangups.forget(&ours);
        assert!(!hangups.maybe_hung_up(2));
    }
}
