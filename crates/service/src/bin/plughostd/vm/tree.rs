//! A process tree rooted at a namespace init: the helper the daemon spawned, the init it reports,
//! and the pidfd the daemon keeps of that init (checked to be the process it names). Not here:
//! what the tree runs (`sandbox/`), or the operations on a running VM (`mod.rs`).

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plughost_sys::Pidfd;

use super::logs::log_lines;
use super::{Sandbox, SandboxError, START_TIMEOUT};
use crate::sandbox::EXIT_SETUP;

/// Reads `stdout` until a line equal to `ready` (and, with `want_init`, an `init <pid>` line: the
/// two come from different processes, in either order), with a deadline.
pub(super) fn wait_ready(
    stdout: &OwnedFd,
    want_init: bool,
    deadline: Instant,
) -> Result<Vec<String>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err("timed out".into());
        }
        let left = deadline - now;
        let timeout = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [rustix::event::PollFd::new(
            stdout,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = match rustix::io::read(stdout, &mut chunk) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(e.to_string()),
        };
        if n == 0 {
            return Err("exited before it was ready".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let ready = lines.iter().any(|l| l == "ready");
        let init = !want_init || lines.iter().any(|l| l.starts_with("init "));
        if text.ends_with('\n') && ready && init {
            return Ok(lines);
        }
        if buf.len() > 4096 {
            return Err("unexpected output".into());
        }
    }
}

/// Children of `pid`, from `/proc/*/stat` (the daemon sees every pid namespace's processes).
pub(super) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&child| parent_of(child) == Some(pid))
        .collect()
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
pub(super) fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
}

/// The inode of `pid`'s pid namespace.
pub fn pid_namespace_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// A process tree rooted at a namespace init: the daemon's direct child (a helper that mirrors the
/// init's end) and the init itself.
pub(super) struct InitTree {
    pub(super) helper: Mutex<Option<Child>>,
    pub(super) init_pid: u32,
    pub(super) init: Pidfd,
}

impl InitTree {
    /// Kills the init (the kernel then kills its whole pid namespace) and reaps the helper.
    pub(super) fn kill(&self) {
        let _ = self.init.kill();
        let child = self.helper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            // The helper reaps the init and mirrors its end: let it, so no zombie is left to a
            // pid 1 that reaps orphans late (some machines' does); kill it only if it does not follow.
            let follows = Pidfd::open(child.id())
                .map(|p| p.wait_exit_timeout(Some(Duration::from_secs(2))))
                .unwrap_or(false);
            if !follows {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    pub(super) fn is_alive(&self) -> bool {
        !self.init.has_exited()
    }
}

pub(super) fn stdout_fd(child: &mut Child) -> Option<OwnedFd> {
    child.stdout.take().map(OwnedFd::from)
}

pub(super) fn start_tree(
    sandbox: &Sandbox,
    what: &str,
    command: Command,
    want_init: bool,
    find_init: impl FnOnce(&Child, &[String]) -> Option<(u32, u32)>,
) -> Result<InitTree, SandboxError> {
    let child = sandbox
        .spawner
        .spawn(command)
        .map_err(|source| SandboxError::Spawn {
            what: what.to_owned(),
            source,
        })?;
    adopt_tree(what, child, want_init, find_init)
}

/// Waits for the helper `child` to report its init ready and takes a pidfd of that init.
/// `find_init` names the init by pid, with the pid of the parent it must have.
pub(super) fn adopt_tree(
    what: &str,
    mut child: Child,
    want_init: bool,
    find_init: impl FnOnce(&Child, &[String]) -> Option<(u32, u32)>,
) -> Result<InitTree, SandboxError> {
    let last = Arc::new(Mutex::new(String::new()));
    if let Some(stderr) = child.stderr.take() {
        log_lines(what.to_owned(), stderr, Some(last.clone()));
    }
    let Some(stdout) = stdout_fd(&mut child) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SandboxError::Start {
            what: what.to_owned(),
            reason: "no stdout".into(),
        });
    };
    let fail = |child: &mut Child, reason: String| {
        let _ = child.kill();
        let status = child.wait().ok();
        // Give the stderr logger a moment to record the helper's last words (it saw EOF already).
        let why = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let reason = match (why.is_empty(), status) {
            (false, _) => format!("{reason}: {why}"),
            (true, Some(s)) if s.code() == Some(EXIT_SETUP) => reason,
            (true, _) => reason,
        };
        SandboxError::Start {
            what: what.to_owned(),
            reason,
        }
    };
    let lines = match wait_ready(&stdout, want_init, Instant::now() + START_TIMEOUT) {
        Ok(lines) => lines,
        Err(reason) => {
            // The helper's stderr is read by another thread: wait for it to see EOF.
            let _ = child.kill();
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_millis(500);
            while last.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
                && Instant::now() < deadline
            {
                std::thread::yield_now();
            }
            return Err(fail(&mut child, reason));
        }
    };
    drop(stdout);
    let Some((init_pid, parent)) = find_init(&child, &lines) else {
        return Err(fail(&mut child, "cannot find its init process".into()));
    };
    let init = match Pidfd::open(init_pid) {
        Ok(init) => init,
        Err(e) => return Err(fail(&mut child, format!("pidfd of its init: {e}"))),
    };
    // A pid is a name that may pass to another process (the init could have died and its number
    // been reused before the pidfd was taken); the pidfd cannot. While the process the pidfd
    // holds is alive the number is its own, so its parent read now is the pidfd's process's: it
    // must be the init's parent in our tree, or this pidfd would let `kill` reach a stranger.
    if parent_of(init_pid) != Some(parent) || init.has_exited() {
        return Err(fail(
            &mut child,
            format!("its init (pid {init_pid}) ended as it started"),
        ));
    }
    Ok(InitTree {
        helper: Mutex::new(Some(child)),
        init_pid,
        init,
    })
}
