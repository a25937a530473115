//! One hook of a dispatch, encoded once for every host it reaches (BENCHMARKS.md, "fanout_100"):
//! the hook's body is encoded at the first host, and each host's frame is that body behind the
//! header and the host's request id (`plughost_wire::hook_frame`). No clone of the hook and no
//! second encoding per plugin.

use std::cell::OnceCell;

use plughost_wire::{encode_hook_body, hook_frame, Hook, HookKind, RequestId, WireError};

pub(crate) struct OutgoingHook<'a> {
    hook: &'a Hook,
    /// Encoded at the first host that needs it (in-process plugins take `hook` itself).
    body: OnceCell<Result<Vec<u8>, WireError>>,
}

impl<'a> OutgoingHook<'a> {
    pub(crate) fn new(hook: &'a Hook) -> OutgoingHook<'a> {
        OutgoingHook {
            hook,
            body: OnceCell::new(),
        }
    }

    pub(crate) fn hook(&self) -> &'a Hook {
        self.hook
    }

    pub(crate) fn kind(&self) -> HookKind {
        self.hook.kind()
    }

    /// Writes the frame of `ServiceMsg::Hook { id, hook }` into `out`.
    pub(crate) fn frame(&self, id: RequestId, out: &mut Vec<u8>) -> Result<(), WireError> {
        let body = self.body.get_or_init(|| {
            let mut body = Vec::new();
            encode_hook_body(self.hook, &mut body).map(|()| body)
        });
        match body {
            Ok(body) => hook_frame(id, body, out),
            Err(e) => Err(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plughost_wire::{encode, ServiceMsg, Session, SessionId, VmSettings};

    #[test]
    fn every_host_gets_the_frame_of_its_own_request_id() {
        let hook = Hook::VmStarted {
            session: Session {
                id: SessionId(1),
                uid: 2,
                gid: 3,
                user_name: "u".into(),
            },
            settings: VmSettings::default(),
        };
        let outgoing = OutgoingHook::new(&hook);
        let (mut frame, mut expected) = (Vec::new(), Vec::new());
        for id in [1, 2, 200, 1 << 40] {
            outgoing.frame(RequestId(id), &mut frame).unwrap();
            let msg = ServiceMsg::Hook {
                id: RequestId(id),
                hook: hook.clone(),
            };
            encode(&msg, &mut expected).unwrap();
            assert_eq!(frame, expected);
        }
    }
}
