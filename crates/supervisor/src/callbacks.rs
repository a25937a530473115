//! What the embedding service implements: the plugin API, one method per call of
//! `struct plughost_api_v1` (but `plugin_error`, which plughost handles itself).
//!
//! # Where callbacks run
//! - A call that arrives while a hook of that plugin is being dispatched runs **on the dispatching
//!   thread**, with the `scope` callbacks passed to that dispatch (see
//!   [`PluginManager::on_vm_started`](crate::PluginManager::on_vm_started)). That is how a call made by
//!   a plugin thread while the service holds its session state completes against that same state: the
//!   scope may borrow the locked state.
//! - A call that arrives while no hook of that plugin is in flight runs on a manager pool thread, with
//!   the default callbacks given to [`PluginManager::new`](crate::PluginManager::new). They must not
//!   block waiting for state that the service holds across a dispatch to the same plugin (for example,
//!   lock a session with `try_lock` and answer `PLUGHOST_E_NOT_RUNNING`, or route through the session's
//!   own pump).
//!
//! Every method returns a [`Status`] on failure: `-errno` or a `PLUGHOST_E_*` code; a positive or zero
//! status from an `Err` is turned into `-EIO`. The defaults answer `-ENOSYS`.

use std::os::fd::OwnedFd;

pub use plughost_wire::{
    ContainerSession, ContainerSessionId, Distribution, DistributionId, OfflineDistribution,
    Session, SessionId, VmSettings,
};

/// A plugin API status: `-errno` or a `PLUGHOST_E_*` code (always negative in an `Err`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

impl Status {
    pub const NOT_RUNNING: Status = Status(plughost_abi::PLUGHOST_E_NOT_RUNNING);
    pub const NOT_FOUND: Status = Status(plughost_abi::PLUGHOST_E_NOT_FOUND);
    pub const SHUTTING_DOWN: Status = Status(plughost_abi::PLUGHOST_E_SHUTTING_DOWN);
    pub const ILLEGAL_STATE: Status = Status(plughost_abi::PLUGHOST_E_ILLEGAL_STATE);
    pub const ILLEGAL_CALL: Status = Status(plughost_abi::PLUGHOST_E_ILLEGAL_CALL);

    /// `-errno`.
    pub fn errno(errno: i32) -> Status {
        Status(-errno.abs())
    }

    /// From an I/O error: its errno, or `-EIO`.
    pub fn from_io(e: &std::io::Error) -> Status {
        Status::errno(e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// The value sent to the plugin: never zero or positive for a failure.
    pub(crate) fn as_failure(self) -> i32 {
        if self.0 < 0 {
            self.0
        } else {
            -libc::EIO
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who is calling: the plugin's name as configured.
#[derive(Clone, Copy, Debug)]
pub struct CallContext<'a> {
    pub plugin: &'a str,
}

/// The stdio stream of a container process (`enum plughost_process_fd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessStream {
    Stdin,
    Stdout,
    Stderr,
}

/// A process created in a container session, owned by the plugin that created it until it calls
/// `process_release` (or its host dies).
pub trait ContainerProcess: Send {
    fn fd(&mut self, stream: ProcessStream) -> Result<OwnedFd, Status>;
    fn exit_fd(&mut self) -> Result<OwnedFd, Status>;
    /// `Err(Status::ILLEGAL_STATE)` while it runs; `128 + signal` when signalled.
    fn exit_code(&mut self) -> Result<i32, Status>;
}

/// A failed `container_create_process`: the status and the errno for `errno_out` (0 if none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateProcessError {
    pub status: Status,
    pub errno: i32,
}

impl From<Status> for CreateProcessError {
    fn from(status: Status) -> Self {
        CreateProcessError { status, errno: 0 }
    }
}

const ENOSYS: Status = Status(-libc::ENOSYS);

/// The plugin API as the service implements it (`PLUGIN_ABI.md`, "API").
pub trait ServiceCallbacks {
    fn mount_folder(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        host_path: &str,
        vm_path: &str,
        read_only: bool,
        name: &str,
    ) -> Result<(), Status>;

    /// Runs `path` in the session's VM; returns the caller's end of a socket connected to the
    /// process's stdin and stdout.
    fn execute_binary(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status>;

    fn execute_binary_in_distribution(
        &self,
        ctx: CallContext<'_>,
        session: SessionId,
        distribution: DistributionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status>;

    fn container_mount_folder(
        &self,
        _ctx: CallContext<'_>,
        _container_session: ContainerSessionId,
        _host_path: &str,
        _mountpoint: &str,
        _read_only: bool,
    ) -> Result<(), Status> {
        Err(ENOSYS)
    }

    fn container_unmount_folder(
        &self,
        _ctx: CallContext<'_>,
        _container_session: ContainerSessionId,
        _mountpoint: &str,
    ) -> Result<(), Status> {
        Err(ENOSYS)
    }

    fn container_create_process(
        &self,
        _ctx: CallContext<'_>,
        _container_session: ContainerSessionId,
        _path: &str,
        _argv: &[String],
        _envp: Option<&[String]>,
    ) -> Result<Box<dyn ContainerProcess>, CreateProcessError> {
        Err(ENOSYS.into())
    }
}
