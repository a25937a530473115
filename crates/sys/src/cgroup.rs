//! cgroup v2 filesystem mechanics: find the cgroup2 mount and our own cgroup, create a cgroup, set
//! its limits, move a process into it, read its event counters, kill everything in it, remove it.
//!
//! Every operation is a read or write of one file beneath the cgroup's directory, so everything but
//! [`Cgroup::join`], [`Cgroup::kill`] and removal can be tested against a temporary directory laid
//! out like a cgroup. This module holds no policy (which limits, which parent, when): that is the
//! supervisor's `cgroups` module. It never touches cgroup v1 hierarchies: the mount is found by its
//! filesystem type, `cgroup2`.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// A cgroup operation that failed, with the file or directory it was about.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (per /proc/self/mountinfo)")]
    NoCgroup2Mount,
    #[error("/proc/self/cgroup has no cgroup v2 (\"0::\") line")]
    NoUnifiedHierarchy,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes {waited:?} after cgroup.kill")]
    StillPopulated { path: PathBuf, waited: Duration },
}

/// The mount point of the cgroup2 filesystem in a `/proc/self/mountinfo` text (the first one).
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional...] - fstype source super`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(unescape_octal)
    })
}

/// `mountinfo` writes space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Our cgroup v2 path (relative to the cgroup2 mount, starting with `/`) in a `/proc/self/cgroup`
/// text: its `0::` line.
pub fn own_cgroup_in(proc_self_cgroup: &str) -> Option<PathBuf> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| PathBuf::from(path.trim_end()))
}

fn read_to_string(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The cgroup2 mount point of this machine.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    cgroup2_mount_in(&read_to_string(Path::new("/proc/self/mountinfo"))?)
        .ok_or(CgroupError::NoCgroup2Mount)
}

/// The directory of this process's own cgroup v2 (the mount joined with its `0::` path).
pub fn own_cgroup() -> Result<Cgroup, CgroupError> {
    let mount = cgroup2_mount()?;
    let own = own_cgroup_in(&read_to_string(Path::new("/proc/self/cgroup"))?)
        .ok_or(CgroupError::NoUnifiedHierarchy)?;
    let relative = own.strip_prefix("/").unwrap_or(&own);
    Ok(Cgroup::at(mount.join(relative)))
}

/// Counters of `memory.events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times the cgroup hit `memory.max` (reclaim failed and the limit held).
    pub max: u64,
    /// Times the OOM killer was invoked for the cgroup.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

/// Counters of `pids.events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidsEvents {
    /// Forks refused because the cgroup was at `pids.max`.
    pub max: u64,
}

/// `key value` lines (the format of every `*.events` and `*.stat` file).
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// The controllers a cgroup offers its children, or has enabled for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Controllers {
    pub memory: bool,
    pub pids: bool,
}

impl Controllers {
    fn parse(text: &str) -> Controllers {
        let has = |name| text.split_whitespace().any(|c| c == name);
        Controllers {
            memory: has("memory"),
            pids: has("pids"),
        }
    }

    pub fn any(self) -> bool {
        self.memory || self.pids
    }
}

impl std::fmt::Display for Controllers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.memory, self.pids) {
            (true, true) => f.write_str("memory pids"),
            (true, false) => f.write_str("memory"),
            (false, true) => f.write_str("pids"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// One cgroup directory. A plain handle: dropping it changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// The cgroup at `dir` (not checked).
    pub fn at(dir: impl Into<PathBuf>) -> Cgroup {
        Cgroup { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the child cgroup `name`.
    pub fn create_child(&self, name: &str) -> Result<Cgroup, CgroupError> {
        let dir = self.file(name);
        std::fs::create_dir(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        Ok(Cgroup { dir })
    }

    /// Creates this cgroup unless it exists.
    pub fn ensure_exists(&self) -> Result<(), CgroupError> {
        match std::fs::create_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(CgroupError::Create {
                path: self.dir.clone(),
                source,
            }),
        }
    }

    pub fn exists(&self) -> bool {
        self.file("cgroup.procs").exists()
    }

    /// The child cgroups (directories), by name.
    pub fn children(&self) -> Result<Vec<String>, CgroupError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| CgroupError::Read {
            path: self.dir.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// Writes one value to a control file (which must exist: control files are never created).
    fn write(&self, name: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.file(name);
        // O_TRUNC is what a shell's `>` does; cgroupfs ignores it, and a test directory then holds
        // exactly the value written.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        written.map_err(|source| CgroupError::Write {
            path,
            value: value.to_owned(),
            source,
        })
    }

    fn read(&self, name: &str) -> Result<String, CgroupError> {
        read_to_string(&self.file(name))
    }

    /// `cgroup.controllers`: what the parent lets this cgroup use.
    pub fn controllers(&self) -> Result<Controllers, CgroupError> {
        Ok(Controllers::parse(&self.read("cgroup.controllers")?))
    }

    /// `cgroup.subtree_control`: what this cgroup's children get.
    pub fn subtree_control(&self) -> Result<Controllers, CgroupError> {
        Ok(Controllers::parse(&self.read("cgroup.subtree_control")?))
    }

    /// Enables `wanted` for the children (`+memory +pids` in `cgroup.subtree_control`).
    pub fn enable_for_children(&self, wanted: Controllers) -> Result<(), CgroupError> {
        let mut value = Vec::new();
        if wanted.memory {
            value.push("+memory");
        }
        if wanted.pids {
            value.push("+pids");
        }
        if value.is_empty() {
            return Ok(());
        }
        self.write("cgroup.subtree_control", &value.join(" "))
    }

    /// `memory.max`, bytes.
    pub fn set_memory_max(&self, bytes: u64) -> Result<(), CgroupError> {
        self.write("memory.max", &bytes.to_string())
    }

    /// `memory.swap.max`; `Ok(false)` where the kernel keeps no swap accounting (no such file).
    pub fn set_swap_max(&self, bytes: u64) -> Result<bool, CgroupError> {
        if !self.file("memory.swap.max").exists() {
            return Ok(false);
        }
        self.write("memory.swap.max", &bytes.to_string())?;
        Ok(true)
    }

    /// `memory.oom.group = 1`: an OOM kill takes every process of the cgroup, not one.
    pub fn set_oom_group(&self) -> Result<(), CgroupError> {
        self.write("memory.oom.group", "1")
    }

    /// `pids.max`: most processes and threads in the cgroup.
    pub fn set_pids_max(&self, count: u64) -> Result<(), CgroupError> {
        self.write("pids.max", &count.to_string())
    }

    pub fn memory_events(&self) -> Result<MemoryEvents, CgroupError> {
        let text = self.read("memory.events")?;
        Ok(MemoryEvents {
            max: counter(&text, "max"),
            oom: counter(&text, "oom"),
            oom_kill: counter(&text, "oom_kill"),
        })
    }

    pub fn pids_events(&self) -> Result<PidsEvents, CgroupError> {
        let text = self.read("pids.events")?;
        Ok(PidsEvents {
            max: counter(&text, "max"),
        })
    }

    /// The processes in the cgroup (`cgroup.procs`).
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Moves process `pid` (with all its threads) into the cgroup.
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// `cgroup.kill`: SIGKILL to every process in the cgroup and its descendants, however they
    /// forked, including processes forked while the kill runs.
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.write("cgroup.kill", "1")
    }

    /// `populated` of `cgroup.events`: a process is still in the cgroup or a descendant.
    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        Ok(counter(&self.read("cgroup.events")?, "populated") != 0)
    }

    /// Opens `cgroup.events` to watch it: the kernel reports `POLLPRI` on it when a value changes.
    pub fn events_watch(&self) -> Result<EventsWatch, CgroupError> {
        let path = self.file("cgroup.events");
        let file = std::fs::File::open(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(EventsWatch { file, path })
    }

    /// Removes the (empty) cgroup directory. `Ok(false)` if it was already gone.
    pub fn remove(&self) -> Result<bool, CgroupError> {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CgroupError::Remove {
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// Whether a [`remove`](Self::remove) error means "processes are still dying" (retry later).
    pub fn is_busy(error: &CgroupError) -> bool {
        let busy = Some(Errno::BUSY.raw_os_error());
        matches!(error, CgroupError::Remove { source, .. } if source.raw_os_error() == busy)
    }

    /// Kills everything in the cgroup, waits (at most `patience`) for the processes to be gone, and
    /// removes it. Blocks: for start-up failures, stale cgroups and shutdown, not for the monitor.
    pub fn kill_and_remove(&self, patience: Duration) -> Result<(), CgroupError> {
        if !self.exists() {
            return self.remove().map(drop);
        }
        self.kill()?;
        let watch = self.events_watch()?;
        let deadline = Instant::now() + patience;
        loop {
            match self.remove() {
                Ok(_) => return Ok(()),
                Err(e) if Cgroup::is_busy(&e) => {}
                Err(e) => return Err(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CgroupError::StillPopulated {
                    path: self.dir.clone(),
                    waited: patience,
                });
            }
            if watch.is_populated()? {
                watch.wait_change(left);
            }
        }
    }
}

/// An open `cgroup.events`: poll it (or put it in an epoll set with `EPOLLPRI`) to learn when the
/// cgroup empties.
pub struct EventsWatch {
    file: std::fs::File,
    path: PathBuf,
}

impl EventsWatch {
    /// Reads the file again from the start (which also re-arms the change notification).
    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        let mut text = String::new();
        let mut file = &self.file;
        file.rewind()
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(|source| CgroupError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(counter(&text, "populated") != 0)
    }

    /// Waits until the file changes or `timeout` passes.
    pub fn wait_change(&self, timeout: Duration) {
        let ts = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&self.file, PollFlags::PRI)];
        let _ = poll(&mut fds, Some(&ts));
    }

    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

impl AsFd for EventsWatch {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A directory laid out like a cgroup (control files with the given contents), for tests of code
/// that reads and writes cgroup files on machines without the controllers.
#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    use super::*;

    /// Creates `dir` with `cgroup.procs`, `cgroup.events`, `cgroup.controllers`,
    /// `cgroup.subtree_control`, `cgroup.kill`, and for each enabled controller its files.
    pub fn fake_cgroup(dir: &Path, controllers: Controllers) -> Cgroup {
        let _ = std::fs::create_dir_all(dir);
        let mut files = vec![
            ("cgroup.procs", String::new()),
            ("cgroup.events", "populated 0\nfrozen 0\n".to_owned()),
            ("cgroup.controllers", controllers_text(controllers)),
            ("cgroup.subtree_control", String::new()),
            ("cgroup.kill", String::new()),
        ];
        if controllers.memory {
            files.push(("memory.max", "max\n".into()));
            files.push(("memory.swap.max", "max\n".into()));
            files.push(("memory.oom.group", "0\n".into()));
            files.push((
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n".into(),
            ));
        }
        if controllers.pids {
            files.push(("pids.max", "max\n".into()));
            files.push(("pids.events", "max 0\n".into()));
        }
        for (name, content) in files {
            let _ = std::fs::write(dir.join(name), content);
        }
        Cgroup::at(dir)
    }

    fn controllers_text(c: Controllers) -> String {
        match (c.memory, c.pids) {
            (true, true) => "cpu memory pids\n",
            (true, false) => "memory\n",
            (false, true) => "pids\n",
            (false, false) => "\n",
        }
        .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::fake_cgroup;
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn cgroup2_mount_is_found_by_type_not_by_path() {
        assert_eq!(
            cgroup2_mount_in(MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = MOUNTINFO.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(cgroup2_mount_in(&v1_only), None);
        let spaced = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(spaced),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }

    #[test]
    fn own_cgroup_is_the_unified_line() {
        let text = "4:memory:/process_api/x\n1:cpu:/\n0::/system.slice/plughostd.service\n";
        assert_eq!(
            own_cgroup_in(text),
            Some(PathBuf::from("/system.slice/plughostd.service"))
        );
        assert_eq!(own_cgroup_in("4:memory:/x\n"), None);
    }

    #[test]
    fn limits_are_written_to_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(
            &tmp.path().join("host"),
            Controllers {
                memory: true,
                pids: true,
            },
        );
        cg.set_memory_max(256 << 20).unwrap();
        assert!(cg.set_swap_max(0).unwrap());
        cg.set_pids_max(32).unwrap();
        let read = |name| std::fs::read_to_string(cg.path().join(name)).unwrap();
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "32");
        cg.enable_for_children(Controllers {
            memory: true,
            pids: true,
        })
        .unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
    }

    #[test]
    fn a_missing_controller_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(&tmp.path().join("host"), Controllers::default());
        let err = cg.set_pids_max(32).unwrap_err().to_string();
        let expected = format!(
            "cannot write \"32\" to {}: ",
            cg.path().join("pids.max").display()
        );
        assert!(err.starts_with(&expected), "{err}");
        // No swap accounting: not an error, just not set.
        assert!(!cg.set_swap_max(0).unwrap());
        // A file that is not there is never created.
        assert!(!cg.path().join("pids.max").exists());
    }

    #[test]
    fn event_counters_are_parsed() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(
            &tmp.path().join("host"),
            Controllers {
                memory: true,
                pids: true,
            },
        );
        assert_eq!(cg.memory_events().unwrap(), MemoryEvents::default());
        std::fs::write(
            cg.path().join("memory.events"),
            "low 0\nhigh 0\nmax 17\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(
            cg.memory_events().unwrap(),
            MemoryEvents {
                max: 17,
                oom: 1,
                oom_kill: 1
            }
        );
        std::fs::write(cg.path().join("pids.events"), "max 3\n").unwrap();
        assert_eq!(cg.pids_events().unwrap(), PidsEvents { max: 3 });
        assert!(!cg.is_populated().unwrap());
        std::fs::write(cg.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(cg.is_populated().unwrap());
        assert!(cg.events_watch().unwrap().is_populated().unwrap());
    }

    #[test]
    fn controllers_are_parsed() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = fake_cgroup(
            &tmp.path().join("p"),
            Controllers {
                memory: true,
                pids: false,
            },
        );
        let got = cg.controllers().unwrap();
        assert!(got.memory && !got.pids);
        assert_eq!(got.to_string(), "memory");
        assert!(!cg.subtree_control().unwrap().any());
    }

    /// A real cgroup beneath our own: needs root and a cgroup2 mount (CI has both).
    #[test]
    fn kill_and_remove_kills_every_member_and_removes_the_cgroup() {
        if !rustix::process::geteuid().is_root() {
            println!("skipped: needs root to create a cgroup");
            return;
        }
        let own = match own_cgroup() {
            Ok(own) => own,
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
        };
        let cg = own
            .create_child(&format!("plughost-sys-test-{}", std::process::id()))
            .unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        cg.join(child.id()).unwrap();
        assert_eq!(cg.procs().unwrap(), [child.id()]);
        assert!(cg.is_populated().unwrap());
        cg.kill_and_remove(Duration::from_secs(10)).unwrap();
        assert!(!cg.path().exists());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn children_and_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = Cgroup::at(tmp.path());
        let child = parent.create_child("host-1-1-1").unwrap();
        assert_eq!(parent.children().unwrap(), ["host-1-1-1"]);
        assert!(parent.create_child("host-1-1-1").is_err());
        assert!(child.remove().unwrap());
        assert!(!child.remove().unwrap());
    }
}
