//! In-process mode: the plugin library is loaded into the service itself and called directly, behind
//! the same manager API. For trusted plugins, and as the speed baseline: a crash here is the
//! service's crash.
//!
//! The C API functions carry no context, so calls are routed by thread: on a thread that is running a
//! hook of this mode, they go to that dispatch's `scope` callbacks (the same re-entrancy rule as out of
//! process); on any other thread, to the default callbacks of the most recently created manager that
//! has in-process plugins (a process normally has one manager).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use plughost_runtime::{api::api_table, hook, Backend, BackendReply, LoadedPlugin};
use plughost_wire::HookOutcome;
use plughost_wire::{ApiCall, Hook, LoadFailure, Version};

use crate::callbacks::{CallContext, ServiceCallbacks};
use crate::execute::{execute, ProcessTable};

type Default = (
    Arc<dyn ServiceCallbacks + Send + Sync>,
    Arc<Mutex<ProcessTable>>,
);

/// The default callbacks for calls from non-hook threads.
static DEFAULT: Mutex<Option<Default>> = Mutex::new(None);

#[derive(Clone, Copy)]
struct Scope {
    handler: *const (dyn ServiceCallbacks + 'static),
    processes: *const Mutex<ProcessTable>,
}

thread_local! {
    /// The scope of the in-process hook running on this thread.
    static SCOPE: Cell<Option<Scope>> = const { Cell::new(None) };
}

struct InProcessBackend;

impl Backend for InProcessBackend {
    fn call(&self, call: ApiCall) -> Result<BackendReply, i32> {
        let ctx = CallContext {
            plugin: "(in-process)",
        };
        if let Some(scope) = SCOPE.with(Cell::get) {
            // SAFETY: `Scope` is only set by `with_scope`, on this thread, and cleared before the
            // references it was made from go out of scope; we are inside that window.
            let (handler, processes) = unsafe { (&*scope.handler, &*scope.processes) };
            return Ok(execute(ctx, call, handler, processes));
        }
        let default = DEFAULT.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match default {
            Some((handler, processes)) => Ok(execute(ctx, call, &*handler, &processes)),
            None => Err(plughost_abi::PLUGHOST_E_SHUTTING_DOWN),
        }
    }
}

/// Runs `f` with `handler` as this thread's scope.
fn with_scope<R>(
    handler: &dyn ServiceCallbacks,
    processes: &Mutex<ProcessTable>,
    f: impl FnOnce() -> R,
) -> R {
    let handler: *const (dyn ServiceCallbacks + '_) = handler;
    // SAFETY: only the lifetime bound of the trait object changes; the pointer is dereferenced only
    // on this thread while `f` runs, and the guard below restores the previous scope before returning
    // (also on unwind), i.e. before `handler` can dangle.
    let handler: *const (dyn ServiceCallbacks + 'static) = unsafe { std::mem::transmute(handler) };
    let scope = Scope { handler, processes };
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPE.with(|s| s.replace(Some(scope))));
    f()
}

/// One plugin loaded into the service.
pub(crate) struct InProcessPlugin {
    plugin: LoadedPlugin,
    processes: Arc<Mutex<ProcessTable>>,
}

// SAFETY: the hook table holds only `extern "C"` function pointers, which the contract makes callable
// from any thread ("Every API function may be called from any plugin thread" and hooks are delivered
// from service threads).
unsafe impl Send for InProcessPlugin {}
// SAFETY: as above; the table is never mutated after load.
unsafe impl Sync for InProcessPlugin {}

impl InProcessPlugin {
    pub fn load(
        path: &Path,
        version: Version,
        default: Arc<dyn ServiceCallbacks + Send + Sync>,
    ) -> Result<InProcessPlugin, LoadFailure> {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            plughost_runtime::install_backend(&InProcessBackend);
        });
        let processes = Arc::new(Mutex::new(ProcessTable::default()));
        *DEFAULT.lock().unwrap_or_else(|e| e.into_inner()) = Some((default, processes.clone()));
        let plugin = LoadedPlugin::load(path, api_table(version)).map_err(|e| e.0)?;
        Ok(InProcessPlugin { plugin, processes })
    }

    pub fn call(&self, hook: &Hook, scope: &dyn ServiceCallbacks) -> Option<HookOutcome> {
        with_scope(scope, &self.processes, || {
            hook::call(&self.plugin.hooks, &hook.borrowed())
        })
    }
}
