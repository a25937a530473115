//! What the measurements need: the host binary, the plugins, the FIFOs of the callback plugin, and a
//! service whose callbacks do no work.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use plughost::{
    CallContext, ContainerProcess, ContainerSessionId, CreateProcessError, DistributionId,
    ManagerConfig, PluginConfig, PluginManager, ProcessStream, ServiceCallbacks, Session,
    SessionId, Status,
};
use plughost_wire::{encode, Hook, RequestId, ServiceMsg, VmSettings};

/// The session every hook is about.
pub fn session() -> Session {
    Session {
        id: SessionId(1),
        uid: 1000,
        gid: 1000,
        user_name: "bench".into(),
    }
}

/// The length of the frame that carries one `on_vm_started` hook for [`session`]: the message size of
/// every round trip measured, the raw baseline included.
pub fn hook_frame_len() -> Result<usize> {
    let msg = ServiceMsg::Hook {
        id: RequestId(1),
        hook: Hook::VmStarted {
            session: session(),
            settings: VmSettings::default(),
        },
    };
    let mut buf = Vec::new();
    encode(&msg, &mut buf).context("encoding the reference hook frame")?;
    Ok(buf.len())
}

/// The service: every call answers at once, so that what is timed is plughost's path, not the
/// service's work. `mount_folder` succeeds (and is counted, so the bench can check that every call it
/// timed really reached the service). For the `api_*` cases (`plugins/c/bench_api.c`): session 2,
/// container session 2, distribution `[2; 16]` and the program `/nonexistent` are not found; the
/// process made from `/bin/false` fails every call; an fd answer is a dup of one open `/dev/null`.
pub struct BenchService {
    pub mounts: AtomicU64,
    file: Arc<OwnedFd>,
}

impl BenchService {
    pub fn new() -> Result<BenchService> {
        let file = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .context("opening /dev/null")?;
        Ok(BenchService {
            mounts: AtomicU64::new(0),
            file: Arc::new(file),
        })
    }

    pub fn mounts(&self) -> u64 {
        self.mounts.load(Ordering::Relaxed)
    }

    fn fd(&self) -> Result<OwnedFd, Status> {
        self.file.try_clone().map_err(|e| Status::from_io(&e))
    }
}

/// A container process of the bench service: answers at once (its fds are dups of the service's
/// one open file).
struct BenchProcess {
    file: Arc<OwnedFd>,
    fails: bool,
}

impl ContainerProcess for BenchProcess {
    fn fd(&mut self, _stream: ProcessStream) -> Result<OwnedFd, Status> {
        self.exit_fd()
    }
    fn exit_fd(&mut self) -> Result<OwnedFd, Status> {
        if self.fails {
            return Err(Status::NOT_FOUND);
        }
        self.file.try_clone().map_err(|e| Status::from_io(&e))
    }
    fn exit_code(&mut self) -> Result<i32, Status> {
        if self.fails {
            Err(Status::NOT_FOUND)
        } else {
            Ok(0)
        }
    }
}

impl ServiceCallbacks for BenchService {
    fn mount_folder(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        _host_path: &str,
        _vm_path: &str,
        _read_only: bool,
        _name: &str,
    ) -> Result<(), Status> {
        if session == SessionId(2) {
            return Err(Status::NOT_FOUND);
        }
        self.mounts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn execute_binary(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        _path: &str,
        _argv: &[String],
    ) -> Result<OwnedFd, Status> {
        if session == SessionId(2) {
            return Err(Status::NOT_FOUND);
        }
        self.fd()
    }

    fn execute_binary_in_distribution(
        &self,
        _: CallContext<'_>,
        _session: SessionId,
        distribution: DistributionId,
        _path: &str,
        _argv: &[String],
    ) -> Result<OwnedFd, Status> {
        if distribution == DistributionId([2; 16]) {
            return Err(Status::NOT_FOUND);
        }
        self.fd()
    }

    fn container_mount_folder(
        &self,
        _: CallContext<'_>,
        container_session: ContainerSessionId,
        _host_path: &str,
        _mountpoint: &str,
        _read_only: bool,
    ) -> Result<(), Status> {
        if container_session == ContainerSessionId(2) {
            return Err(Status::NOT_FOUND);
        }
        Ok(())
    }

    fn container_unmount_folder(
        &self,
        _: CallContext<'_>,
        container_session: ContainerSessionId,
        _mountpoint: &str,
    ) -> Result<(), Status> {
        if container_session == ContainerSessionId(2) {
            return Err(Status::NOT_FOUND);
        }
        Ok(())
    }

    fn container_create_process(
        &self,
        _: CallContext<'_>,
        container_session: ContainerSessionId,
        path: &str,
        _argv: &[String],
        _envp: Option<&[String]>,
    ) -> Result<Box<dyn ContainerProcess>, CreateProcessError> {
        if container_session == ContainerSessionId(2) || path == "/nonexistent" {
            return Err(CreateProcessError {
                status: Status::NOT_FOUND,
                errno: 2,
            });
        }
        Ok(Box::new(BenchProcess {
            file: self.file.clone(),
            fails: path == "/bin/false",
        }))
    }
}

/// Paths and shared state of one run.
pub struct Env {
    pub host_binary: PathBuf,
    pub noop: PathBuf,
    pub nested: PathBuf,
    pub callbacks: PathBuf,
    /// `bench_api.so` (the `api_*` cases).
    pub api: PathBuf,
    /// Distinct copies of `noop.so` (the manager loads a path listed twice only once).
    pub noop_copies: Vec<PathBuf>,
    /// Holds the FIFOs of the callback plugin.
    pub scratch: PathBuf,
    pub service: Arc<BenchService>,
}

impl Env {
    /// `copies`: how many distinct copies of `noop.so` to make (at least 100).
    pub fn prepare(build_host: bool, copies: usize) -> Result<Env> {
        let host_binary = host_binary(build_host)?;
        let noop = plughost_tests::c_plugin("noop");
        let nested = plughost_tests::c_plugin("nested_call");
        let callbacks = plughost_tests::c_plugin("bench_callbacks");
        let api = plughost_tests::c_plugin("bench_api");
        let copies_dir = plughost_tests::target_dir().join("bench-plugins");
        std::fs::create_dir_all(&copies_dir)
            .with_context(|| format!("creating {}", copies_dir.display()))?;
        let mut noop_copies = Vec::new();
        for i in 0..copies {
            let copy = copies_dir.join(format!("noop_{i:03}.so"));
            std::fs::copy(&noop, &copy)
                .with_context(|| format!("copying {} to {}", noop.display(), copy.display()))?;
            noop_copies.push(copy);
        }
        let scratch = copies_dir.join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        Ok(Env {
            host_binary,
            noop,
            nested,
            callbacks,
            api,
            noop_copies,
            scratch,
            service: Arc::new(BenchService::new()?),
        })
    }

    /// A manager of `plugins` with the bench service as default callbacks.
    pub fn manager(&self, plugins: Vec<PluginConfig>) -> Result<PluginManager> {
        let mut config = ManagerConfig::new(plugins);
        config.host_binary = Some(self.host_binary.clone());
        PluginManager::new(config, self.service.clone()).context("starting a plugin manager")
    }

    /// A manager whose plugins must all be ready.
    pub fn ready_manager(&self, plugins: Vec<PluginConfig>) -> Result<PluginManager> {
        let manager = self.manager(plugins)?;
        check_ready(&manager)?;
        Ok(manager)
    }

    /// Makes a FIFO in the scratch directory, open to every user: the host runs as an unprivileged
    /// user of its own when the service is root.
    pub fn fifo(&self, name: &str) -> Result<PathBuf> {
        let path = self.scratch.join(name);
        let _ = std::fs::remove_file(&path);
        let mode = rustix::fs::Mode::from_raw_mode(0o666);
        rustix::fs::mkfifoat(rustix::fs::CWD, &path, mode)
            .with_context(|| format!("mkfifo {}", path.display()))?;
        // mkfifo applies the umask.
        rustix::fs::chmod(&path, mode).with_context(|| format!("chmod {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Fails unless every plugin of `manager` is ready.
pub fn check_ready(manager: &PluginManager) -> Result<()> {
    for plugin in manager.plugins() {
        if plugin.state != "ready" {
            bail!(
                "plugin {} is {}: {}",
                plugin.name,
                plugin.state,
                plugin.last_error.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `$PLUGHOST_HOST`, else `plughost-host` beside this binary. Under `cargo run` (which sets `$CARGO`)
/// it is built first with this binary's profile, so that the host always matches the supervisor
/// linked into the bench.
fn host_binary(build: bool) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PLUGHOST_HOST") {
        return Ok(path.into());
    }
    let path = plughost_tests::target_dir().join("plughost-host");
    if let (true, Some(cargo)) = (build, std::env::var_os("CARGO")) {
        let manifest = plughost_tests::workspace().join("Cargo.toml");
        let mut command = Command::new(cargo);
        command
            .arg("build")
            .arg("--quiet")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["-p", "plughost-host", "--bin", "plughost-host"]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        eprintln!("plughost-bench: building plughost-host ({command:?})");
        let status = command.status().context("running cargo build")?;
        if !status.success() {
            bail!("building plughost-host failed ({status})");
        }
    }
    if !Path::new(&path).exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p plughost-host) or set PLUGHOST_HOST",
            path.display()
        );
    }
    Ok(path)
}
