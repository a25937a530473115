//! The pool's wake-up queue: host ids that want a pool turn, and the service-private eventfd that
//! wakes the pool for them. Apart from the pool so that a host proxy can kick it without knowing
//! the pool (no import circle between `proxy` and `pool`).

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use rustix::event::{eventfd, EventfdFlags};

/// Hosts the service asks the pool to look at, and the service-private eventfd that wakes it.
pub(crate) struct Kicks {
    pub(crate) fd: OwnedFd,
    /// Leaf lock: host ids waiting for a pool turn. Never held while serving.
    queue: Mutex<Vec<u64>>,
}

impl Kicks {
    pub(crate) fn new() -> std::io::Result<Kicks> {
        Ok(Kicks {
            fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            queue: Mutex::new(Vec::new()),
        })
    }

    /// Gives host `id` a pool turn (call it without holding that host's read token).
    pub(crate) fn kick(&self, id: u64) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    pub(crate) fn take(&self) -> Vec<u64> {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut count);
        let mut ids = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
