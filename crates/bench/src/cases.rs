//! The measurements. Each [`Case`] runs one batch of iterations per round; the driver interleaves the
//! rounds of all cases so that drift (absolute times move between runs) falls on all alike.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use plughost::{PluginConfig, PluginManager, Session, VmSettings};

use crate::echo::Echo;
use crate::fifos::BenchFifos;
use crate::setup::{check_ready, session, Env};
use crate::stats::{Samples, Unit};

/// Longest wait for anything a plugin host should answer at once.
pub const STUCK: Duration = Duration::from_secs(30);

pub trait Case {
    fn name(&self) -> &'static str;
    fn unit(&self) -> Unit;
    /// Runs `iterations` and appends one sample per iteration (a rate case: per batch).
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()>;
    /// A manager whose hosts run the noop plugin out of process and stay idle between batches
    /// (host_rss reads them).
    fn idle_noop_hosts(&self) -> Option<&PluginManager> {
        None
    }
    /// The processes at the other end of this case's round trips (for `--pin split`).
    fn peers(&self) -> Vec<u32> {
        Vec::new()
    }
    /// Called once after the warm-up batch: forget what it recorded besides its samples.
    fn after_warm_up(&mut self) {}
    /// Measurements this case records besides its own samples (control_rps: each request's
    /// latency), reported after it.
    fn extra_samples(&self) -> Vec<Samples> {
        Vec::new()
    }
}

fn host_pids(manager: &PluginManager) -> Vec<u32> {
    manager
        .plugins()
        .iter()
        .filter_map(|p| p.host_pid)
        .collect()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// raw_rtt: [`Echo`].
pub struct RawRtt(pub Echo);

impl Case for RawRtt {
    fn name(&self) -> &'static str {
        "raw_rtt"
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        for _ in 0..iterations {
            out.values.push(self.0.round_trip()?);
        }
        Ok(())
    }
    fn peers(&self) -> Vec<u32> {
        vec![self.0.peer_pid()]
    }
}

/// raw_fanout_100: one raw round trip to each of 100 echo peers in turn, timed as a whole: the
/// baseline of fanout_100 (what cycling through 100 processes costs the OS with no plughost code).
pub struct RawFanout(pub Vec<Echo>);

impl Case for RawFanout {
    fn name(&self) -> &'static str {
        "raw_fanout_100"
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        for _ in 0..iterations {
            let start = Instant::now();
            for peer in &mut self.0 {
                peer.exchange()?;
            }
            out.values.push(micros(start.elapsed()));
        }
        Ok(())
    }
    fn peers(&self) -> Vec<u32> {
        self.0.iter().map(Echo::peer_pid).collect()
    }
}

/// One `on_vm_started` through a manager, timed from the call to its return: hook_rtt (noop, out of
/// process), nested_rtt (nested_call: one `mount_folder` back into the service per hook),
/// in_process_hook, fanout_100.
pub struct HookRtt<'a> {
    pub name: &'static str,
    pub env: &'a Env,
    pub manager: PluginManager,
    /// `mount_folder` calls the service must see per hook (checks that the nested call happened).
    pub mounts_per_hook: u64,
    session: Session,
}

impl<'a> HookRtt<'a> {
    pub fn new(
        name: &'static str,
        env: &'a Env,
        plugins: Vec<PluginConfig>,
        mounts_per_hook: u64,
    ) -> Result<HookRtt<'a>> {
        Ok(HookRtt {
            name,
            env,
            manager: env.ready_manager(plugins)?,
            mounts_per_hook,
            session: session(),
        })
    }
}

impl Case for HookRtt<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn idle_noop_hosts(&self) -> Option<&PluginManager> {
        matches!(self.name, "hook_rtt" | "fanout_100").then_some(&self.manager)
    }
    fn peers(&self) -> Vec<u32> {
        host_pids(&self.manager)
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        let service = &*self.env.service;
        let settings = VmSettings::default();
        let before = service.mounts();
        for _ in 0..iterations {
            let start = Instant::now();
            let result = self
                .manager
                .on_vm_started(&self.session, &settings, service);
            let elapsed = start.elapsed();
            result.with_context(|| format!("{}: on_vm_started", self.name))?;
            out.values.push(micros(elapsed));
        }
        let mounts = service.mounts() - before;
        ensure!(
            mounts == self.mounts_per_hook * iterations as u64,
            "{}: the service saw {mounts} calls for {iterations} hooks",
            self.name
        );
        Ok(())
    }
}

/// A host running `plugins/c/bench_callbacks.c`, driven through its two FIFOs.
pub struct CallbackPlugin<'a> {
    env: &'a Env,
    manager: PluginManager,
    fifos: BenchFifos,
}

const MODE_LATENCY: u32 = 1;
const MODE_THROUGHPUT: u32 = 2;

impl<'a> CallbackPlugin<'a> {
    pub fn start(env: &'a Env, name: &str) -> Result<CallbackPlugin<'a>> {
        let (fifos, plugin) = BenchFifos::open(env, name, PluginConfig::new(name, &env.callbacks))?;
        let manager = env.ready_manager(vec![plugin])?;
        Ok(CallbackPlugin {
            env,
            manager,
            fifos,
        })
    }

    /// Sends one command; returns (failures, calls made).
    fn command(&mut self, mode: u32, count: u32) -> Result<(u32, u32)> {
        self.fifos.command([mode, count, session().id.0])
    }

    /// `count` calls one after another from one plugin thread: each one's duration in µs, as the
    /// plugin timed it.
    pub fn latency(&mut self, count: u32, out: &mut Vec<f64>) -> Result<()> {
        let before = self.env.service.mounts();
        let (failures, n) = self.command(MODE_LATENCY, count)?;
        ensure!(
            failures == 0 && n == count,
            "latency: {failures} of {n} calls failed"
        );
        let mut raw = vec![0u8; n as usize * 8];
        self.fifos.read_answer(&mut raw)?;
        out.extend(raw.chunks_exact(8).map(|c| {
            let ns = u64::from_ne_bytes(c.try_into().unwrap_or_default());
            ns as f64 / 1e3
        }));
        ensure!(
            self.env.service.mounts() - before == u64::from(n),
            "latency: calls lost"
        );
        Ok(())
    }

    /// `count` calls spread over the plugin's 4 worker threads: calls per second.
    pub fn throughput(&mut self, count: u32) -> Result<f64> {
        let before = self.env.service.mounts();
        let (failures, n) = self.command(MODE_THROUGHPUT, count)?;
        let mut elapsed = [0u8; 8];
        self.fifos.read_answer(&mut elapsed)?;
        ensure!(failures == 0, "throughput: {failures} of {n} calls failed");
        ensure!(
            self.env.service.mounts() - before == u64::from(n),
            "throughput: calls lost"
        );
        let ns = u64::from_ne_bytes(elapsed);
        Ok(f64::from(n) / (ns as f64 / 1e9))
    }
}

/// callback_rtt: an API call from a plugin thread while no hook is in flight.
pub struct CallbackRtt<'a>(pub CallbackPlugin<'a>);

impl Case for CallbackRtt<'_> {
    fn name(&self) -> &'static str {
        "callback_rtt"
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        self.0.latency(iterations as u32, &mut out.values)
    }
    fn peers(&self) -> Vec<u32> {
        host_pids(&self.0.manager)
    }
}

/// callbacks_per_s: 4 plugin threads calling as fast as they can; one sample per batch of
/// `iterations` calls.
pub struct CallbacksPerSec<'a>(pub CallbackPlugin<'a>);

impl Case for CallbacksPerSec<'_> {
    fn name(&self) -> &'static str {
        "callbacks_per_s"
    }
    fn unit(&self) -> Unit {
        Unit::PerSecond
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        out.values.push(self.0.throughput(iterations as u32)?);
        Ok(())
    }
    fn peers(&self) -> Vec<u32> {
        host_pids(&self.0.manager)
    }
}

/// Starting managers: cold_start (one noop host), manager_setup (no plugin: the manager's own
/// threads, for reference), start_100 (100 noop hosts). Timed from `PluginManager::new` to its
/// return with every plugin ready; the teardown is not timed.
pub struct Start<'a> {
    pub name: &'static str,
    pub env: &'a Env,
    pub plugins: usize,
}

impl Start<'_> {
    fn configs(&self) -> Vec<PluginConfig> {
        match self.plugins {
            1 => vec![PluginConfig::new("noop", &self.env.noop)],
            n => self.env.noop_copies[..n]
                .iter()
                .enumerate()
                .map(|(i, p)| PluginConfig::new(format!("noop_{i:03}"), p))
                .collect(),
        }
    }
}

impl Case for Start<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn unit(&self) -> Unit {
        Unit::Millis
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        for _ in 0..iterations {
            let configs = self.configs();
            let start = Instant::now();
            let manager = self.env.manager(configs)?;
            let elapsed = start.elapsed();
            check_ready(&manager)?;
            ensure!(
                manager.plugins().len() == self.plugins,
                "{}: plugins missing",
                self.name
            );
            out.values.push(millis(elapsed));
            drop(manager);
        }
        Ok(())
    }
}

/// crash_detect: SIGKILL to a ready host's pid (the outer host process), then
/// `PluginManager::plugins` polled without sleeping (`sched_yield` between polls) until the plugin is
/// no longer "ready": the monitor thread saw the pidfd, reaped the host and marked it dead.
pub struct CrashDetect<'a> {
    pub env: &'a Env,
}

impl Case for CrashDetect<'_> {
    fn name(&self) -> &'static str {
        "crash_detect"
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        for _ in 0..iterations {
            let manager = self
                .env
                .ready_manager(vec![PluginConfig::new("victim", &self.env.noop)])?;
            let pid = manager.plugins()[0]
                .host_pid
                .context("crash_detect: no host pid")?;
            let pid = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .context("crash_detect: bad pid")?;
            let start = Instant::now();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                .context("crash_detect: kill")?;
            loop {
                if manager.plugins()[0].state != "ready" {
                    break;
                }
                ensure!(
                    start.elapsed() < STUCK,
                    "crash_detect: the crash went unnoticed"
                );
                // No sleep, but give the CPU away: on 2 vCPUs a pure spin can sit on the very CPU
                // the monitor thread (or the dying host) needs, and measure the scheduler instead.
                std::thread::yield_now();
            }
            out.values.push(micros(start.elapsed()));
        }
        Ok(())
    }
}

/// One host's resident memory, in MiB: the outer process (the one the service spawned and holds), the
/// processes beneath it (the namespace's init and the plugin process, or the single inner process of
/// older layouts), their sum, and the sum of their proportional set sizes (shared pages divided
/// among the processes that map them: what the host really adds).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostMemory {
    pub outer_rss: f64,
    pub inner_rss: f64,
    pub pss: f64,
    pub processes: usize,
}

/// `pid` and all its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children"));
                let children = children.unwrap_or_default();
                tree.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    tree
}

pub fn host_memory(outer: u32) -> Result<HostMemory> {
    let mut memory = HostMemory::default();
    for (i, pid) in process_tree(outer).into_iter().enumerate() {
        let rss = kib_field(&format!("/proc/{pid}/status"), "VmRSS:")? / 1024.0;
        memory.pss += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")? / 1024.0;
        if i == 0 {
            memory.outer_rss = rss;
        } else {
            memory.inner_rss += rss;
        }
        memory.processes += 1;
    }
    Ok(memory)
}

fn kib_field(path: &str, key: &str) -> Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}
