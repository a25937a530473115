//! What the host binary does to itself, first thing after `exec` and before any plugin code runs.
//!
//! Order (see `crates/host/src/main.rs`): [`ParentBond::arm`], [`take_channel_from_stdin`] and
//! [`close_inherited_fds`], then [`contain`], which forks an init for a fresh pid namespace and, from
//! it, the plugin process (the outer stays outside, waits, and ends as the plugin process ended). After
//! the handshake the plugin process confines itself: [`new_session`], [`private_umask`], [`limit`],
//! [`switch_user`] (then the bond again: a credential change clears the parent-death signal),
//! [`no_new_privs`].
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{set_parent_process_death_signal, Signal};

use crate::process::ProcessExit;
use crate::waiter::Waiter;

/// How a host knows its parent is still there, to re-check after re-arming the parent-death signal
/// (which the kernel clears on every change of credentials).
pub enum ParentBond {
    /// Our parent must be this pid (`getppid`).
    Pid(u32),
    /// Our parent (the outer host, outside our pid namespace, where `getppid` says 0) holds the
    /// write end of this pipe: it reads as closed once the outer is gone.
    Pipe(OwnedFd),
}

impl ParentBond {
    /// Arms `PR_SET_PDEATHSIG(SIGKILL)`, then checks that the parent did not die before: if it
    /// did, the signal will never come and we must not go on.
    pub fn arm(&self) -> std::io::Result<()> {
        set_parent_process_death_signal(Some(Signal::KILL))?;
        let alive = match self {
            ParentBond::Pid(expected) => {
                let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
                u32::try_from(parent).ok() == Some(*expected)
            }
            ParentBond::Pipe(pipe) => {
                let mut fds = [PollFd::new(pipe, PollFlags::IN)];
                let zero = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                poll(&mut fds, Some(&zero)).unwrap_or(1) == 0
            }
        };
        if alive {
            Ok(())
        } else {
            Err(std::io::Error::other("the parent process is gone"))
        }
    }
}

/// The service hands the channel over as stdin (the one fd `posix_spawn` can place without a
/// `pre_exec` closure). Moves it to a fresh `CLOEXEC` fd and puts `/dev/null` on stdin.
pub fn take_channel_from_stdin() -> std::io::Result<OwnedFd> {
    let stdin = rustix::stdio::stdin();
    let channel = rustix::io::fcntl_dupfd_cloexec(stdin, 3)?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // SAFETY: fd 0 is ours to replace; `dup2` onto it closes the old stdin (the channel's original
    // copy, now duplicated above) and no other thread exists yet that could be using fd 0.
    let mut zero = unsafe { OwnedFd::from_raw_fd(0) };
    rustix::io::dup2(&null, &mut zero)?;
    std::mem::forget(zero);
    Ok(channel)
}

/// Closes every fd above 2 except those in `keep` (firecracker's `sanitize_process`), so that
/// nothing the service leaked by accident reaches plugin code.
pub fn close_fds_except(keep: &[RawFd]) -> std::io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    let mut first = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd >= first {
            let last = fd.saturating_sub(1);
            if last >= first {
                // SAFETY: close_range only closes fds; none of the closed ones is owned by a Rust
                // object (the process is single-threaded here and holds only `keep` and stdio).
                if unsafe { libc::close_range(first, last, 0) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            first = fd.saturating_add(1);
        }
    }
    Ok(())
}

/// [`close_fds_except`] with one fd to keep.
pub fn close_inherited_fds(keep: RawFd) -> std::io::Result<()> {
    close_fds_except(&[keep])
}

/// Where [`contain`] left the calling code.
pub enum Contained {
    /// The process that runs the plugin: pid 2 of a fresh pid namespace, whose init (pid 1, its
    /// parent) dies with the outer process. Re-arm the parent-death signal with the bond after a
    /// credential change.
    Plugin { bond: ParentBond },
}

/// Moves the plugin into a fresh pid namespace, with three processes:
/// - the **outer** (this process, the service's child, in the service's pid namespace) only waits and
///   ends the way the plugin process ended (same exit code or same signal), so the service's pidfd
///   tells how the plugin died;
/// - the namespace's **init** (pid 1) reaps orphans, reports the plugin's wait status to the outer,
///   and dies with the outer (parent-death signal): then the kernel kills every process left in the
///   namespace, however it forked or `setsid()`ed;
/// - the **plugin process** (pid 2, returned as [`Contained::Plugin`]), with normal signal semantics
///   (a pid 1 would ignore `SIGXCPU`, the `SIGABRT` of `abort()`, ...) and free to create threads
///   (the unsharing process itself may not: `clone(CLONE_THREAD)` fails there).
///
/// The outer and the init exec the tiny waiter (`waiter.rs`) to wait (a few pages resident instead of
/// ~2 MiB each), after closing what they must not hold; without it (or if the exec fails) they wait
/// in Rust (`outer`, `namespace_init` below), which behaves the same, and `log` says so in one line.
/// `parent_pid` is the outer's parent (the service), which the outer's waiter checks again.
///
/// Only the plugin process returns. Fails (and changes nothing) without the privilege (`EPERM`), so
/// the caller can fall back to its process group. Must be called while single-threaded.
pub fn contain(parent_pid: u32, log: fn(&str)) -> std::io::Result<Contained> {
    // SAFETY: the process is single-threaded (documented precondition), so changing the namespace
    // for children cannot surprise another thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID) }?;
    let (alive_read, alive_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (status_read, status_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // Once, before the forks: the outer and the init share this copy.
    let waiter = Waiter::load()
        .map_err(|e| {
            log(&format!(
                "no waiter ({e}); the outer and the namespace init wait in Rust"
            ))
        })
        .ok();
    // SAFETY: single-threaded (precondition), so the child may run arbitrary code after fork.
    let init = unsafe { libc::fork() };
    if init < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if init > 0 {
        drop(alive_read);
        drop(status_write);
        // `alive_write` stays open for the outer's whole life: the init sees it close when the
        // outer dies.
        let init = init.unsigned_abs();
        if let Some(waiter) = waiter {
            // As in `outer`: nothing else (the channel above all) stays open; stdio does.
            let keep = [
                status_read.as_raw_fd(),
                alive_write.as_raw_fd(),
                waiter.fd().as_raw_fd(),
            ];
            let e = match close_fds_except(&keep) {
                Ok(()) => {
                    waiter.exec_outer(parent_pid, init, status_read.as_fd(), alive_write.as_fd())
                }
                Err(e) => e,
            };
            log(&format!(
                "cannot exec the waiter as the outer ({e}); it waits in Rust"
            ));
        }
        outer(init, status_read, alive_write)
    }
    drop(alive_write);
    drop(status_read);
    let bond = ParentBond::Pipe(alive_read);
    if bond.arm().is_err() {
        exit_immediately(0);
    }
    // SAFETY: the init is single-threaded too.
    let plugin = unsafe { libc::fork() };
    if plugin < 0 {
        exit_immediately(111);
    }
    if plugin > 0 {
        let ParentBond::Pipe(alive) = bond else {
            exit_immediately(0)
        };
        if let Some(waiter) = waiter {
            if let Err(e) = init_exec_waiter(&waiter, plugin, &alive, &status_write) {
                log(&format!(
                    "cannot exec the waiter as the namespace init ({e}); it waits in Rust"
                ));
            }
        }
        namespace_init(plugin, alive, status_write)
    }
    // Close-on-exec is not enough here: the plugin never execs, and must not hold the waiter.
    drop(waiter);
    drop(status_write);
    drop(bond);
    let bond = ParentBond::Pid(1);
    bond.arm()
        .map_err(|_| std::io::Error::other("the namespace init died during start-up"))?;
    Ok(Contained::Plugin { bond })
}

/// The init's way into the waiter: it holds exactly what [`namespace_init`] holds (the two pipes),
/// so every other fd is closed first and stdio is made close-on-exec (kept until the exec only so
/// that a failure can still be logged). Returns only if the exec failed.
fn init_exec_waiter(
    waiter: &Waiter,
    plugin: i32,
    alive: &OwnedFd,
    status: &OwnedFd,
) -> std::io::Result<()> {
    close_fds_except(&[
        alive.as_raw_fd(),
        status.as_raw_fd(),
        waiter.fd().as_raw_fd(),
    ])?;
    for stdio in [
        rustix::stdio::stdin(),
        rustix::stdio::stdout(),
        rustix::stdio::stderr(),
    ] {
        // EBADF: not open, nothing to close.
        match rustix::io::fcntl_setfd(stdio, rustix::io::FdFlags::CLOEXEC) {
            Ok(()) | Err(Errno::BADF) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(waiter.exec_init(plugin, alive.as_fd(), status.as_fd()))
}

/// The outer process: waits for the init, then ends as the plugin process ended. (The fallback of
/// the waiter's `outer`: keep the two in step.)
fn outer(init: u32, status: OwnedFd, alive: OwnedFd) -> ! {
    // Nothing else (the channel above all) stays open here: the plugin process has its own copy.
    let _ = close_fds_except(&[status.as_raw_fd(), alive.as_raw_fd()]);
    let init_exit = wait_child(init);
    let mut raw = [0u8; 4];
    let plugin_exit = match rustix::io::read(&status, &mut raw) {
        Ok(4) => Some(decode_wait_status(i32::from_ne_bytes(raw))),
        _ => None,
    };
    match (plugin_exit, init_exit) {
        (Some(exit), _) | (None, Ok(exit)) => mirror_exit(exit),
        (None, Err(_)) => exit_immediately(111),
    }
}

fn decode_wait_status(status: i32) -> ProcessExit {
    let signal = status & 0x7f;
    if signal == 0 {
        ProcessExit::Code((status >> 8) & 0xff)
    } else {
        ProcessExit::Signal {
            signal,
            core_dumped: status & 0x80 != 0,
        }
    }
}

/// Pid 1 of the namespace: reap everything, report the plugin process's status to the outer, and
/// end (taking the namespace with it) when the plugin process or the outer is gone. (The fallback
/// of the waiter's `init`: keep the two in step.)
fn namespace_init(plugin: i32, alive: OwnedFd, status: OwnedFd) -> ! {
    let keep = [
        std::os::fd::AsRawFd::as_raw_fd(&alive),
        std::os::fd::AsRawFd::as_raw_fd(&status),
    ];
    for fd in 0..1024 {
        if !keep.contains(&fd) {
            // SAFETY: closing fds this process never uses again (nothing in it owns them).
            unsafe { libc::close(fd) };
        }
    }
    // SIGCHLD through a signalfd (blocked as a signal): no wake-up can slip between a reap and the
    // wait, and the plugin process's death is seen at once.
    // SAFETY: sigset manipulation on a local set; signalfd on it; single-threaded process.
    let children = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            exit_immediately(111);
        }
        OwnedFd::from_raw_fd(fd)
    };
    loop {
        loop {
            let mut raw_status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut raw_status, libc::WNOHANG) };
            if pid == plugin {
                let _ = rustix::io::write(&status, &raw_status.to_ne_bytes());
                exit_immediately(0);
            }
            if pid <= 0 {
                break;
            }
        }
        let mut fds = [
            PollFd::new(&alive, PollFlags::IN),
            PollFd::new(&children, PollFlags::IN),
        ];
        if poll(&mut fds, None).is_ok() {
            if !fds[0].revents().is_empty() {
                exit_immediately(0);
            }
            let mut info = [0u8; 128];
            while rustix::io::read(&children, &mut info).is_ok() {}
        }
    }
}

/// Starts a new session (so the plugin has no controlling terminal and its own process group).
pub fn new_session() -> std::io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// umask 077: nothing the plugin creates is readable by others.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// `PR_SET_NO_NEW_PRIVS`: no exec can ever grant privileges again (setuid binaries, file caps).
pub fn no_new_privs() -> std::io::Result<()> {
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}

/// Sets the soft and hard limit of `resource`.
pub fn limit(resource: rustix::process::Resource, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = rustix::process::Rlimit {
        current: Some(soft),
        maximum: Some(hard),
    };
    rustix::process::setrlimit(resource, limit)?;
    Ok(())
}

/// Switches the whole process to `uid`/`gid` with no supplementary groups. From root this also
/// drops every capability (no keep-caps). Must be called while single-threaded.
pub fn switch_user(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: plain credential syscalls with no memory arguments but the empty group list; the
    // process is single-threaded (precondition), so no thread keeps the old credentials.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for child `pid` to end (retrying `EINTR`).
pub fn wait_child(pid: u32) -> std::io::Result<ProcessExit> {
    let raw = i32::try_from(pid).map_err(|_| Errno::INVAL)?;
    let pid = rustix::process::Pid::from_raw(raw).ok_or(Errno::INVAL)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(ProcessExit::Code(code));
                }
                if let Some(signal) = status.terminating_signal() {
                    // WCOREDUMP: bit 0x80 of the raw status.
                    let core_dumped = status.as_raw() & 0x80 != 0;
                    return Ok(ProcessExit::Signal {
                        signal,
                        core_dumped,
                    });
                }
            }
            Ok(None) => {}
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ends this process the way `exit` describes: the same exit code, or death by the same signal
/// (default action restored first; core dumps off, so that only the plugin process's core is written).
pub fn mirror_exit(exit: ProcessExit) -> ! {
    match exit {
        ProcessExit::Code(code) => std::process::exit(code),
        ProcessExit::Signal { signal, .. } => {
            // Soft limit 0 under the hard limit as it is (raising the hard limit would need
            // privilege).
            let core = rustix::process::Resource::Core;
            let limit = rustix::process::Rlimit {
                current: Some(0),
                maximum: rustix::process::getrlimit(core).maximum,
            };
            let _ = rustix::process::setrlimit(core, limit);
            // SAFETY: resetting a disposition to SIG_DFL and raising a signal have no memory-safety
            // preconditions; the process is about to die either way.
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

/// Ends the process at once (`_exit`): no atexit handlers or C++/Rust destructors run, so plugin
/// threads still running never see freed state.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

extern "C" {
    /// glibc's `stdout` (`FILE *`).
    static mut stdout: *mut libc::FILE;
}

/// Makes C stdio's `stdout` line-buffered, so that a plugin's `printf` lines reach the service's log
/// as they are written even though stdout is a pipe.
pub fn line_buffer_c_stdout() {
    // SAFETY: called before any plugin code runs and before any other thread exists, so nothing else
    // uses the stream; `setvbuf` with a NULL buffer lets libc allocate it.
    unsafe {
        let stream = std::ptr::addr_of!(stdout).read();
        if !stream.is_null() {
            libc::setvbuf(stream, std::ptr::null_mut(), libc::_IOLBF, 0);
        }
    }
}
