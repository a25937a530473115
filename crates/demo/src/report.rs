//! How the demo talks: step headers, what plugins print, and the final table of plugins.

use plughost::{Isolation, OutputSink, PluginInfo};

/// Prints each line a plugin writes to its stdout or stderr as `  [plugin-name] line`.
pub struct PrefixedOutput;

impl OutputSink for PrefixedOutput {
    fn line(&self, plugin: &str, line: &str) {
        println!("  [{plugin}] {line}");
    }
}

pub fn header(title: &str) {
    println!();
    println!("== {title} ==");
}

/// An action of the service.
pub fn action(text: &str) {
    println!("-> {text}");
}

/// An observation, indented under its action.
pub fn note(text: &str) {
    println!("   {text}");
}

/// Lines of a plugin's log, quoted under their action.
pub fn log_lines(plugin: &str, lines: &[String]) {
    if lines.is_empty() {
        println!("   {plugin}.log: (nothing new)");
    }
    for line in lines {
        println!("   {plugin}.log: {line}");
    }
}

/// The `PluginManager::plugins()` report of one step.
pub struct Snapshot {
    pub step: &'static str,
    pub plugins: Vec<PluginInfo>,
}

/// The snapshots as one text table, columns aligned.
pub fn plugin_table(snapshots: &[Snapshot]) -> String {
    let mut rows = vec![[
        "step".to_owned(),
        "plugin".to_owned(),
        "isolation".to_owned(),
        "host pid".to_owned(),
        "state".to_owned(),
        "last error".to_owned(),
    ]];
    for snapshot in snapshots {
        for info in &snapshot.plugins {
            rows.push([
                snapshot.step.to_owned(),
                info.name.clone(),
                match info.isolation {
                    Isolation::Process => "process",
                    Isolation::InProcess => "in-process",
                }
                .to_owned(),
                info.host_pid
                    .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                info.state.name().to_owned(),
                info.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        table.push_str("  ");
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
}
