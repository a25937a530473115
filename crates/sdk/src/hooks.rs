//! Loading the plugin and running its hooks: the safe half of the FFI edge.
//!
//! [`crate::ffi`] converts the C arguments and calls [`load`] and [`dispatch`]; these run every piece of
//! plugin code under `catch_unwind`, so no panic crosses `extern "C"`, and turn the plugin's
//! `Result`s into statuses (`PLUGIN_ABI.md`, "Hooks" and "User-visible errors").

use std::any::Any;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use plughost_abi as abi;

use crate::{Api, HookError, HookResult, Plugin, Status, Version};

/// The loaded plugin and the API it was loaded with. Set once by the entry point, read by every hook.
pub(crate) struct Loaded {
    api: Api,
    plugin: Box<dyn Plugin>,
}

/// This library's plugin. A cdylib links its own copy of the SDK, so each plugin library has its own.
pub(crate) static LOADED: OnceLock<Loaded> = OnceLock::new();

/// The hooks of `struct plughost_hooks_v1`, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    VmStarted,
    VmStopping,
    DistributionStarted,
    DistributionStopping,
    DistributionRegistered,
    DistributionUnregistered,
    ContainerSessionCreated,
    ContainerSessionStopping,
    SessionVmStarted,
    SessionVmStopping,
}

impl Hook {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Hook::VmStarted => "on_vm_started",
            Hook::VmStopping => "on_vm_stopping",
            Hook::DistributionStarted => "on_distribution_started",
            Hook::DistributionStopping => "on_distribution_stopping",
            Hook::DistributionRegistered => "on_distribution_registered",
            Hook::DistributionUnregistered => "on_distribution_unregistered",
            Hook::ContainerSessionCreated => "on_container_session_created",
            Hook::ContainerSessionStopping => "on_container_session_stopping",
            Hook::SessionVmStarted => "on_session_vm_started",
            Hook::SessionVmStopping => "on_session_vm_stopping",
        }
    }

    /// Whether the hook can stop its operation, and so may call `plugin_error` (`PLUGIN_ABI.md`, "Hooks").
    pub(crate) fn may_veto(self) -> bool {
        match self {
            Hook::VmStarted | Hook::DistributionStarted | Hook::ContainerSessionCreated => true,
            Hook::VmStopping
            | Hook::DistributionStopping
            | Hook::DistributionRegistered
            | Hook::DistributionUnregistered
            | Hook::ContainerSessionStopping
            | Hook::SessionVmStarted
            | Hook::SessionVmStopping => false,
        }
    }
}

/// The body of the entry point once `api` is known good: checks the version, builds the plugin and
/// stores it in `slot` ([`LOADED`] outside tests). Returns the entry point's status.
pub(crate) fn load<P: Plugin>(
    slot: &OnceLock<Loaded>,
    api: Api,
    required: Option<Version>,
) -> Status {
    // As PLUGHOST_REQUIRE_VERSION: refuse before anything else runs.
    if let Some(required) = required {
        if !abi::version_at_least(api.version().into(), required.into()) {
            return Status::REQUIRES_UPDATE;
        }
    }
    // One plugin per library: a second entry call (the same library configured twice in process) would
    // otherwise share the first instance's hooks silently.
    if slot.get().is_some() {
        log_line(format_args!(
            "plugin entry point called twice in one process; load each plugin library once"
        ));
        return Status::ILLEGAL_STATE;
    }
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let plugin = match P::load(api) {
            Ok(plugin) => plugin,
            Err(status) => return HookError::new(status).wire_status(),
        };
        match slot.set(Loaded {
            api,
            plugin: Box::new(plugin),
        }) {
            Ok(()) => Status::OK,
            // Lost a race against a concurrent entry call; our instance is dropped here.
            Err(_) => Status::ILLEGAL_STATE,
        }
    }));
    match outcome {
        Ok(status) => status,
        Err(payload) => {
            let text = payload_text(payload);
            log_line(format_args!("panic in load: {text}"));
            Status::EIO
        }
    }
}

/// Runs `hook` for the loaded plugin. `call` converts the C arguments (an `Err` is a bad argument from
/// the service: the plugin is not called) and calls the plugin's method.
pub(crate) fn dispatch(
    hook: Hook,
    call: impl FnOnce(&dyn Plugin) -> Result<HookResult, Status>,
) -> abi::plughost_status {
    let Some(loaded) = LOADED.get() else {
        // Unreachable through the service: only a successful entry call hands out the hooks.
        log_line(format_args!(
            "{} called before the plugin was loaded",
            hook.name()
        ));
        return Status::ILLEGAL_STATE.0;
    };
    run_hook(hook, loaded.api, || call(loaded.plugin.as_ref())).0
}

/// Runs one hook body under `catch_unwind` and turns its outcome into the status for the service.
fn run_hook(hook: Hook, api: Api, body: impl FnOnce() -> Result<HookResult, Status>) -> Status {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Err(bad_argument)) => bad_argument,
        Ok(Ok(Ok(()))) => Status::OK,
        Ok(Ok(Err(err))) => {
            if let Some(message) = &err.message {
                if hook.may_veto() {
                    set_user_message(hook, api, message);
                } else {
                    // The service only logs a non-veto failure's status; keep the message next to it.
                    log_line(format_args!(
                        "{} failed with {}: {message}",
                        hook.name(),
                        err.wire_status()
                    ));
                }
            }
            err.wire_status()
        }
        Err(payload) => {
            let text = payload_text(payload);
            log_line(format_args!("panic in {}: {text}", hook.name()));
            if hook.may_veto() {
                set_user_message(hook, api, &format!("panicked: {text}"));
            }
            Status::EIO
        }
    }
}

/// Calls `plugin_error` on the hook thread. It fails when the plugin already called it in this hook;
/// the first message stands and the SDK only notes the failure.
fn set_user_message(hook: Hook, api: Api, message: &str) {
    // `plugin_error` refuses interior NULs; show them rather than lose the message.
    let message = message.replace('\0', "\\0");
    if let Err(status) = api.plugin_error(&message) {
        log_line(format_args!(
            "plugin_error failed in {}: {status}",
            hook.name()
        ));
    }
}

/// The text of a panic payload (`panic!("...")` gives `&str` or `String`). Drops the payload under
/// `catch_unwind`, because a payload's destructor may itself panic.
fn payload_text(payload: Box<dyn Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    };
    if let Err(nested) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        // A destructor that panicked once may panic again: leak rather than loop.
        std::mem::forget(nested);
    }
    text
}

/// One line to stderr, in a single write so that lines from several threads do not interleave. Write
/// errors are ignored: `eprintln!` would panic on them, and there is nowhere else to report.
fn log_line(args: std::fmt::Arguments<'_>) {
    let line = format!("plughost-sdk: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
