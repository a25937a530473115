//! How a service describes its plugins to the manager.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use plughost_wire::HookKind;

/// Where a plugin runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Its own `plughost-host` process (the default).
    #[default]
    Process,
    /// Loaded into the service itself: for trusted plugins, and as the speed baseline. A crash takes
    /// the service down.
    InProcess,
}

/// When a plugin's host is started (or its library loaded, in process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// By [`PluginManager::new`](crate::PluginManager::new) (the default): a load failure shows at
    /// start-up.
    #[default]
    Eager,
    /// By the first hook that reaches the plugin: start-up does not wait for it, and a plugin no
    /// hook needs never runs. A load failure fails that first operation (if it may veto).
    Lazy,
}

/// One plugin, in configuration order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    /// Shown in every error and log line about it.
    pub name: String,
    /// The shared library.
    pub path: PathBuf,
    pub isolation: Isolation,
    pub activation: Activation,
    /// The host's whole environment (it starts empty).
    pub env: Vec<(String, String)>,
    /// What happens after a crash.
    pub restart: RestartPolicy,
    /// Hook deadlines for this plugin; `None`: the manager's.
    pub deadlines: Option<Deadlines>,
    /// Who the host runs as.
    pub user: HostUser,
    /// Resource limits of the host process.
    pub limits: Limits,
    /// The default seccomp filter (on unless turned off for this plugin).
    pub seccomp: bool,
    /// Landlock: which paths the plugin may open (on unless turned off for this plugin).
    pub filesystem: FsAccess,
    /// Expected sha256 of the library (hex); the host loads exactly the bytes that matched.
    pub sha256: Option<String>,
    /// A detached ed25519 signature of the library (base64), checked against the manager's
    /// trusted keys.
    pub signature: Option<PathBuf>,
}

pub use plughost_wire::Limits;

/// What the plugin may open by path (Landlock). With `landlock` on, the system directories are
/// readable, `read` paths readable, `write` paths readable and writable, and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsAccess {
    pub landlock: bool,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
}

impl Default for FsAccess {
    fn default() -> Self {
        FsAccess {
            landlock: true,
            read: Vec::new(),
            write: Vec::new(),
        }
    }
}

/// The user a host runs as (only a service running as root can switch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostUser {
    /// A dedicated system user `plughost` if it exists, else `nobody`; the service's own user when
    /// the service is not root.
    #[default]
    Default,
    /// The service's user (no switch).
    Service,
    /// This user name, from `/etc/passwd`.
    Name(String),
    Id {
        uid: u32,
        gid: u32,
    },
}

/// `(uid, gid)` of `name` in `/etc/passwd`.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

impl HostUser {
    /// The uid/gid to switch to, or `None` to stay the service's user.
    pub fn resolve(&self) -> Result<Option<(u32, u32)>, String> {
        let root = rustix::process::geteuid().is_root();
        match self {
            HostUser::Service => Ok(None),
            HostUser::Default if !root => Ok(None),
            HostUser::Default => Ok(Some(
                lookup_user("plughost")
                    .or_else(|| lookup_user("nobody"))
                    .unwrap_or((65534, 65534)),
            )),
            HostUser::Name(name) => lookup_user(name)
                .map(Some)
                .ok_or_else(|| format!("no user named '{name}'")),
            HostUser::Id { uid, gid } => Ok(Some((*uid, *gid))),
        }
    }
}

/// How long each hook may take before its host is killed and the crash classified `hung`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    per_hook: [Duration; 10],
}

impl Default for Deadlines {
    /// 30 s for the hooks that start something (and may veto), 10 s for the others.
    fn default() -> Self {
        Deadlines::uniform(Duration::from_secs(30), Duration::from_secs(10))
    }
}

impl Deadlines {
    /// `start` for veto hooks, `teardown` for the others.
    pub fn uniform(start: Duration, teardown: Duration) -> Deadlines {
        Deadlines {
            per_hook: HookKind::ALL.map(|k| if k.may_veto() { start } else { teardown }),
        }
    }

    /// Overrides one hook's deadline.
    pub fn with(mut self, hook: HookKind, deadline: Duration) -> Deadlines {
        self.per_hook[hook as usize] = deadline;
        self
    }

    pub fn of(&self, hook: HookKind) -> Duration {
        self.per_hook[hook as usize]
    }
}

/// What happens to a plugin whose host crashed (died, broke the protocol, or hung).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// The first crash is latched: the plugin gets no more hooks and every VM start fails fast with
    /// that error until [`PluginManager::restart_plugin`](crate::PluginManager::restart_plugin).
    #[default]
    Never,
    /// Restart after a backoff that doubles from `backoff_initial` up to `backoff_max`; more than
    /// `max_restarts` crashes within `window` latch the plugin as with `Never`.
    OnCrash {
        max_restarts: u32,
        window: Duration,
        backoff_initial: Duration,
        backoff_max: Duration,
    },
}

impl PluginConfig {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            path: path.into(),
            isolation: Isolation::Process,
            activation: Activation::Eager,
            env: Vec::new(),
            restart: RestartPolicy::Never,
            deadlines: None,
            user: HostUser::Default,
            limits: Limits::default(),
            seccomp: true,
            filesystem: FsAccess::default(),
            sha256: None,
            signature: None,
        }
    }

    pub fn in_process(mut self) -> PluginConfig {
        self.isolation = Isolation::InProcess;
        self
    }

    /// Starts the plugin at the first hook that reaches it ([`Activation::Lazy`]).
    pub fn lazy(mut self) -> PluginConfig {
        self.activation = Activation::Lazy;
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> PluginConfig {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn restart(mut self, policy: RestartPolicy) -> PluginConfig {
        self.restart = policy;
        self
    }

    pub fn user(mut self, user: HostUser) -> PluginConfig {
        self.user = user;
        self
    }

    pub fn limits(mut self, limits: Limits) -> PluginConfig {
        self.limits = limits;
        self
    }

    /// Lets the plugin read and write beneath `path`.
    pub fn allow_write(mut self, path: impl Into<PathBuf>) -> PluginConfig {
        self.filesystem.write.push(path.into());
        self
    }

    /// Lets the plugin read beneath `path`.
    pub fn allow_read(mut self, path: impl Into<PathBuf>) -> PluginConfig {
        self.filesystem.read.push(path.into());
        self
    }

    /// Turns Landlock on or off for this plugin.
    pub fn landlock(mut self, on: bool) -> PluginConfig {
        self.filesystem.landlock = on;
        self
    }

    pub fn seccomp(mut self, on: bool) -> PluginConfig {
        self.seccomp = on;
        self
    }

    pub fn sha256(mut self, hex: impl Into<String>) -> PluginConfig {
        self.sha256 = Some(hex.into());
        self
    }

    pub fn signature(mut self, path: impl Into<PathBuf>) -> PluginConfig {
        self.signature = Some(path.into());
        self
    }

    pub fn deadlines(mut self, deadlines: Deadlines) -> PluginConfig {
        self.deadlines = Some(deadlines);
        self
    }
}

/// Receives what plugins print, one line at a time, with the plugin's name.
pub trait OutputSink: Send + Sync {
    fn line(&self, plugin: &str, line: &str);
}

/// The default sink: a `tracing` event per line, `"<plugin>: <line>"`.
pub struct LogOutput;

impl OutputSink for LogOutput {
    fn line(&self, plugin: &str, line: &str) {
        tracing::info!(target: "plughost::plugin_output", "{plugin}: {line}");
    }
}

/// Whether hosts get a cgroup v2 of their own (see `cgroups.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CgroupPolicy {
    /// Beneath `<the service's own cgroup>/plughost`, for the hosts where it enforces something: a
    /// memory or process limit the delegated controllers can enforce, or, for hosts without a pid
    /// namespace (a service that is not root), the kill of every process they spawned. Joining a
    /// cgroup costs about 1 ms per host start, so hosts that gain nothing get none.
    #[default]
    Auto,
    /// No cgroups: limits are rlimits, containment is the pid namespace (or process group).
    Off,
    /// Every host gets a cgroup beneath this directory (of the cgroup2 mount); a host whose cgroup
    /// cannot be made fails to load.
    Parent(PathBuf),
}

/// Trust settings of the manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// ed25519 public keys that may sign plugins.
    pub trusted_keys: Vec<VerifyingKey>,
    /// Refuse any plugin with neither a sha256 pin nor a valid signature.
    pub require_verified: bool,
}

/// The manager's configuration.
#[derive(Clone)]
pub struct ManagerConfig {
    pub plugins: Vec<PluginConfig>,
    /// The `plughost-host` binary; default: `$PLUGHOST_HOST`, else beside the current executable (or
    /// its parent directory, for test binaries in `target/*/deps`).
    pub host_binary: Option<PathBuf>,
    pub output: Arc<dyn OutputSink>,
    /// Hook deadlines of plugins that set none.
    pub deadlines: Deadlines,
    /// Keys and policy for verifying plugin libraries.
    pub trust: Trust,
    /// cgroup v2 per host.
    pub cgroups: CgroupPolicy,
}

impl ManagerConfig {
    pub fn new(plugins: Vec<PluginConfig>) -> ManagerConfig {
        ManagerConfig {
            plugins,
            host_binary: None,
            output: Arc::new(LogOutput),
            deadlines: Deadlines::default(),
            trust: Default::default(),
            cgroups: CgroupPolicy::Auto,
        }
    }

    pub(crate) fn resolve_host_binary(&self) -> PathBuf {
        if let Some(path) = &self.host_binary {
            return path.clone();
        }
        if let Some(path) = std::env::var_os("PLUGHOST_HOST") {
            return path.into();
        }
        let exe = std::env::current_exe().unwrap_or_default();
        let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
        let beside = dir.join("plughost-host");
        if beside.exists() {
            return beside;
        }
        dir.parent()
            .map(|p| p.join("plughost-host"))
            .unwrap_or(beside)
    }
}
