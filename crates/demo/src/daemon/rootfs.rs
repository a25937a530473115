//! The distribution the daemon demo registers: a tiny root filesystem made from what this machine
//! has, with no download. With BusyBox (`apt-get install -y busybox-static`) it is `/bin/busybox`
//! and a few applet links; without it, a few of this machine's programs with the shared libraries
//! `ldd` lists for them. Either way `/etc/os-release` says `ID=phdemo`, `VERSION_ID="1.0"`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workdir::set_mode;

/// The programs the demo (and the `ok_mount_exec` plugin, which runs `/bin/cat`) use in the
/// distribution.
const PROGRAMS: [&str; 6] = ["sh", "cat", "ls", "echo", "sleep", "uname"];

pub const OS_RELEASE: &str = "NAME=\"plughost demo\"\n\
                              ID=phdemo\n\
                              VERSION_ID=\"1.0\"\n\
                              PRETTY_NAME=\"plughost demo 1.0\"\n";

pub struct Rootfs {
    pub path: PathBuf,
    /// What it was made from, in words.
    pub made_from: String,
}

/// Makes `<parent>/rootfs`.
pub fn make(parent: &Path) -> Result<Rootfs> {
    let root = parent.join("rootfs");
    for dir in ["bin", "etc", "proc", "dev", "mnt", "tmp", "root"] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|path| path.exists());
    let made_from = match busybox {
        Some(busybox) => {
            let libraries = copy_program(&root, busybox, "busybox")?;
            for program in PROGRAMS {
                let link = root.join("bin").join(program);
                std::os::unix::fs::symlink("busybox", &link)
                    .with_context(|| format!("cannot create the link {}", link.display()))?;
            }
            format!(
                "{} ({}) with links {}",
                busybox.display(),
                if libraries == 0 {
                    "static".to_owned()
                } else {
                    format!("and {libraries} shared libraries")
                },
                PROGRAMS.join(", ")
            )
        }
        None => {
            let mut libraries = 0;
            for program in PROGRAMS {
                let host = find_program(program)?;
                libraries += copy_program(&root, &host, program)?;
            }
            format!(
                "this machine's {} and the {libraries} shared libraries they need (no BusyBox here)",
                PROGRAMS.join(", ")
            )
        }
    };
    let os_release = root.join("etc/os-release");
    std::fs::write(&os_release, OS_RELEASE)
        .with_context(|| format!("cannot write {}", os_release.display()))?;
    make_readable(&root)?;
    Ok(Rootfs {
        path: root,
        made_from,
    })
}

/// `/bin/<name>` or `/usr/bin/<name>`.
fn find_program(name: &str) -> Result<PathBuf> {
    for dir in ["/bin", "/usr/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("cannot find {name} in /bin or /usr/bin for the demo's distribution")
}

/// Copies `program` to `<root>/bin/<name>` with the libraries `ldd` lists (none for a static
/// program); returns how many libraries it copied that were not there yet.
fn copy_program(root: &Path, program: &Path, name: &str) -> Result<usize> {
    let real = std::fs::canonicalize(program)
        .with_context(|| format!("cannot resolve {}", program.display()))?;
    let target = root.join("bin").join(name);
    std::fs::copy(&real, &target)
        .with_context(|| format!("cannot copy {} to {}", real.display(), target.display()))?;
    // ldd fails ("not a dynamic executable") for a static program: no libraries then.
    let ldd = Command::new("ldd")
        .arg(&real)
        .output()
        .context("cannot run ldd (on Debian: libc-bin)")?;
    let mut copied = 0;
    for library in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        let target = root.join(library.trim_start_matches('/'));
        if target.exists() {
            continue;
        }
        let dir = target
            .parent()
            .context("a library path without a directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let source =
            std::fs::canonicalize(library).with_context(|| format!("cannot resolve {library}"))?;
        std::fs::copy(&source, &target)
            .with_context(|| format!("cannot copy {} to {}", source.display(), target.display()))?;
        copied += 1;
    }
    Ok(copied)
}

/// Directories 0755, files as copied (programs stay executable), all readable.
fn make_readable(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_readable(&entry.path())?;
        } else if kind.is_file() {
            set_mode(&entry.path(), 0o755)?;
        }
    }
    Ok(())
}
