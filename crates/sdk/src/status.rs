//! Status codes and hook errors: the SDK's spelling of `plughost_status` (`PLUGIN_ABI.md`, "Status codes").

use std::fmt;

use plughost_abi as abi;

/// A `plughost_status`: `0` is success, negative is `-errno` or a `PLUGHOST_E_*` code.
///
/// The errno constants hold the *negated* value, as the ABI carries it: `Status::ENOENT == Status(-2)`.
/// Only the errno values that are the same on every Linux architecture (1 to 34) have a constant; use
/// [`Status::from_errno`] for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub i32);

impl Status {
    /// `PLUGHOST_OK`.
    pub const OK: Status = Status(abi::PLUGHOST_OK);
    /// `PLUGHOST_E_REQUIRES_UPDATE`: the service is older than the plugin needs.
    pub const REQUIRES_UPDATE: Status = Status(abi::PLUGHOST_E_REQUIRES_UPDATE);
    /// `PLUGHOST_E_ILLEGAL_CALL`: `plugin_error` outside the hook thread or outside a hook.
    pub const ILLEGAL_CALL: Status = Status(abi::PLUGHOST_E_ILLEGAL_CALL);
    /// `PLUGHOST_E_ILLEGAL_STATE`: `plugin_error` twice in one hook, or a process still running.
    pub const ILLEGAL_STATE: Status = Status(abi::PLUGHOST_E_ILLEGAL_STATE);
    /// `PLUGHOST_E_NOT_RUNNING`: the VM, session VM or distribution the call needs is not running.
    pub const NOT_RUNNING: Status = Status(abi::PLUGHOST_E_NOT_RUNNING);
    /// `PLUGHOST_E_NOT_FOUND`: unknown session, container session or distribution id.
    pub const NOT_FOUND: Status = Status(abi::PLUGHOST_E_NOT_FOUND);
    /// `PLUGHOST_E_SHUTTING_DOWN`: the host or the service is shutting down; the call did not run.
    pub const SHUTTING_DOWN: Status = Status(abi::PLUGHOST_E_SHUTTING_DOWN);
    /// `PLUGHOST_E_HOST_CRASHED`: used by the service in its own errors, never returned to a plugin.
    pub const HOST_CRASHED: Status = Status(abi::PLUGHOST_E_HOST_CRASHED);

    pub const EPERM: Status = Status(-1);
    pub const ENOENT: Status = Status(-2);
    pub const EINTR: Status = Status(-4);
    pub const EIO: Status = Status(-5);
    pub const EBADF: Status = Status(-9);
    pub const EAGAIN: Status = Status(-11);
    pub const ENOMEM: Status = Status(-12);
    pub const EACCES: Status = Status(-13);
    pub const EFAULT: Status = Status(-14);
    pub const EBUSY: Status = Status(-16);
    pub const EEXIST: Status = Status(-17);
    pub const ENOTDIR: Status = Status(-20);
    pub const EISDIR: Status = Status(-21);
    pub const EINVAL: Status = Status(-22);
    pub const ENOSPC: Status = Status(-28);
    pub const EROFS: Status = Status(-30);
    pub const EPIPE: Status = Status(-32);

    /// The status for an errno value: `from_errno(2)` is `-ENOENT`. A value that is already negative is
    /// taken as a status and kept; `0` (no error) stays [`Status::OK`].
    pub const fn from_errno(errno: i32) -> Status {
        if errno > 0 {
            Status(-errno)
        } else {
            Status(errno)
        }
    }

    /// `true` for `PLUGHOST_OK`.
    pub const fn is_ok(self) -> bool {
        self.0 == abi::PLUGHOST_OK
    }

    /// The errno this status carries (`Some(2)` for `-ENOENT`), `None` for success, `PLUGHOST_E_*` codes
    /// and values outside the kernel's errno range.
    pub const fn errno(self) -> Option<i32> {
        // The kernel's errno values are below 4096 (MAX_ERRNO); PLUGHOST_E_* codes start at -10001.
        if self.0 < 0 && self.0 > -4096 {
            Some(-self.0)
        } else {
            None
        }
    }

    /// `Ok(())` for `PLUGHOST_OK`, `Err(self)` otherwise (a positive value is not success either).
    pub const fn into_result(self) -> Result<(), Status> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The `PLUGHOST_*` name of a plughost code, `None` for anything else.
    fn plughost_name(self) -> Option<&'static str> {
        abi::plughost_name(self.0)
    }
}

/// `PLUGHOST_E_*` codes print as their name (`PLUGHOST_E_NOT_FOUND`), errno values as name and status
/// (`ENOENT (-2)`), anything else as the bare number.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.plughost_name() {
            return f.write_str(name);
        }
        match self.errno().and_then(abi::errno_name) {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for Status {}

/// An I/O error becomes its errno; one without an OS code (a short read, bad data) becomes `-EIO`.
impl From<std::io::Error> for Status {
    fn from(err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(errno) if errno > 0 => Status::from_errno(errno),
            _ => Status::EIO,
        }
    }
}

/// What a hook returns: `Ok(())` is `PLUGHOST_OK`.
pub type HookResult = Result<(), HookError>;

/// A failed hook: the status the hook returns and, for a veto hook, the message the user sees.
///
/// The SDK passes `message` to `plugin_error` when the hook may veto (`on_vm_started`,
/// `on_distribution_started`, `on_container_session_created`); for the other hooks, which the service
/// only logs, it writes the message to stderr. `plugin_error` may be called once per hook: if the hook
/// already called [`Api::plugin_error`](crate::Api::plugin_error) itself, that first message stands.
/// A `status` that is not negative is returned as `-EIO`, because a failing hook must return a
/// negative status (`PLUGIN_ABI.md`, "Types").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookError {
    pub status: Status,
    pub message: Option<String>,
}

impl HookError {
    /// A failure without a message: the user sees only the status.
    pub fn new(status: Status) -> Self {
        HookError {
            status,
            message: None,
        }
    }

    /// A failure with the message the user sees (veto hooks).
    pub fn with_message(status: Status, message: impl Into<String>) -> Self {
        HookError {
            status,
            message: Some(message.into()),
        }
    }

    /// The status the hook returns to the service: always negative.
    pub(crate) fn wire_status(&self) -> Status {
        if self.status.0 < 0 {
            self.status
        } else {
            Status::EIO
        }
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{message} (status {})", self.status),
            None => write!(f, "status {}", self.status),
        }
    }
}

impl std::error::Error for HookError {}

/// Lets a hook use `?` on the SDK's [`Api`](crate::Api) calls.
impl From<Status> for HookError {
    fn from(status: Status) -> Self {
        HookError::new(status)
    }
}

/// Lets a hook use `?` on I/O, e.g. reading the socket of [`Api::execute_binary`](crate::Api::execute_binary).
impl From<std::io::Error> for HookError {
    fn from(err: std::io::Error) -> Self {
        HookError::new(Status::from(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_statuses_print_name_and_value() {
        assert_eq!(Status::ENOENT.to_string(), "ENOENT (-2)");
        assert_eq!(Status::from_errno(110).to_string(), "ETIMEDOUT (-110)");
        assert_eq!(Status::from_errno(133).to_string(), "EHWPOISON (-133)");
    }

    #[test]
    fn plughost_codes_print_their_name() {
        assert_eq!(Status::NOT_FOUND.to_string(), "PLUGHOST_E_NOT_FOUND");
        assert_eq!(
            Status::REQUIRES_UPDATE.to_string(),
            "PLUGHOST_E_REQUIRES_UPDATE"
        );
        assert_eq!(Status::OK.to_string(), "PLUGHOST_OK");
    }

    #[test]
    fn unknown_statuses_print_the_number() {
        assert_eq!(Status(-41).to_string(), "-41");
        assert_eq!(Status(-200).to_string(), "-200");
        assert_eq!(Status(-20000).to_string(), "-20000");
        assert_eq!(Status(7).to_string(), "7");
        assert_eq!(Status(i32::MIN).to_string(), i32::MIN.to_string());
    }

    #[test]
    fn from_errno_negates_positive_values_only() {
        assert_eq!(Status::from_errno(2), Status::ENOENT);
        assert_eq!(Status::from_errno(-2), Status::ENOENT);
        assert_eq!(Status::from_errno(0), Status::OK);
        assert!(Status::from_errno(0).is_ok());
        assert!(!Status::EIO.is_ok());
        assert_eq!(Status::EIO.errno(), Some(5));
        assert_eq!(Status::NOT_RUNNING.errno(), None);
        assert_eq!(Status(3).into_result(), Err(Status(3)));
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let err = std::io::Error::from_raw_os_error(13);
        assert_eq!(Status::from(err), Status::EACCES);
        let err = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short");
        assert_eq!(HookError::from(err), HookError::new(Status::EIO));
    }

    #[test]
    fn hook_errors_are_always_negative_on_the_wire() {
        assert_eq!(HookError::new(Status::OK).wire_status(), Status::EIO);
        assert_eq!(HookError::new(Status(4)).wire_status(), Status::EIO);
        assert_eq!(HookError::new(Status::EPERM).wire_status(), Status::EPERM);
    }
}
