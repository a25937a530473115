//! What a hostile peer can send the wire decoder: the seed frames, every prefix of them, hand-made
//! frames (absurd length prefixes, unknown kinds, oversized), and 20 000 random mutations of valid
//! frames per direction. Moved here from `fuzz/tests` so that CI runs it; the fuzz targets check the
//! same property (`support/frames.rs`) with libFuzzer.

mod support;

use std::sync::LazyLock;

use plughost_wire::{decode, HostMsg, ServiceMsg, WireError, MAX_FRAME, PROTOCOL_VERSION};
use proptest::prelude::*;
use support::frames::{check_host_msg, check_service_msg, host_seeds, service_seeds};
use support::mutation::{apply, mutation};
use support::varint;

/// Encoded once: 20 000 cases re-encoding every seed would cost more than the decoding under test.
static HOST_SEEDS: LazyLock<Vec<(&str, Vec<u8>)>> = LazyLock::new(host_seeds);
static SERVICE_SEEDS: LazyLock<Vec<(&str, Vec<u8>)>> = LazyLock::new(service_seeds);

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

/// `HookDone { id: 1, status: 0, message: Some(<len claims 2^60 bytes>) }` followed by a few bytes.
#[test]
fn string_claiming_two_to_the_sixty_bytes_is_malformed() {
    let mut frame = header();
    frame.extend_from_slice(&[3, 1, 0, 1]);
    varint(1 << 60, &mut frame);
    frame.extend_from_slice(b"abc");
    let err = decode::<HostMsg>(&frame).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)), "{err}");
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

proptest! {
    // XorShift: in a debug build (CI's `cargo test`) the default ChaCha generator took most of the
    // time, ~3 s per 20 000 cases; mutations need variety, not cryptographic randomness.
    #![proptest_config(ProptestConfig {
        cases: 20_000,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_host_frames_never_panic_and_round_trip(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut frame = seed.get(&HOST_SEEDS).1.clone();
        for m in &mutations {
            apply(&mut frame, m);
        }
        check_host_msg(&frame);
    }

    #[test]
    fn mutated_service_frames_never_panic_and_round_trip(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut frame = seed.get(&SERVICE_SEEDS).1.clone();
        for m in &mutations {
            apply(&mut frame, m);
        }
        check_service_msg(&frame);
    }
}
