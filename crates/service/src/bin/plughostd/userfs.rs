//! Files and directories a user names, opened with that user's rights, never root's.
//!
//! plughostd runs as root; a path in a request (`distro register --rootfs`) or a file beneath it
//! (a rootfs's `etc/os-release`) is the user's. Each operation here runs on a short-lived thread
//! that first takes the user's *filesystem* identity (supplementary groups, then fsgid and fsuid)
//! and drops every capability, with *per-thread* syscalls (glibc's `setuid` family would change
//! every thread of the daemon), does the open or read, and ends. The thread touches no shared
//! state: it gets its inputs by value and hands back the result over a channel.
//!
//! Its real, effective and saved uids stay root's on purpose: the kernel lets a user signal any
//! *thread* whose real or saved uid is theirs (`tgkill`), and a stop or kill signal sent to one
//! thread stops or kills the whole daemon. With the user's uid on this thread, any user could
//! freeze or kill plughostd (and with it every user's VMs) by signalling the thread while their
//! registration runs (`hostile_users.rs`
//! `a_user_cannot_signal_the_daemon_through_a_thread_acting_for_them`). The fsuid and fsgid are
//! all that file-permission checks use, and no capability is left to override them.
//!
//! The daemon waits for it at most [`DEADLINE`]: a path on a FUSE mount the user serves could
//! block forever. A thread stuck past it is left behind (it holds no lock and will end when the
//! kernel lets it) and the caller gets `ETIMEDOUT`. So that a user whose file system never answers
//! cannot pile up such threads without end, each uid has at most [`MAX_PENDING`] operations in
//! flight (stuck ones included); past that the operation is refused at once with `EAGAIN`.
//!
//! Files are opened with `openat2(RESOLVE_IN_ROOT)` beneath a directory fd that was itself opened
//! as the user, `O_NOFOLLOW`, first `O_PATH` (so a FIFO or a device is never opened at all), and
//! then re-opened for reading through `/proc/thread-self/fd` only when it is a regular file; the
//! read is bounded. A user therefore learns nothing about paths they cannot reach themselves: the
//! error is the one the kernel gives *them* (`EACCES` alike for an existing and a missing name
//! under a directory they cannot search).
//!
//! uid 0 acts as root (same code, no identity change). A daemon that does not run as root acts
//! with its own (unprivileged) identity for everyone: it could not take theirs.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::process::Gid;

/// How long the daemon waits for one operation on a user's file.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Most supplementary groups taken from `/etc/group` (the kernel's `NGROUPS_MAX` is 65536).
const MAX_GROUPS: usize = 256;

/// Most operations one uid may have in flight, threads stuck past [`DEADLINE`] included.
pub const MAX_PENDING: usize = 8;

/// The operations in flight per uid. Lock order: a leaf; held only to count, never across I/O
/// or a wait.
static PENDING: Mutex<BTreeMap<u32, usize>> = Mutex::new(BTreeMap::new());

/// One operation of `uid` in flight, counted in [`PENDING`] until dropped (by the operation's
/// thread when it ends, however late).
struct Pending(u32);

impl Pending {
    fn take(uid: u32) -> std::io::Result<Pending> {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let count = pending.entry(uid).or_insert(0);
        if *count >= MAX_PENDING {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{count} file operations of uid {uid} are still waiting for their file \
                     system; try again later"
                ),
            ));
        }
        *count += 1;
        Ok(Pending(uid))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = pending.get_mut(&self.0) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pending.remove(&self.0);
            }
        }
    }
}

/// A user's filesystem identity.
#[derive(Clone, Debug)]
pub struct UserCred {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl UserCred {
    /// `uid` with primary group `gid` and its supplementary groups from `/etc/group` (those that
    /// list the user's name from `/etc/passwd`; none for a uid without an entry).
    pub fn of(uid: u32, gid: u32) -> UserCred {
        let mut groups = vec![gid];
        if let Some(name) = user_name(uid) {
            groups.extend(supplementary_groups(&name));
        }
        groups.sort_unstable();
        groups.dedup();
        groups.truncate(MAX_GROUPS);
        UserCred { uid, gid, groups }
    }

    fn is_root(&self) -> bool {
        self.uid == 0
    }
}

fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[2].parse() == Ok(uid)).then(|| fields[0].to_owned())
    })
}

fn supplementary_groups(user: &str) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string("/etc/group") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || !fields[3].split(',').any(|m| m.trim() == user) {
                return None;
            }
            fields[2].parse().ok()
        })
        .collect()
}

/// Takes `user`'s filesystem identity on the calling thread (and only it), and drops every
/// capability of the thread, so file-permission checks see exactly the user. Irreversible (the
/// capabilities to change back are gone): call it only on a thread that ends after the operation.
/// The real, effective and saved ids stay root's (see the module docs: a thread with the user's
/// uid could be signalled by them, and a signal stops or kills the whole daemon).
#[allow(unsafe_code)]
fn become_user(user: &UserCred) -> std::io::Result<()> {
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    rustix::thread::set_thread_groups(&groups)?;
    // SAFETY: setfsgid/setfsuid take a plain integer and change only the ids this thread's file
    // accesses are checked with (raw syscalls: per thread, never broadcast to the others). An
    // argument of -1 is never a valid id, so it changes nothing and returns the current one.
    let (fsgid, fsuid) = unsafe {
        libc::syscall(libc::SYS_setfsgid, user.gid);
        libc::syscall(libc::SYS_setfsuid, user.uid);
        (
            libc::syscall(libc::SYS_setfsgid, u32::MAX),
            libc::syscall(libc::SYS_setfsuid, u32::MAX),
        )
    };
    if fsgid != i64::from(user.gid) || fsuid != i64::from(user.uid) {
        return Err(std::io::Error::other(format!(
            "cannot take the file identity of uid {} gid {}",
            user.uid, user.gid
        )));
    }
    // The fsuid change cleared the file capabilities; the rest (CAP_SYS_PTRACE reaches other
    // processes' /proc entries, for one) go too.
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )?;
    Ok(())
}

/// Runs `op` as `user` on a thread of its own and waits for it at most [`DEADLINE`].
fn as_user<T: Send + 'static>(
    user: &UserCred,
    op: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let pending = Pending::take(user.uid)?;
    let (tx, rx) = mpsc::sync_channel(1);
    let user = user.clone();
    std::thread::Builder::new()
        .name("plughostd-userfs".into())
        .spawn(move || {
            // A daemon that is not root cannot take another identity; it has no more rights than
            // its own user then, and acts as that.
            let result = if user.is_root() || !rustix::process::geteuid().is_root() {
                op()
            } else {
                become_user(&user).and_then(|()| op())
            };
            // Counted out before the answer, so that a caller that has its answer may count on
            // the allowance.
            drop(pending);
            let _ = tx.send(result);
        })?;
    match rx.recv_timeout(DEADLINE) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", DEADLINE.as_secs()),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(std::io::Error::other("the file operation's thread failed"))
        }
    }
}

/// Opens directory `path` (absolute) with `user`'s rights: `O_PATH|O_DIRECTORY|O_CLOEXEC`. The
/// user must also be allowed to search it (else nothing beneath it could be read as them).
pub fn open_dir_as(user: &UserCred, path: &Path) -> std::io::Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an absolute path",
        ));
    }
    let path = path.to_owned();
    as_user(user, move || {
        let fd = open_no_magic(&path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC)?;
        // Looking up "." in it needs search permission on it, checked with this thread's
        // filesystem ids (EACCESS: without it access() checks the real ids, root's).
        rustix::fs::accessat(
            &fd,
            ".",
            rustix::fs::Access::EXISTS,
            rustix::fs::AtFlags::EACCESS,
        )?;
        Ok(fd)
    })
}

/// Opens `path` (absolute; a directory or any other file) with `user`'s rights:
/// `O_PATH|O_CLOEXEC` (a folder or file to share).
pub fn open_path_as(user: &UserCred, path: &Path) -> std::io::Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let path = path.to_owned();
    as_user(user, move || {
        open_no_magic(&path, OFlags::PATH | OFlags::CLOEXEC)
    })
}

/// Opens `path` without following a magic link on the way (`/proc/<pid>/cwd`, `/root`, `/fd/N`,
/// through a symlink too): the kernel lets a process follow its own process's links, and a
/// privileged one any process's, whatever the directories on the real path allow. A user (or a
/// plugin) naming such a path would reach what another process holds open.
fn open_no_magic(path: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        flags,
        Mode::empty(),
        ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Why a file was refused: its type when it is not a regular file.
fn type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// Reads regular file `rel` beneath `root` (`RESOLVE_IN_ROOT`), as `user`, at most `cap` bytes
/// (an error if it is larger). A symbolic link as the last component, a FIFO, a device, a socket
/// or a directory is refused (`InvalidInput`, saying what it is) without being opened for reading.
pub fn read_file_in_root(
    user: &UserCred,
    root: &OwnedFd,
    rel: &str,
    cap: usize,
) -> std::io::Result<Vec<u8>> {
    let root = root.try_clone()?;
    let rel = rel.to_owned();
    as_user(user, move || read_beneath(&root, &rel, cap))
}

fn read_beneath(root: &OwnedFd, rel: &str, cap: usize) -> std::io::Result<Vec<u8>> {
    let refuse = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let path_fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    let stat = rustix::fs::fstat(&path_fd)?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::RegularFile {
        return Err(refuse(format!(
            "is {}, not a regular file",
            type_name(file_type)
        )));
    }
    let too_large = || refuse(format!("is larger than {cap} bytes"));
    if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > cap as u64 {
        return Err(too_large());
    }
    // The same inode, now for reading, with this thread's (the user's) rights checked again.
    let proc_path = PathBuf::from(format!(
        "/proc/thread-self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&path_fd.as_fd())
    ));
    let file = rustix::fs::open(
        &proc_path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut bytes = Vec::new();
    std::fs::File::from(file)
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn root_cred() -> UserCred {
        UserCred::of(0, 0)
    }

    fn open_root(dir: &Path) -> OwnedFd {
        open_dir_as(&root_cred(), dir).expect("open dir")
    }

    /// Operations that never end (a file system that does not answer) use up their uid's
    /// allowance and no one else's; the allowance comes back as they end.
    #[test]
    fn a_uids_stuck_operations_are_bounded() {
        // A uid of this test's own, so that other tests' operations do not count.
        let user = UserCred {
            uid: 0x7ffe_0001,
            gid: 0x7ffe_0001,
            groups: Vec::new(),
        };
        let (release, gate) = mpsc::channel::<()>();
        let gate = std::sync::Arc::new(Mutex::new(gate));
        let (started_tx, started) = mpsc::channel::<()>();
        let callers: Vec<_> = (0..MAX_PENDING)
            .map(|_| {
                let (user, gate, started_tx) = (user.clone(), gate.clone(), started_tx.clone());
                std::thread::spawn(move || {
                    as_user(&user, move || {
                        let _ = started_tx.send(());
                        let _ = gate.lock().map(|g| g.recv());
                        Ok(())
                    })
                })
            })
            .collect();
        for _ in 0..MAX_PENDING {
            started.recv().expect("an operation started");
        }
        let refused = as_user(&user, || Ok(())).expect_err("over the allowance");
        assert_eq!(refused.kind(), std::io::ErrorKind::WouldBlock, "{refused}");
        assert!(refused.to_string().contains("uid 2147352577"), "{refused}");
        // Another uid is not held up.
        let other = UserCred {
            uid: 0x7ffe_0002,
            ..user.clone()
        };
        as_user(&other, || Ok(())).expect("another uid");
        for _ in 0..MAX_PENDING {
            release.send(()).expect("release");
        }
        for caller in callers {
            caller.join().expect("caller").expect("operation");
        }
        as_user(&user, || Ok(())).expect("the allowance is back");
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), "hello").expect("write");
        let root = open_root(dir.path());
        let bytes = read_file_in_root(&root_cred(), &root, "f", 64).expect("read");
        assert_eq!(bytes, b"hello");
    }

    #[test]
    fn a_file_larger_than_the_cap_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), vec![b'x'; 65]).expect("write");
        let root = open_root(dir.path());
        let err = read_file_in_root(&root_cred(), &root, "f", 64).unwrap_err();
        assert_eq!(err.to_string(), "is larger than 64 bytes");
    }

    #[test]
    fn fifo_symlink_and_directory_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).expect("symlink");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        let root = open_root(dir.path());
        let read = |rel| {
            read_file_in_root(&root_cred(), &root, rel, 64)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(read("fifo"), "is a FIFO, not a regular file");
        assert_eq!(read("d"), "is a directory, not a regular file");
        // O_NOFOLLOW: the last component is never followed.
        assert!(read("zero").contains("symbolic link"), "{}", read("zero"));
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(dir.path().join("etc/real"), "inside").expect("write");
        // `/etc` resolves to `<root>/etc`, not the host's.
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).expect("symlink");
        let root = open_root(dir.path());
        let bytes = read_file_in_root(&root_cred(), &root, "link/real", 64).expect("read");
        assert_eq!(bytes, b"inside");
        let err = read_file_in_root(&root_cred(), &root, "link/passwd", 64).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    /// `/proc/<pid>/cwd` (or `/proc/self/fd/N`, or a symlink to either) would reach what a process
    /// holds open, whatever the directories on the real path allow.
    #[test]
    fn magic_links_are_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(format!("/proc/{}/cwd", std::process::id()), &link)
            .expect("symlink");
        let held = open_dir_as(&root_cred(), dir.path()).expect("open");
        let through_fd = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&held)
        ));
        let nobody = UserCred {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        for user in [root_cred(), nobody] {
            for path in [
                PathBuf::from(format!("/proc/{}/cwd", std::process::id())),
                through_fd.clone(),
                link.clone(),
            ] {
                let dir = open_dir_as(&user, &path);
                assert!(dir.is_err(), "uid {} opened {}", user.uid, path.display());
                assert!(open_path_as(&user, &path).is_err(), "{}", path.display());
            }
        }
    }

    #[test]
    fn an_unprivileged_user_gets_the_same_error_for_existing_and_missing_names() {
        if !rustix::process::geteuid().is_root() {
            println!("skipped: needs root to act as another user");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private");
        std::fs::create_dir(&private).expect("mkdir");
        std::fs::create_dir(private.join("exists")).expect("mkdir");
        std::fs::write(private.join("secret"), "root only").expect("write");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let user = UserCred::of(65534, 65534);
        let existing = open_dir_as(&user, &private.join("exists")).unwrap_err();
        let missing = open_dir_as(&user, &private.join("missing")).unwrap_err();
        assert_eq!(existing.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(existing.to_string(), missing.to_string());
        // Beneath a root the user can open, a 0600 root file stays closed to them.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(
            private.join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let root = open_dir_as(&user, &private).expect("open as the user");
        let err = read_file_in_root(&user, &root, "secret", 64).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        // ...while root reads it, and the daemon's own threads kept their identity.
        assert!(read_file_in_root(&root_cred(), &root, "secret", 64).is_ok());
        assert!(rustix::process::geteuid().is_root());
    }
}
