//! User sessions and their VM: a session created on the user's first request, its VM started on
//! demand, stopped (with its distributions) on request, at shutdown or when idle, and `exec` of a
//! client's program in the VM or one of its distributions. Registrations and distribution
//! starts are in `distros.rs`; the plugin API's side of a VM is in `plugin_api.rs`.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::collections::HashMap;

use plughost::{Session, SessionId, VmSettings};
use plughost_service::{ErrorKind, VmInfo};

use super::{
    lock, passwd_entry, Caller, Daemon, OpError, OpResult, ProcessSlot, RunningDistro, UserSession,
    ENOENT,
};
use crate::vm::{exit_code, wait_or_hangup, DistroProcess, ExecError, ExecSpec, Vm};

impl Daemon {
    /// The caller's session, created on first use.
    pub fn session_for(&self, caller: Caller) -> Arc<UserSession> {
        if let Some(s) = lock(&self.shared.sessions).by_uid.get(&caller.uid) {
            return s.clone();
        }
        // Read before the lock: no file I/O under a lock every user's request takes.
        let (user_name, gid) =
            passwd_entry(caller.uid).unwrap_or_else(|| (format!("uid{}", caller.uid), caller.gid));
        let mut sessions = lock(&self.shared.sessions);
        if let Some(s) = sessions.by_uid.get(&caller.uid) {
            return s.clone();
        }
        // Ids are opaque cookies, not uids (PLUGIN_ABI.md, "Types"): number them from 1.
        let id = SessionId(sessions.by_id.len() as u32 + 1);
        let session = Arc::new(UserSession {
            info: Session {
                id,
                uid: caller.uid,
                gid,
                user_name,
            },
            op: Mutex::new(()),
            vm: Mutex::new(None),
            distros: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
            busy: AtomicUsize::new(0),
        });
        tracing::info!(session = %id, uid = caller.uid, user = %session.info.user_name, "user session created");
        sessions.by_uid.insert(caller.uid, session.clone());
        sessions.by_id.insert(id, session.clone());
        session
    }

    fn vm_info(&self, s: &UserSession) -> VmInfo {
        let vm = s.vm().filter(|vm| vm.is_alive());
        VmInfo {
            session_id: s.info.id.0,
            user: s.info.user_name.clone(),
            running: vm.is_some(),
            init_pid: vm.map(|vm| vm.init_pid()),
            idle_timeout_secs: self.shared.config.idle_timeout_secs,
        }
    }

    // ---- the user's VM ----

    /// Starts the session's VM unless it runs. The caller holds `s.op`.
    pub(super) fn ensure_vm(&self, s: &UserSession) -> OpResult<Arc<Vm>> {
        if let Some(vm) = s.vm() {
            if vm.is_alive() {
                return Ok(vm);
            }
            tracing::warn!(session = %s.info.id, "the VM died on its own; cleaning up");
            self.stop_vm_locked(s);
        }
        self.check_running()?;
        let sandbox = self.sandbox()?;
        let label = format!("vm:{}", s.info.user_name);
        let ids = self.shared.vm_ids(s.info.uid, s.info.gid)?;
        let vm = Vm::start(sandbox, &label, "plughost-vm", ids, s.info.uid)
            .map(Arc::new)
            .map_err(super::sandbox_error)?;
        *lock(&s.vm) = Some(vm.clone());
        let result =
            self.with_manager(|m| m.on_vm_started(&s.info, &VmSettings::default(), &*self.shared))?;
        if let Err(error) = result {
            // The manager already delivered on_vm_stopping to every plugin (PLUGIN_ABI.md, "Hooks").
            lock(&s.vm).take();
            vm.kill();
            return Err(error.into());
        }
        s.touch();
        Ok(vm)
    }

    /// Stops the session's distributions, then its VM, with their hooks. The caller holds `s.op`.
    pub(super) fn stop_vm_locked(&self, s: &UserSession) -> bool {
        let distros: Vec<Arc<RunningDistro>> = lock(&s.distros).values().cloned().collect();
        for d in distros {
            self.stop_distro_locked(s, &d);
        }
        let Some(vm) = s.vm() else {
            return false;
        };
        let _ = self.with_manager(|m| m.on_vm_stopping(&s.info, &*self.shared));
        lock(&s.vm).take();
        vm.kill();
        true
    }

    pub fn vm_start(&self, caller: Caller) -> OpResult<VmInfo> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        self.ensure_vm(&s)?;
        Ok(self.vm_info(&s))
    }

    pub fn vm_stop(&self, caller: Caller) -> OpResult<String> {
        let s = self.session_for(caller);
        let _op = lock(&s.op);
        if self.stop_vm_locked(&s) {
            Ok("VM stopped".into())
        } else {
            Err(OpError::new(ErrorKind::NotRunning, "the VM is not running"))
        }
    }

    pub fn vm_status(&self, caller: Caller) -> VmInfo {
        let s = self.session_for(caller);
        self.vm_info(&s)
    }

    /// Runs `argv` as the caller in its VM (started on demand) or in one of its running
    /// distributions, with the client's stdio; returns the exit code (`None`: the client left).
    pub fn exec(
        &self,
        caller: Caller,
        distro: Option<&str>,
        argv: &[String],
        stdio: [OwnedFd; 3],
        client: &UnixStream,
    ) -> OpResult<Option<i32>> {
        let _slot = ProcessSlot::take(&self.shared, caller.uid)?;
        let s = self.session_for(caller);
        s.busy.fetch_add(1, Ordering::SeqCst);
        let result = self.exec_in_session(&s, caller, distro, argv, stdio, client);
        s.touch();
        s.busy.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn exec_in_session(
        &self,
        s: &UserSession,
        caller: Caller,
        distro: Option<&str>,
        argv: &[String],
        stdio: [OwnedFd; 3],
        client: &UnixStream,
    ) -> OpResult<Option<i32>> {
        let (vm, inside) = {
            let _op = lock(&s.op);
            let inside = match distro {
                Some(name) => {
                    let entry = self.find_registered(caller.uid, name)?;
                    let running = lock(&s.distros).get(&entry.distribution_id()).cloned();
                    match running {
                        Some(d) => Some(d),
                        None => {
                            return Err(OpError::new(
                                ErrorKind::NotRunning,
                                format!("distribution '{name}' is not running"),
                            ))
                        }
                    }
                }
                None => None,
            };
            (self.ensure_vm(s)?, inside)
        };
        let spec = ExecSpec {
            path: &argv[0],
            argv,
            uid: Some(caller.uid),
            gid: Some(s.info.gid),
            env: None,
        };
        let what = match (distro, &inside) {
            (Some(name), Some(_)) => format!("distribution '{name}'"),
            _ => format!("the VM of {}", s.info.user_name),
        };
        run_client_program(
            &vm,
            inside.as_ref().map(|d| &d.process),
            &spec,
            stdio,
            client,
            &what,
        )
    }
}

/// Runs a client's program with the client's own stdio and waits for it (or for the client to go).
/// A program that cannot start is an error naming why, never an exit code it could have returned.
pub(super) fn run_client_program(
    vm: &Vm,
    inside: Option<&DistroProcess>,
    spec: &ExecSpec<'_>,
    stdio: [OwnedFd; 3],
    client: &UnixStream,
    what: &str,
) -> OpResult<Option<i32>> {
    let mut child = vm
        .spawn_program(inside, spec, stdio, false)
        .map_err(|e| match e {
            ExecError::Stopping => {
                OpError::new(ErrorKind::NotRunning, format!("{what} is stopping"))
            }
            ExecError::Refused { errno, message } => OpError::new(
                if errno == ENOENT {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Invalid
                },
                format!("cannot run {} in {what}: {message}", spec.path),
            ),
            ExecError::Internal(why) => OpError::new(
                ErrorKind::Internal,
                format!("cannot start the program in {what}: {why}"),
            ),
        })?;
    let status = wait_or_hangup(&mut child, client)
        .map_err(|e| OpError::new(ErrorKind::Internal, format!("lost the program: {e}")))?;
    Ok(status.map(exit_code))
}
