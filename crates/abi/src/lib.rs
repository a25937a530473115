//! `#[repr(C)]` mirror of `include/plughost/plugin_api.h`, the plugin contract of
//! `docs/PLUGIN_ABI.md` (version 1).
//!
//! This crate is layout only: types, constants and function-pointer signatures, with the C names of the
//! header so that the two can be compared line by line. `tests/layout.rs` compiles the header with the
//! system C compiler and checks the size, alignment and field offsets of every struct against this crate.
//! It holds no behaviour and no `unsafe` code; the SDK and the host build on it.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int};

/// `0` is success; negative is `-errno` or a `PLUGHOST_E_*` code.
pub type plughost_status = i32;
/// An opaque cookie per user session (not a uid).
pub type plughost_session_id = u32;
/// Container sessions are numbered separately from user sessions, from 1.
pub type plughost_container_session_id = u32;
/// `enum plughost_process_fd` in C. Kept as `c_int` so that a value outside the enum that a plugin
/// passes is an `-EINVAL`, not undefined behaviour.
pub type plughost_process_fd = c_int;

pub const PLUGHOST_PROCESS_STDIN: plughost_process_fd = 0;
pub const PLUGHOST_PROCESS_STDOUT: plughost_process_fd = 1;
pub const PLUGHOST_PROCESS_STDERR: plughost_process_fd = 2;

pub const PLUGHOST_OK: plughost_status = 0;
pub const PLUGHOST_E_REQUIRES_UPDATE: plughost_status = -10001;
pub const PLUGHOST_E_ILLEGAL_CALL: plughost_status = -10002;
pub const PLUGHOST_E_ILLEGAL_STATE: plughost_status = -10003;
pub const PLUGHOST_E_NOT_RUNNING: plughost_status = -10004;
pub const PLUGHOST_E_NOT_FOUND: plughost_status = -10005;
pub const PLUGHOST_E_SHUTTING_DOWN: plughost_status = -10006;
pub const PLUGHOST_E_HOST_CRASHED: plughost_status = -10007;

/// `plughost_vm_settings.flags`: the user's configuration asks for a custom kernel.
pub const PLUGHOST_VM_CUSTOM_KERNEL: u32 = 1;
/// `plughost_vm_settings.flags`: the user's configuration asks for a custom kernel command line.
pub const PLUGHOST_VM_CUSTOM_KERNEL_CMDLINE: u32 = 2;

/// The exported symbol of the entry point (`PLUGHOST_ENTRY_POINT_V1` in C).
pub const PLUGHOST_ENTRY_POINT_V1: &str = "plughost_plugin_entry_v1";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct plughost_version {
    pub major: u32,
    pub minor: u32,
    pub revision: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct plughost_uuid {
    /// RFC 9562 byte order.
    pub bytes: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct plughost_session {
    pub id: plughost_session_id,
    pub uid: u32,
    pub gid: u32,
    pub user_name: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct plughost_vm_settings {
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct plughost_distribution {
    pub id: plughost_uuid,
    pub name: *const c_char,
    pub pid_namespace: u64,
    pub package: *const c_char,
    pub init_pid: u32,
    pub flavor: *const c_char,
    pub version: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct plughost_offline_distribution {
    pub id: plughost_uuid,
    pub name: *const c_char,
    pub package: *const c_char,
    pub flavor: *const c_char,
    pub version: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct plughost_container_session {
    pub id: plughost_container_session_id,
    pub display_name: *const c_char,
    pub application_pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Opaque: `typedef struct plughost_process plughost_process;`, used only by pointer.
#[repr(C)]
pub struct plughost_process {
    _opaque: [u8; 0],
    _not_send_sync: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

pub type on_vm_started_fn =
    unsafe extern "C" fn(*const plughost_session, *const plughost_vm_settings) -> plughost_status;
pub type on_vm_stopping_fn = unsafe extern "C" fn(*const plughost_session) -> plughost_status;
pub type on_distribution_fn =
    unsafe extern "C" fn(*const plughost_session, *const plughost_distribution) -> plughost_status;
pub type on_offline_distribution_fn = unsafe extern "C" fn(
    *const plughost_session,
    *const plughost_offline_distribution,
) -> plughost_status;
pub type on_container_session_fn =
    unsafe extern "C" fn(*const plughost_container_session) -> plughost_status;

/// `struct plughost_hooks_v1`: zero-filled by the service, set by the plugin's entry point.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct plughost_hooks_v1 {
    pub on_vm_started: Option<on_vm_started_fn>,
    pub on_vm_stopping: Option<on_vm_stopping_fn>,
    pub on_distribution_started: Option<on_distribution_fn>,
    pub on_distribution_stopping: Option<on_distribution_fn>,
    pub on_distribution_registered: Option<on_offline_distribution_fn>,
    pub on_distribution_unregistered: Option<on_offline_distribution_fn>,
    pub on_container_session_created: Option<on_container_session_fn>,
    pub on_container_session_stopping: Option<on_container_session_fn>,
    pub on_session_vm_started: Option<on_container_session_fn>,
    pub on_session_vm_stopping: Option<on_container_session_fn>,
}

pub type mount_folder_fn = unsafe extern "C" fn(
    plughost_session_id,
    *const c_char,
    *const c_char,
    bool,
    *const c_char,
) -> plughost_status;
pub type execute_binary_fn = unsafe extern "C" fn(
    plughost_session_id,
    *const c_char,
    *const *const c_char,
    *mut c_int,
) -> plughost_status;
pub type plugin_error_fn = unsafe extern "C" fn(*const c_char) -> plughost_status;
pub type execute_binary_in_distribution_fn = unsafe extern "C" fn(
    plughost_session_id,
    *const plughost_uuid,
    *const c_char,
    *const *const c_char,
    *mut c_int,
) -> plughost_status;
pub type container_mount_folder_fn = unsafe extern "C" fn(
    plughost_container_session_id,
    *const c_char,
    *const c_char,
    bool,
) -> plughost_status;
pub type container_unmount_folder_fn =
    unsafe extern "C" fn(plughost_container_session_id, *const c_char) -> plughost_status;
pub type container_create_process_fn = unsafe extern "C" fn(
    plughost_container_session_id,
    *const c_char,
    *const *const c_char,
    *const *const c_char,
    *mut *mut plughost_process,
    *mut c_int,
) -> plughost_status;
pub type process_get_fd_fn =
    unsafe extern "C" fn(*mut plughost_process, plughost_process_fd, *mut c_int) -> plughost_status;
pub type process_get_exit_fd_fn =
    unsafe extern "C" fn(*mut plughost_process, *mut c_int) -> plughost_status;
pub type process_get_exit_code_fn =
    unsafe extern "C" fn(*mut plughost_process, *mut c_int) -> plughost_status;
pub type process_release_fn = unsafe extern "C" fn(*mut plughost_process);

/// `struct plughost_api_v1`: filled by the service, valid for the plugin's lifetime.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct plughost_api_v1 {
    pub version: plughost_version,
    pub mount_folder: mount_folder_fn,
    pub execute_binary: execute_binary_fn,
    pub plugin_error: plugin_error_fn,
    pub execute_binary_in_distribution: execute_binary_in_distribution_fn,
    pub container_mount_folder: container_mount_folder_fn,
    pub container_unmount_folder: container_unmount_folder_fn,
    pub container_create_process: container_create_process_fn,
    pub process_get_fd: process_get_fd_fn,
    pub process_get_exit_fd: process_get_exit_fd_fn,
    pub process_get_exit_code: process_get_exit_code_fn,
    pub process_release: process_release_fn,
}

/// The entry point's type: `plughost_plugin_entry_v1(api, hooks)`.
pub type plughost_plugin_entry_v1_fn =
    unsafe extern "C" fn(*const plughost_api_v1, *mut plughost_hooks_v1) -> plughost_status;

/// The `PLUGHOST_*` name of a plughost code (`PLUGHOST_E_NOT_FOUND`), `None` for anything else.
pub fn plughost_name(status: plughost_status) -> Option<&'static str> {
    Some(match status {
        PLUGHOST_OK => "PLUGHOST_OK",
        PLUGHOST_E_REQUIRES_UPDATE => "PLUGHOST_E_REQUIRES_UPDATE",
        PLUGHOST_E_ILLEGAL_CALL => "PLUGHOST_E_ILLEGAL_CALL",
        PLUGHOST_E_ILLEGAL_STATE => "PLUGHOST_E_ILLEGAL_STATE",
        PLUGHOST_E_NOT_RUNNING => "PLUGHOST_E_NOT_RUNNING",
        PLUGHOST_E_NOT_FOUND => "PLUGHOST_E_NOT_FOUND",
        PLUGHOST_E_SHUTTING_DOWN => "PLUGHOST_E_SHUTTING_DOWN",
        PLUGHOST_E_HOST_CRASHED => "PLUGHOST_E_HOST_CRASHED",
        _ => return None,
    })
}

/// The name of a status as users should see it: `PLUGHOST_E_NOT_FOUND`, `EROFS` for `-30`; `None`
/// for a value with no name (a positive one, an unknown code).
pub fn status_name(status: plughost_status) -> Option<&'static str> {
    plughost_name(status).or_else(|| {
        // The kernel's errno values are below 4096 (MAX_ERRNO); PLUGHOST_E_* codes start at -10001.
        if status < 0 && status > -4096 {
            errno_name(-status)
        } else {
            None
        }
    })
}

/// The asm-generic errno names (x86, arm, aarch64, riscv, powerpc, s390x, loongarch), index = errno.
/// MIPS and SPARC number errno differently above 34; there only that range gets a name.
#[rustfmt::skip]
const ERRNO_NAMES: [&str; 134] = [
    "", "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "ENXIO", "E2BIG", "ENOEXEC", "EBADF", "ECHILD",
    "EAGAIN", "ENOMEM", "EACCES", "EFAULT", "ENOTBLK", "EBUSY", "EEXIST", "EXDEV", "ENODEV",
    "ENOTDIR", "EISDIR", "EINVAL", "ENFILE", "EMFILE", "ENOTTY", "ETXTBSY", "EFBIG", "ENOSPC",
    "ESPIPE", "EROFS", "EMLINK", "EPIPE", "EDOM", "ERANGE", "EDEADLK", "ENAMETOOLONG", "ENOLCK",
    "ENOSYS", "ENOTEMPTY", "ELOOP", "", "ENOMSG", "EIDRM", "ECHRNG", "EL2NSYNC", "EL3HLT", "EL3RST",
    "ELNRNG", "EUNATCH", "ENOCSI", "EL2HLT", "EBADE", "EBADR", "EXFULL", "ENOANO", "EBADRQC",
    "EBADSLT", "", "EBFONT", "ENOSTR", "ENODATA", "ETIME", "ENOSR", "ENONET", "ENOPKG", "EREMOTE",
    "ENOLINK", "EADV", "ESRMNT", "ECOMM", "EPROTO", "EMULTIHOP", "EDOTDOT", "EBADMSG", "EOVERFLOW",
    "ENOTUNIQ", "EBADFD", "EREMCHG", "ELIBACC", "ELIBBAD", "ELIBSCN", "ELIBMAX", "ELIBEXEC",
    "EILSEQ", "ERESTART", "ESTRPIPE", "EUSERS", "ENOTSOCK", "EDESTADDRREQ", "EMSGSIZE",
    "EPROTOTYPE", "ENOPROTOOPT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EOPNOTSUPP", "EPFNOSUPPORT",
    "EAFNOSUPPORT", "EADDRINUSE", "EADDRNOTAVAIL", "ENETDOWN", "ENETUNREACH", "ENETRESET",
    "ECONNABORTED", "ECONNRESET", "ENOBUFS", "EISCONN", "ENOTCONN", "ESHUTDOWN", "ETOOMANYREFS",
    "ETIMEDOUT", "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EALREADY", "EINPROGRESS", "ESTALE",
    "EUCLEAN", "ENOTNAM", "ENAVAIL", "EISNAM", "EREMOTEIO", "EDQUOT", "ENOMEDIUM", "EMEDIUMTYPE",
    "ECANCELED", "ENOKEY", "EKEYEXPIRED", "EKEYREVOKED", "EKEYREJECTED", "EOWNERDEAD",
    "ENOTRECOVERABLE", "ERFKILL", "EHWPOISON",
];

const GENERIC_ERRNO: bool = !cfg!(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
));

/// The name of an errno value (`EROFS` for 30), `None` for one this target does not name.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    let max = if GENERIC_ERRNO {
        ERRNO_NAMES.len() - 1
    } else {
        34
    };
    let index = usize::try_from(errno).ok().filter(|&i| i <= max)?;
    Some(ERRNO_NAMES[index]).filter(|name| !name.is_empty())
}

/// Rust spelling of `PLUGHOST_REQUIRE_VERSION`'s comparison: is `running` at least `required`?
pub fn version_at_least(running: plughost_version, required: plughost_version) -> bool {
    running >= required
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_field_by_field() {
        let v = |major, minor, revision| plughost_version {
            major,
            minor,
            revision,
        };
        assert!(version_at_least(v(1, 2, 3), v(1, 2, 3)));
        assert!(version_at_least(v(1, 3, 0), v(1, 2, 9)));
        assert!(!version_at_least(v(0, 9, 9), v(1, 0, 0)));
        assert!(!version_at_least(v(1, 2, 2), v(1, 2, 3)));
    }

    #[test]
    fn statuses_have_their_names() {
        assert_eq!(status_name(-30), Some("EROFS"));
        assert_eq!(status_name(-2), Some("ENOENT"));
        assert_eq!(
            status_name(PLUGHOST_E_NOT_FOUND),
            Some("PLUGHOST_E_NOT_FOUND")
        );
        assert_eq!(status_name(PLUGHOST_OK), Some("PLUGHOST_OK"));
        assert_eq!(status_name(-41), None); // no errno 41
        assert_eq!(status_name(-5000), None);
        assert_eq!(status_name(7), None);
    }
}
