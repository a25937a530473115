//! One thread per manager that notices host deaths at once (pidfd), ends a dead host's cgroup, and
//! logs what plugins print.
//!
//! It never blocks on anything but `epoll_wait` and non-blocking reads, so a busy or stuck service
//! callback cannot delay crash detection. A host that died between hooks is recorded here (the
//! manager's `OnDeath`: a `try_lock` of the host's read token, a classification of an exited process,
//! leaf locks only), so the next operation fails before any hook. A dead host's cgroup is killed at once; its directory is
//! removed when `cgroup.events` (watched in the same epoll set) says the last process is gone.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

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

/// Keys per host: its pidfd, its output pipe, its cgroup's `cgroup.events`.
const KEYS_PER_HOST: u64 = 3;

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
            }) => read_output(pipe, partial, plugin, &*self.output),
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

/// Reads what is available; returns true at end of file.
fn read_output(pipe: &OwnedFd, partial: &mut Vec<u8>, plugin: &str, sink: &dyn OutputSink) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => {
                if !partial.is_empty() {
                    sink.line(plugin, &String::from_utf8_lossy(partial));
                    partial.clear();
                }
                return true;
            }
            Ok(n) => {
                partial.extend_from_slice(&buf[..n]);
                while let Some(pos) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=pos).collect();
                    sink.line(
                        plugin,
                        String::from_utf8_lossy(&line[..pos]).trim_end_matches('\r'),
                    );
                }
                while partial.len() >= MAX_LINE {
                    let line: Vec<u8> = partial.drain(..MAX_LINE).collect();
                    sink.line(plugin, &String::from_utf8_lossy(&line));
                }
            }
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return false,
            Err(_) => return true,
        }
    }
}
