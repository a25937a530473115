//! The crash capture: what a host that dies of a fault leaves for the service to read.
//!
//! The service gives the host a small sealed memfd with `Welcome` (`Welcome::crash_report`). Before
//! the plugin's code runs, [`arm`] installs a handler for the fault signals ([`SIGNALS`]) on an
//! alternate signal stack, and after `dlopen` [`note_modules`] writes the loaded modules' address
//! ranges into the memfd (normal context). When a fault signal arrives, the handler writes the
//! signal, the fault address, the registers and a copy of the crashing thread's stack into the
//! memfd, then lets the signal kill the process as before. The service reads the memfd only after
//! the host died of one of those signals, unwinds the stack with the library's own CFI and names the
//! frames (`plughost::symbolize`). Nothing crosses the channel, so a full or dead channel cannot
//! block the handler.
//!
//! # What runs in the handler (async-signal safety)
//! Only: reads of the `siginfo_t` and `ucontext_t` the kernel passed, writes to a local buffer, and
//! three raw syscalls (`pwrite64`, `gettid`, `tgkill`; no libc function that takes a lock or
//! allocates, nothing of `std`). The stack is copied by `pwrite64` *from* the stack's addresses: the
//! kernel reads that memory, so an unmapped or guard page ends the copy with `EFAULT` (or a short
//! write) instead of faulting in the handler; no pointer of the crashing thread is ever dereferenced
//! here. The handler takes no lock and touches only atomics written before plugin code ran.
//!
//! # What still ends the old way
//! The handler is installed with `SA_RESETHAND`: it runs once, and every fault after it (another
//! thread, a fault in the handler, a plugin that smashed the alternate stack) finds the default action
//! and kills the process with that signal, as it did before the handler existed; so does a plugin
//! that installs its own handler or sets `SIG_DFL`. The report is marked complete by its last write,
//! so the service uses only a report the handler finished. The alternate stack is the main thread's
//! (hooks run there); a thread the plugin created runs the handler on its own stack, and a stack
//! overflow there ends as a plain `SIGSEGV`.
//!
//! The layout ([`layout`]) is read by the service as untrusted bytes: the plugin can write the memfd.
#![allow(unsafe_code)]

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

pub use plughost_sys::crash_report::{layout, SIGNALS};

/// The memfd the handler writes (-1: not armed).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Size of the main thread's alternate signal stack.
const ALT_STACK: usize = 64 * 1024;

/// Takes `memfd` for the life of the process, gives the main thread an alternate signal stack and
/// installs the fault handler. Call on the main thread before any plugin code runs.
pub fn arm(memfd: OwnedFd) -> Result<(), String> {
    let len = rustix::fs::fstat(&memfd)
        .map_err(|e| format!("crash report memfd: {e}"))?
        .st_size;
    if usize::try_from(len).ok() != Some(layout::SIZE) {
        return Err(format!("crash report memfd has {len} bytes"));
    }
    write_at(&memfd, layout::MAGIC_AT, &layout::MAGIC)?;
    alternate_stack()?;
    REPORT_FD.store(memfd.into_raw_fd(), Ordering::Release);
    for signal in SIGNALS {
        // SAFETY: installs `on_fault`, whose signature matches SA_SIGINFO and which only does
        // async-signal-safe work (module docs); `action` is fully initialised (zeroed, then set).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigfillset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(format!(
                    "sigaction({signal}): {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(())
}

fn write_at(fd: &OwnedFd, offset: usize, bytes: &[u8]) -> Result<(), String> {
    let written = rustix::io::pwrite(fd, bytes, offset as u64)
        .map_err(|e| format!("crash report memfd: {e}"))?;
    if written != bytes.len() {
        return Err("crash report memfd: short write".into());
    }
    Ok(())
}

/// A fresh alternate stack for this thread, with a guard page below it (a handler overflowing it
/// faults again and gets the default action).
fn alternate_stack() -> Result<(), String> {
    use rustix::mm::{mmap_anonymous, mprotect, MapFlags, MprotectFlags, ProtFlags};
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // SAFETY: a fresh private anonymous mapping, placed by the kernel; it is never unmapped (the
    // stack must outlive every signal), so no Rust reference to it can dangle.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            ALT_STACK + page,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .map_err(|e| format!("alternate signal stack: {e}"))?;
    // SAFETY: the first page of the mapping made above, which nothing else uses.
    unsafe { mprotect(base, page, MprotectFlags::empty()) }
        .map_err(|e| format!("alternate signal stack guard: {e}"))?;
    let stack = libc::stack_t {
        // SAFETY: `page` < the mapping's length.
        ss_sp: unsafe { base.cast::<u8>().add(page) }.cast(),
        ss_flags: 0,
        ss_size: ALT_STACK,
    };
    // SAFETY: `stack` describes memory this function mapped and never unmaps.
    if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaltstack: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes the executable ranges of the loaded modules into the report, marking the one that
/// contains `plugin_code` as the plugin. Normal context, after `dlopen` and before the entry point.
/// Does nothing when the report is not armed (in-process mode).
pub fn note_modules(plugin_code: usize) {
    let fd = REPORT_FD.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    let mut found = Modules {
        plugin_code,
        table: [0; layout::MAX_MODULES * layout::MODULE_LEN],
        count: 0,
    };
    // SAFETY: the callback only reads the `dl_phdr_info` it is given, for the duration of the call,
    // and `data` is `&mut found`, alive across the call.
    unsafe {
        libc::dl_iterate_phdr(Some(one_module), std::ptr::from_mut(&mut found).cast());
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&(found.count as u64).to_le_bytes());
    let len = found.count * layout::MODULE_LEN;
    // SAFETY: `fd` is the memfd `arm` took for the process's lifetime; both buffers are locals.
    unsafe {
        libc::pwrite(
            fd,
            found.table.as_ptr().cast(),
            len,
            layout::MODULES_AT as i64,
        );
        libc::pwrite(fd, count.as_ptr().cast(), 8, layout::MODULE_COUNT_AT as i64);
    }
}

struct Modules {
    plugin_code: usize,
    table: [u8; layout::MAX_MODULES * layout::MODULE_LEN],
    count: usize,
}

unsafe extern "C" fn one_module(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut Modules` given to dl_iterate_phdr; `info` is valid for this call.
    let (found, info) = unsafe { (&mut *data.cast::<Modules>(), &*info) };
    if found.count == layout::MAX_MODULES || info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: glibc gives `dlpi_phnum` program headers at `dlpi_phdr`.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    let (mut start, mut end) = (usize::MAX, 0);
    for h in headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0)
    {
        start = start.min(base.wrapping_add(h.p_vaddr as usize));
        end = end.max(base.wrapping_add((h.p_vaddr + h.p_memsz) as usize));
    }
    if start >= end {
        return 0;
    }
    let name = if info.dlpi_name.is_null() {
        &b""[..]
    } else {
        // SAFETY: a NUL-terminated string owned by the dynamic linker.
        unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    let is_plugin = (start..end).contains(&found.plugin_code);
    let name: &[u8] = if is_plugin {
        b"plugin"
    } else if name.is_empty() {
        b"plughost-host"
    } else {
        name
    };
    let entry = &mut found.table[found.count * layout::MODULE_LEN..][..layout::MODULE_LEN];
    entry[0..8].copy_from_slice(&(start as u64).to_le_bytes());
    entry[8..16].copy_from_slice(&(end as u64).to_le_bytes());
    entry[16..24].copy_from_slice(&(base as u64).to_le_bytes());
    entry[24..32].copy_from_slice(&u64::from(is_plugin).to_le_bytes());
    let n = name.len().min(layout::MODULE_NAME_LEN - 1);
    entry[32..32 + n].copy_from_slice(&name[..n]);
    found.count += 1;
    0
}

/// The fault handler (see the module docs for what it may do).
extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let fd = REPORT_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: the kernel passes a valid siginfo_t and ucontext_t to an SA_SIGINFO handler.
        unsafe { write_report(fd, signal, &*info, context.cast()) };
    }
    // The action is the default again (SA_RESETHAND) and the signal is blocked until we return: the
    // re-raised signal kills the process with the same signal as soon as the handler returns (for a
    // fault, so would the faulting instruction, run again).
    // SAFETY: raw gettid/getpid/tgkill syscalls, async-signal-safe, no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(
            libc::SYS_tgkill,
            libc::syscall(libc::SYS_getpid),
            tid,
            signal,
        );
    }
}

/// # Safety
/// `fd` is the armed memfd; `info` and `context` are the handler's arguments.
unsafe fn write_report(
    fd: i32,
    signal: libc::c_int,
    info: &libc::siginfo_t,
    context: *const libc::ucontext_t,
) {
    use layout::*;
    let mut header = [0u8; HEADER_LEN];
    let mut put = |at: usize, value: u64| header[at..at + 8].copy_from_slice(&value.to_le_bytes());
    put(SIGNAL_AT, signal as u64);
    put(CODE_AT, info.si_code as u64);
    // SAFETY: `si_addr` is the union member the kernel fills for the fault signals; for others it
    // reads the sender's pid/uid, which the service ignores.
    put(ADDRESS_AT, unsafe { info.si_addr() } as u64);
    // SAFETY: raw syscall without arguments.
    put(TID_AT, unsafe { libc::syscall(libc::SYS_gettid) } as u64);
    let regs = registers(context);
    for (i, value) in regs.iter().enumerate() {
        put(REGS_AT + i * 8, *value);
    }
    let rsp = regs[7];
    // A stack overflow leaves `rsp` in the guard page: the copy starts at the first readable page
    // among the next few.
    let mut start = rsp;
    for _ in 0..4 {
        // SAFETY: as below: the kernel reads one byte at `start` (EFAULT where unreadable) into the
        // first byte of the stack copy, which the copy below overwrites.
        let n = unsafe {
            libc::syscall(
                libc::SYS_pwrite64,
                fd,
                start as usize as *const libc::c_void,
                1usize,
                STACK_AT as libc::off_t,
            )
        };
        if n == 1 {
            break;
        }
        start = (start | 4095).wrapping_add(1);
    }
    let mut copied = 0usize;
    while start != 0 && copied < STACK_MAX {
        let at = start.wrapping_add(copied as u64);
        let to_page_end = 4096 - (at % 4096) as usize;
        let chunk = to_page_end.min(STACK_MAX - copied);
        // SAFETY: pwrite64 reads `chunk` bytes at `at` in the kernel, which fails with EFAULT (or
        // writes less) where that memory is not readable; nothing here dereferences it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_pwrite64,
                fd,
                at as usize as *const libc::c_void,
                chunk,
                (STACK_AT + copied) as libc::off_t,
            )
        };
        if n <= 0 {
            break;
        }
        copied += n as usize;
        if (n as usize) < chunk {
            break;
        }
    }
    put(STACK_START_AT, start);
    put(STACK_LEN_AT, copied as u64);
    put(STATE_AT, COMPLETE);
    header[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(&MAGIC);
    // SAFETY: `header` is a local buffer of HEADER_LEN bytes.
    unsafe {
        libc::syscall(
            libc::SYS_pwrite64,
            fd,
            header.as_ptr().cast::<libc::c_void>(),
            HEADER_LEN,
            0 as libc::off_t,
        );
    }
}

/// The interrupted registers in DWARF order; zeros where the architecture is not supported.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn registers(context: *const libc::ucontext_t) -> [u64; layout::REG_COUNT] {
    // SAFETY: `context` is the ucontext_t the kernel passed to the handler.
    let g = unsafe { &(*context).uc_mcontext.gregs };
    let r = |i: libc::c_int| g[i as usize] as u64;
    [
        r(libc::REG_RAX),
        r(libc::REG_RDX),
        r(libc::REG_RCX),
        r(libc::REG_RBX),
        r(libc::REG_RSI),
        r(libc::REG_RDI),
        r(libc::REG_RBP),
        r(libc::REG_RSP),
        r(libc::REG_R8),
        r(libc::REG_R9),
        r(libc::REG_R10),
        r(libc::REG_R11),
        r(libc::REG_R12),
        r(libc::REG_R13),
        r(libc::REG_R14),
        r(libc::REG_R15),
        r(libc::REG_RIP),
    ]
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn registers(_context: *const libc::ucontext_t) -> [u64; layout::REG_COUNT] {
    [0; layout::REG_COUNT]
}
