//! plughostd under hostile users (issue 12): user paths read with the user's rights and bounded,
//! a control socket no user can starve, plugin hosts refused, per-user limits, escaped logs,
//! strict requests, and a state file that survives SIGKILL mid-registration. Real daemons, real
//! `plughostctl` processes, real uids.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// An unprivileged uid with no passwd entry, used as the hostile user (not 65534: plugin hosts
/// run as nobody, and that uid is refused).
const USER: u32 = 65532;

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).expect("canonicalize")
}

fn register_as(daemon: &Daemon, uid: u32, name: &str, rootfs: &Path) -> Ctl {
    let rootfs = rootfs.to_str().expect("utf-8 path");
    if uid == 0 {
        daemon.ctl(&["distro", "register", name, "--rootfs", rootfs])
    } else {
        daemon.ctl_as(uid, &["distro", "register", name, "--rootfs", rootfs])
    }
}

fn replace_os_release(rootfs: &Path) -> PathBuf {
    let path = rootfs.join("etc/os-release");
    std::fs::remove_file(&path).expect("remove os-release");
    path
}

/// Point 1: `etc/os-release -> /dev/zero` (and a real character device) is refused, never read;
/// the daemon runs under an address-space limit, so were it read it would die, not the machine.
#[test]
fn os_release_as_dev_zero_or_a_device_is_refused_and_never_read() {
    if !need_root("os_release_as_dev_zero_or_a_device_is_refused_and_never_read") {
        return;
    }
    let world = World::new(vec![]);
    let rootfs = make_rootfs(world.dir.path());
    let os_release = replace_os_release(&rootfs);
    std::os::unix::fs::symlink("/dev/zero", &os_release).expect("symlink");
    let mut daemon = world.start();
    let limit = rustix::process::Rlimit {
        current: Some(2 << 30),
        maximum: Some(2 << 30),
    };
    let pid = rustix::process::Pid::from_raw(daemon.pid() as i32).expect("pid");
    rustix::process::prlimit(Some(pid), rustix::process::Resource::As, limit).expect("prlimit");

    let shown = canonical(&rootfs).display().to_string();
    register_as(&daemon, 0, "zero", &rootfs).fails_with(&format!(
        "rootfs {shown}: etc/os-release is a symbolic link, not a regular file"
    ));
    std::fs::remove_file(&os_release).expect("remove symlink");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &os_release,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .expect("mknod /dev/zero's twin");
    register_as(&daemon, USER, "zero", &rootfs).fails_with(&format!(
        "rootfs {shown}: etc/os-release is a character device, not a regular file"
    ));
    assert!(daemon.is_running(), "{}", daemon.log_text());
    let list = daemon.ctl(&["--json", "distro", "list"]).ok().json();
    assert_eq!(list["distros"].as_array().map(Vec::len), Some(0), "{list}");
    // os-release is a symlink in most distributions: the fallback file is then read.
    std::fs::remove_file(&os_release).expect("remove device");
    std::os::unix::fs::symlink("../usr/lib/os-release", &os_release).expect("symlink");
    std::fs::create_dir_all(rootfs.join("usr/lib")).expect("mkdir");
    std::fs::write(
        rootfs.join("usr/lib/os-release"),
        "ID=linked\nVERSION_ID=3\n",
    )
    .expect("write");
    let d = register_as(&daemon, USER, "linked", &rootfs).ok();
    assert!(d.stdout.contains("linked"), "{}", d.stdout);
    let list = daemon
        .ctl_as(USER, &["--json", "distro", "list"])
        .ok()
        .json();
    assert_eq!(list["distros"][0]["flavor"], "linked", "{list}");
    assert_eq!(list["distros"][0]["version"], "3", "{list}");
}

/// Point 2: a FIFO at `etc/os-release` is refused at once; nobody waits for a writer.
#[test]
fn fifo_at_os_release_blocks_no_one() {
    if !need_root("fifo_at_os_release_blocks_no_one") {
        return;
    }
    let world = World::new(vec![]);
    let rootfs = make_rootfs(world.dir.path());
    let os_release = replace_os_release(&rootfs);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &os_release,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let daemon = world.start();
    let mut register = Command::new(plughostctl())
        .env("PLUGHOST_SOCKET", &daemon.socket)
        .args(["distro", "register", "fifo", "--rootfs"])
        .arg(&rootfs)
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plughostctl");
    // Others are served meanwhile, and the registration ends without anyone writing the FIFO.
    daemon.ctl(&["plugins"]).ok();
    daemon.ctl_as(65531, &["vm", "status"]).ok();
    wait_until("the registration answers", || {
        matches!(register.try_wait(), Ok(Some(_)))
    });
    let out = register.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "rootfs {}: etc/os-release is a FIFO, not a regular file",
            canonical(&rootfs).display()
        )
    );
}

/// Point 3: files the user cannot read are not read for them: a symlink to a root-only file is
/// not followed, a hard link to it is opened with the user's rights (and refused).
#[test]
fn root_only_files_are_not_disclosed_through_a_rootfs() {
    if !need_root("root_only_files_are_not_disclosed_through_a_rootfs") {
        return;
    }
    let world = World::new(vec![]);
    let secret = world.dir.path().join("secret");
    std::fs::write(&secret, "ID=secretos\nVERSION_ID=42\n").expect("write secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let rootfs = make_rootfs(world.dir.path());
    let os_release = replace_os_release(&rootfs);
    std::os::unix::fs::symlink(&secret, &os_release).expect("symlink");
    let daemon = world.start();
    let shown = canonical(&rootfs).display().to_string();
    let out = register_as(&daemon, USER, "s", &rootfs).fails_with(&format!(
        "rootfs {shown}: etc/os-release is a symbolic link, not a regular file"
    ));
    assert!(!out.stderr.contains("secretos"));
    std::fs::remove_file(&os_release).expect("remove symlink");
    std::fs::hard_link(&secret, &os_release).expect("hard link");
    register_as(&daemon, USER, "s", &rootfs).fails_with(&format!(
        "rootfs {shown}: etc/os-release: Permission denied (os error 13)"
    ));
    let list = daemon.ctl_as(USER, &["distro", "list"]).ok();
    assert!(!list.stdout.contains("secretos"), "{}", list.stdout);
    // Root may read it: root acts as root.
    let d = daemon
        .ctl(&["--json", "distro", "register", "s", "--rootfs", &shown])
        .ok()
        .json();
    assert_eq!(d["flavor"], "secretos");
}

/// Point 3: `--rootfs` beneath a directory the user cannot search gives the same error whether the
/// path exists or not, and such a directory itself cannot be registered.
#[test]
fn rootfs_beneath_a_private_directory_is_no_existence_oracle() {
    if !need_root("rootfs_beneath_a_private_directory_is_no_existence_oracle") {
        return;
    }
    let world = World::new(vec![]);
    let private = world.dir.path().join("private");
    std::fs::create_dir_all(private.join("exists")).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let daemon = world.start();
    let existing = register_as(&daemon, USER, "x", &private.join("exists"));
    let missing = register_as(&daemon, USER, "x", &private.join("missing"));
    assert_ne!(existing.code, 0);
    assert_eq!(
        existing.stderr.trim_end(),
        format!(
            "rootfs {}: Permission denied (os error 13)",
            private.join("exists").display()
        )
    );
    assert_eq!(
        existing.stderr.replace("exists", "NAME"),
        missing.stderr.replace("missing", "NAME")
    );
    register_as(&daemon, USER, "x", &private).fails_with(&format!(
        "rootfs {}: Permission denied (os error 13)",
        private.display()
    ));
    // Root is root: the directory is registered (and pinned).
    register_as(&daemon, 0, "x", &private.join("exists")).ok();
}

/// The helper process of `connection_flood_does_not_starve_root`: run as another uid, it opens
/// 128 connections, says `connected`, then trickles one byte a second into each (a request that
/// never ends) and prints each answer.
#[test]
#[ignore = "helper process, run by connection_flood_does_not_starve_root"]
fn flood_helper() {
    let Ok(socket) = std::env::var("PH_FLOOD_SOCKET") else {
        panic!("run only by connection_flood_does_not_starve_root");
    };
    // A daemon busy answering the over-limit connections (on one CPU, say) may be slow to accept:
    // retry, and say why on stdout (the test reads it) rather than die silently.
    let connect = || {
        let mut last = None;
        for _ in 0..100 {
            match UnixStream::connect(&socket) {
                Ok(stream) => return stream,
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        println!("connect failed: {last:?}");
        std::process::exit(1)
    };
    let streams: Vec<UnixStream> = (0..128).map(|_| connect()).collect();
    println!("connected");
    let threads: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                let mut reply = Vec::new();
                for _ in 0..30 {
                    let _ = stream.write_all(b" ");
                    let mut chunk = [0u8; 512];
                    match stream.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => reply.extend_from_slice(&chunk[..n]),
                        Err(_) => continue,
                    }
                }
                String::from_utf8_lossy(&reply).trim_end().to_owned()
            })
        })
        .collect();
    for t in threads {
        println!("reply {}", t.join().expect("thread"));
    }
}

/// Point 4: one uid holding 128 connections that never finish a request cannot deny root:
/// only `limits.connections` of them are admitted, those are dropped at the request deadline
/// however slowly they trickle, and root's `plugins` and `shutdown` are served meanwhile.
#[test]
fn connection_flood_does_not_starve_root() {
    if !need_root("connection_flood_does_not_starve_root") {
        return;
    }
    let world = World::new(vec![]);
    let daemon = world.start();
    // Round 1: root's `plugins` while the flood lasts; then what each connection was told.
    let (mut helper, mut lines) = start_flood(&daemon);
    let plugins = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert!(plugins["plugins"].is_array(), "{plugins}");
    let replies: Vec<String> = lines
        .by_ref()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("reply ").map(str::to_owned))
        .collect();
    assert!(helper.wait().expect("wait").success());
    assert_eq!(replies.len(), 128);
    let timed_out = replies
        .iter()
        .filter(|r| r.contains("timed out waiting for the request (5 s for all of it)"))
        .count();
    let busy = replies
        .iter()
        .filter(|r| {
            r.contains(&format!(
                "plughostd is busy: uid {USER} has 16 connections open"
            ))
        })
        .count();
    assert_eq!((timed_out, busy), (16, 112), "{replies:?}");
    // Round 2: root's `shutdown` while the flood lasts.
    let (mut helper, _lines) = start_flood(&daemon);
    daemon.shutdown();
    let _ = helper.kill();
    let _ = helper.wait();
}

/// Starts `flood_helper` as [`USER`] and waits until its 128 connections are made.
fn start_flood(
    daemon: &Daemon,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut helper = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "flood_helper", "--nocapture"])
        .env("PH_FLOOD_SOCKET", &daemon.socket)
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the helper");
    let mut lines = BufReader::new(helper.stdout.take().expect("stdout")).lines();
    loop {
        let Some(line) = lines.next() else {
            panic!(
                "the helper ({:?}) ended before it connected: {:?}",
                std::env::current_exe(),
                helper.wait()
            );
        };
        let line = line.expect("read the helper");
        // With one test thread (one CPU), libtest prints `test flood_helper ... ` before the test
        // runs, so the helper's first line follows it on the same line.
        let line = line.strip_prefix("test flood_helper ... ").unwrap_or(&line);
        assert!(!line.starts_with("connect failed"), "the helper: {line}");
        if line == "connected" {
            break;
        }
    }
    (helper, lines)
}

/// Point 4 and 8: long `exec`s of one uid: at most `limits.processes` (12) run, the others are
/// refused at once (by that limit, or by the connection bound while the refused ones are still
/// connected); root is served meanwhile (its `plugins` and its own `exec`).
#[test]
fn long_execs_of_one_user_do_not_starve_root() {
    if !need_root("long_execs_of_one_user_do_not_starve_root") {
        return;
    }
    let world = World::new(vec![]);
    let daemon = world.start();
    let mut clients: Vec<std::process::Child> = (0..20)
        .map(|_| {
            Command::new(plughostctl())
                .env("PLUGHOST_SOCKET", &daemon.socket)
                .args(["exec", "--", "cat"])
                .uid(USER)
                .gid(USER)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn plughostctl")
        })
        .collect();
    // Each cat waits for its stdin, which stays open: 12 run, 8 are refused at once.
    wait_until("eight execs are refused", || {
        clients
            .iter_mut()
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .filter(|exited| *exited)
            .count()
            == 8
    });
    daemon.ctl(&["plugins"]).ok();
    assert_eq!(
        daemon.ctl(&["exec", "--", "echo", "root"]).ok().stdout,
        "root\n"
    );
    let mut refused = 0;
    for mut client in clients {
        drop(client.stdin.take());
        let out = client.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            continue;
        }
        let limit =
            format!("uid {USER} already runs 12 programs through plughostd: the limit is 12");
        let busy =
            format!("plughostd is busy: uid {USER} has 16 connections open (the limit is 16)");
        assert!(
            stderr.trim_end() == limit || stderr.trim_end() == busy,
            "{stderr}"
        );
        refused += 1;
    }
    assert_eq!(refused, 8);
}

/// Point 5: the uid plugin hosts run as gets no control request served.
#[test]
fn plugin_host_uid_is_refused() {
    if !need_root("plugin_host_uid_is_refused") {
        return;
    }
    let world = World::new(vec![c("noop")]);
    let daemon = world.start();
    let host_uid = plughost::lookup_user("plughost")
        .or_else(|| plughost::lookup_user("nobody"))
        .map_or(65534, |(uid, _)| uid);
    if host_uid != 65534 {
        // A dedicated host user is refused by its uid alone.
        daemon.ctl_as(host_uid, &["exec", "--", "true"]).fails_with(&format!(
            "plughostd refuses control requests from plugin hosts: uid {host_uid} is the user of plugin 'noop'"
        ));
    }
    // Whatever its uid, a process in the host's pid namespace is the host's (nsenter stands for a
    // plugin's double-forked, setsid() child there).
    let host_pid = daemon.ctl(&["--json", "plugins"]).ok().json()["plugins"][0]["host_pid"]
        .as_u64()
        .expect("host pid");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--pid=/proc/{host_pid}/ns/pid_for_children"))
        .arg("--")
        .arg(plughostctl())
        .args(["exec", "--", "true"])
        .env("PLUGHOST_SOCKET", world.socket())
        .output()
        .expect("run nsenter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("plughostd refuses control requests from plugin hosts: process ")
            && stderr.contains("lives in the pid namespace of plugin 'noop'"),
        "{stderr}"
    );
    daemon.ctl_as(USER, &["vm", "status"]).ok();
    // `nobody` itself, outside any host, is an ordinary client.
    daemon.ctl_as(65534, &["vm", "status"]).ok();
    assert!(daemon.log_text().contains("control request refused"));
}

/// Point 7: a SIGHUP that requires verified plugins stops the running unverified one, by name.
#[test]
fn reload_requiring_verification_stops_unverified_plugins() {
    if !need_root("reload_requiring_verification_stops_unverified_plugins") {
        return;
    }
    let mut world = World::new(vec![c("noop")]);
    let daemon = world.start();
    let before = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(before["plugins"][0]["state"], "ready", "{before}");
    world.extra_config = "require_verified = true\n".into();
    world.write_config_now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.pid() as i32).expect("pid"),
        rustix::process::Signal::HUP,
    )
    .expect("SIGHUP");
    let expected = "configuration reloaded: plugin 'noop' failed to load: no longer verifies under the new trust settings: no sha256 pin or signature, and require_verified is set: stopped";
    wait_until("the reload is logged", || {
        daemon.log_text().contains(expected)
    });
    let after = daemon.ctl(&["--json", "plugins"]).ok().json();
    assert_eq!(after["plugins"][0]["state"], "failed", "{after}");
    assert!(after["plugins"][0]["host_pid"].is_null(), "{after}");
}

/// Point 8: per-user limits, with errors that name them; root is not bounded.
#[test]
fn per_user_limits_are_enforced_with_clear_errors() {
    if !need_root("per_user_limits_are_enforced_with_clear_errors") {
        return;
    }
    let mut world = World::new(vec![]);
    world.extra_config =
        "limits = { distributions = 1, container_sessions = 1, processes = 1 }\n".into();
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    register_as(&daemon, USER, "a", &rootfs).ok();
    register_as(&daemon, USER, "b", &rootfs).fails_with(&format!(
        "1 distributions are registered for uid {USER}: the limit is 1 (unregister one first)"
    ));
    register_as(&daemon, 0, "a", &rootfs).ok();
    register_as(&daemon, 0, "b", &rootfs).ok();
    daemon.ctl_as(USER, &["csession", "create", "one"]).ok();
    daemon
        .ctl_as(USER, &["csession", "create", "two"])
        .fails_with(&format!(
            "uid {USER} has 1 container sessions: the limit is 1 (stop one first)"
        ));
    // One program at a time: the first (a cat that echoes a line, proving it runs) holds the slot.
    let mut first = Command::new(plughostctl())
        .env("PLUGHOST_SOCKET", &daemon.socket)
        .args(["exec", "--", "cat"])
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plughostctl");
    let mut stdin = first.stdin.take().expect("stdin");
    stdin.write_all(b"running\n").expect("write");
    let mut stdout = BufReader::new(first.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert_eq!(line, "running\n");
    daemon
        .ctl_as(USER, &["exec", "--", "true"])
        .fails_with(&format!(
            "uid {USER} already runs 1 programs through plughostd: the limit is 1"
        ));
    daemon.ctl(&["exec", "--", "true"]).ok();
    drop(stdin);
    assert!(first.wait().expect("wait").success());
    daemon.ctl_as(USER, &["exec", "--", "true"]).ok();
}

/// Point 8: the bytes of state a user's registrations take are bounded.
#[test]
fn state_bytes_limit_refuses_a_registration() {
    if !need_root("state_bytes_limit_refuses_a_registration") {
        return;
    }
    let mut world = World::new(vec![]);
    world.extra_config = "limits = { state_bytes = 64 }\n".into();
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    let out = register_as(&daemon, USER, "a", &rootfs);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .starts_with(&format!("the registrations of uid {USER} would take "))
            && out
                .stderr
                .trim_end()
                .ends_with("bytes of state: the limit is 64"),
        "{}",
        out.stderr
    );
    assert!(!world.state_dir().join("distributions.json").exists());
}

/// Point 10: a plugin's carriage return and escape sequences are shown escaped in the log.
#[test]
fn log_lines_escape_control_characters() {
    if !need_root("log_lines_escape_control_characters") {
        return;
    }
    let world = World::new(vec![service_plugin("control_chars")]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    world.fx.wait_for("printed");
    wait_until("the plugin's line is logged", || {
        daemon.log_text().contains("FORGED")
    });
    let log = daemon.log_text();
    assert!(
        log.contains(
            "innocent\\r2026-01-01T00:00:00Z  INFO plughostd: FORGED root logged in\\x1b[2J"
        ),
        "{log}"
    );
    assert!(!log.contains('\r') && !log.contains('\x1b'), "{log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line: {log}"
    );
}

/// Point 10: a request with a field the protocol does not have is refused, with the field named.
#[test]
fn requests_with_unknown_fields_are_refused() {
    if !need_root("requests_with_unknown_fields_are_refused") {
        return;
    }
    let world = World::new(vec![]);
    let daemon = world.start();
    for (request, field) in [
        ("{\"op\":\"vm_status\",\"uid\":0}\n", "uid"),
        (
            "{\"op\":\"distro_stop\",\"name\":\"d\",\"as_user\":1}\n",
            "as_user",
        ),
    ] {
        let mut stream = UnixStream::connect(&daemon.socket).expect("connect");
        stream.write_all(request.as_bytes()).expect("write");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("json");
        assert_eq!(reply["kind"], "invalid", "{reply}");
        let message = reply["message"].as_str().expect("message");
        assert!(
            message.starts_with(&format!(
                "bad request: malformed message: unknown field `{field}`"
            )),
            "{message}"
        );
    }
}

/// The soak's guarantee: SIGKILL during registrations, 10 times; each time the state file parses,
/// holds every acknowledged registration and nothing that was never asked for, and a new daemon
/// starts on it.
#[test]
fn sigkill_mid_registration_keeps_the_state_file_true() {
    if !need_root("sigkill_mid_registration_keeps_the_state_file_true") {
        return;
    }
    let world = World::new(vec![]);
    let rootfs = make_rootfs(world.dir.path());
    let mut acknowledged: Vec<String> = Vec::new();
    let mut asked: Vec<String> = Vec::new();
    for round in 0..10 {
        let mut daemon = world.start();
        let names: Vec<String> = (0..4).map(|i| format!("r{round}-{i}")).collect();
        asked.extend(names.iter().cloned());
        let mut clients: Vec<(String, std::process::Child)> = names
            .iter()
            .map(|name| {
                let child = Command::new(plughostctl())
                    .env("PLUGHOST_SOCKET", &daemon.socket)
                    .args(["distro", "register", name, "--rootfs"])
                    .arg(&rootfs)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn plughostctl");
                (name.clone(), child)
            })
            .collect();
        // Kill as soon as the first answer is in: the others are in flight (or not yet read).
        wait_until("a registration answers", || {
            clients
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
        });
        daemon.child.kill().expect("SIGKILL");
        daemon.child.wait().expect("reap");
        for (name, mut child) in clients {
            if child.wait().expect("wait").success() {
                acknowledged.push(name);
            }
        }
        let text = std::fs::read_to_string(world.state_dir().join("distributions.json"))
            .expect("the state file exists once a registration was acknowledged");
        let state: serde_json::Value = serde_json::from_str(&text).expect("state file parses");
        let stored: Vec<String> = state["distributions"]
            .as_array()
            .expect("distributions")
            .iter()
            .map(|d| d["name"].as_str().expect("name").to_owned())
            .collect();
        for name in &acknowledged {
            assert!(
                stored.contains(name),
                "acknowledged {name} lost: {stored:?}"
            );
        }
        for name in &stored {
            assert!(asked.contains(name), "{name} was never asked for");
        }
    }
    assert!(!acknowledged.is_empty());
    let daemon = world.start();
    let list = daemon.ctl(&["--json", "distro", "list"]).ok().json();
    let listed = list["distros"].as_array().map_or(0, Vec::len);
    assert!(listed >= acknowledged.len(), "{list}");
}

/// The helper process of `a_user_cannot_signal_the_daemon_through_a_thread_acting_for_them`: run
/// as [`USER`], it tries `tgkill(daemon, tid, 0)` (the kernel's permission check for a signal,
/// nothing sent) on every thread of the daemon, over and over, until its stdin closes; then prints
/// `signalled N` (how many tries the kernel allowed) and `scans N`.
#[test]
#[ignore = "helper process, run by a_user_cannot_signal_the_daemon_through_a_thread_acting_for_them"]
fn thread_signal_helper() {
    let Some(pid) = std::env::var("PH_DAEMON_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        panic!("run only by a_user_cannot_signal_the_daemon_through_a_thread_acting_for_them");
    };
    let stdin = std::io::stdin();
    let poll_stdin = || {
        let mut fds = [rustix::event::PollFd::new(
            &stdin,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(1) > 0
    };
    let (mut signalled, mut scans) = (0u64, 0u64);
    println!("started");
    while !poll_stdin() {
        scans += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            break;
        };
        for tid in tasks
            .flatten()
            .filter_map(|t| t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|&tid| tid != pid)
        {
            // SAFETY: tgkill takes plain integers; signal 0 only checks the permission.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
            if rc == 0 {
                signalled += 1;
            }
        }
    }
    println!("signalled {signalled}");
    println!("scans {scans}");
}

/// A thread that opens a user's files for them (`userfs`) takes only their file identity: were
/// its real or saved uid theirs, the kernel would let them signal that thread, and SIGSTOP or
/// SIGKILL to one thread stops or kills the whole daemon (with every user's VMs). The user's
/// registrations run while they try to signal every thread of the daemon.
#[test]
fn a_user_cannot_signal_the_daemon_through_a_thread_acting_for_them() {
    if !need_root("a_user_cannot_signal_the_daemon_through_a_thread_acting_for_them") {
        return;
    }
    let world = World::new(vec![]);
    let rootfs = make_rootfs(world.dir.path());
    let mut daemon = world.start();
    let mut helper = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "thread_signal_helper",
            "--nocapture",
        ])
        .env("PH_DAEMON_PID", daemon.pid().to_string())
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the helper");
    let mut lines = BufReader::new(helper.stdout.take().expect("stdout")).lines();
    // libtest's own lines come first; `started` may follow `test ... ` on one line.
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.ends_with("started"));
    assert!(
        started,
        "the helper ended before it started: {:?}",
        helper.wait()
    );
    // Each registration opens the rootfs and reads its os-release as the user (two threads);
    // each unregistration lets the next one run.
    for i in 0..150 {
        register_as(&daemon, USER, "sig", &rootfs).ok();
        daemon.ctl_as(USER, &["distro", "unregister", "sig"]).ok();
        if i % 50 == 0 {
            // And a rootfs they cannot search (the error path).
            register_as(&daemon, USER, "sig", Path::new("/root/x")).fails_starting_with("");
        }
    }
    drop(helper.stdin.take());
    let out: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(helper.wait().expect("wait").success(), "{out:?}");
    assert!(
        out.iter().any(|l| l.ends_with("signalled 0")),
        "the user could signal threads of plughostd: {out:?}"
    );
    assert!(daemon.is_running(), "{}", daemon.log_text());
}

/// Memory-backed scratch: a VM's writable layer, `/tmp` and `/dev/shm` share one tmpfs of
/// `vm_scratch_mib` (no process owns tmpfs pages, so an OOM kill frees none of them), and the VMs
/// of one uid (their VM and a session VM per container session) hold at most `limits.scratch_mib`
/// together; a VM that would pass it is refused with an error that names the limit, and a
/// stopped one gives its share back. Root is not bounded.
#[test]
fn scratch_of_a_users_vms_is_bounded_together() {
    if !need_root("scratch_of_a_users_vms_is_bounded_together") {
        return;
    }
    let mut world = World::new(vec![]);
    world.extra_config = "vm_scratch_mib = 64\nlimits = { scratch_mib = 128 }\n".into();
    let daemon = world.start();
    // 40 MiB in /tmp, then 40 more in /dev/shm: past the VM's one 64 MiB tmpfs.
    let fill = daemon.ctl_as(
        USER,
        &[
            "exec",
            "--",
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/tmp/a bs=1M count=40 2>/dev/null && echo tmp-ok; \
             dd if=/dev/zero of=/dev/shm/b bs=1M count=40 2>&1 | grep -o 'No space left on device'",
        ],
    );
    assert_eq!(
        fill.stdout, "tmp-ok\nNo space left on device\n",
        "{}",
        fill.stderr
    );
    daemon.ctl_as(USER, &["csession", "create", "one"]).ok();
    daemon.ctl_as(USER, &["csession", "create", "two"]).ok();
    daemon
        .ctl_as(USER, &["csession", "run", "one", "--", "true"])
        .ok();
    let refused = format!(
        "uid {USER} has 2 VMs running with 128 MiB of scratch: the limit is 128 MiB (stop one first)"
    );
    daemon
        .ctl_as(USER, &["csession", "run", "two", "--", "true"])
        .fails_with(&refused);
    daemon.ctl_as(USER, &["csession", "stop", "one"]).ok();
    daemon
        .ctl_as(USER, &["csession", "run", "two", "--", "true"])
        .ok();
    daemon.ctl_as(USER, &["vm", "stop"]).ok();
    daemon.ctl_as(USER, &["csession", "create", "three"]).ok();
    daemon
        .ctl_as(USER, &["csession", "run", "three", "--", "true"])
        .ok();
    daemon.ctl_as(USER, &["vm", "start"]).fails_with(&refused);
    // Root: its VM and two session VMs.
    daemon.ctl(&["vm", "start"]).ok();
    for name in ["r1", "r2"] {
        daemon.ctl(&["csession", "create", name]).ok();
        daemon.ctl(&["csession", "run", name, "--", "true"]).ok();
    }
}

/// Processes of `uid` (real) named `comm`, from the host's `/proc`.
fn count_processes(uid: u32, comm: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| {
            let dir = e.path();
            let named = std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == comm);
            named
                && std::fs::read_to_string(dir.join("status")).is_ok_and(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok())
                        == Some(uid)
                })
        })
        .count()
}

/// A fork bomb in a user's VM: the programs plughostd starts there carry `limits.vm_processes` as
/// their RLIMIT_NPROC, which counts the uid's processes in the VM's user namespace, so it cannot
/// take every pid of the host (other users' VMs, the daemon's own helpers). Here 40 `sleep`s are
/// asked for with a limit of 20 (the shell is one of them).
#[test]
fn processes_in_a_users_vm_are_bounded() {
    if !need_root("processes_in_a_users_vm_are_bounded") {
        return;
    }
    let mut world = World::new(vec![]);
    world.extra_config = "limits = { vm_processes = 20 }\n".into();
    let daemon = world.start();
    // The inner shell forks until the kernel refuses (a non-interactive sh then exits); the
    // sleeps stay in the VM, orphaned to its init, until `vm stop`.
    let bomb = daemon.ctl_as(
        USER,
        &[
            "exec",
            "--",
            "/bin/sh",
            "-c",
            "sh -c 'for i in $(seq 40); do sleep 600 >/dev/null 2>&1 & done' 2>/dev/null; echo forked",
        ],
    );
    assert_eq!(bomb.ok().stdout, "forked\n");
    let sleeps = count_processes(USER, "sleep");
    daemon.ctl_as(USER, &["vm", "stop"]).ok();
    assert!((1..20).contains(&sleeps), "{sleeps} sleeps ran");
    // Root's own VM is not bounded.
    let root = daemon.ctl(&[
        "exec",
        "--",
        "/bin/sh",
        "-c",
        "for i in $(seq 40); do sleep 1 & done; wait; echo all",
    ]);
    assert_eq!(root.ok().stdout, "all\n");
}

/// A VM that eats the machine's memory: every process plughostd starts in a VM (its init, the
/// programs run there, and so all their children) starts as the first the kernel's OOM killer takes
/// (`oom_score_adj` 1000), so the daemon, its plugin hosts and other users' programs outlive a
/// runaway program. A default, not a bound: on this kernel any process may lower its own score
/// back to 0 (SECURITY.md, "Not bounded"). The daemon keeps its own score.
#[test]
fn a_users_vm_processes_start_as_the_first_the_oom_killer_takes() {
    if !need_root("a_users_vm_processes_start_as_the_first_the_oom_killer_takes") {
        return;
    }
    let world = World::new(vec![]);
    let daemon = world.start();
    let out = daemon.ctl_as(
        USER,
        &[
            "exec",
            "--",
            "/bin/sh",
            "-c",
            "cat /proc/self/oom_score_adj /proc/1/oom_score_adj",
        ],
    );
    assert_eq!(out.ok().stdout, "1000\n1000\n");
    let own = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", daemon.pid()))
        .expect("the daemon's oom_score_adj");
    assert_ne!(
        own.trim(),
        "1000",
        "the daemon made itself the OOM killer's first choice"
    );
    daemon.ctl_as(USER, &["vm", "stop"]).ok();
}

/// What plughostctl prints comes from plugins and users (a veto's message, a rootfs path, a
/// package, os-release fields): its control characters are shown escaped, so a plugin cannot
/// drive the terminal of the user (root, here) who started a VM, nor forge a line there.
#[test]
fn plughostctl_shows_control_characters_escaped() {
    if !need_root("plughostctl_shows_control_characters_escaped") {
        return;
    }
    let world = World::new(vec![service_plugin("veto_control_chars")]);
    let daemon = world.start();
    let start = daemon.ctl(&["vm", "start"]);
    assert!(
        !start.stderr.contains(['\x1b', '\r', '\u{9b}']),
        "{:?}",
        start.stderr
    );
    start.fails_with(
        "plugin 'veto_control_chars' returned a fatal error: \
         no\\x1b]0;owned\\x07\\rFORGED: all good\\u{9b}2J (status -1 (EPERM))",
    );
    let rootfs = make_rootfs(world.dir.path());
    let weird = world.dir.path().join("root\x1b[2Jfs");
    std::fs::rename(&rootfs, &weird).expect("rename");
    let listed = daemon
        .ctl_as(
            USER,
            &[
                "distro",
                "register",
                "weird",
                "--rootfs",
                weird.to_str().expect("utf-8"),
                "--package",
                "pkg\r\x1b[31m",
            ],
        )
        .ok();
    assert!(
        listed.stdout.contains("pkg\\r\\x1b[31m") && listed.stdout.contains("root\\x1b[2Jfs"),
        "{:?}",
        listed.stdout
    );
    assert!(
        !listed.stdout.contains(['\x1b', '\r']),
        "{:?}",
        listed.stdout
    );
}
