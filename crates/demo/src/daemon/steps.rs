//! The demo's steps against the running daemon (the module docs of `daemon` list them): a
//! well-behaved plugin, one that vetoes, one that crashes, then the final table and the shutdown.
//! Not here: starting the daemon and its configuration (`mod.rs`), running `plughostctl`
//! (`process.rs`), the distribution's rootfs (`rootfs.rs`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::process::{Who, OTHER_UID};
use super::rootfs;
use super::{auditor, expect_plugins, own_pid_namespace, plugin_process, Demo, Plugin};
use super::{CRASH, PATIENCE, VETO};
use crate::report::{action, header, note};

pub(super) fn well_behaved(demo: &mut Demo) -> Result<()> {
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

pub(super) fn veto(demo: &mut Demo) -> Result<()> {
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

pub(super) fn crash(demo: &mut Demo) -> Result<()> {
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
    demo.ctl
        .show_error_starting(Who::Root, &["vm", "start"], CRASH)?;
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
    let again = demo
        .ctl
        .show_error_starting(Who::Root, &["vm", "start"], CRASH)?;
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

pub(super) fn finish(demo: &mut Demo) -> Result<()> {
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
