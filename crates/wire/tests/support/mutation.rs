//! Random mutations of valid frames or lines, for proptest: bit flips, byte changes, insertions,
//! removals, truncations, and bytes replaced by a varint claiming a huge count. Shared by
//! `crates/wire/tests/` and `crates/service/tests/control_protocol.rs` (included with `#[path]`).
//!
//! Needs `proptest` and a `varint(u64, &mut Vec<u8>)` (LEB128, `frames.rs`) in its parent module.

use proptest::prelude::*;

use super::varint;

/// One mutation of a valid frame.
#[derive(Clone, Debug)]
pub enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        value: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Replace one byte by a varint claiming a huge count.
    Inflate {
        at: usize,
        shift: u8,
    },
    Truncate {
        len: usize,
    },
    Remove {
        at: usize,
        len: usize,
    },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 7u8..64).prop_map(|(at, shift)| Mutation::Inflate { at, shift }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

pub fn apply(frame: &mut Vec<u8>, m: &Mutation) {
    let n = frame.len().max(1);
    match m {
        Mutation::Flip { at, bit } => {
            if let Some(b) = frame.get_mut(at % n) {
                *b ^= 1 << bit;
            }
        }
        Mutation::Set { at, value } => {
            if let Some(b) = frame.get_mut(at % n) {
                *b = *value;
            }
        }
        Mutation::Insert { at, bytes } => {
            let at = at % (frame.len() + 1);
            frame.splice(at..at, bytes.iter().copied());
        }
        Mutation::Inflate { at, shift } => {
            if frame.is_empty() {
                return;
            }
            let at = at % frame.len();
            let mut claim = Vec::new();
            varint(1u64 << shift, &mut claim);
            frame.splice(at..=at, claim);
        }
        Mutation::Truncate { len } => frame.truncate(len % (frame.len() + 1)),
        Mutation::Remove { at, len } => {
            let at = at % (frame.len() + 1);
            let end = (at + len).min(frame.len());
            frame.drain(at..end);
        }
    }
}
