//! Running one plugin API call against the service's callbacks, for either isolation mode.
//!
//! Each call runs in a `debug` span `call{plugin call session|csession}`: served during a hook on
//! the dispatching thread, it nests in that hook's span (`manager/mod.rs`), so a log reads as one story
//! per plugin. `debug`, not `info`: an enabled span costs ~0.7 µs per call (BENCHMARKS.md's
//! callback_rtt is ~2.7 µs), a disabled one a level check. Where it runs and with which callbacks is decided by the callers (`proxy/`, `pool.rs`,
//! `inprocess.rs`), not here.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use plughost_abi::{PLUGHOST_PROCESS_STDERR, PLUGHOST_PROCESS_STDIN, PLUGHOST_PROCESS_STDOUT};
use plughost_wire::{ApiCall, ApiReply, ProcessHandle};

use crate::callbacks::{
    CallContext, ContainerProcess, CreateProcessError, ProcessStream, ServiceCallbacks, Status,
};

/// The container processes one plugin created and has not released. A leaf lock.
#[derive(Default)]
pub(crate) struct ProcessTable {
    next: u64,
    live: HashMap<u64, Box<dyn ContainerProcess>>,
}

/// Most unreleased processes one plugin may hold; past it `container_create_process` fails with
/// `-EMFILE` (a plugin that leaks handles must not grow the service without bound).
const MAX_PROCESSES: usize = 4096;

fn reply_status(result: Result<(), Status>) -> (ApiReply, Option<OwnedFd>) {
    match result {
        Ok(()) => (ApiReply::Status(0), None),
        Err(status) => (ApiReply::Status(status.as_failure()), None),
    }
}

fn reply_fd(result: Result<OwnedFd, Status>) -> (ApiReply, Option<OwnedFd>) {
    match result {
        Ok(fd) => (ApiReply::Fd, Some(fd)),
        Err(status) => (ApiReply::Status(status.as_failure()), None),
    }
}

fn with_process<T>(
    table: &Mutex<ProcessTable>,
    handle: ProcessHandle,
    f: impl FnOnce(&mut dyn ContainerProcess) -> Result<T, Status>,
) -> Result<T, Status> {
    let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
    let process = table.live.get_mut(&handle.0).ok_or(Status::NOT_FOUND)?;
    f(process.as_mut())
}

/// The VM session a call names, if it names one.
fn session_of(call: &ApiCall) -> Option<u32> {
    match call {
        ApiCall::MountFolder { session, .. }
        | ApiCall::ExecuteBinary { session, .. }
        | ApiCall::ExecuteBinaryInDistribution { session, .. } => Some(session.0),
        ApiCall::ContainerMountFolder { .. }
        | ApiCall::ContainerUnmountFolder { .. }
        | ApiCall::ContainerCreateProcess { .. }
        | ApiCall::ProcessGetFd { .. }
        | ApiCall::ProcessGetExitFd { .. }
        | ApiCall::ProcessGetExitCode { .. }
        | ApiCall::ProcessRelease { .. } => None,
    }
}

/// The container session a call names, if it names one.
fn container_session_of(call: &ApiCall) -> Option<u32> {
    match call {
        ApiCall::ContainerMountFolder {
            container_session, ..
        }
        | ApiCall::ContainerUnmountFolder {
            container_session, ..
        }
        | ApiCall::ContainerCreateProcess {
            container_session, ..
        } => Some(container_session.0),
        ApiCall::MountFolder { .. }
        | ApiCall::ExecuteBinary { .. }
        | ApiCall::ExecuteBinaryInDistribution { .. }
        | ApiCall::ProcessGetFd { .. }
        | ApiCall::ProcessGetExitFd { .. }
        | ApiCall::ProcessGetExitCode { .. }
        | ApiCall::ProcessRelease { .. } => None,
    }
}

/// Runs `call` with `handler`, in the call's span. Never panics on plugin input; every failure
/// becomes a status.
pub(crate) fn execute(
    ctx: CallContext<'_>,
    call: ApiCall,
    handler: &dyn ServiceCallbacks,
    processes: &Mutex<ProcessTable>,
) -> (ApiReply, Option<OwnedFd>) {
    // The field expressions run only when a subscriber wants the span.
    let _span = tracing::debug_span!(
        "call",
        plugin = %ctx.plugin,
        call = %call.name(),
        session = session_of(&call),
        csession = container_session_of(&call),
    )
    .entered();
    serve(ctx, call, handler, processes)
}

fn serve(
    ctx: CallContext<'_>,
    call: ApiCall,
    handler: &dyn ServiceCallbacks,
    processes: &Mutex<ProcessTable>,
) -> (ApiReply, Option<OwnedFd>) {
    match call {
        ApiCall::MountFolder {
            session,
            host_path,
            vm_path,
            read_only,
            name,
        } => {
            reply_status(handler.mount_folder(ctx, session, &host_path, &vm_path, read_only, &name))
        }
        ApiCall::ExecuteBinary {
            session,
            path,
            argv,
        } => reply_fd(handler.execute_binary(ctx, session, &path, &argv)),
        ApiCall::ExecuteBinaryInDistribution {
            session,
            distribution,
            path,
            argv,
        } => reply_fd(handler.execute_binary_in_distribution(
            ctx,
            session,
            distribution,
            &path,
            &argv,
        )),
        ApiCall::ContainerMountFolder {
            container_session,
            host_path,
            mountpoint,
            read_only,
        } => {
            if !mountpoint.starts_with('/') {
                return (ApiReply::Status(-libc::EINVAL), None);
            }
            reply_status(handler.container_mount_folder(
                ctx,
                container_session,
                &host_path,
                &mountpoint,
                read_only,
            ))
        }
        ApiCall::ContainerUnmountFolder {
            container_session,
            mountpoint,
        } => reply_status(handler.container_unmount_folder(ctx, container_session, &mountpoint)),
        ApiCall::ContainerCreateProcess {
            container_session,
            path,
            argv,
            envp,
        } => {
            if processes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .live
                .len()
                >= MAX_PROCESSES
            {
                return (ApiReply::Status(-libc::EMFILE), None);
            }
            match handler.container_create_process(
                ctx,
                container_session,
                &path,
                &argv,
                envp.as_deref(),
            ) {
                Ok(process) => {
                    let mut table = processes.lock().unwrap_or_else(|e| e.into_inner());
                    table.next += 1;
                    let handle = table.next;
                    table.live.insert(handle, process);
                    (ApiReply::Process(ProcessHandle(handle)), None)
                }
                Err(CreateProcessError { status, errno }) => (
                    ApiReply::ProcessFailed {
                        status: status.as_failure(),
                        errno,
                    },
                    None,
                ),
            }
        }
        ApiCall::ProcessGetFd { process, which } => {
            let stream = match which {
                PLUGHOST_PROCESS_STDIN => ProcessStream::Stdin,
                PLUGHOST_PROCESS_STDOUT => ProcessStream::Stdout,
                PLUGHOST_PROCESS_STDERR => ProcessStream::Stderr,
                _ => return (ApiReply::Status(-libc::EINVAL), None),
            };
            reply_fd(with_process(processes, process, |p| p.fd(stream)))
        }
        ApiCall::ProcessGetExitFd { process } => {
            reply_fd(with_process(processes, process, |p| p.exit_fd()))
        }
        ApiCall::ProcessGetExitCode { process } => {
            match with_process(processes, process, |p| p.exit_code()) {
                Ok(code) => (ApiReply::ExitCode(code), None),
                Err(status) => (ApiReply::Status(status.as_failure()), None),
            }
        }
        ApiCall::ProcessRelease { process } => {
            let removed = processes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .live
                .remove(&process.0);
            reply_status(removed.map(drop).ok_or(Status::NOT_FOUND))
        }
    }
}
