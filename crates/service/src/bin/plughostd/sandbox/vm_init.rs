//! `__vm-init` (see `mod.rs`): the VM's root (an overlay over the host's root file system, the
//! directories its root may own, a minimal `/dev`, private scratch, its own `/proc`), the user
//! namespace's maps written by the outer, and the daemon's one scan of the host's open
//! directories. Entering a running VM is `enter.rs` (with `trees.rs`, `exec.rs`); a
//! distribution's root is `distro.rs`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::process::Signal;
use rustix::thread::UnshareFlags;

use super::{
    bind_to_parent, die, first_for_the_oom_killer, fork_bound, fresh_session_keyring,
    leave_the_daemons_session, mirror_exit, pivot_into, reap_forever, say, unshare, wait_child,
};

/// What `__vm-init` needs: where to build, and the user namespace's maps (see `ids.rs`).
pub struct VmInit {
    pub stage: PathBuf,
    pub hostname: String,
    pub parent: u32,
    pub uid_map: String,
    pub gid_map: String,
    /// Host ids of the VM's root (the owner of its writable layer).
    pub root_uid: u32,
    pub root_gid: u32,
    /// Size of the writable layer and of `/tmp` and `/dev/shm` each (tmpfs, in MiB).
    pub scratch_mib: u32,
    /// The daemon's [`scan_open_directories`], if it made one.
    pub dirs_file: Option<PathBuf>,
}

/// `__vm-init`: see the module docs.
pub fn vm_init(init: &VmInit) -> ! {
    bind_to_parent(init.parent);
    first_for_the_oom_killer();
    leave_the_daemons_session();
    fresh_session_keyring();
    let flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC | UnshareFlags::NEWPID;
    if let Err(e) = unshare(flags) {
        die("unshare(mount, uts, ipc, pid)", e);
    }
    // Two pipes: the init says "in my user namespace"; the outer says "go" (once it holds the
    // init's /proc directory: the init's pivot_root moves the outer's root too, and the /proc there
    // is the VM's) and later "mapped".
    let (unshared_r, unshared_w) = cloexec_pipe();
    let (mapped_r, mapped_w) = cloexec_pipe();
    if let Some(pid) = fork_bound() {
        drop((unshared_w, mapped_r));
        let proc_dir = rustix::fs::open(
            format!("/proc/{pid}"),
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap_or_else(|e| die("open the init's /proc directory", e));
        let _ = rustix::io::write(&mapped_w, b"g");
        say(&format!("init {pid}"));
        if read_byte(&unshared_r).is_some() {
            if let Err(e) = write_maps(&proc_dir, &init.uid_map, &init.gid_map) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32)
                        .unwrap_or(rustix::process::Pid::INIT),
                    Signal::KILL,
                );
                die("user namespace maps", e);
            }
            let _ = rustix::io::write(&mapped_w, b"m");
        }
        // `mapped_w` stays open for our life: the init watches it to learn that we died.
        let exit = wait_child(pid).unwrap_or_else(|e| die("wait for the VM init", e));
        mirror_exit(exit);
    }
    drop((unshared_r, mapped_w));
    if read_byte(&mapped_r).is_none() {
        die("parent", "died during start-up");
    }
    if let Err(e) = build_vm_root(init) {
        die("VM root", e);
    }
    // Last: the user namespace. The mount, uts, ipc and pid namespaces above stay owned by the
    // host's, so nothing in the VM (root included) can mount, remount or unmount anything.
    if let Err(e) = unshare(UnshareFlags::NEWUSER) {
        die("unshare(user)", e);
    }
    let _ = rustix::io::write(&unshared_w, b"u");
    if read_byte(&mapped_r).is_none() {
        die("user namespace", "the outer process did not map it");
    }
    if let Err(e) = become_root_of_namespace() {
        die("become the VM's root", e);
    }
    // A change of credentials clears the parent-death signal: arm it again, then check that the
    // outer still lives (its end of `mapped` closes when it dies).
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        die("PR_SET_PDEATHSIG", e);
    }
    if parent_is_gone(&mapped_r) {
        die("parent", "died during start-up");
    }
    say("ready");
    reap_forever()
}

fn cloexec_pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap_or_else(|e| die("pipe", e))
}

fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(fd, &mut byte) {
            Ok(1) => return Some(byte[0]),
            Err(Errno::INTR) => continue,
            _ => return None,
        }
    }
}

/// Whether the write end of the pipe `fd` reads from was closed (the writer died).
fn parent_is_gone(fd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
        && fds[0].revents().contains(rustix::event::PollFlags::HUP)
}

fn write_maps(proc_dir: &OwnedFd, uid_map: &str, gid_map: &str) -> Result<(), String> {
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let fd = rustix::fs::openat(
            proc_dir,
            file,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {file}: {e}"))?;
        // One write: the kernel takes a map whole or not at all.
        rustix::io::write(&fd, format!("{map}\n").as_bytes())
            .map_err(|e| format!("write {file} ({map:?}): {e}"))?;
    }
    Ok(())
}

/// In a fresh user namespace whose maps are written (or one just entered): uid and gid 0 there,
/// no supplementary groups.
pub(super) fn become_root_of_namespace() -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    rustix::thread::set_thread_groups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    rustix::thread::set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT)
        .map_err(|e| format!("setresgid: {e}"))?;
    rustix::thread::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT)
        .map_err(|e| format!("setresuid: {e}"))?;
    // The id change made us as dumpable as `fs.suid_dumpable` says (1 on some systems): never,
    // or the VM's root (our uid now) could ptrace us and take our fds.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    Ok(())
}

fn mount_tmpfs(target: &Path, flags: MountFlags, data: &str) -> Result<(), String> {
    rustix::mount::mount(
        "tmpfs",
        target,
        "tmpfs",
        flags,
        Some(c_string(data).as_c_str()),
    )
    .map_err(|e| format!("tmpfs on {}: {e}", target.display()))
}

/// The VM's root: an overlay whose lower layer is the host's root file system (read-only, its own
/// ownership: the host's files are nobody's in the VM) and whose upper layer is a tmpfs owned by
/// the VM's root; private scratch on `/tmp`, `/run`, `/mnt`; a minimal `/dev`; its own `/proc`.
fn build_vm_root(init: &VmInit) -> Result<(), String> {
    // Nothing we mount here may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    let stage = &init.stage;
    let owner = format!("uid={},gid={}", init.root_uid, init.root_gid);
    let size = format!("size={}m", init.scratch_mib);
    mount_tmpfs(
        stage,
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=700,{size}"),
    )?;
    for dir in ["upper", "work", "root", "tmp", "shm"] {
        rustix::fs::mkdir(stage.join(dir), Mode::from_raw_mode(0o755))
            .map_err(|e| format!("create {dir}: {e}"))?;
    }
    // `/tmp` and `/dev/shm` live on the same tmpfs as the writable layer: one size bounds all
    // the memory the VM's files may take (the daemon bounds the sum per user).
    for dir in ["tmp", "shm"] {
        rustix::fs::chmod(stage.join(dir), Mode::from_raw_mode(0o1777))
            .map_err(|e| format!("chmod {dir}: {e}"))?;
    }
    rustix::fs::chown(
        stage.join("upper"),
        Some(rustix::fs::Uid::from_raw(init.root_uid)),
        Some(rustix::fs::Gid::from_raw(init.root_gid)),
    )
    .map_err(|e| format!("chown the upper layer: {e}"))?;
    // Relative layer paths (from the stage): no escaping of ',' or ':' in the state directory.
    std::env::set_current_dir(stage).map_err(|e| format!("chdir {}: {e}", stage.display()))?;
    rustix::mount::mount(
        "overlay",
        "root",
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"lowerdir=/,upperdir=upper,workdir=work"),
    )
    .map_err(|e| format!("overlay on the host's root: {e}"))?;
    give_directories_to_vm_root(&stage.join("upper"), init)?;
    let root = stage.join("root");
    bind_scratch(&stage.join("tmp"), &root.join("tmp"))?;
    for (dir, flags, data) in [
        (
            "run",
            MountFlags::NOSUID | MountFlags::NODEV,
            format!("mode=755,size=64m,{owner}"),
        ),
        (
            "mnt",
            MountFlags::NOSUID | MountFlags::NODEV,
            format!("mode=755,size=16m,{owner}"),
        ),
    ] {
        let target = root.join(dir);
        if !target.is_dir() {
            rustix::fs::mkdir(&target, Mode::from_raw_mode(0o755))
                .map_err(|e| format!("create /{dir}: {e}"))?;
        }
        mount_tmpfs(&target, flags, &data)?;
    }
    // Plugins mount folders under /mnt; distributions get the VM's /mnt as a slave of this one,
    // so mounts made after a distribution started reach it too.
    rustix::mount::mount_change(root.join("mnt"), MountPropagationFlags::SHARED)
        .map_err(|e| format!("share /mnt: {e}"))?;
    build_dev(&root.join("dev"), &stage.join("shm"))?;
    let proc_dir = root.join("proc");
    rustix::mount::mount(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    // /sys read-only, without the file systems mounted beneath it (cgroups, debugfs...).
    let sys = root.join("sys");
    if sys.is_dir() && rustix::mount::mount_bind("/sys", &sys).is_ok() {
        let _ = rustix::mount::mount_remount(
            &sys,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        );
    }
    pivot_into(&root)?;
    rustix::system::sethostname(init.hostname.as_bytes())
        .map_err(|e| format!("sethostname: {e}"))?;
    Ok(())
}

/// How deep [`scan_open_directories`] goes: `/usr/local` (so `/usr/local/x`), `/var/lib`, `/etc`.
/// A third level (`/usr/local/bin/x`) made `vm start` 1.7x slower than before user namespaces
/// (release, same run: 8.9 against 5.2 ms), two levels 1.3x.
const OWNED_DEPTH: usize = 2;
/// At most this many directories (a start-up cost bound on hosts with huge trees).
const OWNED_MAX: usize = 4096;
/// Top-level directories the VM covers with mounts of its own.
const COVERED: [&str; 6] = ["tmp", "run", "mnt", "proc", "sys", "dev"];

/// The directories of the host's root file system, down to [`OWNED_DEPTH`], that anyone may list
/// and enter, parents first, as `mode\0path\0` records (paths relative to `/`). The daemon scans
/// once at start (a walk costs more than a VM start) and each VM init re-checks every entry.
pub fn scan_open_directories() -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(root_dev) = std::fs::metadata("/").map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([(PathBuf::from("/"), 0)]);
    let mut count = 0;
    while let Some((dir, depth)) = queue.pop_front() {
        if depth >= OWNED_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            // The VM mounts its own over these.
            if depth == 0 && COVERED.iter().any(|c| entry.file_name() == *c) {
                continue;
            }
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            if meta.dev() != root_dev || mode & 0o005 != 0o005 {
                continue;
            }
            if count >= OWNED_MAX {
                return out;
            }
            count += 1;
            out.extend_from_slice(format!("{mode:o}\0").as_bytes());
            out.extend_from_slice(
                path.strip_prefix("/")
                    .unwrap_or(&path)
                    .as_os_str()
                    .as_bytes(),
            );
            out.push(0);
            queue.push_back((path, depth + 1));
        }
    }
    out
}

/// Pre-creates, in the upper layer, a directory owned by the VM's root for every directory of
/// [`scan_open_directories`] that is still what the scan saw (same file system, same mode):
/// overlayfs shows a merged directory with its upper's owner, so the VM's root can create, rename
/// and remove entries there (`mkdir /opt/x`, `/usr/local/tool`) while every *file* keeps its
/// host owner and mode (the host's root files are nobody's in the VM: `/etc/shadow` stays
/// unreadable). A directory others may not enter (`/root`) keeps its host owner and stays closed.
fn give_directories_to_vm_root(upper: &Path, init: &VmInit) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(list) = &init.dirs_file else {
        return Ok(());
    };
    let records = std::fs::read(list).map_err(|e| format!("read {}: {e}", list.display()))?;
    let root_dev = std::fs::metadata("/")
        .map_err(|e| format!("stat /: {e}"))?
        .dev();
    // The host's modes exactly: no umask (and chown keeps a directory's set-gid bit).
    let umask = rustix::process::umask(Mode::empty());
    let mut result = Ok(());
    let mut fields = records.split(|&b| b == 0);
    while let (Some(mode), Some(path)) = (fields.next(), fields.next()) {
        let Some(mode) = std::str::from_utf8(mode)
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
        else {
            continue;
        };
        let rel = Path::new(std::ffi::OsStr::from_bytes(path));
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            continue;
        }
        // Still a directory of the root file system, still open to all, with that mode?
        let still = Path::new("/").join(rel).symlink_metadata().is_ok_and(|m| {
            m.is_dir() && m.dev() == root_dev && m.permissions().mode() & 0o7777 == mode
        });
        if !still {
            continue;
        }
        let target = upper.join(rel);
        match rustix::fs::mkdir(&target, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            // Its parent was skipped: so is it.
            Err(Errno::NOENT) => continue,
            Err(e) => {
                result = Err(format!("create {}: {e}", target.display()));
                break;
            }
        }
        if let Err(e) = rustix::fs::chown(
            &target,
            Some(rustix::fs::Uid::from_raw(init.root_uid)),
            Some(rustix::fs::Gid::from_raw(init.root_gid)),
        ) {
            result = Err(format!("give {} to the VM's root: {e}", target.display()));
            break;
        }
    }
    rustix::process::umask(umask);
    result
}

/// A `/dev` of its own: the harmless character devices bound from the host's, a private devpts
/// and `/dev/shm`. No block device, no `/dev/mem`, nothing a VM program could reach the host by.
fn build_dev(dev: &Path, shm: &Path) -> Result<(), String> {
    if !dev.is_dir() {
        rustix::fs::mkdir(dev, Mode::from_raw_mode(0o755))
            .map_err(|e| format!("create /dev: {e}"))?;
    }
    mount_tmpfs(
        dev,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=755,size=64k",
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let node = dev.join(name);
        std::fs::File::create(&node).map_err(|e| format!("create /dev/{name}: {e}"))?;
        rustix::mount::mount_bind(Path::new("/dev").join(name), &node)
            .map_err(|e| format!("bind /dev/{name}: {e}"))?;
    }
    let pts = dev.join("pts");
    rustix::fs::mkdir(&pts, Mode::from_raw_mode(0o755))
        .map_err(|e| format!("create /dev/pts: {e}"))?;
    rustix::mount::mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| format!("devpts: {e}"))?;
    let dev_shm = dev.join("shm");
    rustix::fs::mkdir(&dev_shm, Mode::from_raw_mode(0o755))
        .map_err(|e| format!("create /dev/shm: {e}"))?;
    bind_scratch(shm, &dev_shm)?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("link /dev/{link}: {e}"))?;
    }
    Ok(())
}

/// Binds a directory of the VM's scratch tmpfs (nosuid, nodev like it) at `target`, creating it.
fn bind_scratch(source: &Path, target: &Path) -> Result<(), String> {
    if !target.is_dir() {
        rustix::fs::mkdir(target, Mode::from_raw_mode(0o755))
            .map_err(|e| format!("create {}: {e}", target.display()))?;
    }
    rustix::mount::mount_bind(source, target)
        .map_err(|e| format!("bind scratch at {}: {e}", target.display()))
}

fn c_string(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap_or_default()
}
