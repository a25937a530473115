//! Shared code of the fuzz targets: the property every decoder must hold, and seed inputs.
//!
//! The decoders of bytes that cross a process boundary:
//! - the wire between the service and a plugin host (`plughost_wire::decode`): [`check_host_msg`]
//!   (target `wire_host_msg`, the untrusted direction) and [`check_service_msg`]
//!   (`wire_service_msg`), with their seeds: defined in `crates/wire/tests/support/frames.rs`
//!   (included here with `#[path]`), where the wire's own tests, run by CI, use them too;
//! - the control protocol between `plughostctl` and `plughostd` (`plughost_service::read_line` and
//!   `decode`): [`check_control_request`] (`control_request`: what any local user can send the
//!   daemon) and [`check_control_reply`] (`control_reply`).
//!
//! The targets (`fuzz_targets/`) feed libFuzzer's bytes to these functions. The same functions run
//! under `cargo test`, on stable, over the seeds and over mutations of them, so a property broken by
//! a change shows up without libFuzzer: the wire's in `crates/wire/tests/` (CI), the control
//! protocol's here (`tests/`).
//!
//! The property, for any bytes:
//! - decoding never panics, never aborts and never allocates in proportion to a length the bytes
//!   merely *claim* (libFuzzer runs with `-malloc_limit_mb`, see README.md);
//! - a frame that decodes re-encodes, and the re-encoding decodes to the same message (the decoder
//!   accepts nothing the encoder cannot express).
//!
//! This crate is not part of the main workspace and nothing in the product depends on it.
#![deny(unsafe_code)]

// The wire's checks and seeds live with the wire's own tests (which CI runs); the targets use the
// same file.
#[path = "../../crates/wire/tests/support/frames.rs"]
mod frames;
pub use frames::{
    check_host_msg, check_service_msg, host_messages, host_seeds, service_messages, service_seeds,
    varint,
};

#[path = "../../crates/service/tests/support/control.rs"]
mod control;
pub use control::{check_control_reply, check_control_request, control_seeds};
