//! Operating on a running `PluginManager` by plugin name (restart, disable, enable) and replacing its
//! configuration (`reconfigure`, the deferred form a locking service uses, and the re-verification
//! of kept plugins under new trust settings). Not here: dispatch and its policy (`mod.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{ControlError, PluginManager};
use crate::config::{Activation, Deadlines};
use crate::error::PluginError;
use crate::plugin::{Plugin, Runtime};

impl PluginManager {
    fn find(&self, name: &str) -> Result<&Arc<Plugin>, ControlError> {
        self.plugins
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ControlError::UnknownPlugin(name.to_owned()))
    }

    pub(super) fn stop_runtime(&self, runtime: Option<Runtime>) {
        if let Some(runtime) = runtime {
            runtime.stop(&self.pool);
        }
    }

    /// Clears a plugin's latch (or backoff) and starts it again now, stopping its current host first.
    pub fn restart_plugin(&self, name: &str) -> Result<(), ControlError> {
        let plugin = self.find(name)?;
        let _lifecycle = plugin.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let old = {
            let mut state = plugin.state();
            state.latched = None;
            state.backoff = None;
            state.not_started = false;
            state.recent_crashes.clear();
            state.runtime.take()
        };
        self.stop_runtime(old);
        tracing::info!(plugin = %name, "restart requested");
        match self.start_runtime(plugin) {
            Ok(runtime) => {
                plugin.stats.restarts.fetch_add(1, Ordering::Relaxed);
                plugin.state().runtime = Some(runtime);
                Ok(())
            }
            Err(error) => {
                plugin.state().latch(error.clone());
                Err(ControlError::Start(error))
            }
        }
    }

    /// Stops a plugin's host and skips it in every dispatch until [`enable_plugin`](Self::enable_plugin).
    pub fn disable_plugin(&self, name: &str) -> Result<(), ControlError> {
        let plugin = self.find(name)?;
        let _lifecycle = plugin.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let old = {
            let mut state = plugin.state();
            state.disabled = true;
            state.runtime.take()
        };
        self.stop_runtime(old);
        tracing::info!(plugin = %name, "disabled");
        Ok(())
    }

    /// Re-enables a disabled plugin, starting its host (unless it is latched; then use restart).
    pub fn enable_plugin(&self, name: &str) -> Result<(), ControlError> {
        let plugin = self.find(name)?;
        let _lifecycle = plugin.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let needs_start = {
            let mut state = plugin.state();
            state.disabled = false;
            // A lazy plugin no hook reached yet stays so.
            state.runtime.is_none()
                && state.latched.is_none()
                && state.backoff.is_none()
                && !state.not_started
        };
        tracing::info!(plugin = %name, "enabled");
        if needs_start {
            match self.start_runtime(plugin) {
                Ok(runtime) => plugin.state().runtime = Some(runtime),
                Err(error) => {
                    plugin.state().latch(error.clone());
                    return Err(ControlError::Start(error));
                }
            }
        }
        Ok(())
    }

    /// Applies a new plugin list (SIGHUP): unchanged plugins keep their hosts, changed ones are
    /// restarted with their new settings, added ones started, removed ones stopped, in the new
    /// order. Returns one line per change (for the log). Trust and default deadlines are replaced.
    ///
    /// When the trust settings change (`require_verified`, the trusted keys), every running
    /// out-of-process plugin kept as it was is verified again under the new ones: one whose file
    /// no longer passes is stopped and latched (`failed to load: <reason>`), one whose file
    /// passes but is not the bytes its host loaded is restarted from the verified file. A new
    /// order alone is reported as such.
    pub fn reconfigure(
        &mut self,
        plugins: Vec<crate::config::PluginConfig>,
        trust: crate::config::Trust,
        deadlines: Deadlines,
    ) -> Vec<String> {
        let (mut report, pending) = self.reconfigure_deferred(plugins, trust, deadlines);
        report.extend(self.finish_reconfigure(pending));
        report
    }

    /// [`PluginManager::reconfigure`] without starting or stopping any host: the new plugin list,
    /// order, trust and deadlines take effect at once, and what is left to do (hosts to stop,
    /// eager plugins to start) is returned for [`PluginManager::finish_reconfigure`]. A service
    /// that guards its manager with a lock takes it exclusively for this part only, so no
    /// operation waits for a host to start or stop. Until then a new eager plugin is treated as a
    /// lazy one not yet started (a hook that reaches it first starts it).
    pub fn reconfigure_deferred(
        &mut self,
        plugins: Vec<crate::config::PluginConfig>,
        trust: crate::config::Trust,
        deadlines: Deadlines,
    ) -> (Vec<String>, PendingReload) {
        let trust_changed = self.trust != trust;
        self.trust = trust;
        self.deadlines = deadlines;
        let mut report = Vec::new();
        let mut pending = PendingReload::default();
        if trust_changed {
            report.push("trust settings changed: running plugins verified again".to_owned());
        }
        let mut old = std::mem::take(&mut self.plugins);
        let old_order: Vec<String> = old.iter().map(|p| p.config.name.clone()).collect();
        for config in plugins {
            let canonical = std::fs::canonicalize(&config.path).unwrap_or(config.path.clone());
            if self.plugins.iter().any(|p| p.canonical == canonical) {
                report.push(format!(
                    "plugin '{}' listed twice (same file); loaded once",
                    config.name
                ));
                continue;
            }
            if let Some(position) = old.iter().position(|p| p.config.name == config.name) {
                let plugin = old.remove(position);
                if plugin.config == config {
                    if trust_changed {
                        self.reverify(&plugin, &mut report, &mut pending);
                    }
                    self.plugins.push(plugin);
                    continue;
                }
                pending.stop.push(plugin.state().runtime.take());
                report.push(format!("plugin '{}' changed: restarted", config.name));
            } else {
                report.push(format!("plugin '{}' added", config.name));
            }
            let plugin = Arc::new(Plugin::new(config, canonical));
            pending.defer_start(&plugin);
            self.plugins.push(plugin);
        }
        for plugin in old {
            pending.stop.push(plugin.state().runtime.take());
            report.push(format!("plugin '{}' removed", plugin.name()));
        }
        let kept_before: Vec<&String> = old_order
            .iter()
            .filter(|name| self.plugins.iter().any(|p| &p.config.name == *name))
            .collect();
        let kept_now: Vec<&String> = self
            .plugins
            .iter()
            .map(|p| &p.config.name)
            .filter(|name| old_order.contains(name))
            .collect();
        if kept_before != kept_now {
            let order: Vec<&str> = self.plugins.iter().map(|p| p.name()).collect();
            report.push(format!(
                "plugins reordered: hooks now go to {}",
                order.join(", ")
            ));
        }
        (report, pending)
    }

    /// Stops the hosts a reconfiguration removed and starts its new eager plugins (those no hook
    /// started meanwhile). Returns a line per start failure.
    pub fn finish_reconfigure(&self, pending: PendingReload) -> Vec<String> {
        let mut report = Vec::new();
        for runtime in pending.stop {
            self.stop_runtime(runtime);
        }
        for plugin in pending.start {
            let _lifecycle = plugin.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
            if !plugin.state().not_started {
                continue; // a hook reached it first and started it
            }
            match self.start_runtime(&plugin) {
                Ok(runtime) => {
                    let mut state = plugin.state();
                    state.not_started = false;
                    state.runtime = Some(runtime);
                }
                Err(error) => {
                    tracing::error!(plugin = %plugin.name(), "{error}");
                    report.push(error.to_string());
                    let mut state = plugin.state();
                    state.not_started = false;
                    state.latch(error);
                }
            }
        }
        report
    }

    /// A kept plugin under new trust settings (see [`PluginManager::reconfigure`]).
    fn reverify(
        &self,
        plugin: &Arc<Plugin>,
        report: &mut Vec<String>,
        pending: &mut PendingReload,
    ) {
        let _lifecycle = plugin.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = {
            let state = plugin.state();
            match &state.runtime {
                Some(Runtime::Host(_)) => state.loaded_sha256.clone(),
                // In-process plugins are not verified at load (trusted by configuration); a
                // stopped, latched or backing-off one is verified when it starts again.
                _ => return,
            }
        };
        let name = plugin.name().to_owned();
        match crate::integrity::verify(&plugin.config, &self.trust) {
            Ok(sha256) if Some(&sha256) == loaded.as_ref() => {}
            Ok(_) => {
                pending.stop.push(plugin.state().runtime.take());
                pending.defer_start(plugin);
                report.push(format!(
                    "plugin '{name}' re-verified under the new trust settings, but its file changed since it was loaded: restarted"
                ));
            }
            Err(reason) => {
                pending.stop.push(plugin.state().runtime.take());
                let error = PluginError::LoadFailed {
                    plugin: name.clone(),
                    reason: format!("no longer verifies under the new trust settings: {reason}"),
                };
                report.push(format!("{error}: stopped"));
                plugin.state().latch(error);
            }
        }
    }
}

/// What [`PluginManager::reconfigure_deferred`] left to do: hosts to stop, eager plugins to start.
#[derive(Default)]
#[must_use = "hosts stay up until `finish_reconfigure` stops them"]
pub struct PendingReload {
    stop: Vec<Option<Runtime>>,
    start: Vec<Arc<Plugin>>,
}

impl PendingReload {
    /// Marks `plugin` not started (a hook may start it as a lazy one), to start later if eager.
    fn defer_start(&mut self, plugin: &Arc<Plugin>) {
        plugin.state().not_started = true;
        if plugin.config.activation != Activation::Lazy {
            self.start.push(plugin.clone());
        }
    }
}
