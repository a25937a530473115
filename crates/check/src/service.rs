//! The built-in service `plughost check` runs the plugin under: it answers every API call, with a
//! success or, in the error rounds, with each error the contract documents, and counts the calls by
//! where they were served (inside which hook, or outside any).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use plughost::{
    CallContext, ContainerProcess, ContainerSessionId, CreateProcessError, DistributionId,
    HookKind, ProcessStream, ServiceCallbacks, SessionId, Status,
};

/// The errors API calls may return (`plugin_api.h`, "Status codes"), answered in turn in the error
/// rounds.
pub const DOCUMENTED_ERRORS: [(Status, &str); 7] = [
    (Status::NOT_RUNNING, "PLUGHOST_E_NOT_RUNNING"),
    (Status::NOT_FOUND, "PLUGHOST_E_NOT_FOUND"),
    (Status::SHUTTING_DOWN, "PLUGHOST_E_SHUTTING_DOWN"),
    (Status::ILLEGAL_CALL, "PLUGHOST_E_ILLEGAL_CALL"),
    (Status(-13), "-EACCES"),
    (Status(-2), "-ENOENT"),
    (Status(-5), "-EIO"),
];

/// What the service answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Success,
    /// Every call fails with this status.
    Error(Status),
}

/// Shared by the scope of every hook and the manager's default callbacks.
pub struct CheckService {
    answer: Mutex<Answer>,
    /// What every program the plugin runs prints on stdout (`--exec-output`; at most 4 KiB).
    exec_output: Vec<u8>,
    /// Calls served per hook kind (with that hook's scope), then outside hooks (the last entry).
    calls: [AtomicUsize; 11],
}

impl CheckService {
    pub fn new(exec_output: &str) -> CheckService {
        let mut exec_output = exec_output.as_bytes().to_vec();
        exec_output.truncate(4096);
        CheckService {
            answer: Mutex::new(Answer::Success),
            exec_output,
            calls: Default::default(),
        }
    }

    pub fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = answer;
    }

    /// Calls served while `hook` was in flight (`None`: outside any hook).
    pub fn calls(&self, hook: Option<HookKind>) -> usize {
        self.calls[hook.map_or(10, |h| h as usize)].load(Ordering::Relaxed)
    }

    fn answer(&self, hook: Option<HookKind>) -> Result<(), Status> {
        self.calls[hook.map_or(10, |h| h as usize)].fetch_add(1, Ordering::Relaxed);
        match *self.answer.lock().unwrap_or_else(|e| e.into_inner()) {
            Answer::Success => Ok(()),
            Answer::Error(status) => Err(status),
        }
    }

    /// The callbacks for one hook's scope.
    pub fn scope(&self, hook: HookKind) -> Scope<'_> {
        Scope {
            service: self,
            hook: Some(hook),
        }
    }
}

/// The callbacks as one hook (or, with `hook: None`, the pool outside hooks) serves them.
pub struct Scope<'a> {
    pub service: &'a CheckService,
    pub hook: Option<HookKind>,
}

/// The output of a process that printed `output` and exited with 0 (at most 4 KiB: it fits in the
/// pipe, so writing never blocks).
fn finished_output(output: &[u8]) -> Result<OwnedFd, Status> {
    use std::io::Write as _;
    let (read, mut write) = std::io::pipe().map_err(|e| Status::from_io(&e))?;
    write.write_all(output).map_err(|e| Status::from_io(&e))?;
    drop(write);
    Ok(read.into())
}

struct FinishedProcess(Vec<u8>);

impl ContainerProcess for FinishedProcess {
    fn fd(&mut self, stream: ProcessStream) -> Result<OwnedFd, Status> {
        finished_output(if stream == ProcessStream::Stdout {
            &self.0
        } else {
            &[]
        })
    }
    fn exit_fd(&mut self) -> Result<OwnedFd, Status> {
        finished_output(&[])
    }
    fn exit_code(&mut self) -> Result<i32, Status> {
        Ok(0)
    }
}

impl ServiceCallbacks for Scope<'_> {
    fn mount_folder(
        &self,
        _: CallContext<'_>,
        _session: SessionId,
        _host_path: &str,
        _vm_path: &str,
        _read_only: bool,
        _name: &str,
    ) -> Result<(), Status> {
        self.service.answer(self.hook)
    }

    fn execute_binary(
        &self,
        _: CallContext<'_>,
        _session: SessionId,
        _path: &str,
        _argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.service.answer(self.hook)?;
        finished_output(&self.service.exec_output)
    }

    fn execute_binary_in_distribution(
        &self,
        _: CallContext<'_>,
        _session: SessionId,
        _distribution: DistributionId,
        _path: &str,
        _argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.service.answer(self.hook)?;
        finished_output(&self.service.exec_output)
    }

    fn container_mount_folder(
        &self,
        _: CallContext<'_>,
        _container_session: ContainerSessionId,
        _host_path: &str,
        _mountpoint: &str,
        _read_only: bool,
    ) -> Result<(), Status> {
        self.service.answer(self.hook)
    }

    fn container_unmount_folder(
        &self,
        _: CallContext<'_>,
        _container_session: ContainerSessionId,
        _mountpoint: &str,
    ) -> Result<(), Status> {
        self.service.answer(self.hook)
    }

    fn container_create_process(
        &self,
        _: CallContext<'_>,
        _container_session: ContainerSessionId,
        _path: &str,
        _argv: &[String],
        _envp: Option<&[String]>,
    ) -> Result<Box<dyn ContainerProcess>, CreateProcessError> {
        self.service.answer(self.hook)?;
        Ok(Box::new(FinishedProcess(self.service.exec_output.clone())))
    }
}

/// The manager's default callbacks (calls outside hooks), owning the service.
pub struct Outside(pub std::sync::Arc<CheckService>);

impl Outside {
    fn scope(&self) -> Scope<'_> {
        Scope {
            service: &self.0,
            hook: None,
        }
    }
}

impl ServiceCallbacks for Outside {
    fn mount_folder(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        host_path: &str,
        vm_path: &str,
        read_only: bool,
        name: &str,
    ) -> Result<(), Status> {
        self.scope()
            .mount_folder(ctx, session, host_path, vm_path, read_only, name)
    }

    fn execute_binary(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.scope().execute_binary(ctx, session, path, argv)
    }

    fn execute_binary_in_distribution(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        distribution: DistributionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.scope()
            .execute_binary_in_distribution(ctx, session, distribution, path, argv)
    }

    fn container_mount_folder(
        &self,
        ctx: CallContext<'_>,
        container_session: ContainerSessionId,
        host_path: &str,
        mountpoint: &str,
        read_only: bool,
    ) -> Result<(), Status> {
        self.scope().container_mount_folder(
            ctx,
            container_session,
            host_path,
            mountpoint,
            read_only,
        )
    }

    fn container_unmount_folder(
        &self,
        ctx: CallContext<'_>,
        container_session: ContainerSessionId,
        mountpoint: &str,
    ) -> Result<(), Status> {
        self.scope()
            .container_unmount_folder(ctx, container_session, mountpoint)
    }

    fn container_create_process(
        &self,
        ctx: CallContext<'_>,
        container_session: ContainerSessionId,
        path: &str,
        argv: &[String],
        envp: Option<&[String]>,
    ) -> Result<Box<dyn ContainerProcess>, CreateProcessError> {
        self.scope()
            .container_create_process(ctx, container_session, path, argv, envp)
    }
}
