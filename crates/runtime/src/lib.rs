//! The plugin runtime: load one plugin library, call its hooks with C structs, and give it the
//! `plughost_api_v1` table whose calls go to a [`Backend`].
//!
//! Two users share it:
//! - the `plughost-host` binary (`crates/host`: `main.rs`, `serve/`), where the backend is the
//!   channel to the service: every API call becomes a [`plughost_wire::ApiCall`] frame;
//! - the supervisor's in-process mode, where the backend calls the service directly.
//!
//! The C functions of the API table carry no context pointer, so the backend is process-global
//! ([`install_backend`]); a host process has exactly one plugin, and in-process mode routes by thread.
//!
//! Unsafe code lives in [`api`] (C strings and out-pointers from the plugin) and [`plugin`] (dlopen
//! and calling plugin function pointers), and in [`crash`] (the fault handler the host arms; the
//! runtime only notes the plugin's modules for it); each module documents its invariants. The host's
//! own confinement (seccomp, Landlock) is the binary's, not this crate's.

pub mod api;
pub mod crash;
pub mod hook;
pub mod plugin;

pub use api::{install_backend, Backend, BackendReply};
pub use hook::HookOutcome;
pub use plugin::{LoadedPlugin, PluginLoadError};
