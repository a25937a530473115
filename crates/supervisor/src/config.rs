//! How a service describes its plugins to the manager.

use std::path::PathBuf;
use std::sync::Arc;

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

/// One plugin, in configuration order.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// Shown in every error and log line about it.
    pub name: String,
    /// The shared library.
    pub path: PathBuf,
    pub isolation: Isolation,
    /// The host's whole environment (it starts empty).
    pub env: Vec<(String, String)>,
}

impl PluginConfig {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            path: path.into(),
            isolation: Isolation::Process,
            env: Vec::new(),
        }
    }

    pub fn in_process(mut self) -> PluginConfig {
        self.isolation = Isolation::InProcess;
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> PluginConfig {
        self.env.push((key.into(), value.into()));
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

/// The manager's configuration.
#[derive(Clone)]
pub struct ManagerConfig {
    pub plugins: Vec<PluginConfig>,
    /// The `plughost-host` binary; default: `$PLUGHOST_HOST`, else beside the current executable (or
    /// its parent directory, for test binaries in `target/*/deps`).
    pub host_binary: Option<PathBuf>,
    pub output: Arc<dyn OutputSink>,
}

impl ManagerConfig {
    pub fn new(plugins: Vec<PluginConfig>) -> ManagerConfig {
        ManagerConfig {
            plugins,
            host_binary: None,
            output: Arc::new(LogOutput),
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
