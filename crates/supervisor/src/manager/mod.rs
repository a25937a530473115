//! `PluginManager`: the plugins of one service, in configuration order, and the dispatch of each hook
//! to them with the policy of `PLUGIN_ABI.md` ("Hooks", "User-visible errors").
//!
//! Policy:
//! - Hooks go to plugins in configuration order; a veto (or a crash) in a veto hook stops the delivery
//!   and fails the operation. A failing non-veto hook is logged and delivery goes on.
//! - A failed `on_vm_started` is followed by `on_vm_stopping` to every plugin; a failed
//!   `on_container_session_created` by that session's `on_container_session_stopping`.
//! - Every hook has a deadline ([`Deadlines`](crate::Deadlines)); past it the host is killed and the
//!   crash classified `hung`.
//! - A crash applies the plugin's [`RestartPolicy`](crate::RestartPolicy): latched for good
//!   (`Never`), or restarted after a backoff (`OnCrash`). A veto operation fails fast, before any hook
//!   is delivered, while a plugin is latched or backing off, with the error of the plugin that failed
//!   first in time (one latch: every operation reports the same crash). A host that dies between
//!   hooks is recorded when the monitor sees it die, not when a dispatch next reaches it.
//! - [`Activation::Lazy`](crate::Activation) plugins start at the first hook that reaches them.
//!
//! Each plugin's turn of a hook runs in a `debug` span `hook{plugin hook session|csession}`, its
//! start or restart included; the calls it makes meanwhile nest in it (`execute.rs`). Off at the
//! usual `info` level: an enabled span costs ~0.8 µs of a ~3.5 µs hook round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use plughost_abi::PLUGHOST_E_ILLEGAL_STATE;
use plughost_wire::{Hook, HookKind, HookOutcome, LoadFailure, Version};

use crate::callbacks::{
    ContainerSession, Distribution, OfflineDistribution, ServiceCallbacks, Session, VmSettings,
};
use crate::cgroups::Cgroups;
use crate::config::{Activation, Deadlines, Isolation, ManagerConfig};
use crate::error::PluginError;
use crate::inprocess::InProcessPlugin;
use crate::launch::Launcher;
use crate::monitor::Monitor;
use crate::plugin::{Plugin, Readiness, Runtime};
use crate::pool::Pool;
use crate::proxy::spawn::Spawner;
use crate::proxy::OutgoingHook;
use crate::report::{self, PluginInfo};

mod control;
pub use control::PendingReload;

/// The VM session a hook is about, if it is about one.
fn session_of(hook: &Hook) -> Option<u32> {
    match hook {
        Hook::VmStarted { session, .. }
        | Hook::VmStopping { session }
        | Hook::DistributionStarted { session, .. }
        | Hook::DistributionStopping { session, .. }
        | Hook::DistributionRegistered { session, .. }
        | Hook::DistributionUnregistered { session, .. } => Some(session.id.0),
        Hook::ContainerSessionCreated(_)
        | Hook::ContainerSessionStopping(_)
        | Hook::SessionVmStarted(_)
        | Hook::SessionVmStopping(_) => None,
    }
}

/// The container session a hook is about, if it is about one.
fn container_session_of(hook: &Hook) -> Option<u32> {
    match hook {
        Hook::ContainerSessionCreated(session)
        | Hook::ContainerSessionStopping(session)
        | Hook::SessionVmStarted(session)
        | Hook::SessionVmStopping(session) => Some(session.id.0),
        Hook::VmStarted { .. }
        | Hook::VmStopping { .. }
        | Hook::DistributionStarted { .. }
        | Hook::DistributionStopping { .. }
        | Hook::DistributionRegistered { .. }
        | Hook::DistributionUnregistered { .. } => None,
    }
}

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

/// A refused management request (`restart_plugin`, `disable_plugin`, `enable_plugin`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no plugin named '{0}'")]
    UnknownPlugin(String),
    #[error("{0}")]
    Start(PluginError),
}

/// The plugins of one service. See the crate docs for the threads and the re-entrancy rules.
pub struct PluginManager {
    plugins: Vec<Arc<Plugin>>,
    spawner: Spawner,
    monitor: Arc<Monitor>,
    pool: Arc<Pool>,
    version: Version,
    host_binary: std::path::PathBuf,
    deadlines: Deadlines,
    default: Arc<dyn ServiceCallbacks + Send + Sync>,
    next_host_id: AtomicU64,
    trust: crate::config::Trust,
    cgroups: Cgroups,
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
            host_binary: config.resolve_host_binary(),
            deadlines: config.deadlines,
            default,
            next_host_id: AtomicU64::new(1),
            trust: config.trust,
            cgroups: Cgroups::new(&config.cgroups),
        };
        for plugin in config.plugins {
            let canonical = std::fs::canonicalize(&plugin.path).unwrap_or(plugin.path.clone());
            if manager.plugins.iter().any(|p| p.canonical == canonical) {
                tracing::warn!(plugin = %plugin.name, path = %plugin.path.display(),
                    "plugin listed twice (same file); loaded once");
                continue;
            }
            manager
                .plugins
                .push(Arc::new(Plugin::new(plugin, canonical)));
        }
        for plugin in &manager.plugins {
            manager.start_or_defer(plugin);
        }
        Ok(manager)
    }

    /// Starts a plugin now, or marks it for its first hook (lazy activation); a start failure is
    /// latched.
    fn start_or_defer(&self, plugin: &Arc<Plugin>) {
        if plugin.config.activation == Activation::Lazy {
            plugin.state().not_started = true;
            return;
        }
        let _lifecycle = plugin.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        match self.start_runtime(plugin) {
            Ok(runtime) => plugin.state().runtime = Some(runtime),
            Err(error) => {
                tracing::error!(plugin = %plugin.name(), "{error}");
                plugin.state().latch(error);
            }
        }
    }

    /// What starting a host borrows of the manager (`launch.rs`).
    fn launcher(&self) -> Launcher<'_> {
        Launcher {
            next_host_id: &self.next_host_id,
            cgroups: &self.cgroups,
            host_binary: &self.host_binary,
            version: self.version,
            spawner: &self.spawner,
            monitor: &self.monitor,
            pool: &self.pool,
            default: &*self.default,
            trust: &self.trust,
        }
    }

    /// Starts a host (or loads the library in process) for `plugin`. Caller holds its lifecycle lock.
    fn start_runtime(&self, plugin: &Arc<Plugin>) -> Result<Runtime, PluginError> {
        let config = &plugin.config;
        match config.isolation {
            Isolation::Process => self.launcher().launch(plugin),
            Isolation::InProcess => {
                if !config.env.is_empty() {
                    tracing::warn!(plugin = %config.name,
                        "in-process plugins see the service's environment; its env setting is ignored");
                }
                InProcessPlugin::load(&config.path, self.version, self.default.clone())
                    .map(|p| Runtime::InProcess(Arc::new(p)))
                    .map_err(|failure| self.load_failure(&config.name, failure))
            }
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
                reason: format!(
                    "entry point returned status {}",
                    crate::error::status_text(status)
                ),
            },
            LoadFailure::Confine(reason) => PluginError::LoadFailed { plugin, reason },
        }
    }

    /// Starts a host for a plugin whose backoff elapsed, or a lazy plugin's first one (once,
    /// however many threads ask).
    fn start_due(&self, plugin: &Arc<Plugin>, kind: HookKind) -> Readiness {
        let _lifecycle = plugin.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let first = match plugin.readiness(kind) {
            Readiness::Restart => false,
            Readiness::Activate => true,
            other => return other, // another thread started it meanwhile
        };
        let fail = |error: PluginError| {
            if kind.may_veto() {
                Readiness::Fail(error)
            } else {
                Readiness::Skip
            }
        };
        match self.start_runtime(plugin) {
            Ok(runtime) => {
                if first {
                    tracing::info!(plugin = %plugin.name(), hook = %kind, "activated by its first hook");
                } else {
                    plugin.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(plugin = %plugin.name(), "restarted after a crash");
                }
                let mut state = plugin.state();
                state.backoff = None;
                state.not_started = false;
                state.runtime = Some(runtime.clone());
                Readiness::Ready(runtime)
            }
            Err(error) if first => {
                // As an eager plugin's start-up failure: latched.
                tracing::error!(plugin = %plugin.name(), "{error}");
                let mut state = plugin.state();
                state.not_started = false;
                fail(state.latch(error))
            }
            Err(error) => {
                let cause = match &error {
                    PluginError::Crashed { cause, .. } => cause.clone(),
                    _ => {
                        // It cannot even load any more: latch it.
                        tracing::error!(plugin = %plugin.name(), "restart failed: {error}");
                        let mut state = plugin.state();
                        state.backoff = None;
                        return fail(state.latch(error));
                    }
                };
                fail(plugin.crashed(None, cause))
            }
        }
    }

    fn ready(&self, plugin: &Arc<Plugin>, kind: HookKind) -> Readiness {
        match plugin.readiness(kind) {
            Readiness::Restart | Readiness::Activate => self.start_due(plugin, kind),
            other => other,
        }
    }

    /// Fails fast, before any hook is delivered, if a plugin is latched or backing off (one latch:
    /// the error of the plugin that failed first in time), or its host died since its last hook;
    /// then starts the hosts that are due (lazy activation, restart after a backoff).
    fn precheck(&self, kind: HookKind) -> Result<(), PluginError> {
        let mut first: Option<(u64, PluginError)> = None;
        // One look at each plugin's state in the usual case (every host ready and alive): a
        // dispatch to many plugins touches each plugin's lines as few times as it can.
        let mut due = false;
        for plugin in &self.plugins {
            let mut readiness = plugin.readiness(kind);
            if let Readiness::Ready(Runtime::Host(host)) = &readiness {
                // Dead, and the monitor could not record it yet: record it now.
                if let Some(cause) = host.death_cause(true) {
                    plugin.host_crashed(host, None, cause);
                    self.pool.unregister(host);
                    readiness = plugin.readiness(kind);
                }
            }
            match readiness {
                Readiness::Fail(error) => {
                    let at = plugin.state().failed_at();
                    if first.as_ref().is_none_or(|(earliest, _)| at < *earliest) {
                        first = Some((at, error));
                    }
                }
                Readiness::Restart | Readiness::Activate => due = true,
                Readiness::Ready(_) | Readiness::Skip => {}
            }
        }
        if let Some((_, error)) = first {
            return Err(error);
        }
        if due {
            for plugin in &self.plugins {
                if let Readiness::Fail(error) = self.ready(plugin, kind) {
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Delivers `hook` in order. Returns the first veto or crash of a veto hook.
    fn dispatch(&self, hook: &Hook, scope: &dyn ServiceCallbacks) -> Result<(), PluginError> {
        let kind = hook.kind();
        let (session, csession) = (session_of(hook), container_session_of(hook));
        // Encoded once, at the first host, for every host (not cloned and encoded per plugin).
        let hook = &OutgoingHook::new(hook);
        for plugin in &self.plugins {
            // Off by default (debug); the ids above are two matches per dispatch.
            let _span = tracing::debug_span!(
                "hook",
                plugin = %plugin.name(),
                hook = %kind.name(),
                session,
                csession,
            )
            .entered();
            let runtime = match self.ready(plugin, kind) {
                Readiness::Ready(runtime) => runtime,
                Readiness::Skip | Readiness::Restart | Readiness::Activate => continue,
                Readiness::Fail(error) => return Err(error),
            };
            let deadline = plugin.config.deadlines.unwrap_or(self.deadlines).of(kind);
            let Some(outcome) = runtime.call_hook(hook, scope, deadline, &plugin.stats, &self.pool)
            else {
                continue;
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
                        plugin: plugin.name().to_owned(),
                        hook: kind,
                        status,
                        message,
                    };
                    if kind.may_veto() {
                        tracing::info!(plugin = %plugin.name(), hook = %kind, "{error}");
                        return Err(error);
                    }
                    tracing::warn!(plugin = %plugin.name(), hook = %kind, "ignored: {error}");
                }
                Err(cause) => {
                    let error = match &runtime {
                        Runtime::Host(host) => plugin.host_crashed(host, Some(kind), cause),
                        Runtime::InProcess(_) => plugin.crashed(Some(kind), cause),
                    };
                    if kind.may_veto() {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    /// `on_vm_started`. Fails fast with a latched (or backing-off) plugin's error; on a veto or
    /// crash, every plugin then gets `on_vm_stopping` and the error is returned.
    pub fn on_vm_started(
        &self,
        session: &Session,
        settings: &VmSettings,
        scope: &dyn ServiceCallbacks,
    ) -> Result<(), PluginError> {
        self.precheck(HookKind::VmStarted)?;
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
        self.precheck(HookKind::DistributionStarted)?;
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
        self.precheck(HookKind::ContainerSessionCreated)?;
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
        self.plugins.iter().map(|p| report::info(p)).collect()
    }

    /// The errors of plugins that failed to load, in order.
    pub fn load_errors(&self) -> Vec<PluginError> {
        self.plugins
            .iter()
            .filter_map(|p| p.state().latched.clone())
            .filter(|e| !matches!(e, PluginError::Crashed { hook: Some(_), .. }))
            .collect()
    }

    /// Asks every host to exit, kills what is left after a short grace, and stops the threads.
    pub fn shutdown(&mut self) {
        for plugin in &self.plugins {
            let runtime = plugin.state().runtime.take();
            self.stop_runtime(runtime);
        }
        self.plugins.clear();
        self.cgroups.shutdown();
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
