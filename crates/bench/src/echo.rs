//! The baseline: a plain round trip over the protocol's socket type (`AF_UNIX SOCK_SEQPACKET`,
//! through the same `plughost_sys::Seqpacket` send/recv code, with the same receive buffer size) to a
//! second process that echoes each message back. No encoding, no locks, no epoll: what any
//! out-of-process design pays at least, measured in the same run as everything it is compared with.
//!
//! The peer is this same binary re-executed with the hidden `--echo-peer` argument and the socket as
//! its stdin (plain `Command`, posix_spawn: no fork inside this threaded process). With
//! `--fd-echo-peer` it answers every message with the same bytes and one fd (its `/dev/null`, by
//! SCM_RIGHTS): `raw_fd_rtt`, the baseline of an API call whose answer carries an fd.

use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use plughost_sys::{ChannelError, Seqpacket};
use plughost_wire::MAX_FRAME;

/// The `--echo-peer` mode (`--fd-echo-peer`: `with_fd`): echo every message until end of file.
pub fn run_peer(with_fd: bool) -> Result<()> {
    let channel = plughost_sys::confine::take_channel_from_stdin()
        .context("echo peer: no socket on stdin")?;
    let channel = Seqpacket::from_fd(channel);
    let file = std::fs::File::open("/dev/null").context("echo peer: /dev/null")?;
    let passed = [file.as_fd()];
    let passed: &[std::os::fd::BorrowedFd<'_>] = if with_fd { &passed } else { &[] };
    let mut buf = vec![0u8; MAX_FRAME];
    let mut fds = Vec::new();
    loop {
        match channel.recv(&mut buf, &mut fds) {
            Ok(len) => channel
                .send(&buf[..len], passed)
                .context("echo peer: send")?,
            Err(ChannelError::Disconnected) => return Ok(()),
            Err(e) => return Err(e).context("echo peer: recv"),
        }
    }
}

/// The service side of the baseline.
pub struct Echo {
    child: Child,
    channel: Option<Seqpacket>,
    message: Vec<u8>,
    buf: Vec<u8>,
    fds: Vec<std::os::fd::OwnedFd>,
    /// The peer answers with an fd.
    with_fd: bool,
}

impl Echo {
    /// Starts the peer; every round trip carries `size` bytes each way.
    pub fn start(size: usize) -> Result<Echo> {
        Echo::start_with(size, false)
    }

    /// The same, the answer carrying one fd.
    pub fn start_fd(size: usize) -> Result<Echo> {
        Echo::start_with(size, true)
    }

    fn start_with(size: usize, with_fd: bool) -> Result<Echo> {
        let (ours, theirs) = Seqpacket::pair().context("socketpair")?;
        let exe = std::env::current_exe().context("current_exe")?;
        let child = Command::new(exe)
            .arg(if with_fd {
                "--fd-echo-peer"
            } else {
                "--echo-peer"
            })
            .stdin(Stdio::from(theirs.into_fd()))
            .spawn()
            .context("spawning the echo peer")?;
        Ok(Echo {
            child,
            channel: Some(ours),
            message: (0..size).map(|i| i as u8).collect(),
            buf: vec![0u8; MAX_FRAME],
            fds: Vec::new(),
            with_fd,
        })
    }

    pub fn peer_pid(&self) -> u32 {
        self.child.id()
    }

    /// One round trip; returns its duration in µs (the fd it brought, if any, is closed after the
    /// timing, as a plugin closes its fd after its call returned).
    pub fn round_trip(&mut self) -> Result<f64> {
        let start = Instant::now();
        self.exchange()?;
        let elapsed = start.elapsed().as_secs_f64() * 1e6;
        let fds = self.fds.len();
        self.fds.clear();
        if fds != usize::from(self.with_fd) {
            bail!("echo peer passed {fds} fds");
        }
        Ok(elapsed)
    }

    /// One round trip, untimed.
    pub fn exchange(&mut self) -> Result<()> {
        let Some(channel) = &self.channel else {
            bail!("echo peer stopped");
        };
        channel.send(&self.message, &[]).context("echo: send")?;
        let len = channel
            .recv(&mut self.buf, &mut self.fds)
            .context("echo: recv")?;
        if len != self.message.len() {
            bail!(
                "echo peer answered {len} bytes, sent {}",
                self.message.len()
            );
        }
        Ok(())
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // End of file ends the peer; then reap it.
        self.channel.take();
        let _ = self.child.wait();
    }
}
