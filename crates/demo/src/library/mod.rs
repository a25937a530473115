//! The library demo: this process plays a service, the test harness's `TestService`
//! (`tests/src/lib.rs`), whose "VM" is an in-memory table of mounts and whose `execute_binary` runs
//! the program on this machine. Its plugins are the three C files, each run by the library in its
//! own real `plughost-host` process:
//! 1. a well-behaved plugin mounts a folder, runs `cat` through the returned socket, and calls back
//!    from a thread of its own after its hook returned;
//! 2. a plugin vetoes the VM start, with a message the user sees;
//! 3. a plugin crashes its host with a SIGSEGV: the operation fails naming it, the service goes on.
//!
//! No real VM, no daemon: that is what the daemon demo (`crate::daemon`) shows, as root.

mod steps;

use std::path::PathBuf;

use anyhow::Result;

use crate::report::{self, header, note};
use crate::workdir::Workdir;
use crate::Libraries;

/// What every step needs.
pub struct Demo {
    pub workdir: Workdir,
    pub libraries: Libraries,
    pub host_binary: PathBuf,
}

pub fn run() -> Result<()> {
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
    crate::disable_core_dumps()?;
    let host_binary = crate::host_binary()?;
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
    let libraries = Libraries::compile(&workdir)?;
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
