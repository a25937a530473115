//! A user's distributions: registration (every file of the rootfs read as its owner), start in the
//! user's VM, stop, list. The VM itself is started and stopped by `sessions.rs`.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use plughost::{Distribution, OfflineDistribution};
use plughost_service::{uuid_hex, DistroInfo, ErrorKind};

use super::{
    limit_reached, lock, passwd_entry, Caller, Daemon, OpError, OpResult, RunningDistro,
    UserSession,
};
use crate::store::{new_uuid, os_release, Registered, Store};
use crate::userfs::{self, UserCred};

impl Daemon {
    /// What `distro list` shows: the registration, with what os-release said at registration (a
    /// user's file is never read again for a listing).
    fn distro_info(&self, s: &UserSession, r: &Registered) -> DistroInfo {
        let running = lock(&s.distros)
            .get(&r.distribution_id())
            .cloned()
            .filter(|d| d.process.is_alive());
        DistroInfo {
            id: plughost_service::uuid_text(&r.distribution_id().0),
            name: r.name.clone(),
            rootfs: r.rootfs.clone(),
            package: r.package.clone(),
            flavor: r.flavor.clone(),
            version: r.version.clone(),
            running: running.is_some(),
            init_pid: running.as_ref().map(|d| d.info.init_pid),
            pid_namespace: running.as_ref().map(|d| d.info.pid_namespace),
        }
    }

    fn offline(r: &Registered) -> OfflineDistribution {
        OfflineDistribution {
            id: r.distribution_id(),
            name: r.name.clone(),
            package: r.package.clone(),
            flavor: r.flavor.clone(),
            version: r.version.clone(),
        }
    }

    /// The registration's rootfs as pinned at registration; after a daemon restart, opened again
    /// as its owner (`userfs`), never as root.
    #[allow(dead_code)] // for the distribution start (issue 12 point 3, its start half)
    pub fn pinned_rootfs(&self, entry: &Registered) -> OpResult<Arc<OwnedFd>> {
        if let Some(fd) = lock(&self.shared.pinned).get(&entry.id) {
            return Ok(fd.clone());
        }
        let gid = passwd_entry(entry.owner).map_or(entry.owner, |(_, gid)| gid);
        let user = UserCred::of(entry.owner, gid);
        let fd = userfs::open_dir_as(&user, &entry.rootfs)
            .map(Arc::new)
            .map_err(|e| {
                OpError::new(
                    ErrorKind::Invalid,
                    format!("rootfs {}: {e}", entry.rootfs.display()),
                )
            })?;
        Ok(lock(&self.shared.pinned)
            .entry(entry.id.clone())
            .or_insert(fd)
            .clone())
    }

    pub(super) fn find_registered(&self, owner: u32, name: &str) -> OpResult<Registered> {
        lock(&self.shared.store).find(owner, name).ok_or_else(|| {
            OpError::new(
                ErrorKind::NotFound,
                format!("no distribution named '{name}'"),
            )
        })
    }

    /// Registers a rootfs. Every file of it is read as the caller (`userfs`): the directory is
    /// opened and pinned, its os-release read bounded and cached. No lock is held while that I/O
    /// runs, nor across the hook.
    pub fn distro_register(
        &self,
        caller: Caller,
        name: &str,
        rootfs: &Path,
        package: Option<&str>,
    ) -> OpResult<DistroInfo> {
        self.check_running()?;
        let s = self.session_for(caller);
        let limits = &self.shared.config.limits;
        let registered = lock(&self.shared.store).of_owner(caller.uid).len();
        if caller.uid != 0 && registered >= limits.distributions {
            return Err(limit_reached(format!(
                "{} distributions are registered for uid {}: the limit is {} (unregister one first)",
                registered, caller.uid, limits.distributions
            )));
        }
        let user = UserCred::of(caller.uid, caller.gid);
        let root = userfs::open_dir_as(&user, rootfs).map_err(|e| {
            OpError::new(
                ErrorKind::Invalid,
                format!("rootfs {}: {e}", rootfs.display()),
            )
        })?;
        // The directory as the kernel resolved it for the caller (for display and for reopening
        // after a restart, as the owner again).
        let resolved = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&root)
        ))
        .map_err(|e| {
            OpError::new(
                ErrorKind::Internal,
                format!(
                    "rootfs {}: cannot name the opened directory: {e}",
                    rootfs.display()
                ),
            )
        })?;
        let (flavor, version) = os_release(&user, &root).map_err(|reason| {
            OpError::new(
                ErrorKind::Invalid,
                format!("rootfs {}: {reason}", resolved.display()),
            )
        })?;
        let id = new_uuid()
            .map_err(|e| OpError::new(ErrorKind::Internal, format!("cannot make an id: {e}")))?;
        let entry = Registered {
            id: uuid_hex(&id),
            name: name.to_owned(),
            rootfs: resolved,
            package: package.unwrap_or_default().to_owned(),
            owner: caller.uid,
            flavor,
            version,
        };
        {
            let mut store = lock(&self.shared.store);
            if store.find(caller.uid, name).is_some() {
                return Err(OpError::new(
                    ErrorKind::AlreadyExists,
                    format!("a distribution named '{name}' is already registered"),
                ));
            }
            if caller.uid != 0 {
                let count = store.of_owner(caller.uid).len();
                if count >= limits.distributions {
                    return Err(limit_reached(format!(
                        "{count} distributions are registered for uid {}: the limit is {} (unregister one first)",
                        caller.uid, limits.distributions
                    )));
                }
                let bytes = store.bytes_of_owner(caller.uid) + Store::entry_bytes(&entry);
                if bytes > limits.state_bytes {
                    return Err(limit_reached(format!(
                        "the registrations of uid {} would take {bytes} bytes of state: the limit is {}",
                        caller.uid, limits.state_bytes
                    )));
                }
            }
            store
                .add(entry.clone())
                .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        }
        lock(&self.shared.pinned).insert(entry.id.clone(), Arc::new(root));
        tracing::info!(distribution = name, id = %entry.id, uid = caller.uid,
            rootfs = %entry.rootfs.display(), "registered");
        let offline = Self::offline(&entry);
        self.with_manager(|m| m.on_distribution_registered(&s.info, &offline, &*self.shared))?;
        Ok(self.distro_info(&s, &entry))
    }

    pub fn distro_unregister(&self, caller: Caller, name: &str) -> OpResult<String> {
        self.check_running()?;
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        let entry = self.find_registered(caller.uid, name)?;
        if lock(&s.distros).contains_key(&entry.distribution_id()) {
            return Err(OpError::new(
                ErrorKind::Invalid,
                format!("distribution '{name}' is running: stop it first"),
            ));
        }
        lock(&self.shared.store)
            .remove(caller.uid, name)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        lock(&self.shared.pinned).remove(&entry.id);
        tracing::info!(distribution = name, id = %entry.id, uid = caller.uid, "unregistered");
        let offline = Self::offline(&entry);
        self.with_manager(|m| m.on_distribution_unregistered(&s.info, &offline, &*self.shared))?;
        Ok(format!("distribution '{name}' unregistered"))
    }

    pub fn distro_start(&self, caller: Caller, name: &str) -> OpResult<DistroInfo> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        let entry = self.find_registered(caller.uid, name)?;
        let id = entry.distribution_id();
        if lock(&s.distros).contains_key(&id) {
            return Err(OpError::new(
                ErrorKind::AlreadyExists,
                format!("distribution '{name}' is already running"),
            ));
        }
        let limit = self.shared.config.limits.running_distributions;
        let count = lock(&s.distros).len();
        if caller.uid != 0 && count >= limit {
            return Err(limit_reached(format!(
                "uid {} runs {count} distributions: the limit is {limit} (stop one first)",
                caller.uid
            )));
        }
        // Pinned at registration with the owner's rights, never root's (re-opened as the owner
        // after a restart): a later symlink swap of the path changes nothing.
        let rootfs = self.pinned_rootfs(&entry)?;
        let vm = self.ensure_vm(&s)?;
        let process = vm
            .start_distribution(name, &entry.id, &rootfs)
            .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?;
        let info = Distribution {
            id,
            name: entry.name.clone(),
            pid_namespace: process.pid_namespace,
            package: entry.package.clone(),
            init_pid: process.init_pid(),
            flavor: entry.flavor.clone(),
            version: entry.version.clone(),
        };
        let running = Arc::new(RunningDistro { info, process });
        lock(&s.distros).insert(id, running.clone());
        let result = self
            .with_manager(|m| m.on_distribution_started(&s.info, &running.info, &*self.shared))?;
        if let Err(error) = result {
            // A vetoed distribution gets no on_distribution_stopping (PLUGIN_ABI.md, "Hooks").
            lock(&s.distros).remove(&id);
            running.process.kill();
            return Err(error.into());
        }
        s.touch();
        Ok(self.distro_info(&s, &entry))
    }

    pub(super) fn stop_distro_locked(&self, s: &UserSession, d: &RunningDistro) {
        let _ = self.with_manager(|m| m.on_distribution_stopping(&s.info, &d.info, &*self.shared));
        lock(&s.distros).remove(&d.info.id);
        d.process.kill();
        s.touch();
        tracing::info!(distribution = %d.info.name, "distribution stopped");
    }

    pub fn distro_stop(&self, caller: Caller, name: &str) -> OpResult<String> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        let entry = self.find_registered(caller.uid, name)?;
        let running = lock(&s.distros).get(&entry.distribution_id()).cloned();
        let Some(d) = running else {
            return Err(OpError::new(
                ErrorKind::NotRunning,
                format!("distribution '{name}' is not running"),
            ));
        };
        self.stop_distro_locked(&s, &d);
        Ok(format!("distribution '{name}' stopped"))
    }

    pub fn distro_list(&self, caller: Caller) -> Vec<DistroInfo> {
        let s = self.session_for(caller);
        let entries = lock(&self.shared.store).of_owner(caller.uid);
        entries.iter().map(|r| self.distro_info(&s, r)).collect()
    }
}
