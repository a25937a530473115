//! The report: a table for people, JSON for CI.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One hook kind, across every round.
#[derive(Clone, Debug, Serialize)]
pub struct HookRow {
    pub hook: &'static str,
    /// How often the check called it.
    pub calls: usize,
    /// API calls the plugin made while it was in flight.
    pub api_calls: usize,
    pub verdict: Verdict,
    /// Failures first, then warnings, then notes (a veto with its message, ...).
    pub reasons: Vec<String>,
    pub median_us: Option<u64>,
    pub p99_us: Option<u64>,
}

/// Something about the plugin as a whole (leaks, output, a crash outside hooks, the load).
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub plugin: String,
    pub path: String,
    /// `passed`: nothing failed (warnings allowed).
    pub passed: bool,
    pub hooks: Vec<HookRow>,
    pub findings: Vec<Finding>,
    /// API calls served outside any hook (from the plugin's own threads).
    pub calls_outside_hooks: usize,
    /// The last crash's stack, when a crash left a report.
    pub last_crash: Option<String>,
}

impl Report {
    pub fn new(
        plugin: String,
        path: String,
        hooks: Vec<HookRow>,
        findings: Vec<Finding>,
        calls_outside_hooks: usize,
        last_crash: Option<String>,
    ) -> Report {
        let passed = hooks.iter().all(|h| h.verdict != Verdict::Fail)
            && findings.iter().all(|f| f.verdict != Verdict::Fail);
        Report {
            plugin,
            path,
            passed,
            hooks,
            findings,
            calls_outside_hooks,
            last_crash,
        }
    }

    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plughost check: plugin '{}' ({})",
            self.plugin, self.path
        );
        let _ = writeln!(
            out,
            "{:<30} {:>5} {:>6} {:>10} {:>10}  result",
            "hook", "calls", "api", "median", "p99"
        );
        let time = |us: Option<u64>| match us {
            Some(us) if us >= 10_000 => format!("{} ms", us / 1000),
            Some(us) => format!("{us} µs"),
            None => "-".into(),
        };
        for row in &self.hooks {
            let first = row.reasons.first().map_or("", String::as_str);
            let _ = writeln!(
                out,
                "{:<30} {:>5} {:>6} {:>10} {:>10}  {}{}{}",
                row.hook,
                row.calls,
                row.api_calls,
                time(row.median_us),
                time(row.p99_us),
                row.verdict.word(),
                if first.is_empty() { "" } else { ": " },
                first
            );
            for reason in row.reasons.iter().skip(1) {
                let _ = writeln!(out, "{:<30} {:>43}  {reason}", "", "");
            }
        }
        let _ = writeln!(
            out,
            "API calls from plugin threads outside hooks: {}",
            self.calls_outside_hooks
        );
        for finding in &self.findings {
            let _ = writeln!(out, "{}: {}", finding.verdict.word(), finding.what);
        }
        if let Some(stack) = &self.last_crash {
            let _ = writeln!(out, "last crash:\n{stack}");
        }
        let _ = writeln!(
            out,
            "{}",
            if self.passed {
                "result: passed"
            } else {
                "result: FAILED"
            }
        );
        out
    }
}
