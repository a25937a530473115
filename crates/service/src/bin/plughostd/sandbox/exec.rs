//! `__vm-enter exec` (`enter.rs`): enter every namespace of the VM or distribution, the user
//! namespace included, run the program as our child with the VM's uid/gid and the stdio the
//! daemon sent, answer `ok` or `err <errno> <why>` on the control socket before the program's
//! exit could be mistaken for it, then end as the program ends. It receives no fd (`enter.rs`
//! does) and mounts nothing.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::Signal;
use rustix::thread::ThreadNameSpaceType;

use plughost_sys::Seqpacket;

use super::enter::enter_namespaces;
use super::{child_end, die, mirror_exit, EXIT_SETUP};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Tells the daemon why the program could not start, then exits.
fn refuse(control: &Seqpacket, errno: i32, why: &str) -> ! {
    let _ = control.send(format!("err {errno} {why}").as_bytes(), &[]);
    eprintln!("plughostd sandbox: {why}");
    std::process::exit(EXIT_SETUP)
}

/// Who the program runs as, in the VM's terms, and how many processes that uid may have there.
pub(super) struct ProgramIds {
    pub uid: u32,
    pub gid: u32,
    /// RLIMIT_NPROC: counted per uid *in the VM's user namespace*, so it bounds that uid's
    /// processes in this VM (a fork bomb there cannot take every pid of the host).
    pub nproc: Option<u64>,
}

/// Enters the VM (or distribution) of `pidfd`, runs the program as our child there as `uid`/`gid`
/// (the VM's ids), says `ok` on the control socket, and ends as the program ends.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_program(
    control: &Seqpacket,
    pidfd: &OwnedFd,
    stdio: Vec<OwnedFd>,
    ids: ProgramIds,
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
    let nproc = ids.nproc.map(|n| rustix::process::Rlimit {
        current: Some(n),
        maximum: Some(n),
    });
    // SAFETY: the closure runs in the forked child of this single-threaded helper and only makes
    // async-signal-safe system calls (prctl, setrlimit, getppid); it touches no lock or allocation.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if let Some(limit) = &nproc {
                rustix::process::setrlimit(rustix::process::Resource::Nproc, *limit)?;
            }
            if rustix::process::getppid().is_some() {
                return Err(std::io::Error::other("the helper died"));
            }
            Ok(())
        });
    }
    // std clears the supplementary groups when it sets ids (setgroups(0)).
    command
        .gid(ids.gid)
        .uid(ids.uid)
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
