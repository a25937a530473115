//! The control protocol's decoders under mutation, in the normal test suite (the `fuzz/` targets
//! `control_request` and `control_reply` run the same checks under libFuzzer): every seed line
//! decodes and round-trips, no prefix of one and none of 20 000 mutated lines panics, over-allocates
//! or decodes to something that does not re-encode to itself.

#[path = "support/control.rs"]
mod control;
// The wire's mutations (they need a `varint` in their parent module).
#[path = "../../wire/tests/support/mutation.rs"]
mod mutation;

use control::{check_control_reply, check_control_request, control_seeds};
use mutation::{apply, mutation};
use proptest::prelude::*;

/// LEB128, for `mutation`'s huge-count claims.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
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
        plughost_service::decode::<plughost_service::Reply>(line, plughost_service::MAX_REPLY)
            .expect("reply seed decodes");
        check_control_reply(line);
        for end in 0..line.len() {
            check_control_reply(&line[..end]);
        }
    }
}

#[test]
fn a_line_over_the_limit_is_refused() {
    let mut line = vec![b' '; plughost_service::MAX_LINE + 1];
    line.push(b'\n');
    assert!(
        plughost_service::read_line(std::io::Cursor::new(&line), plughost_service::MAX_LINE)
            .is_err()
    );
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
        reply in any::<bool>(),
    ) {
        let (requests, replies) = control_seeds();
        let pool = if reply { &replies } else { &requests };
        let mut line = pool[seed.index(pool.len())].clone();
        for m in &mutations {
            apply(&mut line, m);
        }
        if reply {
            check_control_reply(&line);
        } else {
            check_control_request(&line);
        }
    }
}
