/*
 * plughost's waiter: what the outer host process and the namespace init exec once they only wait
 * (crates/host/README.md, "Processes"; crates/sys/src/waiter.rs runs it). A full Rust process that
 * only waits keeps ~2 MiB resident (the runtime, libc, the 6 MiB host binary's touched pages); this
 * keeps a few pages.
 *
 * Freestanding: x86_64 Linux raw syscalls, no libc, no allocation, no signal handlers. Built by
 * crates/sys/build.rs with `-nostdlib -static -ffreestanding -fno-stack-protector -O2`.
 *
 *   plughost-waiter outer PARENT_PID INIT_PID STATUS_FD
 *     The outer host: waits for the namespace init (its only child), then ends the way the plugin
 *     process ended (its wait status, 4 bytes read from STATUS_FD), or, if the init reported
 *     nothing, the way the init ended. Same exit code, or the same signal re-raised with the default
 *     action, so the service's pidfd classifies the plugin's death.
 *   plughost-waiter init PLUGIN_PID ALIVE_FD STATUS_FD
 *     Pid 1 of the host's pid namespace: reaps every child; when PLUGIN_PID ends, writes its raw wait
 *     status to STATUS_FD and exits 0; exits 0 as soon as ALIVE_FD (the read end of a pipe whose
 *     write end only the outer holds) reads as closed.
 *
 * Both mirror crates/sys/src/confine.rs (`outer`, `namespace_init`, `mirror_exit`), the fallback
 * when this program cannot be built or exec'd: keep the two in step.
 */

typedef unsigned long u64;
typedef long i64;

#define SYS_read 0
#define SYS_write 1
#define SYS_poll 7
#define SYS_rt_sigaction 13
#define SYS_rt_sigprocmask 14
#define SYS_getpid 39
#define SYS_wait4 61
#define SYS_kill 62
#define SYS_getppid 110
#define SYS_prctl 157
#define SYS_exit_group 231
#define SYS_signalfd4 289
#define SYS_prlimit64 302

#define EINTR 4
#define SIGKILL 9
#define SIGCHLD 17
#define SIG_BLOCK 0
#define SIG_UNBLOCK 1
#define WNOHANG 1
#define POLLIN 1
#define PR_SET_PDEATHSIG 1
#define PR_SET_NAME 15
#define RLIMIT_CORE 4
#define SFD_NONBLOCK 04000
#define SFD_CLOEXEC 02000000

/* Exit code of a set-up failure, as the host's EXIT_SETUP. */
#define EXIT_SETUP 111

static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f)
{
    i64 ret;
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    register i64 r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#define sys1(n, a) sys6(n, (i64)(a), 0, 0, 0, 0, 0)
#define sys2(n, a, b) sys6(n, (i64)(a), (i64)(b), 0, 0, 0, 0)
#define sys3(n, a, b, c) sys6(n, (i64)(a), (i64)(b), (i64)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) sys6(n, (i64)(a), (i64)(b), (i64)(c), (i64)(d), 0, 0)

static __attribute__((noreturn)) void exit_now(int code)
{
    for (;;)
        sys1(SYS_exit_group, code);
}

/* A decimal argument; -1 when absent or not a plain number. */
static i64 number(const char *s)
{
    i64 value = 0;
    if (!s || !*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || value > 0x7fffffff / 10)
            return -1;
        value = value * 10 + (*s - '0');
    }
    return value > 0x7fffffff ? -1 : value;
}

static int same(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

struct pollfd {
    int fd;
    short events;
    short revents;
};

struct kernel_sigaction {
    u64 handler;
    u64 flags;
    u64 restorer;
    u64 mask;
};

struct rlimit {
    u64 cur;
    u64 max;
};

/*
 * The parent-death signal survives this exec (the kernel clears it only when an exec changes
 * credentials or adds capabilities, and this program has no set-id bits or file capabilities; tried
 * here: PR_GET_PDEATHSIG says SIGKILL after execveat of a sealed memfd). Arming it again costs one
 * syscall and keeps the bond whatever the exec rules become; the check after it covers a parent that
 * died before (then the signal would never come).
 */
static void rearm_parent_death_signal(void)
{
    sys2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
}

/* Ends this process as a process with wait status `status` ended (confine.rs, `mirror_exit`). */
static __attribute__((noreturn)) void mirror(int status)
{
    int signal = status & 0x7f;
    if (signal == 0)
        exit_now((status >> 8) & 0xff);
    /* No core of the waiter: only the plugin process's core is worth writing. Keeps the hard limit. */
    struct rlimit none;
    if (sys4(SYS_prlimit64, 0, RLIMIT_CORE, 0, &none) == 0) {
        none.cur = 0;
        sys4(SYS_prlimit64, 0, RLIMIT_CORE, &none, 0);
    }
    struct kernel_sigaction dfl = {0, 0, 0, 0};
    sys4(SYS_rt_sigaction, signal, &dfl, 0, sizeof(u64));
    u64 set = 1UL << (signal - 1);
    sys4(SYS_rt_sigprocmask, SIG_UNBLOCK, &set, 0, sizeof set);
    sys2(SYS_kill, sys1(SYS_getpid, 0), signal);
    exit_now(128 + signal);
}

static __attribute__((noreturn)) void outer(i64 parent, i64 init, i64 status_fd)
{
    rearm_parent_death_signal();
    if (sys1(SYS_getppid, 0) != parent)
        /* What the parent-death signal would have done. */
        sys2(SYS_kill, sys1(SYS_getpid, 0), SIGKILL);
    int init_status = 0;
    i64 reaped;
    do
        reaped = sys4(SYS_wait4, init, &init_status, 0, 0);
    while (reaped == -EINTR);
    int plugin_status = 0;
    i64 got;
    do
        got = sys3(SYS_read, status_fd, &plugin_status, 4);
    while (got == -EINTR);
    if (got == 4)
        mirror(plugin_status);
    if (reaped == init)
        mirror(init_status);
    exit_now(EXIT_SETUP);
}

static __attribute__((noreturn)) void init(i64 plugin, i64 alive_fd, i64 status_fd)
{
    struct pollfd fds[2] = {{(int)alive_fd, POLLIN, 0}, {-1, POLLIN, 0}};
    rearm_parent_death_signal();
    /* The outer's end of the pipe is already closed: it is gone (confine.rs exits 0 there too; a
     * SIGKILL sent to itself would not reach a namespace's init). */
    if (sys3(SYS_poll, fds, 1, 0) != 0)
        exit_now(0);
    /* SIGCHLD through a signalfd (blocked as a signal): no wake-up can slip between a reap and the
     * wait. A child that ended before this is reaped by the first round below. */
    u64 children = 1UL << (SIGCHLD - 1);
    sys4(SYS_rt_sigprocmask, SIG_BLOCK, &children, 0, sizeof children);
    i64 sfd = sys4(SYS_signalfd4, -1, &children, sizeof children, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        exit_now(EXIT_SETUP);
    fds[1].fd = (int)sfd;
    for (;;) {
        for (;;) {
            int status = 0;
            i64 pid = sys4(SYS_wait4, -1, &status, WNOHANG, 0);
            if (pid == plugin) {
                sys3(SYS_write, status_fd, &status, 4);
                exit_now(0);
            }
            if (pid <= 0)
                break;
        }
        fds[0].revents = 0;
        fds[1].revents = 0;
        if (sys3(SYS_poll, fds, 2, -1) > 0) {
            if (fds[0].revents)
                exit_now(0);
            char info[128];
            while (sys3(SYS_read, sfd, info, sizeof info) > 0) {
            }
        }
    }
}

__attribute__((used)) __attribute__((noreturn)) void waiter_main(i64 *stack)
{
    i64 argc = stack[0];
    char **argv = (char **)(stack + 1);
    if (argc == 5 && same(argv[1], "outer")) {
        i64 parent = number(argv[2]), child = number(argv[3]), status = number(argv[4]);
        if (parent > 0 && child > 0 && status >= 0) {
            sys2(SYS_prctl, PR_SET_NAME, "plughost-outer");
            outer(parent, child, status);
        }
    }
    if (argc == 5 && same(argv[1], "init")) {
        i64 plugin = number(argv[2]), alive = number(argv[3]), status = number(argv[4]);
        if (plugin > 0 && alive >= 0 && status >= 0) {
            sys2(SYS_prctl, PR_SET_NAME, "plughost-init");
            init(plugin, alive, status);
        }
    }
    exit_now(EXIT_SETUP);
}

/* The kernel enters here with argc at (%rsp); the call needs a 16-byte-aligned stack. */
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call waiter_main\n"
        "  hlt\n");
