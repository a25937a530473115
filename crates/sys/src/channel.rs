//! A connected `AF_UNIX` `SOCK_SEQPACKET` socket: message boundaries are kept by the kernel, so one
//! `send` is one frame, sends from several threads never interleave, and a frame larger than the
//! receiver's buffer is detected (`MSG_TRUNC`) instead of being split.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use std::time::Duration;

use rustix::io::Errno;
use rustix::net::sockopt::Timeout;
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, Shutdown,
    SocketFlags, SocketType,
};

/// Most fds accepted in one message; more is [`ChannelError::TooManyFds`] (and the fds are closed).
pub const MAX_FDS_PER_MSG: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed its end (EOF, `ECONNRESET` or `EPIPE`), or we shut ours down.
    #[error("the peer closed the channel")]
    Disconnected,
    /// A message longer than the receive buffer.
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    Oversized { len: usize, limit: usize },
    /// More fds than [`MAX_FDS_PER_MSG`], or ancillary data cut short.
    #[error("message carries more than {limit} file descriptors")]
    TooManyFds { limit: usize },
    /// A zero-length message (which `recv` alone cannot tell from end-of-file).
    #[error("empty message")]
    Empty,
    /// A blocking `recv` or `send` hit the socket's timeout (see [`Seqpacket::set_timeouts`]).
    #[error("timed out")]
    TimedOut,
    #[error("channel I/O failed: {0}")]
    Io(#[source] std::io::Error),
}

fn classify(e: Errno) -> ChannelError {
    match e {
        Errno::CONNRESET | Errno::PIPE | Errno::NOTCONN => ChannelError::Disconnected,
        Errno::AGAIN => ChannelError::TimedOut,
        e => ChannelError::Io(e.into()),
    }
}

/// One end of a seqpacket channel.
#[derive(Debug)]
pub struct Seqpacket {
    fd: OwnedFd,
}

impl Seqpacket {
    /// A connected pair, both ends `CLOEXEC`.
    pub fn pair() -> std::io::Result<(Seqpacket, Seqpacket)> {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Seqpacket { fd: a }, Seqpacket { fd: b }))
    }

    /// Wraps an fd that the caller knows is a connected seqpacket socket.
    pub fn from_fd(fd: OwnedFd) -> Seqpacket {
        Seqpacket { fd }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends one message with `fds` attached. Blocks while the socket buffer is full; retries `EINTR`.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_flags(bytes, fds, SendFlags::NOSIGNAL)
    }

    /// Like [`send`](Self::send), but fails with [`ChannelError::TimedOut`] at once when the peer's
    /// receive queue is full instead of waiting for it to read.
    pub fn try_send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_flags(bytes, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
    }

    fn send_flags(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        flags: SendFlags,
    ) -> Result<(), ChannelError> {
        let iov = [IoSlice::new(bytes)];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(ChannelError::TooManyFds {
                limit: MAX_FDS_PER_MSG,
            });
        }
        loop {
            match sendmsg(&self.fd, &iov, &mut control, flags) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(classify(e)),
            }
        }
    }

    /// Receives one message into `buf`, appending received fds to `fds`. Blocks; retries `EINTR`.
    /// Returns the message length (never 0: an empty read is [`ChannelError::Disconnected`]).
    pub fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, ChannelError> {
        loop {
            match self.recv_flags(buf, fds, RecvFlags::empty()) {
                Err(ChannelError::Io(e))
                    if e.raw_os_error() == Some(Errno::INTR.raw_os_error()) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    /// Like [`recv`](Self::recv) but never blocks: `Ok(None)` when no message is waiting.
    pub fn try_recv(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Option<usize>, ChannelError> {
        loop {
            match self.recv_flags(buf, fds, RecvFlags::DONTWAIT) {
                Ok(n) => return Ok(Some(n)),
                Err(ChannelError::TimedOut) => return Ok(None),
                Err(ChannelError::Io(e)) if Errno::from_io_error(&e) == Some(Errno::INTR) => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bounds blocking `recv` and `send` on this end: past `recv` (or `send`) they fail with
    /// [`ChannelError::TimedOut`] instead of blocking on. A waiting reader uses the receive timeout as
    /// a tick to check its own deadline, at no cost while frames flow.
    pub fn set_timeouts(&self, recv: Duration, send: Duration) -> std::io::Result<()> {
        rustix::net::sockopt::set_socket_timeout(&self.fd, Timeout::Recv, Some(recv))?;
        rustix::net::sockopt::set_socket_timeout(&self.fd, Timeout::Send, Some(send))?;
        Ok(())
    }

    fn recv_flags(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        flags: RecvFlags,
    ) -> Result<usize, ChannelError> {
        let limit = buf.len();
        let mut iov = [IoSliceMut::new(buf)];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = recvmsg(
            &self.fd,
            &mut iov,
            &mut control,
            flags | RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC,
        )
        .map_err(classify)?;
        // Take ownership of every fd first, so that none leaks whatever the verdict.
        let before = fds.len();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() - before > MAX_FDS_PER_MSG {
            fds.truncate(before);
            return Err(ChannelError::TooManyFds {
                limit: MAX_FDS_PER_MSG,
            });
        }
        if msg.bytes == 0 {
            fds.truncate(before);
            return Err(if self.peer_closed() {
                ChannelError::Disconnected
            } else {
                ChannelError::Empty
            });
        }
        if msg.bytes > limit || msg.flags.contains(ReturnFlags::TRUNC) {
            fds.truncate(before);
            return Err(ChannelError::Oversized {
                len: msg.bytes,
                limit,
            });
        }
        Ok(msg.bytes)
    }

    /// Has the peer closed (or have we shut down) the connection? A zero-length read is end-of-file
    /// only then; otherwise it was an empty message.
    fn peer_closed(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::RDHUP,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(n) if n > 0 => fds[0]
                .revents()
                .intersects(rustix::event::PollFlags::RDHUP | rustix::event::PollFlags::HUP),
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// Shuts both directions down: threads blocked in `recv` on this end wake with
    /// [`ChannelError::Disconnected`], and the peer sees end-of-file. Errors are ignored (the socket
    /// may already be shut).
    pub fn shutdown(&self) {
        let _ = rustix::net::shutdown(&self.fd, Shutdown::Both);
    }
}

impl AsFd for Seqpacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Seqpacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_fd_arrive_together() {
        let (a, b) = Seqpacket::pair().unwrap();
        let (x, _y) = Seqpacket::pair().unwrap();
        a.send(b"hello", &[x.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        assert_eq!(b.recv(&mut buf, &mut fds).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn oversized_message_is_detected_not_split() {
        let (a, b) = Seqpacket::pair().unwrap();
        a.send(&[1u8; 100], &[]).unwrap();
        let mut buf = [0u8; 10];
        let mut fds = Vec::new();
        assert!(matches!(
            b.recv(&mut buf, &mut fds),
            Err(ChannelError::Oversized {
                len: 100,
                limit: 10
            })
        ));
    }

    #[test]
    fn closed_peer_is_disconnected() {
        let (a, b) = Seqpacket::pair().unwrap();
        drop(a);
        let mut buf = [0u8; 10];
        assert!(matches!(
            b.recv(&mut buf, &mut Vec::new()),
            Err(ChannelError::Disconnected)
        ));
        assert!(matches!(b.send(b"x", &[]), Err(ChannelError::Disconnected)));
    }

    #[test]
    fn shutdown_wakes_a_blocked_receiver() {
        let (a, _b) = Seqpacket::pair().unwrap();
        let a = std::sync::Arc::new(a);
        let reader = {
            let a = a.clone();
            std::thread::spawn(move || a.recv(&mut [0u8; 8], &mut Vec::new()))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        a.shutdown();
        assert!(matches!(
            reader.join().unwrap(),
            Err(ChannelError::Disconnected)
        ));
    }

    #[test]
    fn empty_message_is_not_end_of_file() {
        let (a, b) = Seqpacket::pair().unwrap();
        a.send(b"", &[]).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(
            b.recv(&mut buf, &mut Vec::new()),
            Err(ChannelError::Empty)
        ));
        a.send(b"x", &[]).unwrap();
        assert_eq!(b.recv(&mut buf, &mut Vec::new()).unwrap(), 1);
        drop(a);
        assert!(matches!(
            b.recv(&mut buf, &mut Vec::new()),
            Err(ChannelError::Disconnected)
        ));
    }

    #[test]
    fn try_recv_does_not_block() {
        let (_a, b) = Seqpacket::pair().unwrap();
        assert!(b
            .try_recv(&mut [0u8; 8], &mut Vec::new())
            .unwrap()
            .is_none());
    }
}
