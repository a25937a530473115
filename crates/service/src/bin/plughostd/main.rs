//! `plughostd`: the reference plughost service. It owns user sessions (one per uid) with their
//! namespace VM and distributions, and container sessions with their session VM; it tells the
//! configured plugins about them through the `plughost` supervisor library and serves the plugins'
//! API calls with real mounts and processes. `plughostctl` drives it over a Unix socket (see the
//! `plughost_service` library for the protocol).
//!
//! Modules: `config` (the TOML file), `store` (registered distributions on disk), `daemon` (state,
//! operations, the plugin API; its docs give the lock order and the re-entrancy design), `server`
//! (the control socket), `userfs` (files a user names, opened with that user's rights), `vm` (daemon-side handles on the sandbox), `sandbox` (the hidden
//! subcommands that run in the sandbox's single-threaded helper processes).
//!
//! It does not confine what a plugin's program does inside a VM beyond the namespaces (no user
//! namespace, seccomp or cgroup limits), and it does not restart crashed plugins (the supervisor
//! latches their error).

mod app_watch;
mod config;
mod daemon;
mod host_binary;
mod ids;
mod sandbox;
mod server;
mod store;
mod userfs;
mod vm;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::sandbox::EnterOp;
use crate::store::Store;
use crate::vm::{Sandbox, Spawner};

#[derive(Parser)]
#[command(
    name = "plughostd",
    version,
    about = "The plughost reference service",
    long_about = "The plughost reference service: per-user namespace VMs, distributions and \
container sessions, told to the configured plugins (each in its own plughost-host process). Runs in \
the foreground and logs to stderr (RUST_LOG=debug for more); needs root for namespaces and mounts. \
SIGTERM or SIGINT shut it down gracefully; SIGHUP reloads the configuration's plugins.",
    after_help = "The plugin host binary is the config's host_binary, else $PLUGHOST_HOST, else \
plughost-host beside plughostd, in ../libexec/plughost/ relative to it, or in the install prefix's \
libexec/plughost/. Every configuration key is documented in crates/service/README.md (installed as \
share/doc/plughost/plughostd.md)."
)]
struct Cli {
    /// The configuration file; a missing file given here is an error [default:
    /// /etc/plughost/plughostd.toml, where a missing file means no plugins].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where registered distributions (distributions.json) and the VMs' staging tree are kept.
    #[arg(long, value_name = "DIR", default_value = plughost_service::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The control socket; given here it wins over the environment [default: $PLUGHOST_SOCKET,
    /// else /run/plughost/plughostd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    internal: Option<Internal>,
}

/// The sandbox's helper processes (see `sandbox/`); not for people.
#[derive(Subcommand)]
enum Internal {
    #[command(name = "__vm-init", hide = true)]
    VmInit {
        #[arg(long)]
        stage: PathBuf,
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        parent_pid: u32,
        #[arg(long)]
        uid_map: String,
        #[arg(long)]
        gid_map: String,
        #[arg(long)]
        root_uid: u32,
        #[arg(long)]
        root_gid: u32,
        #[arg(long)]
        scratch_mib: u32,
        #[arg(long)]
        dirs_file: Option<PathBuf>,
    },
    #[command(name = "__vm-enter", hide = true)]
    VmEnter {
        /// Only to find the init's user namespace; checked against the pidfd on the control socket.
        #[arg(long)]
        init_pid: u32,
        #[arg(long)]
        parent_pid: u32,
        #[command(subcommand)]
        op: EnterCommand,
    },
    #[command(name = "__distro-init", hide = true)]
    DistroInit {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        parent_pid: u32,
    },
    #[command(name = "__probe", hide = true)]
    Probe,
    /// Writes the man page and shell completions beneath DIR (for `make install`).
    #[command(name = "__generate-docs", hide = true)]
    GenerateDocs { dir: PathBuf },
}

#[derive(Subcommand)]
enum EnterCommand {
    Mount {
        #[arg(long)]
        target: PathBuf,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        idmap: bool,
        #[arg(long)]
        owner_uid: u32,
        #[arg(long)]
        owner_gid: u32,
    },
    Unmount {
        #[arg(long)]
        target: PathBuf,
    },
    Exec {
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        #[arg(long)]
        clear_env: bool,
        /// RLIMIT_NPROC of the program (processes of its uid in the VM's user namespace).
        #[arg(long)]
        nproc: Option<u64>,
        #[arg(long = "env", allow_hyphen_values = true)]
        env: Vec<String>,
        /// The program's path, then its whole argv (its first element included).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    Distro {
        #[arg(long)]
        stage: PathBuf,
        #[arg(long)]
        idmap: bool,
        #[arg(long)]
        owner_uid: u32,
        #[arg(long)]
        owner_gid: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Internal::GenerateDocs { dir }) = &cli.internal {
        use clap::CommandFactory;
        return match plughost_service::docs::generate(Cli::command(), "8", dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plughostd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(internal) = cli.internal {
        run_internal(internal);
    }
    // Like firecracker's jailer: nothing the launcher left open (without CLOEXEC) may reach the
    // programs users and plugins run.
    if let Err(e) = plughost_sys::confine::close_inherited_fds(2) {
        eprintln!("plughostd: cannot close inherited fds: {e}");
        return ExitCode::FAILURE;
    }
    init_tracing();
    match run_daemon(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plughostd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_internal(internal: Internal) -> ! {
    match internal {
        Internal::VmInit {
            stage,
            hostname,
            parent_pid,
            uid_map,
            gid_map,
            root_uid,
            root_gid,
            scratch_mib,
            dirs_file,
        } => sandbox::vm_init(&sandbox::VmInit {
            stage,
            hostname,
            parent: parent_pid,
            uid_map,
            gid_map,
            root_uid,
            root_gid,
            scratch_mib,
            dirs_file,
        }),
        Internal::DistroInit { root, parent_pid } => sandbox::distro_init(&root, parent_pid),
        Internal::Probe => sandbox::probe(),
        // Answered in main(), before tracing starts.
        Internal::GenerateDocs { .. } => std::process::exit(2),
        Internal::VmEnter {
            init_pid,
            parent_pid,
            op,
        } => {
            let op = match op {
                EnterCommand::Mount {
                    target,
                    read_only,
                    idmap,
                    owner_uid,
                    owner_gid,
                } => EnterOp::Mount {
                    target,
                    read_only,
                    idmap,
                    owner: (owner_uid, owner_gid),
                },
                EnterCommand::Unmount { target } => EnterOp::Unmount { target },
                EnterCommand::Exec {
                    uid,
                    gid,
                    clear_env,
                    nproc,
                    env,
                    mut command,
                } => {
                    let path = command.remove(0);
                    EnterOp::Exec {
                        uid,
                        gid,
                        nproc,
                        env: clear_env.then_some(env),
                        path,
                        argv: command,
                    }
                }
                EnterCommand::Distro {
                    stage,
                    idmap,
                    owner_uid,
                    owner_gid,
                } => EnterOp::Distro {
                    stage,
                    idmap,
                    owner: (owner_uid, owner_gid),
                },
            };
            sandbox::vm_enter(parent_pid, init_pid, op)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| EscapedStderr)
        .with_ansi(false)
        .try_init();
}

/// stderr for the log, each line with its control characters escaped
/// ([`plughost_service::escape_control`]): a plugin's output, a distribution's path or a user's
/// name cannot end a line, forge another or drive the terminal. The formatter writes one whole
/// event per call; only its final newline is kept.
struct EscapedStderr;

impl std::io::Write for EscapedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, "\n"),
            None => (buf, ""),
        };
        let mut line = plughost_service::escape_control(body);
        line.push_str(newline);
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
}

/// Why VMs cannot work here, if they cannot: not root, or the kernel refused the namespaces.
fn missing_privilege(exe: &std::os::fd::OwnedFd) -> Option<String> {
    let uid = rustix::process::geteuid();
    if !uid.is_root() {
        return Some(format!("running as uid {}, not root", uid.as_raw()));
    }
    let output = std::process::Command::new(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(exe)
    ))
    .arg("__probe")
    .env_clear()
    .stdin(std::process::Stdio::null())
    .output();
    match output {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "namespaces refused: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot probe namespaces: {e}")),
    }
}

fn run_daemon(cli: Cli) -> anyhow::Result<()> {
    let (config_path, required) = match cli.config {
        Some(path) => (path, true),
        None => (PathBuf::from(plughost_service::DEFAULT_CONFIG), false),
    };
    let mut config = Config::load(&config_path, required)?;
    choose_host_binary(&mut config, &config_path)?;
    std::fs::create_dir_all(&cli.state_dir)
        .with_context(|| format!("create the state directory {}", cli.state_dir.display()))?;
    let store = Store::open(&cli.state_dir)?;
    let exe = Sandbox::open_exe().context("open plughostd's own executable")?;

    let missing = missing_privilege(&exe);
    let sandbox = match &missing {
        Some(why) => {
            tracing::warn!(
                "{why}: VMs, distributions and container sessions are unavailable (they need Linux namespaces and CAP_SYS_ADMIN); plugins and registrations still work"
            );
            None
        }
        None => {
            let stage = cli.state_dir.join("vm-root");
            std::fs::create_dir_all(&stage)
                .with_context(|| format!("create {}", stage.display()))?;
            let spawner = Spawner::start().context("start the spawner thread")?;
            let dirs_file = cli.state_dir.join("vm-dirs");
            let dirs_file = match write_private(&dirs_file, &sandbox::scan_open_directories()) {
                Ok(()) => Some(dirs_file),
                Err(e) => {
                    tracing::warn!(
                        "cannot write {}: {e}; VMs' roots own only / and what they create",
                        dirs_file.display()
                    );
                    None
                }
            };
            Some(Arc::new(Sandbox {
                exe,
                stage,
                spawner,
                scratch_mib: config.vm_scratch_mib,
                dirs_file,
                scratch_limit_mib: config.limits.scratch_mib,
                scratch_held: std::sync::Mutex::new(std::collections::HashMap::new()),
                vm_processes: config.limits.vm_processes,
            }))
        }
    };

    // A relative name is made absolute against the working directory: the socket's directory is
    // checked and created, and the path is logged and removed at exit.
    let socket = plughost_service::socket_path(cli.socket);
    let socket = std::path::absolute(&socket)
        .with_context(|| format!("bad control socket path {:?}", socket.display()))?;
    let listener = server::bind(&socket)?;
    tracing::info!(
        config = %config_path.display(),
        state_dir = %cli.state_dir.display(),
        distributions = %store.path().display(),
        plugins = config.plugins.len(),
        "starting"
    );
    let pool = ids::Pool::resolve(config.vm_id_base, config.vm_id_ranges);
    let id_ranges = ids::IdRanges::open(&cli.state_dir, pool)?;
    tracing::info!(
        base = pool.base,
        ranges = pool.ranges,
        "VM user namespaces map into host ids {}..{}",
        pool.base,
        u64::from(pool.base) + u64::from(pool.ranges) * u64::from(ids::RANGE)
    );
    let daemon = Daemon::new(config, store, id_ranges, sandbox, missing)?;
    start_idle_reaper(&daemon)?;
    signals::install(daemon.clone(), socket.clone(), config_path.clone())?;
    tracing::info!(socket = %socket.display(), "listening");
    server::serve(daemon, listener, socket);
    Ok(())
}

/// Finds the plugin host binary (`host_binary.rs`), says which one is used, and refuses to start
/// without one when a plugin needs it.
fn choose_host_binary(config: &mut Config, config_path: &std::path::Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find plughostd's own executable")?;
    let found = host_binary::find(
        config.host_binary.as_deref().map(|p| (p, config_path)),
        std::env::var_os("PLUGHOST_HOST"),
        &exe,
        host_binary::PREFIX,
    );
    let needed = config
        .plugins
        .iter()
        .any(|p| p.config.isolation == plughost::Isolation::Process);
    match found {
        Ok(host) => {
            tracing::info!(
                "plugin host binary: {} ({})",
                host.path.display(),
                host.source
            );
            config.host_binary = Some(host.path);
            Ok(())
        }
        Err(e) if needed => Err(e.into()),
        Err(e) => {
            tracing::warn!("{e}; plugins added by a reload will not start");
            Ok(())
        }
    }
}

/// Writes `bytes` to `path`, readable by root only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

fn start_idle_reaper(daemon: &Arc<Daemon>) -> anyhow::Result<()> {
    let daemon = Arc::downgrade(daemon);
    std::thread::Builder::new()
        .name("plughostd-idle".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            match daemon.upgrade() {
                Some(d) => d.reap_idle(),
                None => return,
            }
        })
        .context("start the idle timer thread")?;
    Ok(())
}

#[allow(unsafe_code)]
mod signals {
    //! SIGTERM and SIGINT: a graceful shutdown (hooks delivered); SIGHUP: reload the
    //! configuration. Both through a self-pipe carrying the signal number.

    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;

    use crate::daemon::Daemon;

    static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(signal: libc::c_int) {
        let fd = WAKE_FD.load(Ordering::Relaxed);
        let byte = u8::try_from(signal).unwrap_or(0);
        // SAFETY: write(2) is async-signal-safe; `byte` outlives the call; a failed write only
        // loses a wake-up that an earlier signal already delivered.
        unsafe {
            libc::write(fd, std::ptr::from_ref(&byte).cast(), 1);
        }
    }

    pub fn install(daemon: Arc<Daemon>, socket: PathBuf, config: PathBuf) -> anyhow::Result<()> {
        let (read, write): (OwnedFd, OwnedFd) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        std::mem::forget(write);
        std::thread::Builder::new()
            .name("plughostd-signals".into())
            .spawn(move || {
                let mut file = std::fs::File::from(read);
                let mut byte = [0u8; 1];
                while file.read(&mut byte).unwrap_or(0) == 1 {
                    if i32::from(byte[0]) == libc::SIGHUP {
                        tracing::info!("SIGHUP: reloading {}", config.display());
                        daemon.reload(&config);
                        continue;
                    }
                    tracing::info!("signal received: shutting down");
                    daemon.shutdown();
                    let _ = std::fs::remove_file(&socket);
                    std::process::exit(0);
                }
            })?;
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            // SAFETY: `on_signal` only does async-signal-safe work (one write to a pipe whose fd
            // is never closed).
            unsafe {
                libc::signal(signal, on_signal as *const () as libc::sighandler_t);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_argument_has_a_description() {
        use clap::CommandFactory;
        let missing = plughost_service::docs::undocumented(super::Cli::command());
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
