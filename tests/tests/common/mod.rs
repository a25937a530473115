//! Helpers shared by several test binaries (`mod common;` in each). Each binary uses a different
//! subset, so the items one binary leaves unused are not dead code.
#![allow(dead_code)]

pub mod hostile;
