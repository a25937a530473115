//! Reporting: what [`PluginManager::plugins`](crate::PluginManager::plugins) says of each plugin
//! (its state, counters and hook latencies), read from the plugin's state and statistics. The
//! OpenMetrics rendering of it is `metrics.rs`; this module decides nothing and changes no state.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use plughost_wire::HookKind;

use crate::config::Isolation;
use crate::error::PluginError;
use crate::plugin::{Plugin, Runtime};
use crate::stats::CrashKind;

/// A plugin's state, as [`PluginManager::plugins`](crate::PluginManager::plugins) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginState {
    Ready,
    /// Lazy activation: no hook has reached it yet.
    NotStarted,
    /// A hook is in flight.
    Busy {
        hook: HookKind,
        for_ms: u64,
    },
    /// Crashed; the next restart attempt is at `until`, `delay` after the crash.
    BackingOff {
        until: SystemTime,
        delay: Duration,
        cause: String,
    },
    /// Crashed for good (restart policy `never`, or the restart limit was reached).
    Crashed {
        cause: String,
    },
    /// Never loaded (or a restart failed to load).
    Failed {
        error: String,
    },
    Disabled,
}

impl PluginState {
    /// `ready`, `not-started`, `busy`, `backing-off`, `crashed`, `failed`, `disabled`.
    pub fn name(&self) -> &'static str {
        match self {
            PluginState::Ready => "ready",
            PluginState::NotStarted => "not-started",
            PluginState::Busy { .. } => "busy",
            PluginState::BackingOff { .. } => "backing-off",
            PluginState::Crashed { .. } => "crashed",
            PluginState::Failed { .. } => "failed",
            PluginState::Disabled => "disabled",
        }
    }
}

impl PartialEq<&str> for PluginState {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginState::Busy { hook, for_ms } => write!(f, "busy in {hook} for {for_ms} ms"),
            PluginState::BackingOff { until, .. } => {
                write!(f, "backing off until {}", crate::error::clock(*until))
            }
            PluginState::Crashed { cause } => write!(f, "crashed: {cause}"),
            PluginState::Failed { error } => write!(f, "failed: {error}"),
            PluginState::NotStarted => f.write_str("not started"),
            other => f.write_str(other.name()),
        }
    }
}

/// Latency of one hook kind for one plugin.
#[derive(Clone, Debug)]
pub struct HookLatency {
    pub hook: HookKind,
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub sum: Duration,
}

/// What [`PluginManager::plugins`](crate::PluginManager::plugins) reports for one plugin.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    pub name: String,
    pub path: std::path::PathBuf,
    pub isolation: Isolation,
    /// The host's pid (out of process, while it runs).
    pub host_pid: Option<u32>,
    pub state: PluginState,
    /// Since the current host (or in-process load) started.
    pub uptime: Option<Duration>,
    pub restarts: u64,
    pub crashes: u64,
    /// Crashes by cause: `signal`, `exit`, `protocol_violation`, `hung`, `channel_closed`.
    pub crashes_by_cause: Vec<(&'static str, u64)>,
    pub hooks_served: u64,
    pub api_calls: u64,
    /// Per hook kind that was called at least once.
    pub latency: Vec<HookLatency>,
    pub last_error: Option<String>,
    /// The stack of the last crash that left a report, one frame a line (at most a few KB).
    pub last_crash: Option<String>,
}

/// What [`PluginManager::plugins`](crate::PluginManager::plugins) reports for `p`.
pub(crate) fn info(p: &Plugin) -> PluginInfo {
    let state = p.state();
    let (host_pid, uptime, alive) = match &state.runtime {
        Some(Runtime::Host(host)) => {
            let alive = !host.is_dead();
            (
                alive.then(|| host.pid()),
                alive.then(|| host.started_at.elapsed()),
                alive,
            )
        }
        Some(Runtime::InProcess(_)) => (None, None, true),
        None => (None, None, false),
    };
    let plugin_state = if state.disabled {
        PluginState::Disabled
    } else if state.not_started {
        PluginState::NotStarted
    } else if let Some(error) = &state.latched {
        match error {
            PluginError::Crashed { cause, .. } => PluginState::Crashed {
                cause: cause.to_string(),
            },
            other => PluginState::Failed {
                error: other.to_string(),
            },
        }
    } else if let Some(backoff) = &state.backoff {
        PluginState::BackingOff {
            until: backoff.until_wall,
            delay: backoff.delay,
            cause: backoff.cause.to_string(),
        }
    } else if !alive {
        PluginState::Crashed {
            cause: "host exited; detected at the next hook".into(),
        }
    } else if let Some((hook, busy_for)) = p.stats.busy() {
        PluginState::Busy {
            hook,
            for_ms: u64::try_from(busy_for.as_millis()).unwrap_or(u64::MAX),
        }
    } else {
        PluginState::Ready
    };
    let last_error = state
        .latched
        .as_ref()
        .or(state.backoff.as_ref().map(|b| &b.error))
        .map(ToString::to_string);
    let last_crash = state.last_crash.clone();
    drop(state);
    let latency: Vec<HookLatency> = HookKind::ALL
        .iter()
        .filter_map(|&hook| {
            let h = &p.stats.hooks[hook as usize];
            Some(HookLatency {
                hook,
                count: h.count(),
                p50: h.quantile(0.5)?,
                p99: h.quantile(0.99)?,
                sum: h.sum(),
            })
        })
        .collect();
    PluginInfo {
        name: p.name().to_owned(),
        path: p.canonical.clone(),
        isolation: p.config.isolation,
        host_pid,
        state: plugin_state,
        uptime,
        restarts: p.stats.restarts.load(Ordering::Relaxed),
        crashes: p.stats.total_crashes(),
        crashes_by_cause: CrashKind::ALL
            .iter()
            .map(|k| (k.name(), p.stats.crashes(*k)))
            .collect(),
        hooks_served: latency.iter().map(|l| l.count).sum(),
        api_calls: p.stats.api_calls.load(Ordering::Relaxed),
        latency,
        last_error,
        last_crash,
    }
}
