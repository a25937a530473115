//! One thread per manager that notices host deaths at once (pidfd), ends a dead host's cgroup, and
//! logs what plugins print.
//!
//! It never blocks on anything but `epoll_wait` and non-blocking reads, so a busy or stuck service
//! callback cannot delay crash detection. A host that died between hooks is recorded here (the
//! manager's `OnDeath`: a `try_lock` of the host's read token, a classification of an exited process,
//! leaf locks only), so the next operation fails before any hook. A dead host's cgroup is killed at once; its directory is
//! removed when `cgroup.events` (watched in the same epoll set) says the last process is gone.
//! A plugin's output is read at most 64 KiB per wake-up and logged within a line budget (200 at
//! once, then 20 a second; the rest counted), so a plugin that floods its stdout holds neither this
//! thread nor the service's disk.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;

use crate::cgroups::{HostCgroup, Teardown};
use crate::config::OutputSink;
use crate::proxy::Host;
use plughost_sys::cgroup::EventsWatch;

const STOP_KEY: u64 = u64::MAX;
/// A line longer than this is cut (and the rest logged as further lines), so a plugin printing
/// without newlines cannot grow the service's memory.
const MAX_LINE: usize = 4096;

/// Most reads of one host's output per wake-up (64 KiB): the pipe is level-triggered, so what is
/// left comes back at the next wait, after the other hosts' events (a plugin printing faster than
/// the sink takes it cannot hold the monitor, and with it every other host's death notice).
const READS_PER_WAKE: usize = 16;
/// Lines of one plugin logged at once, then [`LINES_PER_SEC`] a second; the rest are counted and
/// the count logged with the next line that passes (a flood cannot fill the service's disk).
const LINE_BURST: f64 = 200.0;
const LINES_PER_SEC: f64 = 20.0;

/// Keys per host: its pidfd, its output pipe, its cgroup's `cgroup.events`.
const KEYS_PER_HOST: u64 = 3;

/// A token bucket of one plugin's output lines.
struct LineBudget {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

impl LineBudget {
    fn new() -> LineBudget {
        LineBudget {
            tokens: LINE_BURST,
            at: Instant::now(),
            dropped: 0,
        }
    }

    /// Passes `line` to `sink` if the budget allows (after a note of how many were not), else
    /// counts it.
    fn emit(&mut self, sink: &dyn OutputSink, plugin: &str, line: &str) {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * LINES_PER_SEC;
        self.tokens = (self.tokens + refill).min(LINE_BURST);
        self.at = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return;
        }
        self.tokens -= 1.0;
        if self.dropped > 0 {
            let note = format!(
                "[{} lines not logged: more than {LINES_PER_SEC} a second]",
                self.dropped
            );
            sink.line(plugin, &note);
            self.dropped = 0;
        }
        sink.line(plugin, line);
    }
}

/// What the manager does when a host dies (latch or back off: the next operation fails fast).
pub(crate) type OnDeath = Box<dyn FnOnce() + Send>;

enum Watch {
    Death {
        host: Weak<Host>,
        cgroup: Option<Arc<HostCgroup>>,
        on_death: Option<OnDeath>,
    },
    Output {
        plugin: Arc<str>,
        pipe: OwnedFd,
        partial: Vec<u8>,
        budget: LineBudget,
    },
    /// A dead host's killed cgroup, removed once empty.
    Drain {
        cgroup: Arc<HostCgroup>,
        events: EventsWatch,
    },
}

pub(crate) struct Monitor {
    epoll: OwnedFd,
    stop: OwnedFd,
    /// Leaf lock: epoll key to what it watches.
    watches: Mutex<HashMap<u64, Watch>>,
    output: Arc<dyn OutputSink>,
}

impl Monitor {
    pub fn start(output: Arc<dyn OutputSink>) -> std::io::Result<Arc<Monitor>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &stop, EventData::new_u64(STOP_KEY), EventFlags::IN)?;
        let monitor = Arc::new(Monitor {
            epoll,
            stop,
            watches: Mutex::new(HashMap::new()),
            output,
        });
        let thread = monitor.clone();
        std::thread::Builder::new()
            .name("plughost-monitor".into())
            .spawn(move || thread.run())?;
        Ok(monitor)
    }

    fn add(&self, key: u64, fd: std::os::fd::BorrowedFd<'_>, watch: Watch) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = epoll::add(&self.epoll, fd, EventData::new_u64(key), EventFlags::IN) {
            tracing::error!("monitor cannot watch fd: {e}");
            return;
        }
        watches.insert(key, watch);
    }

    /// Watches a host's pidfd; when it dies, its cgroup (if any) is killed and removed, and
    /// `on_death` runs on the monitor thread (no lock of the monitor held).
    pub fn watch_host(&self, host: &Arc<Host>, cgroup: Option<Arc<HostCgroup>>, on_death: OnDeath) {
        self.add(
            host.id * KEYS_PER_HOST,
            host.pidfd().as_fd(),
            Watch::Death {
                host: Arc::downgrade(host),
                cgroup,
                on_death: Some(on_death),
            },
        );
    }

    /// Logs a host's output pipe until it closes.
    pub fn watch_output(&self, id: u64, plugin: Arc<str>, pipe: OwnedFd) {
        let _ = rustix::fs::fcntl_setfl(&pipe, rustix::fs::OFlags::NONBLOCK);
        let key = id * KEYS_PER_HOST + 1;
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = epoll::add(&self.epoll, &pipe, EventData::new_u64(key), EventFlags::IN) {
            tracing::error!(plugin = %plugin, "monitor cannot watch the host's output: {e}");
            return;
        }
        watches.insert(
            key,
            Watch::Output {
                plugin,
                pipe,
                partial: Vec::new(),
                budget: LineBudget::new(),
            },
        );
    }

    pub fn stop(&self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }

    fn run(&self) {
        let mut events = Vec::with_capacity(16);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!("plughost monitor stops: epoll_wait: {e}");
                    return;
                }
            }
            for event in &events {
                let key = event.data.u64();
                if key == STOP_KEY {
                    return;
                }
                self.handle(key);
            }
        }
    }

    fn handle(&self, key: u64) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let mut draining = None;
        let mut died = None;
        let done = match watches.get_mut(&key) {
            None => false,
            Some(Watch::Death {
                host,
                cgroup,
                on_death,
            }) => {
                if let Some(host) = host.upgrade() {
                    host.on_exit();
                }
                died = on_death.take();
                if let Some(cgroup) = cgroup.take() {
                    if let Teardown::Draining(events) = cgroup.begin_teardown() {
                        draining = Some(Watch::Drain { cgroup, events });
                    }
                }
                true
            }
            Some(Watch::Output {
                plugin,
                pipe,
                partial,
                budget,
            }) => read_output(pipe, partial, budget, plugin, &*self.output),
            Some(Watch::Drain { cgroup, events }) => {
                // Reading re-arms the notification; then try again.
                let _ = events.is_populated();
                let removed = cgroup.try_remove();
                if removed {
                    tracing::debug!("removed {} once empty", cgroup.path().display());
                }
                removed
            }
        };
        if done {
            if let Some(watch) = watches.remove(&key) {
                match &watch {
                    Watch::Death { host, .. } => {
                        if let Some(host) = host.upgrade() {
                            let _ = epoll::delete(&self.epoll, host.pidfd().as_fd());
                        }
                    }
                    Watch::Output { pipe, .. } => {
                        let _ = epoll::delete(&self.epoll, pipe);
                    }
                    Watch::Drain { events, .. } => {
                        let _ = epoll::delete(&self.epoll, events);
                    }
                }
            }
        }
        if let Some(Watch::Drain { cgroup, events }) = draining {
            // The key of the host's cgroup: the death key's host id, third slot.
            let drain_key = key - key % KEYS_PER_HOST + 2;
            let added = epoll::add(
                &self.epoll,
                &events,
                EventData::new_u64(drain_key),
                EventFlags::PRI,
            );
            match added {
                // Watched before this second attempt: an emptying in between is not missed.
                Ok(()) => {
                    if !cgroup.try_remove() {
                        tracing::debug!("{} killed; removed once empty", cgroup.path().display());
                        watches.insert(drain_key, Watch::Drain { cgroup, events });
                    }
                }
                Err(e) => {
                    tracing::warn!("monitor cannot watch {}: {e}", cgroup.path().display());
                }
            }
        }
        drop(watches);
        if let Some(on_death) = died {
            on_death();
        }
    }
}

/// Reads what is available, at most [`READS_PER_WAKE`] times; returns true at end of file.
fn read_output(
    pipe: &OwnedFd,
    partial: &mut Vec<u8>,
    budget: &mut LineBudget,
    plugin: &str,
    sink: &dyn OutputSink,
) -> bool {
    let mut buf = [0u8; 4096];
    let mut reads = 0;
    while reads < READS_PER_WAKE {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => {
                if !partial.is_empty() {
                    budget.emit(sink, plugin, &String::from_utf8_lossy(partial));
                    partial.clear();
                }
                return true;
            }
            Ok(n) => {
                reads += 1;
                partial.extend_from_slice(&buf[..n]);
                while let Some(pos) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=pos).collect();
                    budget.emit(
                        sink,
                        plugin,
                        String::from_utf8_lossy(&line[..pos]).trim_end_matches('\r'),
                    );
                }
                while partial.len() >= MAX_LINE {
                    let line: Vec<u8> = partial.drain(..MAX_LINE).collect();
                    budget.emit(sink, plugin, &String::from_utf8_lossy(&line));
                }
            }
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return false,
            Err(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl OutputSink for Lines {
        fn line(&self, _plugin: &str, line: &str) {
            self.0.lock().expect("lines").push(line.to_owned());
        }
    }

    /// A writer that never stops cannot keep one wake-up reading, and what it writes past the
    /// burst is counted, not logged.
    #[test]
    fn a_flood_is_read_in_bounded_turns_and_logged_within_the_budget() {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK).expect("nonblock");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let chunk = "flood\n".repeat(512);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = rustix::io::write(&write, chunk.as_bytes());
                }
            })
        };
        let sink = Lines::default();
        let (mut partial, mut budget) = (Vec::new(), LineBudget::new());
        // Returns (not at the end) however fast the writer refills the pipe; until the writer
        // has offered far more than the burst.
        for _ in 0..1_000_000 {
            assert!(!read_output(&read, &mut partial, &mut budget, "p", &sink));
            if budget.dropped > 10_000 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(read);
        writer.join().expect("writer");
        let lines = sink.0.lock().expect("lines");
        assert!(budget.dropped > 10_000, "{} dropped", budget.dropped);
        // The burst, and what the rate let through while the test ran (well under a minute).
        assert!(
            lines.len() <= LINE_BURST as usize + 1200,
            "{} logged",
            lines.len()
        );
        assert!(lines.iter().all(|l| l == "flood" || l.starts_with('[')));
    }

    #[test]
    fn the_count_of_what_was_not_logged_comes_with_the_next_line() {
        let sink = Lines::default();
        let mut budget = LineBudget::new();
        for _ in 0..(LINE_BURST as usize + 5) {
            budget.emit(&sink, "p", "x");
        }
        assert_eq!(budget.dropped, 5);
        budget.tokens = 1.0;
        budget.emit(&sink, "p", "after");
        let lines = sink.0.lock().expect("lines");
        let n = lines.len();
        assert_eq!(lines[n - 2], "[5 lines not logged: more than 20 a second]");
        assert_eq!(lines[n - 1], "after");
    }
}
