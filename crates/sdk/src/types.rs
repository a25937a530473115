//! The owned, safe views of the structs a hook receives (`PLUGIN_ABI.md`, "Types").
//!
//! The trampolines in [`crate::ffi`] copy each C struct into one of these before calling the plugin, so a
//! plugin may keep them past the hook (the C pointers are valid only for the call). A NULL string becomes
//! `""` and invalid UTF-8 is replaced lossily (U+FFFD).

use std::fmt;

/// An opaque cookie per user session (`plughost_session_id`); not a uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

/// A container session's id (`plughost_container_session_id`), numbered apart from [`SessionId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerSessionId(pub u32);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for ContainerSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A distribution's id (`struct plughost_uuid`), bytes in RFC 9562 order; stable across service restarts.
/// Displays as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The user on whose behalf the service acts (`struct plughost_session`). The service runs as root:
/// use `uid`/`gid` here, not `getuid()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub uid: u32,
    pub gid: u32,
    pub user_name: String,
}

/// `struct plughost_vm_settings`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmSettings {
    /// `PLUGHOST_VM_*` bits; unknown bits are kept.
    pub flags: u32,
}

impl VmSettings {
    /// The user's configuration asks for a custom kernel (`PLUGHOST_VM_CUSTOM_KERNEL`).
    pub fn custom_kernel(&self) -> bool {
        self.flags & plughost_abi::PLUGHOST_VM_CUSTOM_KERNEL != 0
    }

    /// The user's configuration asks for a custom kernel command line
    /// (`PLUGHOST_VM_CUSTOM_KERNEL_CMDLINE`).
    pub fn custom_kernel_cmdline(&self) -> bool {
        self.flags & plughost_abi::PLUGHOST_VM_CUSTOM_KERNEL_CMDLINE != 0
    }
}

/// A running distribution (`struct plughost_distribution`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distribution {
    pub id: Uuid,
    pub name: String,
    /// Inode of the distribution's pid namespace.
    pub pid_namespace: u64,
    /// `""` when the distribution has no package.
    pub package: String,
    /// Pid of the distribution's init as seen from the service.
    pub init_pid: u32,
    /// `ID` from the rootfs's `/etc/os-release`, `""` when unknown.
    pub flavor: String,
    /// `VERSION_ID` from the rootfs's `/etc/os-release`, `""` when unknown.
    pub version: String,
}

/// A registered distribution for (un)registration events, when nothing runs
/// (`struct plughost_offline_distribution`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineDistribution {
    pub id: Uuid,
    pub name: String,
    pub package: String,
    pub flavor: String,
    pub version: String,
}

/// A container session (`struct plughost_container_session`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSession {
    pub id: ContainerSessionId,
    pub display_name: String,
    pub application_pid: u32,
    pub uid: u32,
    pub gid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_displays_as_8_4_4_4_12_lowercase_hex() {
        let uuid = Uuid([
            0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17,
            0x40, 0x00,
        ]);
        assert_eq!(uuid.to_string(), "123e4567-e89b-12d3-a456-426614174000");
        assert_eq!(
            Uuid::default().to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn vm_settings_flags_are_read_bit_by_bit() {
        let both = VmSettings { flags: 3 };
        assert!(both.custom_kernel() && both.custom_kernel_cmdline());
        let cmdline = VmSettings { flags: 2 };
        assert!(!cmdline.custom_kernel() && cmdline.custom_kernel_cmdline());
        assert!(!VmSettings::default().custom_kernel());
    }
}
