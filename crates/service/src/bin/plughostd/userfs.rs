//! Opening paths a user supplied with that user's rights, never root's.
//!
//! The daemon is threaded, so it cannot change its own credentials; a short-lived thread takes the
//! user's filesystem identity instead (`setfsuid`/`setfsgid`/`setgroups` are per-thread at the
//! system call level: glibc broadcasts `setgroups` to every thread, rustix's wrapper does not),
//! opens the path, and ends. Changing the fsuid away from 0 drops the thread's filesystem
//! capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER...), so the kernel checks the
//! user's own rights on every directory on the way.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// A user's filesystem identity.
#[derive(Clone, Debug)]
pub struct UserCred {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl UserCred {
    /// `uid`/`gid` with the supplementary groups `/etc/group` gives the user's name.
    pub fn of(uid: u32, gid: u32) -> UserCred {
        let name = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() >= 3 && fields[2].parse() == Ok(uid))
                        .then(|| fields[0].to_owned())
                })
            });
        let mut groups = vec![gid];
        if let (Some(name), Ok(text)) = (name, std::fs::read_to_string("/etc/group")) {
            for line in text.lines() {
                let fields: Vec<&str> = line.split(':').collect();
                if fields.len() >= 4 && fields[3].split(',').any(|m| m == name) {
                    if let Ok(g) = fields[2].parse() {
                        if !groups.contains(&g) {
                            groups.push(g);
                        }
                    }
                }
            }
        }
        UserCred { uid, gid, groups }
    }
}

/// Runs `f` on a thread that has `user`'s filesystem identity (root: the caller's own).
fn as_user<T: Send>(
    user: &UserCred,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    if user.uid == 0 {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let groups: Vec<rustix::process::Gid> = user
                    .groups
                    .iter()
                    .map(|&g| rustix::process::Gid::from_raw(g))
                    .collect();
                rustix::thread::set_thread_groups(&groups)?;
                // SAFETY: setfsgid/setfsuid take plain integers and change only this thread's
                // credentials (the syscalls are per-thread; glibc does not broadcast them). The
                // thread ends after `f`, so nothing else ever runs with them.
                unsafe {
                    libc::setfsgid(user.gid);
                    libc::setfsuid(user.uid);
                    // The calls return the previous id and cannot report failure: check.
                    if libc::setfsuid(u32::MAX) as u32 != user.uid
                        || libc::setfsgid(u32::MAX) as u32 != user.gid
                    {
                        return Err(std::io::Error::other("cannot take the user's identity"));
                    }
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the open thread panicked")))
    })
}

/// Opens directory `path` (absolute) with `user`'s rights: `O_PATH|O_DIRECTORY|O_CLOEXEC`.
pub fn open_dir_as(user: &UserCred, path: &Path) -> std::io::Result<OwnedFd> {
    open_as(user, path, OFlags::DIRECTORY)
}

/// Opens `path` (absolute; a directory or a file) with `user`'s rights: `O_PATH|O_CLOEXEC`.
pub fn open_path_as(user: &UserCred, path: &Path) -> std::io::Result<OwnedFd> {
    open_as(user, path, OFlags::empty())
}

fn open_as(user: &UserCred, path: &Path, extra: OFlags) -> std::io::Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    as_user(user, || {
        Ok(rustix::fs::open(
            path,
            OFlags::PATH | OFlags::CLOEXEC | extra,
            Mode::empty(),
        )?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_cannot_open_what_only_root_may_traverse() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private");
        let inner = private.join("inner");
        std::fs::create_dir_all(&inner).expect("mkdir");
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let nobody = UserCred {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let err = open_dir_as(&nobody, &inner).expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        open_dir_as(&nobody, dir.path()).expect("its own rights suffice here");
        let root = UserCred {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        open_dir_as(&root, &inner).expect("root may");
    }
}
