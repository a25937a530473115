//! Detached trees for `__vm-enter`'s `mount` and `distro` operations (`enter.rs`, `distro.rs`): a
//! copy of a tree the daemon opened with the user's rights (`open_tree`), its mount attributes and
//! idmap set before it is attached (`mount_setattr`), and the mount target, walked and made
//! component-wise with the VM's root's rights. It enters no namespace (the caller has) and opens
//! no path by a string a user gave, but the target's components, each beneath the one before.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use super::die;
use super::enter::has_exited;

/// A detached copy of the tree at `dir` (an fd the daemon opened with the user's rights).
pub(super) fn clone_tree(dir: &OwnedFd) -> Result<OwnedFd, std::io::Error> {
    Ok(rustix::mount::open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?)
}

/// Mounts the detached `tree` on the directory `place` holds (not on a path: nothing can be
/// swapped between the check and the mount).
pub(super) fn attach_tree(tree: &OwnedFd, place: &OwnedFd) -> std::io::Result<()> {
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        place,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// The user namespace of the process `pidfd` names, opened through `/proc/<pid>` and checked to
/// still be that process's (a pid may be reused; the pidfd may not).
fn user_namespace_of(pidfd: &OwnedFd, pid: u32) -> std::io::Result<OwnedFd> {
    let ns = rustix::fs::open(
        format!("/proc/{pid}/ns/user"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if has_exited(pidfd) {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(ns)
}

pub(super) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub(super) const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub(super) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr` on a whole detached tree (rustix has no wrapper): set `attrs`, and with
/// `userns` idmap it (ids on disk read as that user namespace maps them). Done before the tree is
/// attached, so nothing in the VM ever sees it without them.
pub(super) fn set_tree_attrs(
    tree: &OwnedFd,
    attrs: u64,
    userns: Option<&OwnedFd>,
) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs | userns.map_or(0, |_| MOUNT_ATTR_IDMAP),
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |ns| ns.as_raw_fd() as u64),
    };
    // SAFETY: `attr` is a properly laid out `struct mount_attr` that outlives the call, its size is
    // passed with it, the path is a valid empty C string, and both fds are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Idmaps `tree` to the VM of `pidfd`, or says why it could not. Not every file system can be
/// idmapped (SECURITY.md): without it the VM's root has only other users' rights on the tree,
/// which is less, never more.
pub(super) fn idmap_or_warn(tree: &OwnedFd, pidfd: &OwnedFd, init_pid: u32, what: &str) {
    let mapped =
        user_namespace_of(pidfd, init_pid).and_then(|ns| set_tree_attrs(tree, 0, Some(&ns)));
    if let Err(e) = mapped {
        eprintln!(
            "plughostd sandbox: cannot idmap {what} ({e}): the VM's root gets other users' rights on it"
        );
    }
}

/// The mount a directory fd lies on.
fn mount_id(dir: &OwnedFd) -> std::io::Result<u64> {
    let stat = rustix::fs::statx(
        dir,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )?;
    Ok(stat.stx_mnt_id)
}

/// Opens `target` in the VM (we are in its mount namespace), creating what is missing, one
/// component at a time beneath the fd of the one before (no magic links, so no jump out through
/// `/proc/<pid>/fd`). The whole walk runs with the VM's root's host ids (`owner`) and no
/// supplementary group or file capability, so it sees, and makes, only what the VM's root could.
/// The one exception is a directory missing in the VM's own private trees (its overlay root and the
/// tmpfs on `/tmp`, `/run`, `/mnt`, by mount id): there the override capabilities are raised for
/// the one `mkdirat`, so `/usr/share/doc/x` can be made under a directory the host's root owns,
/// and the new directory belongs to the VM's root from birth (no chown by name afterwards, which
/// the VM's root could race by renaming another file into its place).
///
/// With `file_leaf`, the last component is an (empty, new if missing) file: the target of a file
/// share.
pub(super) fn open_or_make_target(
    owner: (u32, u32),
    target: &Path,
    file_leaf: bool,
) -> std::io::Result<OwnedFd> {
    use rustix::fs::{OFlags, ResolveFlags};
    use std::path::Component;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let last = target.components().count().saturating_sub(1);
    let open_root = |path: &str| rustix::fs::open(path, flags, Mode::empty());
    let mut private = Vec::new();
    for path in ["/", "/tmp", "/run", "/mnt"] {
        if let Ok(id) = open_root(path)
            .map_err(std::io::Error::from)
            .and_then(|fd| mount_id(&fd))
        {
            private.push(id);
        }
    }
    let mut dir = open_root("/")?;
    let _identity = FileIdentity::take(owner)?;
    for (index, component) in target.components().enumerate() {
        let leaf_file = file_leaf && index == last;
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            }
        };
        let open = |dir: &OwnedFd| {
            let flags = if leaf_file {
                OFlags::PATH | OFlags::CLOEXEC
            } else {
                flags
            };
            rustix::fs::openat2(dir, name, flags, Mode::empty(), ResolveFlags::NO_MAGICLINKS)
        };
        dir = match open(&dir) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                let overriding = private.contains(&mount_id(&dir)?);
                let _caps = if overriding {
                    Some(OverrideCaps::raise()?)
                } else {
                    None
                };
                if leaf_file {
                    // O_EXCL: our own new file or nothing; closed at once (the mount takes a path fd).
                    drop(rustix::fs::openat(
                        &dir,
                        name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )?);
                } else {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))?;
                }
                drop(_caps);
                open(&dir)?
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(dir)
}

/// The VM's root's host ids for file access, no supplementary group, no file capability (the
/// fsuid change drops them), for as long as it lives; then root's again. Only in this
/// single-threaded helper, which has nothing else running meanwhile.
struct FileIdentity;

impl FileIdentity {
    fn take(owner: (u32, u32)) -> std::io::Result<FileIdentity> {
        rustix::thread::set_thread_groups(&[])?;
        // SAFETY: setfsuid/setfsgid take plain integers and change only the ids used for file
        // access of this (single-threaded) process; `Drop` restores them.
        unsafe {
            libc::setfsgid(owner.1);
            libc::setfsuid(owner.0);
        }
        Ok(FileIdentity)
    }
}

impl Drop for FileIdentity {
    fn drop(&mut self) {
        // SAFETY: as in `take`: back to root's file identity.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
    }
}

/// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH raised in the effective set (they stay permitted
/// across the fsuid change), for as long as it lives.
struct OverrideCaps(rustix::thread::CapabilitySets);

impl OverrideCaps {
    fn raise() -> std::io::Result<OverrideCaps> {
        use rustix::thread::CapabilitySet;
        let before = rustix::thread::capabilities(None)?;
        let mut raised = before;
        raised.effective |= CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
        rustix::thread::set_capabilities(None, raised)?;
        Ok(OverrideCaps(before))
    }
}

impl Drop for OverrideCaps {
    fn drop(&mut self) {
        if rustix::thread::set_capabilities(None, self.0).is_err() {
            die(
                "capabilities",
                "cannot lower the override capabilities again",
            );
        }
    }
}
