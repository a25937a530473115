//! Harness for the end-to-end tests: a real `plughostd` per test (own temp state dir, socket and
//! config), driven through the real `plughostctl`, with C test plugins from `plugins/c` compiled by
//! `plughost_tests::c_plugin` and a small distribution rootfs made from this machine's binaries.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses a different subset
pub use plughost_tests::{c_plugin, eventually, field, host_binary, Fixture};

/// How `crash_in_vm_started`'s crash reads (then the library offset, which varies by compiler).
pub const CRASH: &str =
    "plugin 'crash_in_vm_started' crashed: killed by signal SIGSEGV (address 0x0) \
                         in on_vm_started (crash_in_vm_started.so+0x";

/// Prints why and returns false unless we are root (CI runs as root: nothing skips there).
pub fn need_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    println!("skipped: needs root ({test} makes namespaces and mounts)");
    false
}

pub fn plughostd() -> &'static str {
    env!("CARGO_BIN_EXE_plughostd")
}

pub fn plughostctl() -> &'static str {
    env!("CARGO_BIN_EXE_plughostctl")
}

fn world_readable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Plugin hosts run as `nobody` (the supervisor's default for a root service): they must be able
/// to write the fixture's log.
fn world_writable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

/// A plugin line of the config: `(name, library, isolation)`, with the fixture's env.
pub struct PluginSpec {
    pub name: String,
    pub path: PathBuf,
    pub in_process: bool,
    /// `activation = "lazy"`.
    pub lazy: bool,
}

pub fn c(name: &str) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: c_plugin(name),
        in_process: false,
        lazy: false,
    }
}

/// A test's world: temp dir (socket, state, config, daemon log) and the plugin fixture.
pub struct World {
    pub dir: tempfile::TempDir,
    pub fx: Fixture,
    pub plugins: Vec<PluginSpec>,
    pub idle_timeout_secs: u64,
    /// Top-level lines added to the config.
    pub extra_config: String,
    /// Give plughostd itself the fixture's PH_LOG and PH_DIR (in-process plugins see its
    /// environment, not their configured one).
    pub daemon_has_plugin_env: bool,
}

impl World {
    pub fn new(plugins: Vec<PluginSpec>) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        world_readable(dir.path());
        let fx = Fixture::new();
        world_writable(fx.dir.path());
        World {
            dir,
            fx,
            plugins,
            idle_timeout_secs: 0,
            extra_config: String::new(),
            daemon_has_plugin_env: false,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("plughostd.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("plughostd.toml")
    }

    /// Rewrites the config file (for reload tests).
    pub fn write_config_now(&self) {
        self.write_config();
    }

    fn write_config(&self) {
        let mut text = format!("idle_timeout_secs = {}\n", self.idle_timeout_secs);
        text += &self.extra_config;
        text += &format!("host_binary = {:?}\n", host_binary().display().to_string());
        for p in &self.plugins {
            text += &format!(
                "[[plugin]]\nname = {:?}\npath = {:?}\nisolation = {:?}\nactivation = {:?}\nenv = {{ PH_LOG = {:?}, PH_DIR = {:?} }}\nwrite_paths = [{:?}]\n",
                p.name,
                p.path.display().to_string(),
                if p.in_process { "in-process" } else { "process" },
                if p.lazy { "lazy" } else { "eager" },
                self.fx.log.display().to_string(),
                self.fx.dir.path().display().to_string(),
                self.fx.dir.path().display().to_string(),
            );
        }
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Starts a daemon and waits until it answers.
    pub fn start(&self) -> Daemon {
        self.write_config();
        self.start_command(self.daemon_command())
    }

    /// Starts `command` (from [`World::daemon_command`], adjusted) on the config as it is, and
    /// waits until it answers on [`World::socket`].
    pub fn start_command(&self, mut command: Command) -> Daemon {
        let log = self.dir.path().join(format!(
            "plughostd.{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("spawn plughostd");
        let mut daemon = Daemon {
            child,
            log,
            socket: self.socket(),
            public_ctl: std::sync::OnceLock::new(),
            pid_file: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                break;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("plughostd exited ({status}):\n{}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "plughostd did not come up:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon
    }

    /// Starts a daemon through `sh -c "<prefix>; exec plughostd ..."` (a launcher that leaves it,
    /// say, an inherited fd), and waits until it answers.
    pub fn start_via_shell(&self, prefix: &str) -> Daemon {
        self.write_config();
        let direct = self.daemon_command();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("{prefix}; exec \"$@\""))
            .arg("sh")
            .arg(direct.get_program())
            .args(direct.get_args())
            .env_remove("PLUGHOST_SOCKET")
            .env("PLUGHOST_HOST", host_binary())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        self.start_command(command)
    }

    /// Starts a daemon on a pseudo-terminal of its own (`script -qfec`), as from an interactive
    /// root shell, and waits until it answers. Stop it with `shutdown`.
    pub fn start_under_terminal(&self) -> Daemon {
        self.write_config();
        let direct = self.daemon_command();
        // The daemon is script's grandchild: its pid goes to a file, for `Drop` to kill it too.
        let pid_file = self.dir.path().join("terminal-daemon.pid");
        let mut line = format!(
            "echo $$ > {}; exec {}",
            shell_quote(&pid_file.to_string_lossy()),
            shell_quote(&direct.get_program().to_string_lossy())
        );
        for arg in direct.get_args() {
            line.push(' ');
            line.push_str(&shell_quote(&arg.to_string_lossy()));
        }
        let mut command = Command::new("script");
        command
            .args(["-qfec", &line, "/dev/null"])
            .env_remove("PLUGHOST_SOCKET")
            .env("PLUGHOST_HOST", host_binary())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        let mut daemon = self.start_command(command);
        daemon.pid_file = Some(pid_file);
        daemon
    }

    /// The daemon's command line (for tests that expect it to refuse to start).
    pub fn daemon_command(&self) -> Command {
        let mut command = Command::new(plughostd());
        command
            .arg("--config")
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .env_remove("PLUGHOST_SOCKET")
            .env("PLUGHOST_HOST", host_binary())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        if self.daemon_has_plugin_env {
            command
                .env("PH_LOG", &self.fx.log)
                .env("PH_DIR", self.fx.dir.path());
        }
        command
    }

    pub fn write_bad_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }
}

/// A running daemon; killed (SIGKILL) when dropped: everything it started dies with it.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub socket: PathBuf,
    /// A copy of plughostctl that any uid can run ([`Daemon::ctl_as`]).
    public_ctl: std::sync::OnceLock<PathBuf>,
    /// Where the pid of a daemon that is not `child` itself is written (`start_under_terminal`).
    pub pid_file: Option<PathBuf>,
}

/// What `plughostctl` did.
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    fn from(output: Output) -> Ctl {
        Ctl {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Ctl {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Fails, printing exactly `message` on stderr.
    #[track_caller]
    pub fn fails_with(self, message: &str) -> Ctl {
        assert_ne!(self.code, 0, "unexpected success: {}", self.stdout);
        assert_eq!(self.stderr.trim_end(), message);
        self
    }

    /// Fails with a message that starts with `prefix` (a crash report's offsets vary by compiler).
    pub fn fails_starting_with(self, prefix: &str) -> Ctl {
        assert_ne!(self.code, 0, "unexpected success: {}", self.stdout);
        assert!(self.stderr.starts_with(prefix), "{}", self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Daemon {
    /// Registers `rootfs` as the distribution `name` of `uid` (root's through `ctl`, another uid's
    /// through `ctl_as`) and starts it; both must succeed.
    pub fn start_distro_as(&self, uid: u32, name: &str, rootfs: &Path) {
        let rootfs = rootfs.to_str().expect("utf-8");
        let ctl = |args: &[&str]| {
            if uid == 0 {
                self.ctl(args)
            } else {
                self.ctl_as(uid, args)
            }
        };
        ctl(&["distro", "register", name, "--rootfs", rootfs]).ok();
        ctl(&["distro", "start", name]).ok();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(plughostctl());
        command
            .env("PLUGHOST_SOCKET", &self.socket)
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `plughostctl ARGS` as root.
    pub fn ctl(&self, args: &[&str]) -> Ctl {
        Ctl::from(self.command(args).output().expect("run plughostctl"))
    }

    /// Runs `plughostctl ARGS` with stdin from `input`.
    pub fn ctl_input(&self, args: &[&str], input: &str) -> Ctl {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run plughostctl");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(input.as_bytes()).expect("write stdin");
        }
        Ctl::from(child.wait_with_output().expect("wait plughostctl"))
    }

    /// Runs `plughostctl ARGS` as `uid` (gid the same): no passwd entry needed. It runs a copy
    /// of plughostctl in the test's world-readable directory: `uid` may not be able to enter the
    /// checkout (a clone under /root is mode 700).
    pub fn ctl_as(&self, uid: u32, args: &[&str]) -> Ctl {
        let mut command = Command::new(self.public_ctl());
        command
            .env("PLUGHOST_SOCKET", &self.socket)
            .args(args)
            .stdin(Stdio::null())
            .current_dir("/")
            .uid(uid)
            .gid(uid);
        // The copy was just written: a process another test thread forked meanwhile may still
        // hold its write fd until it execs (ETXTBSY). That passes within moments.
        for _ in 0..100 {
            match command.output() {
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                output => return Ctl::from(output.expect("run plughostctl")),
            }
        }
        panic!("plughostctl copy stayed busy (ETXTBSY)");
    }

    /// `plughostctl`, copied once beside the socket (the test's directory, mode 755).
    fn public_ctl(&self) -> &Path {
        self.public_ctl.get_or_init(|| {
            let dir = self.socket.parent().expect("the socket's directory");
            let copy = dir.join(format!("plughostctl.{}", self.child.id()));
            std::fs::copy(plughostctl(), &copy).expect("copy plughostctl");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                .expect("chmod plughostctl");
            copy
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (a graceful shutdown that works whoever runs the tests: `shutdown` is root-only),
    /// then waits for the process to exit.
    pub fn terminate(mut self) {
        // The socket answers a moment before the signal handlers are in place; "listening" is
        // logged after them.
        wait_until("plughostd logs listening", || {
            self.log_text().contains(" listening ")
        });
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
            .expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait plughostd");
        assert!(status.success(), "plughostd exit: {status}");
    }

    /// `shutdown`, then waits for the process to exit.
    pub fn shutdown(mut self) {
        self.ctl(&["shutdown"]).ok();
        let status = self.child.wait().expect("wait plughostd");
        assert!(status.success(), "plughostd exit: {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let grandchild = self
            .pid_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = grandchild {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- plughostd log ----\n{}", self.log_text());
        }
    }
}

/// A small distribution rootfs built from this machine: a few binaries with their libraries,
/// `/etc/os-release` (`ID=testos`, `VERSION_ID=1.0`), and `/etc/marker` = `distro`.
pub fn make_rootfs(parent: &Path) -> PathBuf {
    make_rootfs_with(parent, "rootfs", &["sh", "cat", "sleep", "echo", "ls"])
}

/// [`make_rootfs`] named `name`, with the host's `/bin/<bin>` for each of `bins`.
pub fn make_rootfs_with(parent: &Path, name: &str, bins: &[&str]) -> PathBuf {
    let root = parent.join(name);
    for dir in ["bin", "etc", "proc", "dev", "mnt", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir rootfs");
    }
    for bin in bins {
        let host = Path::new("/bin").join(bin);
        let real = std::fs::canonicalize(&host).expect("host binary");
        std::fs::copy(&real, root.join("bin").join(bin)).expect("copy binary");
        let ldd = Command::new("ldd").arg(&real).output().expect("ldd");
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let target = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().expect("lib dir")).expect("mkdir lib");
            let source = std::fs::canonicalize(lib).expect("lib");
            std::fs::copy(source, &target).expect("copy lib");
        }
    }
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"Test OS\"\nID=testos\nVERSION_ID=\"1.0\"\n",
    )
    .expect("os-release");
    std::fs::write(root.join("etc/marker"), "distro").expect("marker");
    world_readable(&root);
    root
}

/// Whether process `pid` is gone (absent or a zombie).
pub fn gone(pid: u32) -> bool {
    plughost_sys::process::process_is_gone(pid)
}

/// Live processes running `exe`.
pub fn processes_of(exe: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p == Path::new(exe))
                .unwrap_or(false)
                && !gone(*pid)
        })
        .collect()
}

pub fn wait_until(what: &str, check: impl FnMut() -> bool) {
    assert!(
        eventually(Duration::from_secs(10), check),
        "timed out: {what}"
    );
}

/// A test plugin of this crate (`tests/plugins/<name>.c`), compiled like `plugins/c`.
pub fn service_plugin(name: &str) -> PluginSpec {
    service_plugin_with(name, name, &[])
}

/// `tests/plugins/<source>.c` built as the plugin `name`, with extra compiler flags (one source,
/// several plugins: `-DPROBE_NAME=...`).
pub fn service_plugin_with(source: &str, name: &str, flags: &[String]) -> PluginSpec {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/plugins/{source}.c"));
    let workspace = plughost_tests::workspace();
    let out_dir = plughost_tests::target_dir().join("test-plugins");
    std::fs::create_dir_all(&out_dir).expect("mkdir test-plugins");
    let out = out_dir.join(format!("service-{name}.so"));
    // Unique per call: the tests of one binary run in parallel threads and may build the same one.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out_dir.join(format!(
        "service-{name}.{}.{build}.tmp.so",
        std::process::id()
    ));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-shared",
            "-fPIC",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
        ])
        .args(flags)
        .arg("-I")
        .arg(workspace.join("include"))
        .arg("-I")
        .arg(workspace.join("plugins/c"))
        .arg("-o")
        .arg(&tmp)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling {} failed", source.display());
    std::fs::rename(&tmp, &out).expect("rename plugin");
    PluginSpec {
        name: name.into(),
        path: out,
        in_process: false,
        lazy: false,
    }
}

/// `s` quoted for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
