//! Reads arbitrary bytes as one control-protocol reply line and decodes it
//! (`plughost_service::read_line`, `decode`): never a panic, and whatever decodes round-trips.
//! See `src/lib.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    plughost_fuzz::check_control_reply(bytes);
});
