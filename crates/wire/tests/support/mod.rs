//! Shared by the wire's hostile-input tests; `fuzz/` includes the same files with `#[path]`.
// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

pub mod frames;
pub mod mutation;

pub use frames::varint;
