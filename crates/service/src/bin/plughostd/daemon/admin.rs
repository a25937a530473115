//! Administration: the plugin list, plugin restart/disable/enable, configuration reload, metrics,
//! shutdown and the reaping of idle VMs. Who may ask for these is decided by `server.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use plughost::Isolation;
use plughost_service::{ErrorKind, PluginRow};

use super::callers::host_uids;
use super::{lock, CSession, Daemon, OpError, OpResult, UserSession};

impl Daemon {
    pub fn plugins(&self) -> OpResult<Vec<PluginRow>> {
        self.with_manager(|m| {
            m.plugins()
                .into_iter()
                .map(|p| PluginRow {
                    name: p.name,
                    path: p.path,
                    isolation: match p.isolation {
                        Isolation::Process => "process".into(),
                        Isolation::InProcess => "in-process".into(),
                    },
                    host_pid: p.host_pid,
                    state: p.state.name().into(),
                    detail: p.state.to_string(),
                    crashes: p.crashes,
                    restarts: p.restarts,
                    uptime_secs: p.uptime.map(|u| u.as_secs()),
                    hooks_served: p.hooks_served,
                    api_calls: p.api_calls,
                    latency: p
                        .latency
                        .iter()
                        .map(|l| plughost_service::HookLatencyRow {
                            hook: l.hook.name().into(),
                            count: l.count,
                            p50_us: u64::try_from(l.p50.as_micros()).unwrap_or(u64::MAX),
                            p99_us: u64::try_from(l.p99.as_micros()).unwrap_or(u64::MAX),
                        })
                        .collect(),
                    last_error: p.last_error,
                    last_crash: p.last_crash,
                })
                .collect()
        })
    }

    /// `plugin restart|disable|enable NAME`.
    pub fn plugin_control(
        &self,
        name: &str,
        action: PluginAction,
    ) -> OpResult<plughost_service::Reply> {
        let result = self.with_manager(|m| match action {
            PluginAction::Restart => m.restart_plugin(name),
            PluginAction::Disable => m.disable_plugin(name),
            PluginAction::Enable => m.enable_plugin(name),
        })?;
        let done = match action {
            PluginAction::Restart => "restarted",
            PluginAction::Disable => "disabled",
            PluginAction::Enable => "enabled",
        };
        match result {
            Ok(()) => Ok(plughost_service::Reply::Done {
                message: format!("plugin '{name}' {done}"),
            }),
            Err(plughost::ControlError::UnknownPlugin(_)) => Err(OpError::new(
                ErrorKind::NotFound,
                format!("no plugin named '{name}'"),
            )),
            Err(plughost::ControlError::Start(e)) => {
                Err(OpError::new(ErrorKind::Plugin, e.to_string()))
            }
        }
    }

    /// SIGHUP: re-reads the configuration and applies its plugin list (unchanged plugins keep
    /// running). A bad file is refused and the running configuration kept.
    pub fn reload(&self, path: &std::path::Path) {
        let config = match crate::config::Config::load(path, true) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("configuration reload refused, keeping the running one: {e}");
                return;
            }
        };
        *lock(&self.host_uids) = host_uids(&config);
        let plugins = config.plugins.iter().map(|p| p.config.clone()).collect();
        // The manager is held exclusively only to swap the plugin list: hosts are started and
        // stopped afterwards under the shared lock, so no operation waits for a process start.
        let (mut changes, pending) = {
            let mut guard = self.manager.write().unwrap_or_else(|e| e.into_inner());
            let Some(manager) = guard.as_mut() else {
                return;
            };
            manager.reconfigure_deferred(plugins, config.trust, config.deadlines)
        };
        if let Ok(more) = self.with_manager(|m| m.finish_reconfigure(pending)) {
            changes.extend(more);
        }
        if changes.is_empty() {
            tracing::info!(config = %path.display(), "configuration reloaded: no plugin changed");
        }
        for change in changes {
            tracing::info!(config = %path.display(), "configuration reloaded: {change}");
        }
    }

    /// The plugins' status in the OpenMetrics text format.
    pub fn metrics(&self) -> OpResult<String> {
        self.with_manager(|m| m.openmetrics())
    }

    /// Stops every VM and container session (with their hooks), then the plugins.
    pub fn shutdown(&self) {
        if self.shared.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("shutting down");
        let sessions: Vec<Arc<UserSession>> = lock(&self.shared.sessions)
            .by_uid
            .values()
            .cloned()
            .collect();
        for s in sessions {
            let _op = lock(&s.op);
            self.stop_vm_locked(&s);
        }
        let csessions: Vec<Arc<CSession>> = lock(&self.shared.csessions)
            .by_id
            .values()
            .cloned()
            .collect();
        for cs in csessions {
            let _op = lock(&cs.op);
            // Stopped meanwhile (by its client or because its application exited).
            if !cs.stopping.load(Ordering::SeqCst) {
                self.stop_csession_locked(&cs);
            }
        }
        let manager = self
            .manager
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut manager) = manager {
            manager.shutdown();
        }
    }

    /// Stops VMs unused for the idle timeout (never one with a running distribution or process).
    pub fn reap_idle(&self) {
        let idle = self.shared.config.idle_timeout_secs;
        let sessions: Vec<Arc<UserSession>> = lock(&self.shared.sessions)
            .by_uid
            .values()
            .cloned()
            .collect();
        for s in sessions {
            let Some(vm) = s.vm() else { continue };
            let dead = !vm.is_alive();
            let unused = idle > 0
                && s.busy.load(Ordering::SeqCst) == 0
                && lock(&s.distros).is_empty()
                && lock(&s.last_used).elapsed() >= Duration::from_secs(idle);
            if !(dead || unused) {
                continue;
            }
            // Never wait for an operation in progress: try again on the next tick.
            let Ok(_op) = s.op.try_lock() else { continue };
            if dead {
                tracing::warn!(session = %s.info.id, "the VM died on its own");
            } else {
                tracing::info!(session = %s.info.id, "stopping the VM after {idle} s unused");
            }
            self.stop_vm_locked(&s);
        }
    }
}

/// What [`Daemon::plugin_control`] does.
#[derive(Clone, Copy, Debug)]
pub enum PluginAction {
    Restart,
    Disable,
    Enable,
}
