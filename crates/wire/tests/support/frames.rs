//! The wire's hostile-input checks, shared by `crates/wire/tests/` (run by CI) and the fuzz targets
//! (`fuzz/src/lib.rs` includes this file with `#[path]`): the property every decoded frame must hold,
//! one valid message of every kind as seeds, and the LEB128 writer for hand-made length claims.
//!
//! The property, for any bytes: decoding never panics, never aborts and never allocates in
//! proportion to a length the bytes merely *claim*; a frame that decodes re-encodes, and the
//! re-encoding decodes to the same message (the decoder accepts nothing the encoder cannot express).
//!
//! Only `plughost_wire` and `serde` (its own dependency): the fuzz crate and the wire's tests both
//! have them.

use plughost_wire::{
    decode, decode_hook, encode, ApiCall, ApiReply, Confinement, ContainerSession,
    ContainerSessionId, Distribution, DistributionId, FsRules, Hello, Hook, HookKind, HookSet,
    HostMsg, Limits, LoadFailure, OfflineDistribution, PluginSource, ProcessHandle, RequestId,
    ServiceMsg, Session, SessionId, Version, VmSettings, Welcome, MAX_FRAME, PROTOCOL_VERSION,
};

/// Host to service: the untrusted direction (what a hostile plugin controls).
pub fn check_host_msg(frame: &[u8]) {
    if let Ok(msg) = decode::<HostMsg>(frame) {
        assert!(frame.len() <= MAX_FRAME, "decoded an oversized frame");
        let mut buf = Vec::new();
        encode(&msg, &mut buf).expect("a decoded HostMsg re-encodes");
        let again = decode::<HostMsg>(&buf).expect("a re-encoded HostMsg decodes");
        assert_eq!(again, msg, "HostMsg does not round-trip");
    }
}

/// Service to host: what the host decodes (a compromised service is out of scope, but the host must
/// still not be crashable by a malformed frame).
pub fn check_service_msg(frame: &[u8]) {
    if let Ok(msg) = decode::<ServiceMsg>(frame) {
        assert!(frame.len() <= MAX_FRAME, "decoded an oversized frame");
        let _ = msg.fds_expected();
        let mut buf = Vec::new();
        encode(&msg, &mut buf).expect("a decoded ServiceMsg re-encodes");
        let again = decode::<ServiceMsg>(&buf).expect("a re-encoded ServiceMsg decodes");
        assert_eq!(again, msg, "ServiceMsg does not round-trip");
    }
    // The host's borrowed decoding of hooks accepts exactly the hooks the owned one does.
    match (decode::<ServiceMsg>(frame), decode_hook(frame)) {
        (Ok(ServiceMsg::Hook { id, hook }), Ok(Some((got, borrowed)))) => {
            assert_eq!(
                (got, borrowed),
                (id, hook.borrowed()),
                "decode_hook differs"
            );
        }
        (Ok(ServiceMsg::Hook { .. }), other) => panic!("a hook decode_hook refuses: {other:?}"),
        (_, Ok(Some(hook))) => panic!("decode_hook accepts what decode refuses: {hook:?}"),
        _ => {}
    }
}

fn session() -> Session {
    Session {
        id: SessionId(7),
        uid: 1000,
        gid: 1000,
        user_name: "alice".into(),
    }
}

fn distribution() -> Distribution {
    Distribution {
        id: DistributionId([0xab; 16]),
        name: "debian".into(),
        pid_namespace: 4026531836,
        package: "pkg".into(),
        init_pid: 4242,
        flavor: "debian".into(),
        version: "12".into(),
    }
}

fn offline() -> OfflineDistribution {
    OfflineDistribution {
        id: DistributionId([0xcd; 16]),
        name: "alpine".into(),
        package: "pkg".into(),
        flavor: "alpine".into(),
        version: "3.20".into(),
    }
}

fn container() -> ContainerSession {
    ContainerSession {
        id: ContainerSessionId(3),
        display_name: "build".into(),
        application_pid: 4321,
        uid: 1000,
        gid: 1000,
    }
}

/// One message of every kind the host sends (every `ApiCall` too).
pub fn host_messages() -> Vec<(&'static str, HostMsg)> {
    let call = |name, call| {
        (
            name,
            HostMsg::Call {
                id: RequestId(42),
                call,
            },
        )
    };
    let argv = vec!["cat".to_owned(), "/mnt/x/file".to_owned()];
    vec![
        (
            "hello",
            HostMsg::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                pid: 1,
                plugin: "audit".into(),
            }),
        ),
        (
            "loaded",
            HostMsg::Loaded {
                hooks: HookSet::default()
                    .with(HookKind::VmStarted)
                    .with(HookKind::SessionVmStopping),
            },
        ),
        (
            "load_failed_open",
            HostMsg::LoadFailed(LoadFailure::Open("dlopen: no".into())),
        ),
        (
            "load_failed_entry",
            HostMsg::LoadFailed(LoadFailure::NoEntryPoint),
        ),
        (
            "load_failed_status",
            HostMsg::LoadFailed(LoadFailure::EntryFailed(-22)),
        ),
        (
            "load_failed_confine",
            HostMsg::LoadFailed(LoadFailure::Confine("setuid: EPERM".into())),
        ),
        ("blocked", HostMsg::Blocked { syscall: 101 }),
        (
            "hook_done",
            HostMsg::HookDone {
                id: RequestId(1),
                status: 0,
                message: None,
            },
        ),
        (
            "hook_done_veto",
            HostMsg::HookDone {
                id: RequestId(300),
                status: -22,
                message: Some("refused by policy".into()),
            },
        ),
        call(
            "call_mount_folder",
            ApiCall::MountFolder {
                session: SessionId(7),
                host_path: "/opt/tool".into(),
                vm_path: "/mnt/tool".into(),
                read_only: true,
                name: "tool".into(),
            },
        ),
        call(
            "call_execute_binary",
            ApiCall::ExecuteBinary {
                session: SessionId(7),
                path: "/bin/cat".into(),
                argv: argv.clone(),
            },
        ),
        call(
            "call_execute_binary_in_distribution",
            ApiCall::ExecuteBinaryInDistribution {
                session: SessionId(7),
                distribution: DistributionId([0xab; 16]),
                path: "/bin/cat".into(),
                argv: argv.clone(),
            },
        ),
        call(
            "call_container_mount_folder",
            ApiCall::ContainerMountFolder {
                container_session: ContainerSessionId(3),
                host_path: "/srv".into(),
                mountpoint: "/srv".into(),
                read_only: false,
            },
        ),
        call(
            "call_container_unmount_folder",
            ApiCall::ContainerUnmountFolder {
                container_session: ContainerSessionId(3),
                mountpoint: "/srv".into(),
            },
        ),
        call(
            "call_container_create_process",
            ApiCall::ContainerCreateProcess {
                container_session: ContainerSessionId(3),
                path: "/bin/sh".into(),
                argv,
                envp: Some(vec!["A=1".into()]),
            },
        ),
        call(
            "call_process_get_fd",
            ApiCall::ProcessGetFd {
                process: ProcessHandle(9),
                which: 1,
            },
        ),
        call(
            "call_process_get_exit_fd",
            ApiCall::ProcessGetExitFd {
                process: ProcessHandle(9),
            },
        ),
        call(
            "call_process_get_exit_code",
            ApiCall::ProcessGetExitCode {
                process: ProcessHandle(9),
            },
        ),
        call(
            "call_process_release",
            ApiCall::ProcessRelease {
                process: ProcessHandle(9),
            },
        ),
    ]
}

/// One message of every kind the service sends (every `Hook` and `ApiReply` too).
pub fn service_messages() -> Vec<(&'static str, ServiceMsg)> {
    let hook = |name, hook| {
        (
            name,
            ServiceMsg::Hook {
                id: RequestId(5),
                hook,
            },
        )
    };
    let reply = |name, reply| {
        (
            name,
            ServiceMsg::Reply {
                id: RequestId(6),
                reply,
            },
        )
    };
    vec![
        (
            "welcome",
            ServiceMsg::Welcome(Welcome {
                protocol: PROTOCOL_VERSION,
                service_version: Version {
                    major: 0,
                    minor: 1,
                    revision: 0,
                },
                plugin: PluginSource::Path("/usr/lib/plughost/audit.so".into()),
                confinement: Confinement::default(),
                call_ring: false,
                crash_report: false,
            }),
        ),
        (
            "welcome_sealed_confined",
            ServiceMsg::Welcome(Welcome {
                protocol: PROTOCOL_VERSION,
                service_version: Version {
                    major: 1,
                    minor: 2,
                    revision: 3,
                },
                plugin: PluginSource::SealedFd,
                confinement: Confinement {
                    user: Some((65534, 65534)),
                    limits: Limits {
                        address_space: Some(1 << 30),
                        open_files: Some(256),
                        processes: Some(64),
                        cpu_seconds: None,
                    },
                    seccomp: true,
                    filesystem: Some(FsRules {
                        read: vec!["/opt/tool".into()],
                        write: vec!["/var/lib/tool".into()],
                    }),
                },
                call_ring: true,
                crash_report: true,
            }),
        ),
        hook(
            "hook_vm_started",
            Hook::VmStarted {
                session: session(),
                settings: VmSettings { flags: 3 },
            },
        ),
        hook("hook_vm_stopping", Hook::VmStopping { session: session() }),
        hook(
            "hook_distribution_started",
            Hook::DistributionStarted {
                session: session(),
                distribution: distribution(),
            },
        ),
        hook(
            "hook_distribution_stopping",
            Hook::DistributionStopping {
                session: session(),
                distribution: distribution(),
            },
        ),
        hook(
            "hook_distribution_registered",
            Hook::DistributionRegistered {
                session: session(),
                distribution: offline(),
            },
        ),
        hook(
            "hook_distribution_unregistered",
            Hook::DistributionUnregistered {
                session: session(),
                distribution: offline(),
            },
        ),
        hook(
            "hook_container_session_created",
            Hook::ContainerSessionCreated(container()),
        ),
        hook(
            "hook_container_session_stopping",
            Hook::ContainerSessionStopping(container()),
        ),
        hook(
            "hook_session_vm_started",
            Hook::SessionVmStarted(container()),
        ),
        hook(
            "hook_session_vm_stopping",
            Hook::SessionVmStopping(container()),
        ),
        reply("reply_status", ApiReply::Status(-2)),
        reply("reply_fd", ApiReply::Fd),
        reply("reply_process", ApiReply::Process(ProcessHandle(9))),
        reply(
            "reply_process_failed",
            ApiReply::ProcessFailed {
                status: -13,
                errno: 13,
            },
        ),
        reply("reply_exit_code", ApiReply::ExitCode(3)),
        ("shutdown", ServiceMsg::Shutdown),
    ]
}

fn frames<M: serde::Serialize>(messages: Vec<(&'static str, M)>) -> Vec<(&'static str, Vec<u8>)> {
    messages
        .into_iter()
        .map(|(name, msg)| {
            let mut buf = Vec::new();
            encode(&msg, &mut buf).expect("seed encodes");
            (name, buf)
        })
        .collect()
}

/// Encoded [`host_messages`]: the seed corpus of `wire_host_msg`.
pub fn host_seeds() -> Vec<(&'static str, Vec<u8>)> {
    frames(host_messages())
}

/// Encoded [`service_messages`]: the seed corpus of `wire_service_msg`.
pub fn service_seeds() -> Vec<(&'static str, Vec<u8>)> {
    frames(service_messages())
}

/// LEB128, as postcard writes lengths, enum indices and integers.
pub fn varint(mut value: u64, out: &mut Vec<u8>) {
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
