//! The output of sandbox processes (a VM's programs, the helpers, a distribution's init) into the
//! daemon's log, bounded: what writes there may be hostile. Not here: the processes themselves.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Longest line of a sandbox process's output that is logged; the rest of the line is dropped.
pub(super) const MAX_LOG_LINE: usize = 4096;
/// Lines one pipe may log at once, then [`LOG_LINES_PER_SEC`] a second; the rest are counted,
/// not logged (a program that floods its stderr would otherwise fill the disk under the log).
pub(super) const LOG_BURST: f64 = 200.0;
pub(super) const LOG_LINES_PER_SEC: f64 = 20.0;

/// A token bucket of log lines for one pipe.
pub(super) struct LogBudget {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget {
            tokens: LOG_BURST,
            at: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether one more line may be logged now (else it is counted as dropped).
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * LOG_LINES_PER_SEC;
        self.tokens = (self.tokens + refill).min(LOG_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// Logs every line of `pipe` as `label: line`; keeps the last one in `last`. What writes here is
/// a VM's program (a plugin's `execute_binary`, a user's binary in their distribution) or a
/// process the VM's root can take the pipe from (a distribution's init, by `pidfd_getfd`), so:
/// a line is cut at [`MAX_LOG_LINE`] bytes and the rest of it dropped as it is read (an endless
/// line held whole grew the daemon until the OOM killer ended it, and every user's VMs with it),
/// and lines past the pipe's [`LogBudget`] are counted, not logged.
pub(super) fn log_lines(
    label: String,
    pipe: impl Read + Send + 'static,
    last: Option<Arc<Mutex<String>>>,
) {
    let _ = std::thread::Builder::new()
        .name("plughostd-log".into())
        .spawn(move || {
            let mut budget = LogBudget::new();
            let mut emit = |line: &[u8], cut: bool| {
                let mut text = String::from_utf8_lossy(line).into_owned();
                if cut {
                    text.push_str(&format!(" [line cut at {MAX_LOG_LINE} bytes]"));
                }
                let dropped = budget.dropped;
                if budget.take() {
                    if dropped > 0 {
                        tracing::info!(target: "plughostd::sandbox",
                            "{label}: [{dropped} lines not logged: more than {LOG_LINES_PER_SEC} a second]");
                        budget.dropped = 0;
                    }
                    tracing::info!(target: "plughostd::sandbox", "{label}: {text}");
                }
                if let Some(last) = &last {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = text;
                }
            };
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            let mut cut = false;
            loop {
                let buf = match reader.fill_buf() {
                    Ok(buf) => buf,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if buf.is_empty() {
                    if !line.is_empty() {
                        emit(&line, cut);
                    }
                    break;
                }
                let end = buf.iter().position(|&b| b == b'\n');
                let chunk = &buf[..end.unwrap_or(buf.len())];
                let take = chunk.len().min(MAX_LOG_LINE - line.len());
                line.extend_from_slice(&chunk[..take]);
                cut |= take < chunk.len();
                let used = chunk.len() + usize::from(end.is_some());
                reader.consume(used);
                if end.is_some() {
                    emit(&line, cut);
                    line.clear();
                    cut = false;
                }
            }
            if budget.dropped > 0 {
                tracing::info!(target: "plughostd::sandbox",
                    "{label}: [{} lines not logged: more than {LOG_LINES_PER_SEC} a second]",
                    budget.dropped);
            }
        });
}
