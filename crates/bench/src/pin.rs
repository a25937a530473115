//! `--pin`: controlled CPU placement, to tell the software cost of a round trip from the cost of
//! waking the other vCPU (measured on the development VM: ~20 µs per cross-vCPU wake-up here, against a few µs on one
//! core). Unpinned, the scheduler decides per process, and a process tends to stay where it first
//! slept: one host may sit beside the service and another on the other vCPU, run after run.
//!
//! - `same`: the bench and everything it starts share CPU 0 (affinity is inherited).
//! - `split`: the bench (the service) on CPU 0, the peer of every round-trip case (echo peer, hosts
//!   of the hook and callback cases, with all their threads and children) on CPU 1. Hosts started
//!   by the start-up cases stay on CPU 0.

use anyhow::{bail, Context, Result};
use rustix::process::Pid;
use rustix::thread::{sched_setaffinity, CpuSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    None,
    Same,
    Split,
}

impl Pin {
    pub fn parse(s: &str) -> Result<Pin> {
        Ok(match s {
            "none" => Pin::None,
            "same" => Pin::Same,
            "split" => Pin::Split,
            other => bail!("--pin {other:?}: expected none, same or split"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Pin::None => "none",
            Pin::Same => "same",
            Pin::Split => "split",
        }
    }
}

fn cpu(n: usize) -> CpuSet {
    let mut set = CpuSet::new();
    set.set(n);
    set
}

/// Pins the calling thread; call it before any other thread or child exists, so that all inherit it.
pub fn pin_self(n: usize) -> Result<()> {
    sched_setaffinity(None, &cpu(n)).with_context(|| format!("pinning the bench to CPU {n}"))
}

/// Pins every thread of `pid` and, recursively, of its children (a host is two processes).
pub fn pin_tree(pid: u32, n: usize) -> Result<()> {
    let set = cpu(n);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for task in tasks {
        let tid: u32 = match task?.file_name().to_str().and_then(|t| t.parse().ok()) {
            Some(tid) => tid,
            None => continue,
        };
        let raw = i32::try_from(tid).ok().and_then(Pid::from_raw);
        let raw = raw.with_context(|| format!("bad tid {tid}"))?;
        sched_setaffinity(Some(raw), &set)
            .with_context(|| format!("pinning thread {tid} of {pid} to CPU {n}"))?;
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            pin_tree(child, n)?;
        }
    }
    Ok(())
}

/// The CPU the process doing `pid`'s work last ran on: for a host, its deepest process (the plugin
/// process at the end of the outer → init → plugin chain); else `pid` itself. `/proc/PID/stat`
/// field 39.
pub fn last_cpu(pid: u32) -> Option<u32> {
    let mut worker = pid;
    while let Some(child) =
        std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|c| c.parse().ok()))
    {
        worker = child;
    }
    cpu_of(&format!("/proc/{worker}/stat"))
}

/// The CPU the calling thread last ran on (the bench's dispatching thread, when called from main).
pub fn own_cpu() -> Option<u32> {
    cpu_of("/proc/thread-self/stat")
}

fn cpu_of(stat_path: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(36)?.parse().ok()
}
