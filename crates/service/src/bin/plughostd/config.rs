//! `plughostd.toml`: the plugins in order, and the VM settings. A bad file is refused with its
//! path, line and reason. Users' documentation of every key: `crates/service/README.md`,
//! "Configuration" (keep it in step).
//!
//! ```toml
//! idle_timeout_secs = 300          # stop a user's VM after this long unused (0 = never)
//! host_binary = "/usr/libexec/plughost/plughost-host"   # default: searched (host_binary.rs)
//!
//! [[plugin]]
//! name = "audit"
//! path = "/usr/lib/plughost/plugins/audit.so"
//! isolation = "process"            # or "in-process" (trusted plugins only)
//! activation = "eager"             # start at plughostd's start-up; "lazy": at the first hook
//! env = { AUDIT_LOG = "/var/log/audit-plugin.log" }   # the host's environment (starts empty)
//! # Integrity (either; see plughost-sign):
//! sha256 = "<hex>"                 # load only these bytes
//! signature = "/usr/lib/plughost/plugins/audit.so.sig"   # detached ed25519, base64
//! # Least privilege (defaults shown):
//! user = "default"                 # "default" (plughost, else nobody), "service", or a user name
//! seccomp = true                   # the default syscall filter
//! landlock = true                  # open files only beneath the system trees and:
//! read_paths = []
//! write_paths = ["/var/log/audit-plugin.log"]
//! memory_mib = 512                 # memory.max in its cgroup (memory controller), else RLIMIT_AS;
//!                                  # also open_files, processes (pids.max, else RLIMIT_NPROC), cpu_seconds
//! # Resilience:
//! start_timeout_secs = 30          # deadline of on_*_started / created hooks (default 30)
//! teardown_timeout_secs = 10       # deadline of the other hooks (default 10)
//! restart = "on-crash"             # or "never" (default: the first crash is latched)
//! max_restarts = 3                 # within window_secs (60)
//! backoff_initial_ms = 500         # doubling up to backoff_max_ms (30000)
//! ```
//!
//! Top level, besides `idle_timeout_secs` and `host_binary`: `trusted_keys = ["<base64>" or
//! "/path/to/key.pub", ...]`, `require_verified = false`, the default `start_timeout_secs` /
//! `teardown_timeout_secs` of every plugin, and `cgroup_parent`: `"auto"` (the default: a cgroup v2
//! per host beneath `<plughostd's cgroup>/plughost` where it enforces a limit), `"off"`, or the
//! absolute path of a cgroup2 directory beneath which every host gets one (`memory_mib` becomes
//! `memory.max` and `processes` `pids.max` where those controllers are delegated). It takes effect
//! when plughostd starts, not on a reload. `vm_id_base` and `vm_id_ranges`: the host ids the VMs'
//! user namespaces map into, one range of 65536 per user (default: the `plughost` user's
//! /etc/subuid and /etc/subgid entry, else from 0x70000000); no login user may be inside.
//! `vm_scratch_mib = 1024`: the size of each VM's private writable layer, `/tmp` and `/dev/shm`
//! (memory-backed tmpfs; what a VM writes outside shared folders lives there and dies with it).
//!
//! Per-user bounds (every uid but root), defaults shown; reaching one is an error naming it:
//! ```toml
//! [limits]
//! connections = 16                 # control connections open at once
//! processes = 12                   # programs run at once by exec / csession run (fewer than
//!                                  # connections: a user running many can still ask)
//! container_sessions = 8           # container sessions (each may run a session VM)
//! distributions = 32               # registered distributions
//! running_distributions = 8        # distributions running at once
//! state_bytes = 65536              # bytes of the state file the user's registrations take
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_idle")]
    idle_timeout_secs: u64,
    host_binary: Option<Spanned<PathBuf>>,
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
    #[serde(default)]
    require_verified: bool,
    start_timeout_secs: Option<u64>,
    teardown_timeout_secs: Option<u64>,
    cgroup_parent: Option<Spanned<String>>,
    vm_id_base: Option<u32>,
    vm_id_ranges: Option<u32>,
    #[serde(default = "default_scratch")]
    vm_scratch_mib: u32,
    #[serde(default)]
    limits: UserLimits,
    #[serde(default)]
    plugin: Vec<RawPlugin>,
}

/// Per-user bounds (`[limits]`): what one uid other than root may hold at once. Root is not
/// bounded (its requests are always served: the control socket keeps a reserve for it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserLimits {
    /// Control connections open at once.
    pub connections: usize,
    /// Programs run at once through `exec` and `csession run`.
    pub processes: usize,
    /// Container sessions (each may run a session VM).
    pub container_sessions: usize,
    /// Registered distributions.
    pub distributions: usize,
    /// Distributions running at once (each an init in the user's VM).
    pub running_distributions: usize,
    /// Bytes of the state file the user's registrations may take.
    pub state_bytes: usize,
    /// MiB of memory-backed scratch (`vm_scratch_mib` each) the user's VM and session VMs may
    /// hold together.
    pub scratch_mib: u64,
    /// Processes each uid may have in one of the user's VMs (RLIMIT_NPROC of every program
    /// started there, counted per uid in the VM's user namespace).
    pub vm_processes: u64,
}

impl Default for UserLimits {
    fn default() -> Self {
        UserLimits {
            connections: 16,
            processes: 12,
            container_sessions: 8,
            distributions: 32,
            running_distributions: 8,
            state_bytes: 64 * 1024,
            scratch_mib: 4096,
            vm_processes: 1024,
        }
    }
}

fn default_idle() -> u64 {
    300
}

fn default_scratch() -> u32 {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Spanned<String>,
    path: Spanned<PathBuf>,
    #[serde(default)]
    isolation: Option<Spanned<String>>,
    #[serde(default)]
    activation: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    sha256: Option<Spanned<String>>,
    signature: Option<PathBuf>,
    user: Option<String>,
    seccomp: Option<bool>,
    landlock: Option<bool>,
    #[serde(default)]
    read_paths: Vec<PathBuf>,
    #[serde(default)]
    write_paths: Vec<PathBuf>,
    memory_mib: Option<u64>,
    open_files: Option<u64>,
    processes: Option<u64>,
    cpu_seconds: Option<u64>,
    start_timeout_secs: Option<u64>,
    teardown_timeout_secs: Option<u64>,
    restart: Option<Spanned<String>>,
    max_restarts: Option<u32>,
    window_secs: Option<u64>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

/// One plugin, validated.
#[derive(Clone, Debug)]
pub struct PluginEntry {
    pub name: String,
    /// Everything the manager needs for it (the fields above included).
    pub config: plughost::PluginConfig,
}

/// The daemon's configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub idle_timeout_secs: u64,
    pub host_binary: Option<PathBuf>,
    pub plugins: Vec<PluginEntry>,
    pub trust: plughost::Trust,
    pub deadlines: plughost::Deadlines,
    /// cgroup v2 per host (`cgroup_parent`).
    pub cgroups: plughost::CgroupPolicy,
    /// The host ids VMs' user namespaces map into (`ids.rs`): first id and number of 65536-id
    /// ranges; unset: the `plughost` user's /etc/subuid entry, else 0x70000000 (4095 ranges).
    pub vm_id_base: Option<u32>,
    pub vm_id_ranges: Option<u32>,
    /// Size in MiB of each VM's writable layer, `/tmp` and `/dev/shm` (tmpfs, memory-backed).
    pub vm_scratch_mib: u32,
    /// Per-user bounds (`[limits]`).
    pub limits: UserLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout_secs: default_idle(),
            host_binary: None,
            plugins: Vec::new(),
            trust: plughost::Trust::default(),
            deadlines: plughost::Deadlines::default(),
            cgroups: plughost::CgroupPolicy::Auto,
            vm_id_base: None,
            vm_id_ranges: None,
            vm_scratch_mib: default_scratch(),
            limits: UserLimits::default(),
        }
    }
}

fn deadlines(
    base: plughost::Deadlines,
    start: Option<u64>,
    teardown: Option<u64>,
) -> plughost::Deadlines {
    use plughost::HookKind;
    let mut d = base;
    for kind in HookKind::ALL {
        let secs = if kind.may_veto() { start } else { teardown };
        if let Some(secs) = secs {
            d = d.with(kind, std::time::Duration::from_secs(secs));
        }
    }
    d
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
}

/// 1-based line and column of byte `offset`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

impl Config {
    /// Reads `path`. A missing file is an error only when `required` (an explicit `--config`).
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, reason: String| {
            let (line, column) = position(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                reason,
            }
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| invalid(e.span(), e.message().trim_end().to_owned()))?;
        let host_binary = match raw.host_binary {
            Some(p) if !p.get_ref().is_absolute() => {
                return Err(invalid(
                    Some(p.span()),
                    "host_binary must be an absolute path".into(),
                ))
            }
            Some(p) => Some(p.into_inner()),
            None => None,
        };
        let cgroups = match raw.cgroup_parent {
            None => plughost::CgroupPolicy::Auto,
            Some(value) => match value.get_ref().as_str() {
                "auto" => plughost::CgroupPolicy::Auto,
                "off" => plughost::CgroupPolicy::Off,
                path if path.starts_with('/') => plughost::CgroupPolicy::Parent(path.into()),
                other => {
                    return Err(invalid(
                        Some(value.span()),
                        format!(
                            "cgroup_parent must be \"auto\", \"off\" or an absolute path, not {other:?}"
                        ),
                    ))
                }
            },
        };
        let mut plugins: Vec<PluginEntry> = Vec::new();
        for plugin in raw.plugin {
            let name_span = plugin.name.span();
            let name = plugin.name.into_inner();
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return Err(invalid(
                    Some(name_span),
                    format!("plugin name {name:?} must be 1-64 characters of [A-Za-z0-9._-]"),
                ));
            }
            if plugins.iter().any(|p| p.name == name) {
                return Err(invalid(
                    Some(name_span),
                    format!("plugin name {name:?} is used twice"),
                ));
            }
            if !plugin.path.get_ref().is_absolute() {
                return Err(invalid(
                    Some(plugin.path.span()),
                    format!("plugin {name:?}: path must be absolute"),
                ));
            }
            let in_process = match &plugin.isolation {
                None => false,
                Some(i) => match i.get_ref().as_str() {
                    "process" => false,
                    "in-process" => true,
                    other => {
                        return Err(invalid(
                            Some(i.span()),
                            format!(
                                "plugin {name:?}: isolation must be \"process\" or \"in-process\", not {other:?}"
                            ),
                        ))
                    }
                },
            };
            let path = plugin.path.into_inner();
            let env: Vec<(String, String)> = plugin.env.into_iter().collect();
            let mut config = plughost::PluginConfig::new(&name, &path);
            if in_process {
                config = config.in_process();
            }
            match plugin
                .activation
                .as_ref()
                .map(|a| (a.get_ref().as_str(), a.span()))
            {
                None | Some(("eager", _)) => {}
                Some(("lazy", _)) => config = config.lazy(),
                Some((other, span)) => {
                    return Err(invalid(
                        Some(span),
                        format!(
                        "plugin {name:?}: activation must be \"eager\" or \"lazy\", not {other:?}"
                    ),
                    ))
                }
            }
            for (k, v) in &env {
                config = config.env(k, v);
            }
            if let Some(sha) = plugin.sha256 {
                let ok = sha.get_ref().len() == 64
                    && sha.get_ref().chars().all(|c| c.is_ascii_hexdigit());
                if !ok {
                    return Err(invalid(
                        Some(sha.span()),
                        format!("plugin {name:?}: sha256 must be 64 hex digits"),
                    ));
                }
                config = config.sha256(sha.into_inner());
            }
            if let Some(sig) = plugin.signature {
                config = config.signature(sig);
            }
            config.user = match plugin.user.as_deref() {
                None | Some("default") => plughost::HostUser::Default,
                Some("service") => plughost::HostUser::Service,
                Some(user) => plughost::HostUser::Name(user.to_owned()),
            };
            config = config.seccomp(plugin.seccomp.unwrap_or(true));
            config = config.landlock(plugin.landlock.unwrap_or(true));
            for p in plugin.read_paths {
                config = config.allow_read(p);
            }
            for p in plugin.write_paths {
                config = config.allow_write(p);
            }
            config.limits = plughost::Limits {
                address_space: plugin.memory_mib.map(|m| m.saturating_mul(1024 * 1024)),
                open_files: plugin.open_files,
                processes: plugin.processes,
                cpu_seconds: plugin.cpu_seconds,
            };
            if plugin.start_timeout_secs.is_some() || plugin.teardown_timeout_secs.is_some() {
                let base = deadlines(
                    plughost::Deadlines::default(),
                    raw.start_timeout_secs,
                    raw.teardown_timeout_secs,
                );
                config = config.deadlines(deadlines(
                    base,
                    plugin.start_timeout_secs,
                    plugin.teardown_timeout_secs,
                ));
            }
            config.restart = match plugin
                .restart
                .as_ref()
                .map(|r| (r.get_ref().as_str(), r.span()))
            {
                None | Some(("never", _)) => plughost::RestartPolicy::Never,
                Some(("on-crash", _)) => plughost::RestartPolicy::OnCrash {
                    max_restarts: plugin.max_restarts.unwrap_or(3),
                    window: std::time::Duration::from_secs(plugin.window_secs.unwrap_or(60)),
                    backoff_initial: std::time::Duration::from_millis(
                        plugin.backoff_initial_ms.unwrap_or(500),
                    ),
                    backoff_max: std::time::Duration::from_millis(
                        plugin.backoff_max_ms.unwrap_or(30_000),
                    ),
                },
                Some((other, span)) => {
                    return Err(invalid(
                        Some(span),
                        format!(
                        "plugin {name:?}: restart must be \"never\" or \"on-crash\", not {other:?}"
                    ),
                    ))
                }
            };
            plugins.push(PluginEntry { name, config });
        }
        let mut trust = plughost::Trust {
            trusted_keys: Vec::new(),
            require_verified: raw.require_verified,
        };
        for key in raw.trusted_keys {
            let text = key.get_ref();
            let parsed = if text.starts_with('/') {
                std::fs::read_to_string(text)
                    .map_err(|e| format!("trusted key {text}: {e}"))
                    .and_then(|t| plughost::parse_public_key(&t))
            } else {
                plughost::parse_public_key(text)
            };
            match parsed {
                Ok(k) => trust.trusted_keys.push(k),
                Err(reason) => return Err(invalid(Some(key.span()), reason)),
            }
        }
        Ok(Config {
            idle_timeout_secs: raw.idle_timeout_secs,
            host_binary,
            plugins,
            trust,
            deadlines: deadlines(
                plughost::Deadlines::default(),
                raw.start_timeout_secs,
                raw.teardown_timeout_secs,
            ),
            cgroups,
            vm_id_base: raw.vm_id_base,
            vm_id_ranges: raw.vm_id_ranges,
            vm_scratch_mib: raw.vm_scratch_mib.max(1),
            limits: raw.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/p.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn plugins_keep_their_order_and_isolation() {
        let config = parse(
            "idle_timeout_secs = 5\n[[plugin]]\nname = \"a\"\npath = \"/a.so\"\n\
             [[plugin]]\nname = \"b\"\npath = \"/b.so\"\nisolation = \"in-process\"\nenv = { K = \"v\" }\n",
        )
        .expect("valid");
        assert_eq!(config.idle_timeout_secs, 5);
        let names: Vec<_> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        use plughost::Isolation;
        assert_eq!(config.plugins[0].config.isolation, Isolation::Process);
        assert_eq!(config.plugins[1].config.isolation, Isolation::InProcess);
        assert_eq!(
            config.plugins[0].config.activation,
            plughost::Activation::Eager
        );
        assert_eq!(
            config.plugins[1].config.env,
            [("K".to_owned(), "v".to_owned())]
        );
    }

    #[test]
    fn security_and_restart_settings_reach_the_plugin_config() {
        let config = parse(
            "require_verified = true\nstart_timeout_secs = 7\n[[plugin]]\nname = \"a\"\npath = \"/a.so\"\n\
             sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
             user = \"service\"\nseccomp = false\nwrite_paths = [\"/var/log/a\"]\nmemory_mib = 64\n\
             restart = \"on-crash\"\nmax_restarts = 2\n",
        )
        .expect("valid");
        assert!(config.trust.require_verified);
        let a = &config.plugins[0].config;
        assert_eq!(a.user, plughost::HostUser::Service);
        assert!(!a.seccomp);
        assert_eq!(a.filesystem.write, [PathBuf::from("/var/log/a")]);
        assert_eq!(a.limits.address_space, Some(64 * 1024 * 1024));
        assert!(matches!(
            a.restart,
            plughost::RestartPolicy::OnCrash {
                max_restarts: 2,
                ..
            }
        ));
        assert_eq!(
            config.deadlines.of(plughost::HookKind::VmStarted),
            std::time::Duration::from_secs(7)
        );
        let err = parse("[[plugin]]\nname = \"a\"\npath = \"/a.so\"\nrestart = \"always\"\n")
            .unwrap_err();
        assert!(
            err.starts_with("/etc/p.toml:4:11: plugin \"a\": restart must be"),
            "{err}"
        );
        let err = parse("trusted_keys = [\"not a key\"]\n").unwrap_err();
        assert!(
            err.starts_with("/etc/p.toml:1:17: public key is not base64"),
            "{err}"
        );
    }

    #[test]
    fn cgroup_parent_is_auto_off_or_an_absolute_path() {
        use plughost::CgroupPolicy;
        assert_eq!(parse("").expect("valid").cgroups, CgroupPolicy::Auto);
        assert_eq!(
            parse("cgroup_parent = \"off\"\n").expect("valid").cgroups,
            CgroupPolicy::Off
        );
        assert_eq!(
            parse("cgroup_parent = \"/sys/fs/cgroup/plughostd.slice/hosts\"\n")
                .expect("valid")
                .cgroups,
            CgroupPolicy::Parent("/sys/fs/cgroup/plughostd.slice/hosts".into())
        );
        let err = parse("cgroup_parent = \"hosts\"\n").unwrap_err();
        assert!(
            err.starts_with("/etc/p.toml:1:17: cgroup_parent must be"),
            "{err}"
        );
    }

    #[test]
    fn limits_have_defaults_and_refuse_unknown_keys() {
        assert_eq!(parse("").expect("valid").limits, UserLimits::default());
        let config = parse("[limits]\nprocesses = 2\nstate_bytes = 100\n").expect("valid");
        assert_eq!(config.limits.processes, 2);
        assert_eq!(config.limits.state_bytes, 100);
        assert_eq!(config.limits.connections, UserLimits::default().connections);
        let err = parse("[limits]\nvms = 2\n").unwrap_err();
        assert!(
            err.starts_with("/etc/p.toml:2:1: unknown field `vms`"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let err = parse("[[plugin]]\nname = \"a\"\npath = \"rel.so\"\n").unwrap_err();
        assert_eq!(err, "/etc/p.toml:3:8: plugin \"a\": path must be absolute");
        let err =
            parse("[[plugin]]\nname = \"a\"\npath = \"/a.so\"\nisolation = \"vm\"\n").unwrap_err();
        assert!(
            err.starts_with("/etc/p.toml:4:13: plugin \"a\": isolation must be"),
            "{err}"
        );
        let err = parse("[[plugin]]\nname = \"a\"\npath = \"/a.so\"\nactivation = \"later\"\n")
            .unwrap_err();
        assert!(
            err.starts_with(
                "/etc/p.toml:4:14: plugin \"a\": activation must be \"eager\" or \"lazy\""
            ),
            "{err}"
        );
        let lazy = parse("[[plugin]]\nname = \"a\"\npath = \"/a.so\"\nactivation = \"lazy\"\n")
            .expect("valid");
        assert_eq!(
            lazy.plugins[0].config.activation,
            plughost::Activation::Lazy
        );
        let err = parse("idle_timeout_secs = \"soon\"\n").unwrap_err();
        assert!(err.starts_with("/etc/p.toml:1:21: "), "{err}");
        let err = parse("colour = 1\n").unwrap_err();
        assert!(err.starts_with("/etc/p.toml:1:1: unknown field"), "{err}");
    }

    /// Every key the parser accepts is documented for users (crates/service/README.md): serde's
    /// "unknown field" error lists them all, so a new key fails here until it is.
    #[test]
    fn every_key_is_documented_in_the_readme() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Configuration").expect("section")..];
        for text in ["colour = 1\n", "[[plugin]]\ncolour = 1\n"] {
            let err = parse(text).unwrap_err();
            let expected = &err[err.find("expected one of").expect(&err)..];
            let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            assert!(keys.len() > 5, "{err}");
            for key in keys {
                assert!(
                    section.contains(&format!("`{key}`")) || key == "plugin",
                    "config key `{key}` is not documented in crates/service/README.md"
                );
            }
        }
    }
}
