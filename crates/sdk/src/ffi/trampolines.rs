//! Calls from the service into the plugin: hook arguments copied into owned types, and one
//! `extern "C"` trampoline per hook (invariants 2 and 5 of [`super`]).

use std::ffi::{c_char, CStr};

use plughost_abi::{
    plughost_container_session, plughost_distribution, plughost_hooks_v1,
    plughost_offline_distribution, plughost_session, plughost_status, plughost_vm_settings,
};

use crate::hooks::{self, Hook};
use crate::{
    ContainerSession, ContainerSessionId, Distribution, OfflineDistribution, Session, SessionId,
    Status, Uuid, VmSettings,
};

// Hook arguments (invariant 2)

/// # Safety
/// `s` is NULL or a NUL-terminated string valid for the call.
unsafe fn string(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL, so NUL-terminated and valid for the call (invariant 2).
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

/// Borrows a hook's struct argument; `-EFAULT` when NULL.
///
/// # Safety
/// `p` is NULL or points to a valid `T` for the call.
unsafe fn arg<'a, T>(p: *const T) -> Result<&'a T, Status> {
    // SAFETY: NULL or valid and aligned for the call (invariant 2); the caller uses the reference only
    // within the hook.
    unsafe { p.as_ref() }.ok_or(Status::EFAULT)
}

/// # Safety
/// `p` is NULL or points to a valid `plughost_session` for the call (invariant 2).
unsafe fn session(p: *const plughost_session) -> Result<Session, Status> {
    // SAFETY: our contract; the strings inside are covered by invariant 2 as well.
    unsafe {
        let s = arg(p)?;
        Ok(Session {
            id: SessionId(s.id),
            uid: s.uid,
            gid: s.gid,
            user_name: string(s.user_name),
        })
    }
}

/// # Safety
/// `p` is NULL or points to a valid `plughost_vm_settings` for the call (invariant 2).
unsafe fn vm_settings(p: *const plughost_vm_settings) -> Result<VmSettings, Status> {
    // SAFETY: our contract.
    unsafe { arg(p) }.map(|v| VmSettings { flags: v.flags })
}

/// # Safety
/// `p` is NULL or points to a valid `plughost_distribution` for the call (invariant 2).
unsafe fn distribution(p: *const plughost_distribution) -> Result<Distribution, Status> {
    // SAFETY: our contract; the strings inside are covered by invariant 2 as well.
    unsafe {
        let d = arg(p)?;
        Ok(Distribution {
            id: Uuid(d.id.bytes),
            name: string(d.name),
            pid_namespace: d.pid_namespace,
            package: string(d.package),
            init_pid: d.init_pid,
            flavor: string(d.flavor),
            version: string(d.version),
        })
    }
}

/// # Safety
/// `p` is NULL or points to a valid `plughost_offline_distribution` for the call (invariant 2).
unsafe fn offline_distribution(
    p: *const plughost_offline_distribution,
) -> Result<OfflineDistribution, Status> {
    // SAFETY: our contract; the strings inside are covered by invariant 2 as well.
    unsafe {
        let d = arg(p)?;
        Ok(OfflineDistribution {
            id: Uuid(d.id.bytes),
            name: string(d.name),
            package: string(d.package),
            flavor: string(d.flavor),
            version: string(d.version),
        })
    }
}

/// # Safety
/// `p` is NULL or points to a valid `plughost_container_session` for the call (invariant 2).
unsafe fn container_session(
    p: *const plughost_container_session,
) -> Result<ContainerSession, Status> {
    // SAFETY: our contract; the string inside is covered by invariant 2 as well.
    unsafe {
        let c = arg(p)?;
        Ok(ContainerSession {
            id: ContainerSessionId(c.id),
            display_name: string(c.display_name),
            application_pid: c.application_pid,
            uid: c.uid,
            gid: c.gid,
        })
    }
}

// Trampolines: the service calls these with the arguments of invariant 2.

pub(super) const TRAMPOLINES: plughost_hooks_v1 = plughost_hooks_v1 {
    on_vm_started: Some(on_vm_started),
    on_vm_stopping: Some(on_vm_stopping),
    on_distribution_started: Some(on_distribution_started),
    on_distribution_stopping: Some(on_distribution_stopping),
    on_distribution_registered: Some(on_distribution_registered),
    on_distribution_unregistered: Some(on_distribution_unregistered),
    on_container_session_created: Some(on_container_session_created),
    on_container_session_stopping: Some(on_container_session_stopping),
    on_session_vm_started: Some(on_session_vm_started),
    on_session_vm_stopping: Some(on_session_vm_stopping),
};

unsafe extern "C" fn on_vm_started(
    s: *const plughost_session,
    v: *const plughost_vm_settings,
) -> plughost_status {
    hooks::dispatch(Hook::VmStarted, |plugin| {
        // SAFETY: the service's arguments, valid for this call (invariant 2).
        let (s, v) = unsafe { (session(s)?, vm_settings(v)?) };
        Ok(plugin.on_vm_started(&s, &v))
    })
}

unsafe extern "C" fn on_vm_stopping(s: *const plughost_session) -> plughost_status {
    hooks::dispatch(Hook::VmStopping, |plugin| {
        // SAFETY: the service's argument, valid for this call (invariant 2).
        let s = unsafe { session(s)? };
        Ok(plugin.on_vm_stopping(&s))
    })
}

unsafe extern "C" fn on_distribution_started(
    s: *const plughost_session,
    d: *const plughost_distribution,
) -> plughost_status {
    hooks::dispatch(Hook::DistributionStarted, |plugin| {
        // SAFETY: the service's arguments, valid for this call (invariant 2).
        let (s, d) = unsafe { (session(s)?, distribution(d)?) };
        Ok(plugin.on_distribution_started(&s, &d))
    })
}

unsafe extern "C" fn on_distribution_stopping(
    s: *const plughost_session,
    d: *const plughost_distribution,
) -> plughost_status {
    hooks::dispatch(Hook::DistributionStopping, |plugin| {
        // SAFETY: the service's arguments, valid for this call (invariant 2).
        let (s, d) = unsafe { (session(s)?, distribution(d)?) };
        Ok(plugin.on_distribution_stopping(&s, &d))
    })
}

unsafe extern "C" fn on_distribution_registered(
    s: *const plughost_session,
    d: *const plughost_offline_distribution,
) -> plughost_status {
    hooks::dispatch(Hook::DistributionRegistered, |plugin| {
        // SAFETY: the service's arguments, valid for this call (invariant 2).
        let (s, d) = unsafe { (session(s)?, offline_distribution(d)?) };
        Ok(plugin.on_distribution_registered(&s, &d))
    })
}

unsafe extern "C" fn on_distribution_unregistered(
    s: *const plughost_session,
    d: *const plughost_offline_distribution,
) -> plughost_status {
    hooks::dispatch(Hook::DistributionUnregistered, |plugin| {
        // SAFETY: the service's arguments, valid for this call (invariant 2).
        let (s, d) = unsafe { (session(s)?, offline_distribution(d)?) };
        Ok(plugin.on_distribution_unregistered(&s, &d))
    })
}

unsafe extern "C" fn on_container_session_created(
    c: *const plughost_container_session,
) -> plughost_status {
    hooks::dispatch(Hook::ContainerSessionCreated, |plugin| {
        // SAFETY: the service's argument, valid for this call (invariant 2).
        let c = unsafe { container_session(c)? };
        Ok(plugin.on_container_session_created(&c))
    })
}

unsafe extern "C" fn on_container_session_stopping(
    c: *const plughost_container_session,
) -> plughost_status {
    hooks::dispatch(Hook::ContainerSessionStopping, |plugin| {
        // SAFETY: the service's argument, valid for this call (invariant 2).
        let c = unsafe { container_session(c)? };
        Ok(plugin.on_container_session_stopping(&c))
    })
}

unsafe extern "C" fn on_session_vm_started(
    c: *const plughost_container_session,
) -> plughost_status {
    hooks::dispatch(Hook::SessionVmStarted, |plugin| {
        // SAFETY: the service's argument, valid for this call (invariant 2).
        let c = unsafe { container_session(c)? };
        Ok(plugin.on_session_vm_started(&c))
    })
}

unsafe extern "C" fn on_session_vm_stopping(
    c: *const plughost_container_session,
) -> plughost_status {
    hooks::dispatch(Hook::SessionVmStopping, |plugin| {
        // SAFETY: the service's argument, valid for this call (invariant 2).
        let c = unsafe { container_session(c)? };
        Ok(plugin.on_session_vm_stopping(&c))
    })
}
