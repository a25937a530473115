//! The manager's status in the OpenMetrics text format (what a Prometheus scraper or a node
//! exporter's textfile collector reads).

use std::fmt::Write;

use crate::manager::PluginManager;
use crate::report::PluginInfo;

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "# HELP {name} {help}");
}

/// Renders `plugins` as OpenMetrics text, ending with `# EOF`.
pub fn render(plugins: &[PluginInfo]) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "plughost_plugin_up",
        "gauge",
        "1 when the plugin is ready or busy.",
    );
    for p in plugins {
        let up = u8::from(matches!(p.state.name(), "ready" | "busy"));
        let _ = writeln!(
            out,
            "plughost_plugin_up{{plugin=\"{}\"}} {up}",
            label(&p.name)
        );
    }
    family(
        &mut out,
        "plughost_plugin",
        "info",
        "The plugin's state and isolation.",
    );
    for p in plugins {
        let isolation = match p.isolation {
            crate::Isolation::Process => "process",
            crate::Isolation::InProcess => "in-process",
        };
        let _ = writeln!(
            out,
            "plughost_plugin_info{{plugin=\"{}\",state=\"{}\",isolation=\"{isolation}\"}} 1",
            label(&p.name),
            p.state.name()
        );
    }
    family(
        &mut out,
        "plughost_plugin_uptime_seconds",
        "gauge",
        "Since the current host started.",
    );
    for p in plugins {
        if let Some(uptime) = p.uptime {
            let _ = writeln!(
                out,
                "plughost_plugin_uptime_seconds{{plugin=\"{}\"}} {:.3}",
                label(&p.name),
                uptime.as_secs_f64()
            );
        }
    }
    family(
        &mut out,
        "plughost_plugin_restarts",
        "counter",
        "Hosts started again after the first.",
    );
    for p in plugins {
        let _ = writeln!(
            out,
            "plughost_plugin_restarts_total{{plugin=\"{}\"}} {}",
            label(&p.name),
            p.restarts
        );
    }
    family(
        &mut out,
        "plughost_plugin_crashes",
        "counter",
        "Host crashes by cause.",
    );
    for p in plugins {
        for (cause, n) in &p.crashes_by_cause {
            let _ = writeln!(
                out,
                "plughost_plugin_crashes_total{{plugin=\"{}\",cause=\"{cause}\"}} {n}",
                label(&p.name)
            );
        }
    }
    family(
        &mut out,
        "plughost_plugin_api_calls",
        "counter",
        "API calls served for the plugin.",
    );
    for p in plugins {
        let _ = writeln!(
            out,
            "plughost_plugin_api_calls_total{{plugin=\"{}\"}} {}",
            label(&p.name),
            p.api_calls
        );
    }
    family(
        &mut out,
        "plughost_hook_duration_seconds",
        "summary",
        "Hook round trips by hook kind.",
    );
    for p in plugins {
        for l in &p.latency {
            let labels = format!("plugin=\"{}\",hook=\"{}\"", label(&p.name), l.hook.name());
            for (q, d) in [("0.5", l.p50), ("0.99", l.p99)] {
                let _ = writeln!(
                    out,
                    "plughost_hook_duration_seconds{{{labels},quantile=\"{q}\"}} {:.9}",
                    d.as_secs_f64()
                );
            }
            let _ = writeln!(
                out,
                "plughost_hook_duration_seconds_sum{{{labels}}} {:.9}",
                l.sum.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "plughost_hook_duration_seconds_count{{{labels}}} {}",
                l.count
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

impl PluginManager {
    /// [`PluginManager::plugins`] in the OpenMetrics text format.
    pub fn openmetrics(&self) -> String {
        render(&self.plugins())
    }
}
