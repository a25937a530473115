//! The two programs as a new user meets them: which socket they use, which host binary plughostd
//! runs plugins in (and its refusal to start without one), the `--` hint, and the generated man
//! pages and completions. None of this needs root: plughostd without it serves plugins and
//! registrations.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// An explicit `--socket` wins over `$PLUGHOST_SOCKET`, in plughostd and in plughostctl.
#[test]
fn explicit_socket_wins_over_the_environment_in_both_programs() {
    let world = World::new(vec![]);
    world.write_config_now();
    let decoy = world.dir.path().join("decoy.sock");
    let mut command = world.daemon_command();
    command.env("PLUGHOST_SOCKET", &decoy);
    let daemon = world.start_command(command);
    assert!(!decoy.exists(), "plughostd listened on $PLUGHOST_SOCKET");

    let socket = world.socket();
    let out = Command::new(plughostctl())
        .arg("--socket")
        .arg(&socket)
        .args(["--json", "vm", "status"])
        .env("PLUGHOST_SOCKET", &decoy)
        .stdin(Stdio::null())
        .output()
        .expect("run plughostctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the flag, the environment is used (and here names no daemon).
    let out = Command::new(plughostctl())
        .args(["vm", "status"])
        .env("PLUGHOST_SOCKET", &decoy)
        .stdin(Stdio::null())
        .output()
        .expect("run plughostctl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach plughostd at {}", decoy.display())),
        "{stderr}"
    );
    daemon.terminate();
}

/// plughostd names the host binary it uses; with plugins configured and no host binary, it
/// refuses to start and says where it looked.
#[test]
fn plughostd_names_its_host_binary_and_refuses_to_start_without_one() {
    let world = World::new(vec![c("noop")]);
    world.write_config_now();
    let daemon = world.start();
    assert!(
        daemon.log_text().contains(&format!(
            "plugin host binary: {} (host_binary in {})",
            host_binary().display(),
            world.config_path().display()
        )),
        "{}",
        daemon.log_text()
    );
    // The host says what Landlock lets the plugin open, and which keys allow more.
    let rules = format!(
        "write_paths ({}); any other open fails with EACCES (Permission denied): add the path to read_paths or write_paths in the plugin's configuration",
        world.fx.dir.path().display()
    );
    wait_until("the host's Landlock line", || {
        let log = daemon.log_text();
        log.contains(&rules) || log.contains("Landlock not enforced")
    });
    daemon.terminate();

    // A config without host_binary: $PLUGHOST_HOST names a missing file.
    let config = std::fs::read_to_string(world.config_path()).expect("config");
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("host_binary"))
        .map(|l| format!("{l}\n"))
        .collect();
    world.write_bad_config(&config);
    let missing = world.dir.path().join("no-such-host");
    let out = world
        .daemon_command()
        .env("PLUGHOST_HOST", &missing)
        .output()
        .expect("run plughostd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "plughostd: the plugin host binary {} ($PLUGHOST_HOST) is not an executable file: ",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!world.socket().exists());

    // No hint at all: plughostd finds the host beside itself (cargo puts both in target/debug).
    let mut command = world.daemon_command();
    command.env_remove("PLUGHOST_HOST");
    let daemon = world.start_command(command);
    let beside = std::path::Path::new(plughostd()).with_file_name("plughost-host");
    assert!(
        daemon.log_text().contains(&format!(
            "plugin host binary: {} (beside plughostd)",
            beside.display()
        )),
        "{}",
        daemon.log_text()
    );
    daemon.terminate();
}

/// `plughostctl exec id` (and `csession run NAME id`) fail as clap says, with a hint at `--`.
#[test]
fn a_command_without_dashes_gets_a_hint() {
    for (args, hint) in [
        (
            &["exec", "id", "-u"][..],
            "tip: put the command after `--`: `plughostctl exec [--distro NAME] -- id [ARGS...]`",
        ),
        (
            &["csession", "run", "s", "id"][..],
            "tip: put the command after `--`: `plughostctl csession run NAME -- id [ARGS...]`",
        ),
    ] {
        let out = Command::new(plughostctl())
            .args(args)
            .env("PLUGHOST_SOCKET", "/nonexistent/plughostd.sock")
            .stdin(Stdio::null())
            .output()
            .expect("run plughostctl");
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("unexpected argument 'id' found"),
            "{stderr}"
        );
        assert!(stderr.trim_end().ends_with(hint), "{stderr}");
    }
}

/// `__generate-docs DIR` (what `make install` runs) writes every page and completion.
#[test]
fn both_programs_generate_their_man_pages_and_completions() {
    let dir = tempfile::tempdir().expect("tempdir");
    for program in [plughostctl(), plughostd()] {
        let status = Command::new(program)
            .arg("__generate-docs")
            .arg(dir.path())
            .stdin(Stdio::null())
            .status()
            .expect("run");
        assert!(status.success(), "{program}: {status}");
    }
    let read = |path: &str| {
        std::fs::read_to_string(dir.path().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let page = read("man/man8/plughostd.8");
    assert!(page.contains("\\-\\-socket"), "{page}");
    let page = read("man/man1/plughostctl.1");
    assert!(page.contains("plughostctl\\-exec(1)"), "{page}");
    let page = read("man/man1/plughostctl-distro-register.1");
    assert!(page.contains("root filesystem"), "{page}");
    assert!(read("bash-completion/completions/plughostctl").contains("csession"));
    assert!(read("zsh/site-functions/_plughostctl").contains("csession"));
    assert!(read("fish/vendor_completions.d/plughostctl.fish").contains("csession"));
    assert!(read("bash-completion/completions/plughostd").contains("state-dir"));
    // Hidden subcommands stay hidden.
    let pages: Vec<String> = std::fs::read_dir(dir.path().join("man/man8"))
        .expect("man8")
        .chain(std::fs::read_dir(dir.path().join("man/man1")).expect("man1"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!pages.iter().any(|p| p.contains("__")), "{pages:?}");
}
