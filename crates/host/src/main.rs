//! `plughost-host`: runs exactly one plugin, for one service, and dies with it.
//!
//! Started by the supervisor as `plughost-host --name NAME --parent-pid PID [--cgroup DIR]`, with the
//! channel to the service on stdin and stdout/stderr on pipes that the service logs (so nothing the
//! plugin prints can touch the channel). Before any plugin code runs it:
//! 1. arms `PR_SET_PDEATHSIG(SIGKILL)` and checks its parent is still the service, and moves itself
//!    into its cgroup (`--cgroup`) if the service made one;
//! 2. moves the channel off stdin and closes every other inherited fd;
//! 3. moves the plugin into a fresh pid namespace (outer → namespace init → plugin process, see
//!    `plughost_sys::confine::contain`; the outer and the init then exec a tiny static waiter), or,
//!    without the privilege, stays in the process group the service gave it and says so.
//!
//! Then it shakes hands, confines itself as the `Welcome` says (session, umask, limits, user,
//! no_new_privs, Landlock, seccomp), loads the sealed library, and serves hooks on the main thread (see
//! `serve/mod.rs` for the thread design). It exits when the channel closes or the service says `Shutdown`.

mod fs_sandbox;
mod seccomp;
mod serve;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use plughost_runtime::{api::api_table, hook, install_backend, LoadedPlugin};
use plughost_sys::confine::{self, Contained, ParentBond};
use plughost_sys::{HostEnds, Ring, Seqpacket};
use plughost_wire::{
    Confinement, Hello, HostMsg, LoadFailure, PluginSource, ServiceMsg, PROTOCOL_VERSION,
};

use serve::{host_log, Demux, HookFrame, MainEvent};

/// Exit code for a start-up failure of the host itself (bad arguments, lost parent, bad handshake).
const EXIT_SETUP: i32 = 111;

struct Args {
    name: String,
    parent_pid: u32,
    /// The cgroup v2 directory the service created for this host (`--cgroup`).
    cgroup: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut parent_pid = None;
    let mut cgroup = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next(),
            "--cgroup" => cgroup = args.next().map(PathBuf::from),
            "--parent-pid" => {
                let value = args.next().ok_or("--parent-pid needs a value")?;
                parent_pid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad --parent-pid {value:?}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        parent_pid: parent_pid.ok_or("--parent-pid is required")?,
        cgroup,
    })
}

fn fail(message: &str) -> ! {
    host_log(message);
    std::process::exit(EXIT_SETUP)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| fail(&format!("usage: {e}")));
    if let Err(e) = ParentBond::Pid(args.parent_pid).arm() {
        fail(&format!("not starting: {e}"));
    }
    let in_cgroup = join_cgroup(args.cgroup.as_deref());
    let channel = confine::take_channel_from_stdin()
        .unwrap_or_else(|e| fail(&format!("no channel on stdin: {e}")));
    if let Err(e) = confine::close_inherited_fds(channel.as_raw_fd()) {
        fail(&format!("cannot close inherited fds: {e}"));
    }
    let bond = match confine::contain(args.parent_pid, host_log) {
        Ok(Contained::Plugin { bond }) => bond,
        Err(e) => {
            host_log(&format!(
                "no pid namespace ({e}); the plugin's processes are contained by the process group only"
            ));
            ParentBond::Pid(args.parent_pid)
        }
    };
    line_buffer_stdout();

    let channel_fd = channel.as_raw_fd();
    let demux: &'static Demux = Box::leak(Box::new(Demux::new(Seqpacket::from_fd(channel))));
    let channel_id = ChannelId::of(demux);
    // The main thread's one receive buffer: the handshake's, then every hook's.
    let mut frame = HookFrame::new();
    let (welcome, library, ring) = handshake(demux, &args.name, &mut frame);
    let confined = in_cgroup.and_then(|()| confine_self(&welcome.confinement, &bond, channel_fd));
    if let Err(e) = confined {
        host_log(&format!("cannot confine the host: {e}"));
        let _ = demux.send(&HostMsg::LoadFailed(LoadFailure::Confine(e)));
        exit_now(0);
    }
    drop(bond);
    install_backend(demux);
    hook::report_refused_plugin_errors();
    let api = api_table(welcome.service_version);
    let path = match (&welcome.plugin, &library) {
        (PluginSource::SealedFd, Some(fd)) => {
            PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        }
        (PluginSource::Path(path), _) => PathBuf::from(path),
        (PluginSource::SealedFd, None) => fail("handshake: no library fd"),
    };
    let plugin = match LoadedPlugin::load(&path, api) {
        Ok(plugin) => plugin,
        Err(e) => {
            let _ = demux.send(&HostMsg::LoadFailed(e.0.clone()));
            if let LoadFailure::Open(reason) = e.0 {
                host_log(&format!("cannot load {}: {reason}", path.display()));
            }
            exit_now(0);
        }
    };
    // The mapping keeps the library alive; the fd is no business of the plugin's.
    drop(library);
    if demux
        .send(&HostMsg::Loaded {
            hooks: plugin.hook_set(),
        })
        .is_err()
    {
        exit_now(channel_id.exit_code(demux));
    }
    if let Some(ring) = ring {
        demux.use_ring(ring);
    }
    serve_hooks(demux, &plugin, channel_id, frame);
}

/// The channel's inode, taken before plugin code runs: when the channel fails, the host tells the
/// service hanging up (exit 0) from the plugin closing or replacing the fd (`EXIT_CHANNEL_LOST`).
#[derive(Clone, Copy)]
struct ChannelId(Option<(u64, u64)>);

impl ChannelId {
    fn of(demux: &Demux) -> ChannelId {
        use std::os::fd::AsFd;
        ChannelId(
            rustix::fs::fstat(demux.as_fd())
                .ok()
                .map(|st| (st.st_dev, st.st_ino)),
        )
    }

    fn exit_code(self, demux: &Demux) -> i32 {
        if self.0.is_some() && ChannelId::of(demux).0 == self.0 {
            0
        } else {
            plughost_wire::EXIT_CHANNEL_LOST
        }
    }
}

/// Moves this process into the cgroup the service created for it, before the pid namespace's
/// processes are forked, so that every process of the host (and whatever the plugin forks) is inside
/// it and `cgroup.kill` takes them all. A failure is reported after the handshake, as a confinement
/// failure: no plugin code runs outside the cgroup the service asked for.
fn join_cgroup(cgroup: Option<&std::path::Path>) -> Result<(), String> {
    let Some(dir) = cgroup else {
        return Ok(());
    };
    plughost_sys::cgroup::Cgroup::at(dir)
        .join(std::process::id())
        .map_err(|e| format!("cannot join its cgroup: {e}"))
}

/// Applies what the service asked (`Welcome::confinement`), in an order where each step still has
/// the privilege it needs: session, umask, limits, user (then the parent-death signal again: the
/// kernel clears it on a credential change), no_new_privs, seccomp.
fn confine_self(c: &Confinement, bond: &ParentBond, channel: RawFd) -> Result<(), String> {
    // Already a process-group leader in the fallback mode: then it keeps the group the service
    // kills, which is what matters.
    let _ = confine::new_session();
    confine::private_umask();
    use rustix::process::Resource;
    let limits = [
        (Resource::As, c.limits.address_space, "address space"),
        (Resource::Nofile, c.limits.open_files, "open files"),
        (Resource::Nproc, c.limits.processes, "processes"),
        (Resource::Cpu, c.limits.cpu_seconds, "CPU time"),
    ];
    for (resource, value, what) in limits {
        if let Some(value) = value {
            // For CPU time the hard limit is one second later: SIGXCPU (which the service reports
            // as the limit) comes first, SIGKILL only if the plugin ignores it.
            let hard = if resource == Resource::Cpu {
                value.saturating_add(1)
            } else {
                value
            };
            confine::limit(resource, value, hard)
                .map_err(|e| format!("limit {what} to {value}: {e}"))?;
        }
    }
    if let Some((uid, gid)) = c.user {
        confine::switch_user(uid, gid)
            .map_err(|e| format!("switch to uid {uid} gid {gid}: {e}"))?;
        bond.arm()
            .map_err(|e| format!("parent-death signal after the user switch: {e}"))?;
    }
    confine::no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    if let Some(rules) = &c.filesystem {
        use crate::fs_sandbox::{restrict, Enforcement};
        // An open Landlock refuses is a plain EACCES that nothing else reports: say once what
        // the plugin may open and which configuration keys allow more.
        let rules_line = crate::fs_sandbox::describe(&rules.read, &rules.write);
        match restrict(&rules.read, &rules.write)? {
            Enforcement::Full => host_log(&rules_line),
            Enforcement::Partial => {
                host_log("Landlock is only partly enforced by this kernel");
                host_log(&rules_line);
            }
            Enforcement::NotEnforced => host_log("Landlock not enforced: the kernel lacks it"),
        }
    }
    if c.seccomp {
        crate::seccomp::install(channel)?;
    }
    Ok(())
}

/// The handshake: the service's `Welcome`, the library's fd (for a sealed library) and the call ring
/// (mapped here, used once the plugin is loaded).
fn handshake(
    demux: &Demux,
    name: &str,
    frame: &mut HookFrame,
) -> (plughost_wire::Welcome, Option<OwnedFd>, Option<Ring>) {
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        plugin: name.into(),
    };
    if let Err(e) = demux.send(&HostMsg::Hello(hello)) {
        fail(&format!("handshake failed: {e}"));
    }
    match demux.recv_direct(frame) {
        Ok((ServiceMsg::Welcome(welcome), fds)) if welcome.protocol == PROTOCOL_VERSION => {
            // The fd count was checked against `fds_expected`: library first, then the ring's.
            let mut fds = fds.into_iter();
            let library = if welcome.plugin == PluginSource::SealedFd {
                fds.next()
            } else {
                None
            };
            let ring = match (welcome.call_ring, fds.next(), fds.next(), fds.next()) {
                (true, Some(memory), Some(doorbell), Some(fds)) => {
                    match Ring::attach(HostEnds {
                        memory,
                        doorbell,
                        fds,
                    }) {
                        Ok(ring) => Some(ring),
                        Err(e) => {
                            let reason = format!("cannot map the call ring: {e}");
                            let _ = demux.send(&HostMsg::LoadFailed(LoadFailure::Confine(reason)));
                            exit_now(0);
                        }
                    }
                }
                _ => None,
            };
            // The crash report's memfd comes last. Armed before any plugin code runs; without it
            // a crash is classified as before, only without a stack.
            if welcome.crash_report {
                if let Some(memfd) = fds.next() {
                    if let Err(e) = plughost_runtime::crash::arm(memfd) {
                        host_log(&format!("no crash reports: {e}"));
                    }
                }
            }
            (welcome, library, ring)
        }
        Ok((ServiceMsg::Welcome(welcome), _)) => fail(&format!(
            "service speaks protocol {}, we speak {PROTOCOL_VERSION}",
            welcome.protocol
        )),
        Ok((ServiceMsg::Shutdown, _)) => exit_now(0),
        Ok((other, _)) => fail(&format!("handshake: unexpected {other:?}")),
        Err(e) => fail(&format!("handshake failed: {e}")),
    }
}

fn serve_hooks(
    demux: &'static Demux,
    plugin: &LoadedPlugin,
    channel_id: ChannelId,
    mut frame: HookFrame,
) -> ! {
    loop {
        match demux.next_hook(&mut frame) {
            MainEvent::Hook => {
                let (id, hook) = match frame.hook() {
                    Ok(hook) => hook,
                    // Checked when it was received: not reached.
                    Err(e) => {
                        host_log(&format!("bad hook frame: {e}"));
                        exit_now(channel_id.exit_code(demux))
                    }
                };
                let outcome = hook::call(&plugin.hooks, &hook);
                let (status, message) = outcome.map_or((0, None), |o| (o.status, o.message));
                // A positive status is outside the contract; report it as a failure the service can
                // name rather than letting it pass as success.
                let status = if status > 0 { -libc::EPROTO } else { status };
                if demux
                    .answer_hook(&HostMsg::HookDone {
                        id,
                        status,
                        message,
                    })
                    .is_err()
                {
                    exit_now(channel_id.exit_code(demux));
                }
            }
            MainEvent::Closed => exit_now(channel_id.exit_code(demux)),
        }
    }
}

/// Ends the process without running C or Rust destructors: plugin threads may still be running, and
/// nothing they can touch is freed before the process is gone.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    confine::exit_immediately(code)
}

/// Plugins print with C stdio; on a pipe it is fully buffered, so lines would reach the service's log
/// late or not at all. Make C's stdout line-buffered.
fn line_buffer_stdout() {
    confine::line_buffer_c_stdout();
}
