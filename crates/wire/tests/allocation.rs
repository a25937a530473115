//! A length prefix is a claim, not a size: decoding a frame that claims 2^60 bytes or entries must not
//! allocate more than a small bound (serde caps a list's preallocation at 1 MiB; strings are copied
//! from the bytes actually present). One test per binary: the allocator's counter is process-wide.
//! Moved here from `fuzz/tests` so that CI runs it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

mod support;

use plughost_wire::{decode, HostMsg, ServiceMsg, PROTOCOL_VERSION};
use support::frames::{host_seeds, service_seeds};
use support::varint;

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)] // a global allocator is an unsafe trait
                      // SAFETY: forwards every call to the system allocator unchanged; it only records the largest size.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

const BOUND: usize = 2 << 20;

#[test]
fn claimed_lengths_do_not_allocate() {
    let mut frames = Vec::new();
    // Every byte position of every seed, replaced by a claim of 2^60 (and of 2^31, 2^40).
    for (_, seed) in host_seeds().into_iter().chain(service_seeds()) {
        for at in 4..seed.len() {
            for shift in [31u32, 40, 60] {
                let mut frame = seed.clone();
                let mut claim = Vec::new();
                varint(1u64 << shift, &mut claim);
                frame.splice(at..=at, claim);
                frames.push(frame);
            }
        }
    }
    let mut argv = vec![b'P', b'H', PROTOCOL_VERSION, 0, 4, 9, 1, 7, 1, b'x'];
    varint(1 << 60, &mut argv);
    frames.push(argv);
    assert!(frames.len() > 1000, "only {} frames", frames.len());
    LARGEST.store(0, Ordering::Relaxed);
    for frame in &frames {
        let _ = decode::<HostMsg>(frame);
        let _ = decode::<ServiceMsg>(frame);
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= BOUND,
        "decoding {} frames allocated {largest} bytes at once",
        frames.len()
    );
}
