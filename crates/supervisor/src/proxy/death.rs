//! How a host ended: killing it, reaping it, and classifying its death (a crash with its report,
//! a hang, a protocol violation, a lost channel) into the [`CrashCause`] every error path ends in.
//! Not here: the monitor that notices the death (`monitor.rs`), the policy applied to it (`plugin.rs`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, TryLockError};
use std::time::Duration;

use plughost_sys::ProcessExit;
use plughost_wire::HostMsg;

use super::{lock, Dispatch, Host, Reader, EXIT_GRACE};
use crate::error::CrashCause;

/// How often the monitor tries for a dead host's read token a pool thread holds (500 µs apart).
const DEATH_TOKEN_TRIES: u32 = 200;

impl Host {
    /// Kills the host and everything it spawned, recording why (first reason wins).
    pub fn kill_for(&self, cause: CrashCause) {
        if self.killed_for.set(cause.clone()).is_ok() {
            tracing::warn!(plugin = %self.name, pid = self.pid(), "killing host: {cause}");
        }
        self.kill();
    }

    /// SIGKILL to the host and its process group; in pid-namespace mode the namespace's init dies with
    /// it (parent-death signal) and the kernel kills the rest. Only while the host is unreaped: its pid
    /// (and so its group id) cannot be reused before that.
    pub fn kill(&self) {
        let exit = lock(&self.exit);
        if exit.is_none() {
            let _ = self.pidfd.kill();
            let _ = plughost_sys::process::kill_process_group(self.pid());
        }
        drop(exit);
        self.channel.shutdown();
        self.ring.wake_service();
    }

    /// Called by the monitor when the pidfd says the host exited: reap, then wake any dispatcher.
    pub fn on_exit(&self) {
        self.dead.store(true, Ordering::Release);
        // Whatever the plugin left behind in the fallback process group goes too (before reaping,
        // while the group id cannot have been reused).
        if lock(&self.exit).is_none() {
            let _ = plughost_sys::process::kill_process_group(self.pid());
        }
        let exit = self.reap();
        self.channel.shutdown();
        self.hangups.forget(&self.channel);
        self.ring.wake_service();
        if self.killed_for.get().is_none() && !self.stopping.load(Ordering::Acquire) {
            if let Some(exit) = exit {
                tracing::warn!(plugin = %self.name, pid = self.pid(), "host {exit}");
            }
        }
    }

    pub(super) fn reap(&self) -> Option<ProcessExit> {
        let mut exit = lock(&self.exit);
        if exit.is_none() {
            if let Ok(Some(status)) = self.pidfd.try_wait() {
                *exit = Some(status);
            }
        }
        *exit
    }

    /// Why the host is gone (waiting briefly for it to finish exiting, killing it if it does not).
    pub fn crash_cause(&self) -> CrashCause {
        self.dead.store(true, Ordering::Release);
        if let Some(cause) = self.killed_for.get() {
            return cause.clone();
        }
        if !self.pidfd.wait_exit_timeout(Some(EXIT_GRACE)) {
            self.kill_for(CrashCause::ChannelClosed);
            return CrashCause::ChannelClosed;
        }
        match self.reap() {
            Some(exit) => self.located(exit),
            None => self
                .killed_for
                .get()
                .cloned()
                .unwrap_or(CrashCause::ChannelClosed),
        }
    }

    /// `Faulted` with the report when the host died of a fault signal and left one, else `Exited`.
    pub(super) fn located(&self, exit: ProcessExit) -> CrashCause {
        let (ProcessExit::Signal { signal, .. }, Some(crash)) = (exit, &self.crash) else {
            return CrashCause::Exited(exit);
        };
        if !plughost_sys::crash_report::SIGNALS.contains(&signal) {
            return CrashCause::Exited(exit);
        }
        let report = crash.report.get_or_init(|| {
            crate::symbolize::read_report(&crash.memfd, &crash.library, &crash.library_name)
                .filter(|report| report.signal == signal)
                .map(Arc::new)
        });
        match report {
            Some(report) => CrashCause::Faulted {
                exit,
                report: report.clone(),
            },
            None => CrashCause::Exited(exit),
        }
    }

    pub(super) fn violation(&self, what: String) -> CrashCause {
        self.kill_for(CrashCause::ProtocolViolation(what));
        self.crash_cause()
    }

    /// Why a host the monitor saw die died (`None` while it lives). With `wait` false, also `None`
    /// while someone holds the read token: a dispatcher in a hook classifies the death itself, and a
    /// pool thread leaves it to the next dispatch.
    pub fn death_cause(&self, wait: bool) -> Option<CrashCause> {
        if !self.is_dead() {
            return None;
        }
        let mut reader = if wait {
            lock(&self.reader)
        } else {
            let mut tries = 0;
            loop {
                match self.reader.try_lock() {
                    Ok(reader) => break reader,
                    Err(TryLockError::Poisoned(e)) => break e.into_inner(),
                    Err(TryLockError::WouldBlock) => {
                        // A dispatcher in a hook of this host records the death itself. Otherwise
                        // a pool thread holds the token, only while it claims work (it saw the
                        // same death on the socket, say): wait for it, briefly, rather than leave
                        // the death to the next operation.
                        if lock(&self.backlog).hooks > 0 || tries >= DEATH_TOKEN_TRIES {
                            return None;
                        }
                        tries += 1;
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            }
        };
        Some(self.classify_dead(&mut reader))
    }

    /// With the read token of a dead host: what it sent before it died may say why (`Blocked`).
    pub(super) fn classify_dead(&self, reader: &mut Reader) -> CrashCause {
        while let Ok(Some(msg)) = self.recv(reader) {
            if let HostMsg::Blocked { syscall } = msg {
                self.kill_for(CrashCause::BlockedSyscall { syscall });
            }
        }
        self.crash_cause()
    }

    pub(super) fn hung(&self, dispatch: &Dispatch<'_>) -> CrashCause {
        self.kill_for(CrashCause::Hung {
            hook: dispatch.hook.kind(),
            after: dispatch.deadline,
        });
        self.crash_cause()
    }
}
