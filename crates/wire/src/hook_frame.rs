//! A hook's frame, built once for every host of a dispatch, and decoded by a host without copying
//! its strings (`ARCHITECTURE.md`, "One hook"; BENCHMARKS.md, "fanout_100").
//!
//! The service encodes a hook's body once per dispatch ([`encode_hook_body`]) and writes each host's
//! frame from it with that host's request id ([`hook_frame`]): the same bytes as
//! `encode(&ServiceMsg::Hook { id, hook })`, without cloning or encoding the hook again per plugin.
//! The host decodes it with [`decode_hook`] into a [`HookRef`], whose strings borrow the frame: no
//! allocation on the way to the plugin's C structs; and it writes the usual answer on its stack
//! ([`hook_done_frame`]).

use crate::{
    check_header, variant, ContainerSessionOf, DistributionOf, Hook, HookOf, HookRef,
    OfflineDistributionOf, RequestId, SessionOf, WireError, HEADER_LEN, MAGIC, MAX_FRAME,
    PROTOCOL_VERSION,
};

/// `ServiceMsg::Hook`'s variant index (`tests.rs` checks it against the enum).
pub(crate) const HOOK_VARIANT: u32 = 1;

/// Encodes `hook` alone (no header, no id) into `body` (cleared first), for [`hook_frame`].
pub fn encode_hook_body(hook: &Hook, body: &mut Vec<u8>) -> Result<(), WireError> {
    body.clear();
    let out = std::mem::take(body);
    *body = postcard::to_extend(hook, out).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::Oversized { len: body.len() });
    }
    Ok(())
}

/// Writes the frame of `ServiceMsg::Hook { id, hook }` into `out` (cleared first) from the hook's
/// body ([`encode_hook_body`]): the header, the variant index, the id (LEB128), the body.
pub fn hook_frame(id: RequestId, body: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(0);
    leb128(u64::from(HOOK_VARIANT), out);
    leb128(id.0, out);
    out.extend_from_slice(body);
    if out.len() > MAX_FRAME {
        return Err(WireError::Oversized { len: out.len() });
    }
    Ok(())
}

/// `HostMsg::HookDone`'s variant index (`tests.rs` checks the frame against `encode`).
const HOOK_DONE_VARIANT: u64 = 3;

/// Room for the frame of [`hook_done_frame`]: header, variant, id (≤ 10 bytes of LEB128), status
/// (≤ 5), the message's absence.
pub const HOOK_DONE_MAX: usize = HEADER_LEN + 1 + 10 + 5 + 1;

/// The frame of `HostMsg::HookDone { id, status, message: None }`, the usual answer to a hook,
/// written on the stack: the host answers without its send buffer or the serializer (the same
/// bytes as `encode`). Returns the buffer and the frame's length in it.
pub fn hook_done_frame(id: RequestId, status: i32) -> ([u8; HOOK_DONE_MAX], usize) {
    let mut out = [0u8; HOOK_DONE_MAX];
    out[..2].copy_from_slice(&MAGIC);
    out[2] = PROTOCOL_VERSION;
    let mut len = HEADER_LEN;
    let mut put = |mut value: u64| {
        while value >= 0x80 {
            out[len] = (value as u8 & 0x7f) | 0x80;
            len += 1;
            value >>= 7;
        }
        out[len] = value as u8;
        len += 1;
    };
    put(HOOK_DONE_VARIANT);
    put(id.0);
    // postcard's i32: zigzag, then LEB128.
    put(u64::from(((status << 1) ^ (status >> 31)) as u32));
    put(0); // message: None
    (out, len)
}

fn leb128(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Decodes a service frame that holds a hook, its strings borrowed from `frame`. `Ok(None)`: the
/// frame is another kind of message (decode it with [`decode`](crate::decode)). Checks what
/// `decode::<ServiceMsg>` checks: size, header, no trailing bytes.
pub fn decode_hook(frame: &[u8]) -> Result<Option<(RequestId, HookRef<'_>)>, WireError> {
    let body = check_header(frame)?;
    match variant(body) {
        Some((HOOK_VARIANT, len)) => {
            let (decoded, rest): ((RequestId, HookRef<'_>), &[u8]) =
                postcard::take_from_bytes(&body[len..])
                    .map_err(|e| WireError::Malformed(e.to_string()))?;
            if !rest.is_empty() {
                return Err(WireError::TrailingBytes { len: rest.len() });
            }
            Ok(Some(decoded))
        }
        _ => Ok(None),
    }
}

impl<S: AsRef<str>> SessionOf<S> {
    /// The same session, its strings borrowed.
    pub fn borrowed(&self) -> SessionOf<&str> {
        SessionOf {
            id: self.id,
            uid: self.uid,
            gid: self.gid,
            user_name: self.user_name.as_ref(),
        }
    }
}

impl<S: AsRef<str>> DistributionOf<S> {
    /// The same distribution, its strings borrowed.
    pub fn borrowed(&self) -> DistributionOf<&str> {
        DistributionOf {
            id: self.id,
            name: self.name.as_ref(),
            pid_namespace: self.pid_namespace,
            package: self.package.as_ref(),
            init_pid: self.init_pid,
            flavor: self.flavor.as_ref(),
            version: self.version.as_ref(),
        }
    }
}

impl<S: AsRef<str>> OfflineDistributionOf<S> {
    /// The same distribution, its strings borrowed.
    pub fn borrowed(&self) -> OfflineDistributionOf<&str> {
        OfflineDistributionOf {
            id: self.id,
            name: self.name.as_ref(),
            package: self.package.as_ref(),
            flavor: self.flavor.as_ref(),
            version: self.version.as_ref(),
        }
    }
}

impl<S: AsRef<str>> ContainerSessionOf<S> {
    /// The same container session, its strings borrowed.
    pub fn borrowed(&self) -> ContainerSessionOf<&str> {
        ContainerSessionOf {
            id: self.id,
            display_name: self.display_name.as_ref(),
            application_pid: self.application_pid,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

impl<S: AsRef<str>> HookOf<S> {
    /// The same hook, its strings borrowed (what the host's C struct building takes).
    pub fn borrowed(&self) -> HookRef<'_> {
        match self {
            HookOf::VmStarted { session, settings } => HookOf::VmStarted {
                session: session.borrowed(),
                settings: *settings,
            },
            HookOf::VmStopping { session } => HookOf::VmStopping {
                session: session.borrowed(),
            },
            HookOf::DistributionStarted {
                session,
                distribution,
            } => HookOf::DistributionStarted {
                session: session.borrowed(),
                distribution: distribution.borrowed(),
            },
            HookOf::DistributionStopping {
                session,
                distribution,
            } => HookOf::DistributionStopping {
                session: session.borrowed(),
                distribution: distribution.borrowed(),
            },
            HookOf::DistributionRegistered {
                session,
                distribution,
            } => HookOf::DistributionRegistered {
                session: session.borrowed(),
                distribution: distribution.borrowed(),
            },
            HookOf::DistributionUnregistered {
                session,
                distribution,
            } => HookOf::DistributionUnregistered {
                session: session.borrowed(),
                distribution: distribution.borrowed(),
            },
            HookOf::ContainerSessionCreated(c) => HookOf::ContainerSessionCreated(c.borrowed()),
            HookOf::ContainerSessionStopping(c) => HookOf::ContainerSessionStopping(c.borrowed()),
            HookOf::SessionVmStarted(c) => HookOf::SessionVmStarted(c.borrowed()),
            HookOf::SessionVmStopping(c) => HookOf::SessionVmStopping(c.borrowed()),
        }
    }
}
