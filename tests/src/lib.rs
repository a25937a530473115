//! Test harness for the end-to-end scenarios in `tests/tests/`: builds the C test plugins from
//! `plugins/c` with the system C compiler (from the header alone), finds the Rust test plugins and the
//! host binary, and provides [`TestService`], a service whose "VM" is a table of bind mappings on the
//! host (mounts are recorded, `execute_binary` runs the program on the host with `/mnt/...` arguments
//! mapped back to the mounted folders). The real namespace VM is the reference daemon's job.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use plughost::{
    CallContext, Distribution, DistributionId, ManagerConfig, OutputSink, PluginConfig,
    PluginManager, ServiceCallbacks, Session, SessionId, Status,
};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `target/<profile>`, found from the running test executable (`target/<profile>/deps/x-hash`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn host_binary() -> PathBuf {
    let path = target_dir().join("plughost-host");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Compiles `plugins/c/<name>.c` once per test process into `target/test-plugins/<name>.so`.
pub fn c_plugin(name: &str) -> PathBuf {
    c_plugin_with(name, "", &[])
}

/// Compiles `plugins/c/<name>.c` with extra compiler `flags` (e.g. `-g`) into
/// `target/test-plugins/<name><suffix>.so`, once per test process.
pub fn c_plugin_with(name: &str, suffix: &str, flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let built_name = format!("{name}{suffix}");
    if let Some(path) = built.get(&built_name) {
        return path.clone();
    }
    let root = workspace();
    let out_dir = target_dir().join("test-plugins");
    std::fs::create_dir_all(&out_dir).expect("create target/test-plugins");
    let out = out_dir.join(format!("{built_name}.so"));
    // Each test binary compiles into its own temporary name, then renames: concurrent test binaries
    // never see a half-written library.
    let tmp = out_dir.join(format!("{built_name}.{}.tmp.so", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
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
        .arg(root.join("include"))
        .arg("-I")
        .arg(root.join("plugins/c"))
        .arg("-o")
        .arg(&tmp)
        .arg(root.join(format!("plugins/c/{name}.c")))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(status.success(), "compiling plugins/c/{name}.c failed");
    std::fs::rename(&tmp, &out).expect("rename compiled plugin");
    built.insert(built_name, out.clone());
    out
}

/// Asserts that `err` is the error of C test plugin `plugin` (built without `-g`) dying of a write
/// through NULL in `function`: `plugin 'P' crashed: killed by signal SIGSEGV (address 0x0) in
/// FUNCTION (P.so+0x1234)` (the offset depends on the compiler).
pub fn assert_null_write_in(err: &str, plugin: &str, function: &str) {
    let prefix = format!(
        "plugin '{plugin}' crashed: killed by signal SIGSEGV (address 0x0) in {function} ({plugin}.so+0x"
    );
    let offset = err
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{err:?} is not a crash in {function} of {plugin}"));
    assert!(u64::from_str_radix(offset, 16).is_ok(), "{err}");
}

/// A Rust test plugin built by `cargo build --workspace` (`target/<profile>/lib<name>.so`).
pub fn rust_plugin(name: &str) -> PathBuf {
    let path = target_dir().join(format!("lib{name}.so"));
    assert!(
        path.exists(),
        "{} is missing: build the workspace first",
        path.display()
    );
    path
}

/// A folder with a file `file` containing `OK` (the plugins' `PH_DIR`), and a log file (`PH_LOG`).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        // Hosts run as an unprivileged user (`nobody`) when the tests run as root: the plugins
        // write their logs and markers here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod fixture dir");
        std::fs::write(dir.path().join("file"), "OK").expect("write fixture file");
        let log = dir.path().join("plugin.log");
        Fixture { dir, log }
    }

    /// A plugin config for a C test plugin, with `PH_DIR` and `PH_LOG` set.
    pub fn c(&self, name: &str) -> PluginConfig {
        self.with_env(PluginConfig::new(name, c_plugin(name)))
    }

    pub fn rust(&self, name: &str) -> PluginConfig {
        self.with_env(PluginConfig::new(name, rust_plugin(name)))
    }

    /// Sets `PH_DIR` and `PH_LOG`, and lets the plugin write beneath the fixture dir (Landlock).
    pub fn with_env(&self, config: PluginConfig) -> PluginConfig {
        config
            .env("PH_DIR", self.dir.path().to_string_lossy())
            .env("PH_LOG", self.log.to_string_lossy())
            .allow_write(self.dir.path())
    }

    /// Every line the plugins logged so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Lines starting with `prefix`.
    pub fn events(&self, prefix: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Waits (up to 10 s) until a line starting with `prefix` appears; returns it.
    pub fn wait_for(&self, prefix: &str) -> String {
        self.wait_for_within(prefix, Duration::from_secs(10))
    }

    /// [`Fixture::wait_for`] with another patience.
    pub fn wait_for_within(&self, prefix: &str, patience: Duration) -> String {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(line) = self.events(prefix).pop() {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {prefix:?} in {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// The value of `key=` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// One session's fake VM.
#[derive(Default, Debug)]
pub struct VmState {
    pub running: bool,
    /// vm path -> (host path, read-only).
    pub mounts: HashMap<String, (PathBuf, bool)>,
}

#[derive(Default, Debug)]
pub struct State {
    pub vms: HashMap<SessionId, VmState>,
    /// Running distributions of each session.
    pub distributions: HashMap<DistributionId, SessionId>,
    /// Every distribution ever started (a stopped one is known, not running).
    pub known_distributions: std::collections::HashSet<DistributionId>,
}

/// The test service: state behind one mutex that hooks are dispatched under.
#[derive(Default)]
pub struct TestService {
    pub state: Mutex<State>,
    pub calls_on_default: AtomicUsize,
    pub calls_in_scope: AtomicUsize,
}

impl TestService {
    pub fn new() -> Arc<TestService> {
        Arc::new(TestService::default())
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A manager for `plugins`, with this service as the default callbacks.
    pub fn manager(self: &Arc<Self>, plugins: Vec<PluginConfig>) -> PluginManager {
        self.manager_with(ManagerConfig::new(plugins))
    }

    pub fn manager_with(self: &Arc<Self>, mut config: ManagerConfig) -> PluginManager {
        init_tracing();
        config.host_binary = Some(host_binary());
        PluginManager::new(config, self.clone()).expect("manager starts")
    }

    /// Starts session `id`'s VM the way a service does: mark it running, dispatch `on_vm_started`
    /// with the state locked (calls from the plugin during the hook run in that scope), and tear it
    /// down again if a plugin refuses.
    pub fn start_vm(&self, manager: &PluginManager, session: &Session) -> Result<(), String> {
        let mut guard = self.lock();
        guard.vms.entry(session.id).or_default().running = true;
        let scope = Scope {
            state: Mutex::new(guard),
            service: self,
        };
        let result = manager.on_vm_started(session, &Default::default(), &scope);
        let mut guard = scope.into_guard();
        if result.is_err() {
            guard.vms.entry(session.id).or_default().running = false;
        }
        result.map_err(|e| e.to_string())
    }

    pub fn stop_vm(&self, manager: &PluginManager, session: &Session) {
        let guard = self.lock();
        let scope = Scope {
            state: Mutex::new(guard),
            service: self,
        };
        manager.on_vm_stopping(session, &scope);
        let mut guard = scope.into_guard();
        // The user session stays known; its VM is gone: later calls get NOT_RUNNING.
        let vm = guard.vms.entry(session.id).or_default();
        vm.running = false;
        vm.mounts.clear();
        guard.distributions.retain(|_, s| *s != session.id);
    }

    pub fn start_distribution(
        &self,
        manager: &PluginManager,
        session: &Session,
        distribution: &Distribution,
    ) -> Result<(), String> {
        let mut guard = self.lock();
        guard.distributions.insert(distribution.id, session.id);
        guard.known_distributions.insert(distribution.id);
        let scope = Scope {
            state: Mutex::new(guard),
            service: self,
        };
        let result = manager.on_distribution_started(session, distribution, &scope);
        let mut guard = scope.into_guard();
        if result.is_err() {
            guard.distributions.remove(&distribution.id);
        }
        result.map_err(|e| e.to_string())
    }

    pub fn stop_distribution(
        &self,
        manager: &PluginManager,
        session: &Session,
        distribution: &Distribution,
    ) {
        let guard = self.lock();
        let scope = Scope {
            state: Mutex::new(guard),
            service: self,
        };
        manager.on_distribution_stopping(session, distribution, &scope);
        scope.into_guard().distributions.remove(&distribution.id);
    }
}

/// The callbacks of one dispatch: they use the state the dispatching thread already holds.
pub struct Scope<'a> {
    state: Mutex<MutexGuard<'a, State>>,
    service: &'a TestService,
}

impl<'a> Scope<'a> {
    pub fn new(service: &'a TestService) -> Scope<'a> {
        Scope {
            state: Mutex::new(service.lock()),
            service,
        }
    }

    pub fn into_guard(self) -> MutexGuard<'a, State> {
        self.state.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        self.service.calls_in_scope.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

fn vm(state: &mut State, session: SessionId) -> Result<&mut VmState, Status> {
    let vm = state.vms.get_mut(&session).ok_or(Status::NOT_FOUND)?;
    if !vm.running {
        return Err(Status::NOT_RUNNING);
    }
    Ok(vm)
}

fn mount(
    state: &mut State,
    session: SessionId,
    host: &str,
    vm_path: &str,
    ro: bool,
) -> Result<(), Status> {
    let vm = vm(state, session)?;
    let host = Path::new(host);
    if !host.exists() {
        return Err(Status::errno(rustix::io::Errno::NOENT.raw_os_error()));
    }
    vm.mounts.insert(
        vm_path.trim_end_matches('/').to_owned(),
        (host.to_path_buf(), ro),
    );
    Ok(())
}

/// Maps `/mnt/x/file` through the VM's mounts.
fn translate(vm: &VmState, arg: &str) -> String {
    for (vm_path, (host, _)) in &vm.mounts {
        if let Some(rest) = arg.strip_prefix(vm_path.as_str()) {
            if rest.is_empty() || rest.starts_with('/') {
                return format!("{}{rest}", host.display());
            }
        }
    }
    arg.to_owned()
}

/// Runs `path` with stdin/stdout on a socket; returns the caller's end.
fn run(vm: &VmState, path: &str, argv: &[String]) -> Result<OwnedFd, Status> {
    if !Path::new(path).exists() {
        return Err(Status::errno(rustix::io::Errno::NOENT.raw_os_error()));
    }
    let (ours, theirs) = UnixStream::pair().map_err(|e| Status::from_io(&e))?;
    let stdin = theirs.try_clone().map_err(|e| Status::from_io(&e))?;
    let args: Vec<String> = argv.iter().skip(1).map(|a| translate(vm, a)).collect();
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::from(OwnedFd::from(stdin)))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Status::from_io(&e))?;
    std::thread::spawn(move || child.wait());
    Ok(ours.into())
}

fn exec(
    state: &mut State,
    session: SessionId,
    path: &str,
    argv: &[String],
) -> Result<OwnedFd, Status> {
    let vm = vm(state, session)?;
    run(vm, path, argv)
}

fn exec_in_distribution(
    state: &mut State,
    session: SessionId,
    distribution: DistributionId,
    path: &str,
    argv: &[String],
) -> Result<OwnedFd, Status> {
    match state.distributions.get(&distribution) {
        Some(owner) if *owner == session => {}
        Some(_) => return Err(Status::NOT_FOUND),
        None => {
            vm(state, session)?;
            // Unknown id: NOT_FOUND; known but stopped: NOT_RUNNING (PLUGIN_ABI.md, "Status codes").
            return Err(if state.known_distributions.contains(&distribution) {
                Status::NOT_RUNNING
            } else {
                Status::NOT_FOUND
            });
        }
    }
    let vm = vm(state, session)?;
    run(vm, path, argv)
}

impl ServiceCallbacks for Scope<'_> {
    fn mount_folder(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        host: &str,
        vm_path: &str,
        ro: bool,
        _: &str,
    ) -> Result<(), Status> {
        self.with(|s| mount(s, session, host, vm_path, ro))
    }
    fn execute_binary(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.with(|s| exec(s, session, path, argv))
    }
    fn execute_binary_in_distribution(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        distribution: DistributionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.with(|s| exec_in_distribution(s, session, distribution, path, argv))
    }
}

impl ServiceCallbacks for TestService {
    fn mount_folder(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        host: &str,
        vm_path: &str,
        ro: bool,
        _: &str,
    ) -> Result<(), Status> {
        self.calls_on_default.fetch_add(1, Ordering::Relaxed);
        mount(&mut self.lock(), session, host, vm_path, ro)
    }
    fn execute_binary(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.calls_on_default.fetch_add(1, Ordering::Relaxed);
        exec(&mut self.lock(), session, path, argv)
    }
    fn execute_binary_in_distribution(
        &self,
        _: CallContext<'_>,
        session: SessionId,
        distribution: DistributionId,
        path: &str,
        argv: &[String],
    ) -> Result<OwnedFd, Status> {
        self.calls_on_default.fetch_add(1, Ordering::Relaxed);
        exec_in_distribution(&mut self.lock(), session, distribution, path, argv)
    }
}

pub fn session(id: u32) -> Session {
    Session {
        id: SessionId(id),
        uid: 1000 + id,
        gid: 1000 + id,
        user_name: format!("user{id}"),
    }
}

pub fn distribution(n: u8) -> Distribution {
    Distribution {
        id: DistributionId([n; 16]),
        name: format!("distro{n}"),
        pid_namespace: 4026531836,
        package: "pkg".into(),
        init_pid: 4242,
        flavor: "debian".into(),
        version: "12".into(),
    }
}

/// Collects what plugins print.
#[derive(Default)]
pub struct CapturedOutput {
    pub lines: Mutex<Vec<(String, String)>>,
}

impl OutputSink for CapturedOutput {
    fn line(&self, plugin: &str, line: &str) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((plugin.into(), line.into()));
    }
}

impl CapturedOutput {
    pub fn wait_for(&self, plugin: &str, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if lines.iter().any(|(p, l)| p == plugin && l.contains(text)) {
                return true;
            }
            drop(lines);
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// Pids of processes whose `comm` is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end() == name)
                .unwrap_or(false)
                && !plughost_sys::process::process_is_gone(*pid)
        })
        .collect()
}

/// Waits up to `limit` for `check` to hold.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A unique 15-char process name for markers.
pub fn marker(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut m = format!("ph{}{}{tag}", std::process::id() % 100000, n);
    m.truncate(15);
    m
}

pub fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}
