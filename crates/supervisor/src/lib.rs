//! plughost's supervisor library: run third-party native plugins (shared libraries written against
//! `include/plughost/plugin_api.h`) each in its own `plughost-host` process, deliver the service's
//! lifecycle hooks to them, and serve their API calls, so that a plugin that crashes, hangs up or
//! misbehaves costs one operation with an error naming it, never the service.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use plughost::*;
//! # fn demo(callbacks: Arc<dyn ServiceCallbacks + Send + Sync>, session: Session) -> Result<(), Box<dyn std::error::Error>> {
//! let config = ManagerConfig::new(vec![PluginConfig::new("audit", "/usr/lib/myservice/audit.so")]);
//! let manager = PluginManager::new(config, callbacks.clone())?;
//! manager.on_vm_started(&session, &VmSettings::default(), &*callbacks)?;
//! # Ok(()) }
//! ```
//!
//! # Data flow
//! A hook: the service thread calls `PluginManager::on_*`; for each plugin in order the dispatching
//! thread sends the hook frame and itself receives the answer (see `proxy` for the read token), serving
//! with the `scope` callbacks any API call that arrives meanwhile. An API call outside any hook is
//! served by a pool thread with the default callbacks.
//!
//! # Threads (per manager)
//! - `plughost-monitor`: epoll over host pidfds (crash detection, reaping) and host output pipes
//!   (logging, each line prefixed with the plugin's name).
//! - `plughost-pool-N`: serve API calls that arrive while no hook of that plugin is in flight.
//! - `plughost-spawner`: spawns hosts, so their parent-death signal is tied to a thread that lives as
//!   long as the manager.
//!
//! This crate does not implement the service's side of the API (mounts, processes, ...): the embedding
//! service does, through [`ServiceCallbacks`].
// `unsafe_code` is denied workspace-wide (Cargo.toml); `inprocess` re-allows it for its one
// thread-local scope pointer (see its module docs).

mod callbacks;
mod cgroups;
mod config;
mod error;
mod execute;
mod hangups;
mod inprocess;
mod integrity;
mod kicks;
mod launch;
mod manager;
mod metrics;
mod monitor;
mod plugin;
mod pool;
mod proxy;
mod report;
mod stats;
mod symbolize;

pub use callbacks::{
    CallContext, ContainerProcess, ContainerSession, ContainerSessionId, CreateProcessError,
    Distribution, DistributionId, OfflineDistribution, ProcessStream, ServiceCallbacks, Session,
    SessionId, Status, VmSettings,
};
pub use config::{
    lookup_user, Activation, CgroupPolicy, Deadlines, FsAccess, HostUser, Isolation, Limits,
    LogOutput, ManagerConfig, OutputSink, PluginConfig, RestartPolicy, Trust,
};
pub use error::{CrashCause, PluginError};
pub use integrity::{parse_public_key, parse_signature, sha256_hex};
pub use manager::{service_version, ControlError, ManagerError, PendingReload, PluginManager};
pub use plughost_sys::ProcessExit;
pub use plughost_wire::{HookKind, Version};
pub use report::{HookLatency, PluginInfo, PluginState};
pub use symbolize::{CrashReport, Frame};
