//! The daemon side of the namespace sandbox: handles on VMs and distributions, built by spawning
//! `plughostd` itself with the hidden subcommands of `sandbox.rs`.
//!
//! Every long-lived child is spawned from one thread, `plughostd-spawner`, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that spawned a child exits (prctl(2)): a VM spawned
//! from a connection thread would die with that connection.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use plughost_sys::Pidfd;

use crate::sandbox::EXIT_SETUP;

/// How long a VM or distribution init may take to say `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a mount or other short operation in a VM may take before it fails with `-ETIMEDOUT`.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure of the sandbox machinery (not of a plugin).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot spawn {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed to start: {reason}")]
    Start { what: String, reason: String },
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread every sandbox process is spawned from.
pub struct Spawner {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    pub fn start() -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("plughostd-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(Spawner {
            jobs: Mutex::new(tx),
        })
    }

    pub fn spawn(&self, mut command: Command) -> std::io::Result<Child> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(command.spawn());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

/// What every sandbox operation needs.
pub struct Sandbox {
    /// This very program (re-executed with hidden subcommands).
    pub exe: PathBuf,
    /// An empty directory the VM init binds the host root onto (in its own mount namespace).
    pub stage: PathBuf,
    pub spawner: Spawner,
}

/// A program to run inside a VM or distribution.
pub struct ExecSpec<'a> {
    pub path: &'a str,
    pub argv: &'a [String],
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub env: Option<&'a [String]>,
}

/// The exit code a shell would show: the code, or `128 + signal`.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Logs every line of `pipe` as `label: line`; keeps the last one in `last`.
fn log_lines(label: String, pipe: impl Read + Send + 'static, last: Option<Arc<Mutex<String>>>) {
    let _ = std::thread::Builder::new()
        .name("plughostd-log".into())
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                tracing::info!(target: "plughostd::sandbox", "{label}: {line}");
                if let Some(last) = &last {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = line;
                }
            }
        });
}

/// Reads `stdout` until a line equal to `ready` (and, with `want_init`, an `init <pid>` line: the
/// two come from different processes, in either order), with a deadline.
fn wait_ready(stdout: &OwnedFd, want_init: bool, deadline: Instant) -> Result<Vec<String>, String> {
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
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // The comm field may hold spaces and parentheses: parse after the last ')'.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The inode of `pid`'s pid namespace.
pub fn pid_namespace_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// A process tree rooted at a namespace init: the daemon's direct child (a helper that mirrors the
/// init's end) and the init itself.
struct InitTree {
    helper: Mutex<Option<Child>>,
    init_pid: u32,
    init: Pidfd,
}

impl InitTree {
    /// Kills the init (the kernel then kills its whole pid namespace) and reaps the helper.
    fn kill(&self) {
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

    fn is_alive(&self) -> bool {
        !self.init.has_exited()
    }
}

fn stdout_fd(child: &mut Child) -> Option<OwnedFd> {
    child.stdout.take().map(OwnedFd::from)
}

fn start_tree(
    sandbox: &Sandbox,
    what: &str,
    command: Command,
    want_init: bool,
    find_init: impl FnOnce(&Child, &[String]) -> Option<u32>,
) -> Result<InitTree, SandboxError> {
    let mut child = sandbox
        .spawner
        .spawn(command)
        .map_err(|source| SandboxError::Spawn {
            what: what.to_owned(),
            source,
        })?;
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
    let Some(init_pid) = find_init(&child, &lines) else {
        return Err(fail(&mut child, "cannot find its init process".into()));
    };
    let init = match Pidfd::open(init_pid) {
        Ok(init) => init,
        Err(e) => return Err(fail(&mut child, format!("pidfd of its init: {e}"))),
    };
    Ok(InitTree {
        helper: Mutex::new(Some(child)),
        init_pid,
        init,
    })
}

fn sandbox_command(sandbox: &Sandbox) -> Command {
    let mut command = Command::new(&sandbox.exe);
    command.env_clear().stdin(Stdio::null());
    command
}

/// A running VM (the session VM of a container session is one too).
pub struct Vm {
    pub label: String,
    tree: InitTree,
    sandbox: Arc<Sandbox>,
}

impl Vm {
    pub fn start(sandbox: &Arc<Sandbox>, label: &str, hostname: &str) -> Result<Vm, SandboxError> {
        let mut command = sandbox_command(sandbox);
        command
            .arg("__vm-init")
            .arg("--stage")
            .arg(&sandbox.stage)
            .arg("--hostname")
            .arg(hostname)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let tree = start_tree(sandbox, label, command, true, |_, lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix("init ")?.parse().ok())
        })?;
        tracing::info!(vm = label, init_pid = tree.init_pid, "VM up");
        Ok(Vm {
            label: label.to_owned(),
            tree,
            sandbox: sandbox.clone(),
        })
    }

    pub fn init_pid(&self) -> u32 {
        self.tree.init_pid
    }

    pub fn is_alive(&self) -> bool {
        self.tree.is_alive()
    }

    /// Destroys the VM and everything in it (its distributions included).
    pub fn kill(&self) {
        self.tree.kill();
        tracing::info!(vm = %self.label, "VM destroyed");
    }

    fn enter(&self, target_pid: u32) -> Command {
        let mut command = sandbox_command(&self.sandbox);
        command
            .arg("__vm-enter")
            .arg("--pid")
            .arg(target_pid.to_string())
            .arg("--parent-pid")
            .arg(std::process::id().to_string());
        command
    }

    /// Runs a short `__vm-enter` operation and maps its exit to an errno.
    fn run_op(&self, mut command: Command, what: &str) -> Result<(), i32> {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = self.sandbox.spawner.spawn(command).map_err(|e| {
            tracing::warn!(vm = %self.label, "cannot spawn {what}: {e}");
            e.raw_os_error().unwrap_or(5)
        })?;
        // Bounded: a mount or exec that never finishes (a hung filesystem, say) must not wedge the
        // plugin call, and with it the session, forever.
        let finished = plughost_sys::Pidfd::open(child.id())
            .map(|p| p.wait_exit_timeout(Some(OP_TIMEOUT)))
            .unwrap_or(true);
        if !finished {
            let _ = child.kill();
            let _ = child.wait();
            tracing::warn!(vm = %self.label, "{what} did not finish within {} s: killed", OP_TIMEOUT.as_secs());
            return Err(110); // ETIMEDOUT
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let status = child.wait().map_err(|e| e.raw_os_error().unwrap_or(5))?;
        for line in stderr.lines() {
            tracing::info!(vm = %self.label, "{what}: {line}");
        }
        match status.code() {
            Some(0) => Ok(()),
            Some(code) if (1..EXIT_SETUP).contains(&code) => Err(code),
            _ => Err(5),
        }
    }

    /// Bind-mounts the host folder `source` at `target` in the VM (directories created).
    pub fn mount(&self, source: &Path, target: &str, read_only: bool) -> Result<(), i32> {
        let mut command = self.enter(self.tree.init_pid);
        command
            .arg("mount")
            .arg("--source")
            .arg(source)
            .arg("--target")
            .arg(target);
        if read_only {
            command.arg("--read-only");
        }
        self.run_op(command, "mount")
    }

    pub fn unmount(&self, target: &str) -> Result<(), i32> {
        let mut command = self.enter(self.tree.init_pid);
        command.arg("unmount").arg("--target").arg(target);
        self.run_op(command, "unmount")
    }

    /// Whether `path` names a file in the VM (or in the distribution whose init is `pid`), seen
    /// through `/proc/PID/root`. Relative paths are looked up in `PATH` by the program's runner.
    pub fn has_program(pid: u32, path: &str) -> bool {
        if !path.starts_with('/') {
            return true;
        }
        std::fs::metadata(format!("/proc/{pid}/root{path}"))
            .map(|m| m.is_file())
            .unwrap_or(false)
    }

    /// Starts `spec` in the VM, or in the namespaces of `inside` (a distribution's init).
    pub fn spawn_program(
        &self,
        inside: Option<u32>,
        spec: &ExecSpec<'_>,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> std::io::Result<Child> {
        let mut command = self.enter(inside.unwrap_or(self.tree.init_pid));
        command.arg("exec");
        if let Some(uid) = spec.uid {
            command.arg("--uid").arg(uid.to_string());
        }
        if let Some(gid) = spec.gid {
            command.arg("--gid").arg(gid.to_string());
        }
        if let Some(env) = spec.env {
            command.arg("--clear-env");
            for entry in env {
                command.arg("--env").arg(entry);
            }
        }
        command.arg("--").arg(spec.path).args(spec.argv);
        command.stdin(stdin).stdout(stdout).stderr(stderr);
        self.sandbox.spawner.spawn(command)
    }

    /// Logs the lines of a program's stderr under this VM's label.
    pub fn log_stderr(&self, what: &str, pipe: impl Read + Send + 'static) {
        log_lines(format!("{} {what}", self.label), pipe, None);
    }

    /// Starts a distribution: its rootfs attached under `/run/plughost/distros/<id>` in the VM, its
    /// init in a pid namespace of its own inside the VM's.
    pub fn start_distribution(
        &self,
        name: &str,
        id_hex: &str,
        rootfs: &Path,
    ) -> Result<DistroProcess, SandboxError> {
        let mut command = self.enter(self.tree.init_pid);
        command
            .arg("distro")
            .arg("--rootfs")
            .arg(rootfs)
            .arg("--stage")
            .arg(format!("/run/plughost/distros/{id_hex}"))
            .arg("--exe")
            .arg(&self.sandbox.exe)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let label = format!("distribution {name}");
        let tree = start_tree(&self.sandbox, &label, command, false, |helper, _| {
            // helper (daemon's child) -> __distro-init (in the VM) -> the distribution's pid 1.
            let outer = *children_of(helper.id()).first()?;
            children_of(outer).first().copied()
        })?;
        let pid_namespace = pid_namespace_inode(tree.init_pid).unwrap_or(0);
        tracing::info!(
            distribution = name,
            init_pid = tree.init_pid,
            pid_namespace,
            "distribution up"
        );
        Ok(DistroProcess {
            tree,
            pid_namespace,
        })
    }
}

/// A running distribution's init.
pub struct DistroProcess {
    tree: InitTree,
    pub pid_namespace: u64,
}

impl DistroProcess {
    pub fn init_pid(&self) -> u32 {
        self.tree.init_pid
    }

    pub fn is_alive(&self) -> bool {
        self.tree.is_alive()
    }

    pub fn kill(&self) {
        self.tree.kill();
    }
}

/// An fd that becomes readable when `pid` (our unreaped child) exits.
pub fn exit_fd(pid: u32) -> std::io::Result<OwnedFd> {
    let raw = i32::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(22))?;
    let pid = rustix::process::Pid::from_raw(raw).ok_or(std::io::Error::from_raw_os_error(22))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Waits for `child`, or for `hangup` to be hung up (the client went away), whichever is first.
/// Returns the exit status, or `None` when the client went away (the child is then killed).
pub fn wait_or_hangup(child: &mut Child, hangup: impl AsFd) -> std::io::Result<Option<ExitStatus>> {
    let pidfd = exit_fd(child.id())?;
    loop {
        let mut fds = [
            rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&hangup, rustix::event::PollFlags::RDHUP),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().is_empty() {
            return child.wait().map(Some);
        }
        let client = fds[1].revents();
        if client.intersects(
            rustix::event::PollFlags::RDHUP
                | rustix::event::PollFlags::HUP
                | rustix::event::PollFlags::ERR,
        ) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
    }
}
