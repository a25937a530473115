//! The control protocol between `plughostctl` and `plughostd`, shared by both binaries.
//!
//! # Wire
//! A Unix stream socket. The client connects and sends **one request** as one JSON line (at most
//! [`MAX_LINE`] bytes, `\n`-terminated); requests that run a process ([`Request::Exec`],
//! [`Request::CsessionRun`]) carry the client's stdin, stdout and stderr as `SCM_RIGHTS` on that
//! line, in that order, so the process reads and writes the client's own terminal or pipes. The
//! daemon answers with **one** JSON [`Reply`] line and closes. The caller's identity is the socket's
//! `SO_PEERCRED`, never a field of the request.
//!
//! This crate does no policy: it encodes, decodes and bounds. The daemon validates every field.

use std::io::BufRead;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod docs;

/// The longest request or reply line, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// The longest reply line (a plugin or distribution table can be long).
pub const MAX_REPLY: usize = 4 * 1024 * 1024;
/// The default control socket; `$PLUGHOST_SOCKET` overrides it for both programs, and an explicit
/// `--socket` overrides both.
pub const DEFAULT_SOCKET: &str = "/run/plughost/plughostd.sock";
pub const DEFAULT_CONFIG: &str = "/etc/plughost/plughostd.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/plughost";

/// `--socket`, else `$PLUGHOST_SOCKET`, else [`DEFAULT_SOCKET`]: what the user typed wins over
/// the environment.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    choose_socket(flag, std::env::var_os("PLUGHOST_SOCKET"))
}

fn choose_socket(flag: Option<PathBuf>, env: Option<std::ffi::OsString>) -> PathBuf {
    flag.filter(|p| !p.as_os_str().is_empty())
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// One request from the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
///
/// Unknown fields are an error: a misspelt option is refused, never silently ignored (decoded
/// through `StrictRequest`, since serde ignores extra fields of a tagged unit variant).
#[serde(rename_all = "snake_case", tag = "op", from = "StrictRequest")]
pub enum Request {
    VmStart,
    VmStop,
    VmStatus,
    DistroRegister {
        name: String,
        rootfs: PathBuf,
        package: Option<String>,
    },
    DistroUnregister {
        name: String,
    },
    DistroStart {
        name: String,
    },
    DistroStop {
        name: String,
    },
    DistroList,
    /// Runs `argv` in the caller's VM (started on demand) or in one of its running distributions,
    /// as the caller's uid and gid, with the three fds passed alongside.
    Exec {
        distro: Option<String>,
        argv: Vec<String>,
    },
    /// A container session for an application: it is stopped, with its hooks, when that process
    /// exits. `application_pid` must be the caller's own (any process for root); absent, the
    /// caller's pid (`SO_PEERCRED`).
    CsessionCreate {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        application_pid: Option<u32>,
    },
    /// Runs `argv` in the container session's session VM (started on first use), with the fds.
    CsessionRun {
        name: String,
        argv: Vec<String>,
    },
    CsessionStop {
        name: String,
    },
    Plugins,
    /// Clears a plugin's crash latch (or backoff) and starts it again.
    PluginRestart {
        name: String,
    },
    /// Stops a plugin's host; it gets no hooks until enabled.
    PluginDisable {
        name: String,
    },
    PluginEnable {
        name: String,
    },
    /// The plugins' status in the OpenMetrics text format.
    Metrics,
    Shutdown,
}

/// [`Request`] as it is decoded: the same operations and fields, every variant a struct with
/// `deny_unknown_fields` (a unit variant would accept any field).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", deny_unknown_fields)]
enum StrictRequest {
    VmStart {},
    VmStop {},
    VmStatus {},
    DistroRegister {
        name: String,
        rootfs: PathBuf,
        package: Option<String>,
    },
    DistroUnregister {
        name: String,
    },
    DistroStart {
        name: String,
    },
    DistroStop {
        name: String,
    },
    DistroList {},
    Exec {
        distro: Option<String>,
        argv: Vec<String>,
    },
    CsessionCreate {
        name: String,
        #[serde(default)]
        application_pid: Option<u32>,
    },
    CsessionRun {
        name: String,
        argv: Vec<String>,
    },
    CsessionStop {
        name: String,
    },
    Plugins {},
    PluginRestart {
        name: String,
    },
    PluginDisable {
        name: String,
    },
    PluginEnable {
        name: String,
    },
    Metrics {},
    Shutdown {},
}

impl From<StrictRequest> for Request {
    fn from(r: StrictRequest) -> Request {
        match r {
            StrictRequest::VmStart {} => Request::VmStart,
            StrictRequest::VmStop {} => Request::VmStop,
            StrictRequest::VmStatus {} => Request::VmStatus,
            StrictRequest::DistroRegister {
                name,
                rootfs,
                package,
            } => Request::DistroRegister {
                name,
                rootfs,
                package,
            },
            StrictRequest::DistroUnregister { name } => Request::DistroUnregister { name },
            StrictRequest::DistroStart { name } => Request::DistroStart { name },
            StrictRequest::DistroStop { name } => Request::DistroStop { name },
            StrictRequest::DistroList {} => Request::DistroList,
            StrictRequest::Exec { distro, argv } => Request::Exec { distro, argv },
            StrictRequest::CsessionCreate {
                name,
                application_pid,
            } => Request::CsessionCreate {
                name,
                application_pid,
            },
            StrictRequest::CsessionRun { name, argv } => Request::CsessionRun { name, argv },
            StrictRequest::CsessionStop { name } => Request::CsessionStop { name },
            StrictRequest::Plugins {} => Request::Plugins,
            StrictRequest::PluginRestart { name } => Request::PluginRestart { name },
            StrictRequest::PluginDisable { name } => Request::PluginDisable { name },
            StrictRequest::PluginEnable { name } => Request::PluginEnable { name },
            StrictRequest::Metrics {} => Request::Metrics,
            StrictRequest::Shutdown {} => Request::Shutdown,
        }
    }
}

impl Request {
    /// Whether the request carries the client's stdin, stdout and stderr.
    pub fn takes_stdio(&self) -> bool {
        matches!(self, Request::Exec { .. } | Request::CsessionRun { .. })
    }
}

/// A VM, as `vm status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub session_id: u32,
    pub user: String,
    pub running: bool,
    /// The VM's init, as seen from the daemon.
    pub init_pid: Option<u32>,
    pub idle_timeout_secs: u64,
}

/// A registered distribution, as `distro list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistroInfo {
    /// The uuid in its canonical text form, `8-4-4-4-12` lowercase hex digits (as the table
    /// shows it; plugins get its 16 bytes).
    pub id: String,
    pub name: String,
    pub rootfs: PathBuf,
    pub package: String,
    pub flavor: String,
    pub version: String,
    pub running: bool,
    pub init_pid: Option<u32>,
    pub pid_namespace: Option<u64>,
}

/// One plugin, as `plugins` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRow {
    pub name: String,
    pub path: PathBuf,
    /// `"process"` or `"in-process"`.
    pub isolation: String,
    pub host_pid: Option<u32>,
    /// `ready`, `busy`, `backing-off`, `crashed`, `failed` or `disabled`.
    pub state: String,
    /// The state in words: `busy in on_vm_started for 120 ms`, `backing off until 12:00:03 UTC`...
    #[serde(default)]
    pub detail: String,
    pub crashes: u64,
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub hooks_served: u64,
    #[serde(default)]
    pub api_calls: u64,
    /// Round-trip latency per hook kind that was called.
    #[serde(default)]
    pub latency: Vec<HookLatencyRow>,
    pub last_error: Option<String>,
    /// The stack of the plugin's last crash that left a report (innermost frame first, one a line).
    #[serde(default)]
    pub last_crash: Option<String>,
}

/// One hook kind's latency, as `plugins --json` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookLatencyRow {
    pub hook: String,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Why a request failed; the message is what the user sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A plugin vetoed, crashed or failed to load (the message is worded as `PLUGIN_ABI.md` says).
    Plugin,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    NotRunning,
    /// The daemon lacks a privilege or kernel feature the request needs.
    Unsupported,
    Invalid,
    ShuttingDown,
    /// A per-user limit of the configuration (`[limits]`) is reached.
    LimitReached,
    /// The control socket refuses the connection (too many from this uid, or a plugin host's).
    Refused,
    Internal,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum Reply {
    Done {
        message: String,
    },
    Vm(VmInfo),
    Distro(DistroInfo),
    Distros {
        distros: Vec<DistroInfo>,
    },
    CsessionCreated {
        id: u32,
        name: String,
    },
    /// The process ended: its exit code, or `128 + signal`.
    Exited {
        code: i32,
    },
    Plugins {
        plugins: Vec<PluginRow>,
    },
    Metrics {
        text: String,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Decoding or framing failure of a control message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("connection closed before a complete message")]
    Closed,
    #[error("timed out waiting for a message")]
    TimedOut,
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("i/o error on the control socket: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ProtocolError::TimedOut
            }
            _ => ProtocolError::Io(e),
        }
    }
}

/// Encodes a message as one line.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising these plain enums cannot fail (no maps with non-string keys, no custom impls).
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decodes one line (without or with its newline), after checking its size.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8], limit: usize) -> Result<T, ProtocolError> {
    if line.len() > limit {
        return Err(ProtocolError::TooLong { limit });
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    Ok(serde_json::from_slice(line)?)
}

/// Reads one line of at most `limit` bytes from `reader`.
pub fn read_line<R: BufRead>(reader: R, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut line = Vec::new();
    let mut bounded = reader.take(limit as u64 + 1);
    bounded.read_until(b'\n', &mut line)?;
    if line.len() > limit {
        return Err(ProtocolError::TooLong { limit });
    }
    if line.last() != Some(&b'\n') {
        return Err(ProtocolError::Closed);
    }
    Ok(line)
}

/// `line` with every control character shown escaped (`\r`, `\n`, `\t`, `\x1b`, `\u{9b}`...),
/// so that text from a plugin or a user (output, names, paths) can neither end a log line, forge
/// another one nor drive the terminal showing it. A backslash is doubled only when it would be
/// read as one of those escapes. Invalid UTF-8 bytes are shown as `\xNN`.
pub fn escape_control(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                // C1 controls (U+0080..U+009F: CSI is U+009B) and the line and paragraph
                // separators some terminals honour.
                c if (0x80..=0x9f).contains(&(c as u32)) || c == '\u{2028}' || c == '\u{2029}' => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A distribution id as 32 lowercase hex digits.
pub fn uuid_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`uuid_hex`].
pub fn parse_uuid_hex(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// The uuid's canonical text form (`8-4-4-4-12`).
pub fn uuid_text(id: &[u8; 16]) -> String {
    let hex = uuid_hex(id);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_one_line() {
        let requests = [
            Request::VmStart,
            Request::Exec {
                distro: Some("d".into()),
                argv: vec!["cat".into(), "/x".into()],
            },
            Request::DistroRegister {
                name: "d".into(),
                rootfs: "/r".into(),
                package: None,
            },
        ];
        for request in requests {
            let line = encode(&request);
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let back: Request = decode(&line, MAX_LINE).expect("decodes");
            assert_eq!(back, request);
        }
    }

    #[test]
    fn oversized_line_is_refused_before_decoding() {
        let line = vec![b' '; MAX_LINE + 1];
        assert!(matches!(
            decode::<Request>(&line, MAX_LINE),
            Err(ProtocolError::TooLong { .. })
        ));
        let err = read_line(std::io::Cursor::new(line), MAX_LINE).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLong { .. }));
    }

    #[test]
    fn unknown_fields_are_an_error() {
        let err =
            decode::<Request>(b"{\"op\":\"vm_start\",\"force\":true}\n", MAX_LINE).unwrap_err();
        assert!(err.to_string().contains("unknown field `force`"), "{err}");
        let err = decode::<Request>(
            b"{\"op\":\"distro_stop\",\"name\":\"d\",\"user\":0}\n",
            MAX_LINE,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `user`"), "{err}");
        let ok = decode::<Request>(b"{\"op\":\"distro_stop\",\"name\":\"d\"}\n", MAX_LINE);
        assert_eq!(ok.ok(), Some(Request::DistroStop { name: "d".into() }));
    }

    #[test]
    fn unknown_operation_is_an_error() {
        assert!(decode::<Request>(b"{\"op\":\"format_disk\"}\n", MAX_LINE).is_err());
    }

    #[test]
    fn explicit_socket_wins_over_the_environment() {
        let flag = Some(PathBuf::from("/flag.sock"));
        let env = Some(std::ffi::OsString::from("/env.sock"));
        assert_eq!(
            choose_socket(flag.clone(), env.clone()),
            PathBuf::from("/flag.sock")
        );
        assert_eq!(choose_socket(None, env), PathBuf::from("/env.sock"));
        assert_eq!(choose_socket(flag, None), PathBuf::from("/flag.sock"));
        assert_eq!(choose_socket(None, None), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            choose_socket(None, Some("".into())),
            PathBuf::from(DEFAULT_SOCKET)
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_control(b"ok\rFAKE: root logged in\n\x1b[2Jx\x7f\xc2\x9b\xff"),
            "ok\\rFAKE: root logged in\\n\\x1b[2Jx\\x7f\\u{9b}\\xff"
        );
        assert_eq!(escape_control("plain ütf-8".as_bytes()), "plain ütf-8");
    }

    #[test]
    fn uuid_hex_round_trips() {
        let id = [0xab; 16];
        assert_eq!(parse_uuid_hex(&uuid_hex(&id)), Some(id));
        assert_eq!(parse_uuid_hex("zz"), None);
        assert_eq!(uuid_text(&[0; 16]), "00000000-0000-0000-0000-000000000000");
    }
}
