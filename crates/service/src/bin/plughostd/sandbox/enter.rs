//! `__vm-enter` (see `mod.rs`): the control socket and the fds on it, `setns` by pidfd, mount
//! targets made component-wise with the VM's root's rights, detached trees with their mount and
//! idmap attributes set before they are attached, and the exec of a program in a VM or
//! distribution. Building a VM is `vm_init.rs`; the distribution's own init is `distro.rs`.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};
use rustix::process::Signal;
use rustix::thread::ThreadNameSpaceType;

use plughost_sys::Seqpacket;

use super::distro::start_distribution;
use super::{
    bind_to_parent, child_end, die, die_errno, fresh_session_keyring, leave_the_daemons_session,
    mirror_exit, EXIT_SETUP,
};

/// What `__vm-enter` does once inside. The fds each operation needs come on the control socket
/// (its stdin), the target's pidfd first: no pid number is ever trusted to still name the VM.
pub enum EnterOp {
    /// fds: [pidfd of the VM init, the folder (opened by the daemon with the session user's
    /// rights)]. Attaches a copy of the folder at `target`, idmapped to the VM when `idmap`.
    Mount {
        target: PathBuf,
        read_only: bool,
        idmap: bool,
        /// Host ids of the VM's root, who creates missing directories on the way.
        owner: (u32, u32),
    },
    /// fds: [pidfd of the VM init].
    Unmount { target: PathBuf },
    /// fds: [pidfd of the VM or distribution init, stdin, stdout, stderr]. Answers `ok` or
    /// `err <errno> <why>` on the control socket once the program runs (or could not), then ends
    /// as the program ends.
    Exec {
        /// In the VM's terms (0: the VM's root).
        uid: u32,
        gid: u32,
        /// `None`: a minimal default environment.
        env: Option<Vec<String>>,
        path: String,
        argv: Vec<String>,
    },
    /// fds: [pidfd of the VM init, the rootfs (opened with the owner's rights)].
    Distro {
        stage: PathBuf,
        idmap: bool,
        /// Host ids of the VM's root (the owner of the directories made for the stage).
        owner: (u32, u32),
    },
}

impl EnterOp {
    fn fd_count(&self) -> usize {
        match self {
            EnterOp::Mount { .. } | EnterOp::Distro { .. } => 2,
            EnterOp::Unmount { .. } => 1,
            EnterOp::Exec { .. } => 4,
        }
    }
}

/// The control socket on stdin and the fds the daemon sent on it.
fn receive_fds(count: usize) -> (Seqpacket, Vec<OwnedFd>) {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .unwrap_or_else(|e| die("control socket", e));
    let control = Seqpacket::from_fd(fd);
    let mut buf = [0u8; 16];
    let mut fds = Vec::new();
    if let Err(e) = control.recv(&mut buf, &mut fds) {
        die("receive the daemon's fds", e);
    }
    if fds.len() != count {
        die(
            "receive the daemon's fds",
            format!("got {}, want {count}", fds.len()),
        );
    }
    (control, fds)
}

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

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
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

/// Whether the process `pidfd` names has exited (a pidfd polls readable then).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
}

pub(super) fn enter_namespaces(
    pidfd: &OwnedFd,
    types: ThreadNameSpaceType,
    what: &str,
) -> Result<(), std::io::Error> {
    rustix::thread::move_into_thread_name_spaces(pidfd.as_fd(), types).map_err(|e| {
        // ESRCH: the VM's init is gone or exiting (the VM is stopping). An exiting process drops
        // its namespaces before its pidfd polls readable, so ESRCH alone says it.
        if e == rustix::io::Errno::SRCH || has_exited(pidfd) {
            std::io::Error::from_raw_os_error(libc::ESRCH)
        } else {
            std::io::Error::other(format!("enter the {what} namespaces: {e}"))
        }
    })
}

/// `__vm-enter`: see the module docs.
pub fn vm_enter(parent: u32, init_pid: u32, op: EnterOp) -> ! {
    bind_to_parent(parent);
    leave_the_daemons_session();
    fresh_session_keyring();
    // Nothing in the VM may ptrace us while we still hold root's identity on the host.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        die("PR_SET_DUMPABLE", e);
    }
    let (control, mut fds) = receive_fds(op.fd_count());
    let pidfd = fds.remove(0);
    match op {
        EnterOp::Mount {
            target,
            read_only,
            idmap,
            owner,
        } => {
            let source = fds.remove(0);
            let tree = clone_tree(&source).unwrap_or_else(|e| die_errno("clone the folder", e));
            // No device node or set-id program of the host's works through a share.
            let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
            if read_only {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            if let Err(e) = set_tree_attrs(&tree, attrs, None) {
                die_errno("set the folder's mount attributes", e);
            }
            if idmap {
                idmap_or_warn(&tree, &pidfd, init_pid, "the folder");
            }
            if let Err(e) = enter_namespaces(&pidfd, ThreadNameSpaceType::MOUNT, "VM's mount") {
                die_errno("enter the VM", e);
            }
            let is_file = rustix::fs::fstat(&source)
                .map(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        != rustix::fs::FileType::Directory
                })
                .unwrap_or(false);
            let place = open_or_make_target(owner, &target, is_file)
                .unwrap_or_else(|e| die_errno(&format!("create {}", target.display()), e));
            if let Err(e) = attach_tree(&tree, &place) {
                die_errno(&format!("mount at {}", target.display()), e);
            }
            std::process::exit(0)
        }
        EnterOp::Unmount { target } => {
            if let Err(e) = enter_namespaces(&pidfd, ThreadNameSpaceType::MOUNT, "VM's mount") {
                die_errno("enter the VM", e);
            }
            // NOFOLLOW: a symlink the VM's users put where a share was does not redirect the
            // unmount to another of the VM's mounts.
            if let Err(e) =
                rustix::mount::unmount(&target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
            {
                die_errno(&format!("unmount {}", target.display()), e.into());
            }
            std::process::exit(0)
        }
        EnterOp::Exec {
            uid,
            gid,
            env,
            path,
            argv,
        } => {
            let stdio = std::mem::take(&mut fds);
            run_program(&control, &pidfd, stdio, uid, gid, env, &path, &argv)
        }
        EnterOp::Distro {
            stage,
            idmap,
            owner,
        } => {
            let rootfs = fds.remove(0);
            start_distribution(&pidfd, init_pid, &rootfs, &stage, idmap, owner)
        }
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Tells the daemon why the program could not start, then exits.
fn refuse(control: &Seqpacket, errno: i32, why: &str) -> ! {
    let _ = control.send(format!("err {errno} {why}").as_bytes(), &[]);
    eprintln!("plughostd sandbox: {why}");
    std::process::exit(EXIT_SETUP)
}

/// Enters the VM (or distribution) of `pidfd`, runs the program as our child there as `uid`/`gid`
/// (the VM's ids), says `ok` on the control socket, and ends as the program ends.
#[allow(clippy::too_many_arguments)]
fn run_program(
    control: &Seqpacket,
    pidfd: &OwnedFd,
    stdio: Vec<OwnedFd>,
    uid: u32,
    gid: u32,
    env: Option<Vec<String>>,
    path: &str,
    argv: &[String],
) -> ! {
    let all = ThreadNameSpaceType::USER
        | ThreadNameSpaceType::MOUNT
        | ThreadNameSpaceType::PROCESS_ID
        | ThreadNameSpaceType::INTER_PROCESS_COMMUNICATION
        | ThreadNameSpaceType::HOST_NAME_AND_NIS_DOMAIN_NAME;
    if let Err(e) = enter_namespaces(pidfd, all, "VM's") {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        refuse(control, errno, &e.to_string());
    }
    let mut stdio = stdio.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr)) = (stdio.next(), stdio.next(), stdio.next())
    else {
        refuse(control, libc::EINVAL, "missing stdio");
    };
    let mut command = Command::new(path);
    if let Some(arg0) = argv.first() {
        command.arg0(arg0);
    }
    command.args(argv.iter().skip(1)).env_clear();
    match env {
        Some(env) => {
            for entry in env {
                let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
                command.env(key, value);
            }
        }
        None => {
            command.env("PATH", DEFAULT_PATH).env("HOME", "/");
        }
    }
    // The program dies with this helper (killed when the client goes away): armed after std set
    // its ids (a credential change clears it), then checked against the race where we died first
    // (outside its pid namespace, our pid reads as 0 there; a reparented orphan sees its init).
    // SAFETY: the closure runs in the forked child of this single-threaded helper and only makes
    // async-signal-safe system calls (prctl, getppid); it touches no lock or allocation.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid().is_some() {
                return Err(std::io::Error::other("the helper died"));
            }
            Ok(())
        });
    }
    // std clears the supplementary groups when it sets ids (setgroups(0)).
    command
        .gid(gid)
        .uid(uid)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .current_dir("/");
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            refuse(control, errno, &format!("cannot run {path}: {e}"))
        }
    };
    let _ = control.send(b"ok", &[]);
    let exit = child_end(child.wait().unwrap_or_else(|e| die("wait", e)));
    mirror_exit(exit)
}
