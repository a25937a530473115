//! Drives one plugin through the contract and collects what it did, hook by hook.
//!
//! The rounds, in order: the lifecycle once (`on_vm_started` → distribution registered, started →
//! container session created → session VM started, stopping → container session stopping →
//! distribution stopping, unregistered → `on_vm_stopping`); every stopping hook for ids never
//! started; two sessions' lifecycles at once; `cycles` lifecycles (fds, threads and memory of the
//! host's processes compared before and after); one lifecycle per documented API error; then a pause
//! for calls from plugin threads after the hooks.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plughost::{
    ContainerSession, CrashCause, Deadlines, Distribution, HookKind, OfflineDistribution,
    PluginError, PluginManager, PluginState, Session, VmSettings,
};

use crate::capture::{Capture, Output};
use crate::report::{Finding, HookRow, Verdict};
use crate::service::{Answer, CheckService, DOCUMENTED_ERRORS};

/// What one hook kind did across all rounds.
#[derive(Default)]
struct HookState {
    samples: Vec<Duration>,
    fails: BTreeSet<String>,
    warns: BTreeSet<String>,
    notes: BTreeSet<String>,
}

pub struct Driver {
    pub manager: PluginManager,
    pub service: Arc<CheckService>,
    pub name: String,
    pub capture: Arc<Capture>,
    pub output: Arc<Output>,
    pub deadlines: Deadlines,
    hooks: Mutex<[HookState; 10]>,
    general: Mutex<Vec<Finding>>,
    /// Held while a crashed plugin is restarted.
    restarting: Mutex<()>,
}

/// Processes, fds, threads and resident memory of a host (every process of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub processes: usize,
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

fn session(id: u32) -> Session {
    Session {
        id,
        uid: 1000 + id,
        gid: 1000 + id,
        user_name: format!("checker{id}"),
    }
}

fn distribution(id: u32) -> Distribution {
    Distribution {
        id: [id as u8; 16],
        name: format!("debian-12-{id}"),
        pid_namespace: 4_026_532_000 + u64::from(id),
        package: "org.debian.bookworm".into(),
        init_pid: 4242,
        flavor: "debian".into(),
        version: "12".into(),
    }
}

fn offline(id: u32) -> OfflineDistribution {
    let d = distribution(id);
    OfflineDistribution {
        id: d.id,
        name: d.name,
        package: d.package,
        flavor: d.flavor,
        version: d.version,
    }
}

fn container_session(id: u32) -> ContainerSession {
    ContainerSession {
        id,
        display_name: format!("editor-{id}"),
        application_pid: 4343,
        uid: 1000 + id,
        gid: 1000 + id,
    }
}

impl Driver {
    pub fn new(
        manager: PluginManager,
        service: Arc<CheckService>,
        name: String,
        capture: Arc<Capture>,
        output: Arc<Output>,
        deadlines: Deadlines,
    ) -> Driver {
        Driver {
            manager,
            service,
            name,
            capture,
            output,
            deadlines,
            hooks: Mutex::new(Default::default()),
            general: Mutex::new(Vec::new()),
            restarting: Mutex::new(()),
        }
    }

    fn crashes(&self) -> u64 {
        self.manager.plugins().first().map_or(0, |p| p.crashes)
    }

    fn with_hook(&self, kind: HookKind, f: impl FnOnce(&mut HookState)) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut hooks[kind as usize]);
    }

    /// Calls one hook through the manager, times it and judges the outcome.
    fn call(&self, kind: HookKind, hook: impl FnOnce(&Self) -> Result<(), PluginError>) -> bool {
        let crashes = self.crashes();
        let events = self.capture.mark();
        let started = Instant::now();
        let result = hook(self);
        let took = started.elapsed();
        let mut fails = Vec::new();
        let mut warns = Vec::new();
        let mut notes = Vec::new();
        match &result {
            Ok(()) => {}
            Err(PluginError::Vetoed {
                status, message, ..
            }) => match message {
                None => fails.push(format!("vetoed with no message (status {status})")),
                Some(_) if *status == plughost_status::ILLEGAL_STATE => fails.push(
                    "set a plugin_error message and returned success (reported as \
                     PLUGHOST_E_ILLEGAL_STATE)"
                        .into(),
                ),
                Some(message) => notes.push(format!("vetoed: {message} (status {status})")),
            },
            Err(PluginError::Crashed { cause, .. }) => fails.push(crash_text(cause)),
            Err(other) => fails.push(other.to_string()),
        }
        // A hook that may not veto returns nothing: its crash shows in the manager's log, on this
        // thread.
        let quiet_crash = result
            .is_ok()
            .then(|| self.capture.crash_since(events))
            .flatten();
        let crashed_quietly = quiet_crash.is_some();
        if let Some(last) = quiet_crash {
            let text = last.replacen(&format!("plugin '{}' ", self.name), "", 1);
            fails.push(if text.starts_with("did not answer") {
                format!("exceeded its deadline: {text}")
            } else {
                text
            });
        }
        for message in self.capture.ignored_since(events, kind) {
            if let Some((_, rest)) = message.split_once("returned a fatal error: ") {
                fails.push(format!(
                    "plugin_error outside a veto hook: {rest} (only on_vm_started, \
                     on_distribution_started and on_container_session_created may veto)"
                ));
            } else if let Some((_, rest)) = message.split_once("returned a fatal error ") {
                warns.push(format!("returned a failure {rest}; the service ignores it"));
            }
        }
        let deadline = self.deadlines.of(kind);
        if took > deadline / 2 && !fails.iter().any(|f| f.contains("deadline")) {
            warns.push(format!(
                "took {} ms of its {} ms deadline",
                took.as_millis(),
                deadline.as_millis()
            ));
        }
        // A hook that passed its deadline is the one named in the text: with two sessions at
        // once, another hook waiting for the same host fails with it.
        let mut own = Vec::new();
        for fail in fails {
            let hung = HookKind::ALL.iter().copied().find(|k| {
                fail.starts_with(&format!(
                    "exceeded its deadline: did not answer {} ",
                    k.name()
                ))
            });
            match hung {
                Some(hook) if hook != kind => self.with_hook(hook, |state| {
                    state.fails.insert(fail);
                }),
                _ => own.push(fail),
            }
        }
        self.with_hook(kind, |state| {
            state.samples.push(took);
            state.fails.extend(own);
            state.warns.extend(warns);
            state.notes.extend(notes);
        });
        if (result.is_err() || crashed_quietly) && self.crashes() > crashes {
            self.restart_if_crashed();
        }
        result.is_ok()
    }

    /// Starts a crashed plugin again, so the remaining hooks are checked too (once, when two
    /// threads saw the crash).
    fn restart_if_crashed(&self) {
        let _one = self.restarting.lock().unwrap_or_else(|e| e.into_inner());
        let crashed = self.manager.plugins().first().is_some_and(|p| {
            matches!(
                p.state,
                PluginState::Crashed { .. } | PluginState::BackingOff { .. }
            )
        });
        if crashed {
            let _ = self.manager.restart_plugin(&self.name);
        }
    }

    /// One lifecycle for `id`: every hook in order, stopping early (as a service would) where a
    /// start is vetoed or fails.
    pub fn lifecycle(&self, id: u32) {
        let (s, d, o, c) = (
            session(id),
            distribution(id),
            offline(id),
            container_session(id),
        );
        let service = &*self.service;
        let vm = self.call(HookKind::VmStarted, |me| {
            me.manager.on_vm_started(
                &s,
                &VmSettings { flags: 0 },
                &service.scope(HookKind::VmStarted),
            )
        });
        if !vm {
            return;
        }
        self.call(HookKind::DistributionRegistered, |me| {
            me.manager.on_distribution_registered(
                &s,
                &o,
                &service.scope(HookKind::DistributionRegistered),
            );
            Ok(())
        });
        let distro = self.call(HookKind::DistributionStarted, |me| {
            me.manager.on_distribution_started(
                &s,
                &d,
                &service.scope(HookKind::DistributionStarted),
            )
        });
        if distro {
            let created = self.call(HookKind::ContainerSessionCreated, |me| {
                me.manager.on_container_session_created(
                    &c,
                    &service.scope(HookKind::ContainerSessionCreated),
                )
            });
            if created {
                self.stop_session(id);
            }
            self.call(HookKind::DistributionStopping, |me| {
                me.manager.on_distribution_stopping(
                    &s,
                    &d,
                    &service.scope(HookKind::DistributionStopping),
                );
                Ok(())
            });
        }
        self.call(HookKind::DistributionUnregistered, |me| {
            me.manager.on_distribution_unregistered(
                &s,
                &o,
                &service.scope(HookKind::DistributionUnregistered),
            );
            Ok(())
        });
        self.call(HookKind::VmStopping, |me| {
            me.manager
                .on_vm_stopping(&s, &service.scope(HookKind::VmStopping));
            Ok(())
        });
    }

    /// A container session's VM start and stop, then its stop.
    fn stop_session(&self, id: u32) {
        let c = container_session(id);
        let service = &*self.service;
        for kind in [
            HookKind::SessionVmStarted,
            HookKind::SessionVmStopping,
            HookKind::ContainerSessionStopping,
        ] {
            self.call(kind, |me| {
                let scope = service.scope(kind);
                match kind {
                    HookKind::SessionVmStarted => me.manager.on_session_vm_started(&c, &scope),
                    HookKind::SessionVmStopping => me.manager.on_session_vm_stopping(&c, &scope),
                    _ => me.manager.on_container_session_stopping(&c, &scope),
                }
                Ok(())
            });
        }
    }

    /// Every stopping hook for ids that were never started.
    pub fn stop_unknown(&self) {
        let id = 9_999;
        let (s, d, o) = (session(id), distribution(id), offline(id));
        let service = &*self.service;
        self.stop_session(id);
        self.call(HookKind::DistributionStopping, |me| {
            me.manager.on_distribution_stopping(
                &s,
                &d,
                &service.scope(HookKind::DistributionStopping),
            );
            Ok(())
        });
        self.call(HookKind::DistributionUnregistered, |me| {
            me.manager.on_distribution_unregistered(
                &s,
                &o,
                &service.scope(HookKind::DistributionUnregistered),
            );
            Ok(())
        });
        self.call(HookKind::VmStopping, |me| {
            me.manager
                .on_vm_stopping(&s, &service.scope(HookKind::VmStopping));
            Ok(())
        });
    }

    /// Two sessions' lifecycles on two threads at once.
    pub fn two_at_once(&self) {
        std::thread::scope(|scope| {
            scope.spawn(|| self.lifecycle(2));
            scope.spawn(|| self.lifecycle(3));
        });
    }

    /// `cycles` lifecycles; what the host holds after them must not have grown.
    pub fn cycles(&self, cycles: u32) {
        // Warm up: lazily allocated buffers, thread pools and caches settle first.
        for id in 0..5 {
            self.lifecycle(100 + id);
        }
        let before = self.settled_usage(None);
        for id in 0..cycles {
            self.lifecycle(200 + id % 50);
        }
        let Some(before) = before else {
            self.finding(
                Verdict::Warn,
                "could not read the host's /proc entries: fds, threads and memory not checked"
                    .into(),
            );
            return;
        };
        let after = self.settled_usage(Some(before)).unwrap_or_default();
        let grew = |what: &str, a: u64, b: u64| {
            format!("{what} grew from {a} to {b} across {cycles} lifecycles")
        };
        if after.fds > before.fds {
            self.finding(
                Verdict::Fail,
                grew("open fds", before.fds as u64, after.fds as u64),
            );
        }
        if after.threads > before.threads {
            self.finding(
                Verdict::Fail,
                grew("threads", before.threads as u64, after.threads as u64),
            );
        }
        if after.processes > before.processes {
            self.finding(
                Verdict::Fail,
                grew("processes", before.processes as u64, after.processes as u64),
            );
        }
        if after.rss_kib > before.rss_kib + 4 * 1024 {
            self.finding(
                Verdict::Warn,
                grew("resident memory (KiB)", before.rss_kib, after.rss_kib),
            );
        }
    }

    /// The host's usage once it stops falling (detached threads finishing), at most 3 s; with
    /// `target`, as soon as it is back at or below it.
    fn settled_usage(&self, target: Option<Usage>) -> Option<Usage> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.usage()?;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.usage()?;
            let back = target.is_some_and(|t| {
                now.fds <= t.fds && now.threads <= t.threads && now.processes <= t.processes
            });
            if back || (target.is_none() && now == last) || Instant::now() > deadline {
                return Some(now);
            }
            last = now;
        }
    }

    fn usage(&self) -> Option<Usage> {
        let pid = self.manager.plugins().first()?.host_pid?;
        host_usage(pid)
    }

    /// One lifecycle per documented API error: every call fails with it.
    pub fn error_rounds(&self) {
        for (i, (status, _)) in DOCUMENTED_ERRORS.iter().enumerate() {
            self.service.set_answer(Answer::Error(*status));
            self.lifecycle(400 + i as u32);
        }
        self.service.set_answer(Answer::Success);
    }

    /// Waits for calls plugin threads make after the hooks returned; a crash then is a finding.
    pub fn after_hooks(&self, wait: Duration) {
        let crashes = self.crashes();
        std::thread::sleep(wait);
        if self.crashes() > crashes {
            let last = self
                .manager
                .plugins()
                .first()
                .and_then(|p| p.last_error.clone())
                .unwrap_or_default();
            self.finding(Verdict::Fail, format!("crashed outside any hook: {last}"));
        }
    }

    pub fn finding(&self, verdict: Verdict, what: String) {
        self.general
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Finding { verdict, what });
    }

    /// The per-hook rows and the general findings.
    pub fn results(&self) -> (Vec<HookRow>, Vec<Finding>) {
        let mut outside = Vec::new();
        for refusal in self.output.refusals() {
            let text = format!("plugin_error refused {refusal}");
            match HookKind::ALL.iter().find(|k| {
                refusal.contains(&format!(" in {},", k.name()))
                    || refusal.contains(&format!(" in {}:", k.name()))
            }) {
                Some(&kind) => self.with_hook(kind, |state| {
                    state.fails.insert(text);
                }),
                None => outside.push(text),
            }
        }
        for text in outside.into_iter().collect::<BTreeSet<_>>() {
            self.finding(Verdict::Fail, text);
        }
        // Hooks the host served at least once (a hook the plugin did not set never reaches it).
        let served: Vec<HookKind> = self
            .manager
            .plugins()
            .first()
            .map(|p| {
                p.latency
                    .iter()
                    .filter(|l| l.count > 0)
                    .map(|l| l.hook)
                    .collect()
            })
            .unwrap_or_default();
        let hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        let rows = HookKind::ALL
            .iter()
            .map(|&kind| {
                let state = &hooks[kind as usize];
                let verdict = if !state.fails.is_empty() {
                    Verdict::Fail
                } else if !state.warns.is_empty() {
                    Verdict::Warn
                } else {
                    Verdict::Pass
                };
                let mut samples = state.samples.clone();
                samples.sort();
                let quantile = |q: f64| {
                    (!samples.is_empty()).then(|| {
                        let rank = ((samples.len() as f64 * q).ceil() as usize).max(1);
                        samples[rank - 1].as_micros() as u64
                    })
                };
                HookRow {
                    hook: kind.name(),
                    calls: samples.len(),
                    api_calls: self.service.calls(Some(kind)),
                    verdict,
                    reasons: state
                        .fails
                        .iter()
                        .chain(&state.warns)
                        .cloned()
                        .chain(notes(state, served.contains(&kind)))
                        .collect(),
                    median_us: quantile(0.5),
                    p99_us: quantile(0.99),
                }
            })
            .collect();
        let mut general = self
            .general
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let printed = self.output.lines();
        if printed > 0 {
            general.push(Finding {
                verdict: Verdict::Warn,
                what: format!(
                    "printed {printed} lines on stdout/stderr (each one goes to the service's \
                     log), the first: {:?}",
                    self.output
                        .first_lines()
                        .first()
                        .cloned()
                        .unwrap_or_default()
                ),
            });
        }
        (rows, general)
    }
}

/// A hook's notes, at most three of them (then how many more), and whether the plugin set it.
fn notes(state: &HookState, served: bool) -> Vec<String> {
    let mut notes: Vec<String> = state.notes.iter().take(3).cloned().collect();
    if state.notes.len() > 3 {
        notes.push(format!("and {} more like these", state.notes.len() - 3));
    }
    if !served && !state.samples.is_empty() {
        notes.push("not set by the plugin (never reached its host)".into());
    }
    if state.samples.is_empty() {
        notes.push("not reached (an earlier hook of the lifecycle failed or vetoed)".into());
    }
    notes
}

/// The error text without the `plugin 'x' ` prefix: `crashed: killed by ...`, `did not answer ...`.
fn crash_text(cause: &CrashCause) -> String {
    match cause {
        CrashCause::Hung { hook, after } => format!(
            "exceeded its deadline: did not answer {hook} within {} ms",
            after.as_millis()
        ),
        cause => format!("crashed: {cause}"),
    }
}

/// Status codes the check recognises.
mod plughost_status {
    /// `PLUGHOST_E_ILLEGAL_STATE`.
    pub const ILLEGAL_STATE: i32 = -10003;
}

/// Sums what `pid` and all its descendants hold (`/proc/PID/task/*/children`).
pub fn host_usage(pid: u32) -> Option<Usage> {
    let mut usage = Usage::default();
    let mut todo = vec![pid];
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        let dir = format!("/proc/{pid}");
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        usage.processes += 1;
        usage.threads += field("Threads:") as usize;
        usage.rss_kib += field("VmRSS:");
        usage.fds += std::fs::read_dir(format!("{dir}/fd")).ok()?.count();
        for task in std::fs::read_dir(format!("{dir}/task")).ok()?.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    Some(usage)
}
