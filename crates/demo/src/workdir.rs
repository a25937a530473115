//! Everything the demo puts on disk, all under one temporary directory that is removed at the end:
//! the C plugins (compiled from `plugins/c` against the header alone, as a plugin author would), the
//! folder the plugins share with the "VM" (`PH_DIR`, holding `file` = `OK`), and one log file per
//! plugin (and step, in the library demo; `PH_LOG`: the format is in `plugins/c/README.md`); the
//! daemon demo adds plughostd's config, state directory, socket and log, and a distribution rootfs.
//!
//! Nothing is written under `target/`, so the demo also runs as a user who cannot write there. The
//! hosts may run as another user than the demo (as root, the library switches them to an
//! unprivileged one by default), so the directories are readable by all and the log files writable
//! by all.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use plughost::PluginConfig;

pub struct Workdir {
    dir: tempfile::TempDir,
    /// The plugins' `PH_DIR`.
    pub share: PathBuf,
}

impl Workdir {
    pub fn new() -> Result<Workdir> {
        let dir = tempfile::Builder::new()
            .prefix("plughost-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        set_mode(dir.path(), 0o755)?;
        let share = dir.path().join("share");
        std::fs::create_dir(&share)
            .with_context(|| format!("cannot create {}", share.display()))?;
        set_mode(&share, 0o755)?;
        let file = share.join("file");
        std::fs::write(&file, "OK").with_context(|| format!("cannot write {}", file.display()))?;
        set_mode(&file, 0o644)?;
        Ok(Workdir { dir, share })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Compiles `plugins/c/<source>.c` into `<workdir>/<source>.so` with the command line of
    /// `plugins/c/README.md`.
    pub fn compile_c_plugin(&self, source: &str) -> Result<PathBuf> {
        let root = plughost_tests::workspace();
        let header = root.join("include/plughost/plugin_api.h");
        ensure!(
            header.exists(),
            "{} is missing: run the demo from its source checkout",
            header.display()
        );
        let input = root.join(format!("plugins/c/{source}.c"));
        let output = self.path().join(format!("{source}.so"));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let result = Command::new(&cc)
            .args([
                "-shared",
                "-fPIC",
                "-std=gnu11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pthread",
            ])
            .arg("-I")
            .arg(root.join("include"))
            .arg("-I")
            .arg(root.join("plugins/c"))
            .arg("-o")
            .arg(&output)
            .arg(&input)
            .output()
            .with_context(|| {
                format!(
                    "cannot run the C compiler `{cc}` (on Debian: apt-get install -y gcc libc6-dev)"
                )
            })?;
        if !result.status.success() {
            bail!(
                "`{cc}` failed to compile {} ({}):\n{}",
                input.display(),
                result.status,
                String::from_utf8_lossy(&result.stderr).trim_end()
            );
        }
        set_mode(&output, 0o755)?;
        Ok(output)
    }

    /// The logs of one step (each step starts with empty ones).
    pub fn step_logs(&self, step: u32) -> Result<StepLogs> {
        let dir = self.path().join(format!("step{step}"));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        set_mode(&dir, 0o755)?;
        Ok(StepLogs {
            dir,
            share: self.share.clone(),
        })
    }
}

/// The plugin logs of one step: `<workdir>/step<n>/<plugin name>.log`.
pub struct StepLogs {
    dir: PathBuf,
    share: PathBuf,
}

impl StepLogs {
    /// A plugin named `name` loading `library`, with its own `PH_LOG` (created empty and writable by
    /// all: the host may run as another user; and allowed by the host's Landlock rules) and the
    /// shared `PH_DIR`.
    pub fn plugin(&self, name: &str, library: &Path) -> Result<PluginConfig> {
        let log = self.log_path(name);
        std::fs::write(&log, "").with_context(|| format!("cannot create {}", log.display()))?;
        set_mode(&log, 0o666)?;
        Ok(PluginConfig::new(name, library)
            .env("PH_DIR", self.share.to_string_lossy())
            .env("PH_LOG", log.to_string_lossy())
            // The host's filesystem sandbox (Landlock) lets a plugin write nowhere else.
            .allow_write(&self.dir))
    }

    pub fn log(&self, name: &str) -> PluginLog {
        PluginLog::new(self.log_path(name))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}

/// One plugin's log, read incrementally: [`PluginLog::new_lines`] returns what was not shown yet.
pub struct PluginLog {
    path: PathBuf,
    shown: usize,
}

impl PluginLog {
    /// The log at `path`, nothing shown yet.
    pub fn new(path: PathBuf) -> PluginLog {
        PluginLog { path, shown: 0 }
    }

    /// Every line so far (an absent file is an empty log: the plugin logged nothing yet).
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines written since the last call.
    pub fn new_lines(&mut self) -> Vec<String> {
        let lines = self.lines();
        let new = lines.get(self.shown..).unwrap_or_default().to_vec();
        self.shown = lines.len();
        new
    }

    /// Whether some line starts with `prefix`.
    pub fn has(&self, prefix: &str) -> bool {
        self.lines().iter().any(|line| line.starts_with(prefix))
    }

    /// How many lines start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|line| line.starts_with(prefix))
            .count()
    }

    /// Waits up to `limit` for a line starting with `prefix`; returns it.
    pub fn wait_for(&self, prefix: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.starts_with(prefix)) {
                return Ok(line);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no line starting with {prefix:?} in {} after {limit:?}; it holds {:?}",
                    self.path.display(),
                    self.lines()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {mode:o} {}", path.display()))
}
