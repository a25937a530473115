//! The conformance suite's cells that need one plugin doing one thing in one hook
//! (docs/CONFORMANCE.md): hook order, veto, crash, hang, plugin_error, ignored failures, calls
//! during a hook, and the API's documented statuses, each through a real `plughostd` and
//! `plughostctl` with `tests/plugins/contract_probe.c`, whose behaviour per hook a file chooses.
//!
//! Two instances of the probe, configured as `zeta` then `alpha` (so configuration order is not
//! name order); `alpha` misbehaves, `zeta` shows what the plugin before it saw.

mod common;

use common::*;

const NOT_RUNNING: &str = "-10004";
const NOT_FOUND: &str = "-10005";
const SHUTTING_DOWN: &str = "-10006";
const ILLEGAL_CALL: &str = "-10002";

/// `tests/plugins/contract_probe.c` built as the plugin `name` (`-DPROBE_NAME`).
fn probe(name: &str) -> PluginSpec {
    let mut spec = service_plugin_with(
        "contract_probe",
        &format!("probe-{name}"),
        &[format!("-DPROBE_NAME=\"{name}\"")],
    );
    spec.name = name.into();
    spec
}

/// A daemon with the probes `zeta` then `alpha`, a registrable rootfs, and `actions`
/// (`(plugin, hook, action)`) written where the probes read them.
struct Probes {
    world: World,
    daemon: Daemon,
    rootfs: String,
}

impl Probes {
    fn start(actions: &[(&str, &str, &str)], extra_config: &str) -> Probes {
        let mut world = World::new(vec![probe("zeta"), probe("alpha")]);
        world.extra_config = extra_config.into();
        for (plugin, hook, action) in actions {
            std::fs::write(world.fx.dir.path().join(format!("{plugin}.{hook}")), action)
                .expect("write action");
        }
        let empty = world.fx.dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir empty");
        let rootfs = make_rootfs(world.dir.path())
            .to_str()
            .expect("utf-8")
            .to_owned();
        let daemon = world.start();
        Probes {
            world,
            daemon,
            rootfs,
        }
    }

    fn ctl(&self, args: &[&str]) -> Ctl {
        self.daemon.ctl(args)
    }

    fn register(&self) -> Ctl {
        self.ctl(&["distro", "register", "td", "--rootfs", &self.rootfs])
    }

    /// The plugins that got `hook`, in the order they logged it.
    fn got(&self, hook: &str) -> Vec<String> {
        self.world
            .fx
            .events(&format!("{hook} plugin="))
            .iter()
            .map(|l| field(l, "plugin").to_owned())
            .collect()
    }

    /// `<event> hook=<hook> plugin=<plugin> ...` lines.
    fn logged(&self, event: &str, hook: &str, plugin: &str) -> Vec<String> {
        self.world
            .fx
            .events(&format!("{event} hook={hook} plugin={plugin} "))
    }

    /// The one `<event> hook=<hook> plugin=alpha ...` line of `thread` (or of any, when "").
    fn alpha_line(&self, event: &str, hook: &str, thread: &str) -> String {
        let lines: Vec<String> = self
            .logged(event, hook, "alpha")
            .into_iter()
            .filter(|l| thread.is_empty() || field(l, "thread") == thread)
            .collect();
        assert_eq!(lines.len(), 1, "{:?}", self.world.fx.lines());
        lines[0].clone()
    }
}

/// How an operation reaches a hook: the operations before it, the one that delivers it, and a
/// later operation with a veto hook (which a latched crash fails before any hook), with that hook.
struct Route {
    setup: Vec<Vec<String>>,
    trigger: Vec<String>,
    may_veto: bool,
    next: Vec<String>,
    next_hook: &'static str,
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn route(hook: &str, rootfs: &str) -> Route {
    let register = args(&["distro", "register", "td", "--rootfs", rootfs]);
    let create = args(&["csession", "create", "box"]);
    let run = args(&["csession", "run", "box", "--", "true"]);
    let stop = args(&["csession", "stop", "box"]);
    let vm_start = (args(&["vm", "start"]), "on_vm_started");
    let distro_start = (args(&["distro", "start", "td"]), "on_distribution_started");
    let csession_next = (
        args(&["csession", "create", "box2"]),
        "on_container_session_created",
    );
    let (setup, trigger, may_veto, (next, next_hook)) = match hook {
        "on_distribution_registered" => (vec![], register, false, vm_start),
        "on_distribution_unregistered" => (
            vec![register],
            args(&["distro", "unregister", "td"]),
            false,
            vm_start,
        ),
        "on_distribution_started" => (vec![register], distro_start.0.clone(), true, distro_start),
        "on_distribution_stopping" => (
            vec![register, distro_start.0.clone()],
            args(&["distro", "stop", "td"]),
            false,
            distro_start,
        ),
        "on_container_session_created" => (vec![], create, true, csession_next),
        "on_container_session_stopping" => (vec![create], stop, false, csession_next),
        "on_session_vm_started" => (vec![create], run, false, csession_next),
        "on_session_vm_stopping" => (vec![create, run], stop, false, csession_next),
        other => panic!("no route to {other}"),
    };
    Route {
        setup,
        trigger,
        may_veto,
        next,
        next_hook,
    }
}

fn ctl_args(p: &Probes, words: &[String]) -> Ctl {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    p.ctl(&words)
}

/// `alpha` crashes or hangs in `hook`: a veto hook fails its operation with the crash, another
/// hook's operation completes; either way the crash is latched, and the next operation fails with
/// it before any plugin (`zeta` before `alpha` included) gets its hook.
fn misbehaves(hook: &str, action: &str) {
    if !need_root(&format!("{action} in {hook}")) {
        return;
    }
    let deadlines = "start_timeout_secs = 2\nteardown_timeout_secs = 2\n";
    let p = Probes::start(&[("alpha", hook, action)], deadlines);
    let route = route(hook, &p.rootfs);
    for step in &route.setup {
        ctl_args(&p, step).ok();
    }
    let expected = match action {
        "crash" => {
            format!("plugin 'alpha' crashed: killed by signal SIGSEGV (address 0x0) in {hook} (")
        }
        _ => format!("plugin 'alpha' did not answer {hook} within 2 s"),
    };
    let out = ctl_args(&p, &route.trigger);
    if route.may_veto {
        out.fails_starting_with(&expected);
    } else {
        out.ok();
    }
    // zeta got it first; alpha got it and never answered.
    assert_eq!(p.got(hook), ["zeta", "alpha"], "{:?}", p.world.fx.lines());
    let before = p.got(route.next_hook);
    ctl_args(&p, &route.next).fails_starting_with(&expected);
    assert_eq!(p.got(route.next_hook), before, "a hook after the latch");
    // Still latched, with the same error; zeta is not.
    ctl_args(&p, &route.next).fails_starting_with(&expected);
    let rows = p.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(rows["plugins"][0]["name"], "zeta", "{rows}");
    assert_eq!(rows["plugins"][0]["state"], "ready", "{rows}");
    assert_eq!(rows["plugins"][1]["state"], "crashed", "{rows}");
    assert!(rows["plugins"][1]["host_pid"].is_null(), "{rows}");
}

/// `alpha` calls plugin_error in `hook`, which may not veto: PLUGHOST_E_ILLEGAL_CALL, and the
/// operation succeeds.
fn plugin_error_is_illegal(hook: &str) {
    if !need_root(&format!("plugin_error in {hook}")) {
        return;
    }
    let p = Probes::start(&[("alpha", hook, "error")], "");
    let route = route(hook, &p.rootfs);
    for step in &route.setup {
        ctl_args(&p, step).ok();
    }
    ctl_args(&p, &route.trigger).ok();
    let line = p.alpha_line("error", hook, "");
    assert_eq!(field(&line, "status"), ILLEGAL_CALL, "{line}");
    // Nothing was latched or remembered: the next operation works.
    ctl_args(&p, &route.next).ok();
}

/// `zeta` (first) fails `hook`, which may not veto: the failure is logged, `alpha` still gets the
/// hook, the operation succeeds and nothing is latched.
fn failure_is_ignored(hook: &str) {
    if !need_root(&format!("failure in {hook}")) {
        return;
    }
    let p = Probes::start(&[("zeta", hook, "fail")], "");
    let route = route(hook, &p.rootfs);
    for step in &route.setup {
        ctl_args(&p, step).ok();
    }
    ctl_args(&p, &route.trigger).ok();
    assert_eq!(p.got(hook), ["zeta", "alpha"], "{:?}", p.world.fx.lines());
    let log = p.daemon.log_text();
    assert!(
        log.contains("ignored: plugin 'zeta' returned a fatal error (status -5 (EIO))"),
        "{log}"
    );
    ctl_args(&p, &route.next).ok();
}

/// Generates one test per hook: `$module::$hook` runs `$check("on_$hook")`.
macro_rules! per_hook {
    ($module:ident, $check:expr, [$($hook:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $hook() {
                    $check(concat!("on_", stringify!($hook)));
                }
            )*
        }
    };
}

per_hook!(
    crash_in,
    |hook| super::misbehaves(hook, "crash"),
    [
        distribution_started,
        distribution_stopping,
        distribution_registered,
        distribution_unregistered,
        container_session_created,
        container_session_stopping,
        session_vm_started,
        session_vm_stopping,
    ]
);

per_hook!(
    hung_in,
    |hook| super::misbehaves(hook, "hang"),
    [
        distribution_started,
        distribution_stopping,
        distribution_registered,
        distribution_unregistered,
        container_session_created,
        container_session_stopping,
        session_vm_started,
        session_vm_stopping,
    ]
);

per_hook!(
    plugin_error_in,
    super::plugin_error_is_illegal,
    [
        distribution_stopping,
        distribution_registered,
        distribution_unregistered,
        container_session_stopping,
        session_vm_started,
        session_vm_stopping,
    ]
);

per_hook!(
    failure_ignored_in,
    super::failure_is_ignored,
    [
        container_session_stopping,
        session_vm_started,
        session_vm_stopping,
    ]
);

/// Every hook reaches `zeta` before `alpha`, their configuration order, each time.
#[test]
fn every_hook_reaches_plugins_in_configuration_order() {
    if !need_root("every_hook_reaches_plugins_in_configuration_order") {
        return;
    }
    let p = Probes::start(&[], "");
    for _ in 0..2 {
        p.register().ok();
        p.ctl(&["vm", "start"]).ok();
        p.ctl(&["distro", "start", "td"]).ok();
        p.ctl(&["distro", "stop", "td"]).ok();
        p.ctl(&["csession", "create", "box"]).ok();
        p.ctl(&["csession", "run", "box", "--", "true"]).ok();
        p.ctl(&["csession", "stop", "box"]).ok();
        p.ctl(&["distro", "unregister", "td"]).ok();
        p.ctl(&["vm", "stop"]).ok();
    }
    for hook in [
        "on_vm_started",
        "on_vm_stopping",
        "on_distribution_started",
        "on_distribution_stopping",
        "on_distribution_registered",
        "on_distribution_unregistered",
        "on_container_session_created",
        "on_container_session_stopping",
        "on_session_vm_started",
        "on_session_vm_stopping",
    ] {
        assert_eq!(
            p.got(hook),
            ["zeta", "alpha", "zeta", "alpha"],
            "{hook}: {:?}",
            p.world.fx.lines()
        );
    }
}

/// A veto in on_distribution_started or on_container_session_created stops that hook's delivery:
/// `alpha`, after `zeta` who vetoes, never gets it.
#[test]
fn a_veto_stops_the_delivery_to_later_plugins() {
    if !need_root("a_veto_stops_the_delivery_to_later_plugins") {
        return;
    }
    let p = Probes::start(
        &[
            ("zeta", "on_distribution_started", "veto"),
            ("zeta", "on_container_session_created", "veto"),
        ],
        "",
    );
    let expected = "plugin 'zeta' returned a fatal error (status -1 (EPERM))";
    p.register().ok();
    for round in 1..=3 {
        p.ctl(&["distro", "start", "td"]).fails_with(expected);
        p.ctl(&["csession", "create", "box"]).fails_with(expected);
        assert_eq!(p.got("on_distribution_started"), vec!["zeta"; round]);
        assert_eq!(p.got("on_container_session_created"), vec!["zeta"; round]);
        // The vetoed distribution gets no stopping hook; the vetoed session gets its own, everywhere.
        assert!(p.got("on_distribution_stopping").is_empty());
        assert_eq!(
            p.got("on_container_session_stopping").len(),
            2 * round,
            "{:?}",
            p.world.fx.lines()
        );
    }
}

/// Calls from `hook` on its own thread and on a plugin thread it joins complete, with `expected`
/// (`(key, value)`) on both.
fn calls_complete(hook: &str, expected: &[(&str, &str)]) {
    if !need_root(&format!("calls in {hook}")) {
        return;
    }
    let p = Probes::start(&[("alpha", hook, "calls")], "");
    // The VM runs: calls for it succeed in every user-session hook.
    p.ctl(&["vm", "start"]).ok();
    let route = route(hook, &p.rootfs);
    for step in &route.setup {
        ctl_args(&p, step).ok();
    }
    ctl_args(&p, &route.trigger).ok();
    for thread in ["hook", "worker"] {
        let line = p.alpha_line("call", hook, thread);
        for (key, value) in expected {
            assert_eq!(field(&line, key), *value, "{key}: {line}");
        }
    }
}

/// In on_distribution_started the VM and the distribution serve calls from any plugin thread.
#[test]
fn calls_during_distribution_started_complete() {
    calls_complete(
        "on_distribution_started",
        &[
            ("exec", "0"),
            ("exec_out", "vm_"),
            ("exec_in", "0"),
            ("exec_in_out", "in_"),
        ],
    );
}

/// In on_distribution_stopping the distribution still runs: its calls succeed.
#[test]
fn calls_during_distribution_stopping_complete() {
    calls_complete(
        "on_distribution_stopping",
        &[
            ("exec", "0"),
            ("exec_out", "vm_"),
            ("exec_in", "0"),
            ("exec_in_out", "in_"),
        ],
    );
}

/// A registered distribution does not run: NOT_RUNNING for it, the VM serves calls.
#[test]
fn calls_during_distribution_registered_complete() {
    calls_complete(
        "on_distribution_registered",
        &[("exec", "0"), ("exec_out", "vm_"), ("exec_in", NOT_RUNNING)],
    );
}

/// An unregistered distribution is unknown: NOT_FOUND for it, the VM serves calls.
#[test]
fn calls_during_distribution_unregistered_complete() {
    calls_complete(
        "on_distribution_unregistered",
        &[("exec", "0"), ("exec_out", "vm_"), ("exec_in", NOT_FOUND)],
    );
}

/// A container session being created has no session VM: mounts are remembered, a process
/// cannot start (container_create_process never starts a session VM).
#[test]
fn calls_during_container_session_created_complete() {
    calls_complete(
        "on_container_session_created",
        &[("cmount", "0"), ("cunmount", "0"), ("create", NOT_RUNNING)],
    );
}

/// execute_binary(_in_distribution): a relative path is -EINVAL, a program missing in the
/// distribution -ENOENT.
#[test]
fn vm_calls_argument_errors_are_the_documented_statuses() {
    if !need_root("vm_calls_argument_errors_are_the_documented_statuses") {
        return;
    }
    let p = Probes::start(&[("alpha", "on_distribution_started", "api_errors")], "");
    p.register().ok();
    p.ctl(&["distro", "start", "td"]).ok();
    let line = p.alpha_line("api", "on_distribution_started", "");
    assert_eq!(field(&line, "exec_relative"), "-22", "{line}");
    assert_eq!(field(&line, "exec_in_relative"), "-22", "{line}");
    assert_eq!(field(&line, "exec_in_missing"), "-2", "{line}");
}

/// container_unmount_folder(NULL) is -EFAULT, an unmount the kernel refuses its -errno;
/// container_create_process with a relative path is -EINVAL with errno_out ENOENT.
#[test]
fn container_calls_argument_errors_are_the_documented_statuses() {
    if !need_root("container_calls_argument_errors_are_the_documented_statuses") {
        return;
    }
    let p = Probes::start(&[("alpha", "on_session_vm_started", "api_errors")], "");
    p.ctl(&["csession", "create", "box"]).ok();
    p.ctl(&["csession", "run", "box", "--", "true"]).ok();
    let line = p.alpha_line("api", "on_session_vm_started", "");
    assert_eq!(field(&line, "cunmount_null"), "-14", "{line}");
    assert_eq!(field(&line, "create_relative"), "-22", "{line}");
    assert_eq!(field(&line, "create_relative_errno"), "2", "{line}");
    assert_eq!(field(&line, "cmount_deep"), "0", "{line}");
    assert_eq!(field(&line, "cmount_over"), "0", "{line}");
    assert_eq!(field(&line, "cunmount_hidden"), "-2", "{line}");
}

/// At a service shutdown every VM call from the stopping hooks, on the hook thread or a plugin
/// thread, is PLUGHOST_E_SHUTTING_DOWN (the call did not run).
#[test]
fn calls_during_a_service_shutdown_are_shutting_down() {
    if !need_root("calls_during_a_service_shutdown_are_shutting_down") {
        return;
    }
    let p = Probes::start(
        &[
            ("alpha", "on_vm_stopping", "calls"),
            ("alpha", "on_distribution_stopping", "calls"),
            ("alpha", "on_session_vm_stopping", "calls"),
        ],
        "",
    );
    p.register().ok();
    p.ctl(&["distro", "start", "td"]).ok();
    p.ctl(&["csession", "create", "box"]).ok();
    p.ctl(&["csession", "run", "box", "--", "true"]).ok();
    p.ctl(&["shutdown"]).ok();
    let mut p = p;
    let status = p.daemon.child.wait().expect("wait plughostd");
    assert!(status.success(), "plughostd exit: {status}");
    for thread in ["hook", "worker"] {
        let line = p.alpha_line("call", "on_vm_stopping", thread);
        assert_eq!(field(&line, "exec"), SHUTTING_DOWN, "{line}");
        let line = p.alpha_line("call", "on_distribution_stopping", thread);
        assert_eq!(field(&line, "exec"), SHUTTING_DOWN, "{line}");
        assert_eq!(field(&line, "exec_in"), SHUTTING_DOWN, "{line}");
        let line = p.alpha_line("call", "on_session_vm_stopping", thread);
        assert_eq!(field(&line, "cmount"), SHUTTING_DOWN, "{line}");
        assert_eq!(field(&line, "cunmount"), SHUTTING_DOWN, "{line}");
        assert_eq!(field(&line, "create"), SHUTTING_DOWN, "{line}");
    }
}

/// After on_session_vm_stopping the session VM is gone: process_get_fd and process_get_exit_fd
/// on a handle from before are PLUGHOST_E_NOT_RUNNING (header, section 7).
#[test]
fn process_calls_after_the_session_vm_is_gone_are_not_running() {
    if !need_root("process_calls_after_the_session_vm_is_gone_are_not_running") {
        return;
    }
    let p = Probes::start(
        &[
            ("alpha", "on_session_vm_started", "keep"),
            ("alpha", "on_container_session_stopping", "use_kept"),
        ],
        "",
    );
    p.ctl(&["csession", "create", "box"]).ok();
    p.ctl(&["csession", "run", "box", "--", "true"]).ok();
    p.ctl(&["csession", "stop", "box"]).ok();
    let line = p.alpha_line("keep", "on_session_vm_started", "");
    assert_eq!(field(&line, "status"), "0", "{line}");
    let line = p.alpha_line("kept", "on_container_session_stopping", "");
    assert_eq!(field(&line, "get_fd"), NOT_RUNNING, "{line}");
    assert_eq!(field(&line, "exit_fd"), NOT_RUNNING, "{line}");
}

/// At a service shutdown the process calls from on_session_vm_stopping are
/// PLUGHOST_E_SHUTTING_DOWN, as every call is (header, section 3, "Shutdown").
#[test]
fn process_calls_during_a_service_shutdown_are_shutting_down() {
    if !need_root("process_calls_during_a_service_shutdown_are_shutting_down") {
        return;
    }
    let p = Probes::start(
        &[
            ("alpha", "on_session_vm_started", "keep"),
            ("alpha", "on_session_vm_stopping", "use_kept"),
        ],
        "",
    );
    p.ctl(&["csession", "create", "box"]).ok();
    p.ctl(&["csession", "run", "box", "--", "true"]).ok();
    p.ctl(&["shutdown"]).ok();
    let mut p = p;
    let status = p.daemon.child.wait().expect("wait plughostd");
    assert!(status.success(), "plughostd exit: {status}");
    let line = p.alpha_line("kept", "on_session_vm_stopping", "");
    assert_eq!(field(&line, "get_fd"), SHUTTING_DOWN, "{line}");
    assert_eq!(field(&line, "exit_fd"), SHUTTING_DOWN, "{line}");
    assert_eq!(field(&line, "exit_code"), SHUTTING_DOWN, "{line}");
}
