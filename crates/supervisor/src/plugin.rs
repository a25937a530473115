//! One configured plugin: its runtime (host or in-process library), its fatal-error latch, its restart
//! policy and its counters.
//!
//! # Locks (in order)
//! 1. `Plugin::lifecycle`: held while a host is being started, restarted or stopped for this plugin
//!    (it may block for a host start-up), so that two threads never start two hosts for one plugin.
//! 2. `Plugin::state`: a leaf, held for a few field updates, never across I/O or a hook.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use plughost_sys::ProcessExit;
use plughost_wire::{HookKind, HookOutcome};

use crate::callbacks::ServiceCallbacks;
use crate::cgroups::HostCgroup;
use crate::config::{PluginConfig, RestartPolicy};
use crate::error::{CrashCause, PluginError};
use crate::inprocess::InProcessPlugin;
use crate::pool::Pool;
use crate::proxy::{Host, OutgoingHook};
use crate::stats::Stats;

#[derive(Clone)]
pub(crate) enum Runtime {
    Host(Arc<Host>),
    InProcess(Arc<InProcessPlugin>),
}

impl Runtime {
    /// Delivers `hook`, timed in `stats`; `None` when the plugin does not take this hook. A host
    /// that failed is taken off the pool (the caller records the crash).
    pub(crate) fn call_hook(
        &self,
        hook: &OutgoingHook<'_>,
        scope: &dyn ServiceCallbacks,
        deadline: Duration,
        stats: &Stats,
        pool: &Pool,
    ) -> Option<Result<HookOutcome, CrashCause>> {
        let kind = hook.kind();
        match self {
            Runtime::Host(host) => {
                if !host.hooks.contains(kind) {
                    return None;
                }
                let started = stats.hook_started(kind);
                let outcome = host.call_hook(hook, scope, deadline);
                stats.hook_done(kind, started);
                if outcome.is_err() {
                    pool.unregister(host);
                }
                Some(outcome)
            }
            Runtime::InProcess(p) => {
                let started = stats.hook_started(kind);
                let outcome = p.call(hook.hook(), scope);
                stats.hook_done(kind, started);
                outcome.map(Ok)
            }
        }
    }

    /// Stops a host (asked to exit, killed after a short grace) and takes it off the pool; an
    /// in-process library stays loaded.
    pub(crate) fn stop(self, pool: &Pool) {
        if let Runtime::Host(host) = self {
            host.shutdown(Duration::from_millis(500));
            pool.unregister(&host);
        }
    }
}

/// After a crash under `RestartPolicy::OnCrash`: the error, and when the next start may happen.
#[derive(Clone)]
pub(crate) struct Backoff {
    pub error: PluginError,
    pub cause: CrashCause,
    pub until: Instant,
    pub until_wall: SystemTime,
    pub delay: Duration,
}

/// Orders failures in time across every plugin of the process: the fail-fast reports the first
/// (`PLUGIN_ABI.md`, "Crashes": one latch, the first crash in time).
static FAILURES: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
pub(crate) struct State {
    pub runtime: Option<Runtime>,
    /// The first fatal error, for good (until a manual restart). Set through [`State::latch`].
    pub latched: Option<PluginError>,
    /// Set through [`State::back_off`].
    pub backoff: Option<Backoff>,
    /// When `latched` or `backoff` was set, in [`FAILURES`] order.
    failed_at: u64,
    pub disabled: bool,
    /// Lazy activation: no hook has reached it yet (no runtime, no failure).
    pub not_started: bool,
    /// Crash times within the policy's window.
    pub recent_crashes: Vec<Instant>,
    /// The cgroup of the current (or last) host, if it has one: its counters classify its death.
    pub cgroup: Option<Arc<HostCgroup>>,
    /// sha256 of the library bytes the current host loaded (a reload re-verifies against it).
    pub loaded_sha256: Option<String>,
    /// The stack of the last crash that left a report (`plugins()`, `last_crash`).
    pub last_crash: Option<String>,
}

impl State {
    /// Latches `error` unless an earlier error is latched; returns the latched one.
    pub fn latch(&mut self, error: PluginError) -> PluginError {
        if self.latched.is_none() {
            self.failed_at = FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        self.latched.get_or_insert(error).clone()
    }

    fn back_off(&mut self, backoff: Backoff) {
        self.failed_at = FAILURES.fetch_add(1, Ordering::Relaxed);
        self.backoff = Some(backoff);
    }

    /// When the failure a fail-fast would report happened (smaller is earlier).
    pub fn failed_at(&self) -> u64 {
        self.failed_at
    }

    /// Is `host` this plugin's current host?
    fn runs(&self, host: &Host) -> bool {
        matches!(&self.runtime, Some(Runtime::Host(h)) if std::ptr::eq(&**h, host))
    }
}

pub(crate) struct Plugin {
    pub config: PluginConfig,
    pub canonical: PathBuf,
    pub stats: Arc<Stats>,
    pub lifecycle: Mutex<()>,
    pub state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a dispatch may do with a plugin now.
pub(crate) enum Readiness {
    Ready(Runtime),
    /// Not loaded, disabled, or does not take part (non-veto hook of a failed plugin).
    Skip,
    /// A veto hook must fail with this error.
    Fail(PluginError),
    /// The backoff has elapsed: start a new host first.
    Restart,
    /// Lazy activation: its first hook; start its host first.
    Activate,
}

impl Plugin {
    pub fn new(config: PluginConfig, canonical: PathBuf) -> Plugin {
        Plugin {
            config,
            canonical,
            stats: Arc::new(Stats::new()),
            lifecycle: Mutex::new(()),
            state: Mutex::new(State::default()),
        }
    }

    /// Names the limit behind a death that one of the configured limits explains.
    /// A CPU limit is certain (the kernel's SIGXCPU), and so is an OOM kill in the host's cgroup; a
    /// memory limit as RLIMIT_AS only shows as a failed allocation, and a process limit as a failed
    /// fork or thread creation, which the plugin turns into an abort or a fault: reported as probable.
    pub(crate) fn explain(&self, cause: CrashCause) -> CrashCause {
        const SIGABRT: i32 = 6;
        const SIGBUS: i32 = 7;
        const SIGSEGV: i32 = 11;
        const SIGXCPU: i32 = 24;
        let cgroup = self.state().cgroup.clone();
        if let Some(explained) = cgroup.as_ref().and_then(|c| c.explain(&cause)) {
            return explained;
        }
        // The rlimits the host actually set (a limit its cgroup enforces is not an rlimit).
        let limits = &cgroup
            .as_ref()
            .map_or(self.config.limits, |c| c.rlimits(self.config.limits));
        match &cause {
            CrashCause::Exited(ProcessExit::Code(plughost_wire::EXIT_CHANNEL_LOST)) => {
                CrashCause::ChannelClosed
            }
            CrashCause::Exited(ProcessExit::Signal {
                signal: SIGXCPU, ..
            }) => match limits.cpu_seconds {
                Some(seconds) => {
                    CrashCause::LimitExceeded(format!("its CPU time limit of {seconds} s"))
                }
                None => cause,
            },
            CrashCause::Exited(
                exit @ ProcessExit::Signal {
                    signal: SIGABRT | SIGBUS | SIGSEGV,
                    ..
                },
            )
            | CrashCause::Faulted {
                exit:
                    exit @ ProcessExit::Signal {
                        signal: SIGABRT | SIGBUS | SIGSEGV,
                        ..
                    },
                ..
            } => match (limits.address_space, limits.processes) {
                (Some(bytes), _) => CrashCause::ProbableMemoryLimit { exit: *exit, bytes },
                (None, Some(limit)) => CrashCause::ProbableProcessLimit { exit: *exit, limit },
                (None, None) => cause,
            },
            _ => cause,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn readiness(&self, kind: HookKind) -> Readiness {
        let state = self.state();
        if state.disabled {
            return Readiness::Skip;
        }
        if state.not_started {
            return Readiness::Activate;
        }
        if let Some(error) = &state.latched {
            return if kind.may_veto() {
                Readiness::Fail(error.clone())
            } else {
                Readiness::Skip
            };
        }
        if let Some(backoff) = &state.backoff {
            if Instant::now() >= backoff.until {
                return Readiness::Restart;
            }
            return if kind.may_veto() {
                Readiness::Fail(PluginError::BackingOff {
                    plugin: self.name().to_owned(),
                    cause: backoff.cause.clone(),
                    retry_at: backoff.until_wall,
                })
            } else {
                Readiness::Skip
            };
        }
        match &state.runtime {
            Some(runtime) => Readiness::Ready(runtime.clone()),
            None => Readiness::Skip,
        }
    }

    /// The current host `host` died: records the crash and applies the restart policy, once per
    /// host, whoever sees the death first (the dispatcher of a hook, or the monitor between hooks).
    /// Returns the error the operation reports: when the death was already recorded, the error then
    /// latched (or backed off on), so that every operation reports the same crash.
    pub fn host_crashed(
        &self,
        host: &Host,
        hook: Option<HookKind>,
        cause: CrashCause,
    ) -> PluginError {
        let report = self.report_of(&cause);
        let cause = self.explain(cause);
        let mut state = self.state();
        if !state.runs(host) {
            let recorded = state
                .latched
                .clone()
                .or_else(|| state.backoff.as_ref().map(|b| b.error.clone()));
            return recorded.unwrap_or_else(|| PluginError::Crashed {
                plugin: self.name().to_owned(),
                hook,
                cause,
            });
        }
        self.keep_report(&mut state, report);
        self.apply_crash(&mut state, hook, cause)
    }

    /// Records a crash (of a start-up: no current host) and applies the restart policy. Returns the
    /// error the operation reports.
    pub fn crashed(&self, hook: Option<HookKind>, cause: CrashCause) -> PluginError {
        let report = self.report_of(&cause);
        let cause = self.explain(cause);
        let mut state = self.state();
        self.keep_report(&mut state, report);
        self.apply_crash(&mut state, hook, cause)
    }

    /// The crash report's stack, logged; it goes to `plugins()` too, even where `explain` names a
    /// limit instead.
    fn report_of(&self, cause: &CrashCause) -> Option<(String, String)> {
        let stack = cause.report().map(|report| report.stack())?;
        Some((cause.to_string(), stack))
    }

    /// Logs a crash report and keeps its stack for `plugins()` (once per death: the caller holds
    /// the state and knows the death is not yet recorded).
    fn keep_report(&self, state: &mut State, report: Option<(String, String)>) {
        if let Some((cause, stack)) = report {
            tracing::error!(plugin = %self.name(), "crash report ({cause}):\n{stack}");
            state.last_crash = Some(stack);
        }
    }

    /// The restart policy, with the state locked (so a death is recorded once).
    fn apply_crash(
        &self,
        state: &mut State,
        hook: Option<HookKind>,
        cause: CrashCause,
    ) -> PluginError {
        self.stats.crashed(&cause);
        let error = PluginError::Crashed {
            plugin: self.name().to_owned(),
            hook,
            cause: cause.clone(),
        };
        state.runtime = None;
        match self.config.restart {
            RestartPolicy::Never => {
                tracing::error!(plugin = %self.name(), "{error}; latched (restart = never)");
                state.latch(error.clone());
            }
            RestartPolicy::OnCrash {
                max_restarts,
                window,
                backoff_initial,
                backoff_max,
            } => {
                let now = Instant::now();
                state
                    .recent_crashes
                    .retain(|t| now.duration_since(*t) < window);
                state.recent_crashes.push(now);
                let crashes = state.recent_crashes.len();
                if crashes > max_restarts as usize {
                    tracing::error!(plugin = %self.name(),
                        "{error}; {crashes} crashes within {window:?}: restart limit {max_restarts} reached, latched");
                    state.backoff = None;
                    state.latch(error.clone());
                } else {
                    let doublings = u32::try_from(crashes - 1).unwrap_or(u32::MAX).min(30);
                    let delay = backoff_initial
                        .saturating_mul(1 << doublings)
                        .min(backoff_max);
                    tracing::warn!(plugin = %self.name(),
                        "{error}; restart {crashes} of {max_restarts} in {delay:?}");
                    state.back_off(Backoff {
                        error: error.clone(),
                        cause,
                        until: now + delay,
                        until_wall: SystemTime::now() + delay,
                        delay,
                    });
                }
            }
        }
        error
    }
}
