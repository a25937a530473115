//! `__vm-enter` (see `mod.rs`): the operation, the control socket and the fds the daemon sends
//! on it (the target's pidfd first), `setns` by that pidfd, and each operation's few steps in
//! order. The steps themselves live beside it: detached trees, their attributes and the mount
//! target's component-wise walk in `trees.rs`, the exec of a program in `exec.rs`, a
//! distribution's start in `distro.rs`. Building a VM is `vm_init.rs`. No unsafe code here, and no
//! path is resolved here but the one `unmount` detaches (inside the VM's mount namespace).

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::mount::UnmountFlags;
use rustix::thread::ThreadNameSpaceType;

use plughost_sys::Seqpacket;

use super::distro::start_distribution;
use super::exec::run_program;
use super::trees::{
    attach_tree, clone_tree, idmap_or_warn, open_or_make_target, set_tree_attrs, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};
use super::{
    bind_to_parent, die, die_errno, first_for_the_oom_killer, fresh_session_keyring,
    leave_the_daemons_session,
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
        /// The program's RLIMIT_NPROC, if bounded.
        nproc: Option<u64>,
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

/// Whether the process `pidfd` names has exited (a pidfd polls readable then).
pub(super) fn has_exited(pidfd: &OwnedFd) -> bool {
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

/// Enters the `types` namespaces of the process `pidfd` names (`what` names them in the error).
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
    first_for_the_oom_killer();
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
            nproc,
            env,
            path,
            argv,
        } => {
            let stdio = std::mem::take(&mut fds);
            let ids = super::exec::ProgramIds { uid, gid, nproc };
            run_program(&control, &pidfd, stdio, ids, env, &path, &argv)
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
