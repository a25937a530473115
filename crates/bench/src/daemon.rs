//! The reference daemon's own figures: `vm_start` (`plughostctl vm start` then `vm stop`) and
//! `distro_start` (`distro start` then `distro stop` of a tiny registered rootfs), each timed as a
//! whole, against a `plughostd` started here with its own state directory and socket and no plugin
//! (so what is timed is the daemon and its sandbox, not plugins).
//!
//! `--plughostd-baseline PATH` (with `--plughostctl-baseline PATH`, else the same `plughostctl`)
//! adds `vm_start_baseline` and `distro_start_baseline`: the same operations against a second
//! daemon, in the same run, their rounds interleaved with the others; the report gives
//! `vm_start_vs_baseline` and `distro_start_vs_baseline`. Both daemons are driven through their
//! `plughostctl` binaries, so two builds with different control protocols compare alike (starting
//! a `plughostctl` costs both sides the same).
//!
//! Needs root (the daemon makes namespaces); otherwise the cases are skipped with a message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::cases::Case;
use crate::stats::{Samples, Unit};

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
    /// Starts `binaries.plughostd` in `dir` (config, state, socket, log) with no plugin.
    pub fn start(binaries: &Binaries, dir: &Path) -> Result<Daemon> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("plughostd.toml");
        std::fs::write(&config, "idle_timeout_secs = 0\n")
            .with_context(|| format!("writing {}", config.display()))?;
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
        Ok(daemon)
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

/// What one sample is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `vm start`, then `vm stop`.
    Vm,
    /// `distro start bench`, then `distro stop bench` (registered once, beforehand).
    Distro,
}

/// vm_start, distro_start and their `_baseline` twins.
pub struct DaemonCase {
    pub name: &'static str,
    pub operation: Operation,
    pub daemon: Daemon,
}

impl DaemonCase {
    pub fn new(
        name: &'static str,
        operation: Operation,
        binaries: &Binaries,
        dir: &Path,
    ) -> Result<DaemonCase> {
        let daemon = Daemon::start(binaries, dir)?;
        if operation == Operation::Distro {
            let rootfs = dir.join("rootfs");
            make_rootfs(&rootfs)?;
            let rootfs = rootfs.to_string_lossy().into_owned();
            daemon.ctl(&["distro", "register", "bench", "--rootfs", &rootfs])?;
        }
        Ok(DaemonCase {
            name,
            operation,
            daemon,
        })
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
        let (start, stop): (&[&str], &[&str]) = match self.operation {
            Operation::Vm => (&["vm", "start"], &["vm", "stop"]),
            Operation::Distro => (&["distro", "start", "bench"], &["distro", "stop", "bench"]),
        };
        for _ in 0..iterations {
            let began = Instant::now();
            self.daemon.ctl(start)?;
            self.daemon.ctl(stop)?;
            out.values.push(began.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }
    fn peers(&self) -> Vec<u32> {
        vec![self.daemon.pid()]
    }
}
