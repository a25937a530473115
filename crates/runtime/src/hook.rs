//! Calling a hook: the wire's owned values become the C structs of `plugin_api.h` for the duration of
//! one call, and the thread-local hook context enforces the rules of `plugin_error`
//! (`PLUGIN_ABI.md`, "API": only on the hook's own thread, during a veto hook, once per hook).
//!
//! Safety invariant of this module: every pointer placed in a C struct points into a `CString` or
//! struct that lives on this function's stack until the hook returns.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::CString;

use plughost_abi::{
    plughost_container_session, plughost_distribution, plughost_hooks_v1,
    plughost_offline_distribution, plughost_session, plughost_uuid, plughost_vm_settings,
    PLUGHOST_E_ILLEGAL_CALL, PLUGHOST_E_ILLEGAL_STATE, PLUGHOST_OK,
};
use plughost_wire::{ContainerSession, Distribution, Hook, OfflineDistribution, Session};

pub use plughost_wire::HookOutcome;

struct HookContext {
    hook: &'static str,
    may_veto: bool,
    message: Option<String>,
}

/// Whether a refused `plugin_error` is reported on stderr (the host binary: the service logs it,
/// and `plughost check` fails the hook for it).
static REPORT_REFUSALS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reports every refused `plugin_error` from now on, one line on stderr:
/// `plughost-host: plugin_error refused (-10002) in on_vm_stopping, which may not veto: <message>`.
pub fn report_refused_plugin_errors() {
    REPORT_REFUSALS.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn refused(status: i32, why: &str, message: &str) -> i32 {
    if REPORT_REFUSALS.load(std::sync::atomic::Ordering::Relaxed) {
        let message: String = message
            .chars()
            .take(200)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        eprintln!("plughost-host: plugin_error refused ({status}) {why}: {message}");
    }
    status
}

thread_local! {
    /// The hook running on this thread, if any. Only this thread can see it, which is what makes
    /// `plugin_error` from another thread an `ILLEGAL_CALL`.
    static CURRENT: RefCell<Option<HookContext>> = const { RefCell::new(None) };
}

/// Longest message kept from `plugin_error` (longer ones are cut at a character boundary).
pub const MAX_MESSAGE: usize = 4096;

/// `plugin_error(message)` with the spec's rules.
pub fn plugin_error(mut message: String) -> i32 {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    CURRENT.with(|current| match current.borrow_mut().as_mut() {
        None => refused(
            PLUGHOST_E_ILLEGAL_CALL,
            "outside a hook (or off the hook's thread)",
            &message,
        ),
        Some(ctx) if !ctx.may_veto => refused(
            PLUGHOST_E_ILLEGAL_CALL,
            &format!("in {}, which may not veto", ctx.hook),
            &message,
        ),
        Some(ctx) if ctx.message.is_some() => refused(
            PLUGHOST_E_ILLEGAL_STATE,
            &format!("in {}: a second message", ctx.hook),
            &message,
        ),
        Some(ctx) => {
            ctx.message = Some(message);
            PLUGHOST_OK
        }
    })
}

/// Is a hook running on this thread? (In-process mode routes API calls by it.)
pub fn in_hook() -> bool {
    CURRENT.with(|current| current.borrow().is_some())
}

/// A string for C: an interior NUL (which the C side could not see past anyway) ends it.
fn c_string(s: &str) -> CString {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap_or_default()
}

struct CSession {
    _user_name: CString,
    raw: plughost_session,
}

impl CSession {
    fn new(s: &Session) -> CSession {
        let user_name = c_string(&s.user_name);
        let raw = plughost_session {
            id: s.id.0,
            uid: s.uid,
            gid: s.gid,
            user_name: user_name.as_ptr(),
        };
        CSession {
            _user_name: user_name,
            raw,
        }
    }
}

struct CDistribution {
    _strings: [CString; 4],
    raw: plughost_distribution,
}

impl CDistribution {
    fn new(d: &Distribution) -> CDistribution {
        let strings = [&d.name, &d.package, &d.flavor, &d.version].map(|s| c_string(s));
        let raw = plughost_distribution {
            id: plughost_uuid { bytes: d.id.0 },
            name: strings[0].as_ptr(),
            pid_namespace: d.pid_namespace,
            package: strings[1].as_ptr(),
            init_pid: d.init_pid,
            flavor: strings[2].as_ptr(),
            version: strings[3].as_ptr(),
        };
        CDistribution {
            _strings: strings,
            raw,
        }
    }
}

struct COfflineDistribution {
    _strings: [CString; 4],
    raw: plughost_offline_distribution,
}

impl COfflineDistribution {
    fn new(d: &OfflineDistribution) -> COfflineDistribution {
        let strings = [&d.name, &d.package, &d.flavor, &d.version].map(|s| c_string(s));
        let raw = plughost_offline_distribution {
            id: plughost_uuid { bytes: d.id.0 },
            name: strings[0].as_ptr(),
            package: strings[1].as_ptr(),
            flavor: strings[2].as_ptr(),
            version: strings[3].as_ptr(),
        };
        COfflineDistribution {
            _strings: strings,
            raw,
        }
    }
}

struct CContainerSession {
    _name: CString,
    raw: plughost_container_session,
}

impl CContainerSession {
    fn new(c: &ContainerSession) -> CContainerSession {
        let name = c_string(&c.display_name);
        let raw = plughost_container_session {
            id: c.id.0,
            display_name: name.as_ptr(),
            application_pid: c.application_pid,
            uid: c.uid,
            gid: c.gid,
        };
        CContainerSession { _name: name, raw }
    }
}

/// Calls `hook` on the plugin's table, on this thread. `None` when the plugin did not set that hook
/// (which counts as success without a round into plugin code).
pub fn call(hooks: &plughost_hooks_v1, hook: &Hook) -> Option<HookOutcome> {
    let previous = CURRENT.with(|current| {
        current.replace(Some(HookContext {
            hook: hook.kind().name(),
            may_veto: hook.kind().may_veto(),
            message: None,
        }))
    });
    let status = dispatch(hooks, hook);
    let context = CURRENT.with(|current| current.replace(previous));
    let message = context.and_then(|c| c.message);
    status.map(|status| HookOutcome { status, message })
}

fn dispatch(hooks: &plughost_hooks_v1, hook: &Hook) -> Option<i32> {
    // SAFETY (every call below): the function pointers come from the plugin's own entry point, which
    // the contract makes responsible for them; every struct pointer passed points to a local that
    // outlives the call (see the module invariant).
    match hook {
        Hook::VmStarted { session, settings } => {
            let f = hooks.on_vm_started?;
            let s = CSession::new(session);
            let settings = plughost_vm_settings {
                flags: settings.flags,
            };
            // SAFETY: see above.
            Some(unsafe { f(&s.raw, &settings) })
        }
        Hook::VmStopping { session } => {
            let f = hooks.on_vm_stopping?;
            let s = CSession::new(session);
            // SAFETY: see above.
            Some(unsafe { f(&s.raw) })
        }
        Hook::DistributionStarted {
            session,
            distribution,
        }
        | Hook::DistributionStopping {
            session,
            distribution,
        } => {
            let f = match hook {
                Hook::DistributionStarted { .. } => hooks.on_distribution_started?,
                _ => hooks.on_distribution_stopping?,
            };
            let s = CSession::new(session);
            let d = CDistribution::new(distribution);
            // SAFETY: see above.
            Some(unsafe { f(&s.raw, &d.raw) })
        }
        Hook::DistributionRegistered {
            session,
            distribution,
        }
        | Hook::DistributionUnregistered {
            session,
            distribution,
        } => {
            let f = match hook {
                Hook::DistributionRegistered { .. } => hooks.on_distribution_registered?,
                _ => hooks.on_distribution_unregistered?,
            };
            let s = CSession::new(session);
            let d = COfflineDistribution::new(distribution);
            // SAFETY: see above.
            Some(unsafe { f(&s.raw, &d.raw) })
        }
        Hook::ContainerSessionCreated(c)
        | Hook::ContainerSessionStopping(c)
        | Hook::SessionVmStarted(c)
        | Hook::SessionVmStopping(c) => {
            let f = match hook {
                Hook::ContainerSessionCreated(_) => hooks.on_container_session_created?,
                Hook::ContainerSessionStopping(_) => hooks.on_container_session_stopping?,
                Hook::SessionVmStarted(_) => hooks.on_session_vm_started?,
                _ => hooks.on_session_vm_stopping?,
            };
            let c = CContainerSession::new(c);
            // SAFETY: see above.
            Some(unsafe { f(&c.raw) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_error_outside_a_hook_is_an_illegal_call() {
        assert_eq!(plugin_error("x".into()), PLUGHOST_E_ILLEGAL_CALL);
    }

    #[test]
    fn interior_nul_ends_the_c_string() {
        assert_eq!(c_string("ab\0cd").as_bytes(), b"ab");
    }
}
