//! The waiter: a freestanding static program (`waiter/waiter.c`, ~2 KiB, built by `build.rs`) that
//! the outer host and the namespace init exec once all they do is wait. A Rust process that only
//! waits still keeps the runtime, libc and the touched pages of the 6 MiB host binary resident
//! (~2 MiB each); the waiter keeps a few pages (`crates/host/README.md`, "Processes").
//!
//! The program's bytes are embedded in the host binary and exec'd from a sealed memfd
//! (`fexecve`, which is `execveat(fd, "", AT_EMPTY_PATH)`), rather than installed as a file beside
//! the host:
//! - nothing to install, find or keep in step: it works whatever the install layout (cargo's
//!   `target/`, a package, a copied binary) and is always the version the host was built with;
//! - no path to race: the memfd is sealed (no write, grow or shrink), so not even a process that
//!   could reach it through `/proc` before the exec can change what runs;
//! - nothing on disk for a plugin to look at either: the memfd is close-on-exec and the plugin
//!   process closes its copy before any plugin code runs.
//!
//! The cost is one `memfd_create`, a 2 KiB write and a seal per host start, before the first fork.
//! Where the program is not available (not x86_64 Linux, no C compiler at build time, a kernel
//! that refuses executable memfds: `vm.memfd_noexec=2`) or the exec fails, [`crate::confine`]
//! falls back to its Rust wait loops, which do the same.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{memfd_create, MemfdFlags, SealFlags};
use rustix::io::{Errno, FdFlags};

/// The program, or no bytes when `build.rs` could not build it.
static PROGRAM: &[u8] = include_bytes!(env!("PLUGHOST_WAITER"));
/// Why `build.rs` could not build it (empty when it did).
const UNAVAILABLE: &str = env!("PLUGHOST_WAITER_UNAVAILABLE");
/// Set to `1` in the host's environment, the host waits in Rust as where the waiter is missing: for
/// the tests of that fallback, and for debugging the waiting loops.
pub(crate) const DISABLE_VAR: &str = "PLUGHOST_NO_WAITER";

/// The waiter program in a sealed, close-on-exec memfd, ready to be exec'd (after a fork, by the
/// outer and by the init: both inherit this one copy).
pub(crate) struct Waiter {
    program: OwnedFd,
}

impl Waiter {
    /// Copies the program into a sealed memfd. The error says why there is none, for the log.
    pub(crate) fn load() -> Result<Waiter, String> {
        if !UNAVAILABLE.is_empty() {
            return Err(format!("not built: {UNAVAILABLE}"));
        }
        if PROGRAM.is_empty() {
            return Err("not built".to_owned());
        }
        if std::env::var_os(DISABLE_VAR).is_some_and(|v| v == "1") {
            return Err(format!("disabled by {DISABLE_VAR}=1"));
        }
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        // MFD_EXEC says "executable" explicitly where `vm.memfd_noexec=1` would make it
        // non-executable by default; kernels before 6.3 do not know the flag (EINVAL).
        let program = match memfd_create("plughost-waiter", flags | MemfdFlags::EXEC) {
            Err(Errno::INVAL) => memfd_create("plughost-waiter", flags),
            other => other,
        }
        .map_err(|e| format!("memfd_create: {e}"))?;
        let mut rest = PROGRAM;
        while !rest.is_empty() {
            match rustix::io::write(&program, rest) {
                Ok(0) => return Err("writing the memfd: no progress".to_owned()),
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                Err(Errno::INTR) => {}
                Err(e) => return Err(format!("writing the memfd: {e}")),
            }
        }
        rustix::fs::fcntl_add_seals(
            &program,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(|e| format!("sealing the memfd: {e}"))?;
        Ok(Waiter { program })
    }

    /// The program's fd, for the caller's list of fds to keep until the exec.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// Becomes the outer waiter: checks the parent is still `parent`, reaps `init`, and ends as the
    /// plugin process ended (its status read from `status`) or else as the init ended. `keep` stays
    /// open in the waiter (not named to it); so do fds 0-2, as they do in the Rust outer. Returns
    /// only if the exec failed.
    pub(crate) fn exec_outer(
        &self,
        parent: u32,
        init: u32,
        status: BorrowedFd<'_>,
        keep: BorrowedFd<'_>,
    ) -> std::io::Error {
        let args = [
            "outer".to_owned(),
            parent.to_string(),
            init.to_string(),
            status.as_raw_fd().to_string(),
        ];
        self.exec(&args, &[status, keep])
    }

    /// Becomes the namespace init's waiter: reaps every child, writes `plugin`'s raw wait status to
    /// `status` when it ends, and exits when `alive` reads as closed (the outer is gone). Returns
    /// only if the exec failed.
    pub(crate) fn exec_init(
        &self,
        plugin: i32,
        alive: BorrowedFd<'_>,
        status: BorrowedFd<'_>,
    ) -> std::io::Error {
        let args = [
            "init".to_owned(),
            plugin.to_string(),
            alive.as_raw_fd().to_string(),
            status.as_raw_fd().to_string(),
        ];
        self.exec(&args, &[alive, status])
    }

    /// Execs the program with `args` and an empty environment; `inherit` loses close-on-exec so it
    /// reaches the program (every other fd of ours is close-on-exec or closed by the caller).
    fn exec(&self, args: &[String], inherit: &[BorrowedFd<'_>]) -> std::io::Error {
        for fd in inherit {
            if let Err(e) = rustix::io::fcntl_setfd(fd, FdFlags::empty()) {
                return e.into();
            }
        }
        let mut owned = Vec::with_capacity(args.len() + 1);
        for arg in std::iter::once("plughost-waiter").chain(args.iter().map(String::as_str)) {
            match CString::new(arg) {
                Ok(arg) => owned.push(arg),
                Err(e) => return std::io::Error::other(e),
            }
        }
        let mut argv: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: `argv` and `envp` are NULL-terminated arrays of pointers to NUL-terminated strings
        // (`owned`), all alive across the call; the fd is our open memfd. On success the call does
        // not return; on failure it changes nothing in this process.
        unsafe { libc::fexecve(self.program.as_raw_fd(), argv.as_ptr(), envp.as_ptr()) };
        std::io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI builds on x86_64 Linux with gcc: there, a waiter that silently failed to build would only
    /// show as memory. Say it here.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn the_waiter_is_built_and_loads_into_a_sealed_memfd() {
        assert_eq!(UNAVAILABLE, "", "build.rs could not build the waiter");
        assert_eq!(PROGRAM.get(..4), Some(&b"\x7fELF"[..]));
        assert!(PROGRAM.len() < 16 * 1024, "{} bytes", PROGRAM.len());
        let waiter = match Waiter::load() {
            Ok(waiter) => waiter,
            Err(e) if e.contains("memfd_create") => {
                println!("skipped the memfd checks: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let seals = rustix::fs::fcntl_get_seals(waiter.fd()).expect("F_GET_SEALS");
        assert!(seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SEAL));
        let flags = rustix::io::fcntl_getfd(waiter.fd()).expect("F_GETFD");
        assert!(flags.contains(FdFlags::CLOEXEC));
        let size = rustix::fs::fstat(waiter.fd()).expect("fstat").st_size;
        assert_eq!(usize::try_from(size).ok(), Some(PROGRAM.len()));
    }
}
