//! `plughost-demo`: a narrated tour of what plughost does, which doubles as a smoke test of the whole
//! stack (`cargo build --workspace && cargo run -q -p plughost-demo`).
//!
//! Two demos, with the same three plugins (C files of `plugins/c`, compiled from the header into a
//! temporary directory): a well-behaved one (`ok_mount_exec.c`), one that vetoes (`veto.c`) and one
//! that crashes its host with a SIGSEGV (`crash_in_vm_started.c`).
//!
//! - **As root, the daemon demo** (`daemon`): it starts the real `plughostd` on a temporary config,
//!   state directory and socket, and drives it with the real `plughostctl`, showing each command and
//!   its output: real namespace VMs, mounts, a distribution made from this machine's binaries, two
//!   users' sessions, the veto text, the crash contained and latched while the daemon keeps
//!   serving, and the final `plugins` table.
//! - **Otherwise, the library demo** (`library`): this process plays the service through the
//!   `plughost` library, with the test harness's in-memory service (plughostd needs root for its
//!   namespaces and mounts).
//!
//! `--library` or `--daemon` picks one explicitly. Every step checks what it shows; the first
//! expectation that fails ends the demo with an error and a non-zero exit status. The demos need
//! the binaries of `cargo build --workspace` beside this one (`target/<profile>/`: `plughost-host`,
//! which `$PLUGHOST_HOST` overrides, and for the daemon demo `plughostd` and `plughostctl`) and a C
//! compiler (`cc`, or `$CC`).

mod daemon;
mod library;
mod report;
mod workdir;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};

use report::note;
use workdir::Workdir;

/// The three plugin libraries, compiled once.
pub struct Libraries {
    pub ok_mount_exec: PathBuf,
    pub veto: PathBuf,
    pub crash_in_vm_started: PathBuf,
}

impl Libraries {
    /// Compiles the three C plugins into `workdir`, saying so.
    pub fn compile(workdir: &Workdir) -> Result<Libraries> {
        let compile = |source: &str| -> Result<PathBuf> {
            let path = workdir.compile_c_plugin(source)?;
            note(&format!(
                "compiled plugins/c/{source}.c -> {}",
                path.display()
            ));
            Ok(path)
        };
        Ok(Libraries {
            ok_mount_exec: compile("ok_mount_exec")?,
            veto: compile("veto")?,
            crash_in_vm_started: compile("crash_in_vm_started")?,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Daemon,
    Library,
}

fn main() -> ExitCode {
    let mode = match mode() {
        Ok(mode) => mode,
        Err(error) => {
            eprintln!("plughost-demo: {error:#}");
            return ExitCode::from(2);
        }
    };
    let result = match mode {
        Mode::Daemon => daemon::run(),
        Mode::Library => {
            init_service_log();
            library::run()
        }
    };
    match result {
        Ok(()) => {
            println!();
            println!("Demo finished: every expectation held.");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!();
            eprintln!("plughost-demo: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon demo as root, else the library demo; `--daemon` / `--library` choose.
fn mode() -> Result<Mode> {
    let root = rustix::process::geteuid().is_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] if root => Ok(Mode::Daemon),
        [] => {
            println!(
                "Running the library demo: the daemon demo (plughostd and plughostctl) needs root, \
                 for the namespaces and mounts of its VMs (sudo cargo run -q -p plughost-demo)."
            );
            Ok(Mode::Library)
        }
        ["--library"] => Ok(Mode::Library),
        ["--daemon"] if root => Ok(Mode::Daemon),
        ["--daemon"] => {
            bail!("the daemon demo needs root: plughostd makes namespaces and mounts for its VMs")
        }
        _ => bail!(
            "usage: plughost-demo [--daemon | --library]\n  (default: the daemon demo as root, the \
             library demo otherwise)"
        ),
    }
}

/// A binary of this workspace beside this one (`target/<profile>/`).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let path = plughost_tests::target_dir().join(name);
    ensure!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    Ok(path)
}

/// `$PLUGHOST_HOST`, else `plughost-host` beside this binary (`target/<profile>/`).
fn host_binary() -> Result<PathBuf> {
    match std::env::var_os("PLUGHOST_HOST") {
        Some(path) => {
            let path = PathBuf::from(path);
            ensure!(
                path.exists(),
                "{} ($PLUGHOST_HOST) is missing: build the workspace first (cargo build --workspace)",
                path.display()
            );
            Ok(path)
        }
        None => sibling_binary("plughost-host"),
    }
}

/// Both demos crash a host on purpose. With core dumps enabled that would write a core file (as
/// root maybe into `/`, the host's working directory) and append " (core dumped)" to the error text
/// the demo checks; the hosts (and plughostd) inherit this limit.
fn disable_core_dumps() -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Core);
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: current.maximum,
        },
    )
    .context("cannot set RLIMIT_CORE to 0")?;
    Ok(())
}

/// The library's own log (`tracing`) goes to stderr, warnings and errors only unless `RUST_LOG` says
/// otherwise: that is where a service would see a crash reported.
fn init_service_log() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}
