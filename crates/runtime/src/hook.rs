//! Calling a hook: the wire's values (their strings borrowed from the frame) become the C structs of
//! `plugin_api.h` for the duration of one call, and the thread-local hook context enforces the
//! rules of `plugin_error` (`PLUGIN_ABI.md`, "API": only on the hook's own thread, during a veto
//! hook, once per hook).
//!
//! Safety invariant of this module: every pointer placed in a C struct points into a struct or a
//! string buffer (`with_c_strings`) that lives on this function's stack, or in a buffer it owns,
//! until the hook returns.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::c_char;
use std::mem::MaybeUninit;

use plughost_abi::{
    plughost_container_session, plughost_distribution, plughost_hooks_v1,
    plughost_offline_distribution, plughost_session, plughost_uuid, plughost_vm_settings,
    PLUGHOST_E_ILLEGAL_CALL, PLUGHOST_E_ILLEGAL_STATE, PLUGHOST_OK,
};
use plughost_wire::{ContainerSessionOf, HookOf, HookRef, SessionOf};

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

/// How many bytes of a hook's strings (NULs included) are copied on the stack; longer ones go to
/// one heap buffer. A hook's strings are names: a few dozen bytes.
const STACK_STRINGS: usize = 256;

/// Runs `f` with NUL-terminated copies of `strings` (in order). A string for C ends at its first
/// interior NUL, if any (the C side could not see past it anyway). No allocation for the usual
/// sizes: the hook path of a host touches as little memory as it can (BENCHMARKS.md,
/// "fanout_100").
fn with_c_strings<const N: usize, R>(
    strings: [&str; N],
    f: impl FnOnce([*const c_char; N]) -> R,
) -> R {
    // An upper bound: a string cut at a NUL takes less.
    let need: usize = strings.iter().map(|s| s.len() + 1).sum();
    // Not zeroed (no `memset` call): only the bytes written below are ever read, by C.
    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_STRINGS];
    let mut heap = Vec::new();
    let buf: &mut [MaybeUninit<u8>] = if need <= STACK_STRINGS {
        &mut stack
    } else {
        heap.resize(need, MaybeUninit::uninit());
        &mut heap
    };
    let mut offsets = [0usize; N];
    let mut at = 0;
    for (offset, s) in offsets.iter_mut().zip(strings) {
        *offset = at;
        // Byte by byte up to the first NUL: these strings are short, and a loop that stops at a
        // NUL is not turned into a `memcpy` call (another cold libc page per hook).
        for &byte in s.as_bytes() {
            if byte == 0 {
                break;
            }
            buf[at].write(byte);
            at += 1;
        }
        buf[at].write(0);
        at += 1;
    }
    // `buf` is not touched again while `f` runs: the pointers stay valid until it returns.
    let base = buf.as_ptr();
    f(offsets.map(|offset| base.wrapping_add(offset).cast::<c_char>()))
}

fn c_session(s: &SessionOf<&str>, user_name: *const c_char) -> plughost_session {
    plughost_session {
        id: s.id.0,
        uid: s.uid,
        gid: s.gid,
        user_name,
    }
}

fn c_container_session(
    c: &ContainerSessionOf<&str>,
    display_name: *const c_char,
) -> plughost_container_session {
    plughost_container_session {
        id: c.id.0,
        display_name,
        application_pid: c.application_pid,
        uid: c.uid,
        gid: c.gid,
    }
}

/// Calls `hook` on the plugin's table, on this thread. `None` when the plugin did not set that hook
/// (which counts as success without a round into plugin code). The hook's strings are borrowed (the
/// host decodes them from the frame without copying: `plughost_wire::decode_hook`; in-process mode
/// passes `Hook::borrowed`).
pub fn call(hooks: &plughost_hooks_v1, hook: &HookRef<'_>) -> Option<HookOutcome> {
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

fn dispatch(hooks: &plughost_hooks_v1, hook: &HookRef<'_>) -> Option<i32> {
    // SAFETY (every call below): the function pointers come from the plugin's own entry point,
    // which the contract makes responsible for them; every struct pointer passed points to a
    // local, and every string pointer into `with_c_strings`' buffer, that outlive the call (see the
    // module invariant).
    match hook {
        HookOf::VmStarted { session, settings } => {
            let f = hooks.on_vm_started?;
            let settings = plughost_vm_settings {
                flags: settings.flags,
            };
            with_c_strings([session.user_name], |[user_name]| {
                let s = c_session(session, user_name);
                // SAFETY: see above.
                Some(unsafe { f(&s, &settings) })
            })
        }
        HookOf::VmStopping { session } => {
            let f = hooks.on_vm_stopping?;
            with_c_strings([session.user_name], |[user_name]| {
                let s = c_session(session, user_name);
                // SAFETY: see above.
                Some(unsafe { f(&s) })
            })
        }
        HookOf::DistributionStarted {
            session,
            distribution: d,
        }
        | HookOf::DistributionStopping {
            session,
            distribution: d,
        } => {
            let f = match hook {
                HookOf::DistributionStarted { .. } => hooks.on_distribution_started?,
                _ => hooks.on_distribution_stopping?,
            };
            let strings = [session.user_name, d.name, d.package, d.flavor, d.version];
            with_c_strings(strings, |[user_name, name, package, flavor, version]| {
                let s = c_session(session, user_name);
                let d = plughost_distribution {
                    id: plughost_uuid { bytes: d.id.0 },
                    name,
                    pid_namespace: d.pid_namespace,
                    package,
                    init_pid: d.init_pid,
                    flavor,
                    version,
                };
                // SAFETY: see above.
                Some(unsafe { f(&s, &d) })
            })
        }
        HookOf::DistributionRegistered {
            session,
            distribution: d,
        }
        | HookOf::DistributionUnregistered {
            session,
            distribution: d,
        } => {
            let f = match hook {
                HookOf::DistributionRegistered { .. } => hooks.on_distribution_registered?,
                _ => hooks.on_distribution_unregistered?,
            };
            let strings = [session.user_name, d.name, d.package, d.flavor, d.version];
            with_c_strings(strings, |[user_name, name, package, flavor, version]| {
                let s = c_session(session, user_name);
                let d = plughost_offline_distribution {
                    id: plughost_uuid { bytes: d.id.0 },
                    name,
                    package,
                    flavor,
                    version,
                };
                // SAFETY: see above.
                Some(unsafe { f(&s, &d) })
            })
        }
        HookOf::ContainerSessionCreated(c)
        | HookOf::ContainerSessionStopping(c)
        | HookOf::SessionVmStarted(c)
        | HookOf::SessionVmStopping(c) => {
            let f = match hook {
                HookOf::ContainerSessionCreated(_) => hooks.on_container_session_created?,
                HookOf::ContainerSessionStopping(_) => hooks.on_container_session_stopping?,
                HookOf::SessionVmStarted(_) => hooks.on_session_vm_started?,
                _ => hooks.on_session_vm_stopping?,
            };
            with_c_strings([c.display_name], |[display_name]| {
                let c = c_container_session(c, display_name);
                // SAFETY: see above.
                Some(unsafe { f(&c) })
            })
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

    fn read(pointers: &[*const c_char]) -> Vec<Vec<u8>> {
        pointers
            .iter()
            // SAFETY: each pointer is a NUL-terminated string of `with_c_strings`' buffer, read
            // inside its closure.
            .map(|&p| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes().to_vec())
            .collect()
    }

    #[test]
    fn interior_nul_ends_the_c_string() {
        let got = with_c_strings(["ab\0cd", "", "x"], |p| read(&p));
        assert_eq!(got, [b"ab".to_vec(), b"".to_vec(), b"x".to_vec()]);
    }

    #[test]
    fn strings_longer_than_the_stack_buffer_are_copied_whole() {
        let long = "y".repeat(STACK_STRINGS * 3);
        let got = with_c_strings(["a", &long, "b"], |p| read(&p));
        assert_eq!(
            got,
            [b"a".to_vec(), long.into_bytes(), b"b".to_vec()],
            "every string whole and in order"
        );
    }
}
