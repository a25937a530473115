//! The control protocol's property, checks and seeds: what `plughostd` decodes from any local user
//! (a request line) and what `plughostctl` decodes from the daemon (a reply line). Shared by
//! `crates/service/tests/control_protocol.rs` (run by CI) and the `fuzz/` targets (included there
//! with `#[path]`).

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
            application_pid: Some(4242),
        },
        Request::CsessionCreate {
            name: "build".into(),
            application_pid: None,
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
