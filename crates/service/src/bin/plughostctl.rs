//! `plughostctl`: the command-line client of `plughostd`. One request per run over the control
//! socket (`$PLUGHOST_SOCKET`, else `--socket`, else `/run/plughost/plughostd.sock`); `exec` and
//! `csession run` hand the daemon this process's stdin, stdout and stderr, so the program reads and
//! writes them directly, and exit with the program's exit code. Errors go to stderr, worded as the
//! daemon (and `PLUGIN_ABI.md`, "User-visible errors") words them, and exit 1.
#![deny(unsafe_code)]

use std::io::{BufReader, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use plughost_service::{
    decode, encode, read_line, DistroInfo, PluginRow, Reply, Request, VmInfo, MAX_REPLY,
};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

#[derive(Parser)]
#[command(
    name = "plughostctl",
    version,
    about = "Drive plughostd, the plughost reference service"
)]
struct Cli {
    /// The daemon's socket ($PLUGHOST_SOCKET wins).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the reply as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Your session's VM.
    Vm {
        #[command(subcommand)]
        action: VmAction,
    },
    /// Registered distributions (root filesystems run as containers in your VM).
    Distro {
        #[command(subcommand)]
        action: DistroAction,
    },
    /// Run a command in your VM (started on demand) or in a running distribution.
    Exec {
        #[arg(long)]
        distro: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Container sessions, each with a lazily started session VM.
    Csession {
        #[command(subcommand)]
        action: CsessionAction,
    },
    /// The configured plugins (root only).
    Plugins,
    /// Manage one plugin (root only).
    Plugin {
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// The plugins' status in the OpenMetrics text format (root only).
    Metrics,
    /// Stop the daemon (root only).
    Shutdown,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Clear a crash latch (or backoff) and start the plugin again.
    Restart { name: String },
    /// Stop the plugin; it gets no hooks until enabled.
    Disable { name: String },
    /// Start a disabled plugin again.
    Enable { name: String },
}

#[derive(Subcommand)]
enum VmAction {
    Start,
    Stop,
    Status,
}

#[derive(Subcommand)]
enum DistroAction {
    Register {
        name: String,
        #[arg(long)]
        rootfs: PathBuf,
        #[arg(long)]
        package: Option<String>,
    },
    Unregister {
        name: String,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum CsessionAction {
    Create {
        name: String,
        /// The application the session is for: the session stops when it exits (default: the
        /// nearest ancestor of plughostctl that runs as you, usually your shell; none under
        /// `sudo -u`, and the session then lives until `csession stop`).
        #[arg(long, value_name = "PID")]
        app_pid: Option<u32>,
    },
    Run {
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    Stop {
        name: String,
    },
}

fn request(command: Command) -> anyhow::Result<Request> {
    Ok(match command {
        Command::Vm { action } => match action {
            VmAction::Start => Request::VmStart,
            VmAction::Stop => Request::VmStop,
            VmAction::Status => Request::VmStatus,
        },
        Command::Distro { action } => match action {
            DistroAction::Register {
                name,
                rootfs,
                package,
            } => {
                let rootfs = std::path::absolute(&rootfs)
                    .with_context(|| format!("bad --rootfs {}", rootfs.display()))?;
                Request::DistroRegister {
                    name,
                    rootfs,
                    package,
                }
            }
            DistroAction::Unregister { name } => Request::DistroUnregister { name },
            DistroAction::Start { name } => Request::DistroStart { name },
            DistroAction::Stop { name } => Request::DistroStop { name },
            DistroAction::List => Request::DistroList,
        },
        Command::Exec { distro, command } => Request::Exec {
            distro,
            argv: command,
        },
        Command::Csession { action } => match action {
            CsessionAction::Create { name, app_pid } => Request::CsessionCreate {
                name,
                // plughostctl itself exits at once: the session belongs to whoever ran it.
                application_pid: app_pid.or_else(own_ancestor),
            },
            CsessionAction::Run { name, command } => Request::CsessionRun {
                name,
                argv: command,
            },
            CsessionAction::Stop { name } => Request::CsessionStop { name },
        },
        Command::Plugins => Request::Plugins,
        Command::Plugin { action } => match action {
            PluginCommand::Restart { name } => Request::PluginRestart { name },
            PluginCommand::Disable { name } => Request::PluginDisable { name },
            PluginCommand::Enable { name } => Request::PluginEnable { name },
        },
        Command::Metrics => Request::Metrics,
        Command::Shutdown => Request::Shutdown,
    })
}

fn send(stream: &UnixStream, request: &Request) -> anyhow::Result<()> {
    let line = encode(request);
    if line.len() > plughost_service::MAX_LINE {
        bail!("request too long");
    }
    let mut sent = 0;
    if request.takes_stdio() {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        let fds = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        sent = rustix::net::sendmsg(
            stream,
            &[IoSlice::new(&line)],
            &mut control,
            SendFlags::empty(),
        )
        .context("send the request")?;
    }
    let mut rest = stream;
    rest.write_all(&line[sent..]).context("send the request")?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plughostctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    let socket = plughost_service::socket_path(cli.socket);
    let request = request(cli.command)?;
    let stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot reach plughostd at {} (is it running?)",
            socket.display()
        )
    })?;
    let sent = send(&stream, &request);
    // A refused connection is answered before the request is read: that answer, when there is
    // one, says more than the failed send ("Broken pipe").
    let line = match (sent, read_line(BufReader::new(&stream), MAX_REPLY)) {
        (_, Ok(line)) => line,
        (Err(e), Err(_)) => return Err(e),
        (Ok(()), Err(e)) => return Err(e).context("read the reply"),
    };
    let reply: Reply = decode(&line, MAX_REPLY).context("read the reply")?;
    if json && !matches!(reply, Reply::Exited { .. } | Reply::Error { .. }) {
        println!("{}", String::from_utf8_lossy(&line).trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    Ok(match reply {
        Reply::Error { message, .. } => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
        Reply::Exited { code } => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        Reply::Done { message } => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Reply::Vm(vm) => {
            print_vm(&vm);
            ExitCode::SUCCESS
        }
        Reply::Distro(d) => {
            print_distros(std::slice::from_ref(&d));
            ExitCode::SUCCESS
        }
        Reply::Distros { distros } => {
            print_distros(&distros);
            ExitCode::SUCCESS
        }
        Reply::CsessionCreated { id, name } => {
            println!("container session '{name}' created (id {id})");
            ExitCode::SUCCESS
        }
        Reply::Plugins { plugins } => {
            print_plugins(&plugins);
            ExitCode::SUCCESS
        }
        Reply::Metrics { text } => {
            print!("{text}");
            ExitCode::SUCCESS
        }
    })
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn print_vm(vm: &VmInfo) {
    let state = if vm.running { "running" } else { "stopped" };
    println!(
        "VM of {} (session {}): {state}, init pid {}, idle timeout {} s",
        vm.user,
        vm.session_id,
        dash(vm.init_pid),
        vm.idle_timeout_secs
    );
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn print_distros(distros: &[DistroInfo]) {
    let rows = distros
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                plughost_service::parse_uuid_hex(&d.id)
                    .map_or(d.id.clone(), |id| plughost_service::uuid_text(&id)),
                if d.running { "running" } else { "stopped" }.into(),
                dash(d.init_pid),
                if d.flavor.is_empty() {
                    "-".into()
                } else {
                    format!("{} {}", d.flavor, d.version)
                },
                if d.package.is_empty() {
                    "-".into()
                } else {
                    d.package.clone()
                },
                d.rootfs.display().to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "ID", "STATE", "INIT", "OS", "PACKAGE", "ROOTFS"],
        rows,
    );
}

fn print_plugins(plugins: &[PluginRow]) {
    let rows = plugins
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.isolation.clone(),
                dash(p.host_pid),
                if p.detail.is_empty() {
                    p.state.clone()
                } else {
                    p.detail.clone()
                },
                p.crashes.to_string(),
                p.restarts.to_string(),
                p.path.display().to_string(),
                p.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ISOLATION",
            "HOST PID",
            "STATE",
            "CRASHES",
            "RESTARTS",
            "PATH",
            "LAST ERROR",
        ],
        rows,
    );
}

/// The nearest ancestor that runs as our real uid (the shell or program that ran us, usually): a
/// container session's application by default. None when no ancestor is ours (`sudo -u`): the
/// session is then tied to no process.
fn own_ancestor() -> Option<u32> {
    let me = rustix::process::getuid().as_raw();
    let field = |pid: u32, key: &str| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        line.split_whitespace().next()?.parse().ok()
    };
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..64 {
        if pid <= 1 {
            return None;
        }
        if field(pid, "Uid:") == Some(me) {
            return Some(pid);
        }
        pid = field(pid, "PPid:")?;
    }
    None
}
