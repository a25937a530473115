//! Test plugin: mounts a host folder into the VM and reads a file back through `execute_binary`.
//!
//! - `on_vm_started` mounts `$PH_DIR` read-only at `/mnt/rs`, runs `/bin/cat /mnt/rs/file` in the VM,
//!   reads its output to EOF, and vetoes the VM start with `-EIO` and the message
//!   `cat did not print OK` unless the output is `OK` (a trailing newline is ignored).
//! - `on_vm_stopping` only logs.
//!
//! When `$PH_LOG` is set, it appends one line per event to that file (one `write` each, `O_APPEND`, so
//! lines from several processes do not interleave): `loaded`, `vm_started session=<id> user=<name>`,
//! `read content=<content>`, `vm_stopping session=<id>`.
#![deny(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::PathBuf;

use plughost_sdk::{Api, HookError, HookResult, Plugin, Session, Status, VmSettings};

struct MountExec {
    api: Api,
}

impl Plugin for MountExec {
    fn load(api: Api) -> Result<Self, Status> {
        log("loaded");
        Ok(MountExec { api })
    }

    fn on_vm_started(&self, session: &Session, _settings: &VmSettings) -> HookResult {
        log(&format!(
            "vm_started session={} user={}",
            session.id, session.user_name
        ));
        let dir = std::env::var_os("PH_DIR")
            .map(PathBuf::from)
            .ok_or_else(|| HookError::with_message(Status::EINVAL, "PH_DIR is not set"))?;
        self.api
            .mount_folder(session.id, &dir, "/mnt/rs", true, "rs")
            .map_err(|status| {
                let message = format!("mounting {} at /mnt/rs failed: {status}", dir.display());
                HookError::with_message(status, message)
            })?;
        let mut cat = self
            .api
            .execute_binary(session.id, "/bin/cat", &["/bin/cat", "/mnt/rs/file"])
            .map_err(|status| {
                HookError::with_message(status, format!("running /bin/cat failed: {status}"))
            })?;
        // cat reads its file, not stdin: close our side of its stdin so it cannot wait on it.
        let _ = cat.shutdown(Shutdown::Write);
        let mut output = Vec::new();
        cat.read_to_end(&mut output).map_err(|err| {
            HookError::with_message(Status::from(err), "reading the output of /bin/cat failed")
        })?;
        let output = String::from_utf8_lossy(&output);
        let content = output.trim_end_matches(['\n', '\r']);
        log(&format!("read content={content}"));
        if content != "OK" {
            return Err(HookError::with_message(Status::EIO, "cat did not print OK"));
        }
        Ok(())
    }

    fn on_vm_stopping(&self, session: &Session) -> HookResult {
        log(&format!("vm_stopping session={}", session.id));
        Ok(())
    }
}

plughost_sdk::export_plugin!(MountExec);

/// Appends `line` to `$PH_LOG` in one write; does nothing when `PH_LOG` is unset. Errors are ignored:
/// the log is for the test that reads it, and a missing line is what that test detects.
fn log(line: &str) {
    let Some(path) = std::env::var_os("PH_LOG") else {
        return;
    };
    let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) else {
        return;
    };
    let _ = file.write_all(format!("{line}\n").as_bytes());
}
