//! The OS seam of plughost: everything that talks to the kernel beyond plain `std` lives here, behind
//! small typed APIs.
//!
//! - [`channel`]: the `SOCK_SEQPACKET` channel between service and host, with `SCM_RIGHTS`.
//! - [`process`]: pidfds, how a process ended ([`process::ProcessExit`]), signal names.
//! - [`ring`]: the shared-memory call ring (slots for API calls, a lane for hook answers).
//! - [`confine`]: what the host binary does to itself before any plugin code runs (parent-death
//!   signal, closing inherited fds, its own pid namespace).
//! - [`cgroup`]: cgroup v2 files (find the mount and our cgroup, create, limit, join, kill, remove).
//! - [`syscalls`]: the syscalls the host's seccomp profile forbids, by number and name.
//! - [`crash_report`]: the crash report memfd's format (the signals that carry one, the layout).
//! - `waiter` (private): the tiny static program (`waiter/waiter.c`, built by `build.rs`) that the
//!   outer host and the namespace init exec from a sealed memfd once they only wait.
//!
//! Syscalls go through `rustix`; `libc` only where rustix has no wrapper (`fork`, `close_range`,
//! `_exit`, `fexecve`), each in a small `unsafe` block with its invariant written next to it. This crate knows
//! nothing about plugins or the wire format.

pub mod cgroup;
pub mod channel;
pub mod confine;
pub mod crash_report;
pub mod process;
pub mod ring;
pub mod syscalls;
mod waiter;

pub use channel::{ChannelError, Seqpacket};
pub use process::{signal_name, Pidfd, ProcessExit};
pub use ring::{HostEnds, Ring, RingError};
