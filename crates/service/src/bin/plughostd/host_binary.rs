//! Which `plughost-host` binary the plugins run in. Searched once at start, in this order:
//! the config's `host_binary`, `$PLUGHOST_HOST`, beside plughostd's own executable,
//! `../libexec/plughost/` relative to it (where `make install` puts the host), and the compiled-in
//! `<PREFIX>/libexec/plughost/plughost-host` (`PLUGHOST_PREFIX` at build time, else `/usr/local`).
//! An explicit choice (the first two) is used as given, never replaced by a later candidate: a
//! typo must not silently pick another binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The prefix `make install` built for; the last place the host is looked for.
pub const PREFIX: &str = match option_env!("PLUGHOST_PREFIX") {
    Some(prefix) => prefix,
    None => "/usr/local",
};

/// Where the host binary was found, and why there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBinary {
    pub path: PathBuf,
    /// `host_binary in CONFIG`, `$PLUGHOST_HOST`, `beside plughostd`...
    pub source: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostBinaryError {
    #[error("the plugin host binary {} ({origin}) is not an executable file: {reason}", .path.display())]
    Explicit {
        path: PathBuf,
        origin: String,
        reason: String,
    },
    #[error(
        "no plugin host binary (plughost-host) found; looked in {}. Install it (make install), or name it with host_binary in the config or $PLUGHOST_HOST",
        .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { tried: Vec<PathBuf> },
}

/// Why `path` is not something plughostd can start, if it is not.
fn unusable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_file() => Some("not a regular file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("not executable".into()),
        Ok(_) => None,
    }
}

/// The search described in the module docs. `exe` is plughostd's own executable.
pub fn find(
    configured: Option<(&Path, &Path)>,
    env: Option<OsString>,
    exe: &Path,
    prefix: &str,
) -> Result<HostBinary, HostBinaryError> {
    let explicit = configured
        .map(|(path, config)| {
            (
                path.to_owned(),
                format!("host_binary in {}", config.display()),
            )
        })
        .or_else(|| {
            env.filter(|v| !v.is_empty())
                .map(|v| (PathBuf::from(v), "$PLUGHOST_HOST".to_owned()))
        });
    if let Some((path, source)) = explicit {
        return match unusable(&path) {
            None => Ok(HostBinary { path, source }),
            Some(reason) => Err(HostBinaryError::Explicit {
                path,
                origin: source,
                reason,
            }),
        };
    }
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = vec![(dir.join("plughost-host"), "beside plughostd")];
    if let Some(up) = dir.parent() {
        candidates.push((
            up.join("libexec/plughost/plughost-host"),
            "in ../libexec/plughost of plughostd",
        ));
    }
    candidates.push((
        Path::new(prefix).join("libexec/plughost/plughost-host"),
        "in the install prefix",
    ));
    let mut tried = Vec::new();
    for (path, source) in candidates {
        if unusable(&path).is_none() {
            return Ok(HostBinary {
                path,
                source: source.to_owned(),
            });
        }
        tried.push(path);
    }
    Err(HostBinaryError::NotFound { tried })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn an_installed_tree_finds_the_host_in_libexec() {
        let root = tempfile::tempdir().expect("tempdir");
        let exe = root.path().join("usr/bin/plughostd");
        let host = root.path().join("usr/libexec/plughost/plughost-host");
        executable(&host);
        let found = find(None, None, &exe, "/nonexistent").expect("found");
        assert_eq!(found.path, host);
        assert_eq!(found.source, "in ../libexec/plughost of plughostd");
        // One beside plughostd (a cargo build's target dir) comes first.
        let beside = root.path().join("usr/bin/plughost-host");
        executable(&beside);
        assert_eq!(
            find(None, None, &exe, "/nonexistent").expect("found").path,
            beside
        );
    }

    #[test]
    fn the_prefix_is_the_last_resort_and_absence_names_every_place() {
        let root = tempfile::tempdir().expect("tempdir");
        let exe = root.path().join("opt/bin/plughostd");
        let prefix = root.path().join("usr/local");
        let err = find(None, None, &exe, prefix.to_str().expect("utf-8")).unwrap_err();
        let HostBinaryError::NotFound { tried } = &err else {
            panic!("{err}");
        };
        assert_eq!(tried.len(), 3, "{err}");
        assert!(err.to_string().contains("host_binary"), "{err}");
        let host = prefix.join("libexec/plughost/plughost-host");
        executable(&host);
        let found = find(None, None, &exe, prefix.to_str().expect("utf-8")).expect("found");
        assert_eq!(found.path, host);
    }

    #[test]
    fn an_explicit_choice_wins_and_is_never_replaced() {
        let root = tempfile::tempdir().expect("tempdir");
        let exe = root.path().join("bin/plughostd");
        executable(&root.path().join("bin/plughost-host"));
        let configured = root.path().join("configured");
        let from_env = root.path().join("from-env");
        executable(&configured);
        executable(&from_env);
        let config = Path::new("/etc/plughost/plughostd.toml");
        let found = find(
            Some((&configured, config)),
            Some(from_env.clone().into()),
            &exe,
            "/usr",
        )
        .expect("found");
        assert_eq!(found.path, configured);
        assert_eq!(found.source, "host_binary in /etc/plughost/plughostd.toml");
        let found = find(None, Some(from_env.clone().into()), &exe, "/usr").expect("found");
        assert_eq!(found.path, from_env);
        // A missing explicit binary is an error naming it, not a fall back to the one beside.
        let missing = root.path().join("missing");
        let err = find(None, Some(missing.clone().into()), &exe, "/usr").unwrap_err();
        assert!(
            matches!(&err, HostBinaryError::Explicit { path, .. } if *path == missing),
            "{err}"
        );
        let not_exec = root.path().join("plain");
        std::fs::write(&not_exec, "").expect("write");
        let err = find(Some((&not_exec, config)), None, &exe, "/usr").unwrap_err();
        assert!(err.to_string().ends_with("not executable"), "{err}");
    }
}
