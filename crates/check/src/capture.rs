//! What the check observes besides the manager's return values: the manager's warnings about
//! failures it ignores (a `tracing` layer), and what the plugin prints (an output sink).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use plughost::{HookKind, OutputSink};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The manager's `ignored: ...` events (a non-veto hook that failed), with their hook, and its
/// crash events (`plugin 'x' crashed: ...; latched ...`) with the thread that dispatched the hook.
#[derive(Default)]
pub struct Capture {
    events: Mutex<Vec<(String, String)>>,
    crashes: Mutex<Vec<(std::thread::ThreadId, String)>>,
}

impl Capture {
    /// A position to read events from later.
    pub fn mark(&self) -> (usize, usize) {
        (
            self.events.lock().unwrap_or_else(|e| e.into_inner()).len(),
            self.crashes.lock().unwrap_or_else(|e| e.into_inner()).len(),
        )
    }

    /// The first crash this thread's dispatch recorded since `mark` (the error's text).
    pub fn crash_since(&self, mark: (usize, usize)) -> Option<String> {
        let me = std::thread::current().id();
        let crashes = self.crashes.lock().unwrap_or_else(|e| e.into_inner());
        crashes
            .iter()
            .skip(mark.1)
            .find(|(thread, _)| *thread == me)
            .map(|(_, text)| text.clone())
    }

    /// The messages (after `ignored: `) recorded for `hook` since `mark`.
    pub fn ignored_since(&self, mark: (usize, usize), hook: HookKind) -> Vec<String> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .skip(mark.0)
            .filter(|(h, _)| h == hook.name())
            .map(|(_, m)| m.clone())
            .collect()
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    hook: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "hook" => self.hook = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "hook" => self.hook = value.to_owned(),
            _ => {}
        }
    }
}

/// Forwards to a [`Capture`] (a layer must own what it holds).
pub struct CaptureLayer(pub std::sync::Arc<Capture>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("plughost") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(message) = fields.message.strip_prefix("ignored: ") {
            self.0
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((fields.hook, message.to_owned()));
        } else if event.metadata().target() == "plughost::plugin" {
            // `Plugin::crashed`: "<error>; latched ..." or "<error>; restart ...", logged on the
            // thread whose dispatch saw the crash.
            if let Some((error, _)) = fields.message.split_once("; ") {
                if error.contains(" crashed: ") || error.contains(" did not answer ") {
                    self.0
                        .crashes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((std::thread::current().id(), error.to_owned()));
                }
            }
        }
    }
}

/// Counts what the plugin prints (stdout and stderr share one pipe: the service cannot tell them
/// apart), keeping the first few lines for the report.
#[derive(Default)]
pub struct Output {
    count: AtomicUsize,
    first: Mutex<Vec<String>>,
    /// The host's `plugin_error refused ...` lines (`plughost_runtime::hook`), after that prefix.
    refusals: Mutex<Vec<String>>,
}

impl Output {
    pub fn lines(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn first_lines(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn refusals(&self) -> Vec<String> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl OutputSink for Output {
    fn line(&self, _plugin: &str, line: &str) {
        // The host's own lines are not the plugin's output.
        if let Some(host) = line.strip_prefix("plughost-host: ") {
            if let Some(refusal) = host.strip_prefix("plugin_error refused ") {
                let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
                if refusals.len() < 100 {
                    refusals.push(refusal.to_owned());
                }
            }
            return;
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < 3 {
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            first.push(line.chars().take(200).collect());
        }
    }
}
