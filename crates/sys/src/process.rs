//! Owning handles to child processes, by pidfd, and how a process ended.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{
    pidfd_open, pidfd_send_signal, waitid, Pid, PidfdFlags, Signal, WaitId, WaitIdOptions,
    WaitIdStatus,
};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessExit {
    /// It called `exit(code)`.
    Code(i32),
    /// It was killed by `signal`.
    Signal { signal: i32, core_dumped: bool },
}

impl ProcessExit {
    fn from_status(status: &WaitIdStatus) -> ProcessExit {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => ProcessExit::Code(code),
            (None, Some(signal)) => ProcessExit::Signal {
                signal,
                core_dumped: status.dumped(),
            },
            // waitid(WEXITED) only reports terminated children; keep a value that says so.
            (None, None) => ProcessExit::Code(status.raw_code()),
        }
    }
}

impl fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessExit::Code(code) => write!(f, "exited with status {code}"),
            ProcessExit::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {}", signal_name(*signal))?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// `SIGSEGV`, `SIGKILL`, ...; `signal N` for a number without a name.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        n => return format!("signal {n}"),
    };
    name.to_owned()
}

/// A pidfd for a child of this process: signals reach exactly that process (never a recycled pid), and
/// it becomes readable when the process exits.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`, which must be a live (or unreaped) process.
    pub fn open(pid: u32) -> std::io::Result<Pidfd> {
        let raw = i32::try_from(pid).map_err(|_| Errno::INVAL)?;
        let id = Pid::from_raw(raw).ok_or(Errno::INVAL)?;
        let fd = pidfd_open(id, PidfdFlags::empty())?;
        Ok(Pidfd { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal`; a process that already exited is not an error.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        match pidfd_send_signal(&self.fd, signal) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn kill(&self) -> std::io::Result<()> {
        self.signal(Signal::KILL)
    }

    /// Has the process exited (without reaping it)?
    pub fn has_exited(&self) -> bool {
        self.wait_exit_timeout(Some(Duration::ZERO))
    }

    /// Waits up to `timeout` (forever with `None`) for the process to exit, without reaping it.
    pub fn wait_exit_timeout(&self, timeout: Option<Duration>) -> bool {
        let ts = timeout.map(|d| rustix::event::Timespec {
            tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos().into(),
        });
        loop {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, ts.as_ref()) {
                Ok(n) => return n > 0,
                Err(Errno::INTR) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Reaps the process if it has exited.
    pub fn try_wait(&self) -> std::io::Result<Option<ProcessExit>> {
        self.waitid(WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
    }

    /// Blocks until the process exits, and reaps it.
    pub fn wait(&self) -> std::io::Result<ProcessExit> {
        loop {
            if let Some(exit) = self.waitid(WaitIdOptions::EXITED)? {
                return Ok(exit);
            }
        }
    }

    fn waitid(&self, options: WaitIdOptions) -> std::io::Result<Option<ProcessExit>> {
        loop {
            match waitid(WaitId::PidFd(self.fd.as_fd()), options) {
                Ok(status) => return Ok(status.as_ref().map(ProcessExit::from_status)),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Is `pid` gone (no such process, or a zombie)? For tests and diagnostics: it reads
/// `/proc/PID/status`, because `kill(pid, 0)` succeeds on a zombie that init has not reaped yet.
pub fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(status) => status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|s| s.trim_start().starts_with('Z') || s.trim_start().starts_with('X')),
    }
}

/// Sends SIGKILL to every process of group `pgid` (the fallback when no pid namespace was possible).
pub fn kill_process_group(pgid: u32) -> std::io::Result<()> {
    let raw = i32::try_from(pgid).map_err(|_| Errno::INVAL)?;
    let pid = Pid::from_raw(raw).ok_or(Errno::INVAL)?;
    match rustix::process::kill_process_group(pid, Signal::KILL) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    // The children are reaped through their pidfds, which is what is under test.
    #[allow(clippy::zombie_processes)]
    fn exit_code_and_signal_are_classified() {
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert_eq!(pidfd.wait().unwrap(), ProcessExit::Code(3));

        let child = Command::new("/bin/sleep").arg("10").spawn().unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert!(!pidfd.has_exited());
        pidfd.kill().unwrap();
        assert!(pidfd.wait_exit_timeout(Some(Duration::from_secs(10))));
        assert_eq!(
            pidfd.wait().unwrap(),
            ProcessExit::Signal {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ProcessExit::Signal {
                signal: 11,
                core_dumped: true
            }
            .to_string(),
            "killed by signal SIGSEGV (core dumped)"
        );
    }
}
