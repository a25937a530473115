//! Least privilege, seccomp, limits and plugin integrity (issue 5), with real hosts.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use plughost::{Deadlines, HookKind, HostUser, Limits, ManagerConfig, PluginConfig, Trust};
use plughost_tests::*;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn host_runs_unprivileged_in_its_own_session_with_nothing_inherited() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("whoami")]);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    let line = fx.wait_for("whoami ");
    assert_eq!(field(&line, "nnp"), "1", "{line}");
    assert_eq!(field(&line, "seccomp"), "2", "{line}");
    assert_eq!(field(&line, "umask"), "0077", "{line}");
    assert_eq!(field(&line, "cwd"), "/", "{line}");
    // PH_DIR and PH_LOG, nothing of the service's environment.
    assert_eq!(field(&line, "env"), "2", "{line}");
    // Landlock: the plugin cannot open what it was not given.
    assert_eq!(field(&line, "secret"), "0", "{line}");
    // stdin, stdout, stderr, the channel, the call ring's doorbell and its fd lane (the ring's
    // memfd is closed once mapped), and the crash report's memfd; nothing leaked from the service.
    assert_eq!(field(&line, "fds"), "7", "{line}");
    if is_root() {
        let (uid, gid) = plughost::lookup_user("plughost")
            .or_else(|| plughost::lookup_user("nobody"))
            .unwrap_or((65534, 65534));
        assert_eq!(field(&line, "uid"), uid.to_string(), "{line}");
        assert_eq!(field(&line, "euid"), uid.to_string(), "{line}");
        assert_eq!(field(&line, "gid"), gid.to_string(), "{line}");
        assert_eq!(field(&line, "groups"), "0", "{line}");
        assert_eq!(field(&line, "capeff"), "0000000000000000", "{line}");
        // The plugin process leads its own session in its pid namespace; without root the host
        // keeps the process group the service gave it (README, "Requirements").
        assert_eq!(field(&line, "session_leader"), "1", "{line}");
    } else {
        println!("skipped the user-switch and session assertions: needs root");
    }
}

#[test]
fn forbidden_syscall_kills_the_host_and_is_named() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("blocked_syscall"), fx.c("noop")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'blocked_syscall' crashed: blocked syscall 101 (ptrace)"
    );
    fx.wait_for("calling_ptrace");
    assert!(fx.events("ptrace_returned").is_empty());
    let info = &manager.plugins()[0];
    assert_eq!(
        info.crashes_by_cause
            .iter()
            .find(|c| c.0 == "blocked_syscall")
            .map(|c| c.1),
        Some(1)
    );
}

/// Issue 12, point 9: `call` kills the host with SIGSYS and is named; it never runs.
fn assert_blocked(call: &str, number: u32, name: &str) {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("hostile_syscall").env("PH_SYSCALL", call)]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        format!("plugin 'hostile_syscall' crashed: blocked syscall {number} ({name})")
    );
    fx.wait_for(&format!("calling name={call}"));
    assert!(fx.events("returned ").is_empty(), "{call} returned");
}

#[test]
fn clone_with_clone_newuser_is_blocked() {
    assert_blocked("clone_newuser", 56, "clone with CLONE_NEWUSER");
}

#[test]
fn unshare_with_clone_newuser_is_blocked() {
    assert_blocked("unshare_newuser", 272, "unshare");
}

#[test]
fn io_uring_setup_is_blocked() {
    assert_blocked("io_uring_setup", 425, "io_uring_setup");
}

#[test]
fn io_uring_enter_is_blocked() {
    assert_blocked("io_uring_enter", 426, "io_uring_enter");
}

#[test]
fn io_uring_register_is_blocked() {
    assert_blocked("io_uring_register", 427, "io_uring_register");
}

#[test]
fn name_to_handle_at_is_blocked() {
    assert_blocked("name_to_handle_at", 303, "name_to_handle_at");
}

#[test]
fn open_by_handle_at_is_blocked() {
    assert_blocked("open_by_handle_at", 304, "open_by_handle_at");
}

#[test]
fn statmount_is_blocked() {
    assert_blocked("statmount", 457, "statmount");
}

#[test]
fn listmount_is_blocked() {
    assert_blocked("listmount", 458, "listmount");
}

#[test]
fn open_tree_attr_is_blocked() {
    assert_blocked("open_tree_attr", 467, "open_tree_attr");
}

/// clone3 cannot be filtered by its flags (they are in memory): it fails with ENOSYS, and threads
/// and fork still work through libc's fallback to clone.
#[test]
fn clone3_fails_with_enosys_and_threads_still_start() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("hostile_syscall").env("PH_SYSCALL", "clone3")]);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    let line = fx.wait_for("returned name=clone3");
    assert_eq!(field(&line, "rc"), "-1", "{line}");
    assert_eq!(field(&line, "errno"), "38", "{line}"); // ENOSYS
    fx.wait_for("thread_ok");
    fx.wait_for("fork_ok");
}

#[test]
fn seccomp_can_be_turned_off_per_plugin() {
    let fx = Fixture::new();
    let service = TestService::new();
    let manager = service.manager(vec![fx.c("blocked_syscall").seccomp(false)]);
    service
        .start_vm(&manager, &session(1))
        .expect("ptrace is allowed without the filter");
    fx.wait_for("ptrace_returned");
}

#[test]
fn cpu_time_limit_is_enforced_and_reported() {
    let fx = Fixture::new();
    let service = TestService::new();
    let plugin = fx
        .c("cpu_spin")
        .limits(Limits {
            cpu_seconds: Some(1),
            ..Limits::default()
        })
        .deadlines(Deadlines::default().with(HookKind::VmStarted, Duration::from_secs(60)));
    let manager = service.manager(vec![plugin]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'cpu_spin' crashed: exceeded its CPU time limit of 1 s"
    );
}

#[test]
fn open_files_limit_applies_to_the_host() {
    let fx = Fixture::new();
    let service = TestService::new();
    let plugin = fx.c("whoami").limits(Limits {
        open_files: Some(16),
        ..Limits::default()
    });
    let manager = service.manager(vec![plugin]);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    let line = fx.wait_for("whoami ");
    assert_eq!(field(&line, "nofile"), "16", "{line}");
}

/// The fixture dir is world-writable (hosts write their logs there): keep libraries out of it.
fn safe_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("plughost-lib")
        .tempdir_in(target_dir())
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn copy_into(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.so"));
    std::fs::copy(c_plugin(name), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

#[test]
fn sha256_pin_loads_the_verified_bytes_even_if_the_file_is_swapped() {
    let fx = Fixture::new();
    let lib = safe_dir();
    let path = copy_into(lib.path(), "veto");
    let pin = plughost::sha256_hex(&std::fs::read(&path).unwrap());
    let service = TestService::new();
    let manager = service.manager(vec![
        fx.with_env(PluginConfig::new("pinned", &path).sha256(&pin))
    ]);
    // Swap the file after the check: the host runs the verified copy (the vetoing one).
    std::fs::copy(c_plugin("noop"), &path).unwrap();
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'pinned' returned a fatal error: veto number 1 (status -22 (EINVAL))"
    );
    // Loading again reads the swapped file, which no longer matches.
    let got = plughost::sha256_hex(&std::fs::read(&path).unwrap());
    let restart = manager.restart_plugin("pinned").unwrap_err();
    assert_eq!(
        restart.to_string(),
        format!("plugin 'pinned' failed to load: sha256 mismatch (expected {pin}, got {got})")
    );
}

#[test]
fn signed_plugin_loads_only_with_a_trusted_key() {
    let lib = safe_dir();
    let path = copy_into(lib.path(), "noop");
    let key = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[9; 32]);
    let signature = key.sign(&std::fs::read(&path).unwrap());
    let sig_path = lib.path().join("noop.so.sig");
    std::fs::write(
        &sig_path,
        base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
    )
    .unwrap();
    let service = TestService::new();
    let config = |trusted: &SigningKey| {
        let mut config =
            ManagerConfig::new(vec![PluginConfig::new("signed", &path).signature(&sig_path)]);
        config.trust = Trust {
            trusted_keys: vec![trusted.verifying_key()],
            require_verified: true,
        };
        config
    };
    let manager = service.manager_with(config(&key));
    service
        .start_vm(&manager, &session(1))
        .expect("signed by a trusted key");
    drop(manager);
    let manager = service.manager_with(config(&other));
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'signed' failed to load: signature does not verify with any trusted key"
    );
}

#[test]
fn unverified_plugin_is_refused_when_verification_is_required() {
    let service = TestService::new();
    let mut config = ManagerConfig::new(vec![PluginConfig::new("plain", c_plugin("noop"))]);
    config.trust.require_verified = true;
    let manager = service.manager_with(config);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'plain' failed to load: no sha256 pin or signature, and require_verified is set"
    );
}

#[test]
fn plugin_writable_by_others_is_refused() {
    let lib = safe_dir();
    let path = copy_into(lib.path(), "noop");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let service = TestService::new();
    let manager = service.manager(vec![PluginConfig::new("loose", &path)]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        format!(
            "plugin 'loose' failed to load: {} is writable by others (mode 666)",
            path.display()
        )
    );
    // And in a directory others can write to.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(lib.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let manager = service.manager(vec![PluginConfig::new("loose", &path)]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert!(err.contains("is writable by others (mode 777)"), "{err}");
    // Sticky (like /tmp) or not: the library's own directory is refused...
    std::fs::set_permissions(lib.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let manager = service.manager(vec![PluginConfig::new("loose", &path)]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        format!(
            "plugin 'loose' failed to load: {} is writable by others (mode 1777)",
            lib.path().display()
        )
    );
    // ...while a sticky world-writable ancestor (a checkout under /tmp) is not.
    let inner = lib.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inner_path = copy_into(&inner, "noop");
    let manager = service.manager(vec![PluginConfig::new("inner", &inner_path)]);
    service
        .start_vm(&manager, &session(2))
        .expect("a plugin beneath a sticky directory loads");
}

#[test]
fn landlock_keeps_the_plugin_to_its_paths() {
    let fx = Fixture::new();
    // Outside the checkout: the host's user (nobody, as root) must be able to reach it when
    // Landlock is off, and a clone under /root is closed to it.
    let lib = tempfile::tempdir().unwrap();
    std::fs::set_permissions(lib.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = lib.path().join("secret.txt");
    std::fs::write(&secret, "secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let service = TestService::new();
    let confined = fx.c("whoami").env("PH_SECRET", secret.to_string_lossy());
    let manager = service.manager(vec![confined]);
    service.start_vm(&manager, &session(1)).expect("vm starts");
    let line = fx.wait_for("whoami ");
    assert_eq!(field(&line, "secret"), "0", "{line}");
    drop(manager);
    std::fs::remove_file(&fx.log).unwrap();
    let open = fx
        .c("whoami")
        .env("PH_SECRET", secret.to_string_lossy())
        .landlock(false);
    let manager = service.manager(vec![open]);
    service.start_vm(&manager, &session(2)).expect("vm starts");
    let line = fx.wait_for("whoami ");
    assert_eq!(field(&line, "secret"), "1", "{line}");
}

#[test]
fn memory_limit_is_enforced_and_named() {
    let fx = Fixture::new();
    let service = TestService::new();
    let plugin = fx.c("memory_hog").limits(Limits {
        address_space: Some(256 * 1024 * 1024),
        ..Limits::default()
    });
    let manager = service.manager(vec![plugin]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'memory_hog' crashed: killed by signal SIGABRT, probably at its memory limit of 256 MiB"
    );
    let line = fx.wait_for("malloc_failed");
    let mib: u64 = field(&line, "mib").parse().unwrap();
    assert!(mib < 256, "{line}");
}

/// `RLIMIT_NPROC` counts every process and thread of a real uid: each test gives its host a uid of
/// its own (no process has it yet), so the limit counts the plugin's processes alone.
fn uid_of_its_own(slot: u32) -> u32 {
    let uid = 61_000 + (std::process::id() % 1000) * 4 + slot;
    assert!(
        processes_of(uid).is_empty(),
        "uid {uid} already has processes"
    );
    uid
}

/// Pids of the processes (thread-group leaders) whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok());
            !zombie && real == Some(uid)
        })
        .collect()
}

/// Below the bombs' own caps (64 forks of the hook's process, 1024 threads), so the kernel refuses
/// first, whatever the order of the forks.
const PROCESS_LIMIT: u64 = 32;

#[test]
fn fork_bomb_is_bounded_by_the_process_limit_and_leaves_no_process() {
    if !is_root() {
        println!("skipped: needs root (to give the host a uid of its own for RLIMIT_NPROC)");
        return;
    }
    let uid = uid_of_its_own(0);
    let fx = Fixture::new();
    let service = TestService::new();
    let bomb = fx
        .c("fork_bomb")
        .env("PH_MARKER", marker("fb"))
        .user(HostUser::Id { uid, gid: uid })
        .limits(Limits {
            processes: Some(PROCESS_LIMIT),
            ..Limits::default()
        });
    let manager = service.manager(vec![bomb, fx.c("noop")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'fork_bomb' returned a fatal error: fork refused at the process limit (status -11 (EAGAIN))"
    );
    let refused = fx.wait_for("fork_refused");
    assert_eq!(field(&refused, "errno"), "11", "{refused}");
    // Nothing of the bomb exits: what runs now is all it got.
    let count = processes_of(uid).len();
    println!("fork bomb at a limit of {PROCESS_LIMIT}: {count} processes; {refused}");
    assert!(
        (2..=PROCESS_LIMIT as usize).contains(&count),
        "{count} processes"
    );
    // The service carries on with the other plugin, and the bomb goes with its host.
    manager.disable_plugin("fork_bomb").expect("disable");
    service
        .start_vm(&manager, &session(2))
        .expect("the other plugin serves VM starts");
    assert!(
        eventually(Duration::from_secs(10), || processes_of(uid).is_empty()),
        "processes of the bomb survived its host: {:?}",
        processes_of(uid)
    );
}

#[test]
fn thread_bomb_is_bounded_by_the_process_limit_and_named() {
    if !is_root() {
        println!("skipped: needs root (to give the host a uid of its own for RLIMIT_NPROC)");
        return;
    }
    let uid = uid_of_its_own(1);
    let fx = Fixture::new();
    let service = TestService::new();
    let bomb = fx
        .c("thread_bomb")
        .user(HostUser::Id { uid, gid: uid })
        .limits(Limits {
            processes: Some(PROCESS_LIMIT),
            ..Limits::default()
        });
    let manager = service.manager(vec![bomb, fx.c("noop")]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        format!(
            "plugin 'thread_bomb' crashed: killed by signal SIGABRT, probably at its process \
             limit of {PROCESS_LIMIT}"
        )
    );
    let refused = fx.wait_for("thread_refused");
    assert_eq!(field(&refused, "errno"), "11", "{refused}");
    let threads: u64 = field(&refused, "threads").parse().expect("threads");
    // The plugin's main thread counts too.
    assert!(
        (1..PROCESS_LIMIT).contains(&threads),
        "{threads} threads at a limit of {PROCESS_LIMIT}"
    );
    assert!(
        eventually(Duration::from_secs(10), || processes_of(uid).is_empty()),
        "the bomb's process survived: {:?}",
        processes_of(uid)
    );
    manager.disable_plugin("thread_bomb").expect("disable");
    service
        .start_vm(&manager, &session(2))
        .expect("the other plugin serves VM starts");
}

/// Issue 12, point 7: a reload that tightens the trust settings stops the running plugins that no
/// longer verify (named, latched) and keeps those that do, with the same host.
#[test]
fn reload_with_stricter_trust_stops_plugins_that_no_longer_verify() {
    let fx = Fixture::new();
    let lib = safe_dir();
    let signed_path = copy_into(lib.path(), "noop");
    let pinned_path = copy_into(lib.path(), "veto");
    let key = SigningKey::from_bytes(&[7; 32]);
    let sig_path = lib.path().join("noop.so.sig");
    std::fs::write(
        &sig_path,
        base64::engine::general_purpose::STANDARD
            .encode(key.sign(&std::fs::read(&signed_path).unwrap()).to_bytes()),
    )
    .unwrap();
    let pin = plughost::sha256_hex(&std::fs::read(&pinned_path).unwrap());
    let plugins = vec![
        fx.with_env(PluginConfig::new("signed", &signed_path).signature(&sig_path)),
        fx.with_env(PluginConfig::new("pinned", &pinned_path).sha256(&pin)),
        fx.c("whoami"),
    ];
    let service = TestService::new();
    let mut config = ManagerConfig::new(plugins.clone());
    config.trust.trusted_keys = vec![key.verifying_key()];
    let mut manager = service.manager_with(config);
    let pids: Vec<u32> = manager
        .plugins()
        .iter()
        .map(|p| p.host_pid.expect("running"))
        .collect();

    // Same plugins; the key is dropped and verification required.
    let report = manager.reconfigure(
        plugins,
        Trust {
            trusted_keys: Vec::new(),
            require_verified: true,
        },
        Deadlines::default(),
    );
    assert_eq!(
        report,
        [
            "trust settings changed: running plugins verified again",
            "plugin 'signed' failed to load: no longer verifies under the new trust settings: signature does not verify with any trusted key: stopped",
            "plugin 'whoami' failed to load: no longer verifies under the new trust settings: no sha256 pin or signature, and require_verified is set: stopped",
        ]
    );
    let after = manager.plugins();
    assert_eq!(after[0].state.name(), "failed");
    assert_eq!(
        after[1].host_pid,
        Some(pids[1]),
        "the pinned plugin keeps its host"
    );
    assert_eq!(after[2].state.name(), "failed");
    assert!(eventually(Duration::from_secs(10), || {
        plughost_sys::process::process_is_gone(pids[0])
            && plughost_sys::process::process_is_gone(pids[2])
    }));
    // The stopped ones get no hooks: the VM starts with the pinned (vetoing) plugin's answer.
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    assert_eq!(
        err,
        "plugin 'signed' failed to load: no longer verifies under the new trust settings: signature does not verify with any trusted key"
    );
}

/// A plugin whose file was swapped since its host loaded it, and that still verifies under new
/// trust settings, is restarted from the verified file (the running bytes were never checked
/// against the new settings).
#[test]
fn reload_with_new_trust_restarts_a_plugin_whose_file_changed() {
    let lib = safe_dir();
    let path = copy_into(lib.path(), "noop");
    let plugins = vec![PluginConfig::new("swapped", &path)];
    let service = TestService::new();
    let mut manager = service.manager(plugins.clone());
    let before = manager.plugins()[0].host_pid.expect("running");
    std::fs::copy(c_plugin("whoami"), &path).unwrap();
    let key = SigningKey::from_bytes(&[3; 32]);
    let report = manager.reconfigure(
        plugins,
        Trust {
            trusted_keys: vec![key.verifying_key()],
            require_verified: false,
        },
        Deadlines::default(),
    );
    assert_eq!(
        report,
        [
            "trust settings changed: running plugins verified again",
            "plugin 'swapped' re-verified under the new trust settings, but its file changed since it was loaded: restarted"]
    );
    let after = manager.plugins()[0].host_pid.expect("running");
    assert_ne!(after, before);
}

/// Issue 15, point 7: a reload that only reorders the plugins says so.
#[test]
fn reload_that_only_reorders_plugins_says_so() {
    let fx = Fixture::new();
    let service = TestService::new();
    let mut manager = service.manager(vec![fx.c("noop"), fx.c("whoami")]);
    let report = manager.reconfigure(
        vec![fx.c("whoami"), fx.c("noop")],
        Trust::default(),
        Deadlines::default(),
    );
    assert_eq!(report, ["plugins reordered: hooks now go to whoami, noop"]);
    let names: Vec<String> = manager.plugins().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["whoami", "noop"]);
}
