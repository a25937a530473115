//! The trait a plugin implements (`PLUGIN_ABI.md`, "Hooks").

use crate::{
    Api, ContainerSession, Distribution, HookResult, OfflineDistribution, Session, Status,
    VmSettings,
};

/// A plugin: constructed once by [`export_plugin!`](crate::export_plugin)'s entry point, then called
/// for each hook, possibly from several service threads at once (hence `Sync`; keep mutable state
/// behind a lock).
///
/// Every hook defaults to `Ok(())`. Only the three veto hooks can stop an operation; an error from the
/// others is logged by the service. A panic in any method is caught by the SDK and returned as `-EIO`.
pub trait Plugin: Send + Sync + 'static {
    /// Builds the plugin when the service loads it. `api` is valid for the plugin's whole lifetime; keep
    /// it to call the service later. An `Err` fails the load with that status (`0` becomes `-EIO`).
    fn load(api: Api) -> Result<Self, Status>
    where
        Self: Sized;

    /// The session's VM has started. May veto: the start fails and every plugin then gets
    /// [`on_vm_stopping`](Plugin::on_vm_stopping).
    fn on_vm_started(&self, session: &Session, settings: &VmSettings) -> HookResult {
        let _ = (session, settings);
        Ok(())
    }

    /// The session's VM is stopping.
    fn on_vm_stopping(&self, session: &Session) -> HookResult {
        let _ = session;
        Ok(())
    }

    /// A distribution has started. May veto: the start fails and that distribution gets no
    /// [`on_distribution_stopping`](Plugin::on_distribution_stopping).
    fn on_distribution_started(&self, session: &Session, distro: &Distribution) -> HookResult {
        let _ = (session, distro);
        Ok(())
    }

    /// A distribution is stopping.
    fn on_distribution_stopping(&self, session: &Session, distro: &Distribution) -> HookResult {
        let _ = (session, distro);
        Ok(())
    }

    /// A distribution was registered.
    fn on_distribution_registered(
        &self,
        session: &Session,
        distro: &OfflineDistribution,
    ) -> HookResult {
        let _ = (session, distro);
        Ok(())
    }

    /// A distribution was unregistered.
    fn on_distribution_unregistered(
        &self,
        session: &Session,
        distro: &OfflineDistribution,
    ) -> HookResult {
        let _ = (session, distro);
        Ok(())
    }

    /// A container session is being created. May veto: the session is not created, and its
    /// [`on_container_session_stopping`](Plugin::on_container_session_stopping) is still delivered.
    fn on_container_session_created(&self, cs: &ContainerSession) -> HookResult {
        let _ = cs;
        Ok(())
    }

    /// A container session is stopping.
    fn on_container_session_stopping(&self, cs: &ContainerSession) -> HookResult {
        let _ = cs;
        Ok(())
    }

    /// The container session's VM was (re)created; fires each time.
    fn on_session_vm_started(&self, cs: &ContainerSession) -> HookResult {
        let _ = cs;
        Ok(())
    }

    /// The container session's VM is stopping, exactly once per
    /// [`on_session_vm_started`](Plugin::on_session_vm_started). The session VM still serves API calls
    /// during this hook, from any plugin thread.
    fn on_session_vm_stopping(&self, cs: &ContainerSession) -> HookResult {
        let _ = cs;
        Ok(())
    }
}
