//! Calls from the plugin into the service: the API table, C string arrays, out fds and process
//! handles (invariants 1, 3 and 4 of [`super`]).

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};

use plughost_abi::{
    plughost_api_v1, plughost_process, plughost_process_fd, plughost_status, plughost_uuid,
    plughost_version,
};

use crate::Status;

/// The API table; see invariant 1. Only this module constructs one.
#[derive(Clone, Copy)]
pub(crate) struct RawApi(pub(super) &'static plughost_api_v1);

/// A NULL-terminated array of C strings (`const char *const *`), valid while it lives.
pub(crate) struct CStrArray {
    // Owns the bytes `ptrs` points into; a `CString`'s buffer does not move when the Vec does.
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStrArray {
    /// `-EINVAL` when an item has an interior NUL.
    pub(crate) fn new(items: &[&str]) -> Result<Self, Status> {
        let strings = items
            .iter()
            .map(|item| CString::new(*item).map_err(|_| Status::EINVAL))
            .collect::<Result<Vec<_>, _>>()?;
        let ptrs = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain([ptr::null()])
            .collect();
        Ok(CStrArray {
            _strings: strings,
            ptrs,
        })
    }

    fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

impl RawApi {
    pub(crate) fn version(self) -> plughost_version {
        self.0.version
    }

    pub(crate) fn mount_folder(
        self,
        session: u32,
        host_path: &CStr,
        vm_path: &CStr,
        read_only: bool,
        name: &CStr,
    ) -> Status {
        // SAFETY: invariant 1; the strings are borrowed for the whole call.
        Status(unsafe {
            (self.0.mount_folder)(
                session,
                host_path.as_ptr(),
                vm_path.as_ptr(),
                read_only,
                name.as_ptr(),
            )
        })
    }

    pub(crate) fn execute_binary(
        self,
        session: u32,
        path: &CStr,
        argv: &CStrArray,
    ) -> Result<OwnedFd, Status> {
        let mut fd: c_int = -1;
        // SAFETY: invariant 1; `path` and `argv` are borrowed for the call, `fd` is a live local.
        let status =
            unsafe { (self.0.execute_binary)(session, path.as_ptr(), argv.as_ptr(), &mut fd) };
        take_fd(status, fd)
    }

    pub(crate) fn plugin_error(self, message: &CStr) -> Status {
        // SAFETY: invariant 1; `message` is borrowed for the call.
        Status(unsafe { (self.0.plugin_error)(message.as_ptr()) })
    }

    pub(crate) fn execute_binary_in_distribution(
        self,
        session: u32,
        distribution: &plughost_uuid,
        path: &CStr,
        argv: &CStrArray,
    ) -> Result<OwnedFd, Status> {
        let mut fd: c_int = -1;
        // SAFETY: invariant 1; every pointer is borrowed for the call, `fd` is a live local.
        let status = unsafe {
            (self.0.execute_binary_in_distribution)(
                session,
                distribution,
                path.as_ptr(),
                argv.as_ptr(),
                &mut fd,
            )
        };
        take_fd(status, fd)
    }

    pub(crate) fn container_mount_folder(
        self,
        cs: u32,
        host_path: &CStr,
        mountpoint: &CStr,
        read_only: bool,
    ) -> Status {
        // SAFETY: invariant 1; the strings are borrowed for the call.
        Status(unsafe {
            (self.0.container_mount_folder)(cs, host_path.as_ptr(), mountpoint.as_ptr(), read_only)
        })
    }

    pub(crate) fn container_unmount_folder(self, cs: u32, mountpoint: &CStr) -> Status {
        // SAFETY: invariant 1; `mountpoint` is borrowed for the call.
        Status(unsafe { (self.0.container_unmount_folder)(cs, mountpoint.as_ptr()) })
    }

    pub(crate) fn container_create_process(
        self,
        cs: u32,
        path: &CStr,
        argv: &CStrArray,
        envp: Option<&CStrArray>,
    ) -> Result<RawProcess, (Status, Option<i32>)> {
        let mut process: *mut plughost_process = ptr::null_mut();
        let mut errno: c_int = 0;
        let envp = envp.map_or(ptr::null(), CStrArray::as_ptr);
        // SAFETY: invariant 1; the strings and arrays are borrowed for the call (`envp` may be NULL),
        // `process` and `errno` are live locals.
        let status = unsafe {
            (self.0.container_create_process)(
                cs,
                path.as_ptr(),
                argv.as_ptr(),
                envp,
                &mut process,
                &mut errno,
            )
        };
        if let Err(status) = Status(status).into_result() {
            return Err((status, (errno != 0).then_some(errno)));
        }
        match NonNull::new(process) {
            Some(process) => Ok(RawProcess { api: self, process }),
            None => Err((Status::EIO, None)),
        }
    }
}

/// Invariant 3: own `fd` only when the call succeeded.
fn take_fd(status: plughost_status, fd: c_int) -> Result<OwnedFd, Status> {
    Status(status).into_result()?;
    if fd < 0 {
        return Err(Status::EIO);
    }
    // SAFETY: the call succeeded, so the fd is open and ours alone (invariant 3); wrapped once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A process handle; see invariant 4.
#[derive(Debug)]
pub(crate) struct RawProcess {
    api: RawApi,
    process: NonNull<plughost_process>,
}

// SAFETY: the handle is not tied to the thread that created it: every API function may be called from
// any plugin thread (`PLUGIN_ABI.md`, "API"). It stays !Sync, so calls on one handle are never concurrent.
unsafe impl Send for RawProcess {}

impl RawProcess {
    pub(crate) fn fd(&self, which: plughost_process_fd) -> Result<OwnedFd, Status> {
        let mut fd: c_int = -1;
        // SAFETY: invariants 1 and 4: the handle is live until `drop`; `fd` is a live local.
        let status = unsafe { (self.api.0.process_get_fd)(self.process.as_ptr(), which, &mut fd) };
        take_fd(status, fd)
    }

    pub(crate) fn exit_fd(&self) -> Result<OwnedFd, Status> {
        let mut fd: c_int = -1;
        // SAFETY: invariants 1 and 4: the handle is live until `drop`; `fd` is a live local.
        let status = unsafe { (self.api.0.process_get_exit_fd)(self.process.as_ptr(), &mut fd) };
        take_fd(status, fd)
    }

    pub(crate) fn exit_code(&self) -> Result<i32, Status> {
        let mut code: c_int = 0;
        // SAFETY: invariants 1 and 4: the handle is live until `drop`; `code` is a live local.
        let status =
            unsafe { (self.api.0.process_get_exit_code)(self.process.as_ptr(), &mut code) };
        Status(status).into_result().map(|()| code)
    }
}

impl Drop for RawProcess {
    fn drop(&mut self) {
        // SAFETY: invariants 1 and 4: the handle is live, and `drop` runs once, so it is released once.
        unsafe { (self.api.0.process_release)(self.process.as_ptr()) }
    }
}

impl std::fmt::Debug for RawApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RawApi").field(&self.0.version).finish()
    }
}
