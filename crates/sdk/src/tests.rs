//! The FFI edge against a fake service.
//!
//! `FAKE_API` is a `plughost_api_v1` of `extern "C"` functions that record each call in a thread-local;
//! the hooks run on the test's own thread, as they run on the service's hook thread, so parallel tests
//! do not see each other's calls. The global plugin is loaded once ([`hooks`]); tests of loading itself
//! use a slot of their own.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr};
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::ptr;
use std::sync::OnceLock;

use plughost_abi::{
    plughost_api_v1, plughost_container_session, plughost_distribution, plughost_hooks_v1,
    plughost_offline_distribution, plughost_process, plughost_process_fd, plughost_session,
    plughost_session_id, plughost_status, plughost_uuid, plughost_version, plughost_vm_settings,
};

use crate::ffi::{__entry, __entry_requiring, entry};
use crate::hooks::Loaded;
use crate::{
    Api, ContainerSession, ContainerSessionId, Distribution, HookError, HookResult,
    OfflineDistribution, Plugin, ProcessFd, Session, SessionId, Status, Uuid, Version, VmSettings,
};

// ---------------------------------------------------------------------------------------------------
// The fake service

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    PluginError(String),
    MountFolder {
        session: u32,
        host: String,
        vm: String,
        read_only: bool,
        name: String,
    },
    ExecuteBinary {
        session: u32,
        path: String,
        argv: Vec<String>,
    },
    ExecuteInDistribution {
        session: u32,
        distribution: [u8; 16],
        path: String,
        argv: Vec<String>,
    },
    ContainerMount {
        cs: u32,
        host: String,
        mountpoint: String,
        read_only: bool,
    },
    ContainerUnmount {
        cs: u32,
        mountpoint: String,
    },
    CreateProcess {
        cs: u32,
        path: String,
        argv: Vec<String>,
        envp: Option<Vec<String>>,
    },
    ProcessRelease,
}

thread_local! {
    static CALLS: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
    static SEEN: RefCell<Vec<Seen>> = const { RefCell::new(Vec::new()) };
}

fn record(call: Call) {
    CALLS.with(|calls| calls.borrow_mut().push(call));
}

fn take_calls() -> Vec<Call> {
    CALLS.with(|calls| calls.take())
}

/// # Safety
/// `p` is a NUL-terminated string (the SDK never passes NULL for one).
unsafe fn text(p: *const c_char) -> String {
    // SAFETY: our contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .expect("the SDK passes UTF-8")
        .to_owned()
}

/// # Safety
/// `p` is a NULL-terminated array of NUL-terminated strings.
unsafe fn texts(mut p: *const *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: our contract: read up to and including the NULL terminator.
    unsafe {
        while !(*p).is_null() {
            out.push(text(*p));
            p = p.add(1);
        }
    }
    out
}

/// A connected socket's end whose peer wrote `contents` and closed, as a raw fd for an out-pointer.
fn socket_with(contents: &[u8]) -> c_int {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.write_all(contents).unwrap();
    ours.into_raw_fd()
}

unsafe extern "C" fn fake_mount_folder(
    session: plughost_session_id,
    host: *const c_char,
    vm: *const c_char,
    read_only: bool,
    name: *const c_char,
) -> plughost_status {
    // SAFETY: the SDK passes NUL-terminated strings.
    let (host, vm, name) = unsafe { (text(host), text(vm), text(name)) };
    let missing = host == "/missing";
    record(Call::MountFolder {
        session,
        host,
        vm,
        read_only,
        name,
    });
    if missing {
        Status::ENOENT.0
    } else {
        0
    }
}

unsafe extern "C" fn fake_execute_binary(
    session: plughost_session_id,
    path: *const c_char,
    argv: *const *const c_char,
    fd_out: *mut c_int,
) -> plughost_status {
    // SAFETY: the SDK passes a NUL-terminated string and a NULL-terminated array.
    let (path, argv) = unsafe { (text(path), texts(argv)) };
    record(Call::ExecuteBinary {
        session,
        path,
        argv,
    });
    // SAFETY: the SDK passes a writable out-pointer.
    unsafe { *fd_out = socket_with(b"OK") };
    0
}

unsafe extern "C" fn fake_plugin_error(message: *const c_char) -> plughost_status {
    // SAFETY: the SDK passes a NUL-terminated string.
    record(Call::PluginError(unsafe { text(message) }));
    0
}

unsafe extern "C" fn fake_execute_in_distribution(
    session: plughost_session_id,
    distribution: *const plughost_uuid,
    path: *const c_char,
    argv: *const *const c_char,
    fd_out: *mut c_int,
) -> plughost_status {
    // SAFETY: the SDK passes a valid uuid, a string and a NULL-terminated array.
    let (distribution, path, argv) = unsafe { ((*distribution).bytes, text(path), texts(argv)) };
    record(Call::ExecuteInDistribution {
        session,
        distribution,
        path,
        argv,
    });
    // A careless service that writes the out fd on failure: the SDK must not take it.
    // SAFETY: the SDK passes a writable out-pointer.
    unsafe { *fd_out = 0 };
    Status::NOT_RUNNING.0
}

unsafe extern "C" fn fake_container_mount(
    cs: u32,
    host: *const c_char,
    mountpoint: *const c_char,
    read_only: bool,
) -> plughost_status {
    // SAFETY: the SDK passes NUL-terminated strings.
    let (host, mountpoint) = unsafe { (text(host), text(mountpoint)) };
    record(Call::ContainerMount {
        cs,
        host,
        mountpoint,
        read_only,
    });
    0
}

unsafe extern "C" fn fake_container_unmount(cs: u32, mountpoint: *const c_char) -> plughost_status {
    // SAFETY: the SDK passes a NUL-terminated string.
    let mountpoint = unsafe { text(mountpoint) };
    record(Call::ContainerUnmount { cs, mountpoint });
    0
}

struct FakeProcess {
    exit_code: c_int,
}

unsafe extern "C" fn fake_create_process(
    cs: u32,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    process_out: *mut *mut plughost_process,
    errno_out: *mut c_int,
) -> plughost_status {
    // SAFETY: the SDK passes a string, a NULL-terminated array and one that is NULL or terminated.
    let (path, argv, envp) = unsafe {
        (
            text(path),
            texts(argv),
            (!envp.is_null()).then(|| texts(envp)),
        )
    };
    let missing = path == "/missing";
    record(Call::CreateProcess {
        cs,
        path,
        argv,
        envp,
    });
    if cs == 0 {
        return Status::NOT_RUNNING.0;
    }
    if missing {
        // SAFETY: `errno_out` is NULL or writable.
        if let Some(errno) = unsafe { errno_out.as_mut() } {
            *errno = 2;
        }
        return Status::ENOENT.0;
    }
    let process = Box::into_raw(Box::new(FakeProcess { exit_code: 42 }));
    // SAFETY: the SDK passes a writable out-pointer.
    unsafe { *process_out = process.cast() };
    0
}

unsafe extern "C" fn fake_get_fd(
    _process: *mut plughost_process,
    which: plughost_process_fd,
    fd_out: *mut c_int,
) -> plughost_status {
    if !(0..=2).contains(&which) {
        return Status::EINVAL.0;
    }
    // SAFETY: the SDK passes a writable out-pointer.
    unsafe { *fd_out = socket_with(b"out") };
    0
}

unsafe extern "C" fn fake_get_exit_fd(
    _process: *mut plughost_process,
    fd_out: *mut c_int,
) -> plughost_status {
    // SAFETY: the SDK passes a writable out-pointer.
    unsafe { *fd_out = socket_with(b"") };
    0
}

unsafe extern "C" fn fake_get_exit_code(
    process: *mut plughost_process,
    code_out: *mut c_int,
) -> plughost_status {
    // SAFETY: `process` came from `fake_create_process` and is not released yet; `code_out` writable.
    unsafe { *code_out = (*process.cast::<FakeProcess>()).exit_code };
    0
}

unsafe extern "C" fn fake_release(process: *mut plughost_process) {
    record(Call::ProcessRelease);
    // SAFETY: `process` came from `Box::into_raw` in `fake_create_process`; released once.
    drop(unsafe { Box::from_raw(process.cast::<FakeProcess>()) });
}

const fn fake_table(major: u32, minor: u32, revision: u32) -> plughost_api_v1 {
    plughost_api_v1 {
        version: plughost_version {
            major,
            minor,
            revision,
        },
        mount_folder: fake_mount_folder,
        execute_binary: fake_execute_binary,
        plugin_error: fake_plugin_error,
        execute_binary_in_distribution: fake_execute_in_distribution,
        container_mount_folder: fake_container_mount,
        container_unmount_folder: fake_container_unmount,
        container_create_process: fake_create_process,
        process_get_fd: fake_get_fd,
        process_get_exit_fd: fake_get_exit_fd,
        process_get_exit_code: fake_get_exit_code,
        process_release: fake_release,
    }
}

static FAKE_API: plughost_api_v1 = fake_table(1, 2, 3);
static OLD_API: plughost_api_v1 = fake_table(0, 9, 9);

fn fake_api() -> Api {
    // SAFETY: the fake functions follow the API contract for the pointers the SDK passes.
    unsafe { Api::from_raw(&FAKE_API) }
}

// ---------------------------------------------------------------------------------------------------
// The test plugin: each hook records what it got and behaves as the name it was given says.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Vm(Session, VmSettings),
    VmStopping(Session),
    Distribution(Session, Distribution),
    Offline(Session, OfflineDistribution),
    Container(ContainerSession),
}

fn seen(what: Seen) {
    SEEN.with(|seen| seen.borrow_mut().push(what));
}

fn take_seen() -> Vec<Seen> {
    SEEN.with(|seen| seen.take())
}

fn behave(name: &str) -> HookResult {
    match name {
        "fail" => Err(HookError::with_message(Status::EPERM, "vetoed by test")),
        "fail-with-nul" => Err(HookError::with_message(Status::EPERM, "a\0b")),
        "fail-silently" => Err(HookError::new(Status::NOT_FOUND)),
        "fail-with-zero" => Err(HookError::with_message(Status::OK, "zero")),
        "panic" => panic!("boom in test"),
        "panic-formatted" => panic!("boom number {}", 42),
        _ => Ok(()),
    }
}

struct TestPlugin;

impl Plugin for TestPlugin {
    fn load(_api: Api) -> Result<Self, Status> {
        Ok(TestPlugin)
    }

    fn on_vm_started(&self, session: &Session, settings: &VmSettings) -> HookResult {
        seen(Seen::Vm(session.clone(), *settings));
        behave(&session.user_name)
    }

    fn on_vm_stopping(&self, session: &Session) -> HookResult {
        seen(Seen::VmStopping(session.clone()));
        behave(&session.user_name)
    }

    fn on_distribution_started(&self, session: &Session, distro: &Distribution) -> HookResult {
        seen(Seen::Distribution(session.clone(), distro.clone()));
        behave(&distro.name)
    }

    fn on_distribution_registered(
        &self,
        session: &Session,
        distro: &OfflineDistribution,
    ) -> HookResult {
        seen(Seen::Offline(session.clone(), distro.clone()));
        behave(&distro.name)
    }

    fn on_container_session_created(&self, cs: &ContainerSession) -> HookResult {
        seen(Seen::Container(cs.clone()));
        behave(&cs.display_name)
    }

    fn on_session_vm_stopping(&self, cs: &ContainerSession) -> HookResult {
        seen(Seen::Container(cs.clone()));
        behave(&cs.display_name)
    }
}

struct RefusingPlugin;

impl Plugin for RefusingPlugin {
    fn load(_api: Api) -> Result<Self, Status> {
        Err(Status::NOT_FOUND)
    }
}

struct ZeroRefusingPlugin;

impl Plugin for ZeroRefusingPlugin {
    fn load(_api: Api) -> Result<Self, Status> {
        Err(Status::OK)
    }
}

struct PanickingPlugin;

impl Plugin for PanickingPlugin {
    fn load(_api: Api) -> Result<Self, Status> {
        panic!("boom in load")
    }
}

/// Loads `TestPlugin` as this test binary's plugin, once, and returns the hooks it set.
fn hooks() -> plughost_hooks_v1 {
    static HOOKS: OnceLock<plughost_hooks_v1> = OnceLock::new();
    *HOOKS.get_or_init(|| {
        let mut hooks = plughost_hooks_v1::default();
        // SAFETY: a static table and a live local, as the entry point's contract asks.
        let status = unsafe { __entry::<TestPlugin>(&FAKE_API, &mut hooks) };
        assert_eq!(status, 0);
        hooks
    })
}

fn session(user_name: &CStr) -> plughost_session {
    plughost_session {
        id: 7,
        uid: 1000,
        gid: 1001,
        user_name: user_name.as_ptr(),
    }
}

fn distribution(name: &CStr) -> plughost_distribution {
    plughost_distribution {
        id: plughost_uuid { bytes: [0xab; 16] },
        name: name.as_ptr(),
        pid_namespace: 4026531836,
        package: c"pkg".as_ptr(),
        init_pid: 321,
        flavor: c"debian".as_ptr(),
        version: c"12".as_ptr(),
    }
}

fn offline_distribution(name: &CStr) -> plughost_offline_distribution {
    plughost_offline_distribution {
        id: plughost_uuid { bytes: [0xcd; 16] },
        name: name.as_ptr(),
        package: ptr::null(),
        flavor: ptr::null(),
        version: ptr::null(),
    }
}

fn container_session(display_name: &CStr) -> plughost_container_session {
    plughost_container_session {
        id: 3,
        display_name: display_name.as_ptr(),
        application_pid: 99,
        uid: 1000,
        gid: 1001,
    }
}

fn vm_started(user_name: &CStr) -> plughost_status {
    let s = session(user_name);
    let v = plughost_vm_settings { flags: 1 };
    // SAFETY: the trampoline's contract: valid structs for the call.
    unsafe { hooks().on_vm_started.unwrap()(&s, &v) }
}

fn vm_stopping(user_name: &CStr) -> plughost_status {
    let s = session(user_name);
    // SAFETY: as above.
    unsafe { hooks().on_vm_stopping.unwrap()(&s) }
}

fn distribution_started(name: &CStr) -> plughost_status {
    let (s, d) = (session(c"u"), distribution(name));
    // SAFETY: as above.
    unsafe { hooks().on_distribution_started.unwrap()(&s, &d) }
}

fn distribution_registered(name: &CStr) -> plughost_status {
    let (s, d) = (session(c"u"), offline_distribution(name));
    // SAFETY: as above.
    unsafe { hooks().on_distribution_registered.unwrap()(&s, &d) }
}

fn container_session_created(name: &CStr) -> plughost_status {
    let c = container_session(name);
    // SAFETY: as above.
    unsafe { hooks().on_container_session_created.unwrap()(&c) }
}

fn session_vm_stopping(name: &CStr) -> plughost_status {
    let c = container_session(name);
    // SAFETY: as above.
    unsafe { hooks().on_session_vm_stopping.unwrap()(&c) }
}

// ---------------------------------------------------------------------------------------------------
// Loading

#[test]
fn entry_fills_every_hook() {
    let h = hooks();
    let set = [
        h.on_vm_started.is_some(),
        h.on_vm_stopping.is_some(),
        h.on_distribution_started.is_some(),
        h.on_distribution_stopping.is_some(),
        h.on_distribution_registered.is_some(),
        h.on_distribution_unregistered.is_some(),
        h.on_container_session_created.is_some(),
        h.on_container_session_stopping.is_some(),
        h.on_session_vm_started.is_some(),
        h.on_session_vm_stopping.is_some(),
    ];
    assert_eq!(set, [true; 10]);
}

#[test]
fn hooks_the_plugin_does_not_override_return_ok() {
    let (s, d) = (session(c"fail"), distribution(c"fail"));
    let c = container_session(c"fail");
    let h = hooks();
    // SAFETY: valid structs for the call.
    unsafe {
        assert_eq!(h.on_distribution_stopping.unwrap()(&s, &d), 0);
        assert_eq!(h.on_container_session_stopping.unwrap()(&c), 0);
        assert_eq!(h.on_session_vm_started.unwrap()(&c), 0);
    }
    assert!(take_seen().is_empty());
}

#[test]
fn second_entry_in_one_process_is_refused() {
    hooks();
    let mut again = plughost_hooks_v1::default();
    // SAFETY: a static table and a live local.
    let status = unsafe { __entry::<TestPlugin>(&FAKE_API, &mut again) };
    assert_eq!(status, Status::ILLEGAL_STATE.0);
    assert!(again.on_vm_started.is_none());
}

#[test]
fn entry_with_null_pointers_is_efault() {
    let mut h = plughost_hooks_v1::default();
    // SAFETY: NULL is within the entry point's contract.
    unsafe {
        assert_eq!(__entry::<TestPlugin>(ptr::null(), &mut h), Status::EFAULT.0);
        assert_eq!(
            __entry::<TestPlugin>(&FAKE_API, ptr::null_mut()),
            Status::EFAULT.0
        );
    }
    assert!(h.on_vm_started.is_none());
}

#[test]
fn require_form_refuses_an_older_service() {
    let mut h = plughost_hooks_v1::default();
    // SAFETY: static tables and a live local.
    unsafe {
        let old = __entry_requiring::<TestPlugin>(&OLD_API, &mut h, Version::new(1, 0, 0));
        assert_eq!(old, Status::REQUIRES_UPDATE.0);
        let older_revision =
            __entry_requiring::<TestPlugin>(&FAKE_API, &mut h, Version::new(1, 2, 4));
        assert_eq!(older_revision, Status::REQUIRES_UPDATE.0);
    }
    assert!(h.on_vm_started.is_none());
}

#[test]
fn require_form_accepts_the_same_or_a_newer_service() {
    for required in [
        Version::new(1, 2, 3),
        Version::new(1, 1, 9),
        Version::new(0, 0, 0),
    ] {
        let slot = OnceLock::new();
        let mut h = plughost_hooks_v1::default();
        // SAFETY: a static table and a live local.
        let status = unsafe { entry::<TestPlugin>(&slot, &FAKE_API, &mut h, Some(required)) };
        assert_eq!(status, 0, "requiring {required}");
        assert!(h.on_vm_started.is_some());
        assert!(slot.get().is_some());
    }
}

fn load_into_fresh_slot<P: Plugin>() -> (plughost_status, plughost_hooks_v1, bool) {
    let slot: OnceLock<Loaded> = OnceLock::new();
    let mut h = plughost_hooks_v1::default();
    // SAFETY: a static table and a live local.
    let status = unsafe { entry::<P>(&slot, &FAKE_API, &mut h, None) };
    (status, h, slot.get().is_some())
}

#[test]
fn failing_load_returns_its_status_and_sets_no_hook() {
    let (status, h, loaded) = load_into_fresh_slot::<RefusingPlugin>();
    assert_eq!(status, Status::NOT_FOUND.0);
    assert!(h.on_vm_started.is_none() && !loaded);

    let (status, h, loaded) = load_into_fresh_slot::<ZeroRefusingPlugin>();
    assert_eq!(status, Status::EIO.0);
    assert!(h.on_vm_started.is_none() && !loaded);
}

#[test]
fn panicking_load_is_eio() {
    let (status, h, loaded) = load_into_fresh_slot::<PanickingPlugin>();
    assert_eq!(status, Status::EIO.0);
    assert!(h.on_vm_started.is_none() && !loaded);
}

// ---------------------------------------------------------------------------------------------------
// Hook results

#[test]
fn veto_hook_error_message_goes_to_plugin_error() {
    let vetoed = || vec![Call::PluginError("vetoed by test".into())];
    assert_eq!(vm_started(c"fail"), Status::EPERM.0);
    assert_eq!(take_calls(), vetoed());
    assert_eq!(distribution_started(c"fail"), Status::EPERM.0);
    assert_eq!(take_calls(), vetoed());
    assert_eq!(container_session_created(c"fail"), Status::EPERM.0);
    assert_eq!(take_calls(), vetoed());
}

#[test]
fn non_veto_hook_error_message_does_not_call_plugin_error() {
    assert_eq!(vm_stopping(c"fail"), Status::EPERM.0);
    assert_eq!(distribution_registered(c"fail"), Status::EPERM.0);
    assert_eq!(session_vm_stopping(c"fail"), Status::EPERM.0);
    assert_eq!(take_calls(), vec![]);
}

#[test]
fn error_without_message_returns_its_status_only() {
    assert_eq!(vm_started(c"fail-silently"), Status::NOT_FOUND.0);
    assert_eq!(take_calls(), vec![]);
}

#[test]
fn error_with_status_zero_is_eio() {
    assert_eq!(vm_started(c"fail-with-zero"), Status::EIO.0);
    assert_eq!(take_calls(), vec![Call::PluginError("zero".into())]);
    assert_eq!(vm_stopping(c"fail-with-zero"), Status::EIO.0);
    assert_eq!(take_calls(), vec![]);
}

#[test]
fn interior_nul_in_a_veto_message_is_escaped_not_dropped() {
    assert_eq!(vm_started(c"fail-with-nul"), Status::EPERM.0);
    assert_eq!(take_calls(), vec![Call::PluginError("a\\0b".into())]);
}

#[test]
fn successful_hook_returns_ok_and_calls_nothing() {
    assert_eq!(vm_started(c"alice"), 0);
    assert_eq!(container_session_created(c"app"), 0);
    assert_eq!(take_calls(), vec![]);
}

#[test]
fn panic_in_veto_hook_is_eio_with_user_message_and_the_plugin_survives() {
    assert_eq!(vm_started(c"panic"), Status::EIO.0);
    assert_eq!(
        take_calls(),
        vec![Call::PluginError("panicked: boom in test".into())]
    );
    assert_eq!(container_session_created(c"panic-formatted"), Status::EIO.0);
    assert_eq!(
        take_calls(),
        vec![Call::PluginError("panicked: boom number 42".into())]
    );

    for _ in 0..3 {
        assert_eq!(vm_started(c"alice"), 0);
        assert_eq!(vm_started(c"panic"), Status::EIO.0);
    }
    assert_eq!(take_calls().len(), 3);
}

#[test]
fn panic_in_non_veto_hook_is_eio_without_plugin_error() {
    assert_eq!(vm_stopping(c"panic"), Status::EIO.0);
    assert_eq!(session_vm_stopping(c"panic"), Status::EIO.0);
    assert_eq!(take_calls(), vec![]);
    assert_eq!(vm_stopping(c"alice"), 0);
}

// ---------------------------------------------------------------------------------------------------
// Argument conversion

#[test]
fn structs_are_copied_field_by_field() {
    take_seen();
    assert_eq!(distribution_started(c"ubuntu"), 0);
    assert_eq!(container_session_created(c"app"), 0);
    let session = Session {
        id: SessionId(7),
        uid: 1000,
        gid: 1001,
        user_name: "u".into(),
    };
    let distro = Distribution {
        id: Uuid([0xab; 16]),
        name: "ubuntu".into(),
        pid_namespace: 4026531836,
        package: "pkg".into(),
        init_pid: 321,
        flavor: "debian".into(),
        version: "12".into(),
    };
    let cs = ContainerSession {
        id: ContainerSessionId(3),
        display_name: "app".into(),
        application_pid: 99,
        uid: 1000,
        gid: 1001,
    };
    assert_eq!(
        take_seen(),
        vec![Seen::Distribution(session, distro), Seen::Container(cs)]
    );
}

#[test]
fn null_strings_become_empty() {
    take_seen();
    let mut s = session(c"");
    s.user_name = ptr::null();
    let v = plughost_vm_settings { flags: 2 };
    let mut d = distribution(c"");
    (d.name, d.package, d.flavor, d.version) = (ptr::null(), ptr::null(), ptr::null(), ptr::null());
    let o = offline_distribution(c"offline");
    let mut c = container_session(c"");
    c.display_name = ptr::null();
    let h = hooks();
    // SAFETY: valid structs for the call; NULL strings are allowed.
    unsafe {
        assert_eq!(h.on_vm_started.unwrap()(&s, &v), 0);
        assert_eq!(h.on_distribution_started.unwrap()(&s, &d), 0);
        assert_eq!(h.on_distribution_registered.unwrap()(&s, &o), 0);
        assert_eq!(h.on_container_session_created.unwrap()(&c), 0);
    }
    let seen = take_seen();
    let Seen::Vm(session, settings) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(session.user_name, "");
    assert!(settings.custom_kernel_cmdline() && !settings.custom_kernel());
    let Seen::Distribution(_, distro) = &seen[1] else {
        panic!("{seen:?}")
    };
    assert_eq!(
        [
            &distro.name,
            &distro.package,
            &distro.flavor,
            &distro.version
        ],
        [""; 4]
    );
    let Seen::Offline(_, offline) = &seen[2] else {
        panic!("{seen:?}")
    };
    assert_eq!(offline.name, "offline");
    assert_eq!(
        [&offline.package, &offline.flavor, &offline.version],
        [""; 3]
    );
    assert_eq!(
        offline.id.to_string(),
        "cdcdcdcd-cdcd-cdcd-cdcd-cdcdcdcdcdcd"
    );
    let Seen::Container(cs) = &seen[3] else {
        panic!("{seen:?}")
    };
    assert_eq!(cs.display_name, "");
}

#[test]
fn invalid_utf8_is_replaced() {
    take_seen();
    assert_eq!(vm_stopping(c"caf\xff!"), 0);
    let seen = take_seen();
    let Seen::VmStopping(session) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(session.user_name, "caf\u{fffd}!");
}

#[test]
fn null_struct_pointer_is_efault_and_skips_the_plugin() {
    take_seen();
    let s = session(c"alice");
    let h = hooks();
    // SAFETY: NULL struct pointers are within the trampolines' contract.
    unsafe {
        assert_eq!(h.on_vm_started.unwrap()(&s, ptr::null()), Status::EFAULT.0);
        assert_eq!(h.on_vm_stopping.unwrap()(ptr::null()), Status::EFAULT.0);
        assert_eq!(
            h.on_session_vm_started.unwrap()(ptr::null()),
            Status::EFAULT.0
        );
    }
    assert_eq!(take_seen(), vec![]);
    assert_eq!(take_calls(), vec![]);
}

// ---------------------------------------------------------------------------------------------------
// The API

#[test]
fn api_reports_the_running_version() {
    assert_eq!(fake_api().version(), Version::new(1, 2, 3));
    assert_eq!(fake_api().version().to_string(), "1.2.3");
}

#[test]
fn mount_folder_passes_its_arguments_and_status() {
    let api = fake_api();
    let path = std::path::Path::new("/srv/data");
    assert_eq!(
        api.mount_folder(SessionId(4), path, "/mnt/data", true, "data"),
        Ok(())
    );
    let missing = std::path::Path::new("/missing");
    assert_eq!(
        api.mount_folder(SessionId(4), missing, "/mnt/x", false, "x"),
        Err(Status::ENOENT)
    );
    assert_eq!(
        take_calls(),
        vec![
            Call::MountFolder {
                session: 4,
                host: "/srv/data".into(),
                vm: "/mnt/data".into(),
                read_only: true,
                name: "data".into()
            },
            Call::MountFolder {
                session: 4,
                host: "/missing".into(),
                vm: "/mnt/x".into(),
                read_only: false,
                name: "x".into()
            },
        ]
    );
}

#[test]
fn interior_nul_is_einval_without_calling_the_service() {
    let api = fake_api();
    let path = std::path::Path::new("/srv");
    let sid = SessionId(1);
    let cs = ContainerSessionId(1);
    assert_eq!(
        api.mount_folder(sid, path, "/mnt\0", true, "n"),
        Err(Status::EINVAL)
    );
    assert_eq!(
        api.mount_folder(sid, path, "/mnt", true, "\0"),
        Err(Status::EINVAL)
    );
    assert_eq!(
        api.execute_binary(sid, "/bin/\0cat", &["cat"]).unwrap_err(),
        Status::EINVAL
    );
    assert_eq!(
        api.execute_binary(sid, "/bin/cat", &["c\0at"]).unwrap_err(),
        Status::EINVAL
    );
    let uuid = Uuid([1; 16]);
    let in_distro = api.execute_binary_in_distribution(sid, &uuid, "/bin/cat", &["\0"]);
    assert_eq!(in_distro.unwrap_err(), Status::EINVAL);
    assert_eq!(api.plugin_error("bad\0message"), Err(Status::EINVAL));
    assert_eq!(
        api.container_mount_folder(cs, path, "/m\0", true),
        Err(Status::EINVAL)
    );
    assert_eq!(
        api.container_unmount_folder(cs, "/m\0"),
        Err(Status::EINVAL)
    );
    let bad_env = api.container_create_process(cs, "/bin/true", &["true"], Some(&["A=\0"]));
    assert_eq!(bad_env.unwrap_err(), (Status::EINVAL, None));
    assert_eq!(take_calls(), vec![]);
}

#[test]
fn execute_binary_returns_the_process_socket() {
    let api = fake_api();
    let mut socket = api
        .execute_binary(SessionId(2), "/bin/cat", &["/bin/cat", "/mnt/rs/file"])
        .unwrap();
    let mut out = String::new();
    socket.read_to_string(&mut out).unwrap();
    assert_eq!(out, "OK");
    assert_eq!(
        take_calls(),
        vec![Call::ExecuteBinary {
            session: 2,
            path: "/bin/cat".into(),
            argv: vec!["/bin/cat".into(), "/mnt/rs/file".into()]
        }]
    );
}

#[test]
fn failed_execute_does_not_take_the_out_fd() {
    let api = fake_api();
    let uuid = Uuid([7; 16]);
    let result = api.execute_binary_in_distribution(SessionId(2), &uuid, "/bin/true", &["true"]);
    assert_eq!(result.unwrap_err(), Status::NOT_RUNNING);
    // The fake wrote fd 0 on failure; had the SDK wrapped it, stdin would now be closed.
    assert!(std::os::fd::AsFd::as_fd(&std::io::stdin())
        .try_clone_to_owned()
        .is_ok());
    assert_eq!(
        take_calls(),
        vec![Call::ExecuteInDistribution {
            session: 2,
            distribution: [7; 16],
            path: "/bin/true".into(),
            argv: vec!["true".into()]
        }]
    );
}

#[test]
fn container_mounts_pass_their_arguments() {
    let api = fake_api();
    let cs = ContainerSessionId(5);
    assert_eq!(
        api.container_mount_folder(cs, std::path::Path::new("/h"), "/c", false),
        Ok(())
    );
    assert_eq!(api.container_unmount_folder(cs, "/c"), Ok(()));
    assert_eq!(
        take_calls(),
        vec![
            Call::ContainerMount {
                cs: 5,
                host: "/h".into(),
                mountpoint: "/c".into(),
                read_only: false
            },
            Call::ContainerUnmount {
                cs: 5,
                mountpoint: "/c".into()
            },
        ]
    );
}

#[test]
fn container_process_gives_streams_and_exit_code_and_moves_threads() {
    let api = fake_api();
    let process = api
        .container_create_process(
            ContainerSessionId(5),
            "/bin/sh",
            &["sh", "-c", "exit 42"],
            None,
        )
        .unwrap();
    let mut out = String::new();
    std::fs::File::from(process.fd(ProcessFd::Stdout).unwrap())
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "out");
    process.fd(ProcessFd::Stdin).unwrap();
    process.exit_fd().unwrap();
    assert_eq!(process.exit_code(), Ok(42));
    // A process handle may move to another thread (and is released there).
    std::thread::spawn(move || drop(process)).join().unwrap();
    assert_eq!(
        take_calls(),
        vec![Call::CreateProcess {
            cs: 5,
            path: "/bin/sh".into(),
            argv: vec!["sh".into(), "-c".into(), "exit 42".into()],
            envp: None
        }]
    );
    // The release ran on the other thread, which recorded it in its own thread-local.
}

#[test]
fn container_process_release_is_recorded() {
    let api = fake_api();
    let env: &[&str] = &["A=1", "B=2"];
    let process = api
        .container_create_process(ContainerSessionId(5), "/bin/true", &["true"], Some(env))
        .unwrap();
    drop(process);
    assert_eq!(
        take_calls(),
        vec![
            Call::CreateProcess {
                cs: 5,
                path: "/bin/true".into(),
                argv: vec!["true".into()],
                envp: Some(vec!["A=1".into(), "B=2".into()])
            },
            Call::ProcessRelease,
        ]
    );
}

#[test]
fn container_process_errors_carry_status_and_errno() {
    let api = fake_api();
    let missing = api.container_create_process(ContainerSessionId(5), "/missing", &["x"], None);
    assert_eq!(missing.unwrap_err(), (Status::ENOENT, Some(2)));
    let no_vm = api.container_create_process(ContainerSessionId(0), "/bin/true", &["true"], None);
    assert_eq!(no_vm.unwrap_err(), (Status::NOT_RUNNING, None));
    assert_eq!(take_calls().len(), 2);
}

#[test]
fn api_and_process_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Api>();
    assert_send::<crate::Process>();
}
