//! An API call through the call ring (module docs of `serve`, "The call ring first"): a slot both
//! ways, and for a call that may answer with an fd, the guess of where to wait for the reply (its
//! slot, or the fd lane, where the fd comes with the wake-up). Not here: calls that take the socket
//! (`Demux::call` in `mod.rs`).

use std::sync::atomic::Ordering;

use plughost_abi::PLUGHOST_E_SHUTTING_DOWN;
use plughost_runtime::BackendReply;
use plughost_wire::{decode, encode, ApiCall, HostMsg, RequestId, ServiceMsg};

use super::{host_log, Demux, REPLY_BUF, SEND_BUF};

impl Demux {
    /// A call through the ring; gives the call back when it must take the socket (no ring, the
    /// frame does not fit, or every slot is busy). A reply carrying an fd names the request id;
    /// its fd is taken from the fd lane.
    pub(super) fn call_on_ring(&self, call: ApiCall) -> Result<Result<BackendReply, i32>, ApiCall> {
        let Some(ring) = self.ring.get() else {
            return Err(call);
        };
        let id = self.ring_ids.fetch_sub(1, Ordering::Relaxed);
        // A call that may answer with an fd waits for its reply on the fd lane when it can
        // (`Ring::call`): the fd and the wake-up then come in one message.
        let mut lane_fd = None;
        let guess = call
            .fd_call_kind()
            .and_then(|kind| self.last_without_fd.get(kind));
        let wants_fd = guess.is_some_and(|without| !without.load(Ordering::Relaxed));
        let msg = HostMsg::Call {
            id: RequestId(id),
            call,
        };
        let sent = REPLY_BUF.with(|reply| {
            let mut reply = reply.borrow_mut();
            let sent = SEND_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                encode(&msg, &mut buf).ok()?;
                Some(ring.call(&buf, &mut reply, wants_fd.then_some((id, &mut lane_fd))))
            });
            match sent {
                None | Some(Ok(false)) => None,
                Some(Ok(true)) => Some(match decode::<ServiceMsg>(&reply) {
                    Ok(ServiceMsg::Reply {
                        id: got,
                        reply: plughost_wire::ApiReply::Fd,
                    }) if got.0 == id => {
                        match lane_fd.take().map_or_else(|| ring.take_fd(id), Ok) {
                            Ok(fd) => Ok((plughost_wire::ApiReply::Fd, Some(fd))),
                            Err(e) => {
                                host_log(&format!("call ring: {e}"));
                                Err(PLUGHOST_E_SHUTTING_DOWN)
                            }
                        }
                    }
                    Ok(ServiceMsg::Reply { reply, .. }) if reply != plughost_wire::ApiReply::Fd => {
                        Ok((reply, None))
                    }
                    Ok(other) => {
                        host_log(&format!("unexpected {other:?} in the call ring"));
                        Err(PLUGHOST_E_SHUTTING_DOWN)
                    }
                    Err(e) => {
                        host_log(&format!("bad frame from the service in the call ring: {e}"));
                        Err(PLUGHOST_E_SHUTTING_DOWN)
                    }
                }),
                Some(Err(_)) => Some(Err(PLUGHOST_E_SHUTTING_DOWN)),
            }
        });
        if let (Some(without), Some(reply)) = (guess, &sent) {
            let with_fd = matches!(reply, Ok((plughost_wire::ApiReply::Fd, _)));
            without.store(!with_fd, Ordering::Relaxed);
        }
        match (sent, msg) {
            (Some(reply), _) => Ok(reply),
            (None, HostMsg::Call { call, .. }) => Err(call),
            (None, _) => unreachable!("msg is the call built above"),
        }
    }
}
