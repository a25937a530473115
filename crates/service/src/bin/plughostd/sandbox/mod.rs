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
//!
//! This file holds what every helper shares: exits that mirror a child's, the parent binding,
//! `fork_bound`, the session and keyring a helper leaves, pid 1's reaping, `pivot_into`, and
//! `__probe`. The subcommands live beside it: `vm_init.rs`, `enter.rs` (with `trees.rs` and
//! `exec.rs`), `distro.rs`.
#![allow(unsafe_code)]

// The allow above is for this file's helpers; it reaches the submodules too, so those without
// unsafe code say so and `trees.rs` and `exec.rs` state their own.
#[deny(unsafe_code)]
mod distro;
#[deny(unsafe_code)]
mod enter;
mod exec;
mod trees;
#[deny(unsafe_code)]
mod vm_init;

pub use distro::distro_init;
pub use enter::{vm_enter, EnterOp};
pub use vm_init::{scan_open_directories, vm_init, VmInit};

use std::io::Write;
use std::path::Path;

use rustix::io::Errno;
use rustix::mount::UnmountFlags;
use rustix::process::Signal;
use rustix::thread::UnshareFlags;

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
    let errno = error.raw_os_error().unwrap_or(libc::EIO);
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

/// Makes this helper, and every process it starts (a VM's init and everything below it, a
/// distribution's, a program a user or a plugin runs), the first the kernel's OOM killer takes
/// (`oom_score_adj` 1000): a VM that eats the machine's memory loses its own processes, not the
/// daemon, a plugin host or another user's programs. A default, not a bound: on the kernels tried,
/// a process may lower its own score back to 0 without any capability (SECURITY.md, "(not
/// bounded)").
fn first_for_the_oom_killer() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        die("oom_score_adj", e);
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
