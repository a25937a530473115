//! Threads that serve a plugin's API calls when none of its hooks is in flight.
//!
//! One epoll watches, for every host, its call ring's doorbell eventfd and its socket, both
//! edge-triggered (no `epoll_ctl` per hook or per call: a dispatcher that holds a host's read token
//! makes the pool step aside by itself, see [`Host::serve_idle`]). [`POOL_THREADS`] threads block in
//! `epoll_wait` (the kernel wakes one per event); the woken thread claims what the host published
//! and serves it with the default callbacks, so calls from several plugin threads run in parallel.
//! The doorbell is never read: each write is an edge, and the count cannot overflow in practice
//! (2^64 rings).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;

use crate::callbacks::ServiceCallbacks;
use crate::host::Host;

pub(crate) const POOL_THREADS: usize = 2;
const STOP_KEY: u64 = u64::MAX;

fn socket_key(host: u64) -> u64 {
    host * 2
}

fn doorbell_key(host: u64) -> u64 {
    host * 2 + 1
}

pub(crate) struct Pool {
    epoll: OwnedFd,
    stop: OwnedFd,
    /// Leaf lock: host id to host. Looked up per event, never held while serving.
    hosts: Mutex<HashMap<u64, Weak<Host>>>,
}

impl Pool {
    pub fn new() -> std::io::Result<Arc<Pool>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &stop, EventData::new_u64(STOP_KEY), EventFlags::IN)?;
        Ok(Arc::new(Pool {
            epoll,
            stop,
            hosts: Mutex::new(HashMap::new()),
        }))
    }

    pub fn start(
        self: &Arc<Self>,
        default: Arc<dyn ServiceCallbacks + Send + Sync>,
    ) -> std::io::Result<()> {
        for i in 0..POOL_THREADS {
            let pool = self.clone();
            let default = default.clone();
            std::thread::Builder::new()
                .name(format!("plughost-pool-{i}"))
                .spawn(move || pool.run(&*default))?;
        }
        Ok(())
    }

    pub fn register(&self, host: &Arc<Host>) {
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.id, Arc::downgrade(host));
        let flags = EventFlags::IN | EventFlags::ET;
        for (fd, key) in [
            (host.channel_fd(), socket_key(host.id)),
            (host.doorbell_fd(), doorbell_key(host.id)),
        ] {
            // Registering a readable fd queues an event at once, so nothing published before
            // registration is missed.
            if let Err(e) = epoll::add(&self.epoll, fd, EventData::new_u64(key), flags) {
                tracing::error!(plugin = %host.name, "cannot watch the host's channel: {e}");
            }
        }
    }

    pub fn unregister(&self, host: &Host) {
        let _ = epoll::delete(&self.epoll, host.channel_fd());
        let _ = epoll::delete(&self.epoll, host.doorbell_fd());
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host.id);
    }

    pub fn stop(&self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }

    fn run(&self, default: &dyn ServiceCallbacks) {
        let mut events = Vec::with_capacity(1);
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
                    tracing::error!("plugin call pool stops: epoll_wait: {e}");
                    return;
                }
            }
            for event in &events {
                let key = event.data.u64();
                if key == STOP_KEY {
                    return;
                }
                let host = self
                    .hosts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(key / 2))
                    .cloned();
                if let Some(host) = host.and_then(|h| h.upgrade()) {
                    host.serve_idle(default, key == socket_key(host.id));
                }
            }
        }
    }
}

impl AsFd for Pool {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}
