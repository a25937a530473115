//! The messages of both directions and the values they carry.
//!
//! These mirror the C types of `plugin_api.h` as owned Rust values; the host turns them back into the
//! C structs (with NUL-terminated strings) for the duration of one hook.

use serde::{Deserialize, Serialize};

use crate::{Kinds, Validate, WireError, MAX_ARGS};

/// Identifies a request within one direction of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// A container process, as the service numbers it for one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessHandle(pub u64);

/// A VM session's id (`plughost_session.id`, the `session` argument of the VM calls).
///
/// A plain number on the wire and in the C ABI; the type only keeps it apart from the other ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u32);

/// A container session's id (`plughost_container_session.id`), numbered apart from [`SessionId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerSessionId(pub u32);

/// A distribution's id (`plughost_uuid`, 16 bytes); shown as 32 lowercase hex digits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct DistributionId(pub [u8; 16]);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for ContainerSessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for DistributionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// `struct plughost_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub revision: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)
    }
}

/// `struct plughost_session`. Its strings are `S`: owned ([`Session`]), or borrowed from a received
/// frame ([`HookRef`]: the host decodes a hook without copying its strings); the encoding is the
/// same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOf<S> {
    pub id: SessionId,
    pub uid: u32,
    pub gid: u32,
    pub user_name: S,
}

/// `struct plughost_session`, owned.
pub type Session = SessionOf<String>;

/// `struct plughost_vm_settings`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSettings {
    pub flags: u32,
}

/// `struct plughost_distribution` (strings `S`, as [`SessionOf`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributionOf<S> {
    pub id: DistributionId,
    pub name: S,
    pub pid_namespace: u64,
    pub package: S,
    pub init_pid: u32,
    pub flavor: S,
    pub version: S,
}

/// `struct plughost_distribution`, owned.
pub type Distribution = DistributionOf<String>;

/// `struct plughost_offline_distribution` (strings `S`, as [`SessionOf`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineDistributionOf<S> {
    pub id: DistributionId,
    pub name: S,
    pub package: S,
    pub flavor: S,
    pub version: S,
}

/// `struct plughost_offline_distribution`, owned.
pub type OfflineDistribution = OfflineDistributionOf<String>;

/// `struct plughost_container_session` (strings `S`, as [`SessionOf`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSessionOf<S> {
    pub id: ContainerSessionId,
    pub display_name: S,
    pub application_pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `struct plughost_container_session`, owned.
pub type ContainerSession = ContainerSessionOf<String>;

/// The hooks of `struct plughost_hooks_v1`, in its order (the discriminant is the field's index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum HookKind {
    VmStarted = 0,
    VmStopping = 1,
    DistributionStarted = 2,
    DistributionStopping = 3,
    DistributionRegistered = 4,
    DistributionUnregistered = 5,
    ContainerSessionCreated = 6,
    ContainerSessionStopping = 7,
    SessionVmStarted = 8,
    SessionVmStopping = 9,
}

impl HookKind {
    pub const ALL: [HookKind; 10] = [
        HookKind::VmStarted,
        HookKind::VmStopping,
        HookKind::DistributionStarted,
        HookKind::DistributionStopping,
        HookKind::DistributionRegistered,
        HookKind::DistributionUnregistered,
        HookKind::ContainerSessionCreated,
        HookKind::ContainerSessionStopping,
        HookKind::SessionVmStarted,
        HookKind::SessionVmStopping,
    ];

    /// The C field name, used in logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::VmStarted => "on_vm_started",
            HookKind::VmStopping => "on_vm_stopping",
            HookKind::DistributionStarted => "on_distribution_started",
            HookKind::DistributionStopping => "on_distribution_stopping",
            HookKind::DistributionRegistered => "on_distribution_registered",
            HookKind::DistributionUnregistered => "on_distribution_unregistered",
            HookKind::ContainerSessionCreated => "on_container_session_created",
            HookKind::ContainerSessionStopping => "on_container_session_stopping",
            HookKind::SessionVmStarted => "on_session_vm_started",
            HookKind::SessionVmStopping => "on_session_vm_stopping",
        }
    }

    /// May this hook veto its operation (`PLUGIN_ABI.md`, "Hooks", column "may veto")?
    pub fn may_veto(self) -> bool {
        match self {
            HookKind::VmStarted
            | HookKind::DistributionStarted
            | HookKind::ContainerSessionCreated => true,
            HookKind::VmStopping
            | HookKind::DistributionStopping
            | HookKind::DistributionRegistered
            | HookKind::DistributionUnregistered
            | HookKind::ContainerSessionStopping
            | HookKind::SessionVmStarted
            | HookKind::SessionVmStopping => false,
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which hooks a plugin set, one bit per [`HookKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSet(pub u16);

impl HookSet {
    pub fn with(self, kind: HookKind) -> HookSet {
        HookSet(self.0 | 1 << kind as u8)
    }
    pub fn contains(self, kind: HookKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }
}

/// One hook call with its arguments (strings `S`, as [`SessionOf`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookOf<S> {
    VmStarted {
        session: SessionOf<S>,
        settings: VmSettings,
    },
    VmStopping {
        session: SessionOf<S>,
    },
    DistributionStarted {
        session: SessionOf<S>,
        distribution: DistributionOf<S>,
    },
    DistributionStopping {
        session: SessionOf<S>,
        distribution: DistributionOf<S>,
    },
    DistributionRegistered {
        session: SessionOf<S>,
        distribution: OfflineDistributionOf<S>,
    },
    DistributionUnregistered {
        session: SessionOf<S>,
        distribution: OfflineDistributionOf<S>,
    },
    ContainerSessionCreated(ContainerSessionOf<S>),
    ContainerSessionStopping(ContainerSessionOf<S>),
    SessionVmStarted(ContainerSessionOf<S>),
    SessionVmStopping(ContainerSessionOf<S>),
}

/// One hook call with its arguments, owned.
pub type Hook = HookOf<String>;

/// A hook whose strings borrow the frame it was decoded from ([`decode_hook`](crate::decode_hook)).
pub type HookRef<'a> = HookOf<&'a str>;

impl<S> HookOf<S> {
    pub fn kind(&self) -> HookKind {
        match self {
            HookOf::VmStarted { .. } => HookKind::VmStarted,
            HookOf::VmStopping { .. } => HookKind::VmStopping,
            HookOf::DistributionStarted { .. } => HookKind::DistributionStarted,
            HookOf::DistributionStopping { .. } => HookKind::DistributionStopping,
            HookOf::DistributionRegistered { .. } => HookKind::DistributionRegistered,
            HookOf::DistributionUnregistered { .. } => HookKind::DistributionUnregistered,
            HookOf::ContainerSessionCreated(_) => HookKind::ContainerSessionCreated,
            HookOf::ContainerSessionStopping(_) => HookKind::ContainerSessionStopping,
            HookOf::SessionVmStarted(_) => HookKind::SessionVmStarted,
            HookOf::SessionVmStopping(_) => HookKind::SessionVmStopping,
        }
    }
}

/// One API call of `struct plughost_api_v1` (but `plugin_error`, which the host answers itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiCall {
    MountFolder {
        session: SessionId,
        host_path: String,
        vm_path: String,
        read_only: bool,
        name: String,
    },
    ExecuteBinary {
        session: SessionId,
        path: String,
        argv: Vec<String>,
    },
    ExecuteBinaryInDistribution {
        session: SessionId,
        distribution: DistributionId,
        path: String,
        argv: Vec<String>,
    },
    ContainerMountFolder {
        container_session: ContainerSessionId,
        host_path: String,
        mountpoint: String,
        read_only: bool,
    },
    ContainerUnmountFolder {
        container_session: ContainerSessionId,
        mountpoint: String,
    },
    ContainerCreateProcess {
        container_session: ContainerSessionId,
        path: String,
        argv: Vec<String>,
        envp: Option<Vec<String>>,
    },
    ProcessGetFd {
        process: ProcessHandle,
        which: i32,
    },
    ProcessGetExitFd {
        process: ProcessHandle,
    },
    ProcessGetExitCode {
        process: ProcessHandle,
    },
    ProcessRelease {
        process: ProcessHandle,
    },
}

impl ApiCall {
    /// The C field name, used in logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            ApiCall::MountFolder { .. } => "mount_folder",
            ApiCall::ExecuteBinary { .. } => "execute_binary",
            ApiCall::ExecuteBinaryInDistribution { .. } => "execute_binary_in_distribution",
            ApiCall::ContainerMountFolder { .. } => "container_mount_folder",
            ApiCall::ContainerUnmountFolder { .. } => "container_unmount_folder",
            ApiCall::ContainerCreateProcess { .. } => "container_create_process",
            ApiCall::ProcessGetFd { .. } => "process_get_fd",
            ApiCall::ProcessGetExitFd { .. } => "process_get_exit_fd",
            ApiCall::ProcessGetExitCode { .. } => "process_get_exit_code",
            ApiCall::ProcessRelease { .. } => "process_release",
        }
    }

    /// Whether a successful reply carries an fd ([`ApiReply::Fd`]). Through the call ring, that fd
    /// travels on the ring's fd lane (`plughost_sys::ring`).
    pub fn answers_with_fd(&self) -> bool {
        self.fd_call_kind().is_some()
    }

    /// For a call whose successful reply carries an fd, its kind among those calls: an index
    /// below [`FD_CALL_KINDS`] (a host keeps per-kind state with it); `None` for the others.
    pub fn fd_call_kind(&self) -> Option<usize> {
        match self {
            ApiCall::ExecuteBinary { .. } => Some(0),
            ApiCall::ExecuteBinaryInDistribution { .. } => Some(1),
            ApiCall::ProcessGetFd { .. } => Some(2),
            ApiCall::ProcessGetExitFd { .. } => Some(3),
            ApiCall::MountFolder { .. }
            | ApiCall::ContainerMountFolder { .. }
            | ApiCall::ContainerUnmountFolder { .. }
            | ApiCall::ContainerCreateProcess { .. }
            | ApiCall::ProcessGetExitCode { .. }
            | ApiCall::ProcessRelease { .. } => None,
        }
    }
}

/// How many [`ApiCall`] kinds answer with an fd ([`ApiCall::fd_call_kind`]).
pub const FD_CALL_KINDS: usize = 4;

/// The service's answer to one [`ApiCall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiReply {
    /// Just a status (`0` or negative).
    Status(i32),
    /// Success, with exactly one fd attached to the frame.
    Fd,
    /// `container_create_process` succeeded.
    Process(ProcessHandle),
    /// `container_create_process` failed: the status and the `errno` for `errno_out` (0 if none).
    ProcessFailed { status: i32, errno: i32 },
    /// `process_get_exit_code` succeeded.
    ExitCode(i32),
}

/// Why the host could not load its plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadFailure {
    /// `dlopen` failed, with `dlerror()`'s text.
    Open(String),
    /// The library does not export `plughost_plugin_entry_v1`.
    NoEntryPoint,
    /// The entry point returned this status.
    EntryFailed(i32),
    /// The host could not confine itself as asked (nothing of the plugin ran).
    Confine(String),
}

/// The host's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u8,
    /// The host's pid as it sees itself (1 when it is the init of its own pid namespace).
    pub pid: u32,
    /// The plugin name the host was started for (its `--name` argument).
    pub plugin: String,
}

/// Where the host finds the plugin library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginSource {
    /// A sealed memfd attached to the frame, whose content the service verified; the host loads
    /// `/proc/self/fd/N`.
    SealedFd,
    /// A path (when sealed memfds cannot be mapped executable on this machine).
    Path(String),
}

/// Resource limits for the host process (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `RLIMIT_AS`, bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `RLIMIT_NPROC` (counts every process and thread of the host's user).
    pub processes: Option<u64>,
    /// `RLIMIT_CPU`, seconds.
    pub cpu_seconds: Option<u64>,
}

/// What the host does to itself after the handshake and before loading the plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// Switch to this uid/gid (supplementary groups dropped); `None`: keep the service's.
    pub user: Option<(u32, u32)>,
    pub limits: Limits,
    /// Install the default seccomp filter.
    pub seccomp: bool,
    /// Restrict the filesystem with Landlock (`None`: no restriction).
    pub filesystem: Option<FsRules>,
}

/// Paths beneath which the plugin may open files, besides the system directories (read-only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRules {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

/// The service's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u8,
    /// The running service's version, for `api->version`.
    pub service_version: Version,
    /// The plugin library to load.
    pub plugin: PluginSource,
    pub confinement: Confinement,
    /// The frame also carries the call ring's memfd, doorbell eventfd and fd lane (a seqpacket
    /// socket), after the library's fd (see `plughost_sys::ring`). Calls and hook answers then
    /// travel through the ring.
    pub call_ring: bool,
    /// The frame's last fd is a sealed memfd of `plughost_sys::crash_report::layout::SIZE` bytes where the
    /// host's fault handler leaves its crash report (read by the service after a fatal signal).
    pub crash_report: bool,
}

/// Host to service. Untrusted: the service validates every field and every transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    Hello(Hello),
    Loaded {
        hooks: HookSet,
    },
    LoadFailed(LoadFailure),
    HookDone {
        id: RequestId,
        status: i32,
        message: Option<String>,
    },
    Call {
        id: RequestId,
        call: ApiCall,
    },
    /// The plugin made a syscall the host's seccomp filter forbids; the host is exiting. Sent from
    /// the host's `SIGSYS` handler (hand-encoded there: keep this variant's index, 5, stable).
    Blocked {
        syscall: u32,
    },
}

/// Service to host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceMsg {
    Welcome(Welcome),
    Hook {
        id: RequestId,
        hook: Hook,
    },
    Reply {
        id: RequestId,
        reply: ApiReply,
    },
    /// Ask the host to exit now; it answers nothing.
    Shutdown,
}

impl ServiceMsg {
    /// How many fds must accompany this message.
    pub fn fds_expected(&self) -> usize {
        match self {
            ServiceMsg::Reply {
                reply: ApiReply::Fd,
                ..
            } => 1,
            ServiceMsg::Welcome(welcome) => {
                usize::from(welcome.plugin == PluginSource::SealedFd)
                    + if welcome.call_ring { 3 } else { 0 }
                    + usize::from(welcome.crash_report)
            }
            _ => 0,
        }
    }
}

fn check_args(args: &[String]) -> Result<(), WireError> {
    if args.len() > MAX_ARGS {
        return Err(WireError::Invalid("too many argv/envp entries"));
    }
    Ok(())
}

impl Validate for HostMsg {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            HostMsg::Call { call, .. } => match call {
                ApiCall::ExecuteBinary { argv, .. }
                | ApiCall::ExecuteBinaryInDistribution { argv, .. } => check_args(argv),
                ApiCall::ContainerCreateProcess { argv, envp, .. } => {
                    check_args(argv)?;
                    envp.as_deref().map_or(Ok(()), check_args)
                }
                ApiCall::MountFolder { .. }
                | ApiCall::ContainerMountFolder { .. }
                | ApiCall::ContainerUnmountFolder { .. }
                | ApiCall::ProcessGetFd { .. }
                | ApiCall::ProcessGetExitFd { .. }
                | ApiCall::ProcessGetExitCode { .. }
                | ApiCall::ProcessRelease { .. } => Ok(()),
            },
            HostMsg::HookDone { status, .. } if *status > 0 => {
                Err(WireError::Invalid("hook status is positive"))
            }
            HostMsg::Hello(_)
            | HostMsg::Loaded { .. }
            | HostMsg::LoadFailed(_)
            | HostMsg::Blocked { .. } => Ok(()),
            HostMsg::HookDone { .. } => Ok(()),
        }
    }
}

impl Kinds for HostMsg {
    const NAME: &'static str = "HostMsg";
    const KINDS: u32 = 6;
}

impl Kinds for ServiceMsg {
    const NAME: &'static str = "ServiceMsg";
    const KINDS: u32 = 4;
}

impl Validate for ServiceMsg {
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }
}
