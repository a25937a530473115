//! `plughostctl`: the command-line client of `plughostd`. One request per run over the control
//! socket (`--socket`, else `$PLUGHOST_SOCKET`, else `/run/plughost/plughostd.sock`); `exec` and
//! `csession run` hand the daemon this process's stdin, stdout and stderr, so the program reads and
//! writes them directly, and exit with the program's exit code. Errors go to stderr, worded as the
//! daemon (and `PLUGIN_ABI.md`, "User-visible errors") words them, and exit 1.

use std::io::{BufReader, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};
use plughost_service::{
    decode, encode, read_line, DistroInfo, PluginRow, Reply, Request, VmInfo, MAX_REPLY,
};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

#[derive(Parser)]
#[command(
    name = "plughostctl",
    version,
    about = "Drive plughostd, the plughost reference service",
    long_about = "Drive plughostd, the plughost reference service: your session's VM, registered \
distributions, container sessions, and (as root) the plugins. One request per run over plughostd's \
control socket; errors go to stderr and exit 1, a plugin's veto or crash worded as PLUGIN_ABI.md \
words it.",
    after_help = "The socket is --socket, else $PLUGHOST_SOCKET, else /run/plughost/plughostd.sock."
)]
struct Cli {
    /// plughostd's control socket [default: $PLUGHOST_SOCKET, else /run/plughost/plughostd.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the reply as one JSON object (for scripts; exec and csession run are unaffected).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Your session's VM: start, stop or show it.
    Vm {
        #[command(subcommand)]
        action: VmAction,
    },
    /// Registered distributions (root filesystems run as containers in your VM).
    Distro {
        #[command(subcommand)]
        action: DistroAction,
    },
    /// Run a command in your VM (started on demand) or in a running distribution, as you.
    ///
    /// The command comes after `--`: `plughostctl exec -- id`. Its stdin, stdout and stderr are
    /// this terminal's, and plughostctl exits with its exit code (128 + signal when signalled).
    Exec {
        /// Run it in this running distribution instead of the VM itself.
        #[arg(long, value_name = "NAME")]
        distro: Option<String>,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Container sessions, each with a lazily started session VM.
    Csession {
        #[command(subcommand)]
        action: CsessionAction,
    },
    /// The configured plugins: state, host pid, crashes, restarts, last error (root only).
    Plugins,
    /// Restart, disable or enable one plugin (root only).
    Plugin {
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// The plugins' status in the OpenMetrics text format, for a metrics scraper (root only).
    Metrics,
    /// Stop the daemon gracefully: distributions, VMs and sessions get their hooks (root only).
    Shutdown,
    /// Writes the man pages and shell completions beneath DIR (for `make install`).
    #[command(name = "__generate-docs", hide = true)]
    GenerateDocs {
        /// The share directory, e.g. /usr/local/share.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Clear a crash latch (or backoff) and start the plugin again.
    Restart {
        /// The plugin's name in plughostd.toml.
        name: String,
    },
    /// Stop the plugin; it gets no hooks until enabled.
    Disable {
        /// The plugin's name in plughostd.toml.
        name: String,
    },
    /// Start a disabled plugin again.
    Enable {
        /// The plugin's name in plughostd.toml.
        name: String,
    },
}

#[derive(Subcommand)]
enum VmAction {
    /// Start your VM (plugins get on_vm_started and may veto it).
    Start,
    /// Stop your VM, its distributions first.
    Stop,
    /// Show whether your VM runs, its init's pid and its idle timeout.
    Status,
}

#[derive(Subcommand)]
enum DistroAction {
    /// Register a root filesystem as a distribution of your session (plugins are told).
    Register {
        /// The distribution's name, unique in your session.
        name: String,
        /// The directory holding the distribution's root filesystem.
        #[arg(long, value_name = "DIR")]
        rootfs: PathBuf,
        /// A package name plugins are told about (free text).
        #[arg(long, value_name = "P")]
        package: Option<String>,
    },
    /// Forget a registered (stopped) distribution.
    Unregister {
        /// The distribution's name.
        name: String,
    },
    /// Start a distribution as a container in your VM (the VM starts on demand).
    Start {
        /// The distribution's name.
        name: String,
    },
    /// Stop a running distribution.
    Stop {
        /// The distribution's name.
        name: String,
    },
    /// List your registered distributions and whether they run.
    List,
}

#[derive(Subcommand)]
enum CsessionAction {
    /// Create a container session (its session VM starts on first `run`).
    Create {
        /// The container session's name.
        name: String,
        /// The application the session is for: the session stops when it exits (default: the
        /// nearest ancestor of plughostctl that runs as you, usually your shell; none under
        /// `sudo -u`, and the session then lives until `csession stop`).
        #[arg(long, value_name = "PID")]
        app_pid: Option<u32>,
    },
    /// Run a command in the container session's session VM, as you.
    ///
    /// The command comes after `--`: `plughostctl csession run NAME -- id`.
    Run {
        /// The container session's name.
        name: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Stop the container session and its session VM.
    Stop {
        /// The container session's name.
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
        Command::GenerateDocs { .. } => bail!("__generate-docs is not a request"),
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_with_tip(e),
    };
    if let Command::GenerateDocs { dir } = &cli.command {
        return match plughost_service::docs::generate(Cli::command(), "1", dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plughostctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plughostctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// clap's error, plus the `--` that `exec` and `csession run` need before the command (clap's
/// own message only says the word was unexpected).
fn exit_with_tip(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |word: &str| args.iter().any(|a| a == word);
    let usage = if has("csession") && has("run") {
        Some("plughostctl csession run NAME --")
    } else if has("exec") {
        Some("plughostctl exec [--distro NAME] --")
    } else {
        None
    };
    let stray = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => Some(arg.clone()),
        _ => None,
    };
    let missing = matches!(
        e.kind(),
        ErrorKind::UnknownArgument | ErrorKind::MissingRequiredArgument
    );
    if let (Some(usage), true, false) = (usage, missing, has("--")) {
        let _ = e.print();
        let example = stray.unwrap_or_else(|| "CMD".into());
        eprintln!("\ntip: put the command after `--`: `{usage} {example} [ARGS...]`");
        std::process::exit(2);
    }
    e.exit()
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
            eprintln!("{}", shown(&message));
            ExitCode::FAILURE
        }
        Reply::Exited { code } => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        Reply::Done { message } => {
            println!("{}", shown(&message));
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

/// Text from the daemon as it may reach a terminal: a plugin's veto or crash message, a user's
/// path, package or os-release fields. Each line's control characters are shown escaped
/// (`\x1b`, `\r`...), so none of it can drive the terminal (root's too) or forge a line.
fn shown(text: &str) -> String {
    text.split('\n')
        .map(|line| plughost_service::escape_control(line.as_bytes()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn print_vm(vm: &VmInfo) {
    let state = if vm.running { "running" } else { "stopped" };
    println!(
        "VM of {} (session {}): {state}, init pid {}, idle timeout {} s",
        shown(&vm.user),
        vm.session_id,
        dash(vm.init_pid),
        vm.idle_timeout_secs
    );
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.iter().map(|cell| shown(cell)).collect())
        .collect();
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
                d.id.clone(),
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

/// One row per plugin. A crashed or failed plugin's STATE is just that word: its error is in
/// LAST ERROR, once (the detail would repeat it).
fn plugin_rows(plugins: &[PluginRow]) -> Vec<Vec<String>> {
    plugins
        .iter()
        .map(|p| {
            let says_error = matches!(p.state.as_str(), "crashed" | "failed");
            vec![
                p.name.clone(),
                p.isolation.clone(),
                dash(p.host_pid),
                if p.detail.is_empty() || says_error {
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
        .collect()
}

fn print_plugins(plugins: &[PluginRow]) {
    let rows = plugin_rows(plugins);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and argument a user can see says what it is (`--help`, the man pages).
    #[test]
    fn every_subcommand_and_argument_has_a_description() {
        let missing = plughost_service::docs::undocumented(Cli::command());
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn a_failed_plugin_row_shows_its_error_once() {
        let error = "plugin 'f' failed to load: /usr/lib/plughost/f.so: cannot open shared object file: No such file or directory";
        let row = PluginRow {
            name: "f".into(),
            path: "/usr/lib/plughost/f.so".into(),
            isolation: "process".into(),
            host_pid: None,
            state: "failed".into(),
            detail: format!("failed: {error}"),
            crashes: 0,
            restarts: 0,
            uptime_secs: None,
            hooks_served: 0,
            api_calls: 0,
            latency: Vec::new(),
            last_error: Some(error.into()),
            last_crash: None,
        };
        let busy = PluginRow {
            name: "b".into(),
            state: "busy".into(),
            detail: "busy in on_vm_started for 120 ms".into(),
            last_error: None,
            ..row.clone()
        };
        let rows = plugin_rows(&[row, busy]);
        let failed = rows[0].join("  ");
        assert_eq!(
            failed.matches("cannot open shared object").count(),
            1,
            "{failed}"
        );
        assert_eq!(rows[0][3], "failed");
        assert_eq!(rows[1][3], "busy in on_vm_started for 120 ms");
    }
}
