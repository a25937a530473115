//! The service's API as safe methods (`PLUGIN_ABI.md`, "API").
//!
//! Each method turns its arguments into C strings first; a string with an interior NUL is `-EINVAL`
//! and the service is not called. The raw calls live in [`crate::ffi`].

use std::ffi::CString;
use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use plughost_abi as abi;

use crate::ffi::{CStrArray, RawApi, RawProcess};
use crate::{ContainerSessionId, SessionId, Status, Uuid};

/// The running service's version (`struct plughost_version`); compares field by field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub revision: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, revision: u32) -> Self {
        Version {
            major,
            minor,
            revision,
        }
    }
}

impl From<abi::plughost_version> for Version {
    fn from(v: abi::plughost_version) -> Self {
        Version::new(v.major, v.minor, v.revision)
    }
}

impl From<Version> for abi::plughost_version {
    fn from(v: Version) -> Self {
        abi::plughost_version {
            major: v.major,
            minor: v.minor,
            revision: v.revision,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)
    }
}

/// The service's API table, handed to [`Plugin::load`](crate::Plugin::load). `Copy`, `Send` and `Sync`:
/// every call may be made from any plugin thread, during a hook or not (`PLUGIN_ABI.md`, "API").
///
/// A call made while a hook of the same session runs completes; a call made after the service began
/// tearing down what it needs fails with [`Status::NOT_RUNNING`] or [`Status::SHUTTING_DOWN`].
#[derive(Clone, Copy)]
pub struct Api {
    pub(crate) raw: RawApi,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The running service's version.
    pub fn version(&self) -> Version {
        self.raw.version().into()
    }

    /// Bind-mounts `host_path` at `vm_path` in the session's VM, creating missing directories.
    /// `-ENOENT` when `host_path` is missing.
    pub fn mount_folder(
        &self,
        session: SessionId,
        host_path: &Path,
        vm_path: &str,
        read_only: bool,
        name: &str,
    ) -> Result<(), Status> {
        let host_path = path_c_string(host_path)?;
        let vm_path = c_string(vm_path)?;
        let name = c_string(name)?;
        self.raw
            .mount_folder(session.0, &host_path, &vm_path, read_only, &name)
            .into_result()
    }

    /// Runs `path` in the session's VM with `argv` (`argv[0]` included). The returned socket is
    /// connected to the process's stdin and stdout; its stderr goes to the service log.
    pub fn execute_binary(
        &self,
        session: SessionId,
        path: &str,
        argv: &[&str],
    ) -> Result<UnixStream, Status> {
        let path = c_string(path)?;
        let argv = CStrArray::new(argv)?;
        self.raw
            .execute_binary(session.0, &path, &argv)
            .map(UnixStream::from)
    }

    /// As [`execute_binary`](Api::execute_binary), inside a running distribution;
    /// [`Status::NOT_RUNNING`] when it is not running.
    pub fn execute_binary_in_distribution(
        &self,
        session: SessionId,
        distribution: &Uuid,
        path: &str,
        argv: &[&str],
    ) -> Result<UnixStream, Status> {
        let path = c_string(path)?;
        let argv = CStrArray::new(argv)?;
        let distribution = abi::plughost_uuid {
            bytes: distribution.0,
        };
        self.raw
            .execute_binary_in_distribution(session.0, &distribution, &path, &argv)
            .map(UnixStream::from)
    }

    /// Sets the message the user sees when the current veto hook fails. Only on the hook's own thread,
    /// during a veto hook, once per hook ([`Status::ILLEGAL_CALL`], [`Status::ILLEGAL_STATE`]).
    /// Returning [`HookError::with_message`](crate::HookError::with_message) from the hook does this for
    /// you.
    pub fn plugin_error(&self, message: &str) -> Result<(), Status> {
        let message = c_string(message)?;
        self.raw.plugin_error(&message).into_result()
    }

    /// Bind-mounts `host_path` at `mountpoint` in the container session; `mountpoint` must be absolute.
    pub fn container_mount_folder(
        &self,
        cs: ContainerSessionId,
        host_path: &Path,
        mountpoint: &str,
        read_only: bool,
    ) -> Result<(), Status> {
        let host_path = path_c_string(host_path)?;
        let mountpoint = c_string(mountpoint)?;
        self.raw
            .container_mount_folder(cs.0, &host_path, &mountpoint, read_only)
            .into_result()
    }

    /// Undoes [`container_mount_folder`](Api::container_mount_folder).
    pub fn container_unmount_folder(
        &self,
        cs: ContainerSessionId,
        mountpoint: &str,
    ) -> Result<(), Status> {
        let mountpoint = c_string(mountpoint)?;
        self.raw
            .container_unmount_folder(cs.0, &mountpoint)
            .into_result()
    }

    /// Starts `path` with `argv` (`argv[0]` included) and `envp` (`None`: the service's default) in the
    /// container session's VM. Never starts a session VM: [`Status::NOT_RUNNING`] without one.
    ///
    /// The error carries the status and, when the service reports one, the errno of the failed start
    /// (e.g. `Some(2)` when `path` does not exist).
    pub fn container_create_process(
        &self,
        cs: ContainerSessionId,
        path: &str,
        argv: &[&str],
        envp: Option<&[&str]>,
    ) -> Result<Process, (Status, Option<i32>)> {
        let path = c_string(path).map_err(|status| (status, None))?;
        let argv = CStrArray::new(argv).map_err(|status| (status, None))?;
        let envp = envp
            .map(CStrArray::new)
            .transpose()
            .map_err(|status| (status, None))?;
        let raw = self
            .raw
            .container_create_process(cs.0, &path, &argv, envp.as_ref())?;
        Ok(Process { raw })
    }
}

/// Which standard stream of a [`Process`] (`enum plughost_process_fd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessFd {
    Stdin,
    Stdout,
    Stderr,
}

impl ProcessFd {
    pub(crate) fn to_raw(self) -> abi::plughost_process_fd {
        match self {
            ProcessFd::Stdin => abi::PLUGHOST_PROCESS_STDIN,
            ProcessFd::Stdout => abi::PLUGHOST_PROCESS_STDOUT,
            ProcessFd::Stderr => abi::PLUGHOST_PROCESS_STDERR,
        }
    }
}

/// A process created in a container session. Dropping it calls `process_release` (the process keeps
/// running; only the handle goes). `Send`, not `Sync`: use it from one thread at a time.
#[derive(Debug)]
pub struct Process {
    raw: RawProcess,
}

impl Process {
    /// One of the process's standard streams; the caller owns the fd.
    pub fn fd(&self, which: ProcessFd) -> Result<OwnedFd, Status> {
        self.raw.fd(which.to_raw())
    }

    /// An fd that becomes readable when the process exits (pidfd semantics); the caller owns it.
    pub fn exit_fd(&self) -> Result<OwnedFd, Status> {
        self.raw.exit_fd()
    }

    /// The exit code, `128 + signal` when signalled; [`Status::ILLEGAL_STATE`] while it runs.
    pub fn exit_code(&self) -> Result<i32, Status> {
        self.raw.exit_code()
    }
}

fn c_string(s: &str) -> Result<CString, Status> {
    CString::new(s).map_err(|_| Status::EINVAL)
}

fn path_c_string(path: &Path) -> Result<CString, Status> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Status::EINVAL)
}
