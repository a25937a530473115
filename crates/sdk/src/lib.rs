//! Safe Rust for plughost plugin authors.
//!
//! A plugin is a shared library with a C ABI (`docs/PLUGIN_ABI.md`, mirrored by the
//! `plughost-abi` crate). This crate lets you write one in safe Rust: implement [`Plugin`], then
//! [`export_plugin!`] emits the `plughost_plugin_entry_v1` symbol. When the service loads the library,
//! the entry point builds your plugin with [`Plugin::load`], keeps it for the life of the process, and
//! hands the service one `extern "C"` trampoline per hook. A trampoline copies the C arguments into
//! owned types ([`Session`], [`Distribution`], ...), calls your method, and turns its [`HookResult`]
//! into a `plughost_status`. Calls back into the service go through [`Api`].
//!
//! # Where it sits
//!
//! ```text
//! service ──hook──▶ plughost-host (dlopen) ──▶ plughost_plugin_entry_v1 / trampolines ──▶ your Plugin
//! your Plugin ──Api::mount_folder etc.──▶ plughost_api_v1 ──▶ host ──▶ service
//! ```
//!
//! The library runs out of process by default (in a `plughost-host` process, one per plugin) or, when
//! configured, inside the service; the code is the same.
//!
//! # Errors and panics
//!
//! - A hook returning `Err(HookError)` returns its status, which must be negative (`0` or positive
//!   becomes `-EIO`). For the veto hooks (`on_vm_started`, `on_distribution_started`,
//!   `on_container_session_created`) a message set with [`HookError::with_message`] is passed to
//!   `plugin_error`, so the user sees it; for the other hooks it goes to stderr.
//! - A panic never crosses the C boundary: it becomes `-EIO`, one line
//!   `plughost-sdk: panic in <hook>: <payload>` on stderr and, in a veto hook, the user message
//!   `panicked: <payload>`. The plugin stays loaded and later hooks run normally (your own locks may be
//!   poisoned, though). A panic in [`Plugin::load`] fails the load with `-EIO`.
//!
//! # What it does not do
//!
//! - It does not catch panics when the plugin is built with `panic = "abort"`: that aborts the host
//!   process, which the service reports as a crash.
//! - It holds one plugin per library: calling the entry point a second time in one process (the same
//!   library configured twice, in process) fails with `PLUGHOST_E_ILLEGAL_STATE`.
//! - It sets no logger or `tracing` subscriber, starts no threads, and never unloads the plugin.
//! - It does not hide the C types: [`abi`] re-exports them for whatever this API lacks.
//!
//! # Example
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! # not on crates.io yet: a path to (or a git URL of) a plughost checkout
//! plughost-sdk = { path = "../plughost/crates/sdk" }
//! ```
//!
//! `src/lib.rs`, a plugin that mounts a tools folder into every VM, checks that the VM can run it, and
//! refuses to start the VM otherwise:
//!
//! ```
//! use std::io::Read;
//! use std::path::Path;
//! use std::sync::Mutex;
//!
//! use plughost_sdk::{Api, HookError, HookResult, Plugin, Session, SessionId, Status, VmSettings};
//!
//! struct ToolsPlugin {
//!     api: Api,
//!     /// Sessions whose VM currently has the tools mounted.
//!     mounted: Mutex<Vec<SessionId>>,
//! }
//!
//! impl Plugin for ToolsPlugin {
//!     fn load(api: Api) -> Result<Self, Status> {
//!         Ok(ToolsPlugin { api, mounted: Mutex::new(Vec::new()) })
//!     }
//!
//!     fn on_vm_started(&self, session: &Session, settings: &VmSettings) -> HookResult {
//!         if settings.custom_kernel() {
//!             return Ok(()); // a custom kernel may lack what the tools need: stay out of the way
//!         }
//!         self.api
//!             .mount_folder(session.id, Path::new("/opt/tools"), "/mnt/tools", true, "tools")
//!             .map_err(|status| {
//!                 HookError::with_message(status, format!("cannot mount /opt/tools: {status}"))
//!             })?;
//!         let mut socket = self.api.execute_binary(
//!             session.id,
//!             "/mnt/tools/check",
//!             &["check", "--user", &session.user_name],
//!         )?;
//!         let mut verdict = String::new();
//!         socket.read_to_string(&mut verdict)?;
//!         if verdict.trim() != "ok" {
//!             return Err(HookError::with_message(Status::EPERM, format!("tools check: {verdict}")));
//!         }
//!         self.mounted.lock().unwrap().push(session.id);
//!         Ok(())
//!     }
//!
//!     fn on_vm_stopping(&self, session: &Session) -> HookResult {
//!         self.mounted.lock().unwrap().retain(|id| *id != session.id);
//!         Ok(())
//!     }
//! }
//!
//! plughost_sdk::export_plugin!(ToolsPlugin);
//! # fn main() {}
//! ```

mod api;
#[allow(unsafe_code)]
mod ffi;
mod hooks;
mod plugin;
mod status;
mod types;

#[cfg(test)]
#[allow(unsafe_code)]
mod tests;

pub use api::{Api, Process, ProcessFd, Version};
pub use plugin::Plugin;
pub use status::{HookError, HookResult, Status};
pub use types::{
    ContainerSession, ContainerSessionId, Distribution, OfflineDistribution, Session, SessionId,
    Uuid, VmSettings,
};

/// The C types of `include/plughost/plugin_api.h`.
pub use plughost_abi as abi;

/// What [`export_plugin!`] expands to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::ffi::{__entry, __entry_requiring};
}

/// Exports a [`Plugin`] as this library's `plughost_plugin_entry_v1` (`PLUGIN_ABI.md`, "Entry point").
///
/// Use it once, in a `cdylib` crate:
///
/// ```
/// # use plughost_sdk::{Api, Plugin, Status};
/// # struct MyPlugin;
/// # impl Plugin for MyPlugin { fn load(_: Api) -> Result<Self, Status> { Ok(MyPlugin) } }
/// // Refuse to load (PLUGHOST_E_REQUIRES_UPDATE) in a service older than 1.2.0, like
/// // PLUGHOST_REQUIRE_VERSION(1, 2, 0, api) in C.
/// plughost_sdk::export_plugin!(MyPlugin, require = (1, 2, 0));
/// # fn main() {}
/// ```
///
/// Or `plughost_sdk::export_plugin!(MyPlugin);` to accept any version. The emitted function validates
/// its pointers (NULL is `-EFAULT`), runs `MyPlugin::load` under `catch_unwind`, and fills every hook.
/// It carries `#[allow(unsafe_code)]`, so a plugin crate may `#![deny(unsafe_code)]` (not `forbid`).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty $(,)?) => {
        /// The plugin's entry point, emitted by `plughost_sdk::export_plugin!`.
        ///
        /// # Safety
        /// Called by the service with the pointers `PLUGIN_ABI.md`, "Entry point" describes.
        #[unsafe(no_mangle)]
        #[allow(unsafe_code)]
        pub unsafe extern "C" fn plughost_plugin_entry_v1(
            api: *const $crate::abi::plughost_api_v1,
            hooks: *mut $crate::abi::plughost_hooks_v1,
        ) -> $crate::abi::plughost_status {
            // SAFETY: the service passes what `PLUGIN_ABI.md`, "Entry point" says, which is `__entry`'s
            // contract.
            unsafe { $crate::__private::__entry::<$plugin>(api, hooks) }
        }
        const _: $crate::abi::plughost_plugin_entry_v1_fn = plughost_plugin_entry_v1;
    };
    ($plugin:ty, require = ($major:expr, $minor:expr, $revision:expr $(,)?) $(,)?) => {
        /// The plugin's entry point, emitted by `plughost_sdk::export_plugin!`.
        ///
        /// # Safety
        /// Called by the service with the pointers `PLUGIN_ABI.md`, "Entry point" describes.
        #[unsafe(no_mangle)]
        #[allow(unsafe_code)]
        pub unsafe extern "C" fn plughost_plugin_entry_v1(
            api: *const $crate::abi::plughost_api_v1,
            hooks: *mut $crate::abi::plughost_hooks_v1,
        ) -> $crate::abi::plughost_status {
            // SAFETY: the service passes what `PLUGIN_ABI.md`, "Entry point" says, which is
            // `__entry_requiring`'s contract.
            unsafe {
                $crate::__private::__entry_requiring::<$plugin>(
                    api,
                    hooks,
                    $crate::Version::new($major, $minor, $revision),
                )
            }
        }
        const _: $crate::abi::plughost_plugin_entry_v1_fn = plughost_plugin_entry_v1;
    };
}
