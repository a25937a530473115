//! The `plughost_api_v1` table handed to the plugin: each function checks and copies its C arguments
//! into an owned [`ApiCall`] and passes it to the process-global [`Backend`].
//!
//! Argument rules (`PLUGIN_ABI.md`, "Status codes"): a NULL where a pointer is required is `-EFAULT`;
//! a string that is not UTF-8, an argv longer than [`MAX_ARGS`], or a bad enum value is `-EINVAL`.
//! No call is made to the backend for a refused argument.
//!
//! Safety invariant of this module: pointers come from plugin code, which the C contract makes
//! responsible for passing NUL-terminated strings, NULL-terminated arrays and writable out-pointers;
//! we check for NULL and read nothing past the terminators.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::OnceLock;

use plughost_abi::*;
use plughost_wire::{
    ApiCall, ApiReply, ContainerSessionId, DistributionId, ProcessHandle, SessionId, Version,
    MAX_ARGS,
};

/// What a backend answers to one call: the reply, and the fd that came with it (for
/// [`ApiReply::Fd`]).
pub type BackendReply = (ApiReply, Option<OwnedFd>);

/// Where API calls go. Errors are plain statuses (`PLUGHOST_E_SHUTTING_DOWN`, ...).
pub trait Backend: Send + Sync {
    fn call(&self, call: ApiCall) -> Result<BackendReply, i32>;
    /// `plugin_error`; the default applies the hook-thread rules of [`crate::hook`].
    fn plugin_error(&self, message: String) -> i32 {
        crate::hook::plugin_error(message)
    }
}

static BACKEND: OnceLock<&'static dyn Backend> = OnceLock::new();

/// Installs the process's backend (once; later calls are ignored and return false).
pub fn install_backend(backend: &'static dyn Backend) -> bool {
    BACKEND.set(backend).is_ok()
}

fn backend() -> Result<&'static dyn Backend, i32> {
    BACKEND.get().copied().ok_or(PLUGHOST_E_SHUTTING_DOWN)
}

/// The table for `version`. It is `'static` so that `api` stays valid for the plugin's lifetime.
pub fn api_table(version: Version) -> &'static plughost_api_v1 {
    static TABLE: OnceLock<plughost_api_v1> = OnceLock::new();
    TABLE.get_or_init(|| plughost_api_v1 {
        version: plughost_version {
            major: version.major,
            minor: version.minor,
            revision: version.revision,
        },
        mount_folder,
        execute_binary,
        plugin_error,
        execute_binary_in_distribution,
        container_mount_folder,
        container_unmount_folder,
        container_create_process,
        process_get_fd,
        process_get_exit_fd,
        process_get_exit_code,
        process_release,
    })
}

const EFAULT: i32 = -libc::EFAULT;
const EINVAL: i32 = -libc::EINVAL;

fn string(ptr: *const c_char) -> Result<String, i32> {
    if ptr.is_null() {
        return Err(EFAULT);
    }
    // SAFETY: non-NULL, and NUL-terminated per the module invariant.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map(str::to_owned).map_err(|_| EINVAL)
}

fn strings(list: *const *const c_char) -> Result<Vec<String>, i32> {
    if list.is_null() {
        return Err(EFAULT);
    }
    let mut out = Vec::new();
    for i in 0.. {
        if i > MAX_ARGS {
            return Err(EINVAL);
        }
        // SAFETY: the array is NULL-terminated (module invariant) and we stop at the terminator.
        let item = unsafe { *list.add(i) };
        if item.is_null() {
            break;
        }
        out.push(string(item)?);
    }
    Ok(out)
}

fn status_of(result: Result<(), i32>) -> plughost_status {
    match result {
        Ok(()) => PLUGHOST_OK,
        Err(status) => status,
    }
}

/// Calls the backend and expects a plain status.
fn call_status(call: ApiCall) -> Result<(), i32> {
    match backend()?.call(call)? {
        (ApiReply::Status(0), _) => Ok(()),
        (ApiReply::Status(status), _) => Err(status.min(-1)),
        _ => Err(EINVAL),
    }
}

/// Calls the backend and expects an fd, written to `fd_out`.
fn call_fd(call: ApiCall, fd_out: *mut c_int) -> Result<(), i32> {
    match backend()?.call(call)? {
        (ApiReply::Fd, Some(fd)) => {
            // SAFETY: fd_out was checked non-NULL by the caller and is writable (module invariant).
            unsafe { *fd_out = fd.into_raw_fd() };
            Ok(())
        }
        (ApiReply::Status(status), _) => Err(status.min(-1)),
        _ => Err(EINVAL),
    }
}

unsafe extern "C" fn mount_folder(
    session: plughost_session_id,
    host_path: *const c_char,
    vm_path: *const c_char,
    read_only: bool,
    name: *const c_char,
) -> plughost_status {
    status_of((|| {
        let call = ApiCall::MountFolder {
            session: SessionId(session),
            host_path: string(host_path)?,
            vm_path: string(vm_path)?,
            read_only,
            name: string(name)?,
        };
        call_status(call)
    })())
}

unsafe extern "C" fn execute_binary(
    session: plughost_session_id,
    path: *const c_char,
    argv: *const *const c_char,
    fd_out: *mut c_int,
) -> plughost_status {
    status_of((|| {
        if fd_out.is_null() {
            return Err(EFAULT);
        }
        let call = ApiCall::ExecuteBinary {
            session: SessionId(session),
            path: string(path)?,
            argv: strings(argv)?,
        };
        call_fd(call, fd_out)
    })())
}

unsafe extern "C" fn plugin_error(message: *const c_char) -> plughost_status {
    match string(message) {
        Ok(message) => match backend() {
            Ok(backend) => backend.plugin_error(message),
            Err(status) => status,
        },
        Err(status) => status,
    }
}

unsafe extern "C" fn execute_binary_in_distribution(
    session: plughost_session_id,
    distribution: *const plughost_uuid,
    path: *const c_char,
    argv: *const *const c_char,
    fd_out: *mut c_int,
) -> plughost_status {
    status_of((|| {
        if fd_out.is_null() || distribution.is_null() {
            return Err(EFAULT);
        }
        // SAFETY: non-NULL, points to a plughost_uuid (module invariant); it is plain bytes.
        let distribution = unsafe { (*distribution).bytes };
        let call = ApiCall::ExecuteBinaryInDistribution {
            session: SessionId(session),
            distribution: DistributionId(distribution),
            path: string(path)?,
            argv: strings(argv)?,
        };
        call_fd(call, fd_out)
    })())
}

unsafe extern "C" fn container_mount_folder(
    container_session: plughost_container_session_id,
    host_path: *const c_char,
    mountpoint: *const c_char,
    read_only: bool,
) -> plughost_status {
    status_of((|| {
        let call = ApiCall::ContainerMountFolder {
            container_session: ContainerSessionId(container_session),
            host_path: string(host_path)?,
            mountpoint: string(mountpoint)?,
            read_only,
        };
        call_status(call)
    })())
}

unsafe extern "C" fn container_unmount_folder(
    container_session: plughost_container_session_id,
    mountpoint: *const c_char,
) -> plughost_status {
    status_of((|| {
        call_status(ApiCall::ContainerUnmountFolder {
            container_session: ContainerSessionId(container_session),
            mountpoint: string(mountpoint)?,
        })
    })())
}

/// What a `plughost_process *` points to in this runtime: the service's handle.
struct ProcessBox {
    handle: ProcessHandle,
}

unsafe extern "C" fn container_create_process(
    container_session: plughost_container_session_id,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    process_out: *mut *mut plughost_process,
    errno_out: *mut c_int,
) -> plughost_status {
    let set_errno = |errno: i32| {
        if !errno_out.is_null() {
            // SAFETY: non-NULL and writable (module invariant).
            unsafe { *errno_out = errno };
        }
    };
    set_errno(0);
    status_of((|| {
        if process_out.is_null() {
            return Err(EFAULT);
        }
        let envp = if envp.is_null() {
            None
        } else {
            Some(strings(envp)?)
        };
        let call = ApiCall::ContainerCreateProcess {
            container_session: ContainerSessionId(container_session),
            path: string(path)?,
            argv: strings(argv)?,
            envp,
        };
        match backend()?.call(call)? {
            (ApiReply::Process(handle), _) => {
                let boxed = Box::into_raw(Box::new(ProcessBox { handle }));
                // SAFETY: process_out checked non-NULL and writable (module invariant).
                unsafe { *process_out = boxed.cast::<plughost_process>() };
                Ok(())
            }
            (ApiReply::ProcessFailed { status, errno }, _) => {
                set_errno(errno);
                Err(status.min(-1))
            }
            (ApiReply::Status(status), _) => Err(status.min(-1)),
            _ => Err(EINVAL),
        }
    })())
}

fn handle_of(process: *mut plughost_process) -> Result<ProcessHandle, i32> {
    if process.is_null() {
        return Err(EFAULT);
    }
    // SAFETY: a non-NULL process pointer was returned by container_create_process (contract), so it
    // points to a live ProcessBox until process_release.
    Ok(unsafe { (*process.cast::<ProcessBox>()).handle })
}

unsafe extern "C" fn process_get_fd(
    process: *mut plughost_process,
    which: plughost_process_fd,
    fd_out: *mut c_int,
) -> plughost_status {
    status_of((|| {
        let process = handle_of(process)?;
        if fd_out.is_null() {
            return Err(EFAULT);
        }
        if !(PLUGHOST_PROCESS_STDIN..=PLUGHOST_PROCESS_STDERR).contains(&which) {
            return Err(EINVAL);
        }
        call_fd(ApiCall::ProcessGetFd { process, which }, fd_out)
    })())
}

unsafe extern "C" fn process_get_exit_fd(
    process: *mut plughost_process,
    fd_out: *mut c_int,
) -> plughost_status {
    status_of((|| {
        let process = handle_of(process)?;
        if fd_out.is_null() {
            return Err(EFAULT);
        }
        call_fd(ApiCall::ProcessGetExitFd { process }, fd_out)
    })())
}

unsafe extern "C" fn process_get_exit_code(
    process: *mut plughost_process,
    exit_code: *mut c_int,
) -> plughost_status {
    status_of((|| {
        let process = handle_of(process)?;
        if exit_code.is_null() {
            return Err(EFAULT);
        }
        match backend()?.call(ApiCall::ProcessGetExitCode { process })? {
            (ApiReply::ExitCode(code), _) => {
                // SAFETY: checked non-NULL, writable (module invariant).
                unsafe { *exit_code = code };
                Ok(())
            }
            (ApiReply::Status(status), _) => Err(status.min(-1)),
            _ => Err(EINVAL),
        }
    })())
}

unsafe extern "C" fn process_release(process: *mut plughost_process) {
    let Ok(handle) = handle_of(process) else {
        return;
    };
    // SAFETY: the pointer came from Box::into_raw in container_create_process and the contract says
    // it is released once.
    drop(unsafe { Box::from_raw(process.cast::<ProcessBox>()) });
    if let Ok(backend) = backend() {
        let _ = backend.call(ApiCall::ProcessRelease { process: handle });
    }
}
