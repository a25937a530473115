//! The child side of the namespace sandbox: hidden subcommands that `plughostd` re-executes itself
//! with, so that every step that needs a single-threaded process (unshare, setns into a mount
//! namespace, fork) runs in a fresh one, never in the threaded daemon (and no `pre_exec`: with it std
//! falls back to fork+exec, which copies the daemon's page tables).
//!
//! - `__vm-init`: unshare(mount, uts, ipc, pid), fork pid 1 of the VM; pid 1 builds the VM's root
//!   (the host's root, read-only, with tmpfs scratch on `/tmp`, `/mnt`, `/run`, and its own `/proc`),
//!   pivots into it, says `ready`, and reaps children forever. The outer mirrors pid 1's end.
//! - `__vm-enter --pid P <op>`: setns into P's ipc, uts, pid and mount namespaces, then one of:
//!   `mount` (bind a host folder, cloned with `open_tree` *before* entering, so a host path hidden
//!   in the VM still works), `unmount`, `exec` (run a program, stdio inherited, exit mirrored),
//!   `distro` (attach a distribution's rootfs in the VM and start its init, below).
//! - `__distro-init --root R`: inside the VM, unshare(mount, pid), fork pid 1 of the distribution,
//!   which mounts `/proc` and `/dev` in R, pivots into R, says `ready`, and reaps.
//!
//! Every process here arms `PR_SET_PDEATHSIG(SIGKILL)` first and checks that its parent is still
//! the expected one, so the whole chain dies with the daemon (and a pid namespace dies with its
//! init). Protocol with the daemon: lines on stdout (`init <pid>`, `ready`); errors on stderr and a
//! non-zero exit (the errno, for `mount`/`unmount`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{Mode, CWD};
use rustix::io::Errno;
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use rustix::process::Signal;
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

/// Exit status of a helper whose own setup failed (not the program's).
pub const EXIT_SETUP: i32 = 125;

/// How a waited-for child ended.
enum ChildEnd {
    Code(i32),
    Signal(i32),
}

/// Waits for child `pid` (retrying `EINTR`).
fn wait_child(pid: u32) -> Result<ChildEnd, String> {
    let raw = i32::try_from(pid).map_err(|_| "bad pid".to_owned())?;
    let pid = rustix::process::Pid::from_raw(raw).ok_or("bad pid")?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(ChildEnd::Code(code));
                }
                if let Some(signal) = status.terminating_signal() {
                    return Ok(ChildEnd::Signal(signal));
                }
            }
            Ok(None) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn child_end(status: std::process::ExitStatus) -> ChildEnd {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ChildEnd::Code(code),
        (None, Some(signal)) => ChildEnd::Signal(signal),
        (None, None) => ChildEnd::Code(EXIT_SETUP),
    }
}

/// Ends this process as the child ended: same code, or death by the same signal (so the daemon
/// sees what the program did, through every helper in between).
fn mirror_exit(end: ChildEnd) -> ! {
    match end {
        ChildEnd::Code(code) => std::process::exit(code),
        ChildEnd::Signal(signal) => {
            let no_core = rustix::process::Rlimit {
                current: Some(0),
                maximum: None,
            };
            let _ = rustix::process::setrlimit(rustix::process::Resource::Core, no_core);
            // SAFETY: restoring the default action and unblocking then raising a signal have no
            // memory-safety preconditions; the sigset_t is zeroed then initialised in place.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, signal);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(signal);
            }
            std::process::exit(128 + signal)
        }
    }
}

fn die(what: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("plughostd sandbox: {what}: {error}");
    std::process::exit(EXIT_SETUP)
}

/// Exits with the errno of `error` (so the daemon can hand it to the plugin), after saying why.
fn die_errno(what: &str, error: std::io::Error) -> ! {
    eprintln!("plughostd sandbox: {what}: {error}");
    let errno = error.raw_os_error().unwrap_or(5);
    std::process::exit(errno.clamp(1, 124))
}

/// `PDEATHSIG(SIGKILL)`, then checks that the parent is still `expected` (it may have died before
/// the signal was armed).
fn bind_to_parent(expected: u32) {
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        die("PR_SET_PDEATHSIG", e);
    }
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if parent.unsigned_abs() != expected {
        die("parent", format!("gone (expected pid {expected})"));
    }
}

/// Forks; in the child (pid 1 of a fresh pid namespace when `unshare(NEWPID)` preceded), arms
/// `PDEATHSIG` against the parent and returns `None`. In the parent returns the child's pid.
/// The parent's end of a pipe stays open for its life: the child checks it after arming the
/// signal, which closes the race where the parent died first.
fn fork_bound() -> Option<u32> {
    let (alive_r, alive_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .unwrap_or_else(|e| die("pipe", e));
    // SAFETY: the process is single-threaded (these subcommands start no thread before this), so
    // the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        die("fork", std::io::Error::last_os_error());
    }
    if pid > 0 {
        drop(alive_r);
        std::mem::forget(alive_w);
        return Some(pid.unsigned_abs());
    }
    drop(alive_w);
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        die("PR_SET_PDEATHSIG", e);
    }
    let mut fds = [rustix::event::PollFd::new(
        &alive_r,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(1) > 0 {
        die("parent", "died during start-up");
    }
    None
}

fn unshare(flags: UnshareFlags) -> Result<(), Errno> {
    // SAFETY: called only while the process is single-threaded, so no other thread observes the
    // change of namespaces under its feet.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Pid 1's job once set up: reap every child, forever (SIGCHLD is blocked and waited for, so an
/// idle VM costs no CPU). Pid 1 of a pid namespace ignores signals it has no handler for; it dies
/// by SIGKILL from outside (or PDEATHSIG), which takes the whole namespace with it.
fn reap_forever() -> ! {
    // SAFETY: plain signal-mask calls on a zeroed, then initialised, sigset_t owned by this frame.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    loop {
        while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG)
        {
        }
        // SAFETY: `set` is an initialised sigset_t; a null info pointer is allowed.
        unsafe {
            libc::sigwaitinfo(&set, std::ptr::null_mut());
        }
    }
}

fn mkdir_all(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)
}

/// Makes `root` (a mount point) this mount namespace's root and drops the old one
/// (`pivot_root(".", ".")`: no put-old directory needed, which matters on a read-only root).
fn pivot_into(root: &Path) -> Result<(), String> {
    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    rustix::process::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| format!("detach the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// `__vm-init`: see the module docs.
pub fn vm_init(stage: &Path, hostname: &str, parent: u32) -> ! {
    bind_to_parent(parent);
    let flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC | UnshareFlags::NEWPID;
    if let Err(e) = unshare(flags) {
        die("unshare(mount, uts, ipc, pid)", e);
    }
    if let Some(init) = fork_bound() {
        say(&format!("init {init}"));
        let exit = wait_child(init).unwrap_or_else(|e| die("wait for the VM init", e));
        mirror_exit(exit);
    }
    if let Err(e) = build_vm_root(stage, hostname) {
        die("VM root", e);
    }
    say("ready");
    reap_forever()
}

fn build_vm_root(stage: &Path, hostname: &str) -> Result<(), String> {
    // Nothing we mount here may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    rustix::mount::mount_bind_recursive("/", stage)
        .map_err(|e| format!("bind / at {}: {e}", stage.display()))?;
    rustix::mount::mount_remount(stage, MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(|e| format!("make the VM root read-only: {e}"))?;
    for (dir, mode) in [
        ("tmp", "mode=1777"),
        ("mnt", "mode=755"),
        ("run", "mode=755"),
    ] {
        let target = stage.join(dir);
        if target.is_dir() {
            rustix::mount::mount(
                "tmpfs",
                &target,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                Some(c_string(mode).as_c_str()),
            )
            .map_err(|e| format!("tmpfs on /{dir}: {e}"))?;
        }
    }
    // Plugins mount folders under /mnt; distributions get the VM's /mnt as a slave of this one,
    // so mounts made after a distribution started reach it too.
    let mnt = stage.join("mnt");
    if mnt.is_dir() {
        rustix::mount::mount_change(&mnt, MountPropagationFlags::SHARED)
            .map_err(|e| format!("share /mnt: {e}"))?;
    }
    let proc_dir = stage.join("proc");
    let _ = rustix::mount::unmount(&proc_dir, UnmountFlags::DETACH);
    rustix::mount::mount(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    pivot_into(stage)?;
    rustix::system::sethostname(hostname.as_bytes()).map_err(|e| format!("sethostname: {e}"))?;
    Ok(())
}

fn c_string(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap_or_default()
}

/// What `__vm-enter` does once inside.
pub enum EnterOp {
    Mount {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    Unmount {
        target: PathBuf,
    },
    Exec {
        uid: Option<u32>,
        gid: Option<u32>,
        /// `None`: a minimal default environment.
        env: Option<Vec<String>>,
        path: String,
        argv: Vec<String>,
    },
    Distro {
        rootfs: PathBuf,
        stage: PathBuf,
        exe: PathBuf,
    },
}

fn open_ns(pid: u32, name: &str) -> File {
    File::open(format!("/proc/{pid}/ns/{name}"))
        .unwrap_or_else(|e| die(&format!("open /proc/{pid}/ns/{name}"), e))
}

fn enter(fd: &File, kind: LinkNameSpaceType, name: &str) {
    if let Err(e) = rustix::thread::move_into_link_name_space(fd.as_fd(), Some(kind)) {
        die(&format!("setns({name})"), e);
    }
}

/// A detached copy of the host folder `source`, made in the daemon's mount namespace.
fn clone_tree(source: &Path) -> OwnedFd {
    rustix::mount::open_tree(
        CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .unwrap_or_else(|e| die_errno(&format!("clone {}", source.display()), e.into()))
}

fn attach_tree(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// `__vm-enter`: see the module docs.
pub fn vm_enter(pid: u32, parent: u32, op: EnterOp) -> ! {
    bind_to_parent(parent);
    // Open everything in the daemon's view first: after setns(mnt), /proc is the VM's.
    let ipc = open_ns(pid, "ipc");
    let uts = open_ns(pid, "uts");
    let pidns = open_ns(pid, "pid");
    let mnt = open_ns(pid, "mnt");
    let tree = match &op {
        EnterOp::Mount { source, .. } => Some(clone_tree(source)),
        EnterOp::Distro { rootfs, .. } => Some(clone_tree(rootfs)),
        _ => None,
    };
    enter(&ipc, LinkNameSpaceType::InterProcessCommunication, "ipc");
    enter(&uts, LinkNameSpaceType::HostNameAndNISDomainName, "uts");
    enter(&pidns, LinkNameSpaceType::ProcessID, "pid");
    // setns(mnt) needs a single-threaded caller; it also moves our root and cwd to the VM's.
    enter(&mnt, LinkNameSpaceType::Mount, "mnt");
    drop((ipc, uts, pidns, mnt));
    match op {
        EnterOp::Mount {
            target, read_only, ..
        } => {
            let tree = tree.unwrap_or_else(|| die("mount", "no tree"));
            if let Err(e) = mkdir_all(&target) {
                die_errno(&format!("create {}", target.display()), e);
            }
            if let Err(e) = attach_tree(&tree, &target) {
                die_errno(&format!("mount at {}", target.display()), e);
            }
            if read_only {
                if let Err(e) =
                    rustix::mount::mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, "")
                {
                    let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
                    die_errno(&format!("make {} read-only", target.display()), e.into());
                }
            }
            std::process::exit(0)
        }
        EnterOp::Unmount { target } => {
            if let Err(e) = rustix::mount::unmount(&target, UnmountFlags::DETACH) {
                die_errno(&format!("unmount {}", target.display()), e.into());
            }
            std::process::exit(0)
        }
        EnterOp::Exec {
            uid,
            gid,
            env,
            path,
            argv,
        } => run_program(uid, gid, env, &path, &argv),
        EnterOp::Distro { stage, exe, .. } => {
            let tree = tree.unwrap_or_else(|| die("distro", "no tree"));
            if let Err(e) = mkdir_all(&stage) {
                die(&format!("create {}", stage.display()), e);
            }
            if let Err(e) = attach_tree(&tree, &stage) {
                die(&format!("attach the rootfs at {}", stage.display()), e);
            }
            // The distribution's init must be in the VM's pid namespace *before* it unshares its
            // own (the kernel refuses unshare(NEWPID) after setns(pid)): run it as our child.
            let mut command = Command::new(&exe);
            command
                .arg("__distro-init")
                .arg("--root")
                .arg(&stage)
                // We are outside its pid namespace: it sees its parent as pid 0 (and as 1, the
                // VM's init, if we died before its death signal was armed).
                .arg("--parent-pid")
                .arg("0")
                .env_clear();
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| die(&format!("start {}", exe.display()), e));
            let exit = child_end(child.wait().unwrap_or_else(|e| die("wait", e)));
            mirror_exit(exit)
        }
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the program as our child (in the entered pid namespace) and ends as it ended.
fn run_program(
    uid: Option<u32>,
    gid: Option<u32>,
    env: Option<Vec<String>>,
    path: &str,
    argv: &[String],
) -> ! {
    let mut command = Command::new(path);
    if let Some(arg0) = argv.first() {
        command.arg0(arg0);
    }
    command.args(argv.iter().skip(1)).env_clear();
    match env {
        Some(env) => {
            for entry in env {
                let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
                command.env(key, value);
            }
        }
        None => {
            command.env("PATH", DEFAULT_PATH).env("HOME", "/");
        }
    }
    if let Some(gid) = gid {
        // std clears the supplementary groups when root sets a uid (setgroups(0)).
        command.gid(gid);
    }
    if let Some(uid) = uid {
        command.uid(uid);
    }
    let _ = std::env::set_current_dir("/");
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("plughostd: cannot run {path}: {e}");
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            std::process::exit(code)
        }
    };
    let exit = child_end(child.wait().unwrap_or_else(|e| die("wait", e)));
    mirror_exit(exit)
}

/// `__distro-init`: see the module docs.
pub fn distro_init(root: &Path, parent: u32) -> ! {
    bind_to_parent(parent);
    if let Err(e) = unshare(UnshareFlags::NEWNS | UnshareFlags::NEWPID) {
        die("unshare(mount, pid)", e);
    }
    if let Some(init) = fork_bound() {
        let exit = wait_child(init).unwrap_or_else(|e| die("wait for the distribution init", e));
        mirror_exit(exit);
    }
    if let Err(e) = build_distro_root(root) {
        die("distribution root", e);
    }
    say("ready");
    reap_forever()
}

fn build_distro_root(root: &Path) -> Result<(), String> {
    // Slave, not private: the VM's shared /mnt keeps propagating into the distribution's copy;
    // nothing mounted here goes back to the VM.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::DOWNSTREAM,
    )
    .map_err(|e| format!("make mounts slaves: {e}"))?;
    let proc_dir = root.join("proc");
    if !proc_dir.is_dir() {
        rustix::fs::mkdir(&proc_dir, Mode::from_raw_mode(0o555))
            .map_err(|e| format!("create {}: {e}", proc_dir.display()))?;
    }
    rustix::mount::mount(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    let dev = root.join("dev");
    if dev.is_dir() {
        rustix::mount::mount_bind_recursive("/dev", &dev).map_err(|e| format!("bind /dev: {e}"))?;
    }
    let mnt = root.join("mnt");
    if mnt.is_dir() && Path::new("/mnt").is_dir() {
        rustix::mount::mount_bind_recursive("/mnt", &mnt)
            .map_err(|e| format!("bind the VM's /mnt: {e}"))?;
    }
    pivot_into(root)
}

/// `__probe`: can this daemon make the namespaces a VM needs? Exit 0, or the reason on stderr.
pub fn probe() -> ! {
    let flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC | UnshareFlags::NEWPID;
    match unshare(flags) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("unshare(mount, uts, ipc, pid): {e}");
            std::process::exit(1)
        }
    }
}
