//! The three steps of the demo. Each builds its own `PluginManager` over a fresh `TestService`, checks
//! what it shows, and drops the manager (which shuts its hosts down) before returning.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use plughost::{
    ManagerConfig, OfflineDistribution, PluginConfig, PluginManager, ServiceCallbacks, Session,
    SessionId,
};
use plughost_tests::TestService;

use crate::library::Demo;
use crate::report::{action, header, log_lines, note, PrefixedOutput, Snapshot};

/// How long the demo waits for something a plugin does on its own time.
const PATIENCE: Duration = Duration::from_secs(10);

/// User alice's session.
fn alice() -> Session {
    Session {
        id: SessionId(1),
        uid: 1000,
        gid: 1000,
        user_name: "alice".into(),
    }
}

fn start_manager(
    demo: &Demo,
    service: &Arc<TestService>,
    plugins: Vec<PluginConfig>,
) -> Result<PluginManager> {
    let order: Vec<String> = plugins.iter().map(|p| format!("'{}'", p.name)).collect();
    let mut config = ManagerConfig::new(plugins);
    config.host_binary = Some(demo.host_binary.clone());
    config.output = Arc::new(PrefixedOutput);
    action(&format!(
        "PluginManager::new with plugins {} (in this order)",
        order.join(", ")
    ));
    let default: Arc<dyn ServiceCallbacks + Send + Sync> = service.clone();
    let manager = PluginManager::new(config, default).context("cannot start the plugin manager")?;
    if let Some(error) = manager.load_errors().into_iter().next() {
        bail!("a plugin failed to load: {error}");
    }
    for info in manager.plugins() {
        let pid = info
            .host_pid
            .context("a freshly loaded plugin has no host process")?;
        note(&format!(
            "'{}' runs in its own plughost-host process, pid {pid}",
            info.name
        ));
    }
    Ok(manager)
}

fn expect_text(what: &str, actual: &str, expected: &str) -> Result<()> {
    ensure!(
        actual == expected,
        "{what}: expected {expected:?}, got {actual:?}"
    );
    Ok(())
}

/// Step 1: a plugin doing its job, hooks and calls both ways.
pub fn well_behaved(demo: &Demo) -> Result<Snapshot> {
    header("Step 1: a well-behaved plugin (plugins/c/ok_mount_exec.c as 'auditor')");
    let logs = demo.workdir.step_logs(1)?;
    let service = TestService::new();
    let manager = start_manager(
        demo,
        &service,
        vec![logs.plugin("auditor", &demo.libraries.ok_mount_exec)?],
    )?;
    let mut log = logs.log("auditor");

    let alice = alice();
    action("start the VM of user alice (session 1): on_vm_started");
    service
        .start_vm(&manager, &alice)
        .map_err(anyhow::Error::msg)
        .context("VM start")?;
    note("the VM started; the plugin's log:");
    log_lines("auditor", &log.new_lines());
    ensure!(
        log.has("mount status=0"),
        "the plugin's mount_folder failed: {:?}",
        log.lines()
    );
    ensure!(
        log.has("exec status=0"),
        "the plugin's execute_binary failed: {:?}",
        log.lines()
    );
    ensure!(
        log.has("read content=OK"),
        "the plugin did not read OK: {:?}",
        log.lines()
    );
    let mount = service
        .lock()
        .vms
        .get(&alice.id)
        .and_then(|vm| vm.mounts.get("/mnt/ph").cloned())
        .context("the service recorded no mount at /mnt/ph")?;
    note(&format!(
        "the service recorded the mount: /mnt/ph -> {} ({})",
        mount.0.display(),
        if mount.1 { "read-only" } else { "read-write" }
    ));
    ensure!(
        mount == (demo.workdir.share.clone(), true),
        "unexpected mount {mount:?}"
    );
    let in_scope = service.calls_in_scope.load(Ordering::Relaxed);
    note(&format!(
        "mount_folder and execute_binary arrived during the hook: the dispatching thread served \
         them ({in_scope} calls) with the scope callbacks, against the state it had locked; `cat` \
         printed OK on the socket execute_binary returned"
    ));
    ensure!(
        in_scope == 2,
        "expected 2 calls served in the hook's scope, got {in_scope}"
    );

    let distribution = plughost_tests::distribution(7);
    action(&format!(
        "start distribution '{}' in alice's VM: on_distribution_started",
        distribution.name
    ));
    let started = Instant::now();
    service
        .start_distribution(&manager, &alice, &distribution)
        .map_err(anyhow::Error::msg)
        .context("distribution start")?;
    log_lines("auditor", &log.new_lines());
    note("the hook returned; a plugin thread calls back 200 ms later, outside any hook...");
    let late = log.wait_for("late_exec ", PATIENCE)?;
    log_lines("auditor", &log.new_lines());
    note(&format!(
        "...{} ms after the start: execute_binary_in_distribution, served by a manager pool thread \
         with the default callbacks ({} such call)",
        started.elapsed().as_millis(),
        service.calls_on_default.load(Ordering::Relaxed)
    ));
    expect_text("the late call", &late, "late_exec status=0 content=OK")?;

    action("stop the distribution, then the VM");
    service.stop_distribution(&manager, &alice, &distribution);
    service.stop_vm(&manager, &alice);
    log_lines("auditor", &log.new_lines());
    ensure!(
        log.has("distribution_stopping name=distro7"),
        "no distribution_stopping"
    );
    ensure!(log.has("vm_stopping session=1"), "no vm_stopping");

    Ok(Snapshot {
        step: "1",
        plugins: manager.plugins(),
    })
}

/// Step 2: a veto fails the VM start with the plugin's message, and every plugin still gets
/// `on_vm_stopping`.
pub fn veto(demo: &Demo) -> Result<Snapshot> {
    header("Step 2: a plugin that vetoes (plugins/c/veto.c as 'policy', after 'auditor')");
    let logs = demo.workdir.step_logs(2)?;
    let service = TestService::new();
    let manager = start_manager(
        demo,
        &service,
        vec![
            logs.plugin("auditor", &demo.libraries.ok_mount_exec)?,
            logs.plugin("policy", &demo.libraries.veto)?,
        ],
    )?;
    let (mut auditor, mut policy) = (logs.log("auditor"), logs.log("policy"));

    let alice = alice();
    action("start the VM of user alice (session 1): on_vm_started");
    let Err(error) = service.start_vm(&manager, &alice) else {
        bail!("the VM started although 'policy' vetoes every start");
    };
    note("the VM start failed; the user sees:");
    note(&format!("  {error}"));
    expect_text(
        "the veto",
        &error,
        "plugin 'policy' returned a fatal error: veto number 1 (status -22 (EINVAL))",
    )?;
    log_lines("auditor", &auditor.new_lines());
    log_lines("policy", &policy.new_lines());
    note("'auditor' had done its work; after the veto every plugin got on_vm_stopping, to undo it");
    ensure!(
        auditor.has("vm_stopping session=1"),
        "'auditor' got no on_vm_stopping"
    );
    ensure!(policy.has("vm_stopping"), "'policy' got no on_vm_stopping");
    let vm_running = service
        .lock()
        .vms
        .get(&alice.id)
        .is_some_and(|vm| vm.running);
    ensure!(
        !vm_running,
        "the service still runs the VM of a vetoed start"
    );
    note("and the service does not run alice's VM");

    Ok(Snapshot {
        step: "2",
        plugins: manager.plugins(),
    })
}

/// Step 3: a crash costs the operation, names the plugin, latches it, and leaves the service and the
/// other plugins running.
pub fn crash(demo: &Demo) -> Result<Snapshot> {
    header(
        "Step 3: a plugin that crashes (plugins/c/crash_in_vm_started.c as 'buggy', after 'auditor')",
    );
    let logs = demo.workdir.step_logs(3)?;
    let service = TestService::new();
    let manager = start_manager(
        demo,
        &service,
        vec![
            logs.plugin("auditor", &demo.libraries.ok_mount_exec)?,
            logs.plugin("buggy", &demo.libraries.crash_in_vm_started)?,
        ],
    )?;
    let (mut auditor, mut buggy) = (logs.log("auditor"), logs.log("buggy"));
    let prefix =
        "plugin 'buggy' crashed: killed by signal SIGSEGV (address 0x0) in on_vm_started (";

    let alice = alice();
    action("start the VM of user alice (session 1): on_vm_started; 'buggy' writes through NULL");
    let Err(error) = service.start_vm(&manager, &alice) else {
        bail!("the VM started although 'buggy' crashes in on_vm_started");
    };
    note("the VM start failed; the user sees:");
    note(&format!("  {error}"));
    ensure!(
        error.starts_with(prefix),
        "the crash: expected an error starting {prefix:?}, got {error:?}"
    );
    // The rest names the library offset of the crash, which varies by compiler.
    let expected = error.as_str();
    log_lines("auditor", &auditor.new_lines());
    log_lines("buggy", &buggy.new_lines());
    ensure!(
        buggy.has("about_to_crash"),
        "'buggy' did not reach its crash"
    );
    ensure!(
        auditor.has("vm_stopping session=1"),
        "'auditor' got no on_vm_stopping"
    );
    note(
        "'auditor' still got on_vm_stopping; 'buggy' is latched as crashed and gets no more hooks",
    );
    note("(its restart policy is the default, RestartPolicy::Never)");

    action("start the VM again");
    let started = Instant::now();
    let Err(again) = service.start_vm(&manager, &alice) else {
        bail!("the VM started although 'buggy' is latched as crashed");
    };
    let elapsed = started.elapsed();
    note(&format!(
        "failed fast ({} µs) with the same latched error:",
        elapsed.as_micros()
    ));
    note(&format!("  {again}"));
    expect_text("the latched error", &again, expected)?;
    ensure!(
        buggy.count("about_to_crash") == 1,
        "the latched plugin was called again"
    );
    ensure!(
        auditor.count("vm_started") == 1,
        "a latched start still reached 'auditor'"
    );
    note("no plugin was asked: nothing new in either log");

    action("the service is still serving: on_distribution_registered (a hook that cannot veto)");
    let distribution = plughost_tests::distribution(8);
    let offline = OfflineDistribution {
        id: distribution.id,
        name: distribution.name.clone(),
        package: distribution.package.clone(),
        flavor: distribution.flavor.clone(),
        version: distribution.version.clone(),
    };
    manager.on_distribution_registered(&alice, &offline, &*service);
    log_lines("auditor", &auditor.new_lines());
    ensure!(
        auditor.has("distribution_registered name=distro8"),
        "'auditor' did not get on_distribution_registered"
    );
    let plugins = manager.plugins();
    for info in &plugins {
        note(&format!(
            "plugins(): '{}' {}{}",
            info.name,
            info.state,
            info.host_pid
                .map(|pid| format!(" (host pid {pid})"))
                .unwrap_or_default()
        ));
    }
    match plugins.as_slice() {
        [first, second] => {
            ensure!(
                first.state == "ready" && first.host_pid.is_some(),
                "'auditor' is not ready"
            );
            ensure!(
                second.state == "crashed",
                "'buggy' is {}, not crashed",
                second.state
            );
            ensure!(
                second.host_pid.is_none(),
                "the crashed host still has a pid"
            );
            expect_text(
                "the latched error of 'buggy'",
                second.last_error.as_deref().unwrap_or(""),
                expected,
            )?;
        }
        other => bail!("expected 2 plugins, plugins() lists {}", other.len()),
    }
    note(&format!(
        "this process, the service (pid {}), runs on: the crash cost one VM start",
        std::process::id()
    ));

    Ok(Snapshot { step: "3", plugins })
}
