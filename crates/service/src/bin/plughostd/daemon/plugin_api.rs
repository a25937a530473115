//! The plugin API served against the daemon's state (`impl ServiceCallbacks for Shared`): folder
//! mounts and programs in a user's VM or distribution, and a container session's mounts and
//! processes (`CProcess`). It touches only the leaf locks, never an operation lock (see the
//! re-entrancy notes in `mod.rs`); it never starts a VM.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use plughost::{
    CallContext, ContainerProcess, ContainerSessionId, CreateProcessError, DistributionId,
    ProcessStream, ServiceCallbacks, SessionId, Status,
};

use super::{lock, CMount, CSession, Shared, UserSession, EBADF, EINVAL, ENOENT};
use crate::userfs::{open_path_as, UserCred};
use crate::vm::{exit_code, DistroProcess, ExecError, ExecSpec, Vm};

/// A process created by `container_create_process`: the helper that mirrors it, our ends of its
/// stdio pipes (handed over once each), and a pidfd opened before it could be reaped.
struct CProcess {
    /// The session VM it runs in: once that is gone the handle's calls are NOT_RUNNING.
    vm: Arc<Vm>,
    /// The service's shutdown flag: during a shutdown every call is SHUTTING_DOWN.
    shutting_down: Arc<AtomicBool>,
    /// `None` only once dropped.
    child: Option<Child>,
    pidfd: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    exit: Option<i32>,
}

impl CProcess {
    /// The contract's answer for a call on this handle now, if not its own (header, section 7).
    fn check(&self, needs_vm: bool) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::SHUTTING_DOWN);
        }
        if needs_vm && !self.vm.is_alive() {
            return Err(Status::NOT_RUNNING);
        }
        Ok(())
    }
}

impl ContainerProcess for CProcess {
    fn fd(&mut self, stream: ProcessStream) -> Result<OwnedFd, Status> {
        self.check(true)?;
        let slot = match stream {
            ProcessStream::Stdin => &mut self.stdin,
            ProcessStream::Stdout => &mut self.stdout,
            ProcessStream::Stderr => &mut self.stderr,
        };
        // Handed over, not duplicated: a copy kept here would hold the process's stdin open.
        slot.take().ok_or(Status::errno(EBADF))
    }

    fn exit_fd(&mut self) -> Result<OwnedFd, Status> {
        self.check(true)?;
        self.pidfd.try_clone().map_err(|e| Status::from_io(&e))
    }

    fn exit_code(&mut self) -> Result<i32, Status> {
        self.check(false)?;
        if let Some(code) = self.exit {
            return Ok(code);
        }
        let Some(child) = self.child.as_mut() else {
            return Err(Status::ILLEGAL_STATE);
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                let code = exit_code(status);
                self.exit = Some(code);
                Ok(code)
            }
            Ok(None) => Err(Status::ILLEGAL_STATE),
            Err(e) => Err(Status::from_io(&e)),
        }
    }
}

impl Drop for CProcess {
    fn drop(&mut self) {
        if let (None, Some(mut child)) = (self.exit, self.child.take()) {
            // Released while running: it keeps running; reap it when it ends.
            let _ = std::thread::Builder::new()
                .name("plughostd-reap".into())
                .spawn(move || child.wait());
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Status::errno(e.raw_os_error()))
}

impl Shared {
    fn check_not_shutting_down(&self) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::SHUTTING_DOWN);
        }
        Ok(())
    }

    fn user_vm(&self, session: SessionId) -> Result<(Arc<UserSession>, Arc<Vm>), Status> {
        self.check_not_shutting_down()?;
        let s = lock(&self.sessions)
            .by_id
            .get(&session)
            .cloned()
            .ok_or(Status::NOT_FOUND)?;
        let vm = s.vm().ok_or(Status::NOT_RUNNING)?;
        s.touch();
        Ok((s, vm))
    }

    fn csession(&self, id: ContainerSessionId) -> Result<Arc<CSession>, Status> {
        self.check_not_shutting_down()?;
        let cs = lock(&self.csessions)
            .by_id
            .get(&id)
            .cloned()
            .ok_or(Status::NOT_FOUND)?;
        if cs.stopping.load(Ordering::SeqCst) {
            return Err(Status::NOT_RUNNING);
        }
        Ok(cs)
    }

    /// Runs a plugin's program as the VM's root with stdin/stdout on a socket (the caller's end is
    /// returned) and stderr into the log; answers once the program runs, or why it could not.
    fn run_for_plugin(
        ctx: CallContext<'_>,
        vm: &Vm,
        inside: Option<&DistroProcess>,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        check_absolute(path)?;
        let (ours, theirs) = UnixStream::pair().map_err(|e| Status::from_io(&e))?;
        let theirs_in = theirs.try_clone().map_err(|e| Status::from_io(&e))?;
        let (log_r, log_w) = pipe()?;
        let spec = ExecSpec {
            path,
            argv,
            uid: None,
            gid: None,
            env: None,
        };
        let child = vm
            .spawn_program(
                inside,
                &spec,
                [OwnedFd::from(theirs_in), OwnedFd::from(theirs), log_w],
                true,
            )
            .map_err(|e| exec_status(&e))?;
        vm.log_stderr(
            &format!("{} {path}", ctx.plugin),
            std::fs::File::from(log_r),
        );
        let mut child = child;
        let _ = std::thread::Builder::new()
            .name("plughostd-reap".into())
            .spawn(move || child.wait());
        Ok(ours.into())
    }
}

/// What a plugin sees when its program could not start: NOT_RUNNING when the VM is stopping,
/// else the errno (ENOENT, EACCES, ...).
fn exec_status(e: &ExecError) -> Status {
    match e {
        ExecError::Stopping => Status::NOT_RUNNING,
        other => Status::errno(other.errno()),
    }
}

/// Opens the folder a plugin shares with the session user's rights: the share can never give the
/// VM more than the user has (SECURITY.md, "The VM boundary").
fn open_share(host_path: &str, uid: u32, gid: u32) -> Result<OwnedFd, Status> {
    let path = Path::new(host_path);
    if !path.is_absolute() || host_path.contains('\0') {
        return Err(Status::errno(EINVAL));
    }
    open_path_as(&UserCred::of(uid, gid), path).map_err(|e| Status::from_io(&e))
}

fn check_absolute(path: &str) -> Result<(), Status> {
    if path.starts_with('/') && !path.contains('\0') {
        Ok(())
    } else {
        Err(Status::errno(EINVAL))
    }
}

impl ServiceCallbacks for Shared {
    fn mount_folder(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        host_path: &str,
        vm_path: &str,
        read_only: bool,
        name: &str,
    ) -> Result<(), Status> {
        let (s, vm) = self.user_vm(session)?;
        check_absolute(vm_path)?;
        let folder = open_share(host_path, s.info.uid, s.info.gid)?;
        vm.mount(&folder, vm_path, read_only)
            .map_err(Status::errno)?;
        tracing::info!(plugin = ctx.plugin, vm = %vm.label, name, host = host_path, target = vm_path,
            read_only, "mounted");
        Ok(())
    }

    fn execute_binary(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        let (_s, vm) = self.user_vm(session)?;
        Self::run_for_plugin(ctx, &vm, None, path, argv)
    }

    fn execute_binary_in_distribution(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        distribution: DistributionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        let (s, vm) = self.user_vm(session)?;
        let running = lock(&s.distros).get(&distribution).cloned();
        let Some(d) = running else {
            let registered = lock(&self.store)
                .find_id(distribution)
                .is_some_and(|r| r.owner == s.info.uid);
            return Err(if registered {
                Status::NOT_RUNNING
            } else {
                Status::NOT_FOUND
            });
        };
        Self::run_for_plugin(ctx, &vm, Some(&d.process), path, argv)
    }

    fn container_mount_folder(
        &self,
        ctx: CallContext<'_>,
        container_session: ContainerSessionId,
        host_path: &str,
        mountpoint: &str,
        read_only: bool,
    ) -> Result<(), Status> {
        check_absolute(mountpoint)?;
        let cs = self.csession(container_session)?;
        let folder = open_share(host_path, cs.info.uid, cs.info.gid)?;
        let host = PathBuf::from(host_path);
        let vm = lock(&cs.vm).clone();
        if let Some(vm) = vm {
            vm.mount(&folder, mountpoint, read_only)
                .map_err(Status::errno)?;
        }
        let mut mounts = lock(&cs.mounts);
        mounts.retain(|m| m.mountpoint != mountpoint);
        mounts.push(CMount {
            host,
            mountpoint: mountpoint.to_owned(),
            read_only,
        });
        tracing::info!(
            plugin = ctx.plugin,
            csession = %container_session,
            host = host_path,
            mountpoint,
            read_only,
            "container mount"
        );
        Ok(())
    }

    fn container_unmount_folder(
        &self,
        _ctx: CallContext<'_>,
        container_session: ContainerSessionId,
        mountpoint: &str,
    ) -> Result<(), Status> {
        check_absolute(mountpoint)?;
        let cs = self.csession(container_session)?;
        {
            let mut mounts = lock(&cs.mounts);
            let before = mounts.len();
            mounts.retain(|m| m.mountpoint != mountpoint);
            if mounts.len() == before {
                return Err(Status::errno(EINVAL));
            }
        }
        let vm = lock(&cs.vm).clone();
        if let Some(vm) = vm {
            vm.unmount(mountpoint).map_err(Status::errno)?;
        }
        Ok(())
    }

    fn container_create_process(
        &self,
        ctx: CallContext<'_>,
        container_session: ContainerSessionId,
        path: &str,
        argv: &[String],
        envp: Option<&[String]>,
    ) -> Result<Box<dyn ContainerProcess>, CreateProcessError> {
        let cs = self.csession(container_session)?;
        // Never starts a session VM (PLUGIN_ABI.md, "API").
        let vm = lock(&cs.vm).clone().ok_or(Status::NOT_RUNNING)?;
        if !path.starts_with('/') || path.contains('\0') {
            // VM paths are absolute (PLUGIN_ABI.md, "Types"); the modelled system says ENOENT.
            return Err(CreateProcessError {
                status: Status::errno(EINVAL),
                errno: ENOENT,
            });
        }
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let spec = ExecSpec {
            path,
            argv,
            uid: Some(cs.info.uid),
            gid: Some(cs.info.gid),
            env: envp,
        };
        let child = vm
            .spawn_program(None, &spec, [stdin_r, stdout_w, stderr_w], false)
            .map_err(|e| CreateProcessError {
                status: exec_status(&e),
                errno: e.errno(),
            })?;
        let pidfd = crate::vm::exit_fd(child.id()).map_err(|e| Status::from_io(&e))?;
        tracing::info!(
            plugin = ctx.plugin,
            csession = %container_session,
            path,
            "container process"
        );
        Ok(Box::new(CProcess {
            vm: vm.clone(),
            shutting_down: self.shutting_down.clone(),
            child: Some(child),
            pidfd,
            stdin: Some(stdin_w),
            stdout: Some(stdout_r),
            stderr: Some(stderr_r),
            exit: None,
        }))
    }
}
