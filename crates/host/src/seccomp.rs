//! The host's default seccomp filter: syscalls a plugin never needs (kernel, mount, namespace,
//! tracing and key management calls, io_uring, file handles, mount listing) trap with `SIGSYS`;
//! `clone` trap only with `CLONE_NEWUSER` (an argument filter: threads and `fork` stay allowed);
//! `clone3` fails with `ENOSYS` (its flags are in memory, which seccomp cannot read; libc then
//! falls back to `clone`, which the argument filter sees); everything else is allowed.
//!
//! A trapped call never runs. The host's `SIGSYS` handler reports it to the service as one
//! `HostMsg::Blocked { syscall }` frame, hand-encoded (no allocation in a signal handler), and
//! ends the process with `_exit`. The plugin cannot take the handler over: `rt_sigaction(SIGSYS,
//! ...)` is itself trapped; if it blocks `SIGSYS`, the kernel forces the default action (death by
//! `SIGSYS`), which the service reports too.
//!
//! Safety invariants of this module: the handler only reads the `siginfo_t` the kernel gave it and
//! calls async-signal-safe syscalls (`send`, `_exit`, and the ring's futex wake or eventfd write)
//! on a fd and a ring stored before they are used.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use plughost_sys::syscalls::DENIED;
use plughost_sys::Ring;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The channel fd the handler reports on (-1: none).
static CHANNEL: AtomicI32 = AtomicI32::new(-1);
/// The call ring the handler announces its frame on (null: none yet).
static RING: AtomicPtr<Ring> = AtomicPtr::new(std::ptr::null_mut());

/// Lets the handler announce its frame on `ring` (the host's, which lives until the process ends),
/// so that a dispatcher waiting on the ring reads it at once.
pub fn report_on_ring(ring: &'static Ring) {
    RING.store(std::ptr::from_ref(ring).cast_mut(), Ordering::Release);
}

/// Offset of `si_syscall` in `siginfo_t` for `SIGSYS` on 64-bit Linux: `si_signo, si_errno,
/// si_code` (3 × int) + padding to 16, then `_sigsys { void *_call_addr; int _syscall; ... }`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for SIGSYS from seccomp
    // `si_syscall` is at SI_SYSCALL_OFFSET (see above) and is an int.
    let syscall = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let mut frame = [0u8; 16];
    frame[..4].copy_from_slice(&[b'P', b'H', plughost_wire::PROTOCOL_VERSION, 0]);
    frame[4] = 5; // HostMsg::Blocked (see crates/wire: blocked_frame_matches_the_hand_encoding...)
    let mut len = 5;
    let mut value = syscall.unsigned_abs();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            frame[len] = byte;
            len += 1;
            break;
        }
        frame[len] = byte | 0x80;
        len += 1;
    }
    let fd = CHANNEL.load(Ordering::Relaxed);
    // SAFETY: send and _exit are async-signal-safe; `frame` is a valid local buffer of `len` bytes.
    unsafe {
        if fd >= 0 {
            libc::send(fd, frame.as_ptr().cast(), len, libc::MSG_NOSIGNAL);
        }
        // Atomics, a futex wake and an eventfd write: async-signal-safe. The pointer is null or
        // came from a `&'static Ring` (report_on_ring).
        if let Some(ring) = RING.load(Ordering::Acquire).as_ref() {
            ring.announce_socket_frame();
        }
        libc::_exit(128 + libc::SIGSYS);
    }
}

fn filter() -> Result<BpfProgram, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e}"))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
    let sigsys = u64::try_from(libc::SIGSYS).unwrap_or(31);
    let condition = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, sigsys)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| format!("seccomp rule: {e}"))?;
    rules.insert(libc::SYS_rt_sigaction, vec![condition]);
    // A new user namespace would give the plugin every capability inside it (and with them the
    // mount, namespace and kernel surfaces this filter otherwise keeps shut).
    let new_user = libc::CLONE_NEWUSER as u64;
    let clone_new_user = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(new_user),
        new_user,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| format!("seccomp rule: {e}"))?;
    rules.insert(libc::SYS_clone, vec![clone_new_user]);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Trap, arch)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e| format!("seccomp program: {e}"))
}

/// `clone3` fails with `ENOSYS`, as on a kernel without it: glibc and musl then use `clone`.
fn clone3_filter() -> Result<BpfProgram, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e}"))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, Vec::new())].into();
    let errno = u32::try_from(libc::ENOSYS).unwrap_or(38);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e| format!("seccomp program: {e}"))
}

/// Installs the `SIGSYS` reporter for `channel`, then the filter (for this thread and every thread
/// created after; call it while single-threaded). Needs `no_new_privs` (or `CAP_SYS_ADMIN`).
pub fn install(channel: std::os::fd::RawFd) -> Result<(), String> {
    let program = filter()?;
    let clone3 = clone3_filter()?;
    CHANNEL.store(channel, Ordering::Relaxed);
    // SAFETY: installing a handler with SA_SIGINFO; `on_sigsys` has the matching signature and only
    // does async-signal-safe work (module invariants).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "sigaction(SIGSYS): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    seccompiler::apply_filter(&clone3).map_err(|e| format!("seccomp (clone3): {e}"))?;
    seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))
}
