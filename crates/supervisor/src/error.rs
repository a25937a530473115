//! The errors a service shows its users, worded as `PLUGIN_ABI.md` ("User-visible errors") says.

use std::fmt;
use std::time::{Duration, SystemTime};

use plughost_sys::ProcessExit;
use plughost_wire::{HookKind, Version};

/// How a host ended, or why the service ended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrashCause {
    /// The host process ended on its own (a signal from a fault, `exit`, ...).
    Exited(ProcessExit),
    /// The host died of a fault signal and its handler left a report: where (`symbolize.rs`).
    Faulted {
        exit: ProcessExit,
        report: std::sync::Arc<crate::symbolize::CrashReport>,
    },
    /// The host broke the protocol (malformed, oversized or unexpected message); the service killed it.
    ProtocolViolation(String),
    /// The host closed its channel but kept running; the service killed it.
    ChannelClosed,
    /// The plugin made a syscall the seccomp filter forbids.
    BlockedSyscall { syscall: u32 },
    /// The host hit a configured resource limit, e.g. `its CPU time limit of 2 s`.
    LimitExceeded(String),
    /// The host died of an abort or fault while it had an address-space limit: most likely an
    /// allocation failed at the limit.
    ProbableMemoryLimit { exit: ProcessExit, bytes: u64 },
    /// The host died of an abort or fault after a fork or thread creation was refused at its process
    /// limit (or while it had one, and no memory limit): most likely it could not handle the refusal.
    ProbableProcessLimit { exit: ProcessExit, limit: u64 },
    /// A hook did not answer within its deadline; the service killed the host.
    Hung { hook: HookKind, after: Duration },
}

impl fmt::Display for CrashCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashCause::Exited(exit) => exit.fmt(f),
            CrashCause::Faulted { exit, report } => write!(f, "{exit}{}", report.summary()),
            CrashCause::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            CrashCause::ChannelClosed => f.write_str("closed its channel to the service"),
            CrashCause::LimitExceeded(what) => write!(f, "exceeded {what}"),
            CrashCause::ProbableMemoryLimit { exit, bytes } => {
                write!(
                    f,
                    "{exit}, probably at its memory limit of {} MiB",
                    bytes / (1024 * 1024)
                )
            }
            CrashCause::ProbableProcessLimit { exit, limit } => {
                write!(f, "{exit}, probably at its process limit of {limit}")
            }
            CrashCause::BlockedSyscall { syscall } => {
                write!(f, "blocked syscall {syscall}")?;
                if let Some(name) = plughost_sys::syscalls::name_of(*syscall) {
                    write!(f, " ({name})")?;
                }
                Ok(())
            }
            CrashCause::Hung { hook, after } => {
                write!(f, "hung: did not answer {hook} within {}", seconds(*after))
            }
        }
    }
}

/// A plugin made an operation fail, or could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// A veto hook returned a failure (or set a message and returned success, which is reported as
    /// `PLUGHOST_E_ILLEGAL_STATE`).
    #[error("plugin '{plugin}' returned a fatal error{}", vetoed_suffix(message, *status))]
    Vetoed {
        plugin: String,
        hook: HookKind,
        status: i32,
        message: Option<String>,
    },
    /// The host died or was killed during the operation (or earlier: the crash is latched). A hung
    /// hook reads `plugin 'x' did not answer on_vm_started within 30 s`.
    #[error("{}", crashed_text(plugin, cause))]
    Crashed {
        plugin: String,
        hook: Option<HookKind>,
        cause: CrashCause,
    },
    /// The plugin crashed and is backing off before its next restart attempt.
    #[error(
        "{} (next restart attempt at {}, in {})",
        crashed_text(plugin, cause),
        clock(*retry_at),
        seconds(retry_at.duration_since(SystemTime::now()).unwrap_or_default())
    )]
    BackingOff {
        plugin: String,
        cause: CrashCause,
        retry_at: SystemTime,
    },
    /// The plugin could not be loaded.
    #[error("plugin '{plugin}' failed to load: {reason}")]
    LoadFailed { plugin: String, reason: String },
    /// `PLUGHOST_REQUIRE_VERSION` refused the running version.
    #[error("plugin '{plugin}' requires a newer version of plughost than {running}")]
    RequiresUpdate { plugin: String, running: Version },
}

fn crashed_text(plugin: &str, cause: &CrashCause) -> String {
    match cause {
        CrashCause::Hung { hook, after } => {
            format!(
                "plugin '{plugin}' did not answer {hook} within {}",
                seconds(*after)
            )
        }
        cause => format!("plugin '{plugin}' crashed: {cause}"),
    }
}

/// `30 s`, `1.5 s`, `250 ms`.
pub(crate) fn seconds(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let s = d.as_secs_f64();
        if s.fract() < 0.05 {
            format!("{} s", s.round())
        } else {
            format!("{s:.1} s")
        }
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// `HH:MM:SS UTC` of a wall-clock time.
pub(crate) fn clock(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn vetoed_suffix(message: &Option<String>, status: i32) -> String {
    let status = status_text(status);
    match message {
        Some(message) => format!(": {message} (status {status})"),
        None => format!(" (status {status})"),
    }
}

/// A status as users see it: `-30 (EROFS)`, `-10005 (PLUGHOST_E_NOT_FOUND)`, a bare number when it
/// has no name.
pub(crate) fn status_text(status: i32) -> String {
    match plughost_abi::status_name(status) {
        Some(name) => format!("{status} ({name})"),
        None => status.to_string(),
    }
}

impl CrashCause {
    /// The crash report, when the host left one.
    pub fn report(&self) -> Option<&crate::symbolize::CrashReport> {
        match self {
            CrashCause::Faulted { report, .. } => Some(report),
            _ => None,
        }
    }
}

impl PluginError {
    /// The plugin at fault.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Vetoed { plugin, .. }
            | PluginError::Crashed { plugin, .. }
            | PluginError::BackingOff { plugin, .. }
            | PluginError::LoadFailed { plugin, .. }
            | PluginError::RequiresUpdate { plugin, .. } => plugin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_follow_the_spec() {
        let e = PluginError::Vetoed {
            plugin: "p".into(),
            hook: HookKind::VmStarted,
            status: -22,
            message: Some("no".into()),
        };
        assert_eq!(
            e.to_string(),
            "plugin 'p' returned a fatal error: no (status -22 (EINVAL))"
        );
        let e = PluginError::Vetoed {
            plugin: "p".into(),
            hook: HookKind::VmStarted,
            status: -5,
            message: None,
        };
        assert_eq!(
            e.to_string(),
            "plugin 'p' returned a fatal error (status -5 (EIO))"
        );
        let e = PluginError::Crashed {
            plugin: "p".into(),
            hook: None,
            cause: CrashCause::Exited(ProcessExit::Signal {
                signal: 11,
                core_dumped: false,
            }),
        };
        assert_eq!(
            e.to_string(),
            "plugin 'p' crashed: killed by signal SIGSEGV"
        );
        let e = PluginError::RequiresUpdate {
            plugin: "p".into(),
            running: Version {
                major: 0,
                minor: 1,
                revision: 0,
            },
        };
        assert_eq!(
            e.to_string(),
            "plugin 'p' requires a newer version of plughost than 0.1.0"
        );
    }
}
