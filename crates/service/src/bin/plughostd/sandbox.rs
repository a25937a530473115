//! The child side of the namespace sandbox: hidden subcommands that `plughostd` re-executes itself
//! with (through a handle on its own executable, never its path), so that every step that needs a
//! single-threaded process (unshare, setns, fork) runs in a fresh one, never in the threaded daemon
//! (and no `pre_exec`: with it std falls back to fork+exec, which copies the daemon's page tables).
//!
//! - `__vm-init`: unshare(mount, uts, ipc, pid), fork pid 1 of the VM; pid 1 builds the VM's root
//!   (an overlay: the host's root file system read-only below, a tmpfs owned by the VM's root
//!   above; tmpfs on `/tmp`, `/run`, `/mnt`; a minimal `/dev`; its own `/proc`), pivots into it,
//!   then unshares a **user namespace** that the outer maps (`ids.rs`: the VM's root and every id
//!   but the session user's own to an unprivileged host range) and becomes its root, says `ready`
//!   and reaps children forever. The mount namespace stays owned by the host's user namespace, so
//!   nothing in the VM can mount, remount or unmount; the outer mirrors pid 1's end.
//! - `__vm-enter --init-pid P <op>`: gets the target's pidfd (and whatever fds the op needs) on
//!   its stdin, a seqpacket control socket, and enters by `setns(pidfd, ...)`, never by pid
//!   number: `mount` (attach a copy of a folder the daemon opened with the session user's rights),
//!   `unmount`, `exec` (enter every namespace, the user namespace included, run a program as the
//!   VM's uid/gid, answer `ok` or `err <errno>` on the control socket, then mirror its exit),
//!   `distro` (attach a distribution's rootfs in the VM and start its init as the VM's root).
//! - `__distro-init --root R`: inside the VM's user namespace, unshare(mount, pid), fork pid 1 of
//!   the distribution, which mounts `/proc` and binds `/dev` and `/mnt` in R, pivots into R, says
//!   `ready`, and reaps.
//!
//! Every process here arms `PR_SET_PDEATHSIG(SIGKILL)` first and checks that its parent is still
//! the expected one, so the whole chain dies with the daemon (and a pid namespace dies with its
//! init). Protocol with the daemon: lines on stdout (`init <pid>`, `ready`); errors on stderr and a
//! non-zero exit (the errno, for `mount`/`unmount`).
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use rustix::process::Signal;
use rustix::thread::{ThreadNameSpaceType, UnshareFlags};

use plughost_sys::Seqpacket;

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

/// A session of our own, without a controlling terminal: a program in a VM that inherited the
/// daemon's (a `plughostd` started from a shell) could open `/dev/tty` and push keystrokes into
/// root's terminal (TIOCSTI), read them, or take its foreground.
fn leave_the_daemons_session() {
    if let Err(e) = rustix::process::setsid() {
        die("setsid", e);
    }
}

/// Leaves the daemon's session keyring for a new, empty one: a keyring is inherited across fork
/// and exec, and whoever possesses root's session keyring may read the keys in it.
fn fresh_session_keyring() {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) takes no memory from us (a NULL name asks
    // for a new anonymous keyring) and only changes this process's keyrings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        // No keyring support in this kernel: nothing to leak either.
        if e.raw_os_error() != Some(libc::ENOSYS) {
            die("join a new session keyring", e);
        }
    }
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

/// Makes `root` (a mount point) this mount namespace's root and drops the old one
/// (`pivot_root(".", ".")`: no put-old directory needed).
fn pivot_into(root: &Path) -> Result<(), String> {
    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    rustix::process::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| format!("detach the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// What `__vm-init` needs: where to build, and the user namespace's maps (see `ids.rs`).
pub struct VmInit {
    pub stage: PathBuf,
    pub hostname: String,
    pub parent: u32,
    pub uid_map: String,
    pub gid_map: String,
    /// Host ids of the VM's root (the owner of its writable layer).
    pub root_uid: u32,
    pub root_gid: u32,
    /// Size of the writable layer and of `/tmp` and `/dev/shm` each (tmpfs, in MiB).
    pub scratch_mib: u32,
    /// The daemon's [`scan_open_directories`], if it made one.
    pub dirs_file: Option<PathBuf>,
}

/// `__vm-init`: see the module docs.
pub fn vm_init(init: &VmInit) -> ! {
    bind_to_parent(init.parent);
    leave_the_daemons_session();
    fresh_session_keyring();
    let flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC | UnshareFlags::NEWPID;
    if let Err(e) = unshare(flags) {
        die("unshare(mount, uts, ipc, pid)", e);
    }
    // Two pipes: the init says "in my user namespace"; the outer says "go" (once it holds the
    // init's /proc directory: the init's pivot_root moves the outer's root too, and the /proc there
    // is the VM's) and later "mapped".
    let (unshared_r, unshared_w) = cloexec_pipe();
    let (mapped_r, mapped_w) = cloexec_pipe();
    if let Some(pid) = fork_bound() {
        drop((unshared_w, mapped_r));
        let proc_dir = rustix::fs::open(
            format!("/proc/{pid}"),
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap_or_else(|e| die("open the init's /proc directory", e));
        let _ = rustix::io::write(&mapped_w, b"g");
        say(&format!("init {pid}"));
        if read_byte(&unshared_r).is_some() {
            if let Err(e) = write_maps(&proc_dir, &init.uid_map, &init.gid_map) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32)
                        .unwrap_or(rustix::process::Pid::INIT),
                    Signal::KILL,
                );
                die("user namespace maps", e);
            }
            let _ = rustix::io::write(&mapped_w, b"m");
        }
        // `mapped_w` stays open for our life: the init watches it to learn that we died.
        let exit = wait_child(pid).unwrap_or_else(|e| die("wait for the VM init", e));
        mirror_exit(exit);
    }
    drop((unshared_r, mapped_w));
    if read_byte(&mapped_r).is_none() {
        die("parent", "died during start-up");
    }
    if let Err(e) = build_vm_root(init) {
        die("VM root", e);
    }
    // Last: the user namespace. The mount, uts, ipc and pid namespaces above stay owned by the
    // host's, so nothing in the VM (root included) can mount, remount or unmount anything.
    if let Err(e) = unshare(UnshareFlags::NEWUSER) {
        die("unshare(user)", e);
    }
    let _ = rustix::io::write(&unshared_w, b"u");
    if read_byte(&mapped_r).is_none() {
        die("user namespace", "the outer process did not map it");
    }
    if let Err(e) = become_root_of_namespace() {
        die("become the VM's root", e);
    }
    // A change of credentials clears the parent-death signal: arm it again, then check that the
    // outer still lives (its end of `mapped` closes when it dies).
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        die("PR_SET_PDEATHSIG", e);
    }
    if parent_is_gone(&mapped_r) {
        die("parent", "died during start-up");
    }
    say("ready");
    reap_forever()
}

fn cloexec_pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap_or_else(|e| die("pipe", e))
}

fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(fd, &mut byte) {
            Ok(1) => return Some(byte[0]),
            Err(Errno::INTR) => continue,
            _ => return None,
        }
    }
}

/// Whether the write end of the pipe `fd` reads from was closed (the writer died).
fn parent_is_gone(fd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
        && fds[0].revents().contains(rustix::event::PollFlags::HUP)
}

fn write_maps(proc_dir: &OwnedFd, uid_map: &str, gid_map: &str) -> Result<(), String> {
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let fd = rustix::fs::openat(
            proc_dir,
            file,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {file}: {e}"))?;
        // One write: the kernel takes a map whole or not at all.
        rustix::io::write(&fd, format!("{map}\n").as_bytes())
            .map_err(|e| format!("write {file} ({map:?}): {e}"))?;
    }
    Ok(())
}

/// In a fresh user namespace whose maps are written: uid and gid 0 there, no supplementary groups.
fn become_root_of_namespace() -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    rustix::thread::set_thread_groups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    rustix::thread::set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT)
        .map_err(|e| format!("setresgid: {e}"))?;
    rustix::thread::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT)
        .map_err(|e| format!("setresuid: {e}"))?;
    Ok(())
}

fn mount_tmpfs(target: &Path, flags: MountFlags, data: &str) -> Result<(), String> {
    rustix::mount::mount(
        "tmpfs",
        target,
        "tmpfs",
        flags,
        Some(c_string(data).as_c_str()),
    )
    .map_err(|e| format!("tmpfs on {}: {e}", target.display()))
}

/// The VM's root: an overlay whose lower layer is the host's root file system (read-only, its own
/// ownership: the host's files are nobody's in the VM) and whose upper layer is a tmpfs owned by
/// the VM's root; private scratch on `/tmp`, `/run`, `/mnt`; a minimal `/dev`; its own `/proc`.
fn build_vm_root(init: &VmInit) -> Result<(), String> {
    // Nothing we mount here may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    let stage = &init.stage;
    let owner = format!("uid={},gid={}", init.root_uid, init.root_gid);
    let size = format!("size={}m", init.scratch_mib);
    mount_tmpfs(
        stage,
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=700,{size}"),
    )?;
    for dir in ["upper", "work", "root"] {
        rustix::fs::mkdir(stage.join(dir), Mode::from_raw_mode(0o755))
            .map_err(|e| format!("create {dir}: {e}"))?;
    }
    rustix::fs::chown(
        stage.join("upper"),
        Some(rustix::fs::Uid::from_raw(init.root_uid)),
        Some(rustix::fs::Gid::from_raw(init.root_gid)),
    )
    .map_err(|e| format!("chown the upper layer: {e}"))?;
    // Relative layer paths (from the stage): no escaping of ',' or ':' in the state directory.
    std::env::set_current_dir(stage).map_err(|e| format!("chdir {}: {e}", stage.display()))?;
    rustix::mount::mount(
        "overlay",
        "root",
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"lowerdir=/,upperdir=upper,workdir=work"),
    )
    .map_err(|e| format!("overlay on the host's root: {e}"))?;
    give_directories_to_vm_root(&stage.join("upper"), init)?;
    let root = stage.join("root");
    for (dir, flags, data) in [
        (
            "tmp",
            MountFlags::NOSUID | MountFlags::NODEV,
            format!("mode=1777,{size}"),
        ),
        (
            "run",
            MountFlags::NOSUID | MountFlags::NODEV,
            format!("mode=755,size=64m,{owner}"),
        ),
        (
            "mnt",
            MountFlags::NOSUID | MountFlags::NODEV,
            format!("mode=755,size=16m,{owner}"),
        ),
    ] {
        let target = root.join(dir);
        if !target.is_dir() {
            rustix::fs::mkdir(&target, Mode::from_raw_mode(0o755))
                .map_err(|e| format!("create /{dir}: {e}"))?;
        }
        mount_tmpfs(&target, flags, &data)?;
    }
    // Plugins mount folders under /mnt; distributions get the VM's /mnt as a slave of this one,
    // so mounts made after a distribution started reach it too.
    rustix::mount::mount_change(root.join("mnt"), MountPropagationFlags::SHARED)
        .map_err(|e| format!("share /mnt: {e}"))?;
    build_dev(&root.join("dev"), &size)?;
    let proc_dir = root.join("proc");
    rustix::mount::mount(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    // /sys read-only, without the file systems mounted beneath it (cgroups, debugfs...).
    let sys = root.join("sys");
    if sys.is_dir() && rustix::mount::mount_bind("/sys", &sys).is_ok() {
        let _ = rustix::mount::mount_remount(
            &sys,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        );
    }
    pivot_into(&root)?;
    rustix::system::sethostname(init.hostname.as_bytes())
        .map_err(|e| format!("sethostname: {e}"))?;
    Ok(())
}

/// How deep [`scan_open_directories`] goes: `/usr/local` (so `/usr/local/x`), `/var/lib`, `/etc`.
/// A third level (`/usr/local/bin/x`) made `vm start` 1.7x slower than before user namespaces
/// (release, same run: 8.9 against 5.2 ms), two levels 1.3x.
const OWNED_DEPTH: usize = 2;
/// At most this many directories (a start-up cost bound on hosts with huge trees).
const OWNED_MAX: usize = 4096;
/// Top-level directories the VM covers with mounts of its own.
const COVERED: [&str; 6] = ["tmp", "run", "mnt", "proc", "sys", "dev"];

/// The directories of the host's root file system, down to [`OWNED_DEPTH`], that anyone may list
/// and enter, parents first, as `mode\0path\0` records (paths relative to `/`). The daemon scans
/// once at start (a walk costs more than a VM start) and each VM init re-checks every entry.
pub fn scan_open_directories() -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(root_dev) = std::fs::metadata("/").map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([(PathBuf::from("/"), 0)]);
    let mut count = 0;
    while let Some((dir, depth)) = queue.pop_front() {
        if depth >= OWNED_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            // The VM mounts its own over these.
            if depth == 0 && COVERED.iter().any(|c| entry.file_name() == *c) {
                continue;
            }
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            if meta.dev() != root_dev || mode & 0o005 != 0o005 {
                continue;
            }
            if count >= OWNED_MAX {
                return out;
            }
            count += 1;
            out.extend_from_slice(format!("{mode:o}\0").as_bytes());
            out.extend_from_slice(
                path.strip_prefix("/")
                    .unwrap_or(&path)
                    .as_os_str()
                    .as_bytes(),
            );
            out.push(0);
            queue.push_back((path, depth + 1));
        }
    }
    out
}

/// Pre-creates, in the upper layer, a directory owned by the VM's root for every directory of
/// [`scan_open_directories`] that is still what the scan saw (same file system, same mode):
/// overlayfs shows a merged directory with its upper's owner, so the VM's root can create, rename
/// and remove entries there (`mkdir /opt/x`, `/usr/local/tool`) while every *file* keeps its
/// host owner and mode (the host's root files are nobody's in the VM: `/etc/shadow` stays
/// unreadable). A directory others may not enter (`/root`) keeps its host owner and stays closed.
fn give_directories_to_vm_root(upper: &Path, init: &VmInit) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(list) = &init.dirs_file else {
        return Ok(());
    };
    let records = std::fs::read(list).map_err(|e| format!("read {}: {e}", list.display()))?;
    let root_dev = std::fs::metadata("/")
        .map_err(|e| format!("stat /: {e}"))?
        .dev();
    // The host's modes exactly: no umask (and chown keeps a directory's set-gid bit).
    let umask = rustix::process::umask(Mode::empty());
    let mut result = Ok(());
    let mut fields = records.split(|&b| b == 0);
    while let (Some(mode), Some(path)) = (fields.next(), fields.next()) {
        let Some(mode) = std::str::from_utf8(mode)
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
        else {
            continue;
        };
        let rel = Path::new(std::ffi::OsStr::from_bytes(path));
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            continue;
        }
        // Still a directory of the root file system, still open to all, with that mode?
        let still = Path::new("/").join(rel).symlink_metadata().is_ok_and(|m| {
            m.is_dir() && m.dev() == root_dev && m.permissions().mode() & 0o7777 == mode
        });
        if !still {
            continue;
        }
        let target = upper.join(rel);
        match rustix::fs::mkdir(&target, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            // Its parent was skipped: so is it.
            Err(Errno::NOENT) => continue,
            Err(e) => {
                result = Err(format!("create {}: {e}", target.display()));
                break;
            }
        }
        if let Err(e) = rustix::fs::chown(
            &target,
            Some(rustix::fs::Uid::from_raw(init.root_uid)),
            Some(rustix::fs::Gid::from_raw(init.root_gid)),
        ) {
            result = Err(format!("give {} to the VM's root: {e}", target.display()));
            break;
        }
    }
    rustix::process::umask(umask);
    result
}

/// A `/dev` of its own: the harmless character devices bound from the host's, a private devpts
/// and `/dev/shm`. No block device, no `/dev/mem`, nothing a VM program could reach the host by.
fn build_dev(dev: &Path, shm_size: &str) -> Result<(), String> {
    if !dev.is_dir() {
        rustix::fs::mkdir(dev, Mode::from_raw_mode(0o755))
            .map_err(|e| format!("create /dev: {e}"))?;
    }
    mount_tmpfs(
        dev,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=755,size=64k",
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let node = dev.join(name);
        std::fs::File::create(&node).map_err(|e| format!("create /dev/{name}: {e}"))?;
        rustix::mount::mount_bind(Path::new("/dev").join(name), &node)
            .map_err(|e| format!("bind /dev/{name}: {e}"))?;
    }
    let pts = dev.join("pts");
    rustix::fs::mkdir(&pts, Mode::from_raw_mode(0o755))
        .map_err(|e| format!("create /dev/pts: {e}"))?;
    rustix::mount::mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| format!("devpts: {e}"))?;
    let shm = dev.join("shm");
    rustix::fs::mkdir(&shm, Mode::from_raw_mode(0o1777))
        .map_err(|e| format!("create /dev/shm: {e}"))?;
    mount_tmpfs(
        &shm,
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=1777,{shm_size}"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("link /dev/{link}: {e}"))?;
    }
    Ok(())
}

fn c_string(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap_or_default()
}

/// What `__vm-enter` does once inside. The fds each operation needs come on the control socket
/// (its stdin), the target's pidfd first: no pid number is ever trusted to still name the VM.
pub enum EnterOp {
    /// fds: [pidfd of the VM init, the folder (opened by the daemon with the session user's
    /// rights)]. Attaches a copy of the folder at `target`, idmapped to the VM when `idmap`.
    Mount {
        target: PathBuf,
        read_only: bool,
        idmap: bool,
        /// Host ids of the VM's root, who creates missing directories on the way.
        owner: (u32, u32),
    },
    /// fds: [pidfd of the VM init].
    Unmount { target: PathBuf },
    /// fds: [pidfd of the VM or distribution init, stdin, stdout, stderr]. Answers `ok` or
    /// `err <errno> <why>` on the control socket once the program runs (or could not), then ends
    /// as the program ends.
    Exec {
        /// In the VM's terms (0: the VM's root).
        uid: u32,
        gid: u32,
        /// `None`: a minimal default environment.
        env: Option<Vec<String>>,
        path: String,
        argv: Vec<String>,
    },
    /// fds: [pidfd of the VM init, the rootfs (opened with the owner's rights)].
    Distro {
        stage: PathBuf,
        idmap: bool,
        /// Host ids of the VM's root (the owner of the directories made for the stage).
        owner: (u32, u32),
    },
}

impl EnterOp {
    fn fd_count(&self) -> usize {
        match self {
            EnterOp::Mount { .. } | EnterOp::Distro { .. } => 2,
            EnterOp::Unmount { .. } => 1,
            EnterOp::Exec { .. } => 4,
        }
    }
}

/// The control socket on stdin and the fds the daemon sent on it.
fn receive_fds(count: usize) -> (Seqpacket, Vec<OwnedFd>) {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .unwrap_or_else(|e| die("control socket", e));
    let control = Seqpacket::from_fd(fd);
    let mut buf = [0u8; 16];
    let mut fds = Vec::new();
    if let Err(e) = control.recv(&mut buf, &mut fds) {
        die("receive the daemon's fds", e);
    }
    if fds.len() != count {
        die(
            "receive the daemon's fds",
            format!("got {}, want {count}", fds.len()),
        );
    }
    (control, fds)
}

/// A detached copy of the tree at `dir` (an fd the daemon opened with the user's rights).
fn clone_tree(dir: &OwnedFd) -> Result<OwnedFd, std::io::Error> {
    Ok(rustix::mount::open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?)
}

/// Mounts the detached `tree` on the directory `place` holds (not on a path: nothing can be
/// swapped between the check and the mount).
fn attach_tree(tree: &OwnedFd, place: &OwnedFd) -> std::io::Result<()> {
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        place,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// The user namespace of the process `pidfd` names, opened through `/proc/<pid>` and checked to
/// still be that process's (a pid may be reused; the pidfd may not).
fn user_namespace_of(pidfd: &OwnedFd, pid: u32) -> std::io::Result<OwnedFd> {
    let ns = rustix::fs::open(
        format!("/proc/{pid}/ns/user"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if has_exited(pidfd) {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(ns)
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr` on a whole detached tree (rustix has no wrapper): set `attrs`, and with
/// `userns` idmap it (ids on disk read as that user namespace maps them). Done before the tree is
/// attached, so nothing in the VM ever sees it without them.
fn set_tree_attrs(tree: &OwnedFd, attrs: u64, userns: Option<&OwnedFd>) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs | userns.map_or(0, |_| MOUNT_ATTR_IDMAP),
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |ns| ns.as_raw_fd() as u64),
    };
    // SAFETY: `attr` is a properly laid out `struct mount_attr` that outlives the call, its size is
    // passed with it, the path is a valid empty C string, and both fds are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Idmaps `tree` to the VM of `pidfd`, or says why it could not. Not every file system can be
/// idmapped (SECURITY.md): without it the VM's root has only other users' rights on the tree,
/// which is less, never more.
fn idmap_or_warn(tree: &OwnedFd, pidfd: &OwnedFd, init_pid: u32, what: &str) {
    let mapped =
        user_namespace_of(pidfd, init_pid).and_then(|ns| set_tree_attrs(tree, 0, Some(&ns)));
    if let Err(e) = mapped {
        eprintln!(
            "plughostd sandbox: cannot idmap {what} ({e}): the VM's root gets other users' rights on it"
        );
    }
}

/// The mount a directory fd lies on.
fn mount_id(dir: &OwnedFd) -> std::io::Result<u64> {
    let stat = rustix::fs::statx(
        dir,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )?;
    Ok(stat.stx_mnt_id)
}

/// Opens `target` in the VM (we are in its mount namespace), creating what is missing, one
/// component at a time beneath the fd of the one before (no magic links, so no jump out through
/// `/proc/<pid>/fd`). The whole walk runs with the VM's root's host ids (`owner`) and no
/// supplementary group or file capability, so it sees, and makes, only what the VM's root could.
/// The one exception is a directory missing in the VM's own private trees (its overlay root and the
/// tmpfs on `/tmp`, `/run`, `/mnt`, by mount id): there the override capabilities are raised for
/// the one `mkdirat`, so `/usr/share/doc/x` can be made under a directory the host's root owns,
/// and the new directory belongs to the VM's root from birth (no chown by name afterwards, which
/// the VM's root could race by renaming another file into its place).
///
/// With `file_leaf`, the last component is an (empty, new if missing) file: the target of a file
/// share.
fn open_or_make_target(
    owner: (u32, u32),
    target: &Path,
    file_leaf: bool,
) -> std::io::Result<OwnedFd> {
    use rustix::fs::{OFlags, ResolveFlags};
    use std::path::Component;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let last = target.components().count().saturating_sub(1);
    let open_root = |path: &str| rustix::fs::open(path, flags, Mode::empty());
    let mut private = Vec::new();
    for path in ["/", "/tmp", "/run", "/mnt"] {
        if let Ok(id) = open_root(path)
            .map_err(std::io::Error::from)
            .and_then(|fd| mount_id(&fd))
        {
            private.push(id);
        }
    }
    let mut dir = open_root("/")?;
    let _identity = FileIdentity::take(owner)?;
    for (index, component) in target.components().enumerate() {
        let leaf_file = file_leaf && index == last;
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            }
        };
        let open = |dir: &OwnedFd| {
            let flags = if leaf_file {
                OFlags::PATH | OFlags::CLOEXEC
            } else {
                flags
            };
            rustix::fs::openat2(dir, name, flags, Mode::empty(), ResolveFlags::NO_MAGICLINKS)
        };
        dir = match open(&dir) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                let overriding = private.contains(&mount_id(&dir)?);
                let _caps = if overriding {
                    Some(OverrideCaps::raise()?)
                } else {
                    None
                };
                if leaf_file {
                    // O_EXCL: our own new file or nothing; closed at once (the mount takes a path fd).
                    drop(rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )?);
                } else {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))?;
                }
                drop(_caps);
                open(&dir)?
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(dir)
}

/// The VM's root's host ids for file access, no supplementary group, no file capability (the
/// fsuid change drops them), for as long as it lives; then root's again. Only in this
/// single-threaded helper, which has nothing else running meanwhile.
struct FileIdentity;

impl FileIdentity {
    fn take(owner: (u32, u32)) -> std::io::Result<FileIdentity> {
        rustix::thread::set_thread_groups(&[])?;
        // SAFETY: setfsuid/setfsgid take plain integers and change only the ids used for file
        // access of this (single-threaded) process; `Drop` restores them.
        unsafe {
            libc::setfsgid(owner.1);
            libc::setfsuid(owner.0);
        }
        Ok(FileIdentity)
    }
}

impl Drop for FileIdentity {
    fn drop(&mut self) {
        // SAFETY: as in `take`: back to root's file identity.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
    }
}

/// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH raised in the effective set (they stay permitted
/// across the fsuid change), for as long as it lives.
struct OverrideCaps(rustix::thread::CapabilitySets);

impl OverrideCaps {
    fn raise() -> std::io::Result<OverrideCaps> {
        use rustix::thread::CapabilitySet;
        let before = rustix::thread::capabilities(None)?;
        let mut raised = before;
        raised.effective |= CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
        rustix::thread::set_capabilities(None, raised)?;
        Ok(OverrideCaps(before))
    }
}

impl Drop for OverrideCaps {
    fn drop(&mut self) {
        if rustix::thread::set_capabilities(None, self.0).is_err() {
            die(
                "capabilities",
                "cannot lower the override capabilities again",
            );
        }
    }
}

/// Whether the process `pidfd` names has exited (a pidfd polls readable then).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
}

fn enter_namespaces(
    pidfd: &OwnedFd,
    types: ThreadNameSpaceType,
    what: &str,
) -> Result<(), std::io::Error> {
    rustix::thread::move_into_thread_name_spaces(pidfd.as_fd(), types).map_err(|e| {
        // ESRCH: the VM's init is gone (the VM is stopping).
        if has_exited(pidfd) {
            std::io::Error::from_raw_os_error(libc::ESRCH)
        } else {
            std::io::Error::other(format!("enter the {what} namespaces: {e}"))
        }
    })
}

/// `__vm-enter`: see the module docs.
pub fn vm_enter(parent: u32, init_pid: u32, op: EnterOp) -> ! {
    bind_to_parent(parent);
    leave_the_daemons_session();
    fresh_session_keyring();
    // Nothing in the VM may ptrace us while we still hold root's identity on the host.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        die("PR_SET_DUMPABLE", e);
    }
    let (control, mut fds) = receive_fds(op.fd_count());
    let pidfd = fds.remove(0);
    match op {
        EnterOp::Mount {
            target,
            read_only,
            idmap,
            owner,
        } => {
            let source = fds.remove(0);
            let tree = clone_tree(&source).unwrap_or_else(|e| die_errno("clone the folder", e));
            // No device node or set-id program of the host's works through a share.
            let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
            if read_only {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            if let Err(e) = set_tree_attrs(&tree, attrs, None) {
                die_errno("set the folder's mount attributes", e);
            }
            if idmap {
                idmap_or_warn(&tree, &pidfd, init_pid, "the folder");
            }
            if let Err(e) = enter_namespaces(&pidfd, ThreadNameSpaceType::MOUNT, "VM's mount") {
                die_errno("enter the VM", e);
            }
            let is_file = rustix::fs::fstat(&source)
                .map(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        != rustix::fs::FileType::Directory
                })
                .unwrap_or(false);
            let place = open_or_make_target(owner, &target, is_file)
                .unwrap_or_else(|e| die_errno(&format!("create {}", target.display()), e));
            if let Err(e) = attach_tree(&tree, &place) {
                die_errno(&format!("mount at {}", target.display()), e);
            }
            std::process::exit(0)
        }
        EnterOp::Unmount { target } => {
            if let Err(e) = enter_namespaces(&pidfd, ThreadNameSpaceType::MOUNT, "VM's mount") {
                die_errno("enter the VM", e);
            }
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
        } => {
            let stdio = std::mem::take(&mut fds);
            run_program(&control, &pidfd, stdio, uid, gid, env, &path, &argv)
        }
        EnterOp::Distro {
            stage,
            idmap,
            owner,
        } => {
            let rootfs = fds.remove(0);
            start_distribution(&pidfd, init_pid, &rootfs, &stage, idmap, owner)
        }
    }
}

/// Attaches the rootfs in the VM and starts the distribution's init as the VM's root.
fn start_distribution(
    pidfd: &OwnedFd,
    init_pid: u32,
    rootfs: &OwnedFd,
    stage: &Path,
    idmap: bool,
    owner: (u32, u32),
) -> ! {
    let tree = clone_tree(rootfs).unwrap_or_else(|e| die("clone the rootfs", e));
    // A device node in a user's rootfs opens nothing of the host's.
    if let Err(e) = set_tree_attrs(&tree, MOUNT_ATTR_NODEV, None) {
        die("set the rootfs's mount attributes", e);
    }
    if idmap {
        idmap_or_warn(&tree, pidfd, init_pid, "the rootfs");
    }
    // This very program, by a handle: its path may be hidden in the VM (a checkout under /tmp).
    let exe = rustix::fs::open(
        "/proc/self/exe",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| die("open /proc/self/exe", e));
    if let Err(e) = enter_namespaces(pidfd, ThreadNameSpaceType::MOUNT, "VM's mount") {
        die("enter the VM", e);
    }
    // /run belongs to the VM's root: made component-wise, like a mount target.
    let place = open_or_make_target(owner, stage, false)
        .unwrap_or_else(|e| die(&format!("create {}", stage.display()), e));
    if let Err(e) = attach_tree(&tree, &place) {
        die(&format!("attach the rootfs at {}", stage.display()), e);
    }
    let rest = ThreadNameSpaceType::USER
        | ThreadNameSpaceType::PROCESS_ID
        | ThreadNameSpaceType::INTER_PROCESS_COMMUNICATION
        | ThreadNameSpaceType::HOST_NAME_AND_NIS_DOMAIN_NAME;
    if let Err(e) = enter_namespaces(pidfd, rest, "VM's") {
        die("enter the VM", e);
    }
    // The distribution's init must be in the VM's pid namespace *before* it unshares its own
    // (the kernel refuses unshare(NEWPID) after setns(pid)): run it as our child, as the VM's root.
    let mut command = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    command
        .arg0("plughostd")
        .arg("__distro-init")
        .arg("--root")
        .arg(stage)
        // We are outside its pid namespace: it sees its parent as pid 0 (and as 1, the
        // VM's init, if we died before its death signal was armed).
        .arg("--parent-pid")
        .arg("0")
        .uid(0)
        .gid(0)
        .env_clear();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| die("start the distribution's init", e));
    let exit = child_end(child.wait().unwrap_or_else(|e| die("wait", e)));
    mirror_exit(exit)
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Tells the daemon why the program could not start, then exits.
fn refuse(control: &Seqpacket, errno: i32, why: &str) -> ! {
    let _ = control.send(format!("err {errno} {why}").as_bytes(), &[]);
    eprintln!("plughostd sandbox: {why}");
    std::process::exit(EXIT_SETUP)
}

/// Enters the VM (or distribution) of `pidfd`, runs the program as our child there as `uid`/`gid`
/// (the VM's ids), says `ok` on the control socket, and ends as the program ends.
#[allow(clippy::too_many_arguments)]
fn run_program(
    control: &Seqpacket,
    pidfd: &OwnedFd,
    stdio: Vec<OwnedFd>,
    uid: u32,
    gid: u32,
    env: Option<Vec<String>>,
    path: &str,
    argv: &[String],
) -> ! {
    let all = ThreadNameSpaceType::USER
        | ThreadNameSpaceType::MOUNT
        | ThreadNameSpaceType::PROCESS_ID
        | ThreadNameSpaceType::INTER_PROCESS_COMMUNICATION
        | ThreadNameSpaceType::HOST_NAME_AND_NIS_DOMAIN_NAME;
    if let Err(e) = enter_namespaces(pidfd, all, "VM's") {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        refuse(control, errno, &e.to_string());
    }
    let mut stdio = stdio.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr)) = (stdio.next(), stdio.next(), stdio.next())
    else {
        refuse(control, libc::EINVAL, "missing stdio");
    };
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
    // The program dies with this helper (killed when the client goes away): armed after std set
    // its ids (a credential change clears it), then checked against the race where we died first
    // (outside its pid namespace, our pid reads as 0 there; a reparented orphan sees its init).
    // SAFETY: the closure runs in the forked child of this single-threaded helper and only makes
    // async-signal-safe system calls (prctl, getppid); it touches no lock or allocation.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid().is_some() {
                return Err(std::io::Error::other("the helper died"));
            }
            Ok(())
        });
    }
    // std clears the supplementary groups when it sets ids (setgroups(0)).
    command
        .gid(gid)
        .uid(uid)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .current_dir("/");
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            refuse(control, errno, &format!("cannot run {path}: {e}"))
        }
    };
    let _ = control.send(b"ok", &[]);
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
    // The rootfs came from the VM's mount namespace, which the host's user namespace owns, so here
    // it is a locked mount and pivot_root refuses it: bind it onto itself, a mount of our own.
    rustix::mount::mount_bind_recursive(root, root)
        .map_err(|e| format!("bind the rootfs onto itself: {e}"))?;
    // Nothing is created in a user's rootfs: a missing mount point is an error or a warning.
    let proc_dir = root.join("proc");
    if !proc_dir.is_dir() {
        return Err("the rootfs has no /proc directory".into());
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
    } else {
        eprintln!("plughostd sandbox: the rootfs has no /dev directory: the distribution runs without devices");
    }
    let mnt = root.join("mnt");
    if mnt.is_dir() {
        rustix::mount::mount_bind_recursive("/mnt", &mnt)
            .map_err(|e| format!("bind the VM's /mnt: {e}"))?;
    } else {
        eprintln!("plughostd sandbox: the rootfs has no /mnt directory: plugin mounts do not reach this distribution");
    }
    pivot_into(root)
}

/// `__probe`: can this daemon make the namespaces a VM needs? Exit 0, or the reason on stderr.
pub fn probe() -> ! {
    let flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWUSER;
    match unshare(flags) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("unshare(mount, uts, ipc, pid, user): {e}");
            std::process::exit(1)
        }
    }
}
