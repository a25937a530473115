//! Loading a plugin library and running its entry point.
//!
//! Safety invariant: loading a library runs its constructors, and calling its entry point runs its
//! code; both are what the host exists to do, and their effects are confined by the process boundary
//! (out of process) or trusted by configuration (in process). The library is never unloaded, so the
//! hook pointers stay valid for the process's lifetime.
#![allow(unsafe_code)]

use std::path::Path;

use plughost_abi::{
    plughost_api_v1, plughost_hooks_v1, plughost_plugin_entry_v1_fn, PLUGHOST_ENTRY_POINT_V1,
    PLUGHOST_OK,
};
use plughost_wire::{HookKind, HookSet, LoadFailure};

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLoadError(pub LoadFailure);

/// A loaded plugin: its hook table. The library stays mapped for the life of the process.
pub struct LoadedPlugin {
    pub hooks: plughost_hooks_v1,
}

impl LoadedPlugin {
    /// `dlopen`s `path` (`RTLD_NOW | RTLD_LOCAL`), finds `plughost_plugin_entry_v1` and calls it
    /// with `api` and a zero-filled hook table.
    pub fn load(
        path: &Path,
        api: &'static plughost_api_v1,
    ) -> Result<LoadedPlugin, PluginLoadError> {
        let flags = libc::RTLD_NOW | libc::RTLD_LOCAL;
        // SAFETY: see the module invariant: running the plugin's constructors is intended.
        let library = unsafe { libloading::os::unix::Library::open(Some(path), flags) }
            .map_err(|e| PluginLoadError(LoadFailure::Open(error_chain(&e))))?;
        // SAFETY: the symbol's type is fixed by the contract (`PLUGIN_ABI.md`, "Entry point").
        let entry = unsafe {
            library.get::<plughost_plugin_entry_v1_fn>(PLUGHOST_ENTRY_POINT_V1.as_bytes())
        }
        .map_err(|_| PluginLoadError(LoadFailure::NoEntryPoint))?;
        let entry: plughost_plugin_entry_v1_fn = *entry;
        // Before the plugin's first code runs: a crash in the entry point is located too.
        crate::crash::note_modules(entry as usize);
        // Never unload: hooks and threads of the plugin may outlive any handle we hold.
        std::mem::forget(library);
        let mut hooks = plughost_hooks_v1::default();
        // SAFETY: `api` is 'static and `hooks` is a valid, zero-filled table on our stack.
        let status = unsafe { entry(api, &mut hooks) };
        if status != PLUGHOST_OK {
            return Err(PluginLoadError(LoadFailure::EntryFailed(status)));
        }
        Ok(LoadedPlugin { hooks })
    }

    /// Which hooks the plugin set.
    pub fn hook_set(&self) -> HookSet {
        let h = &self.hooks;
        let set = [
            (HookKind::VmStarted, h.on_vm_started.is_some()),
            (HookKind::VmStopping, h.on_vm_stopping.is_some()),
            (
                HookKind::DistributionStarted,
                h.on_distribution_started.is_some(),
            ),
            (
                HookKind::DistributionStopping,
                h.on_distribution_stopping.is_some(),
            ),
            (
                HookKind::DistributionRegistered,
                h.on_distribution_registered.is_some(),
            ),
            (
                HookKind::DistributionUnregistered,
                h.on_distribution_unregistered.is_some(),
            ),
            (
                HookKind::ContainerSessionCreated,
                h.on_container_session_created.is_some(),
            ),
            (
                HookKind::ContainerSessionStopping,
                h.on_container_session_stopping.is_some(),
            ),
            (
                HookKind::SessionVmStarted,
                h.on_session_vm_started.is_some(),
            ),
            (
                HookKind::SessionVmStopping,
                h.on_session_vm_stopping.is_some(),
            ),
        ];
        set.iter()
            .filter(|(_, present)| *present)
            .fold(HookSet::default(), |acc, (kind, _)| acc.with(*kind))
    }
}

/// `e` and its sources (libloading puts `dlerror()`'s text in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
