//! The baseline: a plain round trip over the protocol's socket type (`AF_UNIX SOCK_SEQPACKET`,
//! through the same `plughost_sys::Seqpacket` send/recv code, with the same receive buffer size) to a
//! second process that echoes each message back. No encoding, no locks, no epoll: what any
//! out-of-process design pays at least, measured in the same run as everything it is compared with.
//!
//! The peer is this same binary re-executed with the hidden `--echo-peer` argument and the socket as
//! its stdin (plain `Command`, posix_spawn: no fork inside this threaded process).

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use plughost_sys::{ChannelError, Seqpacket};
use plughost_wire::MAX_FRAME;

/// The `--echo-peer` mode: echo every message until end of file.
pub fn run_peer() -> Result<()> {
    let channel = plughost_sys::confine::take_channel_from_stdin()
        .context("echo peer: no socket on stdin")?;
    let channel = Seqpacket::from_fd(channel);
    let mut buf = vec![0u8; MAX_FRAME];
    let mut fds = Vec::new();
    loop {
        match channel.recv(&mut buf, &mut fds) {
            Ok(len) => channel.send(&buf[..len], &[]).context("echo peer: send")?,
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
}

impl Echo {
    /// Starts the peer; every round trip carries `size` bytes each way.
    pub fn start(size: usize) -> Result<Echo> {
        let (ours, theirs) = Seqpacket::pair().context("socketpair")?;
        let exe = std::env::current_exe().context("current_exe")?;
        let child = Command::new(exe)
            .arg("--echo-peer")
            .stdin(Stdio::from(theirs.into_fd()))
            .spawn()
            .context("spawning the echo peer")?;
        Ok(Echo {
            child,
            channel: Some(ours),
            message: (0..size).map(|i| i as u8).collect(),
            buf: vec![0u8; MAX_FRAME],
            fds: Vec::new(),
        })
    }

    pub fn peer_pid(&self) -> u32 {
        self.child.id()
    }

    /// One round trip; returns its duration in µs.
    pub fn round_trip(&mut self) -> Result<f64> {
        let start = Instant::now();
        self.exchange()?;
        Ok(start.elapsed().as_secs_f64() * 1e6)
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
