//! `plughost check PLUGIN.so`: validates a plugin against the whole contract before it ships.
//!
//! Loads the plugin in a real `plughost-host` with the production confinement (the same
//! `PluginManager` a service embeds: pid namespace, own user, seccomp, Landlock when run as root),
//! under a built-in service that answers every API call (`service.rs`), and drives it (`drive.rs`):
//! every hook in lifecycle order, stopping hooks for ids never started, two sessions at once, many
//! lifecycles while watching the host's fds, threads and memory, one lifecycle per documented API
//! error, and calls from plugin threads after the hooks. It prints a table (per hook: pass, warn or
//! FAIL with the reason, median and p99 latency) or JSON (`--json`), and exits 0 only when nothing
//! failed (1: a check failed, 2: the check itself could not run).
//!
//! A binary of its own rather than a `plughostctl` subcommand: `plughostctl` is a thin client of a
//! running `plughostd`, while the check embeds the supervisor itself and needs no daemon, so it runs
//! on a build machine or in CI.

mod capture;
mod drive;
mod report;
mod rounds;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use plughost::{Deadlines, ManagerConfig, PluginConfig, PluginManager};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use capture::{Capture, CaptureLayer, Output};
use drive::Driver;
use report::{Finding, Report, Verdict};
use service::{CheckService, Outside};

const USAGE: &str = "usage: plughost check PLUGIN.so [--json] [--name NAME] [--cycles N] \
                     [--deadline SECONDS] [--env KEY=VALUE]... [--allow-write PATH]... \
                     [--exec-output TEXT]";

struct Options {
    path: PathBuf,
    name: String,
    json: bool,
    cycles: u32,
    deadline: Option<Duration>,
    env: Vec<(String, String)>,
    allow_write: Vec<PathBuf>,
    exec_output: String,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut args = args.iter();
    match args.next().map(String::as_str) {
        Some("check") => {}
        Some("-h" | "--help") | None => bail!("{USAGE}"),
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
    let mut path = None;
    let mut name = None;
    let mut json = false;
    let mut cycles = 100;
    let mut deadline = None;
    let mut env = Vec::new();
    let mut allow_write = Vec::new();
    let mut exec_output = String::new();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{what} needs a value"))
        };
        match arg.as_str() {
            "--json" => json = true,
            "--name" => name = Some(value("--name")?),
            "--cycles" => cycles = value("--cycles")?.parse().context("--cycles")?,
            "--deadline" => {
                let seconds: f64 = value("--deadline")?.parse().context("--deadline")?;
                if !(seconds > 0.0 && seconds < 3600.0) {
                    bail!("--deadline must be between 0 and 3600 seconds");
                }
                deadline = Some(Duration::from_secs_f64(seconds));
            }
            "--env" => {
                let pair = value("--env")?;
                let (key, val) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?}: expected KEY=VALUE"))?;
                env.push((key.to_owned(), val.to_owned()));
            }
            "--allow-write" => allow_write.push(PathBuf::from(value("--allow-write")?)),
            "--exec-output" => exec_output = value("--exec-output")?,
            "-h" | "--help" => bail!("{USAGE}"),
            other if other.starts_with('-') => bail!("unknown option {other:?}\n{USAGE}"),
            other if path.is_none() => path = Some(PathBuf::from(other)),
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let path = path.with_context(|| format!("no plugin given\n{USAGE}"))?;
    let name = match name {
        Some(name) => name,
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().trim_start_matches("lib").to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "plugin".into()),
    };
    Ok(Options {
        path,
        name,
        json,
        cycles,
        deadline,
        env,
        allow_write,
        exec_output,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    match check(&options) {
        Ok(report) => {
            if options.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("cannot write the report: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", report.table());
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("plughost check: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(options: &Options) -> Result<Report> {
    let capture = Arc::new(Capture::default());
    // Only the capture: the report is the output. (RUST_LOG is not read: the manager's own log
    // lines would interleave with the table.)
    tracing_subscriber::registry()
        .with(CaptureLayer(capture.clone()))
        .try_init()
        .context("tracing")?;
    let output = Arc::new(Output::default());
    let deadlines = options
        .deadline
        .map_or_else(Deadlines::default, |d| Deadlines::uniform(d, d));
    let mut plugin = PluginConfig::new(&options.name, &options.path);
    for (key, value) in &options.env {
        plugin = plugin.env(key, value);
    }
    for path in &options.allow_write {
        plugin = plugin.allow_write(path);
    }
    let mut config = ManagerConfig::new(vec![plugin]);
    config.output = output.clone();
    config.deadlines = deadlines;
    let service = Arc::new(CheckService::new(&options.exec_output));
    let manager = PluginManager::new(config, Arc::new(Outside(service.clone())))
        .context("cannot start the plugin manager")?;
    let path = options.path.display().to_string();
    let mut findings = Vec::new();
    if !rustix_is_root() {
        findings.push(Finding {
            verdict: Verdict::Warn,
            what: "not run as root: no pid namespace, user switch or cgroup, as a service that is \
                   not root would run it"
                .into(),
        });
    }
    if let Some(error) = manager.load_errors().first() {
        findings.push(Finding {
            verdict: Verdict::Fail,
            what: error.to_string(),
        });
        return Ok(Report::new(
            options.name.clone(),
            path,
            Vec::new(),
            findings,
            0,
            None,
        ));
    }
    let driver = Driver::new(
        manager,
        service.clone(),
        options.name.clone(),
        capture,
        output.clone(),
        deadlines,
    );
    driver.lifecycle(1);
    driver.stop_unknown();
    driver.two_at_once();
    driver.cycles(options.cycles);
    driver.error_rounds();
    driver.after_hooks(Duration::from_millis(500));
    let (hooks, general) = driver.results();
    findings.extend(general);
    let last_crash = driver
        .manager
        .plugins()
        .first()
        .and_then(|p| p.last_crash.clone());
    let calls_outside = service.calls(None);
    Ok(Report::new(
        options.name.clone(),
        path,
        hooks,
        findings,
        calls_outside,
        last_crash,
    ))
}

fn rustix_is_root() -> bool {
    // `id -u` without a dependency: the effective uid of this process, from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
