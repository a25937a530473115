//! Test plugin: `on_vm_started` calls `check_settings`, which calls `std::process::abort()`.
//!
//! An abort is not a panic: the SDK cannot catch it, the host dies of `SIGABRT`. The crash report
//! names `rust_abort_in_hook::check_settings` (lib.rs), called from the hook.
#![deny(unsafe_code)]

use plughost_sdk::{Api, HookResult, Plugin, Session, Status, VmSettings};

struct AbortInHook;

impl Plugin for AbortInHook {
    fn load(_api: Api) -> Result<Self, Status> {
        Ok(AbortInHook)
    }

    fn on_vm_started(&self, _session: &Session, settings: &VmSettings) -> HookResult {
        check_settings(settings);
        Ok(())
    }
}

#[inline(never)]
fn check_settings(settings: &VmSettings) {
    if std::hint::black_box(settings).flags == std::hint::black_box(settings).flags {
        std::process::abort();
    }
}

plughost_sdk::export_plugin!(AbortInHook);
