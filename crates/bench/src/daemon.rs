//! The reference daemon's own figures, against a `plughostd` started here with its own state
//! directory and socket:
//! - `vm_start` (`plughostctl vm start` then `vm stop`, no plugin), `vm_start_1` and `vm_start_10`
//!   (the same with 1 and 10 copies of the C `noop` plugin configured, eager, out of process: the
//!   plugins' share of a VM start);
//! - `distro_start` (`distro start` then `distro stop` of a tiny registered rootfs);
//! - `exec_true` (`plughostctl exec -- /bin/true` in a running VM) against `raw_ns_spawn` (the same
//!   program spawned by `unshare` in new mount, UTS, IPC, pid and user namespaces, as root mapped
//!   to root: a plain namespaced spawn with no daemon);
//! - `control_rps`: `vm status` requests per second over the raw control socket (one request per
//!   connection, the JSON line protocol of `plughost_service`) from [`CONTROL_THREADS`] threads at
//!   once, and `control_rps_latency`, each request's time from `connect` to its reply (its p99 is
//!   the slow tail under that load).
//!
//! Each is timed as a whole. `--plughostd-baseline PATH` (with `--plughostctl-baseline PATH`, else
//! the same `plughostctl`) adds `vm_start_baseline` and `distro_start_baseline`: the same operations
//! against a second daemon, in the same run, their rounds interleaved with the others; the report
//! gives `vm_start_vs_baseline` and `distro_start_vs_baseline`. Both daemons are driven through
//! their `plughostctl` binaries, so two builds with different control protocols compare alike
//! (starting a `plughostctl` costs both sides the same).
//!
//! Needs root (the daemon makes namespaces); otherwise the cases are skipped with a message.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use plughost_service::{Reply, Request, MAX_REPLY};

use crate::cases::Case;
use crate::stats::{Samples, Unit};

/// Clients of `control_rps` at once: well under the daemon's 256 connections (root has no per-uid
/// limit, but the total keeps a reserve).
pub const CONTROL_THREADS: usize = 50;
/// Requests each client sends, one after the other, per `control_rps` sample.
pub const REQUESTS_PER_THREAD: usize = 40;

/// The daemon binaries of one side of the comparison.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub plughostd: PathBuf,
    pub plughostctl: PathBuf,
}

impl Binaries {
    /// `plughostd` and `plughostctl` beside this binary (`cargo build --release -p plughost-service`).
    pub fn beside_self() -> Result<Binaries> {
        let exe = std::env::current_exe().context("current_exe")?;
        let dir = exe.parent().context("the bench binary has no directory")?;
        Ok(Binaries {
            plughostd: dir.join("plughostd"),
            plughostctl: dir.join("plughostctl"),
        })
    }

    /// Why these binaries cannot be measured here, if they cannot.
    pub fn unavailable(&self) -> Option<String> {
        if !rustix::process::geteuid().is_root() {
            return Some("needs root (plughostd makes namespaces)".into());
        }
        for path in [&self.plughostd, &self.plughostctl] {
            if !path.exists() {
                return Some(format!(
                    "{} is missing (cargo build --release -p plughost-service)",
                    path.display()
                ));
            }
        }
        None
    }
}

/// A `plughostd` started for the bench; killed when dropped.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    ctl: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `binaries.plughostd` in `dir` (config, state, socket, log) with `plugins` configured
    /// (eager, out of process, named `noop_000`...; distinct files: the manager loads a path listed
    /// twice once), and waits until every one is ready.
    pub fn start(
        binaries: &Binaries,
        dir: &Path,
        plugins: &[PathBuf],
        host: &Path,
    ) -> Result<Daemon> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("plughostd.toml");
        let mut text = String::from("idle_timeout_secs = 0\n");
        // Without plugins, the config every daemon build reads (a baseline may predate a key).
        if !plugins.is_empty() {
            text += &format!("host_binary = {:?}\n", host.display().to_string());
        }
        for (i, path) in plugins.iter().enumerate() {
            text += &format!(
                "[[plugin]]\nname = \"noop_{i:03}\"\npath = {:?}\nisolation = \"process\"\nactivation = \"eager\"\n",
                path.display().to_string()
            );
        }
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let socket = dir.join("plughostd.sock");
        let log = dir.join("plughostd.log");
        let child = Command::new(&binaries.plughostd)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .env_remove("PLUGHOST_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("the daemon's log")?)
            .spawn()
            .with_context(|| format!("starting {}", binaries.plughostd.display()))?;
        let mut daemon = Daemon {
            child,
            socket,
            ctl: binaries.plughostctl.clone(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                bail!("plughostd exited ({status}): {}", daemon.log_text());
            }
            ensure!(
                Instant::now() < deadline,
                "plughostd did not come up: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        if !plugins.is_empty() {
            daemon.wait_for_plugins(plugins.len(), deadline)?;
        }
        Ok(daemon)
    }

    /// Waits until the daemon reports `count` plugins, all ready.
    fn wait_for_plugins(&self, count: usize, deadline: Instant) -> Result<()> {
        loop {
            let reply = self.request(&Request::Plugins)?;
            let Reply::Plugins { plugins } = reply else {
                bail!("plugins: unexpected reply {reply:?}");
            };
            if let Some(bad) = plugins
                .iter()
                .find(|p| p.state == "crashed" || p.state == "failed")
            {
                bail!(
                    "plugin {} is {}: {}",
                    bad.name,
                    bad.state,
                    bad.last_error.clone().unwrap_or_default()
                );
            }
            if plugins.len() == count && plugins.iter().all(|p| p.state == "ready") {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the daemon's plugins did not all become ready: {plugins:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request over the raw control socket (one connection per request, as the protocol is).
    pub fn request(&self, request: &Request) -> Result<Reply> {
        request_at(&self.socket, request)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `plughostctl ARGS` against this daemon; fails unless it succeeds.
    pub fn ctl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.ctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("PLUGHOST_SOCKET")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.ctl.display()))?;
        ensure!(
            out.status.success(),
            "plughostctl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal distribution root: `bin/sh` and `bin/true` from this machine with their libraries,
/// and `etc/os-release`.
pub fn make_rootfs(root: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(root);
    for dir in ["bin", "etc", "proc", "dev", "mnt", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).context("mkdir rootfs")?;
    }
    for bin in ["sh", "true"] {
        let real = std::fs::canonicalize(Path::new("/bin").join(bin))
            .with_context(|| format!("/bin/{bin}"))?;
        std::fs::copy(&real, root.join("bin").join(bin)).context("copying a binary")?;
        let ldd = Command::new("ldd").arg(&real).output().context("ldd")?;
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let target = root.join(lib.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).context("mkdir lib")?;
            }
            std::fs::copy(std::fs::canonicalize(lib)?, &target).context("copying a library")?;
        }
    }
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"Bench OS\"\nID=benchos\nVERSION_ID=\"1.0\"\n",
    )
    .context("os-release")?;
    Ok(())
}

/// One request over the raw control socket at `socket`: connect, one JSON line, one reply line.
fn request_at(socket: &Path, request: &Request) -> Result<Reply> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream
        .write_all(&plughost_service::encode(request))
        .with_context(|| format!("sending {request:?} to {}", socket.display()))?;
    let line = plughost_service::read_line(BufReader::new(&stream), MAX_REPLY)
        .with_context(|| format!("reading the reply to {request:?}"))?;
    plughost_service::decode(&line, MAX_REPLY)
        .with_context(|| format!("decoding the reply to {request:?}"))
}

/// What one sample is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `vm start`, then `vm stop`.
    Vm,
    /// `distro start bench`, then `distro stop bench` (registered once, beforehand).
    Distro,
    /// `exec -- /bin/true` in the VM (started once, beforehand).
    Exec,
}

/// vm_start (with 0, 1 or 10 plugins), distro_start, exec_true and the `_baseline` twins.
pub struct DaemonCase {
    pub name: &'static str,
    pub operation: Operation,
    pub daemon: Daemon,
    /// How many plugins the daemon runs (each must serve every VM start's hooks).
    plugins: usize,
}

impl DaemonCase {
    /// `plugins`: the plugin files the daemon loads (`host`: the `plughost-host` it runs them in).
    pub fn new(
        name: &'static str,
        operation: Operation,
        binaries: &Binaries,
        dir: &Path,
        plugins: &[PathBuf],
        host: &Path,
    ) -> Result<DaemonCase> {
        let daemon = Daemon::start(binaries, dir, plugins, host)?;
        match operation {
            Operation::Distro => {
                let rootfs = dir.join("rootfs");
                make_rootfs(&rootfs)?;
                let rootfs = rootfs.to_string_lossy().into_owned();
                daemon.ctl(&["distro", "register", "bench", "--rootfs", &rootfs])?;
            }
            Operation::Exec => daemon.ctl(&["vm", "start"])?,
            Operation::Vm => {}
        }
        Ok(DaemonCase {
            name,
            operation,
            daemon,
            plugins: plugins.len(),
        })
    }

    /// Hooks each plugin has served so far, by plugin name.
    fn hooks_served(&self) -> Result<Vec<(String, u64)>> {
        match self.daemon.request(&Request::Plugins)? {
            Reply::Plugins { plugins } => Ok(plugins
                .into_iter()
                .map(|p| (p.name, p.hooks_served))
                .collect()),
            other => bail!("plugins: unexpected reply {other:?}"),
        }
    }
}

impl Case for DaemonCase {
    fn name(&self) -> &'static str {
        self.name
    }
    fn unit(&self) -> Unit {
        Unit::Millis
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        let (first, then): (&[&str], &[&str]) = match self.operation {
            Operation::Vm => (&["vm", "start"], &["vm", "stop"]),
            Operation::Distro => (&["distro", "start", "bench"], &["distro", "stop", "bench"]),
            Operation::Exec => (&["exec", "--", "/bin/true"], &[]),
        };
        let served_before = if self.plugins > 0 {
            self.hooks_served()?
        } else {
            Vec::new()
        };
        for _ in 0..iterations {
            let began = Instant::now();
            self.daemon.ctl(first)?;
            if !then.is_empty() {
                self.daemon.ctl(then)?;
            }
            out.values.push(began.elapsed().as_secs_f64() * 1e3);
        }
        // Every plugin took part in every VM start and stop timed (at least one hook each).
        if self.plugins > 0 {
            let served_after = self.hooks_served()?;
            ensure!(
                served_after.len() == self.plugins,
                "{}: the daemon runs {} plugins, not {}",
                self.name,
                served_after.len(),
                self.plugins
            );
            for (name, after) in &served_after {
                let before = (served_before.iter())
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, b)| *b);
                ensure!(
                    after.saturating_sub(before) >= iterations as u64 * 2,
                    "{}: plugin {name} served {} hooks over {iterations} VM starts and stops",
                    self.name,
                    after.saturating_sub(before)
                );
            }
        }
        Ok(())
    }
    fn peers(&self) -> Vec<u32> {
        vec![self.daemon.pid()]
    }
}

/// `raw_ns_spawn`: `/bin/true` run by `unshare` in new mount, UTS, IPC, pid (`--fork`) and user
/// namespaces, root mapped to root; what `exec_true` is compared with (both start one client
/// process, `plughostctl` or `unshare`, and wait for `/bin/true` to end).
pub struct RawNsSpawn;

impl RawNsSpawn {
    /// Why it cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        if !rustix::process::geteuid().is_root() {
            return Some("needs root (compared with exec_true, which needs plughostd)".into());
        }
        None
    }
}

impl Case for RawNsSpawn {
    fn name(&self) -> &'static str {
        "raw_ns_spawn"
    }
    fn unit(&self) -> Unit {
        Unit::Millis
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        for _ in 0..iterations {
            let began = Instant::now();
            let status = Command::new("unshare")
                .args(["--mount", "--uts", "--ipc", "--pid", "--fork", "--user"])
                .args(["--map-root-user", "/bin/true"])
                .stdin(Stdio::null())
                .status()
                .context("running unshare")?;
            out.values.push(began.elapsed().as_secs_f64() * 1e3);
            ensure!(status.success(), "unshare ... /bin/true: {status}");
        }
        Ok(())
    }
}

/// `control_rps`: one sample is [`CONTROL_THREADS`] clients each sending [`REQUESTS_PER_THREAD`]
/// `vm status` requests back to back over the raw socket (the VM runs: every reply must be its
/// status), all clients released at once; requests per second from the release to the last reply.
/// Every request's latency goes to `control_rps_latency`.
pub struct ControlRps {
    daemon: Daemon,
    latencies: Samples,
}

impl ControlRps {
    pub fn new(binaries: &Binaries, dir: &Path) -> Result<ControlRps> {
        let daemon = Daemon::start(binaries, dir, &[], Path::new(""))?;
        daemon.ctl(&["vm", "start"])?;
        Ok(ControlRps {
            daemon,
            latencies: Samples::new("control_rps_latency", Unit::Millis),
        })
    }

    /// One client's requests: each one's latency in ms.
    fn client(socket: &Path, start: &Barrier) -> Result<Vec<f64>> {
        start.wait();
        let mut latencies = Vec::with_capacity(REQUESTS_PER_THREAD);
        for _ in 0..REQUESTS_PER_THREAD {
            let began = Instant::now();
            let reply = request_at(socket, &Request::VmStatus)?;
            latencies.push(began.elapsed().as_secs_f64() * 1e3);
            ensure!(
                matches!(reply, Reply::Vm(ref vm) if vm.running),
                "vm status: unexpected reply {reply:?}"
            );
        }
        Ok(latencies)
    }
}

impl Case for ControlRps {
    fn name(&self) -> &'static str {
        "control_rps"
    }
    fn unit(&self) -> Unit {
        Unit::PerSecond
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        let socket = self.daemon.socket.as_path();
        for _ in 0..iterations {
            let start = Barrier::new(CONTROL_THREADS + 1);
            let (elapsed, results) = std::thread::scope(|scope| {
                let clients: Vec<_> = (0..CONTROL_THREADS)
                    .map(|_| scope.spawn(|| ControlRps::client(socket, &start)))
                    .collect();
                start.wait();
                let began = Instant::now();
                let results: Vec<Result<Vec<f64>>> = clients
                    .into_iter()
                    .map(|c| {
                        c.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
                    })
                    .collect();
                (began.elapsed(), results)
            });
            for result in results {
                self.latencies.values.extend(result?);
            }
            let requests = (CONTROL_THREADS * REQUESTS_PER_THREAD) as f64;
            out.values.push(requests / elapsed.as_secs_f64());
        }
        Ok(())
    }
    fn after_warm_up(&mut self) {
        self.latencies.values.clear();
    }
    fn extra_samples(&self) -> Vec<Samples> {
        vec![self.latencies.clone()]
    }
    fn peers(&self) -> Vec<u32> {
        vec![self.daemon.pid()]
    }
}
