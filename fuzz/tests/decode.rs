//! The control-protocol targets' property, under `cargo test` on stable: over the seed lines, their
//! prefixes, and random mutations of them. (The wire's checks run in the main workspace, where CI
//! runs them: `crates/wire/tests/hostile_frames.rs` and `allocation.rs`.)

use plughost_fuzz::{check_control_reply, check_control_request, control_seeds, varint};
use proptest::prelude::*;

// The same mutations as the wire's tests (it needs `varint` in scope here).
#[path = "../../crates/wire/tests/support/mutation.rs"]
mod mutation;
use mutation::{apply, mutation};

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

proptest! {
    // XorShift, as the wire's tests: ChaCha dominated the time in a debug build.
    #![proptest_config(ProptestConfig {
        cases: 20_000,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

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
}
