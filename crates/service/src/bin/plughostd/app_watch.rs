//! Container sessions end with their application (`PLUGIN_ABI.md`, "Model"): one thread,
//! `plughostd-apps`, watches the `application_pid` of every container session through a pidfd (one
//! epoll set for all of them) and, when an application exits, has the daemon stop its session with
//! the hooks a `csession stop` delivers.
//!
//! The pidfd is opened when the session is created, before anything is published, so the watch
//! follows that process and never a later one that reuses its pid.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

use plughost_sys::process::Pidfd;
use rustix::event::epoll::{self, EventData, EventFlags};

/// Why an application cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum AppWatchError {
    #[error("no process {pid}: {source}")]
    NoSuchProcess {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} does not belong to uid {uid}")]
    NotTheCallers { pid: u32, uid: u32 },
    #[error("cannot watch process {pid}: {source}")]
    Watch {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The application of one container session, checked and held by its pidfd.
pub struct App {
    pidfd: Pidfd,
}

impl App {
    /// Opens `pid` for `uid`'s container session: the process must exist and, unless `uid` is
    /// root, run with `uid` as its real uid (a user may not tie a session to someone else's process).
    pub fn open(pid: u32, uid: u32) -> Result<App, AppWatchError> {
        let pidfd =
            Pidfd::open(pid).map_err(|source| AppWatchError::NoSuchProcess { pid, source })?;
        if uid != 0 {
            let owner = real_uid(pid);
            // Read after the pidfd was opened: if that process is still alive now, the status read
            // was its own (its pid cannot have been reused meanwhile).
            if owner != Some(uid) || pidfd.has_exited() {
                return Err(AppWatchError::NotTheCallers { pid, uid });
            }
        }
        Ok(App { pidfd })
    }

    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }
}

/// The real uid of `pid` from `/proc/<pid>/status`.
fn real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The watched applications.
pub struct AppWatch {
    epoll: OwnedFd,
    /// Leaf lock: container session id (the epoll key) to its application. Never held across a
    /// hook: the watcher takes the entry out before it stops the session.
    watched: Mutex<HashMap<u32, App>>,
}

impl AppWatch {
    pub fn new() -> std::io::Result<AppWatch> {
        Ok(AppWatch {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            watched: Mutex::new(HashMap::new()),
        })
    }

    fn watched(&self) -> MutexGuard<'_, HashMap<u32, App>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the application of container session `id`. An application that already exited is
    /// reported at once.
    pub fn watch(&self, id: u32, app: App) -> Result<(), AppWatchError> {
        let mut watched = self.watched();
        epoll::add(
            &self.epoll,
            &app.pidfd,
            EventData::new_u64(u64::from(id)),
            EventFlags::IN,
        )
        .map_err(|e| AppWatchError::Watch {
            pid: app.pid(),
            source: e.into(),
        })?;
        watched.insert(id, app);
        Ok(())
    }

    /// Stops watching container session `id` (it stopped for another reason). An exit the
    /// watcher already took in is then ignored: the session is no longer watched.
    pub fn unwatch(&self, id: u32) {
        if let Some(app) = self.watched().remove(&id) {
            let _ = epoll::delete(&self.epoll, &app.pidfd);
        }
    }

    /// Waits for applications to exit, forever (until `on_exit` says stop): calls `on_exit` with
    /// the session id and the application's pid, on this thread, once per watched session.
    pub fn run(&self, mut on_exit: impl FnMut(u32, u32) -> bool) {
        let mut events = Vec::with_capacity(16);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!("waiting for container sessions' applications: {e}");
                    return;
                }
            }
            let mut exited = Vec::new();
            for event in &events {
                let Ok(id) = u32::try_from(event.data.u64()) else {
                    continue;
                };
                // Taken out first: a pidfd stays readable, and unwatch may have raced us.
                if let Some(app) = self.watched().remove(&id) {
                    let _ = epoll::delete(&self.epoll, &app.pidfd);
                    exited.push((id, app.pid()));
                }
            }
            for (id, pid) in exited {
                if !on_exit(id, pid) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn an_exited_application_is_reported_once_and_an_unwatched_one_never() {
        let watch = AppWatch::new().expect("epoll");
        let mut children = Vec::new();
        for id in 1..=4u32 {
            let child = Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep");
            watch
                .watch(id, App::open(child.id(), 0).expect("open"))
                .expect("watch");
            children.push(child);
        }
        watch.unwatch(2);
        for child in &mut children {
            child.kill().expect("kill");
            child.wait().expect("reap");
        }
        let mut seen = Vec::new();
        watch.run(|id, pid| {
            seen.push((id, pid));
            seen.len() < 3
        });
        seen.sort_unstable();
        let expected: Vec<(u32, u32)> = [1usize, 3, 4]
            .iter()
            .map(|&i| (i as u32, children[i - 1].id()))
            .collect();
        assert_eq!(seen, expected);
        assert!(watch.watched().is_empty());
    }

    #[test]
    fn a_process_of_another_user_is_refused() {
        // pid 1 runs as root: a non-root caller may not claim it.
        let error = App::open(1, 65534).err().expect("refused");
        assert!(matches!(
            error,
            AppWatchError::NotTheCallers { pid: 1, uid: 65534 }
        ));
        assert!(App::open(u32::MAX, 0).is_err());
    }
}
