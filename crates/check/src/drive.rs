//! Calls each hook through the manager, times it, judges the outcome and collects the results,
//! hook by hook (the rounds that call them are in `rounds.rs`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plughost::{CrashCause, Deadlines, HookKind, PluginError, PluginManager, PluginState};

use crate::capture::{Capture, Output};
use crate::report::{Finding, HookRow, Verdict};
use crate::service::CheckService;

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

    pub(crate) fn crashes(&self) -> u64 {
        self.manager.plugins().first().map_or(0, |p| p.crashes)
    }

    fn with_hook(&self, kind: HookKind, f: impl FnOnce(&mut HookState)) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut hooks[kind as usize]);
    }

    /// Calls one hook through the manager, times it and judges the outcome.
    pub(crate) fn call(
        &self,
        kind: HookKind,
        hook: impl FnOnce(&Self) -> Result<(), PluginError>,
    ) -> bool {
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
