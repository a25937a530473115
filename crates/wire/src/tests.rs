use proptest::prelude::*;

use super::*;

fn session() -> Session {
    Session {
        id: SessionId(7),
        uid: 1000,
        gid: 1000,
        user_name: "alice".into(),
    }
}

#[test]
fn every_message_kind_round_trips() {
    let host = [
        HostMsg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            pid: 1,
            plugin: "p".into(),
        }),
        HostMsg::Loaded {
            hooks: HookSet::default().with(HookKind::VmStarted),
        },
        HostMsg::LoadFailed(LoadFailure::EntryFailed(-22)),
        HostMsg::HookDone {
            id: RequestId(3),
            status: -1,
            message: Some("no".into()),
        },
        HostMsg::Call {
            id: RequestId(9),
            call: ApiCall::ExecuteBinary {
                session: SessionId(1),
                path: "/bin/cat".into(),
                argv: vec!["cat".into(), "x".into()],
            },
        },
    ];
    let mut buf = Vec::new();
    for msg in host {
        encode(&msg, &mut buf).unwrap();
        assert_eq!(decode::<HostMsg>(&buf).unwrap(), msg);
    }
    let service = [
        ServiceMsg::Hook {
            id: RequestId(1),
            hook: Hook::VmStarted {
                session: session(),
                settings: VmSettings { flags: 3 },
            },
        },
        ServiceMsg::Reply {
            id: RequestId(2),
            reply: ApiReply::Fd,
        },
        ServiceMsg::Shutdown,
    ];
    for msg in service {
        encode(&msg, &mut buf).unwrap();
        assert_eq!(decode::<ServiceMsg>(&buf).unwrap(), msg);
    }
}

#[test]
fn a_hook_frame_built_from_its_body_is_the_encoded_message() {
    let hooks = [
        Hook::VmStarted {
            session: session(),
            settings: VmSettings { flags: 3 },
        },
        Hook::VmStopping { session: session() },
        Hook::ContainerSessionStopping(ContainerSession {
            id: ContainerSessionId(3),
            display_name: "c\u{e9}".into(),
            application_pid: 9,
            uid: 1,
            gid: 2,
        }),
    ];
    let (mut body, mut frame, mut expected) = (Vec::new(), Vec::new(), Vec::new());
    for hook in hooks {
        encode_hook_body(&hook, &mut body).unwrap();
        for id in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let msg = ServiceMsg::Hook {
                id: RequestId(id),
                hook: hook.clone(),
            };
            hook_frame(RequestId(id), &body, &mut frame).unwrap();
            encode(&msg, &mut expected).unwrap();
            assert_eq!(frame, expected, "id {id}");
            assert_eq!(
                decode_hook(&frame).unwrap(),
                Some((RequestId(id), hook.borrowed()))
            );
        }
    }
}

#[test]
fn the_hand_written_hook_answer_is_the_encoded_message() {
    let mut expected = Vec::new();
    for id in [0, 1, 127, 128, 1 << 35, u64::MAX] {
        for status in [0, -1, 1, -22, -10002, i32::MIN, i32::MAX, 63, -64, 64] {
            let msg = HostMsg::HookDone {
                id: RequestId(id),
                status,
                message: None,
            };
            encode(&msg, &mut expected).unwrap();
            let (frame, len) = hook_done_frame(RequestId(id), status);
            assert_eq!(&frame[..len], &expected[..], "id {id} status {status}");
        }
    }
}

#[test]
fn decode_hook_leaves_other_messages_to_decode() {
    let mut buf = Vec::new();
    for msg in [
        ServiceMsg::Shutdown,
        ServiceMsg::Reply {
            id: RequestId(1),
            reply: ApiReply::Fd,
        },
    ] {
        encode(&msg, &mut buf).unwrap();
        assert_eq!(decode_hook(&buf), Ok(None));
    }
    encode(
        &ServiceMsg::Hook {
            id: RequestId(5),
            hook: Hook::VmStopping { session: session() },
        },
        &mut buf,
    )
    .unwrap();
    buf.push(0);
    assert_eq!(decode_hook(&buf), Err(WireError::TrailingBytes { len: 1 }));
    buf[0] = b'X';
    assert!(matches!(decode_hook(&buf), Err(WireError::BadMagic(_))));
}

#[test]
fn header_is_checked_before_the_body() {
    let mut buf = Vec::new();
    encode(&ServiceMsg::Shutdown, &mut buf).unwrap();
    let mut bad = buf.clone();
    bad[0] = b'X';
    assert!(matches!(
        decode::<ServiceMsg>(&bad),
        Err(WireError::BadMagic(_))
    ));
    let mut bad = buf.clone();
    bad[2] = 2;
    assert_eq!(decode::<ServiceMsg>(&bad), Err(WireError::BadVersion(2)));
    let mut bad = buf.clone();
    bad[3] = 1;
    assert_eq!(decode::<ServiceMsg>(&bad), Err(WireError::ReservedFlags(1)));
    assert_eq!(
        decode::<ServiceMsg>(&buf[..2]),
        Err(WireError::Truncated { len: 2 })
    );
    let mut long = buf.clone();
    long.push(0);
    assert_eq!(
        decode::<ServiceMsg>(&long),
        Err(WireError::TrailingBytes { len: 1 })
    );
    let huge = vec![0u8; MAX_FRAME + 1];
    assert_eq!(
        decode::<HostMsg>(&huge),
        Err(WireError::Oversized { len: MAX_FRAME + 1 })
    );
}

#[test]
fn unknown_message_kind_is_named_with_the_number_of_kinds() {
    let frame = [b'P', b'H', PROTOCOL_VERSION, 0, 100, 1, 0, 0];
    let err = decode::<HostMsg>(&frame).unwrap_err();
    assert_eq!(err.to_string(), "unknown message kind 100 (HostMsg has 6)");
    // 200 is a two-byte varint (0xc8 0x01).
    let frame = [b'P', b'H', PROTOCOL_VERSION, 0, 0xc8, 0x01];
    assert_eq!(
        decode::<ServiceMsg>(&frame),
        Err(WireError::UnknownKind {
            kind: 200,
            message: "ServiceMsg",
            kinds: 4
        })
    );
    // Longer than any u32 varint: postcard's own error.
    let frame = [
        b'P',
        b'H',
        PROTOCOL_VERSION,
        0,
        0xff,
        0xff,
        0xff,
        0xff,
        0xff,
        0x01,
    ];
    assert!(matches!(
        decode::<HostMsg>(&frame),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn kind_counts_match_the_enums() {
    // The last variant of each enum has index KINDS - 1; the next index is unknown.
    let mut buf = Vec::new();
    encode(&HostMsg::Blocked { syscall: 0 }, &mut buf).unwrap();
    assert_eq!(u32::from(buf[HEADER_LEN]), HostMsg::KINDS - 1);
    encode(&ServiceMsg::Shutdown, &mut buf).unwrap();
    assert_eq!(u32::from(buf[HEADER_LEN]), ServiceMsg::KINDS - 1);
    let frame = [b'P', b'H', PROTOCOL_VERSION, 0, 6];
    assert!(matches!(
        decode::<HostMsg>(&frame),
        Err(WireError::UnknownKind { kind: 6, .. })
    ));
    let frame = [b'P', b'H', PROTOCOL_VERSION, 0, 4];
    assert!(matches!(
        decode::<ServiceMsg>(&frame),
        Err(WireError::UnknownKind { kind: 4, .. })
    ));
}

#[test]
fn positive_hook_status_is_invalid() {
    let mut buf = Vec::new();
    encode(
        &HostMsg::HookDone {
            id: RequestId(1),
            status: 5,
            message: None,
        },
        &mut buf,
    )
    .unwrap();
    assert!(matches!(
        decode::<HostMsg>(&buf),
        Err(WireError::Invalid(_))
    ));
}

/// The id newtypes are names in Rust only: on the wire each is exactly its bare value, so a frame of
/// a build before them decodes the same (no protocol change).
#[test]
fn ids_encode_as_their_bare_values() {
    let bare = postcard::to_allocvec(&(7u32, 3u32, [0xabu8; 16])).unwrap();
    let typed = postcard::to_allocvec(&(
        SessionId(7),
        ContainerSessionId(3),
        DistributionId([0xab; 16]),
    ))
    .unwrap();
    assert_eq!(typed, bare);
    assert_eq!(SessionId(7).to_string(), "7");
    assert_eq!(ContainerSessionId(3).to_string(), "3");
    let mut id = [0u8; 16];
    id[0] = 0x0f;
    id[15] = 0xa0;
    assert_eq!(
        DistributionId(id).to_string(),
        "0f0000000000000000000000000000a0"
    );
}

#[test]
fn oversized_message_is_refused_at_encode() {
    let call = ApiCall::MountFolder {
        session: SessionId(1),
        host_path: "x".repeat(MAX_FRAME),
        vm_path: String::new(),
        read_only: false,
        name: String::new(),
    };
    let mut buf = Vec::new();
    assert!(matches!(
        encode(
            &HostMsg::Call {
                id: RequestId(1),
                call
            },
            &mut buf
        ),
        Err(WireError::Oversized { .. })
    ));
}

#[test]
fn hook_kinds_are_in_header_order() {
    for (i, kind) in HookKind::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, i);
    }
    let set = HookSet::default().with(HookKind::SessionVmStopping);
    assert!(set.contains(HookKind::SessionVmStopping));
    assert!(!set.contains(HookKind::VmStarted));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<HostMsg>(&bytes);
        let _ = decode::<ServiceMsg>(&bytes);
    }

    #[test]
    fn decoding_arbitrary_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut frame = vec![b'P', b'H', PROTOCOL_VERSION, 0];
        frame.extend_from_slice(&body);
        let _ = decode::<HostMsg>(&frame);
        let _ = decode::<ServiceMsg>(&frame);
    }

    #[test]
    fn calls_round_trip(session in any::<u32>(), path in ".{0,64}", argv in proptest::collection::vec(".{0,16}", 0..8)) {
        let msg = HostMsg::Call { id: RequestId(u64::from(session)), call: ApiCall::ExecuteBinary { session: SessionId(session), path, argv } };
        let mut buf = Vec::new();
        encode(&msg, &mut buf).unwrap();
        prop_assert_eq!(decode::<HostMsg>(&buf).unwrap(), msg);
    }
}

#[test]
fn blocked_frame_matches_the_hand_encoding_of_the_sigsys_handler() {
    // crates/host/src/seccomp.rs writes this frame byte by byte in a signal handler.
    let mut buf = Vec::new();
    encode(&HostMsg::Blocked { syscall: 101 }, &mut buf).unwrap();
    assert_eq!(buf, [b'P', b'H', PROTOCOL_VERSION, 0, 5, 101]);
    encode(&HostMsg::Blocked { syscall: 321 }, &mut buf).unwrap();
    assert_eq!(buf, [b'P', b'H', PROTOCOL_VERSION, 0, 5, 0xc1, 0x02]);
}

/// The calls that answer with an fd each have a kind of their own below `FD_CALL_KINDS`; the
/// others have none.
#[test]
fn each_fd_answering_call_has_its_own_kind() {
    let fd_calls = [
        ApiCall::ExecuteBinary {
            session: SessionId(1),
            path: "/bin/true".into(),
            argv: vec![],
        },
        ApiCall::ExecuteBinaryInDistribution {
            session: SessionId(1),
            distribution: DistributionId([0; 16]),
            path: "/bin/true".into(),
            argv: vec![],
        },
        ApiCall::ProcessGetFd {
            process: ProcessHandle(1),
            which: 1,
        },
        ApiCall::ProcessGetExitFd {
            process: ProcessHandle(1),
        },
    ];
    let mut kinds: Vec<usize> = fd_calls
        .iter()
        .map(|call| call.fd_call_kind().expect("an fd call has a kind"))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, (0..FD_CALL_KINDS).collect::<Vec<_>>());
    assert!(fd_calls.iter().all(ApiCall::answers_with_fd));
    let exit_code = ApiCall::ProcessGetExitCode {
        process: ProcessHandle(1),
    };
    assert_eq!(exit_code.fd_call_kind(), None);
    assert!(!exit_code.answers_with_fd());
}
