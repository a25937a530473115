//! Shared code of the fuzz targets: the property every decoder must hold, and seed inputs.
//!
//! The decoders of bytes that cross a process boundary:
//! - the wire between the service and a plugin host (`plughost_wire::decode`): [`check_host_msg`]
//!   (target `wire_host_msg`, the untrusted direction) and [`check_service_msg`]
//!   (`wire_service_msg`), with their seeds: defined in `crates/wire/tests/support/frames.rs`
//!   (included here with `#[path]`), where the wire's own tests, run by CI, use them too;
//! - the control protocol between `plughostctl` and `plughostd` (`plughost_service::read_line` and
//!   `decode`): [`check_control_request`] (`control_request`: what any local user can send the
//!   daemon) and [`check_control_reply`] (`control_reply`).
//!
//! The targets (`fuzz_targets/`) feed libFuzzer's bytes to these functions. The same functions run
//! under `cargo test`, on stable, over the seeds and over mutations of them, so a property broken by
//! a change shows up without libFuzzer: the wire's in `crates/wire/tests/` (CI), the control
//! protocol's here (`tests/`).
//!
//! The property, for any bytes:
//! - decoding never panics, never aborts and never allocates in proportion to a length the bytes
//!   merely *claim* (libFuzzer runs with `-malloc_limit_mb`, see README.md);
//! - a frame that decodes re-encodes, and the re-encoding decodes to the same message (the decoder
//!   accepts nothing the encoder cannot express).
//!
//! This crate is not part of the main workspace and nothing in the product depends on it.
#![deny(unsafe_code)]

// The wire's checks and seeds live with the wire's own tests (which CI runs); the targets use the
// same file.
#[path = "../../crates/wire/tests/support/frames.rs"]
mod frames;
pub use frames::{
    check_host_msg, check_service_msg, host_messages, host_seeds, service_messages, service_seeds,
    varint,
};

/// Client to daemon: one request line, read and decoded as the daemon does.
pub fn check_control_request(bytes: &[u8]) {
    use plughost_service::{decode, encode, read_line, Request, MAX_LINE};
    if let Ok(line) = read_line(std::io::Cursor::new(bytes), MAX_LINE) {
        assert!(
            line.len() <= MAX_LINE,
            "read_line returned an oversized line"
        );
        assert_eq!(
            line.last(),
            Some(&b'\n'),
            "read_line returned an unterminated line"
        );
        if let Ok(request) = decode::<Request>(&line, MAX_LINE) {
            let _ = request.takes_stdio();
            let again = decode::<Request>(&encode(&request), MAX_LINE)
                .expect("a re-encoded request decodes");
            assert_eq!(again, request, "Request does not round-trip");
        }
    }
    let _ = decode::<Request>(bytes, MAX_LINE);
}

/// Daemon to client: one reply line.
pub fn check_control_reply(bytes: &[u8]) {
    use plughost_service::{decode, encode, read_line, Reply, MAX_REPLY};
    if let Ok(line) = read_line(std::io::Cursor::new(bytes), MAX_REPLY) {
        if let Ok(reply) = decode::<Reply>(&line, MAX_REPLY) {
            let again =
                decode::<Reply>(&encode(&reply), MAX_REPLY).expect("a re-encoded reply decodes");
            assert_eq!(again, reply, "Reply does not round-trip");
        }
    }
}

/// One line of every control request kind, and some replies: the seeds of `control_request` and
/// `control_reply`.
pub fn control_seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use plughost_service::{encode, ErrorKind, Reply, Request, VmInfo};
    let requests = [
        Request::VmStart,
        Request::VmStop,
        Request::VmStatus,
        Request::DistroRegister {
            name: "debian".into(),
            rootfs: "/srv/rootfs/debian".into(),
            package: Some("pkg".into()),
        },
        Request::DistroUnregister {
            name: "debian".into(),
        },
        Request::DistroStart {
            name: "debian".into(),
        },
        Request::DistroStop {
            name: "debian".into(),
        },
        Request::DistroList,
        Request::Exec {
            distro: Some("debian".into()),
            argv: vec!["cat".into(), "/etc/os-release".into()],
        },
        Request::CsessionCreate {
            name: "build".into(),
        },
        Request::CsessionRun {
            name: "build".into(),
            argv: vec!["sh".into(), "-c".into(), "echo \"hi\"\tthere".into()],
        },
        Request::CsessionStop {
            name: "build".into(),
        },
        Request::Plugins,
        Request::Shutdown,
    ];
    let replies = [
        Reply::Done {
            message: "ok".into(),
        },
        Reply::Vm(VmInfo {
            session_id: 1,
            user: "alice".into(),
            running: true,
            init_pid: Some(42),
            idle_timeout_secs: 300,
        }),
        Reply::Exited { code: 3 },
        Reply::Error {
            kind: ErrorKind::Plugin,
            message: "plugin 'x' crashed: killed by signal SIGSEGV".into(),
        },
    ];
    (
        requests.iter().map(encode).collect(),
        replies.iter().map(encode).collect(),
    )
}
