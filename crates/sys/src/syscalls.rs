//! Syscall facts shared by the host and the service: the syscalls the host's default seccomp
//! profile forbids, by number and name (the host builds its filter from them; the service names a
//! `Blocked { syscall }` with them). No filter is built here: that is the host's `seccomp.rs`.

/// The syscalls the default profile forbids, with their names for the service's error text.
pub const DENIED: &[(i64, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_personality, "personality"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (SYS_STATMOUNT, "statmount"),
    (SYS_LISTMOUNT, "listmount"),
    (SYS_OPEN_TREE_ATTR, "open_tree_attr"),
];

// Not in the libc crate yet. Numbers from 424 on are the same on every architecture but alpha
// (the unified syscall table); these are x86_64's (arch/x86/entry/syscalls/syscall_64.tbl).
const SYS_STATMOUNT: i64 = 457;
const SYS_LISTMOUNT: i64 = 458;
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// Calls trapped only with some arguments, named for the service's error text.
const DENIED_WITH_ARGS: &[(i64, &str)] = &[(libc::SYS_clone, "clone with CLONE_NEWUSER")];

/// The name of a denied syscall, for error texts.
pub fn name_of(syscall: u32) -> Option<&'static str> {
    DENIED
        .iter()
        .chain(DENIED_WITH_ARGS)
        .find(|(nr, _)| *nr == i64::from(syscall))
        .map(|(_, name)| *name)
}
