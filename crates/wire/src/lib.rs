//! The wire protocol between the service (supervisor) and one plugin host.
//!
//! One message per `SOCK_SEQPACKET` packet: a 4-byte header (`b"PH"`, protocol version, reserved flags
//! that must be zero) followed by a postcard body. There is one message enum per direction:
//! [`HostMsg`] (host to service, **untrusted**) and [`ServiceMsg`] (service to host). File descriptors
//! travel beside a message as `SCM_RIGHTS`; only [`ApiReply::Fd`] carries one, and the receiver checks
//! that the count matches ([`ServiceMsg::fds_expected`]).
//!
//! Requests carry a [`RequestId`] so that calls in both directions interleave: the service numbers its
//! hooks, the host numbers its API calls; each side answers with the id it was given.
//!
//! Handshake: the host speaks first with [`HostMsg::Hello`]; the service checks it and answers
//! [`ServiceMsg::Welcome`] (with its version, needed for `api->version`); the host loads the plugin and
//! answers [`HostMsg::Loaded`] or [`HostMsg::LoadFailed`]. After that, hooks and calls flow.
//!
//! This crate does no I/O and holds no policy about which message is legal when; it only checks sizes,
//! the header and the encoding. Decoding never panics on any input (see the property tests and
//! `fuzz/`).

mod hook_frame;
mod messages;

pub use hook_frame::{decode_hook, encode_hook_body, hook_done_frame, hook_frame, HOOK_DONE_MAX};
pub use messages::*;

use serde::{de::DeserializeOwned, Serialize};

/// The protocol version this build speaks; the handshake refuses any other.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame (header included) either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most file descriptors one frame may carry.
pub const MAX_FDS: usize = 1;
/// Most argv or envp entries in one call.
pub const MAX_ARGS: usize = 4096;

/// Exit code of a host whose channel to the service is gone while the service did not close it: the
/// plugin closed (or replaced) the channel's fd. The service names it "closed its channel to the
/// service".
pub const EXIT_CHANNEL_LOST: i32 = 112;

/// What a hook returned, with the message it set through `plugin_error`, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    pub status: i32,
    pub message: Option<String>,
}

const MAGIC: [u8; 2] = *b"PH";
/// Size of the frame header.
pub const HEADER_LEN: usize = 4;

/// Why bytes could not be turned into a message (or a message into bytes).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    Oversized { len: usize },
    #[error("frame of {len} bytes is shorter than its header")]
    Truncated { len: usize },
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 2]),
    #[error("protocol version {0} is not the supported version {PROTOCOL_VERSION}")]
    BadVersion(u8),
    #[error("reserved header flags {0:#04x} are not zero")]
    ReservedFlags(u8),
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// A body whose variant index names no kind of the expected enum (a newer peer, or garbage).
    #[error("unknown message kind {kind} ({message} has {kinds})")]
    UnknownKind {
        kind: u32,
        message: &'static str,
        kinds: u32,
    },
    #[error("{len} trailing bytes after the message")]
    TrailingBytes { len: usize },
    #[error("message fails validation: {0}")]
    Invalid(&'static str),
}

/// Encodes `msg` as one frame into `buf` (cleared first; its capacity is reused across calls).
pub fn encode<M: Serialize>(msg: &M, buf: &mut Vec<u8>) -> Result<(), WireError> {
    buf.clear();
    buf.extend_from_slice(&MAGIC);
    buf.push(PROTOCOL_VERSION);
    buf.push(0);
    let out = std::mem::take(buf);
    let out = postcard::to_extend(msg, out).map_err(|e| WireError::Malformed(e.to_string()))?;
    *buf = out;
    if buf.len() > MAX_FRAME {
        return Err(WireError::Oversized { len: buf.len() });
    }
    Ok(())
}

/// Decodes one frame. Checks the size and header before touching the body, and refuses trailing bytes.
pub fn decode<M: DeserializeOwned + Validate + Kinds>(frame: &[u8]) -> Result<M, WireError> {
    let body = check_header(frame)?;
    if let Some(kind) = variant_index(body) {
        if kind >= M::KINDS {
            return Err(WireError::UnknownKind {
                kind,
                message: M::NAME,
                kinds: M::KINDS,
            });
        }
    }
    let (msg, rest): (M, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes { len: rest.len() });
    }
    msg.validate()?;
    Ok(msg)
}

/// The body of a frame whose size and header are right.
fn check_header(frame: &[u8]) -> Result<&[u8], WireError> {
    if frame.len() > MAX_FRAME {
        return Err(WireError::Oversized { len: frame.len() });
    }
    if frame.len() < HEADER_LEN {
        return Err(WireError::Truncated { len: frame.len() });
    }
    let magic = [frame[0], frame[1]];
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if frame[2] != PROTOCOL_VERSION {
        return Err(WireError::BadVersion(frame[2]));
    }
    if frame[3] != 0 {
        return Err(WireError::ReservedFlags(frame[3]));
    }
    Ok(&frame[HEADER_LEN..])
}

/// Checks that decoding alone cannot express (bounded lists).
pub trait Validate {
    fn validate(&self) -> Result<(), WireError>;
}

/// The name and number of kinds (variants) of a message enum, so that a frame of an unknown kind is
/// named as such rather than as a serde error. `tests.rs` checks the counts against the enums.
pub trait Kinds {
    const NAME: &'static str;
    const KINDS: u32;
}

/// The postcard variant index at the start of `body` (a LEB128 `u32`), if it is one.
fn variant_index(body: &[u8]) -> Option<u32> {
    variant(body).map(|(index, _)| index)
}

/// [`variant_index`] and how many bytes it takes.
fn variant(body: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for (i, &byte) in body.iter().take(5).enumerate() {
        let bits = u32::from(byte & 0x7f);
        let shift = 7 * u32::try_from(i).ok()?;
        // The fifth byte may only carry the top 4 bits of a u32.
        if i == 4 && bits > 0x0f {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests;
