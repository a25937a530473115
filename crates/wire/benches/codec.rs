//! Micro-benchmarks of the wire codec: `encode` and `decode` of every message kind of both
//! directions, with realistic field sizes (`cargo bench -p plughost-wire --bench codec`).
//!
//! `encode` reuses one buffer, as both sides do (a thread-local send buffer); `decode` includes the
//! header checks, the postcard body and `Validate`, and allocates the message's strings, as the
//! receivers do. The end-to-end costs (syscalls, wake-ups) are `plughost-bench`'s job.

use divan::{black_box, Bencher};
use plughost_wire::{
    decode, encode, ApiCall, ApiReply, Confinement, ContainerSession, ContainerSessionId,
    Distribution, DistributionId, Hello, Hook, HookKind, HookSet, HostMsg, LoadFailure,
    OfflineDistribution, PluginSource, ProcessHandle, RequestId, ServiceMsg, Session, SessionId,
    Version, VmSettings, Welcome, MAX_FRAME, PROTOCOL_VERSION,
};

fn main() {
    divan::main();
}

const HOST_MSGS: &[&str] = &[
    "hello",
    "loaded",
    "load_failed",
    "hook_done",
    "hook_done_veto",
    "call_mount_folder",
    "call_execute_binary",
    "call_execute_binary_in_distribution",
    "call_container_mount_folder",
    "call_container_unmount_folder",
    "call_container_create_process",
    "call_process_get_fd",
    "call_process_get_exit_fd",
    "call_process_get_exit_code",
    "call_process_release",
    "blocked",
];

const SERVICE_MSGS: &[&str] = &[
    "welcome",
    "hook_vm_started",
    "hook_vm_stopping",
    "hook_distribution_started",
    "hook_distribution_stopping",
    "hook_distribution_registered",
    "hook_distribution_unregistered",
    "hook_container_session_created",
    "hook_container_session_stopping",
    "hook_session_vm_started",
    "hook_session_vm_stopping",
    "reply_status",
    "reply_fd",
    "reply_process",
    "reply_process_failed",
    "reply_exit_code",
    "shutdown",
];

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
        id: DistributionId([0x5a; 16]),
        name: "Debian".into(),
        pid_namespace: 4_026_531_836,
        package: "TheDebianProject.DebianGNULinux".into(),
        init_pid: 4242,
        flavor: "debian".into(),
        version: "12".into(),
    }
}

fn offline_distribution() -> OfflineDistribution {
    OfflineDistribution {
        id: DistributionId([0x5a; 16]),
        name: "Debian".into(),
        package: "TheDebianProject.DebianGNULinux".into(),
        flavor: "debian".into(),
        version: "12".into(),
    }
}

fn container_session() -> ContainerSession {
    ContainerSession {
        id: ContainerSessionId(3),
        display_name: "editor".into(),
        application_pid: 31337,
        uid: 1000,
        gid: 1000,
    }
}

fn argv() -> Vec<String> {
    ["/bin/cat", "/mnt/tool/file", "--verbose"]
        .map(String::from)
        .to_vec()
}

fn call(call: ApiCall) -> HostMsg {
    HostMsg::Call {
        id: RequestId(41),
        call,
    }
}

fn host_msg(case: &str) -> HostMsg {
    let process = ProcessHandle(9);
    match case {
        "hello" => HostMsg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            pid: 1,
            plugin: "audit".into(),
        }),
        "loaded" => HostMsg::Loaded {
            hooks: HookKind::ALL
                .iter()
                .fold(HookSet::default(), |set, kind| set.with(*kind)),
        },
        "load_failed" => HostMsg::LoadFailed(LoadFailure::Open(
            "/usr/lib/plugins/audit.so: undefined symbol: foo".into(),
        )),
        "hook_done" => HostMsg::HookDone {
            id: RequestId(1234),
            status: 0,
            message: None,
        },
        "hook_done_veto" => HostMsg::HookDone {
            id: RequestId(1234),
            status: -22,
            message: Some("cannot share /opt/mytool with the VM".into()),
        },
        "call_mount_folder" => call(ApiCall::MountFolder {
            session: SessionId(7),
            host_path: "/opt/mytool".into(),
            vm_path: "/mnt/mytool".into(),
            read_only: true,
            name: "mytool".into(),
        }),
        "call_execute_binary" => call(ApiCall::ExecuteBinary {
            session: SessionId(7),
            path: "/bin/cat".into(),
            argv: argv(),
        }),
        "call_execute_binary_in_distribution" => call(ApiCall::ExecuteBinaryInDistribution {
            session: SessionId(7),
            distribution: DistributionId([0x5a; 16]),
            path: "/bin/cat".into(),
            argv: argv(),
        }),
        "call_container_mount_folder" => call(ApiCall::ContainerMountFolder {
            container_session: ContainerSessionId(3),
            host_path: "/opt/mytool".into(),
            mountpoint: "/mnt/mytool".into(),
            read_only: false,
        }),
        "call_container_unmount_folder" => call(ApiCall::ContainerUnmountFolder {
            container_session: ContainerSessionId(3),
            mountpoint: "/mnt/mytool".into(),
        }),
        "call_container_create_process" => call(ApiCall::ContainerCreateProcess {
            container_session: ContainerSessionId(3),
            path: "/bin/cat".into(),
            argv: argv(),
            envp: Some(vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()]),
        }),
        "call_process_get_fd" => call(ApiCall::ProcessGetFd { process, which: 1 }),
        "call_process_get_exit_fd" => call(ApiCall::ProcessGetExitFd { process }),
        "call_process_get_exit_code" => call(ApiCall::ProcessGetExitCode { process }),
        "call_process_release" => call(ApiCall::ProcessRelease { process }),
        "blocked" => HostMsg::Blocked { syscall: 57 },
        other => panic!("no host message {other}"),
    }
}

fn hook(hook: Hook) -> ServiceMsg {
    ServiceMsg::Hook {
        id: RequestId(1234),
        hook,
    }
}

fn reply(reply: ApiReply) -> ServiceMsg {
    ServiceMsg::Reply {
        id: RequestId(41),
        reply,
    }
}

fn service_msg(case: &str) -> ServiceMsg {
    match case {
        "welcome" => ServiceMsg::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            service_version: Version {
                major: 0,
                minor: 1,
                revision: 0,
            },
            plugin: PluginSource::Path("/usr/lib/myservice/plugins/audit.so".into()),
            confinement: Confinement::default(),
            call_ring: true,
            crash_report: true,
        }),
        "hook_vm_started" => hook(Hook::VmStarted {
            session: session(),
            settings: VmSettings { flags: 1 },
        }),
        "hook_vm_stopping" => hook(Hook::VmStopping { session: session() }),
        "hook_distribution_started" => hook(Hook::DistributionStarted {
            session: session(),
            distribution: distribution(),
        }),
        "hook_distribution_stopping" => hook(Hook::DistributionStopping {
            session: session(),
            distribution: distribution(),
        }),
        "hook_distribution_registered" => hook(Hook::DistributionRegistered {
            session: session(),
            distribution: offline_distribution(),
        }),
        "hook_distribution_unregistered" => hook(Hook::DistributionUnregistered {
            session: session(),
            distribution: offline_distribution(),
        }),
        "hook_container_session_created" => {
            hook(Hook::ContainerSessionCreated(container_session()))
        }
        "hook_container_session_stopping" => {
            hook(Hook::ContainerSessionStopping(container_session()))
        }
        "hook_session_vm_started" => hook(Hook::SessionVmStarted(container_session())),
        "hook_session_vm_stopping" => hook(Hook::SessionVmStopping(container_session())),
        "reply_status" => reply(ApiReply::Status(0)),
        "reply_fd" => reply(ApiReply::Fd),
        "reply_process" => reply(ApiReply::Process(ProcessHandle(9))),
        "reply_process_failed" => reply(ApiReply::ProcessFailed {
            status: -2,
            errno: 2,
        }),
        "reply_exit_code" => reply(ApiReply::ExitCode(0)),
        "shutdown" => ServiceMsg::Shutdown,
        other => panic!("no service message {other}"),
    }
}

fn frame<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(msg, &mut buf).expect("encodes");
    buf
}

#[divan::bench(args = HOST_MSGS)]
fn encode_host_msg(bencher: Bencher, case: &str) {
    let msg = host_msg(case);
    let mut buf = Vec::with_capacity(MAX_FRAME);
    bencher.bench_local(|| {
        encode(black_box(&msg), &mut buf).expect("encodes");
        black_box(buf.len())
    });
}

#[divan::bench(args = HOST_MSGS)]
fn decode_host_msg(bencher: Bencher, case: &str) {
    let frame = frame(&host_msg(case));
    bencher.bench_local(|| decode::<HostMsg>(black_box(&frame)).expect("decodes"));
}

#[divan::bench(args = SERVICE_MSGS)]
fn encode_service_msg(bencher: Bencher, case: &str) {
    let msg = service_msg(case);
    let mut buf = Vec::with_capacity(MAX_FRAME);
    bencher.bench_local(|| {
        encode(black_box(&msg), &mut buf).expect("encodes");
        black_box(buf.len())
    });
}

#[divan::bench(args = SERVICE_MSGS)]
fn decode_service_msg(bencher: Bencher, case: &str) {
    let frame = frame(&service_msg(case));
    bencher.bench_local(|| decode::<ServiceMsg>(black_box(&frame)).expect("decodes"));
}

/// What the dispatcher does per plugin before encoding: `Hook::clone` (the hook is cloned into the
/// `ServiceMsg` it sends).
#[divan::bench]
fn clone_vm_started_hook(bencher: Bencher) {
    let hook = Hook::VmStarted {
        session: session(),
        settings: VmSettings { flags: 1 },
    };
    bencher.bench_local(|| black_box(&hook).clone());
}
