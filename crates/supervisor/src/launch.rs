//! Host launching: a host's cgroup, its start ([`spawn`](crate::proxy::spawn)), and its wiring into
//! the monitor (output, death) and the call pool, with a failed start classified as the plugin's
//! error. What a plugin's state becomes on success or failure (latch, backoff) is the manager's
//! call. It sits above `proxy`, `monitor` and `pool` (which it wires), not inside `proxy/`, so that
//! `proxy` imports neither.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use plughost_wire::Version;

use crate::callbacks::ServiceCallbacks;
use crate::cgroups::Cgroups;
use crate::config::Trust;
use crate::error::PluginError;
use crate::monitor::{Monitor, OnDeath};
use crate::plugin::{Plugin, Runtime};
use crate::pool::Pool;
use crate::proxy::spawn::{self, Spawner, StartError, StartParams};
use crate::proxy::Host;

/// What starting a host needs of the manager, borrowed for one start.
pub(crate) struct Launcher<'a> {
    pub next_host_id: &'a AtomicU64,
    pub cgroups: &'a Cgroups,
    pub host_binary: &'a Path,
    pub version: Version,
    pub spawner: &'a Spawner,
    pub monitor: &'a Monitor,
    pub pool: &'a Arc<Pool>,
    pub default: &'a dyn ServiceCallbacks,
    pub trust: &'a Trust,
}

impl Launcher<'_> {
    /// Starts a host for `plugin` (out of process). Caller holds its lifecycle lock.
    pub(crate) fn launch(&self, plugin: &Arc<Plugin>) -> Result<Runtime, PluginError> {
        let config = &plugin.config;
        let id = self.next_host_id.fetch_add(1, Ordering::Relaxed);
        let cgroup =
            self.cgroups
                .for_host(config, id)
                .map_err(|reason| PluginError::LoadFailed {
                    plugin: config.name.clone(),
                    reason: format!("cannot create its cgroup: {reason}"),
                })?;
        plugin.state().cgroup = cgroup.clone();
        let params = StartParams {
            id,
            config,
            host_binary: self.host_binary,
            service_version: self.version,
            spawner: self.spawner,
            kicks: &self.pool.kicks,
            hangups: &self.pool.hangups,
            default: self.default,
            stats: &plugin.stats,
            trust: self.trust,
            cgroup: cgroup.as_deref(),
        };
        match spawn::start(params) {
            Ok(started) => {
                plugin.state().loaded_sha256 = Some(started.sha256);
                let name = started.host.name.clone();
                self.monitor.watch_output(id, name, started.output);
                let on_death = self.on_death(plugin, &started.host);
                self.monitor.watch_host(&started.host, cgroup, on_death);
                self.pool.register(&started.host);
                tracing::info!(plugin = %config.name, pid = started.host.pid(), "plugin loaded");
                Ok(Runtime::Host(started.host))
            }
            Err((error, output)) => {
                if let Some(output) = output {
                    self.monitor
                        .watch_output(id, Arc::from(config.name.as_str()), output);
                }
                // Classified (from the cgroup's counters too) before the cgroup goes.
                let error = self.start_error(plugin, error);
                if let Some(cgroup) = &cgroup {
                    cgroup.destroy();
                }
                Err(error)
            }
        }
    }

    /// What the monitor does when `host`, the runtime of `plugin`, dies: records the crash at once
    /// (latch or backoff), unless a dispatcher in a hook of it is about to (it holds the read token
    /// and may learn more of why), or the host was stopped on purpose (no longer the runtime).
    fn on_death(&self, plugin: &Arc<Plugin>, host: &Arc<Host>) -> OnDeath {
        let plugin = Arc::downgrade(plugin);
        let host = Arc::downgrade(host);
        let pool = Arc::downgrade(self.pool);
        Box::new(move || {
            let (Some(plugin), Some(host)) = (plugin.upgrade(), host.upgrade()) else {
                return;
            };
            let Some(cause) = host.death_cause(false) else {
                return;
            };
            plugin.host_crashed(&host, None, cause);
            if let Some(pool) = pool.upgrade() {
                pool.unregister(&host);
            }
        })
    }

    fn start_error(&self, of: &Plugin, error: StartError) -> PluginError {
        let plugin = of.name().to_owned();
        match error {
            StartError::Load(reason) => PluginError::LoadFailed { plugin, reason },
            StartError::RequiresUpdate => PluginError::RequiresUpdate {
                plugin,
                running: self.version,
            },
            StartError::Crashed(cause) => PluginError::Crashed {
                plugin,
                hook: None,
                cause: of.explain(cause),
            },
        }
    }
}
