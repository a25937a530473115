//! Test plugin: panics in `on_vm_started` with `boom in on_vm_started`.
//!
//! The SDK turns the panic into `-EIO` and the user message `panicked: boom in on_vm_started`; the
//! plugin stays loaded, so the `on_vm_stopping` that follows the failed start still runs. It appends
//! `vm_stopping` to `$PH_LOG` (when set; one write, `O_APPEND`) to show that.
#![deny(unsafe_code)]

use std::fs::OpenOptions;
use std::io::Write;

use plughost_sdk::{Api, HookResult, Plugin, Session, Status, VmSettings};

struct PanicInHook;

impl Plugin for PanicInHook {
    fn load(_api: Api) -> Result<Self, Status> {
        Ok(PanicInHook)
    }

    fn on_vm_started(&self, _session: &Session, _settings: &VmSettings) -> HookResult {
        panic!("boom in on_vm_started");
    }

    fn on_vm_stopping(&self, _session: &Session) -> HookResult {
        log("vm_stopping");
        Ok(())
    }
}

plughost_sdk::export_plugin!(PanicInHook);

/// Appends `line` to `$PH_LOG` in one write; does nothing when `PH_LOG` is unset.
fn log(line: &str) {
    let Some(path) = std::env::var_os("PH_LOG") else {
        return;
    };
    let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) else {
        return;
    };
    let _ = file.write_all(format!("{line}\n").as_bytes());
}
