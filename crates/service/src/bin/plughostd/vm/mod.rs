//! The daemon side of the namespace sandbox: handles on VMs and distributions, built by spawning
//! `plughostd` itself with the hidden subcommands of `sandbox/`.
//!
//! Every long-lived child is spawned from one thread, `plughostd-spawner`, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that spawned a child exits (prctl(2)): a VM spawned
//! from a connection thread would die with that connection.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use plughost_sys::Seqpacket;

use crate::ids::VmIds;
use crate::sandbox::EXIT_SETUP;

mod logs;
mod tree;

use logs::log_lines;
pub use tree::pid_namespace_inode;
use tree::{adopt_tree, children_of, start_tree, InitTree};

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
    /// The owner's VMs already hold their share of memory-backed scratch (`limits.scratch_mib`).
    #[error(
        "uid {uid} has {vms} VMs running with {held} MiB of scratch: the limit is {limit} MiB (stop one first)"
    )]
    ScratchLimit {
        uid: u32,
        vms: usize,
        held: u64,
        limit: u64,
    },
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
    /// This very program (re-executed with hidden subcommands), opened once at start: run through
    /// `/proc/self/fd/N`, so a path hidden or replaced later (a checkout under /tmp, an upgrade)
    /// changes nothing.
    pub exe: OwnedFd,
    /// An empty directory the VM init mounts its scratch tmpfs on (in its own mount namespace).
    pub stage: PathBuf,
    pub spawner: Spawner,
    /// Size of a VM's one scratch tmpfs, which holds its writable layer, `/tmp` and `/dev/shm`
    /// (`vm_scratch_mib`).
    pub scratch_mib: u32,
    /// The host directories a VM's root gets to own (`sandbox::scan_open_directories`).
    pub dirs_file: Option<PathBuf>,
    /// How much scratch the VMs of one uid other than root may hold together (`limits.scratch_mib`).
    pub scratch_limit_mib: u64,
    /// Leaf: scratch held now per owner uid, and by how many VMs. Tmpfs pages live in memory and no
    /// process owns them (killing one frees none): without a bound per user, one user's VMs
    /// (their own and a session VM per container session) could take every byte of the machine.
    pub scratch_held: Mutex<HashMap<u32, (usize, u64)>>,
    /// RLIMIT_NPROC of every program started in a VM of a uid other than root
    /// (`limits.vm_processes`): no process of a VM owns a pid the host needs.
    pub vm_processes: u64,
}

/// A VM's share of its owner's scratch (`Sandbox::scratch_held`), given back when dropped.
struct ScratchShare {
    sandbox: Arc<Sandbox>,
    owner: u32,
    mib: u64,
}

impl ScratchShare {
    fn take(sandbox: &Arc<Sandbox>, owner: u32) -> Result<ScratchShare, SandboxError> {
        let mib = u64::from(sandbox.scratch_mib);
        let mut held = sandbox
            .scratch_held
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (vms, total) = held.entry(owner).or_insert((0, 0));
        if owner != 0 && *total + mib > sandbox.scratch_limit_mib {
            let error = SandboxError::ScratchLimit {
                uid: owner,
                vms: *vms,
                held: *total,
                limit: sandbox.scratch_limit_mib,
            };
            if *vms == 0 {
                held.remove(&owner);
            }
            return Err(error);
        }
        *vms += 1;
        *total += mib;
        Ok(ScratchShare {
            sandbox: sandbox.clone(),
            owner,
            mib,
        })
    }
}

impl Drop for ScratchShare {
    fn drop(&mut self) {
        let mut held = self
            .sandbox
            .scratch_held
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((vms, total)) = held.get_mut(&self.owner) {
            *vms = vms.saturating_sub(1);
            *total = total.saturating_sub(self.mib);
            if *vms == 0 {
                held.remove(&self.owner);
            }
        }
    }
}

impl Sandbox {
    /// Opens this program's own executable.
    pub fn open_exe() -> std::io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            "/proc/self/exe",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?)
    }

    /// A command running this program (in the child, `/proc/self/fd/N` is the inherited handle
    /// until the exec consumes it).
    pub fn command(&self) -> Command {
        let mut command = Command::new(format!("/proc/self/fd/{}", self.exe.as_raw_fd()));
        command.arg0("plughostd").env_clear().stdin(Stdio::null());
        command
    }
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

/// A running VM (the session VM of a container session is one too).
pub struct Vm {
    pub label: String,
    /// The ids of its user namespace.
    pub ids: VmIds,
    tree: InitTree,
    sandbox: Arc<Sandbox>,
    /// Given back when the VM is killed (or dropped).
    scratch: Mutex<Option<ScratchShare>>,
    /// The session user (root's VMs are not bounded by `limits`).
    owner: u32,
}

/// Why a program could not start in a VM.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The VM (or distribution) is gone or going: its init has exited.
    #[error("it is stopping")]
    Stopping,
    /// The program could not be started there (`errno`: ENOENT, EACCES, ...).
    #[error("{message}")]
    Refused { errno: i32, message: String },
    /// The sandbox machinery failed.
    #[error("{0}")]
    Internal(String),
}

impl ExecError {
    /// The errno a plugin sees.
    pub fn errno(&self) -> i32 {
        match self {
            ExecError::Stopping => libc::ESRCH,
            ExecError::Refused { errno, .. } => *errno,
            ExecError::Internal(_) => libc::EIO,
        }
    }
}

impl Vm {
    pub fn start(
        sandbox: &Arc<Sandbox>,
        label: &str,
        hostname: &str,
        ids: VmIds,
        owner: u32,
    ) -> Result<Vm, SandboxError> {
        let scratch = ScratchShare::take(sandbox, owner)?;
        let mut command = sandbox.command();
        command
            .arg("__vm-init")
            .arg("--stage")
            .arg(&sandbox.stage)
            .arg("--hostname")
            .arg(hostname)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .arg("--uid-map")
            .arg(&ids.uid_map)
            .arg("--gid-map")
            .arg(&ids.gid_map)
            .arg("--root-uid")
            .arg(ids.root_uid.to_string())
            .arg("--root-gid")
            .arg(ids.root_gid.to_string())
            .arg("--scratch-mib")
            .arg(sandbox.scratch_mib.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dirs) = &sandbox.dirs_file {
            command.arg("--dirs-file").arg(dirs);
        }
        let tree = start_tree(sandbox, label, command, true, |helper, lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix("init ")?.parse().ok())
                .map(|init| (init, helper.id()))
        })?;
        tracing::info!(
            vm = label,
            init_pid = tree.init_pid,
            root_uid = ids.root_uid,
            "VM up"
        );
        Ok(Vm {
            label: label.to_owned(),
            ids,
            tree,
            sandbox: sandbox.clone(),
            scratch: Mutex::new(Some(scratch)),
            owner,
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
        // Its scratch goes with its last process, which was just killed.
        drop(
            self.scratch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        tracing::info!(vm = %self.label, "VM destroyed");
    }

    /// Spawns `__vm-enter` for the process tree `target` and hands it the target's pidfd and
    /// `fds` on its control socket (its stdin), which is returned.
    fn enter(
        &self,
        target: &InitTree,
        op: &[&std::ffi::OsStr],
        fds: &[BorrowedFd<'_>],
        stdout: Stdio,
        stderr: Stdio,
    ) -> std::io::Result<(Child, Seqpacket)> {
        let (ours, theirs) = Seqpacket::pair()?;
        let mut command = self.sandbox.command();
        command
            .arg("__vm-enter")
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .arg("--init-pid")
            .arg(target.init_pid.to_string())
            .args(op)
            .stdin(Stdio::from(theirs.into_fd()))
            .stdout(stdout)
            .stderr(stderr);
        let mut child = self.sandbox.spawner.spawn(command)?;
        let mut all = vec![target.init.as_fd()];
        all.extend_from_slice(fds);
        if let Err(e) = ours.send(b"go", &all) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!(
                "hand the helper its fds: {e}"
            )));
        }
        Ok((child, ours))
    }

    /// Runs a short `__vm-enter` operation and maps its exit to an errno.
    fn run_op(
        &self,
        op: &[&std::ffi::OsStr],
        fds: &[BorrowedFd<'_>],
        what: &str,
    ) -> Result<(), i32> {
        if !self.is_alive() {
            return Err(libc::ESRCH);
        }
        let (mut child, _control) = self
            .enter(&self.tree, op, fds, Stdio::null(), Stdio::piped())
            .map_err(|e| {
                tracing::warn!(vm = %self.label, "cannot spawn {what}: {e}");
                e.raw_os_error().unwrap_or(libc::EIO)
            })?;
        // Bounded: a mount that never finishes (a hung filesystem, say) must not wedge the
        // plugin call, and with it the session, forever.
        let finished = plughost_sys::Pidfd::open(child.id())
            .map(|p| p.wait_exit_timeout(Some(OP_TIMEOUT)))
            .unwrap_or(true);
        if !finished {
            let _ = child.kill();
            let _ = child.wait();
            tracing::warn!(vm = %self.label, "{what} did not finish within {} s: killed", OP_TIMEOUT.as_secs());
            return Err(libc::ETIMEDOUT);
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let status = child
            .wait()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        for line in stderr.lines() {
            tracing::info!(vm = %self.label, "{what}: {line}");
        }
        match status.code() {
            Some(0) => Ok(()),
            Some(code) if (1..EXIT_SETUP).contains(&code) => Err(code),
            _ => Err(libc::EIO),
        }
    }

    /// Attaches `folder` (opened by the caller with the session user's rights) at `target` in the
    /// VM, creating missing directories as the VM's root. Root's own session idmaps it, so that the
    /// VM's root has root's rights there (see SECURITY.md, "The VM boundary").
    pub fn mount(&self, folder: &OwnedFd, target: &str, read_only: bool) -> Result<(), i32> {
        let owner_uid = self.ids.root_uid.to_string();
        let owner_gid = self.ids.root_gid.to_string();
        let mut op: Vec<&std::ffi::OsStr> = vec![
            "mount".as_ref(),
            "--target".as_ref(),
            target.as_ref(),
            "--owner-uid".as_ref(),
            owner_uid.as_ref(),
            "--owner-gid".as_ref(),
            owner_gid.as_ref(),
        ];
        if read_only {
            op.push("--read-only".as_ref());
        }
        if !self.ids.user_is_mapped {
            op.push("--idmap".as_ref());
        }
        self.run_op(&op, &[folder.as_fd()], "mount")
    }

    pub fn unmount(&self, target: &str) -> Result<(), i32> {
        self.run_op(
            &["unmount".as_ref(), "--target".as_ref(), target.as_ref()],
            &[],
            "unmount",
        )
    }

    /// Starts `spec` in the VM, or in the distribution `inside`, and waits until it runs (or
    /// could not start: the error says why, never a number the program could have returned).
    pub fn spawn_program(
        &self,
        inside: Option<&DistroProcess>,
        spec: &ExecSpec<'_>,
        stdio: [OwnedFd; 3],
        stderr_to_log: bool,
    ) -> Result<Child, ExecError> {
        let target = inside.map_or(&self.tree, |d| &d.tree);
        if !target.is_alive() {
            return Err(ExecError::Stopping);
        }
        let uid = spec.uid.unwrap_or(0).to_string();
        let gid = spec.gid.unwrap_or(0).to_string();
        let nproc = self.sandbox.vm_processes.to_string();
        let mut op: Vec<&std::ffi::OsStr> = vec![
            "exec".as_ref(),
            "--uid".as_ref(),
            uid.as_ref(),
            "--gid".as_ref(),
            gid.as_ref(),
        ];
        if self.owner != 0 {
            op.push("--nproc".as_ref());
            op.push(nproc.as_ref());
        }
        if let Some(env) = spec.env {
            op.push("--clear-env".as_ref());
            for entry in env {
                op.push("--env".as_ref());
                op.push(entry.as_ref());
            }
        }
        op.push("--".as_ref());
        op.push(spec.path.as_ref());
        for arg in spec.argv {
            op.push(arg.as_ref());
        }
        let [stdin, stdout, stderr] = &stdio;
        let helper_stderr = if stderr_to_log {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let (mut child, control) = self
            .enter(
                target,
                &op,
                &[stdin.as_fd(), stdout.as_fd(), stderr.as_fd()],
                Stdio::null(),
                helper_stderr,
            )
            .map_err(|e| ExecError::Internal(format!("cannot start the helper: {e}")))?;
        drop(stdio);
        if let Some(pipe) = child.stderr.take() {
            log_lines(format!("{} exec", self.label), pipe, None);
        }
        let _ = control.set_timeouts(START_TIMEOUT, OP_TIMEOUT);
        let mut buf = [0u8; 512];
        let answer = control.recv(&mut buf, &mut Vec::new());
        let fail = |child: &mut Child, e: ExecError| {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        };
        match answer {
            Ok(n) if &buf[..n] == b"ok" => Ok(child),
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut parts = text.splitn(3, ' ');
                let errno = match (parts.next(), parts.next().and_then(|e| e.parse().ok())) {
                    (Some("err"), Some(errno)) => errno,
                    _ => {
                        return fail(
                            &mut child,
                            ExecError::Internal(format!("unexpected answer {text:?}")),
                        )
                    }
                };
                let message = parts.next().unwrap_or("").to_owned();
                let _ = child.wait();
                // A pid namespace whose init is exiting refuses fork with ENOMEM before the init
                // is seen gone: wait for it a moment before calling that a failure of its own.
                let stopping = errno == libc::ESRCH
                    || !target.is_alive()
                    || (errno == libc::ENOMEM
                        && target
                            .init
                            .wait_exit_timeout(Some(Duration::from_millis(500))));
                if stopping {
                    return Err(ExecError::Stopping);
                }
                Err(ExecError::Refused { errno, message })
            }
            Err(e) => {
                let stopping = !target.is_alive();
                let _ = fail(&mut child, ExecError::Stopping);
                if stopping {
                    Err(ExecError::Stopping)
                } else {
                    Err(ExecError::Internal(format!(
                        "the helper did not answer: {e}"
                    )))
                }
            }
        }
    }

    /// Logs the lines of a program's stderr under this VM's label.
    pub fn log_stderr(&self, what: &str, pipe: impl Read + Send + 'static) {
        log_lines(format!("{} {what}", self.label), pipe, None);
    }

    /// Starts a distribution: its rootfs (opened by the caller with the owner's rights) attached
    /// under `/run/plughost/distros/<id>` in the VM, its init in a pid and mount namespace of its
    /// own inside the VM's, in the VM's user namespace, as the VM's root.
    pub fn start_distribution(
        &self,
        name: &str,
        id_hex: &str,
        rootfs: &OwnedFd,
    ) -> Result<DistroProcess, SandboxError> {
        let stage = format!("/run/plughost/distros/{id_hex}");
        let owner_uid = self.ids.root_uid.to_string();
        let owner_gid = self.ids.root_gid.to_string();
        let mut op: Vec<&std::ffi::OsStr> = vec![
            "distro".as_ref(),
            "--stage".as_ref(),
            stage.as_ref(),
            "--owner-uid".as_ref(),
            owner_uid.as_ref(),
            "--owner-gid".as_ref(),
            owner_gid.as_ref(),
        ];
        if !self.ids.user_is_mapped {
            op.push("--idmap".as_ref());
        }
        let label = format!("distribution {name}");
        let (child, control) = self
            .enter(
                &self.tree,
                &op,
                &[rootfs.as_fd()],
                Stdio::piped(),
                Stdio::piped(),
            )
            .map_err(|source| SandboxError::Spawn {
                what: label.clone(),
                source,
            })?;
        drop(control);
        let tree = adopt_tree(&label, child, false, |helper, _| {
            // helper (daemon's child) -> __distro-init (in the VM) -> the distribution's pid 1.
            let outer = *children_of(helper.id()).first()?;
            Some((*children_of(outer).first()?, outer))
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
    let raw = i32::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let pid = rustix::process::Pid::from_raw(raw)
        .ok_or(std::io::Error::from_raw_os_error(libc::EINVAL))?;
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
