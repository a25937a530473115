//! The two real programs the daemon demo drives: a `plughostd` child process, and `plughostctl`
//! runs shown as `$ plughostctl ARGS` followed by their output, indented.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use plughost_service::{decode, Reply, MAX_REPLY};

/// The other user the demo acts as: `nobody` on Debian (no passwd entry is needed).
pub const OTHER_UID: u32 = 65534;

/// Who runs a `plughostctl` command: the daemon gives each uid its own session.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Root,
    Other,
}

/// A running `plughostd`; SIGKILLed when dropped if it still runs (everything it started dies
/// with it).
pub struct Daemon {
    child: Child,
    log: PathBuf,
    /// How much of the log [`Daemon::new_log_lines`] has returned.
    log_shown: usize,
}

impl Daemon {
    /// Starts `plughostd --config CONFIG --state-dir STATE --socket SOCKET` with
    /// `PLUGHOST_HOST=host`, its log (stderr) in `log`, and waits until it answers on the socket.
    pub fn start(
        plughostd: &Path,
        host: &Path,
        config: &Path,
        state_dir: &Path,
        socket: &Path,
        log: PathBuf,
    ) -> Result<Daemon> {
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(plughostd);
        command
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--socket")
            .arg(socket)
            .env_remove("PLUGHOST_SOCKET")
            .env("PLUGHOST_HOST", host)
            // The default, unless the caller's environment says otherwise: the demo shows some of
            // the info lines.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", plughostd.display()))?;
        let mut daemon = Daemon {
            child,
            log,
            log_shown: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "plughostd exited at start ({status}); its log:\n{}",
                    daemon.log_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "plughostd did not answer on {} within 20 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -HUP`: plughostd reloads its config's plugin list.
    pub fn reload(&self) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid())?)
            .context("plughostd has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::HUP)
            .context("cannot send SIGHUP to plughostd")
    }

    /// Waits up to `limit` for the daemon to exit.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "plughostd did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines written since the last call, as messages: without the timestamp, level and
    /// module (`2025-01-01T00:00:00.000000Z  INFO plughostd::daemon: text` -> `INFO text`).
    pub fn new_log_lines(&mut self) -> Vec<String> {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let new = lines
            .get(self.log_shown..)
            .unwrap_or_default()
            .iter()
            .map(|line| short_log_line(line))
            .collect();
        self.log_shown = lines.len();
        new
    }
}

fn short_log_line(line: &str) -> String {
    let mut words = line.split_whitespace();
    let (Some(_time), Some(level), Some(target)) = (words.next(), words.next(), words.next())
    else {
        return line.to_owned();
    };
    if !target.ends_with(':') {
        return line.to_owned();
    }
    let rest = line
        .split_once(target)
        .map_or("", |(_, rest)| rest)
        .trim_start();
    format!("{level} {rest}")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// If the demo dies, plughostd (and so everything it started) dies too.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec; prctl(PR_SET_PDEATHSIG) is one
    // async-signal-safe system call, and nothing is allocated or locked.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// What one `plughostctl` run did.
pub struct Outcome {
    /// Its exit code (-1 if a signal ended it).
    pub code: i32,
    /// Its stdout and stderr, interleaved as written.
    pub output: String,
    pub elapsed: Duration,
}

/// Runs `plughostctl` against the demo's daemon.
pub struct Ctl {
    pub exe: PathBuf,
    pub socket: PathBuf,
    /// The demo's working directory, shown as `$WORK`.
    pub work: String,
}

impl Ctl {
    fn command(&self, who: Who, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .env("PLUGHOST_SOCKET", &self.socket)
            .args(args)
            .stdin(Stdio::null());
        if who == Who::Other {
            command.uid(OTHER_UID).gid(OTHER_UID);
        }
        command
    }

    /// Runs `plughostctl ARGS` as `who`, output and errors through one pipe.
    pub fn run(&self, who: Who, args: &[&str]) -> Result<Outcome> {
        let (read, write) = rustix::pipe::pipe().context("cannot make a pipe")?;
        let started = Instant::now();
        let mut child = {
            // The command holds the pipe's write ends until it is dropped, at the end of this
            // block: reading below then ends when plughostctl (and whatever it handed them to)
            // has closed them.
            let mut command = self.command(who, args);
            command
                .stdout(Stdio::from(write.try_clone()?))
                .stderr(Stdio::from(write));
            command
                .spawn()
                .with_context(|| format!("cannot run {}", self.exe.display()))?
        };
        let mut output = Vec::new();
        std::fs::File::from(read)
            .read_to_end(&mut output)
            .context("cannot read plughostctl's output")?;
        let status = child.wait().context("cannot wait for plughostctl")?;
        Ok(Outcome {
            code: status.code().unwrap_or(-1),
            output: String::from_utf8_lossy(&output).into_owned(),
            elapsed: started.elapsed(),
        })
    }

    /// Runs `plughostctl ARGS` as `who` and shows it: the command line, then its output indented,
    /// then its exit status if it failed.
    pub fn show(&self, who: Who, args: &[&str]) -> Result<Outcome> {
        let outcome = self.run(who, args)?;
        let prompt = match who {
            Who::Root => String::new(),
            Who::Other => format!("(uid {OTHER_UID}) "),
        };
        println!(
            "{prompt}$ plughostctl {}",
            shell_words(args).replace(&self.work, "$WORK")
        );
        print_indented(&abbreviate(&outcome.output, &self.work));
        if outcome.code != 0 {
            println!("    [exit status {}]", outcome.code);
        }
        Ok(outcome)
    }

    /// Like [`Ctl::show`], and expects success.
    pub fn show_ok(&self, who: Who, args: &[&str]) -> Result<Outcome> {
        let outcome = self.show(who, args)?;
        ensure!(
            outcome.code == 0,
            "`plughostctl {}` failed (exit status {}): {}",
            shell_words(args),
            outcome.code,
            outcome.output.trim_end()
        );
        Ok(outcome)
    }

    /// Like [`Ctl::show`], and expects a failure that prints exactly `message`.
    pub fn show_error(&self, who: Who, args: &[&str], message: &str) -> Result<Outcome> {
        let outcome = self.show(who, args)?;
        ensure!(
            outcome.code != 0,
            "`plughostctl {}` succeeded; expected it to fail with {message:?}",
            shell_words(args)
        );
        ensure!(
            outcome.output.trim_end() == message,
            "`plughostctl {}`: expected the error {message:?}, got {:?}",
            shell_words(args),
            outcome.output.trim_end()
        );
        Ok(outcome)
    }

    /// Like [`Self::show_error`], for an error that starts with `prefix`.
    pub fn show_error_starting(&self, who: Who, args: &[&str], prefix: &str) -> Result<Outcome> {
        let outcome = self.show(who, args)?;
        ensure!(
            outcome.code != 0 && outcome.output.starts_with(prefix),
            "`plughostctl {}`: expected an error starting {prefix:?}, got {:?} (exit {})",
            shell_words(args),
            outcome.output.trim_end(),
            outcome.code
        );
        Ok(outcome)
    }

    /// Runs `plughostctl --json ARGS` as `who` without showing it, for the demo's own checks.
    pub fn query(&self, who: Who, args: &[&str]) -> Result<Reply> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let outcome = self.run(who, &all)?;
        ensure!(
            outcome.code == 0,
            "`plughostctl {}` failed (exit status {}): {}",
            shell_words(&all),
            outcome.code,
            outcome.output.trim_end()
        );
        decode(outcome.output.as_bytes(), MAX_REPLY).with_context(|| {
            format!(
                "`plughostctl {}` printed no reply: {:?}",
                shell_words(&all),
                outcome.output
            )
        })
    }
}

/// Prints `text` indented by four spaces (empty lines stay empty).
pub fn print_indented(text: &str) {
    for line in text.lines() {
        if line.trim().is_empty() {
            println!();
        } else {
            println!("    {line}");
        }
    }
}

/// `output` with `work` written `$WORK`; a table (`NAME  ...` header) is realigned afterwards.
fn abbreviate(output: &str, work: &str) -> String {
    let short = output.replace(work, "$WORK");
    let mut lines = output.lines();
    let Some(header) = lines.next().filter(|h| h.starts_with("NAME  ")) else {
        return short;
    };
    // Columns start where a header cell starts: after two spaces (cells hold single spaces).
    let header: Vec<char> = header.chars().collect();
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| i == 0 || (i >= 2 && header[i] != ' ' && header[i - 2..i] == [' ', ' ']))
        .collect();
    let rows: Vec<Vec<String>> = output
        .lines()
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            starts
                .iter()
                .enumerate()
                .map(|(n, &start)| {
                    let end = starts
                        .get(n + 1)
                        .map_or(chars.len(), |&next| next.min(chars.len()));
                    let cell: String = chars
                        .get(start.min(end)..end)
                        .unwrap_or_default()
                        .iter()
                        .collect();
                    cell.trim_end().replace(work, "$WORK")
                })
                .collect()
        })
        .collect();
    let mut widths = vec![0; starts.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        table += cells.join("  ").trim_end();
        table.push('\n');
    }
    table
}

/// `args` as one would type them in a shell (single quotes where needed).
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
            if plain {
                (*arg).to_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
