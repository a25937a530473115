//! The fuzz targets' property, under `cargo test` on stable: over the seed frames, over hand-made
//! hostile frames (absurd length prefixes, unknown kinds), and over random mutations of the seeds.

use plughost_fuzz::{
    check_control_reply, check_control_request, check_host_msg, check_service_msg, control_seeds,
    host_seeds, service_seeds, varint,
};
use plughost_wire::{decode, HostMsg, ServiceMsg, WireError, MAX_FRAME, PROTOCOL_VERSION};
use proptest::prelude::*;

fn header() -> Vec<u8> {
    vec![b'P', b'H', PROTOCOL_VERSION, 0]
}

#[test]
fn every_seed_decodes_and_round_trips() {
    for (name, frame) in host_seeds() {
        assert!(decode::<HostMsg>(&frame).is_ok(), "{name}");
        check_host_msg(&frame);
    }
    for (name, frame) in service_seeds() {
        assert!(decode::<ServiceMsg>(&frame).is_ok(), "{name}");
        check_service_msg(&frame);
    }
}

#[test]
fn every_control_seed_decodes_and_round_trips() {
    let (requests, replies) = control_seeds();
    for line in &requests {
        plughost_service::decode::<plughost_service::Request>(line, plughost_service::MAX_LINE)
            .expect("request seed decodes");
        check_control_request(line);
        for end in 0..line.len() {
            check_control_request(&line[..end]);
        }
    }
    for line in &replies {
        check_control_reply(line);
    }
}

/// `HookDone { id: 1, status: 0, message: Some(<len claims 2^60 bytes>) }` followed by a few bytes.
#[test]
fn string_claiming_two_to_the_sixty_bytes_is_malformed() {
    let mut frame = header();
    frame.extend_from_slice(&[3, 1, 0, 1]);
    varint(1 << 60, &mut frame);
    frame.extend_from_slice(b"abc");
    let err = decode::<HostMsg>(&frame).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err}");
    println!("string 2^60: {err}");
}

/// `Call { ExecuteBinary { argv: <count claims 2^60 entries> } }`.
#[test]
fn list_claiming_two_to_the_sixty_entries_is_malformed() {
    let mut frame = header();
    frame.extend_from_slice(&[4, 9, 1, 7, 1, b'x']);
    varint(1 << 60, &mut frame);
    frame.extend_from_slice(&[1, b'y']);
    let err = decode::<HostMsg>(&frame).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err}");
    println!("argv 2^60: {err}");
}

#[test]
fn unknown_message_kinds_are_refused() {
    for kind in [6u64, 127, 128, u64::from(u32::MAX)] {
        let mut frame = header();
        varint(kind, &mut frame);
        let err = decode::<HostMsg>(&frame).unwrap_err();
        assert!(
            matches!(err, WireError::UnknownKind { kinds: 6, .. }),
            "{kind}: {err}"
        );
        println!("kind {kind}: {err}");
    }
    // Beyond u32: not a variant index at all.
    let mut frame = header();
    varint(u64::MAX, &mut frame);
    let err = decode::<HostMsg>(&frame).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err}");
    // Eleven continuation bytes: longer than any u64 varint.
    let mut frame = header();
    frame.extend_from_slice(&[0xff; 11]);
    assert!(matches!(
        decode::<HostMsg>(&frame),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn every_prefix_of_every_seed_is_refused_or_decodes() {
    for (_, frame) in host_seeds() {
        for end in 0..frame.len() {
            check_host_msg(&frame[..end]);
            assert!(decode::<HostMsg>(&frame[..end]).is_err());
        }
    }
    for (_, frame) in service_seeds() {
        for end in 0..frame.len() {
            check_service_msg(&frame[..end]);
            let _ = decode::<ServiceMsg>(&frame[..end]);
        }
    }
}

#[test]
fn frame_over_the_limit_is_refused_before_decoding() {
    let (_, seed) = host_seeds().remove(0);
    let mut frame = seed.clone();
    frame.resize(MAX_FRAME + 1, 0);
    assert_eq!(
        decode::<HostMsg>(&frame),
        Err(WireError::Oversized { len: MAX_FRAME + 1 })
    );
}

/// One mutation of a valid frame.
#[derive(Clone, Debug)]
enum Mutation {
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

fn mutation() -> impl Strategy<Value = Mutation> {
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

fn apply(frame: &mut Vec<u8>, m: &Mutation) {
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_host_frames_never_panic_and_round_trip(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let seeds = host_seeds();
        let mut frame = seeds[seed.index(seeds.len())].1.clone();
        for m in &mutations {
            apply(&mut frame, m);
        }
        check_host_msg(&frame);
    }

    #[test]
    fn mutated_control_lines_never_panic_and_round_trip(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let (requests, _) = control_seeds();
        let mut line = requests[seed.index(requests.len())].clone();
        for m in &mutations {
            apply(&mut line, m);
        }
        check_control_request(&line);
    }

    #[test]
    fn mutated_service_frames_never_panic_and_round_trip(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let seeds = service_seeds();
        let mut frame = seeds[seed.index(seeds.len())].1.clone();
        for m in &mutations {
            apply(&mut frame, m);
        }
        check_service_msg(&frame);
    }
}
