//! Threads that serve a plugin's API calls when none of its hooks is in flight.
//!
//! One epoll watches, for every host, its call ring's doorbell eventfd and its socket, both
//! edge-triggered (no `epoll_ctl` per hook or per call: a dispatcher that holds a host's read token
//! makes the pool step aside by itself, see [`Host::serve_idle`]). [`POOL_THREADS`] threads block in
//! `epoll_wait` (the kernel wakes one per event); the woken thread claims what the host published
//! and serves it with the default callbacks, so calls from several plugin threads run in parallel.
//! The service never reads or writes a host's doorbell (the host holds the same open file and could
//! make it blocking or fill it): each host write is an edge, and a host that fills, drains or blocks
//! its own doorbell only stalls its own calls outside hooks. When the service itself must hand a
//! host to the pool (a dispatcher leaving calls it did not serve, a pool thread giving up its turn),
//! it uses [`Kicks`]: a queue of host ids and an eventfd only the service holds.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;

use crate::callbacks::ServiceCallbacks;
use crate::kicks::Kicks;
use crate::proxy::Host;

pub(crate) const POOL_THREADS: usize = 2;
const STOP_KEY: u64 = u64::MAX;
const KICK_KEY: u64 = u64::MAX - 1;

fn socket_key(host: u64) -> u64 {
    host * 2
}

fn doorbell_key(host: u64) -> u64 {
    host * 2 + 1
}

pub(crate) struct Pool {
    epoll: OwnedFd,
    stop: OwnedFd,
    pub kicks: Arc<Kicks>,
    /// Every host's socket, for its dispatchers' hang-up check (`hangups.rs`).
    pub hangups: Arc<crate::hangups::Hangups>,
    /// Leaf lock: host id to host. Looked up per event, never held while serving.
    hosts: Mutex<HashMap<u64, Weak<Host>>>,
}

impl Pool {
    pub fn new() -> std::io::Result<Arc<Pool>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &stop, EventData::new_u64(STOP_KEY), EventFlags::IN)?;
        let kicks = Arc::new(Kicks::new()?);
        epoll::add(
            &epoll,
            &kicks.fd,
            EventData::new_u64(KICK_KEY),
            EventFlags::IN | EventFlags::ET,
        )?;
        Ok(Arc::new(Pool {
            epoll,
            stop,
            kicks,
            hangups: Arc::new(crate::hangups::Hangups::new()?),
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

    fn host(&self, id: u64) -> Option<Arc<Host>> {
        let host = self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        host.and_then(|h| h.upgrade())
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
                if key == KICK_KEY {
                    for id in self.kicks.take() {
                        if let Some(host) = self.host(id) {
                            host.serve_idle(default, false);
                        }
                    }
                    continue;
                }
                if let Some(host) = self.host(key / 2) {
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
