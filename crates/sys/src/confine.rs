//! What the host binary does to itself, first thing after `exec` and before any plugin code runs.
//!
//! Order (see `crates/host/src/main.rs`): [`bind_to_parent`], [`take_channel_from_stdin`] and
//! [`close_inherited_fds`], then [`enter_pid_namespace`], which forks: the *outer* process stays in the
//! service's pid namespace as the handle the service holds (it waits and mirrors the inner's exit), the
//! *inner* one is the init of a fresh pid namespace and runs the plugin. When the inner dies, the kernel
//! kills every process left in its namespace, however it forked or `setsid()`ed; when the outer dies
//! (the service died, or killed it), the inner gets `SIGKILL` from its parent-death signal.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{set_parent_process_death_signal, Signal};

use crate::process::ProcessExit;

/// Sets `PR_SET_PDEATHSIG` to `SIGKILL`, then checks that the parent is still `expected_parent`: if
/// the service died before the signal was armed, we were reparented and must not go on.
pub fn bind_to_parent(expected_parent: u32) -> std::io::Result<()> {
    set_parent_process_death_signal(Some(Signal::KILL))?;
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if u32::try_from(parent).ok() != Some(expected_parent) {
        return Err(std::io::Error::other(format!(
            "parent {expected_parent} is gone (parent is now {parent})"
        )));
    }
    Ok(())
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

/// Closes every fd above 2 except `keep` (firecracker's `sanitize_process`), so that nothing the
/// service leaked by accident reaches plugin code.
pub fn close_inherited_fds(keep: RawFd) -> std::io::Result<()> {
    let keep = u32::try_from(keep).map_err(|_| Errno::BADF)?;
    let ranges = [(3u32, keep.saturating_sub(1)), (keep + 1, u32::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes fds; none of the closed ones is owned by a Rust object
        // (the process is single-threaded here and holds only `keep` and stdio).
        let rc = unsafe { libc::close_range(first, last, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Which side of [`enter_pid_namespace`] we are on.
pub enum NamespaceRole {
    /// The process the service spawned; `inner` is the pid of the namespace's init.
    Outer { inner: u32 },
    /// Pid 1 of a fresh pid namespace, bound to the outer by `PDEATHSIG`.
    Inner,
}

/// Creates a pid namespace and forks its init. Fails (and changes nothing) without the privilege
/// (`EPERM`), so the caller can fall back to its process group.
///
/// Must be called while the process is single-threaded.
pub fn enter_pid_namespace() -> std::io::Result<NamespaceRole> {
    // SAFETY: the process is single-threaded (documented precondition), so changing the namespace
    // for children cannot surprise another thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID) }?;
    let (parent_alive, parent_holds) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: single-threaded (precondition), so the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        drop(parent_alive);
        // The write end stays open (leaked on purpose) for the outer's whole life: the inner sees
        // it close exactly when the outer dies.
        std::mem::forget(parent_holds);
        return Ok(NamespaceRole::Outer {
            inner: pid.unsigned_abs(),
        });
    }
    drop(parent_holds);
    set_parent_process_death_signal(Some(Signal::KILL))?;
    // The outer may have died before the death signal was armed: then its pipe end is closed.
    let mut fds = [PollFd::new(&parent_alive, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&zero)).unwrap_or(1) > 0 {
        return Err(std::io::Error::other("the outer host died during start-up"));
    }
    drop(parent_alive);
    Ok(NamespaceRole::Inner)
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
/// (default action restored first; core dumps off, so that only the inner's core is written).
pub fn mirror_exit(exit: ProcessExit) -> ! {
    match exit {
        ProcessExit::Code(code) => std::process::exit(code),
        ProcessExit::Signal { signal, .. } => {
            let limit = rustix::process::Rlimit {
                current: Some(0),
                maximum: None,
            };
            let _ = rustix::process::setrlimit(rustix::process::Resource::Core, limit);
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
