//! `plughost-bench`: what plughost's process isolation costs, measured in one run against a raw
//! `SOCK_SEQPACKET` round trip between two processes with the same message size (the baseline), so
//! that the ratios hold on any machine even when absolute times drift.
//!
//! `cargo run --release -p plughost-bench [-- --json] [--rounds N] [--quick] [--pin same|split]`
//!
//! Every case runs a batch per round and the rounds of all cases are interleaved (the starting case
//! rotates each round); one warm-up round is discarded. `--only a,b --count N` runs just those cases,
//! once, with N iterations: the entry point for `strace -ff`, `perf record` and `perf trace` (see
//! BENCHMARKS.md). The test suite times nothing; this binary is where speed is measured.
//!
//! This binary is not a test: it checks that every timed operation succeeded (and that every timed
//! API call reached the service), but it asserts no speed; the report compares with the targets.

mod api;
mod cases;
mod daemon;
mod echo;
mod fifos;
mod pin;
mod report;
mod setup;
mod stats;
mod unit_costs;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use plughost::PluginConfig;

use cases::{
    host_memory, CallbackPlugin, CallbackRtt, CallbacksPerSec, Case, CrashDetect, HookRtt,
    RawFanout, RawRtt, Start,
};
use pin::Pin;
use setup::Env;
use stats::{Samples, Unit};

/// Every case but the `api_*` ones ([`api::api_cases`]), in report order.
const CASES: [&str; 21] = [
    "raw_rtt",
    "raw_fd_rtt",
    "fd_pass",
    "hook_rtt",
    "nested_rtt",
    "callback_rtt",
    "in_process_hook",
    "raw_fanout_100",
    "fanout_100",
    "callbacks_per_s",
    "cold_start",
    "manager_setup",
    "start_100",
    "crash_detect",
    "vm_start",
    "vm_start_1",
    "vm_start_10",
    "distro_start",
    "raw_ns_spawn",
    "exec_true",
    "control_rps",
];

/// The daemon cases measured against `--plughostd-baseline` too.
const BASELINE_CASES: [&str; 2] = ["vm_start_baseline", "distro_start_baseline"];

/// Every case, in report order.
fn all_cases() -> Vec<&'static str> {
    let mut cases = CASES.to_vec();
    cases.extend(BASELINE_CASES);
    cases.extend(api::api_cases().iter().map(|c| c.name));
    cases
}

/// Iterations of one case in one round (callbacks_per_s: calls per sample).
fn iterations(case: &str) -> usize {
    match case {
        "raw_rtt" | "raw_fd_rtt" | "fd_pass" | "hook_rtt" => 1000,
        api if api.starts_with("api_") => 300,
        "nested_rtt" | "callback_rtt" => 500,
        "in_process_hook" => 5000,
        fanout if fanout.contains("fanout_") => 10,
        "callbacks_per_s" => 20_000,
        "cold_start" | "manager_setup" | "crash_detect" => 4,
        daemon if daemon.starts_with("vm_start") || daemon.starts_with("distro_start") => 3,
        "exec_true" | "raw_ns_spawn" => 10,
        // Samples per round, each CONTROL_THREADS x REQUESTS_PER_THREAD requests.
        "control_rps" => 2,
        _ => 1,
    }
}

struct Args {
    json: bool,
    rounds: usize,
    /// Divides every iteration count (`--quick`: 5).
    scale_down: usize,
    build_host: bool,
    only: Option<Vec<String>>,
    count: Option<usize>,
    /// Plugins of the fan-out case (100; other sizes are a diagnostic).
    fanout: usize,
    pin: Pin,
    /// Also measure the building blocks (syscalls, hops): see `unit_costs`.
    unit_costs: bool,
    /// The daemon measured by vm_start and distro_start, and the one they are compared with.
    daemon: daemon::Binaries,
    baseline: Option<daemon::Binaries>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        json: false,
        rounds: 20,
        scale_down: 1,
        build_host: true,
        only: None,
        count: None,
        fanout: 100,
        pin: Pin::None,
        unit_costs: true,
        daemon: daemon::Binaries::beside_self()?,
        baseline: None,
    };
    let (mut baseline_d, mut baseline_ctl) = (None, None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--json" => parsed.json = true,
            "--quick" => {
                parsed.rounds = 5;
                parsed.scale_down = 5;
            }
            "--no-build" => parsed.build_host = false,
            "--no-unit-costs" => parsed.unit_costs = false,
            "--rounds" => parsed.rounds = value("--rounds")?.parse().context("--rounds")?,
            "--only" => {
                let list = value("--only")?;
                let names: Vec<String> = list.split(',').map(str::to_owned).collect();
                let all = all_cases();
                if let Some(bad) = names.iter().find(|n| !all.contains(&n.as_str())) {
                    bail!("unknown case {bad:?}; cases: {}", all.join(", "));
                }
                parsed.only = Some(names);
            }
            "--count" => parsed.count = Some(value("--count")?.parse().context("--count")?),
            "--plughostd" => parsed.daemon.plughostd = value("--plughostd")?.into(),
            "--plughostctl" => parsed.daemon.plughostctl = value("--plughostctl")?.into(),
            "--plughostd-baseline" => baseline_d = Some(value("--plughostd-baseline")?),
            "--plughostctl-baseline" => baseline_ctl = Some(value("--plughostctl-baseline")?),
            "--pin" => parsed.pin = Pin::parse(&value("--pin")?)?,
            "--fanout-plugins" => {
                parsed.fanout = value("--fanout-plugins")?
                    .parse()
                    .context("--fanout-plugins")?;
                if parsed.fanout == 0 {
                    bail!("--fanout-plugins must be at least 1");
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: plughost-bench [--json] [--rounds N] [--quick] [--no-build] \
                     [--only CASE,... [--count N]] [--fanout-plugins N] \
                     [--pin none|same|split] [--no-unit-costs] [--plughostd PATH] \
                     [--plughostctl PATH] [--plughostd-baseline PATH \
                     [--plughostctl-baseline PATH]]\ncases: {}",
                    all_cases().join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    parsed.baseline = match (baseline_d, baseline_ctl) {
        (Some(d), ctl) => Some(daemon::Binaries {
            plughostd: d.into(),
            plughostctl: ctl.map_or_else(|| parsed.daemon.plughostctl.clone(), Into::into),
        }),
        (None, Some(_)) => bail!("--plughostctl-baseline needs --plughostd-baseline"),
        (None, None) => None,
    };
    Ok(parsed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--echo-peer") {
        echo::run_peer(false)
    } else if args.first().map(String::as_str) == Some("--fd-echo-peer") {
        echo::run_peer(true)
    } else {
        parse_args(&args).and_then(run)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plughost-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_case<'a>(
    name: &str,
    env: &'a Env,
    frame_len: usize,
    fanout: usize,
    api_plugin: &mut Option<Rc<RefCell<api::ApiPlugin<'a>>>>,
) -> Result<Box<dyn Case + 'a>> {
    let noop = || vec![PluginConfig::new("noop", &env.noop)];
    if let Some(case) = api::api_cases().iter().find(|c| c.name == name) {
        let plugin = match api_plugin {
            Some(plugin) => plugin.clone(),
            None => api_plugin
                .insert(Rc::new(RefCell::new(api::ApiPlugin::start(env)?)))
                .clone(),
        };
        return Ok(Box::new(api::ApiCase {
            case: *case,
            plugin,
        }));
    }
    Ok(match name {
        "raw_rtt" => Box::new(RawRtt(echo::Echo::start(frame_len)?)),
        "raw_fd_rtt" => Box::new(api::RawFdRtt(echo::Echo::start_fd(frame_len)?)),
        "fd_pass" => Box::new(api::FdPass::new()?),
        "raw_fanout_100" => Box::new(RawFanout(
            (0..100)
                .map(|_| echo::Echo::start(frame_len))
                .collect::<Result<_>>()?,
        )),
        "hook_rtt" => Box::new(HookRtt::new("hook_rtt", env, noop(), 0)?),
        "nested_rtt" => Box::new(HookRtt::new(
            "nested_rtt",
            env,
            vec![PluginConfig::new("nested_call", &env.nested)],
            1,
        )?),
        "in_process_hook" => Box::new(HookRtt::new(
            "in_process_hook",
            env,
            vec![PluginConfig::new("noop", &env.noop).in_process()],
            0,
        )?),
        "fanout_100" => {
            let plugins = (env.noop_copies[..fanout].iter().enumerate())
                .map(|(i, p)| PluginConfig::new(format!("noop_{i:03}"), p))
                .collect();
            // Another size (a diagnostic: how the per-plugin cost grows) gets its own name.
            let name: &'static str = match fanout {
                100 => "fanout_100",
                n => Box::leak(format!("fanout_{n}").into_boxed_str()),
            };
            Box::new(HookRtt::new(name, env, plugins, 0)?)
        }
        "callback_rtt" => Box::new(CallbackRtt(CallbackPlugin::start(env, "callback_rtt")?)),
        "callbacks_per_s" => Box::new(CallbacksPerSec(CallbackPlugin::start(
            env,
            "callbacks_per_s",
        )?)),
        "cold_start" => Box::new(Start {
            name: "cold_start",
            env,
            plugins: 1,
        }),
        "manager_setup" => Box::new(Start {
            name: "manager_setup",
            env,
            plugins: 0,
        }),
        "start_100" => Box::new(Start {
            name: "start_100",
            env,
            plugins: 100,
        }),
        "crash_detect" => Box::new(CrashDetect { env }),
        other => bail!("unknown case {other:?}"),
    })
}

fn run(args: Args) -> Result<()> {
    init_tracing();
    if args.pin != Pin::None {
        pin::pin_self(0)?;
    }
    let load_before = report::load_average();
    let env = Env::prepare(args.build_host, args.fanout.max(100))?;
    let frame_len = setup::hook_frame_len()?;
    let mut names: Vec<String> = match &args.only {
        Some(names) => names.clone(),
        None => all_cases()
            .iter()
            .filter(|n| !BASELINE_CASES.contains(n))
            .map(|s| s.to_string())
            .collect(),
    };
    // Each daemon case is measured against the baseline daemon too, when there is one.
    if args.baseline.is_some() {
        for (case, twin) in [
            ("vm_start", BASELINE_CASES[0]),
            ("distro_start", BASELINE_CASES[1]),
        ] {
            if names.iter().any(|n| n == case) && !names.iter().any(|n| n == twin) {
                names.push(twin.to_owned());
            }
        }
    }
    let mut cases = Vec::new();
    let mut api_plugin = None;
    for name in &names {
        if name == "raw_ns_spawn" {
            if let Some(why) = daemon::RawNsSpawn::unavailable() {
                eprintln!("plughost-bench: skipping {name}: {why}");
            } else {
                cases.push(Box::new(daemon::RawNsSpawn) as Box<dyn Case>);
            }
            continue;
        }
        if let Some(binaries) = daemon_binaries(name, &args) {
            if let Some(why) = binaries.unavailable() {
                eprintln!("plughost-bench: skipping {name}: {why}");
                continue;
            }
            let static_name = all_cases()
                .into_iter()
                .find(|n| n == name)
                .context("a daemon case")?;
            let dir = env.scratch.join(static_name);
            let case: Box<dyn Case> = match static_name {
                "control_rps" => Box::new(
                    daemon::ControlRps::new(&binaries, &dir)
                        .with_context(|| format!("setting up {name}"))?,
                ),
                _ => {
                    let (operation, plugins) = match static_name {
                        "vm_start_1" => (daemon::Operation::Vm, &env.noop_copies[..1]),
                        "vm_start_10" => (daemon::Operation::Vm, &env.noop_copies[..10]),
                        "exec_true" => (daemon::Operation::Exec, &[][..]),
                        vm if vm.starts_with("vm_start") => (daemon::Operation::Vm, &[][..]),
                        _ => (daemon::Operation::Distro, &[][..]),
                    };
                    Box::new(
                        daemon::DaemonCase::new(
                            static_name,
                            operation,
                            &binaries,
                            &dir,
                            plugins,
                            &env.host_binary,
                        )
                        .with_context(|| format!("setting up {name}"))?,
                    )
                }
            };
            cases.push(case);
            continue;
        }
        let case = build_case(name, &env, frame_len, args.fanout, &mut api_plugin)
            .with_context(|| format!("setting up {name}"))?;
        if args.pin == Pin::Split {
            for pid in case.peers() {
                pin::pin_tree(pid, 1)?;
            }
        }
        cases.push(case);
    }
    let mut samples: Vec<Samples> = cases
        .iter()
        .map(|c| Samples::new(c.name(), c.unit()))
        .collect();
    let per_round = |case: &dyn Case| match args.count {
        Some(count) => count,
        None => (iterations(case.name()) / args.scale_down).max(1),
    };
    let rounds = if args.count.is_some() { 1 } else { args.rounds };

    // Warm-up: page faults, lazy binding, first allocations, caches. Discarded.
    if args.count.is_none() {
        for case in &mut cases {
            let mut discard = Samples::new(case.name(), case.unit());
            let n = (per_round(&**case) / 10).max(1);
            case.batch(n, &mut discard)
                .with_context(|| format!("warming up {}", case.name()))?;
            case.after_warm_up();
        }
    }
    let started = std::time::Instant::now();
    for round in 0..rounds {
        for i in 0..cases.len() {
            let k = (round + i) % cases.len();
            let n = per_round(&*cases[k]);
            cases[k]
                .batch(n, &mut samples[k])
                .with_context(|| format!("round {round} of {}", cases[k].name()))?;
        }
        if !args.json {
            eprint!("\rplughost-bench: round {}/{rounds}", round + 1);
        }
    }
    if !args.json {
        eprintln!(" ({:.1} s)", started.elapsed().as_secs_f64());
    }

    // What cases recorded besides their samples, after their own (control_rps_latency).
    let mut samples: Vec<Samples> = (cases.iter().zip(samples))
        .flat_map(|(case, own)| std::iter::once(own).chain(case.extra_samples()))
        .collect();

    // Where the scheduler left each round trip's peer (unpinned runs: the ratios depend on it).
    let service_cpu = pin::own_cpu();
    let placement: Vec<(&'static str, Option<u32>)> = cases
        .iter()
        .filter(|c| c.unit() == Unit::Micros && !c.name().contains("fanout"))
        .filter_map(|c| c.peers().first().map(|pid| (c.name(), pin::last_cpu(*pid))))
        .collect();

    // host_rss: every idle noop host still running (the 100 of fanout_100 and hook_rtt's), after
    // they served all their hooks.
    let mut rss = [
        Samples::new("host_rss", Unit::MiB),
        Samples::new("host_rss_outer", Unit::MiB),
        Samples::new("host_rss_inner", Unit::MiB),
        Samples::new("host_pss", Unit::MiB),
    ];
    let mut pids = Vec::new();
    for case in &cases {
        if let Some(manager) = case.idle_noop_hosts() {
            pids.extend(manager.plugins().iter().filter_map(|p| p.host_pid));
        }
    }
    for pid in pids {
        let m = host_memory(pid)?;
        rss[0].values.push(m.outer_rss + m.inner_rss);
        rss[1].values.push(m.outer_rss);
        rss[2].values.push(m.inner_rss);
        rss[3].values.push(m.pss);
    }
    samples.extend(rss.into_iter().filter(|s| !s.values.is_empty()));

    // The building blocks, for turning a profile (syscalls and hops per operation) into time. Not
    // with --count: a profiling run should trace the case alone.
    let units = if args.unit_costs && args.count.is_none() {
        unit_costs::measure()?
    } else {
        Vec::new()
    };

    let mut meta = report::Meta::collect(&args_line(), frame_len, rounds, load_before, args.pin);
    meta.service_cpu = service_cpu;
    meta.placement = placement;
    if args.json {
        println!("{}", report::json(&meta, &samples, &units));
    } else {
        print!("{}", report::table(&meta, &samples, &units));
    }
    Ok(())
}

/// The daemon a daemon case measures (`None`: not a daemon case, or a baseline case without
/// `--plughostd-baseline`).
fn daemon_binaries(name: &str, args: &Args) -> Option<daemon::Binaries> {
    match name {
        "vm_start" | "vm_start_1" | "vm_start_10" | "distro_start" | "exec_true"
        | "control_rps" => Some(args.daemon.clone()),
        "vm_start_baseline" | "distro_start_baseline" => args.baseline.clone(),
        _ => None,
    }
}

fn args_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        "cargo run --release -p plughost-bench".into()
    } else {
        format!(
            "cargo run --release -p plughost-bench -- {}",
            args.join(" ")
        )
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
