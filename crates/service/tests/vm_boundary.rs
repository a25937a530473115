//! The VM is a security boundary (SECURITY.md, "The VM boundary"): what a plugin's program, or a
//! user's distribution binary a plugin runs, can do to the host. Each test drives the
//! `vm_attacker` C plugin (its attack comes from files in the fixture directory) through a real
//! plughostd, as root, and checks the host afterwards.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

/// `key=yes|no` tokens a script printed (the plugin turns whitespace into `_`).
fn said(out: &str, key: &str) -> String {
    out.split('_')
        .find_map(|t| t.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
        .to_owned()
}

fn setting(world: &World, name: &str, text: &str) {
    std::fs::write(world.fx.dir.path().join(name), text).expect("write the attack");
}

/// `mknod` of the host's root block device, then mounting it, then a remount of `/`.
fn device_attack() -> String {
    let dev = std::fs::metadata("/").expect("stat /").dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    format!(
        "mknod /tmp/blk b {major} {minor} 2>/dev/null && echo mknod=yes || echo mknod=no; \
         mount -t ext4 /tmp/blk /mnt 2>/dev/null && echo blockdev=yes || echo blockdev=no; \
         mount -o remount,rw / 2>/dev/null && echo remount=yes || echo remount=no; "
    )
}

#[test]
fn a_plugins_program_cannot_write_the_host_mount_a_device_or_read_shadow() {
    if !need_root("a_plugins_program_cannot_write_the_host_mount_a_device_or_read_shadow") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    let marker = format!("/var/tmp/plughost-vm-marker-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let newdir = format!("/opt/plughost-vm-mkdir-{}", std::process::id());
    // Open to all when the daemon scans the host's directories, private by the time the VM starts.
    let closed = tempfile::Builder::new()
        .prefix("plughost-closing-")
        .tempdir_in("/opt")
        .expect("tempdir");
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(closed.path().join("secret"), "secret").expect("write");
    std::fs::set_permissions(
        closed.path().join("secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    setting(
        &world,
        "vm_script",
        &format!(
            "touch {marker} && echo created=yes || echo created=no; {}\
             cat /etc/shadow >/dev/null 2>&1 && echo shadow=yes || echo shadow=no; \
             ls /dev | grep -q vd && echo disks=yes || echo disks=no; \
             mkdir -p {newdir}/deep && echo mkdir=yes || echo mkdir=no; \
             ls /root >/dev/null 2>&1 && echo rootdir=yes || echo rootdir=no; \
             cat {closed}/secret >/dev/null 2>&1 && echo closed=yes || echo closed=no; \
             echo uid=$(id -u); read inside outside count < /proc/self/uid_map; echo hostroot=$outside",
            device_attack(),
            closed = closed.path().display(),
            newdir = newdir,
        ),
    );
    let daemon = world.start();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    daemon.ctl(&["vm", "start"]).ok();
    let out = field(&world.fx.wait_for("vm_exec"), "out").to_owned();
    assert_eq!(said(&out, "uid"), "0", "{out}");
    assert_ne!(
        said(&out, "hostroot"),
        "0",
        "root in the VM is root on the host: {out}"
    );
    // The VM's root is writable and private...
    assert_eq!(said(&out, "created"), "yes", "{out}");
    assert_eq!(said(&out, "mkdir"), "yes", "{out}");
    assert!(
        !Path::new(&marker).exists(),
        "a VM program wrote {marker} on the host"
    );
    assert!(
        !Path::new(&newdir).exists(),
        "a VM program made {newdir} on the host"
    );
    // ...and gives no power over the host.
    assert_eq!(said(&out, "mknod"), "no", "{out}");
    assert_eq!(said(&out, "blockdev"), "no", "{out}");
    assert_eq!(said(&out, "remount"), "no", "{out}");
    assert_eq!(said(&out, "shadow"), "no", "{out}");
    assert_eq!(said(&out, "disks"), "no", "{out}");
    assert_eq!(said(&out, "rootdir"), "no", "{out}");
    assert_eq!(
        said(&out, "closed"),
        "no",
        "a directory closed after the scan opened: {out}"
    );
    // The user's own programs: the same VM, the same walls.
    let out = daemon.ctl(&["exec", "--", "sh", "-c", &format!("touch {marker}; true")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!Path::new(&marker).exists());
    daemon.shutdown();
}

#[test]
fn a_users_distribution_binary_run_by_a_plugin_has_no_power_over_the_host() {
    if !need_root("a_users_distribution_binary_run_by_a_plugin_has_no_power_over_the_host") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    // The user's own rootfs, with their own binaries (mount and mknod among them).
    let rootfs = make_rootfs_with(
        world.dir.path(),
        "user-rootfs",
        &["sh", "cat", "echo", "id", "mount", "mknod"],
    );
    chown_tree(&rootfs, 65534);
    setting(
        &world,
        "distro_script",
        &format!(
            "{}echo uid=$(id -u); read inside outside count < /proc/self/uid_map; echo hostroot=$outside",
            device_attack()
        ),
    );
    let daemon = world.start();
    daemon.start_distro_as(65534, "mine", &rootfs);
    let line = world.fx.wait_for("distro_exec");
    assert_eq!(field(&line, "status"), "0", "{line}");
    let out = field(&line, "out").to_owned();
    assert_eq!(said(&out, "uid"), "0", "{out}");
    assert_ne!(said(&out, "hostroot"), "0", "{out}");
    assert_eq!(said(&out, "mknod"), "no", "{out}");
    assert_eq!(said(&out, "blockdev"), "no", "{out}");
    assert_eq!(said(&out, "remount"), "no", "{out}");
    daemon.shutdown();
}

#[test]
fn mount_folder_works_at_any_absolute_path() {
    if !need_root("mount_folder_works_at_any_absolute_path") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    let dir = world.fx.dir.path().display().to_string();
    setting(
        &world,
        "share",
        &format!("{dir} /test-plugin/deep/folder\n{dir}/file /srv/one/file-share"),
    );
    setting(
        &world,
        "vm_script",
        "cat /test-plugin/deep/folder/file; echo; cat /srv/one/file-share",
    );
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    let line = world.fx.wait_for("vm_exec");
    for share in world.fx.events("share") {
        assert_eq!(field(&share, "status"), "0", "{share}");
    }
    // The folder, then the file shared on its own.
    assert_eq!(field(&line, "out"), "OK_OK", "{line}");
    let out = daemon
        .ctl(&["exec", "--", "cat", "/test-plugin/deep/folder/file"])
        .ok();
    assert_eq!(out.stdout, "OK");
    // Nothing of it reached the host.
    assert!(!Path::new("/test-plugin").exists());
    daemon.shutdown();
}

#[test]
fn a_share_gives_the_vm_exactly_the_session_users_rights() {
    if !need_root("a_share_gives_the_vm_exactly_the_session_users_rights") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    // Only root may write the top; `allowed` is the user's.
    let share = world.dir.path().join("share");
    std::fs::create_dir_all(share.join("allowed")).expect("mkdir");
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(share.join("allowed"), Some(65534), Some(65534)).expect("chown");
    setting(&world, "share", &format!("{} /mnt/share", share.display()));
    setting(
        &world,
        "vm_script",
        "echo x > /mnt/share/top 2>/dev/null && echo top=yes || echo top=no; \
         echo x > /mnt/share/allowed/by-root 2>/dev/null && echo allowed=yes || echo allowed=no",
    );
    let daemon = world.start();
    daemon.ctl_as(65534, &["vm", "start"]).ok();
    assert_eq!(field(&world.fx.wait_for("share"), "status"), "0");
    let out = field(&world.fx.wait_for("vm_exec"), "out").to_owned();
    assert_eq!(
        said(&out, "top"),
        "no",
        "the VM's root wrote where the user may not"
    );
    assert_eq!(said(&out, "allowed"), "yes", "{out}");
    assert!(!share.join("top").exists());
    assert!(share.join("allowed/by-root").exists());
    // The user's own programs: their rights, and their files.
    daemon
        .ctl_as(
            65534,
            &["exec", "--", "sh", "-c", "echo y > /mnt/share/top"],
        )
        .code
        .ne(&0)
        .then_some(())
        .expect("the user wrote where they may not");
    daemon
        .ctl_as(
            65534,
            &["exec", "--", "sh", "-c", "echo y > /mnt/share/allowed/mine"],
        )
        .ok();
    let meta = std::fs::metadata(share.join("allowed/mine")).expect("the user's file");
    assert_eq!(meta.uid(), 65534);
    daemon.shutdown();
}

#[test]
fn roots_session_shares_act_with_roots_rights_through_an_idmapped_mount() {
    if !need_root("roots_session_shares_act_with_roots_rights_through_an_idmapped_mount") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    let share = world.dir.path().join("root-share");
    std::fs::create_dir_all(&share).expect("mkdir");
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    setting(&world, "share", &format!("{} /mnt/share", share.display()));
    setting(
        &world,
        "vm_script",
        "echo x > /mnt/share/by-vm-root 2>/dev/null && echo w=yes || echo w=no; \
         stat -c owner=%u /mnt/share/by-vm-root",
    );
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    let out = field(&world.fx.wait_for("vm_exec"), "out").to_owned();
    assert_eq!(said(&out, "w"), "yes", "{out}");
    assert_eq!(said(&out, "owner"), "0", "{out}");
    // On the host the file is root's, not the VM range's.
    let meta = std::fs::metadata(share.join("by-vm-root")).expect("written");
    assert_eq!(meta.uid(), 0);
    daemon.shutdown();
}

#[test]
fn absolute_symlinks_resolve_inside_the_distribution() {
    if !need_root("absolute_symlinks_resolve_inside_the_distribution") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    // Alpine-style: /bin/sh -> /opt/x/busybox, a path the host does not have.
    let rootfs = make_rootfs_with(world.dir.path(), "alpine", &["sh", "cat", "echo"]);
    std::fs::create_dir_all(rootfs.join("opt/x")).expect("mkdir");
    std::fs::rename(rootfs.join("bin/sh"), rootfs.join("opt/x/busybox")).expect("move sh");
    std::os::unix::fs::symlink("/opt/x/busybox", rootfs.join("bin/sh")).expect("symlink");
    assert!(!Path::new("/opt/x/busybox").exists());
    setting(&world, "distro_script", "echo alpine=yes");
    let daemon = world.start();
    daemon.start_distro_as(0, "alp", &rootfs);
    let line = world.fx.wait_for("distro_exec");
    assert_eq!(field(&line, "status"), "0", "{line}");
    assert_eq!(said(field(&line, "out"), "alpine"), "yes");
    let out = daemon
        .ctl(&["exec", "--distro", "alp", "--", "/bin/sh", "-c", "echo in"])
        .ok();
    assert_eq!(out.stdout, "in\n");
    daemon.shutdown();
}

#[test]
fn the_state_file_is_private() {
    if !need_root("the_state_file_is_private") {
        return;
    }
    let world = World::new(vec![]);
    let rootfs = make_rootfs(world.dir.path());
    let daemon = world.start();
    daemon
        .ctl(&[
            "distro",
            "register",
            "td",
            "--rootfs",
            rootfs.to_str().expect("utf-8"),
        ])
        .ok();
    daemon.ctl(&["vm", "start"]).ok();
    for file in ["distributions.json", "id-ranges"] {
        let mode = std::fs::metadata(world.state_dir().join(file))
            .expect("state file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    daemon.shutdown();
}

#[test]
fn an_fd_the_daemon_inherited_does_not_reach_programs() {
    if !need_root("an_fd_the_daemon_inherited_does_not_reach_programs") {
        return;
    }
    let world = World::new(vec![]);
    let secret = world.dir.path().join("inherited-secret");
    std::fs::write(&secret, "secret").expect("write");
    let daemon = world.start_via_shell(&format!("exec 7<{}", secret.display()));
    let out = daemon
        .ctl(&["exec", "--", "sh", "-c", "ls -l /proc/$$/fd; cat <&7"])
        .stdout;
    assert!(!out.contains("inherited-secret"), "{out}");
    assert!(!out.contains("secret\n"), "{out}");
    daemon.shutdown();
}

/// 200 rounds of `exec` racing `vm stop`: every answer is the program's own exit (0), or a clear
/// error saying the VM is stopping or not running; never the helper's 125/126/127.
#[test]
fn exec_racing_vm_stop_gets_the_programs_status_or_a_clear_error() {
    if !need_root("exec_racing_vm_stop_gets_the_programs_status_or_a_clear_error") {
        return;
    }
    let world = World::new(vec![]);
    let daemon = world.start();
    let mut clear_errors = 0;
    for round in 0..200 {
        daemon.ctl(&["vm", "start"]).ok();
        let exec = std::thread::scope(|scope| {
            let exec = scope.spawn(|| daemon.ctl(&["exec", "--", "/bin/true"]));
            if round % 2 == 0 {
                std::thread::yield_now();
            }
            let _ = daemon.ctl(&["vm", "stop"]);
            exec.join().expect("exec thread")
        });
        match exec.code {
            0 => {}
            1 if exec.stderr.contains("is stopping") || exec.stderr.contains("not running") => {
                clear_errors += 1;
            }
            // Killed with the VM after it started: the program's own end.
            137 => {}
            code => panic!("round {round}: exit {code}, stderr {:?}", exec.stderr),
        }
    }
    println!("{clear_errors} of 200 execs met a stopping VM");
    daemon.shutdown();
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("entry").path(), uid);
        }
    }
}

/// A key in the launcher's session keyring: a keyring is inherited across fork and exec, and a
/// process that possesses a keyring may read its keys.
#[test]
#[allow(unsafe_code)] // keyctl and add_key: rustix has no wrapper
fn the_daemons_session_keyring_does_not_reach_programs() {
    if !need_root("the_daemons_session_keyring_does_not_reach_programs") {
        return;
    }
    let world = World::new(vec![]);
    // Credentials (keyrings included) are per thread: a thread of our own joins a new session
    // keyring, adds a key, and starts the daemon, which inherits that keyring.
    let daemon = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
                const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
                // SAFETY: a NULL name asks for a new anonymous session keyring for this thread.
                let ring = unsafe {
                    libc::syscall(
                        libc::SYS_keyctl,
                        KEYCTL_JOIN_SESSION_KEYRING,
                        std::ptr::null::<libc::c_char>(),
                    )
                };
                assert!(ring >= 0, "{}", std::io::Error::last_os_error());
                let payload = b"secret";
                // SAFETY: type and description are NUL-terminated C strings, the payload pointer
                // and length describe `payload`, all alive for the call.
                let key = unsafe {
                    libc::syscall(
                        libc::SYS_add_key,
                        c"user".as_ptr(),
                        c"plughost-test-secret".as_ptr(),
                        payload.as_ptr(),
                        payload.len(),
                        KEY_SPEC_SESSION_KEYRING,
                    )
                };
                assert!(key >= 0, "{}", std::io::Error::last_os_error());
                world.start()
            })
            .join()
            .expect("keyring thread")
    });
    // /proc/keys hides keys whose owner the VM does not map: ask the kernel directly, with a
    // program the VM can see (its /tmp is its own).
    let bin = tempfile::Builder::new()
        .prefix("plughost-keyring-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let probe = bin.path().join("keyring-probe");
    let source = bin.path().join("keyring-probe.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\n#include <sys/syscall.h>\n\
         int main(void) {\n\
           long key = syscall(SYS_keyctl, 10 /* KEYCTL_SEARCH */, -3 /* @s */, \"user\",\n\
                              \"plughost-test-secret\", 0);\n\
           printf(key >= 0 ? \"found\\n\" : \"absent\\n\");\n\
           return 0;\n\
         }\n",
    )
    .expect("write the probe");
    let built = std::process::Command::new("cc")
        .arg("-o")
        .arg(&probe)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(built.success());
    let out = daemon
        .ctl(&["exec", "--", probe.to_str().expect("utf-8")])
        .ok()
        .stdout;
    assert_eq!(out, "absent\n");
    daemon.shutdown();
}

/// The same race for container sessions: `csession run` against `csession stop`.
#[test]
fn csession_run_racing_csession_stop_gets_the_programs_status_or_a_clear_error() {
    if !need_root("csession_run_racing_csession_stop_gets_the_programs_status_or_a_clear_error") {
        return;
    }
    let world = World::new(vec![]);
    let daemon = world.start();
    for round in 0..100 {
        let name = format!("race{round}");
        daemon.ctl(&["csession", "create", &name]).ok();
        daemon
            .ctl(&["csession", "run", &name, "--", "/bin/true"])
            .ok();
        let run = std::thread::scope(|scope| {
            let run = scope.spawn(|| daemon.ctl(&["csession", "run", &name, "--", "/bin/true"]));
            let _ = daemon.ctl(&["csession", "stop", &name]);
            run.join().expect("run thread")
        });
        let clear = run.code == 1
            && (run.stderr.contains("is stopping")
                || run.stderr.contains("no container session named"));
        assert!(
            run.code == 0 || run.code == 137 || clear,
            "round {round}: exit {}, stderr {:?}",
            run.code,
            run.stderr
        );
    }
    daemon.shutdown();
}

/// A program in a VM cannot reach the terminal of whoever started the daemon (TIOCSTI into root's
/// shell, reading its keystrokes): every sandbox helper starts a session of its own.
#[test]
fn vm_programs_have_no_controlling_terminal_of_the_daemons() {
    if !need_root("vm_programs_have_no_controlling_terminal_of_the_daemons") {
        return;
    }
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: needs script(1) from util-linux");
        return;
    }
    let world = World::new(vec![]);
    // script(1) runs the daemon on a pseudo-terminal of its own, as a root shell would.
    let daemon = world.start_under_terminal();
    let out = daemon
        .ctl(&[
            "exec",
            "--",
            "sh",
            "-c",
            "(exec 3</dev/tty) 2>/dev/null && echo tty=yes || echo tty=no",
        ])
        .ok();
    assert_eq!(out.stdout, "tty=no\n");
    daemon.shutdown();
}

/// `exec` whose client goes away takes its program with it (it would otherwise run on, past the
/// user's process limit).
#[test]
fn an_exec_whose_client_is_killed_leaves_no_program_behind() {
    if !need_root("an_exec_whose_client_is_killed_leaves_no_program_behind") {
        return;
    }
    let world = World::new(vec![]);
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    let marker = format!("{}", 700_000 + std::process::id() % 100_000);
    let mut client = std::process::Command::new(plughostctl())
        .env("PLUGHOST_SOCKET", world.socket())
        .args(["exec", "--", "sleep", &marker])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("plughostctl");
    let running = || {
        std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| c == format!("sleep\0{marker}\0").as_bytes())
    };
    wait_until("the program runs", running);
    client.kill().expect("kill the client");
    let _ = client.wait();
    wait_until("the program is gone", || !running());
    daemon.shutdown();
}

/// Nothing is created in a user's rootfs: without `/mnt` the distribution gets no plugin mounts,
/// and the log says so; without `/proc` it is refused, naming why.
#[test]
fn a_rootfs_without_mnt_is_logged_and_without_proc_refused() {
    if !need_root("a_rootfs_without_mnt_is_logged_and_without_proc_refused") {
        return;
    }
    let world = World::new(vec![]);
    let no_mnt = make_rootfs_with(world.dir.path(), "no-mnt", &["sh", "cat"]);
    std::fs::remove_dir(no_mnt.join("mnt")).expect("rmdir mnt");
    let no_proc = make_rootfs_with(world.dir.path(), "no-proc", &["sh", "cat"]);
    std::fs::remove_dir(no_proc.join("proc")).expect("rmdir proc");
    let daemon = world.start();
    for (name, rootfs) in [("nomnt", &no_mnt), ("noproc", &no_proc)] {
        daemon
            .ctl(&[
                "distro",
                "register",
                name,
                "--rootfs",
                rootfs.to_str().expect("utf-8"),
            ])
            .ok();
    }
    daemon.ctl(&["distro", "start", "nomnt"]).ok();
    wait_until("the missing /mnt is logged", || {
        daemon.log_text().contains(
            "the rootfs has no /mnt directory: plugin mounts do not reach this distribution",
        )
    });
    assert!(
        !no_mnt.join("mnt").exists(),
        "a directory was made in the user's rootfs"
    );
    let out = daemon.ctl(&["distro", "start", "noproc"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("the rootfs has no /proc directory"),
        "{}",
        out.stderr
    );
    assert!(!no_proc.join("proc").exists());
    daemon.shutdown();
}

/// A VM's root can take any id of its range, each a host uid of its own, and reaches the control
/// socket wherever the VM sees the host's `/tmp` or `/run`: here a distribution whose rootfs is
/// the host's `/`, where a plugin runs a program as the VM's root. It is refused, never served as
/// a user (each id of the range would otherwise have a user's limits: connections, registrations,
/// state bytes, container sessions).
#[test]
fn a_vms_root_reaching_the_control_socket_is_refused() {
    if !need_root("a_vms_root_reaching_the_control_socket_is_refused") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    let ctl = world.dir.path().join("ctl");
    std::fs::copy(plughostctl(), &ctl).expect("copy plughostctl");
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    setting(
        &world,
        "distro_script",
        &format!(
            "echo uid=$(id -u); {} --socket {} distro list 2>&1",
            ctl.display(),
            world.socket().display()
        ),
    );
    let daemon = world.start();
    daemon.start_distro_as(65534, "host", Path::new("/"));
    let line = world.fx.wait_for("distro_exec");
    assert_eq!(field(&line, "status"), "0", "{line}");
    let out = field(&line, "out").replace('_', " ");
    assert!(out.starts_with("uid=0 "), "{out}");
    assert!(
        out.contains("plughostd refuses control requests from inside VMs: uid ")
            && out.contains(" is an id of a VM, not a user"),
        "{out}"
    );
    daemon.shutdown();
}

/// The peak resident memory of process `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A program a plugin runs writes its stderr into the daemon's log: one endless line (200 MB
/// without a newline here; a user's binary in their distribution can do it, and the VM's root can
/// take a distribution init's log pipe) is cut at 4 KiB as it is read, never held whole (the
/// daemon grew by the line's size, to its OOM kill and every user's VMs with it). Then 20 000
/// short lines: past a burst of 200, at most 20 a second are logged, the rest counted.
#[test]
fn an_endless_stderr_line_does_not_grow_the_daemon() {
    if !need_root("an_endless_stderr_line_does_not_grow_the_daemon") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    setting(
        &world,
        "vm_script",
        "head -c 200000000 /dev/zero | tr '\\0' a >&2; echo >&2; seq 20000 >&2; echo done",
    );
    let daemon = world.start();
    daemon.ctl(&["vm", "start"]).ok();
    let line = world.fx.wait_for("vm_exec");
    assert_eq!(field(&line, "out"), "done_", "{line}");
    wait_until("the cut line is logged", || {
        daemon.log_text().contains("aaaa [line cut at 4096 bytes]")
    });
    let peak = peak_kib(daemon.pid());
    assert!(peak < 100 * 1024, "plughostd peaked at {peak} KiB");
    wait_until("the dropped lines are counted", || {
        daemon
            .log_text()
            .contains("lines not logged: more than 20 a second]")
    });
    let logged = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("vm_attacker /bin/sh: "))
        .count();
    assert!(
        (2..2000).contains(&logged),
        "{logged} lines of the flood logged"
    );
    daemon.shutdown();
}

/// A distribution's init is the VM's root's own process in name only: it is exec'd as the host's
/// root and becomes the VM's root after, so it is not dumpable and its memory belongs to the
/// host's user namespace. The VM's root (a plugin's program in the distribution) can neither
/// ptrace it nor read its fds, whose stdout and stderr are pipes to the daemon.
#[test]
fn a_vms_root_cannot_take_the_distribution_inits_fds() {
    if !need_root("a_vms_root_cannot_take_the_distribution_inits_fds") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    let rootfs = make_rootfs_with(world.dir.path(), "fds-rootfs", &["sh", "ls", "echo"]);
    setting(
        &world,
        "distro_script",
        "ls /proc/1/fd >/dev/null 2>&1 && echo initfds=yes || echo initfds=no; \
         ls /proc/1/ >/dev/null 2>&1 && echo initdir=yes || echo initdir=no",
    );
    let daemon = world.start();
    daemon.start_distro_as(65534, "fds", &rootfs);
    let line = world.fx.wait_for("distro_exec");
    let out = field(&line, "out").to_owned();
    assert_eq!(said(&out, "initdir"), "yes", "{out}");
    assert_eq!(said(&out, "initfds"), "no", "{out}");
    // The distribution still serves its user.
    let runs = daemon
        .ctl_as(
            65534,
            &["exec", "--distro", "fds", "--", "/bin/echo", "runs"],
        )
        .ok();
    assert_eq!(runs.stdout, "runs\n");
    daemon.shutdown();
}

/// The VM's root owns `/etc` (and `/lib64`, `/usr/lib`...) in the VM: a program of the daemon
/// exec'd there as the host's root would take its loader, its libraries and `/etc/ld.so.preload`
/// from files the VM's root wrote, and run them as the host's root. A distribution's init is
/// exec'd in the host's mount namespace and enters the VM's only after: the VM's preload library
/// (which says whether it can read `/etc/shadow`, as the host's root can and the VM's root
/// cannot) is never loaded into it.
#[test]
fn the_vms_preload_library_never_runs_in_a_daemon_helper() {
    if !need_root("the_vms_preload_library_never_runs_in_a_daemon_helper") {
        return;
    }
    let world = World::new(vec![c("vm_attacker")]);
    // On the root file system (the VM's lower layer), so the VM sees it.
    let dir = tempfile::Builder::new()
        .prefix("plughost-preload-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let source = dir.path().join("preload.c");
    std::fs::write(
        &source,
        "#include <fcntl.h>\n#include <stdio.h>\n\
         __attribute__((constructor)) static void said(void) {\n\
           int fd = open(\"/etc/shadow\", O_RDONLY | O_CLOEXEC);\n\
           fprintf(stderr, \"PRELOADED hostroot=%s\\n\", fd >= 0 ? \"yes\" : \"no\");\n\
         }\n",
    )
    .expect("write the preload source");
    let library = dir.path().join("preload.so");
    let built = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(built.success());
    std::fs::set_permissions(&library, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    setting(
        &world,
        "vm_script",
        &format!(
            "echo {} > /etc/ld.so.preload && echo preload=yes || echo preload=no",
            library.display()
        ),
    );
    let rootfs = make_rootfs_with(world.dir.path(), "preload-rootfs", &["sh", "echo"]);
    let daemon = world.start();
    daemon.start_distro_as(65534, "pre", &rootfs);
    let out = field(&world.fx.wait_for("vm_exec"), "out").to_owned();
    assert_eq!(said(&out, "preload"), "yes", "{out}");
    // The VM's own programs do load it, as the VM's ids: the attack is in place.
    let vm_program = daemon.ctl_as(65534, &["exec", "--", "/bin/true"]).ok();
    assert!(
        vm_program.stderr.contains("PRELOADED hostroot=no"),
        "{}",
        vm_program.stderr
    );
    let log = daemon.log_text();
    assert!(!log.contains("hostroot=yes"), "{log}");
    assert!(!log.contains("PRELOADED"), "{log}");
    daemon.shutdown();
}
