//! Container sessions: creation (tied to an application whose exit stops it), the session VM
//! started on demand with the plugins' mounts re-applied, a client's program run in it, and stop.
//! What a plugin does in a container session (mounts, processes) is in `plugin_api.rs`.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use plughost::{ContainerSession, ContainerSessionId};
use plughost_service::ErrorKind;

use super::sessions::run_client_program;
use super::{limit_reached, lock, CSession, Caller, Daemon, OpError, OpResult, ProcessSlot, EIO};
use crate::app_watch::App;
use crate::userfs::{open_path_as, UserCred};
use crate::vm::{ExecSpec, Vm};

impl Daemon {
    fn find_csession(&self, caller: Caller, name: &str) -> OpResult<Arc<CSession>> {
        lock(&self.shared.csessions)
            .by_id
            .values()
            .find(|c| c.owner == caller.uid && c.info.display_name == name)
            .cloned()
            .ok_or_else(|| {
                OpError::new(
                    ErrorKind::NotFound,
                    format!("no container session named '{name}'"),
                )
            })
    }

    pub fn csession_create(
        &self,
        caller: Caller,
        name: &str,
        application_pid: Option<u32>,
    ) -> OpResult<(ContainerSessionId, String)> {
        self.check_running()?;
        // No application named (a client with no process of the caller's own above it, as under
        // `sudo -u`): the session is not tied to one and lives until `csession stop`.
        let app = application_pid
            .map(|pid| App::open(pid, caller.uid))
            .transpose()
            .map_err(|e| OpError::new(ErrorKind::Invalid, format!("bad application: {e}")))?;
        let s = self.session_for(caller);
        let cs = {
            let mut all = lock(&self.shared.csessions);
            if all
                .by_id
                .values()
                .any(|c| c.owner == caller.uid && c.info.display_name == name)
            {
                return Err(OpError::new(
                    ErrorKind::AlreadyExists,
                    format!("a container session named '{name}' exists"),
                ));
            }
            let limit = self.shared.config.limits.container_sessions;
            let count = all.by_id.values().filter(|c| c.owner == caller.uid).count();
            if caller.uid != 0 && count >= limit {
                return Err(limit_reached(format!(
                    "uid {} has {count} container sessions: the limit is {limit} (stop one first)",
                    caller.uid
                )));
            }
            let id = ContainerSessionId(all.next);
            all.next += 1;
            let cs = Arc::new(CSession {
                info: ContainerSession {
                    id,
                    display_name: name.to_owned(),
                    application_pid: app.as_ref().map_or(caller.pid, App::pid),
                    uid: caller.uid,
                    gid: s.info.gid,
                },
                owner: caller.uid,
                op: Mutex::new(()),
                vm: Mutex::new(None),
                mounts: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
            });
            // Published before the hook: the plugin may already mount folders for it.
            all.by_id.insert(id, cs.clone());
            cs
        };
        let _op = lock(&cs.op);
        let result =
            self.with_manager(|m| m.on_container_session_created(&cs.info, &*self.shared))?;
        if let Err(error) = result {
            // The manager delivered on_container_session_stopping (PLUGIN_ABI.md, "Hooks").
            cs.stopping.store(true, Ordering::SeqCst);
            lock(&self.shared.csessions).by_id.remove(&cs.info.id);
            return Err(error.into());
        }
        if let Some(app) = app {
            if let Err(e) = self.apps.watch(cs.info.id.0, app) {
                // Without a watch the session would outlive its application: refuse it.
                self.stop_csession_locked(&cs);
                return Err(OpError::new(ErrorKind::Internal, e.to_string()));
            }
        }
        tracing::info!(
            csession = %cs.info.id,
            name,
            uid = caller.uid,
            "container session created"
        );
        Ok((cs.info.id, name.to_owned()))
    }

    /// Starts the session VM unless it runs. The caller holds `cs.op`.
    fn ensure_session_vm(&self, cs: &CSession) -> OpResult<Arc<Vm>> {
        if let Some(vm) = lock(&cs.vm).clone() {
            if vm.is_alive() {
                return Ok(vm);
            }
            self.stop_session_vm_locked(cs);
        }
        self.check_running()?;
        let sandbox = self.sandbox()?;
        let label = format!("session-vm:{}#{}", cs.info.display_name, cs.info.id);
        let ids = self.shared.vm_ids(cs.info.uid, cs.info.gid)?;
        let vm = Vm::start(sandbox, &label, "plughost-session-vm", ids, cs.info.uid)
            .map(Arc::new)
            .map_err(super::sandbox_error)?;
        let user = UserCred::of(cs.info.uid, cs.info.gid);
        for m in lock(&cs.mounts).clone() {
            let mounted = open_path_as(&user, &m.host)
                .map_err(|e| e.raw_os_error().unwrap_or(EIO))
                .and_then(|folder| vm.mount(&folder, &m.mountpoint, m.read_only));
            if let Err(errno) = mounted {
                tracing::warn!(csession = %cs.info.id, mountpoint = %m.mountpoint,
                    "cannot re-apply a mount: errno {errno}");
            }
        }
        *lock(&cs.vm) = Some(vm.clone());
        self.with_manager(|m| m.on_session_vm_started(&cs.info, &*self.shared))?;
        Ok(vm)
    }

    fn stop_session_vm_locked(&self, cs: &CSession) {
        let Some(vm) = lock(&cs.vm).clone() else {
            return;
        };
        // The session VM still serves calls during the hook (PLUGIN_ABI.md, "Hooks").
        let _ = self.with_manager(|m| m.on_session_vm_stopping(&cs.info, &*self.shared));
        lock(&cs.vm).take();
        vm.kill();
    }

    pub fn csession_run(
        &self,
        caller: Caller,
        name: &str,
        argv: &[String],
        stdio: [OwnedFd; 3],
        client: &UnixStream,
    ) -> OpResult<Option<i32>> {
        let _slot = ProcessSlot::take(&self.shared, caller.uid)?;
        let cs = self.find_csession(caller, name)?;
        let vm = {
            let _op = lock(&cs.op);
            if cs.stopping.load(Ordering::SeqCst) {
                return Err(OpError::new(
                    ErrorKind::NotRunning,
                    format!("container session '{name}' is stopping"),
                ));
            }
            self.ensure_session_vm(&cs)?
        };
        let spec = ExecSpec {
            path: &argv[0],
            argv,
            uid: Some(cs.info.uid),
            gid: Some(cs.info.gid),
            env: None,
        };
        let what = format!("the session VM of container session '{name}'");
        run_client_program(&vm, None, &spec, stdio, client, &what)
    }

    pub(super) fn stop_csession_locked(&self, cs: &CSession) {
        // Marked stopping only once on_session_vm_stopping returned: the session VM serves calls,
        // from any plugin thread, until then (PLUGIN_ABI.md, "Hooks"). Client operations cannot
        // slip in meanwhile: they wait for `cs.op`, which the caller holds.
        self.stop_session_vm_locked(cs);
        cs.stopping.store(true, Ordering::SeqCst);
        let _ = self.with_manager(|m| m.on_container_session_stopping(&cs.info, &*self.shared));
        lock(&self.shared.csessions).by_id.remove(&cs.info.id);
        self.apps.unwatch(cs.info.id.0);
        tracing::info!(csession = %cs.info.id, "container session stopped");
    }

    /// The application of container session `id` exited: stop the session with its hooks, as
    /// `csession stop` would (unless it stopped already).
    pub(super) fn application_exited(&self, id: ContainerSessionId, pid: u32) {
        let Some(cs) = lock(&self.shared.csessions).by_id.get(&id).cloned() else {
            return;
        };
        let _op = lock(&cs.op);
        if cs.stopping.load(Ordering::SeqCst) {
            return;
        }
        tracing::info!(
            csession = %id,
            pid,
            "the application exited: stopping its container session"
        );
        self.stop_csession_locked(&cs);
    }

    pub fn csession_stop(&self, caller: Caller, name: &str) -> OpResult<String> {
        let cs = self.find_csession(caller, name)?;
        let _op = lock(&cs.op);
        if cs.stopping.load(Ordering::SeqCst) {
            return Err(OpError::new(
                ErrorKind::NotRunning,
                format!("container session '{name}' is stopping"),
            ));
        }
        self.stop_csession_locked(&cs);
        Ok(format!("container session '{name}' stopped"))
    }
}
