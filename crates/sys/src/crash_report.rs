//! The crash report's format, shared by the host (whose fault handler writes it into a memfd the
//! service gave it) and the service (which reads it, as untrusted bytes, after the host died): the
//! signals that carry one and the layout. Writing it is the host's `crash.rs`; reading and
//! unwinding it, the supervisor's `symbolize.rs`.

/// The fault signals whose deaths carry a report. (`SIGSYS` is reported as `Blocked` by the seccomp
/// handler.)
pub const SIGNALS: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

/// The report's layout in the memfd: little-endian `u64` fields at fixed offsets.
pub mod layout {
    /// Size of the memfd (sealed against growing and shrinking by the service).
    pub const SIZE: usize = 32 * 1024;
    /// `b"PHCRASH1"`.
    pub const MAGIC: [u8; 8] = *b"PHCRASH1";
    pub const MAGIC_AT: usize = 0;
    /// [`COMPLETE`] once the handler finished its report.
    pub const STATE_AT: usize = 8;
    pub const COMPLETE: u64 = 0x636f_6d70_6c65_7465;
    pub const SIGNAL_AT: usize = 16;
    pub const CODE_AT: usize = 24;
    /// `si_addr`.
    pub const ADDRESS_AT: usize = 32;
    pub const TID_AT: usize = 40;
    /// 17 registers in DWARF order (x86_64: rax rdx rcx rbx rsi rdi rbp rsp r8..r15, then rip).
    pub const REGS_AT: usize = 48;
    pub const REG_COUNT: usize = 17;
    /// The address the stack copy starts at (the crashing thread's `rsp`) and how many bytes were
    /// copied.
    pub const STACK_START_AT: usize = REGS_AT + REG_COUNT * 8;
    pub const STACK_LEN_AT: usize = STACK_START_AT + 8;
    /// The bytes the handler writes (the modules are written before, at load).
    pub const HEADER_LEN: usize = STACK_LEN_AT + 8;
    /// How many module entries follow.
    pub const MODULE_COUNT_AT: usize = 256;
    pub const MODULES_AT: usize = 264;
    pub const MAX_MODULES: usize = 16;
    /// `start, end` (executable range), `base` (load bias), `flags`, then a NUL-padded path (the
    /// dynamic linker's name; `plugin` for the plugin, `plughost-host` for the executable).
    pub const MODULE_LEN: usize = 128;
    pub const MODULE_NAME_LEN: usize = MODULE_LEN - 32;
    /// `flags` bit: this module is the plugin library.
    pub const MODULE_IS_PLUGIN: u64 = 1;
    pub const STACK_AT: usize = 4096;
    pub const STACK_MAX: usize = SIZE - STACK_AT;
}
