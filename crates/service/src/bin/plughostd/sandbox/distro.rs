//! A distribution: its start from `__vm-enter distro` (the rootfs attached in the VM, its init
//! started as the VM's root) and `__distro-init` (its own mount and pid namespaces, `/proc`,
//! `/dev` and the VM's `/mnt` bound in, pivot into the rootfs). Nothing is created in a user's
//! rootfs.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use rustix::fs::Mode;
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::{ThreadNameSpaceType, UnshareFlags};

use super::enter::enter_namespaces;
use super::trees::{
    attach_tree, clone_tree, idmap_or_warn, open_or_make_target, set_tree_attrs, MOUNT_ATTR_NODEV,
};
use super::{
    bind_to_parent, child_end, die, first_for_the_oom_killer, fork_bound, mirror_exit, pivot_into,
    reap_forever, say, unshare, wait_child,
};

/// Attaches the rootfs in the VM and starts the distribution's init as the VM's root.
pub(super) fn start_distribution(
    pidfd: &OwnedFd,
    init_pid: u32,
    rootfs: &OwnedFd,
    stage: &Path,
    idmap: bool,
    owner: (u32, u32),
) -> ! {
    let tree = clone_tree(rootfs).unwrap_or_else(|e| die("clone the rootfs", e));
    // A device node in a user's rootfs opens nothing of the host's.
    if let Err(e) = set_tree_attrs(&tree, MOUNT_ATTR_NODEV, None) {
        die("set the rootfs's mount attributes", e);
    }
    if idmap {
        idmap_or_warn(&tree, pidfd, init_pid, "the rootfs");
    }
    // This very program, by a handle: its path may be hidden in the VM (a checkout under /tmp).
    let exe = rustix::fs::open(
        "/proc/self/exe",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| die("open /proc/self/exe", e));
    // Our own mount namespace, to come back to before the init is exec'd (below).
    let host_mounts = rustix::fs::open(
        "/proc/self/ns/mnt",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| die("open /proc/self/ns/mnt", e));
    if let Err(e) = enter_namespaces(pidfd, ThreadNameSpaceType::MOUNT, "VM's mount") {
        die("enter the VM", e);
    }
    // /run belongs to the VM's root: made component-wise, like a mount target.
    let place = open_or_make_target(owner, stage, false)
        .unwrap_or_else(|e| die(&format!("create {}", stage.display()), e));
    if let Err(e) = attach_tree(&tree, &place) {
        die(&format!("attach the rootfs at {}", stage.display()), e);
    }
    // Back in the host's mount namespace before the init is exec'd as the host's root: an exec
    // in the VM's would take its dynamic loader, its libraries and `/etc/ld.so.preload` from the
    // VM's root file system, which the VM's root may rewrite (it owns `/etc`, `/lib64`, ...), and
    // run them as the host's root. The init enters the VM's mount and user namespaces itself.
    if let Err(e) = rustix::thread::move_into_link_name_space(
        host_mounts.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Mount),
    ) {
        die("return to the host's mount namespace", e);
    }
    drop(host_mounts);
    // Nor the user namespace: the init enters that itself, after its exec (below).
    let rest = ThreadNameSpaceType::PROCESS_ID
        | ThreadNameSpaceType::INTER_PROCESS_COMMUNICATION
        | ThreadNameSpaceType::HOST_NAME_AND_NIS_DOMAIN_NAME;
    if let Err(e) = enter_namespaces(pidfd, rest, "VM's") {
        die("enter the VM", e);
    }
    // The VM's init, for the distribution's init to enter its mount and user namespaces: its
    // stdin.
    let vm_pidfd = pidfd
        .try_clone()
        .unwrap_or_else(|e| die("dup the VM's pidfd", e));
    // The distribution's init must be in the VM's pid namespace *before* it unshares its own
    // (the kernel refuses unshare(NEWPID) after setns(pid)): it runs as our child. It is exec'd
    // as the host's root and becomes the VM's root only then (`distro_init`): a process exec'd
    // in the VM's user namespace would be dumpable by the VM's root there, who could ptrace it
    // or take its fds (`pidfd_getfd`: its stdout and stderr are pipes to the daemon).
    let mut command = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    command
        .arg0("plughostd")
        .arg("__distro-init")
        .arg("--root")
        .arg(stage)
        // We are outside its pid namespace: it sees its parent as pid 0 (and as 1, the
        // VM's init, if we died before its death signal was armed).
        .arg("--parent-pid")
        .arg("0")
        .stdin(vm_pidfd)
        .env_clear();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| die("start the distribution's init", e));
    let exit = child_end(child.wait().unwrap_or_else(|e| die("wait", e)));
    mirror_exit(exit)
}

/// `__distro-init`: see the module docs. Exec'd as the host's root in the host's mount namespace
/// (so with the host's loader and libraries) and the VM's pid namespace, with a pidfd of the
/// VM's init as its stdin, it enters the VM's mount and user namespaces and becomes the VM's root
/// there before it touches any path of the VM: its memory stays owned by the host's user
/// namespace and it is not dumpable, so the VM's root can neither ptrace it (nor the
/// distribution's pid 1, its fork) nor take its fds.
pub fn distro_init(root: &Path, parent: u32) -> ! {
    // First: once in the VM's user namespace with the host's uid 0 (before the id change), a
    // dumpable process would be the VM's root's to ptrace, and it reads as the host's root.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        die("PR_SET_DUMPABLE", e);
    }
    bind_to_parent(parent);
    first_for_the_oom_killer();
    let vm = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .unwrap_or_else(|e| die("the VM's pidfd", e));
    let vm_namespaces = ThreadNameSpaceType::USER | ThreadNameSpaceType::MOUNT;
    if let Err(e) = enter_namespaces(&vm, vm_namespaces, "VM's mount and user") {
        die("enter the VM", e);
    }
    drop(vm);
    if let Err(e) = super::vm_init::become_root_of_namespace() {
        die("become the VM's root", e);
    }
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| die("open /dev/null", e));
    if let Err(e) = rustix::stdio::dup2_stdin(&null) {
        die("stdin", e);
    }
    // The change of ids cleared the parent-death signal: arm it again and check the parent.
    bind_to_parent(parent);
    if let Err(e) = unshare(UnshareFlags::NEWNS | UnshareFlags::NEWPID) {
        die("unshare(mount, pid)", e);
    }
    if let Some(init) = fork_bound() {
        let exit = wait_child(init).unwrap_or_else(|e| die("wait for the distribution init", e));
        mirror_exit(exit);
    }
    if let Err(e) = build_distro_root(root) {
        die("distribution root", e);
    }
    say("ready");
    reap_forever()
}

fn build_distro_root(root: &Path) -> Result<(), String> {
    // Slave, not private: the VM's shared /mnt keeps propagating into the distribution's copy;
    // nothing mounted here goes back to the VM.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::DOWNSTREAM,
    )
    .map_err(|e| format!("make mounts slaves: {e}"))?;
    // The rootfs came from the VM's mount namespace, which the host's user namespace owns, so here
    // it is a locked mount and pivot_root refuses it: bind it onto itself, a mount of our own.
    rustix::mount::mount_bind_recursive(root, root)
        .map_err(|e| format!("bind the rootfs onto itself: {e}"))?;
    // Nothing is created in a user's rootfs: a missing mount point is an error or a warning.
    let proc_dir = root.join("proc");
    if !proc_dir.is_dir() {
        return Err("the rootfs has no /proc directory".into());
    }
    rustix::mount::mount(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    let dev = root.join("dev");
    if dev.is_dir() {
        rustix::mount::mount_bind_recursive("/dev", &dev).map_err(|e| format!("bind /dev: {e}"))?;
    } else {
        eprintln!("plughostd sandbox: the rootfs has no /dev directory: the distribution runs without devices");
    }
    let mnt = root.join("mnt");
    if mnt.is_dir() {
        rustix::mount::mount_bind_recursive("/mnt", &mnt)
            .map_err(|e| format!("bind the VM's /mnt: {e}"))?;
    } else {
        eprintln!("plughostd sandbox: the rootfs has no /mnt directory: plugin mounts do not reach this distribution");
    }
    pivot_into(root)
}
