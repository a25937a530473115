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

mod process;
mod rootfs;

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
const CRASH: &str = "plugin 'buggy' crashed: killed by signal SIGSEGV";

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
        well_behaved(&mut demo)?;
        veto(&mut demo)?;
        crash(&mut demo)?;
        finish(&mut demo)
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

/// The daemon's answer to `plugins`, checked: `(name, state)` in order, and what each last error is.
fn expect_plugins(rows: &[PluginRow], expected: &[(&str, &str, Option<&str>)]) -> Result<()> {
    let actual: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|p| (p.name.as_str(), p.state.as_str(), p.last_error.as_deref()))
        .collect();
    ensure!(
        actual == expected,
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

fn well_behaved(demo: &mut Demo) -> Result<()> {
    header("1. A well-behaved plugin: 'auditor' (plugins/c/ok_mount_exec.c)");
    demo.ctl.show_ok(Who::Root, &["plugins"])?;
    let rows = demo.plugins()?;
    expect_plugins(&rows, &[("auditor", "ready", None)])?;
    let host_pid = rows[0].host_pid.context("'auditor' has no host pid")?;
    let (plugin_pid, plugin_uid) = plugin_process(host_pid).context(
        "no process of the host of 'auditor' runs as an unprivileged user (a root service's \
         hosts switch to one before loading the plugin)",
    )?;
    note(&format!(
        "'auditor' runs in its own plughost-host, pid {host_pid}: the plugin is loaded in pid \
         {plugin_pid}, as uid {plugin_uid}{}",
        if own_pid_namespace(plugin_pid) {
            ", in a pid namespace of its own"
        } else {
            ""
        }
    ));
    demo.show_plugin_logs();

    action(
        "root starts its VM: on_vm_started; 'auditor' mounts $WORK/share read-only at /mnt/ph in \
         it, and runs cat /mnt/ph/file there",
    );
    demo.ctl.show_ok(Who::Root, &["vm", "start"])?;
    let root_vm = demo.vm_status(Who::Root)?;
    ensure!(root_vm.running, "root's VM is not running after `vm start`");
    demo.show_plugin_logs();
    for expected in ["mount status=0", "exec status=0", "read content=OK"] {
        ensure!(
            demo.auditor.has(expected),
            "no `{expected}` in auditor.log: {:?}",
            demo.auditor.lines()
        );
    }

    action("the mount is real, and read-only, in the VM (its own mount, pid and uts namespaces)");
    let cat = demo
        .ctl
        .show_ok(Who::Root, &["exec", "--", "cat", "/mnt/ph/file"])?;
    ensure!(cat.output == "OK", "cat printed {:?}, not OK", cat.output);
    let touch = demo.ctl.show(
        Who::Root,
        &["exec", "--", "sh", "-c", "hostname; touch /mnt/ph/new"],
    )?;
    ensure!(
        touch.code != 0 && touch.output.contains("Read-only file system"),
        "a write through the read-only mount did not fail as read-only: {:?}",
        touch.output
    );
    ensure!(
        touch.output.starts_with("plughost-vm\n"),
        "the VM's hostname is not plughost-vm: {:?}",
        touch.output
    );
    ensure!(
        !demo.workdir.share.join("new").exists(),
        "a write through the read-only mount reached the host"
    );

    action(
        "root in the VM is not root on the host: a user namespace maps it to an unprivileged id \
         range; the VM's root file system is private and writable, and nothing reaches the host",
    );
    let marker = format!("/var/tmp/plughost-demo-{}", std::process::id());
    let who = demo.ctl.show_ok(
        Who::Root,
        &[
            "exec",
            "--",
            "sh",
            "-c",
            &format!(
                "id -u; cat /proc/self/uid_map; touch {marker} && echo wrote {marker}; \
                 cat /etc/shadow 2>&1 | head -1"
            ),
        ],
    )?;
    let host_root = who
        .output
        .lines()
        .nth(1)
        .and_then(|map| map.split_whitespace().nth(1));
    ensure!(
        who.output.starts_with("0\n") && host_root.is_some_and(|id| id != "0"),
        "root in the VM maps to host root: {:?}",
        who.output
    );
    ensure!(
        who.output.contains("Permission denied"),
        "the VM's root read /etc/shadow: {:?}",
        who.output
    );
    ensure!(
        !std::path::Path::new(&marker).exists(),
        "a write in the VM reached the host's {marker}"
    );

    let rootfs = demo.rootfs.display().to_string();
    action(
        "a distribution: register the rootfs, start it in root's VM (on_distribution_started); \
         200 ms later a thread of 'auditor' runs cat /mnt/ph/file inside it, outside any hook",
    );
    demo.ctl.show_ok(
        Who::Root,
        &["distro", "register", "demo", "--rootfs", &rootfs],
    )?;
    demo.show_plugin_logs();
    ensure!(
        demo.auditor.has("distribution_registered name=demo "),
        "'auditor' got no on_distribution_registered"
    );
    demo.ctl.show_ok(Who::Root, &["distro", "start", "demo"])?;
    let late = demo.auditor.wait_for("late_exec ", PATIENCE)?;
    demo.show_plugin_logs();
    ensure!(
        demo.auditor
            .lines()
            .iter()
            .any(|l| l.starts_with("distribution_started ")
                && l.contains(" name=demo ")
                && l.ends_with(" flavor=phdemo version=1.0")),
        "no `distribution_started name=demo ... flavor=phdemo version=1.0` in auditor.log: {:?}",
        demo.auditor.lines()
    );
    ensure!(
        late == "late_exec status=0 content=OK",
        "the plugin's late call: {late:?}"
    );
    let list = demo.ctl.show_ok(Who::Root, &["distro", "list"])?;
    ensure!(
        list.output
            .lines()
            .any(|l| l.starts_with("demo ") && l.contains(" running ")),
        "`distro list` does not show demo running: {:?}",
        list.output
    );
    let inside = demo.ctl.show_ok(
        Who::Root,
        &[
            "exec",
            "--distro",
            "demo",
            "--",
            "sh",
            "-c",
            "cat /etc/os-release; echo /bin/*",
        ],
    )?;
    let programs = inside.output.strip_prefix(rootfs::OS_RELEASE);
    ensure!(
        programs.is_some_and(|rest| rest.split_whitespace().any(|p| p == "/bin/cat")),
        "expected the distribution's /etc/os-release, then its /bin, got {:?}",
        inside.output
    );
    note("that is the distribution's root: its os-release, its few programs");

    action(&format!(
        "a second user, uid {OTHER_UID}: the daemon picks the session by the caller's uid, so it \
         gets its own, with its own VM, where 'auditor' mounts too"
    ));
    demo.ctl.show_ok(Who::Other, &["vm", "start"])?;
    let other_vm = demo.vm_status(Who::Other)?;
    ensure!(
        other_vm.session_id != root_vm.session_id && other_vm.init_pid != root_vm.init_pid,
        "uid {OTHER_UID} shares root's session or VM"
    );
    demo.other_session = Some(other_vm.session_id);
    demo.show_plugin_logs();
    ensure!(
        demo.auditor.has(&format!(
            "vm_started session={} uid={OTHER_UID} ",
            other_vm.session_id
        )),
        "'auditor' got no on_vm_started for uid {OTHER_UID}: {:?}",
        demo.auditor.lines()
    );
    let who = demo.ctl.show_ok(
        Who::Other,
        &["exec", "--", "sh", "-c", "id -u; cat /mnt/ph/file"],
    )?;
    ensure!(
        who.output == format!("{OTHER_UID}\nOK"),
        "uid {OTHER_UID}'s program printed {:?}",
        who.output
    );
    note("programs run as their caller's uid");

    action("root stops its distribution and its VM: on_distribution_stopping, on_vm_stopping");
    demo.ctl.show_ok(Who::Root, &["distro", "stop", "demo"])?;
    demo.ctl.show_ok(Who::Root, &["vm", "stop"])?;
    demo.show_plugin_logs();
    ensure!(
        demo.auditor.has("distribution_stopping name=demo"),
        "'auditor' got no on_distribution_stopping"
    );
    ensure!(
        demo.auditor
            .has(&format!("vm_stopping session={}", root_vm.session_id)),
        "'auditor' got no on_vm_stopping for root's VM"
    );
    Ok(())
}

fn auditor(libraries: &Libraries) -> Plugin {
    Plugin {
        name: "auditor",
        library: libraries.ok_mount_exec.clone(),
    }
}

fn veto(demo: &mut Demo) -> Result<()> {
    header("2. A plugin that vetoes: 'policy' (plugins/c/veto.c)");
    let auditor = auditor(&demo.libraries);
    let policy = Plugin {
        name: "policy",
        library: demo.libraries.veto.clone(),
    };
    action("add 'policy' after 'auditor' in plughostd.toml, and make plughostd reload it");
    demo.reconfigure(&[&auditor, &policy], &policy)?;
    demo.show_plugin_logs();
    demo.ctl.show_ok(Who::Root, &["plugins"])?;
    expect_plugins(
        &demo.plugins()?,
        &[("auditor", "ready", None), ("policy", "ready", None)],
    )?;
    note("'auditor' kept its host: an unchanged plugin is not restarted by a reload");

    action("root starts its VM: 'auditor' mounts as before, then 'policy' vetoes with a message");
    let stopping_before = demo.auditor.count("vm_stopping ");
    demo.ctl.show_error(Who::Root, &["vm", "start"], VETO)?;
    demo.show_plugin_logs();
    ensure!(
        demo.policy.has("veto n=1 error_status=0"),
        "'policy' did not veto: {:?}",
        demo.policy.lines()
    );
    ensure!(
        demo.auditor.count("vm_stopping ") == stopping_before + 1 && demo.policy.has("vm_stopping"),
        "after the veto, not every plugin got on_vm_stopping"
    );
    note("after the veto every plugin got on_vm_stopping, to undo its work; no VM runs:");
    let status = demo.ctl.show_ok(Who::Root, &["vm", "status"])?;
    ensure!(
        !demo.vm_status(Who::Root)?.running,
        "root's VM runs after a vetoed start: {}",
        status.output
    );
    Ok(())
}

fn crash(demo: &mut Demo) -> Result<()> {
    header("3. A plugin that crashes: 'buggy' (plugins/c/crash_in_vm_started.c)");
    let auditor = auditor(&demo.libraries);
    let buggy = Plugin {
        name: "buggy",
        library: demo.libraries.crash_in_vm_started.clone(),
    };
    action("replace 'policy' with 'buggy' in plughostd.toml, and make plughostd reload it");
    demo.reconfigure(&[&auditor, &buggy], &buggy)?;
    demo.show_plugin_logs();

    action("root starts its VM: 'auditor' mounts, then 'buggy' writes through a NULL pointer");
    let started_before = demo.auditor.count("vm_started ");
    demo.ctl.show_error(Who::Root, &["vm", "start"], CRASH)?;
    demo.show_plugin_logs();
    // The service's own account of the crash, in its log (written as the error is returned).
    let deadline = Instant::now() + PATIENCE;
    while !demo.daemon.log_text().contains(CRASH) {
        ensure!(
            Instant::now() < deadline,
            "plughostd did not log {CRASH:?} within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    demo.show_daemon_log(&[CRASH]);
    ensure!(
        demo.buggy.has("about_to_crash") && !demo.buggy.has("did_not_crash"),
        "'buggy' did not crash as planned: {:?}",
        demo.buggy.lines()
    );
    note("the crash cost this VM start; 'auditor' still got on_vm_stopping");

    action(
        "again: the crash is latched (restart = \"never\", the default), so the start fails fast, \
         and no plugin is asked",
    );
    let again = demo.ctl.show_error(Who::Root, &["vm", "start"], CRASH)?;
    demo.show_plugin_logs();
    ensure!(
        demo.buggy.count("about_to_crash") == 1
            && demo.auditor.count("vm_started ") == started_before + 1,
        "a latched start reached the plugins"
    );
    note(&format!(
        "({} ms for the whole plughostctl run; nothing new in the plugins' logs)",
        again.elapsed.as_millis()
    ));

    action(&format!(
        "the daemon is still serving: uid {OTHER_UID}'s VM still runs, with the mount 'auditor' \
         made in it"
    ));
    demo.ctl.show_ok(Who::Other, &["vm", "status"])?;
    ensure!(
        demo.vm_status(Who::Other)?.running,
        "uid {OTHER_UID}'s VM stopped"
    );
    let cat = demo
        .ctl
        .show_ok(Who::Other, &["exec", "--", "cat", "/mnt/ph/file"])?;
    ensure!(cat.output == "OK", "cat printed {:?}, not OK", cat.output);
    demo.ctl.show_ok(Who::Other, &["distro", "list"])?;
    note(&format!(
        "uid {OTHER_UID} has no distribution (each user registers their own); root's is still \
         registered:"
    ));
    let list = demo.ctl.show_ok(Who::Root, &["distro", "list"])?;
    ensure!(
        list.output.lines().any(|l| l.starts_with("demo ")),
        "root's distribution is gone: {:?}",
        list.output
    );
    ensure!(demo.daemon.is_running(), "plughostd is gone");
    Ok(())
}

fn finish(demo: &mut Demo) -> Result<()> {
    header("Final: the plugins table, and shutdown");
    demo.ctl.show_ok(Who::Root, &["plugins"])?;
    expect_plugins(
        &demo.plugins()?,
        &[
            ("auditor", "ready", None),
            ("buggy", "crashed", Some(CRASH)),
        ],
    )?;
    action(&format!(
        "shutdown stops uid {OTHER_UID}'s VM (on_vm_stopping), then the plugins"
    ));
    demo.ctl.show_ok(Who::Root, &["shutdown"])?;
    let status = demo.daemon.wait(PATIENCE)?;
    demo.show_plugin_logs();
    let other_session = demo
        .other_session
        .context("uid {OTHER_UID} has no session")?;
    ensure!(
        demo.auditor
            .has(&format!("vm_stopping session={other_session}")),
        "'auditor' got no on_vm_stopping for uid {OTHER_UID}'s VM at shutdown"
    );
    ensure!(status.success(), "plughostd ended with {status}");
    note("plughostd exited with status 0");
    Ok(())
}
