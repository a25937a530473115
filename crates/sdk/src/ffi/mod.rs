//! The FFI seam: every `unsafe` of the crate is here.
//!
//! # Invariants
//!
//! 1. **The API table.** A [`RawApi`] holds a `&'static plughost_api_v1` that the service handed to the
//!    entry point, or that a caller of the unsafe [`Api::from_raw`] vouched for. Its functions behave as
//!    `PLUGIN_ABI.md`, "API" says: they read their pointer arguments only during the call, take
//!    NUL-terminated strings and NULL-terminated string arrays, write only through their out-pointers,
//!    and may be called from any thread. Calling them with pointers borrowed from live Rust values is
//!    therefore sound.
//! 2. **Hook arguments.** Each pointer the service passes to a trampoline is NULL or points to a valid,
//!    aligned struct of its type, and each string in it is NULL or NUL-terminated; all of it stays valid
//!    until the hook returns (`PLUGIN_ABI.md`, "Types"). Trampolines copy everything into owned types
//!    before calling the plugin and keep no pointer. A NULL struct pointer is `-EFAULT`; a NULL string
//!    is `""`.
//! 3. **Out fds.** An fd written by a *successful* API call is owned by the caller; it is wrapped in an
//!    [`OwnedFd`](std::os::fd::OwnedFd) exactly once. After a failed call the out value is ignored, and a success without an
//!    fd is `-EIO`.
//! 4. **Processes.** A `plughost_process *` from a successful `container_create_process` is valid until
//!    `process_release`, which [`RawProcess`]'s `Drop` calls exactly once.
//! 5. **No unwinding across `extern "C"`.** The trampolines and the entry point reach plugin code only
//!    through [`hooks::load`] and [`hooks::dispatch`], which run it under `catch_unwind`.
//!
//! The module is split by direction: [`calls`] goes from the plugin to the service (invariants 1, 3,
//! 4), [`trampolines`] from the service to the plugin (invariants 2, 5); the entry point is here.

mod calls;
mod trampolines;

use std::sync::OnceLock;

use plughost_abi::{plughost_api_v1, plughost_hooks_v1, plughost_status};

pub(crate) use calls::{CStrArray, RawApi, RawProcess};

use crate::hooks::{self, Loaded};
use crate::{Api, Plugin, Status, Version};

/// The body of `plughost_plugin_entry_v1` as [`export_plugin!`](crate::export_plugin) emits it.
///
/// # Safety
/// `api` and `hooks` are NULL or as `PLUGIN_ABI.md`, "Entry point" says: `*api` is a valid API table
/// that stays valid while this library is loaded (see invariant 1), `*hooks` is writable for the call.
#[doc(hidden)]
pub unsafe fn __entry<P: Plugin>(
    api: *const plughost_api_v1,
    hooks: *mut plughost_hooks_v1,
) -> plughost_status {
    // SAFETY: our caller's contract is `entry`'s.
    unsafe { entry::<P>(&hooks::LOADED, api, hooks, None) }
}

/// As [`__entry`], refusing with `PLUGHOST_E_REQUIRES_UPDATE` a service older than `required`.
///
/// # Safety
/// As [`__entry`].
#[doc(hidden)]
pub unsafe fn __entry_requiring<P: Plugin>(
    api: *const plughost_api_v1,
    hooks: *mut plughost_hooks_v1,
    required: Version,
) -> plughost_status {
    // SAFETY: our caller's contract is `entry`'s.
    unsafe { entry::<P>(&hooks::LOADED, api, hooks, Some(required)) }
}

/// # Safety
/// As [`__entry`].
pub(crate) unsafe fn entry<P: Plugin>(
    slot: &OnceLock<Loaded>,
    api: *const plughost_api_v1,
    hooks: *mut plughost_hooks_v1,
    required: Option<Version>,
) -> plughost_status {
    if api.is_null() || hooks.is_null() || !api.is_aligned() || !hooks.is_aligned() {
        return Status::EFAULT.0;
    }
    // SAFETY: non-NULL and aligned; the service keeps the table valid for the plugin's lifetime, which
    // ends no earlier than this library's statics that hold the reference (invariant 1).
    let table: &'static plughost_api_v1 = unsafe { &*api };
    let api = Api { raw: RawApi(table) };
    let status = hooks::load::<P>(slot, api, required);
    if status.is_ok() {
        // SAFETY: non-NULL, aligned, and writable for the duration of the entry call.
        unsafe { hooks.write(trampolines::TRAMPOLINES) };
    }
    status.0
}

impl Api {
    /// Wraps an API table that did not come through the entry point, e.g. a test double in a plugin's
    /// own unit tests.
    ///
    /// # Safety
    /// Every function in `table` must behave as `PLUGIN_ABI.md`, "API" describes: read its pointer
    /// arguments only during the call, write only through its out-pointers, hand out fds the caller
    /// owns, and be callable from any thread.
    pub unsafe fn from_raw(table: &'static plughost_api_v1) -> Api {
        Api { raw: RawApi(table) }
    }
}
