//! Which message a host may send in which phase of its conversation with the service, decided in
//! one place. Each phase's [`Phase::accept`] matches every [`HostMsg`] variant by name (no
//! catch-all arm), so a new variant does not compile until every phase says whether it takes it;
//! what a phase takes comes back as that phase's own type, so the code that acts on it matches
//! only what can happen there. A refused message is the host's protocol violation; the caller
//! kills the host with the text returned here. This module decides; it does no I/O.

use plughost_wire::{
    ApiCall, Hello, HookKind, HookOutcome, HookSet, HostMsg, LoadFailure, RequestId,
};

/// A phase of a host's conversation, and what the service acts on in it.
pub(crate) trait Phase {
    type Accepted;
    /// `msg` as this phase takes it, or why it is a violation (the crash's text).
    fn accept(&self, msg: HostMsg) -> Result<Self::Accepted, String>;
}

/// Before the handshake: the host speaks first, with `Hello`.
pub(crate) struct Handshake;

/// After `Welcome`, until the plugin is loaded (its entry point may already call the API).
pub(crate) struct Load;

/// What a host may send while its plugin loads.
pub(crate) enum Loading {
    Loaded(HookSet),
    Failed(LoadFailure),
    Call(RequestId, ApiCall),
    Blocked(u32),
}

/// A hook in flight, a frame read from the socket.
pub(crate) struct HookSocket(pub HookKind);

/// What a host may send on the socket during a hook.
pub(crate) enum DuringHook {
    /// A hook's answer (the caller checks it names the hook in flight).
    Done(RequestId, HookOutcome),
    Call(RequestId, ApiCall),
    Blocked(u32),
}

/// A hook in flight, the frame on the call ring's hook lane: only a hook's answer belongs there.
pub(crate) struct HookLane(pub HookKind);

/// A frame in a call-ring slot: only a call belongs there.
pub(crate) struct RingSlot;

/// No hook of the host in flight (a pool thread reads the socket).
pub(crate) struct Idle;

/// What a host may send on the socket outside hooks.
pub(crate) enum Outside {
    Call(RequestId, ApiCall),
    Blocked(u32),
}

impl Phase for Handshake {
    type Accepted = Hello;
    fn accept(&self, msg: HostMsg) -> Result<Hello, String> {
        match msg {
            HostMsg::Hello(hello) => Ok(hello),
            HostMsg::Loaded { .. }
            | HostMsg::LoadFailed(_)
            | HostMsg::HookDone { .. }
            | HostMsg::Call { .. }
            | HostMsg::Blocked { .. } => Err(format!("sent {} instead of Hello", name(&msg))),
        }
    }
}

impl Phase for Load {
    type Accepted = Loading;
    fn accept(&self, msg: HostMsg) -> Result<Loading, String> {
        match msg {
            HostMsg::Loaded { hooks } => Ok(Loading::Loaded(hooks)),
            HostMsg::LoadFailed(failure) => Ok(Loading::Failed(failure)),
            HostMsg::Call { id, call } => Ok(Loading::Call(id, call)),
            HostMsg::Blocked { syscall } => Ok(Loading::Blocked(syscall)),
            HostMsg::Hello(_) | HostMsg::HookDone { .. } => {
                Err(format!("sent {} while loading", name(&msg)))
            }
        }
    }
}

impl Phase for HookSocket {
    type Accepted = DuringHook;
    fn accept(&self, msg: HostMsg) -> Result<DuringHook, String> {
        match msg {
            HostMsg::HookDone {
                id,
                status,
                message,
            } => Ok(DuringHook::Done(id, HookOutcome { status, message })),
            HostMsg::Call { id, call } => Ok(DuringHook::Call(id, call)),
            HostMsg::Blocked { syscall } => Ok(DuringHook::Blocked(syscall)),
            HostMsg::Hello(_) | HostMsg::Loaded { .. } | HostMsg::LoadFailed(_) => {
                Err(format!("sent {} during {}", name(&msg), self.0))
            }
        }
    }
}

impl Phase for HookLane {
    type Accepted = (RequestId, HookOutcome);
    fn accept(&self, msg: HostMsg) -> Result<(RequestId, HookOutcome), String> {
        let kind = self.0;
        match msg {
            HostMsg::HookDone {
                id,
                status,
                message,
            } => Ok((id, HookOutcome { status, message })),
            HostMsg::Call { .. } => Err(format!("sent a call on the hook lane during {kind}")),
            HostMsg::Hello(_)
            | HostMsg::Loaded { .. }
            | HostMsg::LoadFailed(_)
            | HostMsg::Blocked { .. } => Err(format!(
                "sent {} on the hook lane during {kind}",
                name(&msg)
            )),
        }
    }
}

impl Phase for RingSlot {
    type Accepted = (RequestId, ApiCall);
    fn accept(&self, msg: HostMsg) -> Result<(RequestId, ApiCall), String> {
        match msg {
            HostMsg::Call { id, call } => Ok((id, call)),
            HostMsg::Hello(_)
            | HostMsg::Loaded { .. }
            | HostMsg::LoadFailed(_)
            | HostMsg::HookDone { .. }
            | HostMsg::Blocked { .. } => Err(format!("sent {} through the call ring", name(&msg))),
        }
    }
}

impl Phase for Idle {
    type Accepted = Outside;
    fn accept(&self, msg: HostMsg) -> Result<Outside, String> {
        match msg {
            HostMsg::Call { id, call } => Ok(Outside::Call(id, call)),
            HostMsg::Blocked { syscall } => Ok(Outside::Blocked(syscall)),
            HostMsg::HookDone { id, .. } => Err(format!(
                "answered hook request {} that was never sent",
                id.0
            )),
            HostMsg::Hello(_) | HostMsg::Loaded { .. } | HostMsg::LoadFailed(_) => {
                Err(format!("sent {} outside a hook", name(&msg)))
            }
        }
    }
}

/// The variant's name, for violation texts.
fn name(msg: &HostMsg) -> &'static str {
    match msg {
        HostMsg::Hello(_) => "Hello",
        HostMsg::Loaded { .. } => "Loaded",
        HostMsg::LoadFailed(_) => "LoadFailed",
        HostMsg::HookDone { .. } => "HookDone",
        HostMsg::Call { .. } => "Call",
        HostMsg::Blocked { .. } => "Blocked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message of each variant, in declaration order, with the phases' verdicts below.
    fn one_of_each() -> Vec<HostMsg> {
        vec![
            HostMsg::Hello(Hello {
                protocol: 1,
                pid: 1,
                plugin: "p".into(),
            }),
            HostMsg::Loaded {
                hooks: HookSet::default(),
            },
            HostMsg::LoadFailed(LoadFailure::NoEntryPoint),
            HostMsg::HookDone {
                id: RequestId(7),
                status: 0,
                message: None,
            },
            HostMsg::Call {
                id: RequestId(8),
                call: ApiCall::ExecuteBinary {
                    session: plughost_wire::SessionId(1),
                    path: "/bin/true".into(),
                    argv: Vec::new(),
                },
            },
            HostMsg::Blocked { syscall: 101 },
        ]
    }

    fn verdicts<P: Phase>(phase: P) -> Vec<Result<(), String>> {
        one_of_each()
            .into_iter()
            .map(|msg| phase.accept(msg).map(|_| ()))
            .collect()
    }

    #[test]
    fn each_phase_takes_exactly_its_messages_and_names_the_rest() {
        let ok = || Ok(());
        let no = |text: &str| Err(text.to_owned());
        assert_eq!(
            verdicts(Handshake),
            vec![
                ok(),
                no("sent Loaded instead of Hello"),
                no("sent LoadFailed instead of Hello"),
                no("sent HookDone instead of Hello"),
                no("sent Call instead of Hello"),
                no("sent Blocked instead of Hello"),
            ]
        );
        assert_eq!(
            verdicts(Load),
            vec![
                no("sent Hello while loading"),
                ok(),
                ok(),
                no("sent HookDone while loading"),
                ok(),
                ok(),
            ]
        );
        assert_eq!(
            verdicts(HookSocket(HookKind::VmStarted)),
            vec![
                no("sent Hello during on_vm_started"),
                no("sent Loaded during on_vm_started"),
                no("sent LoadFailed during on_vm_started"),
                ok(),
                ok(),
                ok(),
            ]
        );
        assert_eq!(
            verdicts(HookLane(HookKind::VmStarted)),
            vec![
                no("sent Hello on the hook lane during on_vm_started"),
                no("sent Loaded on the hook lane during on_vm_started"),
                no("sent LoadFailed on the hook lane during on_vm_started"),
                ok(),
                no("sent a call on the hook lane during on_vm_started"),
                no("sent Blocked on the hook lane during on_vm_started"),
            ]
        );
        assert_eq!(
            verdicts(RingSlot),
            vec![
                no("sent Hello through the call ring"),
                no("sent Loaded through the call ring"),
                no("sent LoadFailed through the call ring"),
                no("sent HookDone through the call ring"),
                ok(),
                no("sent Blocked through the call ring"),
            ]
        );
        assert_eq!(
            verdicts(Idle),
            vec![
                no("sent Hello outside a hook"),
                no("sent Loaded outside a hook"),
                no("sent LoadFailed outside a hook"),
                no("answered hook request 7 that was never sent"),
                ok(),
                ok(),
            ]
        );
    }
}
