//! The daemon demo (as root): the real `plughostd`, started on a temporary config, state directory
//! and socket, driven by the real `plughostctl`. Each command is shown as `$ plughostctl ARGS`,
//! followed by its output, indented; `name.log: ` lines are what a plugin wrote to its log
//! (`PH_LOG`), `plughostd.log: ` lines what the daemon logged.
//!
//! 1. A well-behaved plugin ('auditor', `ok_mount_exec.c`): root's VM starts, the plugin's
//!    read-only mount is real in it, a distribution (made from this machine's binaries) is
//!    registered and started, and a second user (uid 65534) gets a session and a VM of its own.
//! 2. A plugin that vetoes ('policy', `veto.c`), added by editing the config and sending SIGHUP:
//!    `vm start` fails with the plugin's message.
//! 3. A plugin that crashes ('buggy', `crash_in_vm_started.c`), swapped in the same way: `vm start`
//!    fails with the crash, fails fast again (latched), and the daemon keeps serving uid 65534.
//!
//! Then the final `plugins` table, and `shutdown`.
//!
//! This file: the daemon's start, its configuration and what the steps share; `steps.rs`: the
//! steps; `process.rs`: running `plughostd` and `plughostctl`; `rootfs.rs`: the distribution.

mod process;
mod rootfs;
mod steps;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use plughost_service::{PluginRow, Reply, VmInfo};

use crate::report::{action, header, note};
use crate::workdir::{set_mode, PluginLog, Workdir};
use crate::Libraries;
use process::{print_indented, Ctl, Daemon, Who, OTHER_UID};

/// How long the demo waits for something the daemon or a plugin does on its own time.
const PATIENCE: Duration = Duration::from_secs(10);

const VETO: &str = "plugin 'policy' returned a fatal error: veto number 1 (status -22 (EINVAL))";
/// How the crash reads, up to the library offset of the crash report (which varies by compiler).
const CRASH: &str =
    "plugin 'buggy' crashed: killed by signal SIGSEGV (address 0x0) in on_vm_started (";

/// One `[[plugin]]` of the config.
struct Plugin {
    name: &'static str,
    library: PathBuf,
}

struct Demo {
    /// Dropped first: a daemon still running (after a failure) is killed before its files go.
    daemon: Daemon,
    ctl: Ctl,
    workdir: Workdir,
    /// `$WORK`, as the demo abbreviates it.
    work: String,
    config: PathBuf,
    logs_dir: PathBuf,
    rootfs: PathBuf,
    libraries: Libraries,
    /// uid 65534's session, once it has one.
    other_session: Option<u32>,
    auditor: PluginLog,
    policy: PluginLog,
    buggy: PluginLog,
}

pub fn run() -> Result<()> {
    let mut demo = setup()?;
    let result = (|| {
        steps::well_behaved(&mut demo)?;
        steps::veto(&mut demo)?;
        steps::crash(&mut demo)?;
        steps::finish(&mut demo)
    })();
    if result.is_err() {
        let log = demo.daemon.log_text();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("plughost-demo: the last lines of plughostd's log:");
        for line in &lines[lines.len().saturating_sub(30)..] {
            eprintln!("  {line}");
        }
    }
    result
}

fn setup() -> Result<Demo> {
    header("Setup");
    crate::disable_core_dumps()?;
    let plughostd = crate::sibling_binary("plughostd")?;
    let plughostctl = crate::sibling_binary("plughostctl")?;
    let host = crate::host_binary()?;
    note(&format!("plughostd:     {}", plughostd.display()));
    note(&format!("plughostctl:   {}", plughostctl.display()));
    note(&format!("plughost-host: {}", host.display()));

    let workdir = Workdir::new()?;
    let work = workdir.path().display().to_string();
    note(&format!(
        "working in:    {work} (removed at the end; written $WORK below)"
    ));
    let libraries = Libraries::compile(&workdir)?;
    let short = |path: &Path| path.display().to_string().replace(&work, "$WORK");
    note(&format!(
        "shared folder: {} holds `file` = OK (the plugins' PH_DIR)",
        short(&workdir.share)
    ));

    // Plugin hosts run as an unprivileged user (plughost, else nobody): their logs' directory must
    // be writable by it, and is the one place their Landlock rules let them write.
    let logs_dir = workdir.path().join("logs");
    std::fs::create_dir(&logs_dir)
        .with_context(|| format!("cannot create {}", logs_dir.display()))?;
    set_mode(&logs_dir, 0o777)?;

    let rootfs = rootfs::make(workdir.path())?;
    note(&format!(
        "distribution:  {}, made from {}",
        short(&rootfs.path),
        rootfs.made_from
    ));

    // uid 65534 runs plughostctl too, and may not reach target/ (a checkout under /root).
    let bin = workdir.path().join("bin");
    std::fs::create_dir(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    set_mode(&bin, 0o755)?;
    let ctl_exe = bin.join("plughostctl");
    std::fs::copy(&plughostctl, &ctl_exe)
        .with_context(|| format!("cannot copy plughostctl to {}", ctl_exe.display()))?;
    set_mode(&ctl_exe, 0o755)?;

    let config = workdir.path().join("plughostd.toml");
    let state_dir = workdir.path().join("state");
    let socket = workdir.path().join("plughostd.sock");
    let text = config_text(&[&auditor(&libraries)], &logs_dir, &workdir.share);
    std::fs::write(&config, &text).with_context(|| format!("cannot write {}", config.display()))?;

    action("plughostd's config: one plugin, 'auditor' (ok_mount_exec.c)");
    println!("$ cat $WORK/plughostd.toml");
    print_indented(&text.replace(&work, "$WORK"));
    println!(
        "$ PLUGHOST_HOST={} RUST_LOG=info plughostd --config $WORK/plughostd.toml --state-dir $WORK/state \
         --socket $WORK/plughostd.sock 2>$WORK/plughostd.log &",
        host.display()
    );
    let log = workdir.path().join("plughostd.log");
    let mut daemon = Daemon::start(&plughostd, &host, &config, &state_dir, &socket, log)?;
    note(&format!(
        "plughostd runs as pid {} and answers on its socket",
        daemon.pid()
    ));
    for line in daemon.new_log_lines() {
        if line.contains("starting") || line.contains("listening") {
            note(&format!("plughostd.log: {}", line.replace(&work, "$WORK")));
        }
    }
    note(&format!(
        "every plughostctl below runs with PLUGHOST_SOCKET=$WORK/plughostd.sock (a copy in \
         $WORK/bin, so that uid {OTHER_UID} can run it too)"
    ));

    let ctl = Ctl {
        exe: ctl_exe,
        socket,
        work: work.clone(),
    };
    Ok(Demo {
        daemon,
        ctl,
        auditor: PluginLog::new(logs_dir.join("auditor.log")),
        policy: PluginLog::new(logs_dir.join("policy.log")),
        buggy: PluginLog::new(logs_dir.join("buggy.log")),
        workdir,
        work,
        config,
        logs_dir,
        rootfs: rootfs.path,
        libraries,
        other_session: None,
    })
}

/// The config for `plugins`, in this order.
fn config_text(plugins: &[&Plugin], logs_dir: &Path, share: &Path) -> String {
    let mut text = String::from("idle_timeout_secs = 0   # keep idle VMs (the demo stops them)\n");
    for plugin in plugins {
        text += &plugin_block(plugin, logs_dir, share);
    }
    text
}

fn plugin_block(plugin: &Plugin, logs_dir: &Path, share: &Path) -> String {
    let log = logs_dir.join(format!("{}.log", plugin.name));
    format!(
        "\n[[plugin]]\nname = {:?}\npath = {:?}\nenv = {{ PH_LOG = {:?}, PH_DIR = {:?} }}\n\
         write_paths = [{:?}]   # Landlock: where the plugin may write\n",
        plugin.name,
        plugin.library.display().to_string(),
        log.display().to_string(),
        share.display().to_string(),
        logs_dir.display().to_string(),
    )
}

impl Demo {
    fn short(&self, text: &str) -> String {
        text.replace(&self.work, "$WORK")
    }

    /// Shows what each plugin logged since the last call.
    fn show_plugin_logs(&mut self) {
        for (name, log) in [
            ("auditor", &mut self.auditor),
            ("policy", &mut self.policy),
            ("buggy", &mut self.buggy),
        ] {
            for line in log.new_lines() {
                note(&format!("{name}.log: {line}"));
            }
        }
    }

    /// Shows the daemon's new log lines that contain one of `words`.
    fn show_daemon_log(&mut self, words: &[&str]) {
        let lines: Vec<String> = self
            .daemon
            .new_log_lines()
            .into_iter()
            .filter(|line| words.iter().any(|word| line.contains(word)))
            .collect();
        for line in &lines {
            note(&format!("plughostd.log: {}", self.short(line)));
        }
    }

    fn plugins(&self) -> Result<Vec<PluginRow>> {
        match self.ctl.query(Who::Root, &["plugins"])? {
            Reply::Plugins { plugins } => Ok(plugins),
            other => bail!("`plughostctl plugins` answered {other:?}"),
        }
    }

    fn vm_status(&self, who: Who) -> Result<VmInfo> {
        match self.ctl.query(who, &["vm", "status"])? {
            Reply::Vm(vm) => Ok(vm),
            other => bail!("`plughostctl vm status` answered {other:?}"),
        }
    }

    /// Rewrites the config with `plugins`, shows the change, sends SIGHUP, and waits until the
    /// daemon runs exactly those plugins.
    fn reconfigure(&mut self, plugins: &[&Plugin], shown: &Plugin) -> Result<()> {
        let text = config_text(plugins, &self.logs_dir, &self.workdir.share);
        std::fs::write(&self.config, &text)
            .with_context(|| format!("cannot write {}", self.config.display()))?;
        note("its block in $WORK/plughostd.toml:");
        print_indented(
            &self.short(plugin_block(shown, &self.logs_dir, &self.workdir.share).trim()),
        );
        println!("$ kill -HUP {}", self.daemon.pid());
        self.daemon.reload()?;
        let wanted: Vec<&str> = plugins.iter().map(|p| p.name).collect();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let running = self.plugins()?;
            let names: Vec<&str> = running.iter().map(|p| p.name.as_str()).collect();
            if names == wanted && running.iter().all(|p| p.state == "ready") {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "after SIGHUP plughostd runs {names:?}, not {wanted:?} (all ready), within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.show_daemon_log(&["reload"]);
        Ok(())
    }
}

/// One expected row of `plugins`: name, state, and what the last error starts with.
type Row<'a> = (&'a str, &'a str, Option<&'a str>);

/// The daemon's answer to `plugins`, checked: `(name, state)` in order, and what each last error
/// starts with.
fn expect_plugins(rows: &[PluginRow], expected: &[Row<'_>]) -> Result<()> {
    let actual: Vec<Row<'_>> = rows
        .iter()
        .map(|p| (p.name.as_str(), p.state.as_str(), p.last_error.as_deref()))
        .collect();
    let matches = |(a, e): (&Row<'_>, &Row<'_>)| {
        a.0 == e.0
            && a.1 == e.1
            && match (a.2, e.2) {
                (Some(a), Some(e)) => a.starts_with(e),
                (a, e) => a == e,
            }
    };
    ensure!(
        actual.len() == expected.len() && actual.iter().zip(expected).all(matches),
        "`plughostctl plugins`: expected (name, state, last error) {expected:?}, got {actual:?}"
    );
    for row in rows {
        ensure!(
            (row.state == "ready") == row.host_pid.is_some(),
            "plugin '{}' is {} with host pid {:?}",
            row.name,
            row.state,
            row.host_pid
        );
    }
    Ok(())
}

/// A field of `/proc/PID/status` (its first number).
fn proc_status(pid: u32, field: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process that runs the plugin of the host `host_pid`: the host starts as root, makes a pid
/// namespace, and the process that loads the plugin switches to an unprivileged user. Returns
/// the first process below `host_pid` not running as root, with its uid.
fn plugin_process(host_pid: u32) -> Option<(u32, u32)> {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut parents = vec![host_pid];
    while let Some(parent) = parents.pop() {
        for &pid in &pids {
            if proc_status(pid, "PPid") == Some(parent) {
                match proc_status(pid, "Uid") {
                    Some(0) => parents.push(pid),
                    Some(uid) => return Some((pid, uid)),
                    None => {}
                }
            }
        }
    }
    None
}

/// Whether process `pid` is in another pid namespace than this one.
fn own_pid_namespace(pid: u32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid"));
    let ours = std::fs::read_link("/proc/self/ns/pid");
    matches!((theirs, ours), (Ok(theirs), Ok(ours)) if theirs != ours)
}

fn auditor(libraries: &Libraries) -> Plugin {
    Plugin {
        name: "auditor",
        library: libraries.ok_mount_exec.clone(),
    }
}
