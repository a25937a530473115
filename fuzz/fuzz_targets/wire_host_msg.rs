//! Decodes arbitrary bytes as one `HostMsg` frame (`plughost_wire::decode`): it must never panic or
//! allocate what the bytes only claim, and whatever decodes must round-trip. See `src/lib.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    plughost_fuzz::check_host_msg(frame);
});
