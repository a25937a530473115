//! `plughost-host`: runs exactly one plugin, for one service, and dies with it.
//!
//! Started by the supervisor as `plughost-host --name NAME --parent-pid PID`, with the channel to the
//! service on stdin and stdout/stderr on pipes that the service logs (so nothing the plugin prints can
//! touch the channel). Before any plugin code runs it:
//! 1. arms `PR_SET_PDEATHSIG(SIGKILL)` and checks its parent is still the service;
//! 2. moves the channel off stdin and closes every other inherited fd;
//! 3. makes a pid namespace whose init runs the plugin (see `plughost_sys::confine`), or, without the
//!    privilege, stays in the process group the service gave it and says so once.
//!
//! Then it shakes hands, loads the plugin, and serves hooks on the main thread (see `serve.rs` for the
//! thread design). It exits when the channel closes or the service says `Shutdown`.

mod serve;

use std::path::Path;

use plughost_host::{api::api_table, hook, install_backend, LoadedPlugin};
use plughost_sys::confine::{self, NamespaceRole};
use plughost_sys::Seqpacket;
use plughost_wire::{Hello, HostMsg, LoadFailure, ServiceMsg, PROTOCOL_VERSION};

use serve::{host_log, Demux, MainEvent};

/// Exit code for a start-up failure of the host itself (bad arguments, lost parent, bad handshake).
const EXIT_SETUP: i32 = 111;

struct Args {
    name: String,
    parent_pid: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut parent_pid = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next(),
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
    })
}

fn fail(message: &str) -> ! {
    host_log(message);
    std::process::exit(EXIT_SETUP)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| fail(&format!("usage: {e}")));
    if let Err(e) = confine::bind_to_parent(args.parent_pid) {
        fail(&format!("not starting: {e}"));
    }
    let channel = confine::take_channel_from_stdin()
        .unwrap_or_else(|e| fail(&format!("no channel on stdin: {e}")));
    if let Err(e) = confine::close_inherited_fds(std::os::fd::AsRawFd::as_raw_fd(&channel)) {
        fail(&format!("cannot close inherited fds: {e}"));
    }
    match confine::enter_pid_namespace() {
        Ok(NamespaceRole::Outer { inner }) => {
            drop(channel);
            let exit = confine::wait_child(inner)
                .unwrap_or_else(|e| fail(&format!("lost the plugin process: {e}")));
            confine::mirror_exit(exit);
        }
        Ok(NamespaceRole::Inner) => {}
        Err(e) => host_log(&format!(
            "no pid namespace ({e}); the plugin's processes are contained by the process group only"
        )),
    }
    line_buffer_stdout();

    let demux: &'static Demux = Box::leak(Box::new(Demux::new(Seqpacket::from_fd(channel))));
    let welcome = handshake(demux, &args.name);
    install_backend(demux);
    let api = api_table(welcome.service_version);
    let plugin = match LoadedPlugin::load(Path::new(&welcome.plugin_path), api) {
        Ok(plugin) => plugin,
        Err(e) => {
            let _ = demux.send(&HostMsg::LoadFailed(e.0.clone()));
            if let LoadFailure::Open(reason) = e.0 {
                host_log(&format!("cannot load {}: {reason}", welcome.plugin_path));
            }
            exit_now(0);
        }
    };
    if demux
        .send(&HostMsg::Loaded {
            hooks: plugin.hook_set(),
        })
        .is_err()
    {
        exit_now(0);
    }
    serve_hooks(demux, &plugin);
}

fn handshake(demux: &Demux, name: &str) -> plughost_wire::Welcome {
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        plugin: name.into(),
    };
    if let Err(e) = demux.send(&HostMsg::Hello(hello)) {
        fail(&format!("handshake failed: {e}"));
    }
    match demux.recv_direct() {
        Ok(ServiceMsg::Welcome(welcome)) if welcome.protocol == PROTOCOL_VERSION => welcome,
        Ok(ServiceMsg::Welcome(welcome)) => fail(&format!(
            "service speaks protocol {}, we speak {PROTOCOL_VERSION}",
            welcome.protocol
        )),
        Ok(ServiceMsg::Shutdown) => exit_now(0),
        Ok(other) => fail(&format!("handshake: unexpected {other:?}")),
        Err(e) => fail(&format!("handshake failed: {e}")),
    }
}

fn serve_hooks(demux: &'static Demux, plugin: &LoadedPlugin) -> ! {
    loop {
        match demux.next_hook() {
            MainEvent::Hook(id, hook) => {
                let outcome = hook::call(&plugin.hooks, &hook);
                let (status, message) = outcome.map_or((0, None), |o| (o.status, o.message));
                // A positive status is outside the contract; report it as a failure the service can
                // name rather than letting it pass as success.
                let status = if status > 0 { -libc::EPROTO } else { status };
                if demux
                    .send(&HostMsg::HookDone {
                        id,
                        status,
                        message,
                    })
                    .is_err()
                {
                    exit_now(0);
                }
            }
            MainEvent::Closed => exit_now(0),
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
