//! `plughost-demo`: a narrated tour of what plughost does, which doubles as a smoke test of the whole
//! stack (`cargo build --workspace && cargo run -q -p plughost-demo`).
//!
//! The demo plays a service: the test harness's `TestService` (`tests/src/lib.rs`), whose "VM" is an
//! in-memory table of mounts and whose `execute_binary` runs the program on this machine. Its plugins
//! are C files of `plugins/c`, compiled from the header into a temporary directory, each run by the
//! library in its own real `plughost-host` process:
//! 1. a well-behaved plugin mounts a folder, runs `cat` through the returned socket, and calls back
//!    from a thread of its own after its hook returned;
//! 2. a plugin vetoes the VM start, with a message the user sees;
//! 3. a plugin crashes its host with a SIGSEGV: the operation fails naming it, the service goes on.
//!
//! Every step checks what it shows; the first expectation that fails ends the demo with an error and
//! a non-zero exit status. It needs `target/<profile>/plughost-host` (built by `cargo build
//! --workspace`; `$PLUGHOST_HOST` overrides it) and a C compiler (`cc`, or `$CC`).
//!
//! It is not a service: no real VM, no daemon. That is the reference daemon's job (planned).
#![deny(unsafe_code)]

mod report;
mod steps;
mod workdir;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};

use report::{header, note};
use workdir::Workdir;

/// The three plugin libraries, compiled once.
pub struct Libraries {
    pub ok_mount_exec: PathBuf,
    pub veto: PathBuf,
    pub crash_in_vm_started: PathBuf,
}

/// What every step needs.
pub struct Demo {
    pub workdir: Workdir,
    pub libraries: Libraries,
    pub host_binary: PathBuf,
}

fn main() -> ExitCode {
    init_service_log();
    match run() {
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

fn run() -> Result<()> {
    let demo = setup()?;
    let snapshots = [
        steps::well_behaved(&demo)?,
        steps::veto(&demo)?,
        steps::crash(&demo)?,
    ];

    header("Final: PluginManager::plugins() at the end of each step");
    print!("{}", report::plugin_table(&snapshots));
    note("(each step had its own PluginManager; dropping it shut its hosts down)");
    Ok(())
}

fn setup() -> Result<Demo> {
    header("Setup");
    disable_core_dumps()?;
    let host_binary = host_binary()?;
    note(&format!("host binary:  {}", host_binary.display()));
    let workdir = Workdir::new()?;
    note(&format!(
        "working in:   {} (removed at the end)",
        workdir.path().display()
    ));
    note(&format!(
        "shared folder {} holds `file` = OK",
        workdir.share.display()
    ));
    note(&format!(
        "running as uid {}: {}",
        rustix::process::getuid().as_raw(),
        if rustix::process::getuid().is_root() {
            "each host gets its own pid namespace and switches to an unprivileged user"
        } else {
            "no pid namespace without root; each host says so once and relies on its process group"
        }
    ));
    let compile = |source: &str| -> Result<PathBuf> {
        let path = workdir.compile_c_plugin(source)?;
        note(&format!(
            "compiled plugins/c/{source}.c -> {}",
            path.display()
        ));
        Ok(path)
    };
    let libraries = Libraries {
        ok_mount_exec: compile("ok_mount_exec")?,
        veto: compile("veto")?,
        crash_in_vm_started: compile("crash_in_vm_started")?,
    };
    note("below, `-> ` is what the service does, `[name] ` what a plugin prints (its stdout and");
    note(
        "stderr, logged line by line by the library), `name.log: ` what a plugin wrote to its log",
    );
    Ok(Demo {
        workdir,
        libraries,
        host_binary,
    })
}

/// `$PLUGHOST_HOST`, else `plughost-host` beside this binary (`target/<profile>/`).
fn host_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("PLUGHOST_HOST") {
        Some(path) => PathBuf::from(path),
        None => plughost_tests::target_dir().join("plughost-host"),
    };
    ensure!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    Ok(path)
}

/// Step 3 crashes a host on purpose. With core dumps enabled that would write a core file (as root
/// maybe into `/`, the host's working directory) and append " (core dumped)" to the error text the
/// demo checks; the hosts inherit this limit.
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
