//! The control socket: accept, identify the caller (`SO_PEERCRED`), admit it (a bound per uid and
//! in all, with a reserve only root may use), refuse plugin hosts, read one bounded request line
//! (with up to three fds) before one deadline for the whole request, validate it, run it, answer
//! one line.
//!
//! No user can starve root: other uids together hold at most `MAX_CONNECTIONS - ROOT_RESERVE`
//! connections and each at most `limits.connections`; an idle connection is dropped when the
//! request deadline passes however slowly it trickles bytes. A refused connection is answered at
//! once, without blocking the accept loop.

use std::collections::HashMap;
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use plughost_service::{decode, encode, ErrorKind, Reply, Request, MAX_LINE};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::daemon::{Caller, Daemon, OpError, OpResult, PluginAction};

/// A client has this long to send its whole request (line and fds), however it is split.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The reply is written within this (a client that does not read is dropped).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered with an error at once.
const MAX_CONNECTIONS: usize = 256;
/// Of [`MAX_CONNECTIONS`], the ones only root may use.
const ROOT_RESERVE: usize = 32;
const MAX_ARGS: usize = 4096;
const MAX_NAME: usize = 64;

/// Binds the socket (its directory created, a stale socket file replaced, mode 0666: every user
/// may connect; `SO_PEERCRED` decides what each may do).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // Someone who can write to the directory could replace the socket with their own.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        let euid = rustix::process::geteuid().as_raw();
        if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            anyhow::bail!(
                "the socket directory {} is writable by others (mode {:o}): refusing to serve there",
                dir.display(),
                meta.mode() & 0o7777
            );
        }
        if meta.uid() != euid && meta.uid() != 0 {
            anyhow::bail!(
                "the socket directory {} belongs to uid {}: refusing to serve there",
                dir.display(),
                meta.uid()
            );
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: is another plughostd running?",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Connections open now, per uid and in all. Leaf lock (held for a few instructions).
#[derive(Default)]
struct Admission {
    open: Mutex<(usize, HashMap<u32, usize>)>,
}

/// An admitted connection; its place is given back when dropped.
struct Ticket {
    admission: Arc<Admission>,
    uid: u32,
}

impl Admission {
    fn admit(self: &Arc<Self>, uid: u32, per_uid: usize) -> Result<Ticket, String> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_uid) = &mut *open;
        let mine = by_uid.get(&uid).copied().unwrap_or(0);
        if uid != 0 {
            if mine >= per_uid {
                return Err(format!(
                    "plughostd is busy: uid {uid} has {mine} connections open (the limit is {per_uid})"
                ));
            }
            if *total >= MAX_CONNECTIONS - ROOT_RESERVE {
                return Err("plughostd is busy: too many connections".into());
            }
        } else if *total >= MAX_CONNECTIONS {
            return Err("plughostd is busy: too many connections".into());
        }
        *total += 1;
        by_uid.insert(uid, mine + 1);
        Ok(Ticket {
            admission: self.clone(),
            uid,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (total, by_uid) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

/// Answers a refused connection without ever blocking the accept loop.
fn refuse(stream: UnixStream, kind: ErrorKind, message: String) {
    let reply = Reply::Error { kind, message };
    let _ = stream.set_nonblocking(true);
    let mut stream = stream;
    let _ = stream.write_all(&encode(&reply));
}

/// Serves until a `shutdown` request (or SIGTERM) ends the process.
pub fn serve(daemon: Arc<Daemon>, listener: UnixListener, socket: PathBuf) {
    let admission = Arc::new(Admission::default());
    // A connection thread serves the next connection rather than ending (`workers.rs`).
    let workers = crate::workers::Workers::new("plughostd-conn");
    let per_uid = daemon.shared.config.limits.connections;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        let cred = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("SO_PEERCRED: {e}");
                continue;
            }
        };
        let uid = cred.uid.as_raw();
        let ticket = match admission.admit(uid, per_uid) {
            Ok(ticket) => ticket,
            Err(message) => {
                tracing::debug!(uid, "connection refused: {message}");
                refuse(stream, ErrorKind::Refused, message);
                continue;
            }
        };
        let caller = Caller {
            uid,
            gid: cred.gid.as_raw(),
            pid: cred.pid.as_raw_nonzero().get().unsigned_abs(),
        };
        let daemon = daemon.clone();
        let socket = socket.clone();
        let spawned = workers.run(move || {
            handle(&daemon, caller, stream, &socket);
            drop(ticket);
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start a connection thread: {e}");
        }
    }
}

/// Reads one request line and the fds sent with it, all before `deadline`.
fn read_request(stream: &UnixStream, deadline: Instant) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let timed_out = || {
        format!(
            "timed out waiting for the request ({} s for all of it)",
            REQUEST_DEADLINE.as_secs()
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut poll = [rustix::event::PollFd::new(
            stream,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut poll, Some(&timeout)) {
            Ok(0) => return Err(timed_out()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("waiting for the request: {e}")),
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        );
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                fds.extend(received_fds);
            }
        }
        let n = match received {
            Ok(msg) => msg.bytes,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        if fds.len() > 3 {
            return Err("too many file descriptors".into());
        }
        if n == 0 {
            return Err("connection closed before a complete request".into());
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() > MAX_LINE {
            return Err(format!("request longer than {MAX_LINE} bytes"));
        }
        if line.last() == Some(&b'\n') {
            return Ok((line, fds));
        }
    }
}

fn handle(daemon: &Daemon, caller: Caller, stream: UnixStream, socket: &Path) {
    let refusal = daemon
        .plugin_host(caller)
        .map(|why| ("plugin hosts", why))
        .or_else(|| daemon.vm_id(caller).map(|why| ("inside VMs", why)));
    if let Some((whom, why)) = refusal {
        tracing::warn!(
            uid = caller.uid,
            pid = caller.pid,
            "control request refused: {why}"
        );
        refuse(
            stream,
            ErrorKind::Refused,
            format!("plughostd refuses control requests from {whom}: {why}"),
        );
        return;
    }
    let mut stream = stream;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let reply = match read_request(&stream, deadline) {
        Err(message) => {
            tracing::info!(uid = caller.uid, "bad request: {message}");
            Reply::Error {
                kind: ErrorKind::Invalid,
                message,
            }
        }
        Ok((line, fds)) => match decode::<Request>(&line, MAX_LINE) {
            Err(e) => Reply::Error {
                kind: ErrorKind::Invalid,
                message: format!("bad request: {e}"),
            },
            Ok(request) => {
                let shutdown = request == Request::Shutdown;
                let result = validate(&request, caller, fds.len())
                    .and_then(|()| run(daemon, caller, request, fds, &stream));
                let reply = result.unwrap_or_else(|e| Reply::Error {
                    kind: e.kind,
                    message: e.message,
                });
                if shutdown && matches!(reply, Reply::Done { .. }) {
                    let _ = stream.write_all(&encode(&reply));
                    let _ = std::fs::remove_file(socket);
                    tracing::info!("stopped");
                    std::process::exit(0);
                }
                reply
            }
        },
    };
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let _ = stream.write_all(&encode(&reply));
}

fn check_name(what: &str, name: &str) -> OpResult<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorKind::Invalid,
            format!("{what} name {name:?} must be 1-{MAX_NAME} characters of [A-Za-z0-9._-], not starting with '.' or '-'"),
        ))
    }
}

fn check_argv(argv: &[String]) -> OpResult<()> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(OpError::new(ErrorKind::Invalid, "no command given"));
    }
    if argv.len() > MAX_ARGS || argv.iter().any(|a| a.contains('\0')) {
        return Err(OpError::new(ErrorKind::Invalid, "bad command line"));
    }
    Ok(())
}

/// Checks a request before anything runs: names, sizes, fds, and who may ask.
fn validate(request: &Request, caller: Caller, fds: usize) -> OpResult<()> {
    let wanted = if request.takes_stdio() { 3 } else { 0 };
    if fds != wanted {
        return Err(OpError::new(
            ErrorKind::Invalid,
            format!("this request carries {wanted} file descriptors, not {fds}"),
        ));
    }
    match request {
        Request::VmStart | Request::VmStop | Request::VmStatus | Request::DistroList => Ok(()),
        Request::DistroRegister {
            name,
            rootfs,
            package,
        } => {
            check_name("distribution", name)?;
            if !rootfs.is_absolute() {
                return Err(OpError::new(
                    ErrorKind::Invalid,
                    "--rootfs must be an absolute path",
                ));
            }
            match package {
                Some(p) if p.len() > 256 || p.contains('\0') => {
                    Err(OpError::new(ErrorKind::Invalid, "bad --package"))
                }
                _ => Ok(()),
            }
        }
        Request::DistroUnregister { name }
        | Request::DistroStart { name }
        | Request::DistroStop { name } => check_name("distribution", name),
        Request::Exec { distro, argv } => {
            if let Some(d) = distro {
                check_name("distribution", d)?;
            }
            check_argv(argv)
        }
        Request::CsessionCreate { name, .. } | Request::CsessionStop { name } => {
            check_name("container session", name)
        }
        Request::CsessionRun { name, argv } => {
            check_name("container session", name)?;
            check_argv(argv)
        }
        Request::Plugins => root_only(caller, "plugins"),
        Request::PluginRestart { .. } => root_only(caller, "plugin restart"),
        Request::PluginDisable { .. } => root_only(caller, "plugin disable"),
        Request::PluginEnable { .. } => root_only(caller, "plugin enable"),
        Request::Metrics => root_only(caller, "metrics"),
        Request::Shutdown => root_only(caller, "shutdown"),
    }
}

/// The refusal names the command the user typed.
fn root_only(caller: Caller, command: &str) -> OpResult<()> {
    if caller.uid == 0 {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorKind::PermissionDenied,
            format!("permission denied: `plughostctl {command}` is root-only"),
        ))
    }
}

fn stdio(fds: Vec<OwnedFd>) -> OpResult<[OwnedFd; 3]> {
    fds.try_into()
        .map_err(|_| OpError::new(ErrorKind::Invalid, "three file descriptors expected"))
}

fn exited(code: Option<i32>) -> Reply {
    // `None`: the client is gone; nobody reads this.
    Reply::Exited {
        code: code.unwrap_or(129),
    }
}

fn run(
    daemon: &Daemon,
    caller: Caller,
    request: Request,
    fds: Vec<OwnedFd>,
    stream: &UnixStream,
) -> OpResult<Reply> {
    tracing::debug!(uid = caller.uid, ?request, "request");
    Ok(match request {
        Request::VmStart => Reply::Vm(daemon.vm_start(caller)?),
        Request::VmStop => Reply::Done {
            message: daemon.vm_stop(caller)?,
        },
        Request::VmStatus => Reply::Vm(daemon.vm_status(caller)),
        Request::DistroRegister {
            name,
            rootfs,
            package,
        } => Reply::Distro(daemon.distro_register(caller, &name, &rootfs, package.as_deref())?),
        Request::DistroUnregister { name } => Reply::Done {
            message: daemon.distro_unregister(caller, &name)?,
        },
        Request::DistroStart { name } => Reply::Distro(daemon.distro_start(caller, &name)?),
        Request::DistroStop { name } => Reply::Done {
            message: daemon.distro_stop(caller, &name)?,
        },
        Request::DistroList => Reply::Distros {
            distros: daemon.distro_list(caller),
        },
        Request::Exec { distro, argv } => {
            exited(daemon.exec(caller, distro.as_deref(), &argv, stdio(fds)?, stream)?)
        }
        Request::CsessionCreate {
            name,
            application_pid,
        } => {
            let (id, name) = daemon.csession_create(caller, &name, application_pid)?;
            Reply::CsessionCreated { id: id.0, name }
        }
        Request::CsessionRun { name, argv } => {
            exited(daemon.csession_run(caller, &name, &argv, stdio(fds)?, stream)?)
        }
        Request::CsessionStop { name } => Reply::Done {
            message: daemon.csession_stop(caller, &name)?,
        },
        Request::Plugins => Reply::Plugins {
            plugins: daemon.plugins()?,
        },
        Request::PluginRestart { name } => daemon.plugin_control(&name, PluginAction::Restart)?,
        Request::PluginDisable { name } => daemon.plugin_control(&name, PluginAction::Disable)?,
        Request::PluginEnable { name } => daemon.plugin_control(&name, PluginAction::Enable)?,
        Request::Metrics => Reply::Metrics {
            text: daemon.metrics()?,
        },
        Request::Shutdown => {
            daemon.shutdown();
            Reply::Done {
                message: "plughostd stopped".into(),
            }
        }
    })
}
