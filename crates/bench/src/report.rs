//! The report: a table (or `--json`) of every measurement, the ratios against the raw baseline of the
//! same run, and the targets.

use std::fmt::Write;

use crate::pin::Pin;
use crate::stats::Samples;

/// Where and how the figures were taken.
pub struct Meta {
    pub command: String,
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub frame_bytes: usize,
    pub rounds: usize,
    /// `/proc/loadavg`'s 1-minute figure when the run started and when it ended: anything else
    /// running on 2 vCPUs moves every figure (the ratios less).
    pub load_before: f64,
    pub load_after: f64,
    /// This process's nice value (the hosts inherit it): `nice -n -20` shields a run from other
    /// work on a shared machine.
    pub nice: i32,
    pub pin: Pin,
    /// The CPU the bench's main thread (the dispatching service thread) last ran on.
    pub service_cpu: Option<u32>,
    /// Per round-trip case, the CPU its peer last ran on.
    pub placement: Vec<(&'static str, Option<u32>)>,
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

impl Meta {
    pub fn collect(
        command: &str,
        frame_bytes: usize,
        rounds: usize,
        load_before: f64,
        pin: Pin,
    ) -> Meta {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        Meta {
            command: command.to_owned(),
            date: utc_now(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            frame_bytes,
            rounds,
            load_before,
            load_after: load_average(),
            nice: rustix::process::getpriority_process(None).unwrap_or(0),
            pin,
            service_cpu: None,
            placement: Vec::new(),
        }
    }
}

/// One line of the comparison with the targets.
struct Target {
    what: &'static str,
    value: Option<f64>,
    limit: f64,
    at_most: bool,
}

impl Target {
    fn verdict(&self) -> &'static str {
        match self.value {
            None => "n/a",
            Some(v) if (self.at_most && v <= self.limit) || (!self.at_most && v >= self.limit) => {
                "ok"
            }
            Some(_) => "MISSED",
        }
    }
}

fn median(samples: &[Samples], name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.summary())
        .map(|s| s.median)
}

fn ratio(samples: &[Samples], num: &str, den: &str, factor: f64) -> Option<f64> {
    Some(median(samples, num)? / (median(samples, den)? * factor))
}

/// Each `api_*` case against its target's baseline of this run (the JSON's `ratios.<case>`):
/// `raw_rtt`, plus `fd_pass` (one fd passed without a wake-up) when its answer carries an fd.
fn api_ratios(samples: &[Samples]) -> Vec<(&'static str, bool, Option<f64>)> {
    let raw = median(samples, "raw_rtt");
    let with_fd = raw.zip(median(samples, "fd_pass")).map(|(r, f)| r + f);
    crate::api::api_cases()
        .iter()
        .filter_map(|c| {
            let value = median(samples, c.name)?;
            let baseline = if c.fd { with_fd } else { raw };
            Some((c.name, c.fd, baseline.map(|b| value / b)))
        })
        .collect()
}

/// The largest of the `api_*` ratios whose answers carry an fd (`fd`) or not.
fn worst_api_ratio(samples: &[Samples], fd: bool) -> Option<f64> {
    api_ratios(samples)
        .into_iter()
        .filter(|(_, with_fd, _)| *with_fd == fd)
        .filter_map(|(_, _, r)| r)
        .reduce(f64::max)
}

/// Ratios of medians of this run.
fn ratios(samples: &[Samples]) -> Vec<(&'static str, Option<f64>)> {
    let mut all = vec![
        (
            "hook_rtt/raw_rtt",
            ratio(samples, "hook_rtt", "raw_rtt", 1.0),
        ),
        (
            "nested_rtt/raw_rtt",
            ratio(samples, "nested_rtt", "raw_rtt", 1.0),
        ),
        (
            "callback_rtt/raw_rtt",
            ratio(samples, "callback_rtt", "raw_rtt", 1.0),
        ),
        (
            "nested_rtt/hook_rtt",
            ratio(samples, "nested_rtt", "hook_rtt", 1.0),
        ),
        (
            "in_process_hook/hook_rtt",
            ratio(samples, "in_process_hook", "hook_rtt", 1.0),
        ),
        (
            "fanout_100/(100*hook_rtt)",
            ratio(samples, "fanout_100", "hook_rtt", 100.0),
        ),
        (
            "raw_fanout_100/(100*raw_rtt)",
            ratio(samples, "raw_fanout_100", "raw_rtt", 100.0),
        ),
        (
            "fanout_100/raw_fanout_100",
            ratio(samples, "fanout_100", "raw_fanout_100", 1.0),
        ),
        (
            "start_100/(100*cold_start)",
            ratio(samples, "start_100", "cold_start", 100.0),
        ),
        (
            "raw_fd_rtt/raw_rtt",
            ratio(samples, "raw_fd_rtt", "raw_rtt", 1.0),
        ),
        ("fd_pass/raw_rtt", ratio(samples, "fd_pass", "raw_rtt", 1.0)),
        (
            "vm_start_vs_baseline",
            ratio(samples, "vm_start", "vm_start_baseline", 1.0),
        ),
        (
            "distro_start_vs_baseline",
            ratio(samples, "distro_start", "distro_start_baseline", 1.0),
        ),
        // The plugins' share of a VM start: 1 and 10 noop plugins against none.
        (
            "vm_start_1_vs_0",
            ratio(samples, "vm_start_1", "vm_start", 1.0),
        ),
        (
            "vm_start_10_vs_0",
            ratio(samples, "vm_start_10", "vm_start", 1.0),
        ),
        (
            "exec_true_vs_raw_ns_spawn",
            ratio(samples, "exec_true", "raw_ns_spawn", 1.0),
        ),
    ];
    // The stricter reading of the fd target: against a raw round trip whose answer carries an fd.
    for case in crate::api::api_cases().iter().filter(|c| c.fd) {
        if let Some(r) = ratio(samples, case.name, "raw_fd_rtt", 1.0) {
            let name: &'static str =
                Box::leak(format!("{}/raw_fd_rtt", case.name).into_boxed_str());
            all.push((name, Some(r)));
        }
    }
    all.extend(
        api_ratios(samples)
            .into_iter()
            .map(|(name, _, r)| (name, r)),
    );
    all
}

/// `pin`: the `api_*` targets are 1.0 × their baseline on one CPU, 2 × wherever a call crosses
/// CPUs (issue 14 names one CPU and unpinned; split, every peer on the other CPU, is held to the
/// unpinned limit: each call there is two cross-CPU wake-ups, as in the worst unpinned placement).
fn targets(samples: &[Samples], pin: Pin) -> Vec<Target> {
    let api_limit = if pin == Pin::Same { 1.0 } else { 2.0 };
    let at_most = |what, value, limit| Target {
        what,
        value,
        limit,
        at_most: true,
    };
    vec![
        at_most(
            "hook_rtt/raw_rtt",
            ratio(samples, "hook_rtt", "raw_rtt", 1.0),
            1.3,
        ),
        at_most(
            "nested_rtt/raw_rtt",
            ratio(samples, "nested_rtt", "raw_rtt", 1.0),
            2.3,
        ),
        // Issue 14 restated it against the OS's own cost of cycling through 100 processes (it was
        // fanout_100 ≤ 1.2 × 100 × hook_rtt).
        at_most(
            "fanout_100/raw_fanout_100",
            ratio(samples, "fanout_100", "raw_fanout_100", 1.0),
            1.15,
        ),
        at_most(
            "worst api_* (no fd)/raw_rtt",
            worst_api_ratio(samples, false),
            api_limit,
        ),
        at_most(
            "worst api_* (fd)/(raw_rtt+fd_pass)",
            worst_api_ratio(samples, true),
            api_limit,
        ),
        at_most("cold_start ms", median(samples, "cold_start"), 3.0),
        at_most("start_100 ms", median(samples, "start_100"), 1000.0),
        at_most("crash_detect µs", median(samples, "crash_detect"), 1000.0),
        at_most("host_rss MiB", median(samples, "host_rss"), 4.0),
        Target {
            what: "callbacks_per_s",
            value: median(samples, "callbacks_per_s"),
            limit: 100_000.0,
            at_most: false,
        },
    ]
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub fn table(meta: &Meta, samples: &[Samples], units: &[(&str, f64)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "command:  {}", meta.command);
    let _ = writeln!(out, "date:     {}", meta.date);
    let _ = writeln!(
        out,
        "machine:  {} CPUs ({}), kernel {}",
        meta.cpus, meta.cpu_model, meta.kernel
    );
    let _ = writeln!(
        out,
        "message:  {} bytes each way (one on_vm_started frame); {} interleaved rounds; pin {}",
        meta.frame_bytes,
        meta.rounds,
        meta.pin.name()
    );
    let _ = writeln!(
        out,
        "load:     {:.2} at start, {:.2} at end (1-minute load average), nice {}{}",
        meta.load_before,
        meta.load_after,
        meta.nice,
        if meta.load_before.max(meta.load_after) > 0.5 {
            "  WARNING: other work was running; absolute figures are disturbed"
        } else {
            ""
        }
    );
    if !meta.placement.is_empty() {
        let cpu = |c: Option<u32>| c.map_or("?".to_owned(), |c| format!("cpu{c}"));
        let peers: Vec<String> = meta
            .placement
            .iter()
            .map(|(name, c)| format!("{name} {}", cpu(*c)))
            .collect();
        let _ = writeln!(
            out,
            "placement: service {}; peers last ran on (at the end): {}",
            cpu(meta.service_cpu),
            peers.join(", ")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<46} {:>10} {:>10} {:>10} {:>7}  unit",
        "measurement", "median", "p99", "best", "n"
    );
    for s in samples {
        let Some(sum) = s.summary() else { continue };
        let _ = writeln!(
            out,
            "{:<46} {:>10} {:>10} {:>10} {:>7}  {}",
            s.name,
            num(sum.median),
            num(sum.p99),
            num(sum.best),
            sum.n,
            s.unit.label()
        );
    }
    let _ = writeln!(out, "\nratios (medians of this run)");
    for (what, value) in ratios(samples) {
        if let Some(v) = value {
            let _ = writeln!(out, "  {what:<46} {v:>8.2}");
        }
    }
    let _ = writeln!(out, "\ntargets (medians)");
    for t in targets(samples, meta.pin) {
        let value = t.value.map_or("-".into(), num);
        let op = if t.at_most { "<=" } else { ">=" };
        let _ = writeln!(
            out,
            "  {:<46} {:>10} {op} {:<8} {}",
            t.what,
            value,
            num(t.limit),
            t.verdict()
        );
    }
    if !units.is_empty() {
        let _ = writeln!(out, "\nunit costs (same run; ns per operation)");
        for (what, ns) in units {
            let _ = writeln!(out, "  {what:<40} {:>8}", num(*ns));
        }
    }
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<f64>) -> String {
    match v {
        // Three decimals are below every measurement's noise.
        Some(v) if v.is_finite() => format!("{}", (v * 1000.0).round() / 1000.0),
        _ => "null".into(),
    }
}

pub fn json(meta: &Meta, samples: &[Samples], units: &[(&str, f64)]) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"command\": {},", json_str(&meta.command));
    let _ = writeln!(out, "  \"date\": {},", json_str(&meta.date));
    let _ = writeln!(out, "  \"kernel\": {},", json_str(&meta.kernel));
    let _ = writeln!(out, "  \"cpus\": {},", meta.cpus);
    let _ = writeln!(out, "  \"cpu_model\": {},", json_str(&meta.cpu_model));
    let _ = writeln!(out, "  \"message_bytes\": {},", meta.frame_bytes);
    let _ = writeln!(out, "  \"rounds\": {},", meta.rounds);
    let load = (
        json_num(Some(meta.load_before)),
        json_num(Some(meta.load_after)),
    );
    let _ = writeln!(out, "  \"load_before\": {},", load.0);
    let _ = writeln!(out, "  \"load_after\": {},", load.1);
    let _ = writeln!(out, "  \"nice\": {},", meta.nice);
    let _ = writeln!(out, "  \"pin\": {},", json_str(meta.pin.name()));
    let cpu = |c: Option<u32>| c.map_or("null".to_owned(), |c| c.to_string());
    let peers: Vec<String> = meta
        .placement
        .iter()
        .map(|(name, c)| format!("{}: {}", json_str(name), cpu(*c)))
        .collect();
    let _ = writeln!(
        out,
        "  \"placement\": {{\"service\": {}, \"peers\": {{{}}}}},",
        cpu(meta.service_cpu),
        peers.join(", ")
    );
    out.push_str("  \"measurements\": {\n");
    let rows: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            let sum = s.summary()?;
            Some(format!(
                "    {}: {{\"unit\": {}, \"median\": {}, \"p99\": {}, \"best\": {}, \"n\": {}}}",
                json_str(s.name),
                json_str(s.unit.key()),
                json_num(Some(sum.median)),
                json_num(Some(sum.p99)),
                json_num(Some(sum.best)),
                sum.n
            ))
        })
        .collect();
    out.push_str(&rows.join(",\n"));
    out.push_str("\n  },\n  \"ratios\": {\n");
    let rows: Vec<String> = ratios(samples)
        .into_iter()
        .map(|(what, v)| format!("    {}: {}", json_str(what), json_num(v)))
        .collect();
    out.push_str(&rows.join(",\n"));
    out.push_str("\n  },\n  \"targets\": [\n");
    let rows: Vec<String> = targets(samples, meta.pin)
        .into_iter()
        .map(|t| {
            format!(
                "    {{\"what\": {}, \"value\": {}, \"limit\": {}, \"at_most\": {}, \"verdict\": {}}}",
                json_str(t.what),
                json_num(t.value),
                t.limit,
                t.at_most,
                json_str(t.verdict())
            )
        })
        .collect();
    out.push_str(&rows.join(",\n"));
    out.push_str("\n  ],\n  \"unit_costs_ns\": {");
    let rows: Vec<String> = units
        .iter()
        .map(|(what, ns)| format!("\n    {}: {}", json_str(what), json_num(Some(*ns))))
        .collect();
    out.push_str(&rows.join(","));
    out.push_str("\n  }\n}");
    out
}

/// `YYYY-MM-DD HH:MM UTC` without a date crate (days-to-civil, H. Hinnant's algorithm).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Unit;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn a_rate_target_is_a_floor() {
        let mut s = Samples::new("callbacks_per_s", Unit::PerSecond);
        s.values = vec![50_000.0];
        let t = targets(&[s], Pin::Same);
        let rate = t.iter().find(|t| t.what == "callbacks_per_s").unwrap();
        assert_eq!(rate.verdict(), "MISSED");
    }

    fn sample(name: &'static str, value: f64) -> Samples {
        let mut s = Samples::new(name, Unit::Micros);
        s.values = vec![value];
        s
    }

    /// A call answering without an fd is held to raw_rtt, one answering with an fd to raw_rtt plus
    /// fd_pass; 1.0 of that on one CPU, 2.0 unpinned or split.
    #[test]
    fn daemon_ratios_compare_with_their_own_baselines() {
        let samples = [
            sample("vm_start", 4.0),
            sample("vm_start_1", 5.0),
            sample("vm_start_10", 8.0),
            sample("raw_ns_spawn", 2.0),
            sample("exec_true", 3.0),
        ];
        let ratios: std::collections::HashMap<_, _> = ratios(&samples).into_iter().collect();
        assert_eq!(ratios["vm_start_1_vs_0"], Some(1.25));
        assert_eq!(ratios["vm_start_10_vs_0"], Some(2.0));
        assert_eq!(ratios["exec_true_vs_raw_ns_spawn"], Some(1.5));
        assert_eq!(ratios["vm_start_vs_baseline"], None);
    }

    #[test]
    fn api_ratios_take_the_baseline_of_their_answer() {
        let samples = [
            sample("raw_rtt", 4.0),
            sample("fd_pass", 1.0),
            sample("api_mount_folder_hook", 4.4),
            sample("api_execute_binary_worker", 5.5),
        ];
        let ratios: std::collections::HashMap<_, _> = ratios(&samples).into_iter().collect();
        for case in ["api_mount_folder_hook", "api_execute_binary_worker"] {
            let r = ratios[case].unwrap();
            assert!((r - 1.1).abs() < 1e-9, "{case}: {r}");
        }
        for (pin, verdict) in [(Pin::Same, "MISSED"), (Pin::None, "ok"), (Pin::Split, "ok")] {
            let t = targets(&samples, pin);
            let worst = t
                .iter()
                .find(|t| t.what == "worst api_* (fd)/(raw_rtt+fd_pass)")
                .unwrap();
            assert_eq!(worst.verdict(), verdict);
        }
    }
}
