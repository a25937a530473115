//! `PluginManager`: the plugins of one service, in configuration order, and the dispatch of each hook
//! to them with the policy of `PLUGIN_ABI.md` ("Hooks", "User-visible errors").
//!
//! Policy:
//! - Hooks go to plugins in configuration order; a veto (or a crash) in a veto hook stops the delivery
//!   and fails the operation. A failing non-veto hook is logged and delivery goes on.
//! - A failed `on_vm_started` is followed by `on_vm_stopping` to every plugin; a failed
//!   `on_container_session_created` by that session's `on_container_session_stopping`.
//! - The first fatal error of a plugin (load failure or crash) is latched: the plugin gets no more
//!   hooks, and every later VM start fails fast with that same error.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plughost_abi::PLUGHOST_E_ILLEGAL_STATE;
use plughost_wire::{Hook, LoadFailure, Version};

use crate::callbacks::{
    ContainerSession, Distribution, OfflineDistribution, ServiceCallbacks, Session, VmSettings,
};
use crate::config::{Isolation, ManagerConfig};
use crate::error::PluginError;
use crate::host::spawn::{self, Spawner, StartError, StartParams};
use crate::host::Host;
use crate::inprocess::InProcessPlugin;
use crate::monitor::Monitor;
use crate::pool::Pool;
use plughost_host::HookOutcome;

/// The version of plughost the plugins see in `api->version`.
pub fn service_version() -> Version {
    let part = |s: &str| s.parse().unwrap_or(0);
    Version {
        major: part(env!("CARGO_PKG_VERSION_MAJOR")),
        minor: part(env!("CARGO_PKG_VERSION_MINOR")),
        revision: part(env!("CARGO_PKG_VERSION_PATCH")),
    }
}

/// Failure to set the manager itself up (threads, epoll): not about any plugin.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot start the plugin manager's {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
}

enum Runtime {
    Host(Arc<Host>),
    InProcess(InProcessPlugin),
    /// Never loaded (the error is latched).
    None,
}

struct Plugin {
    name: String,
    path: PathBuf,
    isolation: Isolation,
    runtime: Runtime,
    /// Leaf lock: the first fatal error (load failure or crash).
    latched: Mutex<Option<PluginError>>,
}

impl Plugin {
    fn latched(&self) -> Option<PluginError> {
        self.latched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn latch(&self, error: PluginError) {
        let mut latched = self.latched.lock().unwrap_or_else(|e| e.into_inner());
        if latched.is_none() {
            *latched = Some(error);
        }
    }
}

/// What [`PluginManager::plugins`] reports for one plugin.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    pub name: String,
    pub path: PathBuf,
    pub isolation: Isolation,
    /// The host's pid (out of process, while it runs).
    pub host_pid: Option<u32>,
    /// `"ready"`, `"crashed"` or `"failed"` (never loaded).
    pub state: &'static str,
    pub crashes: u32,
    pub last_error: Option<String>,
}

/// The plugins of one service. See the crate docs for the threads and the re-entrancy rules.
pub struct PluginManager {
    plugins: Vec<Plugin>,
    spawner: Spawner,
    monitor: Arc<Monitor>,
    pool: Arc<Pool>,
    version: Version,
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> ManagerError {
    move |source| ManagerError::Setup { what, source }
}

impl PluginManager {
    /// Starts every configured plugin, in order. A plugin that fails to load does not fail this call:
    /// its error is latched and reported by the next VM start (and by [`PluginManager::plugins`]).
    /// `default` serves API calls that arrive while no hook of that plugin is in flight.
    pub fn new(
        config: ManagerConfig,
        default: Arc<dyn ServiceCallbacks + Send + Sync>,
    ) -> Result<PluginManager, ManagerError> {
        let monitor = Monitor::start(config.output.clone()).map_err(setup("monitor thread"))?;
        let pool = Pool::new().map_err(setup("call pool"))?;
        pool.start(default.clone()).map_err(setup("call pool"))?;
        let spawner = Spawner::start().map_err(setup("spawner thread"))?;
        let mut manager = PluginManager {
            plugins: Vec::new(),
            spawner,
            monitor,
            pool,
            version: service_version(),
        };
        let host_binary = config.resolve_host_binary();
        let mut seen = Vec::new();
        for (index, plugin) in config.plugins.iter().enumerate() {
            let canonical = std::fs::canonicalize(&plugin.path).unwrap_or(plugin.path.clone());
            if seen.contains(&canonical) {
                tracing::warn!(plugin = %plugin.name, path = %plugin.path.display(),
                    "plugin listed twice (same file); loaded once");
                continue;
            }
            seen.push(canonical.clone());
            let mut entry = Plugin {
                name: plugin.name.clone(),
                path: canonical,
                isolation: plugin.isolation,
                runtime: Runtime::None,
                latched: Mutex::new(None),
            };
            let started = match plugin.isolation {
                Isolation::Process => {
                    let params = StartParams {
                        id: index as u64 + 1,
                        config: plugin,
                        host_binary: &host_binary,
                        service_version: manager.version,
                        spawner: &manager.spawner,
                        pool: &manager.pool,
                        default: &*default,
                    };
                    match spawn::start(params) {
                        Ok(started) => {
                            let name = started.host.name.clone();
                            manager
                                .monitor
                                .watch_output(started.host.id, name, started.output);
                            manager.monitor.watch_host(&started.host);
                            manager.pool.register(&started.host);
                            Ok(Runtime::Host(started.host))
                        }
                        Err((error, output)) => {
                            if let Some(output) = output {
                                let name: Arc<str> = Arc::from(plugin.name.as_str());
                                manager.monitor.watch_output(index as u64 + 1, name, output);
                            }
                            Err(manager.start_error(&plugin.name, error))
                        }
                    }
                }
                Isolation::InProcess => {
                    if !plugin.env.is_empty() {
                        tracing::warn!(plugin = %plugin.name,
                            "in-process plugins see the service's environment; its env setting is ignored");
                    }
                    match InProcessPlugin::load(&plugin.path, manager.version, default.clone()) {
                        Ok(p) => Ok(Runtime::InProcess(p)),
                        Err(failure) => Err(manager.load_failure(&plugin.name, failure)),
                    }
                }
            };
            match started {
                Ok(runtime) => {
                    tracing::info!(plugin = %plugin.name, "plugin loaded");
                    entry.runtime = runtime;
                }
                Err(error) => {
                    tracing::error!(plugin = %plugin.name, "{error}");
                    entry.latch(error);
                }
            }
            manager.plugins.push(entry);
        }
        Ok(manager)
    }

    fn start_error(&self, plugin: &str, error: StartError) -> PluginError {
        let plugin = plugin.to_owned();
        match error {
            StartError::Load(reason) => PluginError::LoadFailed { plugin, reason },
            StartError::RequiresUpdate => PluginError::RequiresUpdate {
                plugin,
                running: self.version,
            },
            StartError::Crashed(cause) => PluginError::Crashed {
                plugin,
                hook: None,
                cause,
            },
        }
    }

    fn load_failure(&self, plugin: &str, failure: LoadFailure) -> PluginError {
        let plugin = plugin.to_owned();
        match failure {
            LoadFailure::Open(reason) => PluginError::LoadFailed { plugin, reason },
            LoadFailure::NoEntryPoint => PluginError::LoadFailed {
                plugin,
                reason: format!("no {} symbol", plughost_abi::PLUGHOST_ENTRY_POINT_V1),
            },
            LoadFailure::EntryFailed(plughost_abi::PLUGHOST_E_REQUIRES_UPDATE) => {
                PluginError::RequiresUpdate {
                    plugin,
                    running: self.version,
                }
            }
            LoadFailure::EntryFailed(status) => PluginError::LoadFailed {
                plugin,
                reason: format!("entry point returned status {status}"),
            },
        }
    }

    /// Delivers `hook` in order. Returns the first veto or crash of a veto hook.
    fn dispatch(&self, hook: &Hook, scope: &dyn ServiceCallbacks) -> Result<(), PluginError> {
        let kind = hook.kind();
        for plugin in &self.plugins {
            if plugin.latched().is_some() {
                continue;
            }
            let outcome = match &plugin.runtime {
                Runtime::Host(host) => {
                    if !host.hooks.contains(kind) {
                        continue;
                    }
                    host.call_hook(hook, scope)
                }
                Runtime::InProcess(p) => match p.call(hook, scope) {
                    Some(outcome) => Ok(outcome),
                    None => continue,
                },
                Runtime::None => continue,
            };
            match outcome {
                Ok(HookOutcome { status, message }) => {
                    // A message with a success is itself an error (PLUGIN_ABI.md, status codes).
                    let status = if status == 0 && message.is_some() {
                        PLUGHOST_E_ILLEGAL_STATE
                    } else {
                        status
                    };
                    if status == 0 {
                        continue;
                    }
                    let error = PluginError::Vetoed {
                        plugin: plugin.name.clone(),
                        hook: kind,
                        status,
                        message,
                    };
                    if kind.may_veto() {
                        tracing::info!(plugin = %plugin.name, hook = %kind, "{error}");
                        return Err(error);
                    }
                    tracing::warn!(plugin = %plugin.name, hook = %kind, "ignored: {error}");
                }
                Err(cause) => {
                    let error = PluginError::Crashed {
                        plugin: plugin.name.clone(),
                        hook: Some(kind),
                        cause,
                    };
                    tracing::error!(plugin = %plugin.name, hook = %kind, "{error}");
                    plugin.latch(error.clone());
                    if kind.may_veto() {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    /// The first latched error, in configuration order.
    fn first_latched(&self) -> Option<PluginError> {
        self.plugins.iter().find_map(Plugin::latched)
    }

    /// `on_vm_started`. Fails fast with a latched error; on a veto or crash, every plugin then gets
    /// `on_vm_stopping` and the error is returned.
    pub fn on_vm_started(
        &self,
        session: &Session,
        settings: &VmSettings,
        scope: &dyn ServiceCallbacks,
    ) -> Result<(), PluginError> {
        if let Some(error) = self.first_latched() {
            return Err(error);
        }
        let hook = Hook::VmStarted {
            session: session.clone(),
            settings: *settings,
        };
        let result = self.dispatch(&hook, scope);
        if result.is_err() {
            self.on_vm_stopping(session, scope);
        }
        result
    }

    pub fn on_vm_stopping(&self, session: &Session, scope: &dyn ServiceCallbacks) {
        let _ = self.dispatch(
            &Hook::VmStopping {
                session: session.clone(),
            },
            scope,
        );
    }

    /// `on_distribution_started`; a veto fails the start (and that distribution gets no
    /// `on_distribution_stopping`).
    pub fn on_distribution_started(
        &self,
        session: &Session,
        distribution: &Distribution,
        scope: &dyn ServiceCallbacks,
    ) -> Result<(), PluginError> {
        let hook = Hook::DistributionStarted {
            session: session.clone(),
            distribution: distribution.clone(),
        };
        self.dispatch(&hook, scope)
    }

    pub fn on_distribution_stopping(
        &self,
        session: &Session,
        distribution: &Distribution,
        scope: &dyn ServiceCallbacks,
    ) {
        let hook = Hook::DistributionStopping {
            session: session.clone(),
            distribution: distribution.clone(),
        };
        let _ = self.dispatch(&hook, scope);
    }

    pub fn on_distribution_registered(
        &self,
        session: &Session,
        distribution: &OfflineDistribution,
        scope: &dyn ServiceCallbacks,
    ) {
        let hook = Hook::DistributionRegistered {
            session: session.clone(),
            distribution: distribution.clone(),
        };
        let _ = self.dispatch(&hook, scope);
    }

    pub fn on_distribution_unregistered(
        &self,
        session: &Session,
        distribution: &OfflineDistribution,
        scope: &dyn ServiceCallbacks,
    ) {
        let hook = Hook::DistributionUnregistered {
            session: session.clone(),
            distribution: distribution.clone(),
        };
        let _ = self.dispatch(&hook, scope);
    }

    /// `on_container_session_created`; on a veto the session's `on_container_session_stopping` is
    /// still delivered.
    pub fn on_container_session_created(
        &self,
        session: &ContainerSession,
        scope: &dyn ServiceCallbacks,
    ) -> Result<(), PluginError> {
        let result = self.dispatch(&Hook::ContainerSessionCreated(session.clone()), scope);
        if result.is_err() {
            self.on_container_session_stopping(session, scope);
        }
        result
    }

    pub fn on_container_session_stopping(
        &self,
        session: &ContainerSession,
        scope: &dyn ServiceCallbacks,
    ) {
        let _ = self.dispatch(&Hook::ContainerSessionStopping(session.clone()), scope);
    }

    pub fn on_session_vm_started(&self, session: &ContainerSession, scope: &dyn ServiceCallbacks) {
        let _ = self.dispatch(&Hook::SessionVmStarted(session.clone()), scope);
    }

    pub fn on_session_vm_stopping(&self, session: &ContainerSession, scope: &dyn ServiceCallbacks) {
        let _ = self.dispatch(&Hook::SessionVmStopping(session.clone()), scope);
    }

    /// Every configured plugin (duplicates excluded), in order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.plugins
            .iter()
            .map(|p| {
                let latched = p.latched();
                let (host_pid, alive) = match &p.runtime {
                    Runtime::Host(host) => (Some(host.pid()), !host.is_dead()),
                    Runtime::InProcess(_) => (None, true),
                    Runtime::None => (None, false),
                };
                let state = match (&latched, &p.runtime) {
                    (Some(PluginError::Crashed { .. }), _) => "crashed",
                    (Some(_), _) | (None, Runtime::None) => "failed",
                    (None, _) if !alive => "crashed",
                    (None, _) => "ready",
                };
                PluginInfo {
                    name: p.name.clone(),
                    path: p.path.clone(),
                    isolation: p.isolation,
                    host_pid: host_pid.filter(|_| alive),
                    state,
                    crashes: u32::from(matches!(latched, Some(PluginError::Crashed { .. }))),
                    last_error: latched.map(|e| e.to_string()),
                }
            })
            .collect()
    }

    /// The errors of plugins that failed to load, in order.
    pub fn load_errors(&self) -> Vec<PluginError> {
        self.plugins
            .iter()
            .filter(|p| matches!(p.runtime, Runtime::None))
            .filter_map(Plugin::latched)
            .collect()
    }

    /// Asks every host to exit, kills what is left after a short grace, and stops the threads.
    pub fn shutdown(&mut self) {
        for plugin in &self.plugins {
            if let Runtime::Host(host) = &plugin.runtime {
                host.shutdown(Duration::from_millis(500));
                self.pool.unregister(host);
            }
        }
        self.plugins.clear();
        self.pool.stop();
        self.monitor.stop();
        self.spawner.stop();
    }
}

impl Drop for PluginManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}
