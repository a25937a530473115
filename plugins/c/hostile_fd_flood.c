/*
 * hostile_fd_flood.c: on_vm_started sends the service as many file descriptors as the kernel allows.
 *
 * It opens `$PH_DIR/file` once. First it tries one sendmsg carrying 10 000 copies of that fd in
 * SCM_RIGHTS and logs `ten_thousand errno=<e>` (the kernel refuses more than SCM_MAX_FD = 253 per
 * message: EINVAL, or ENOBUFS when the control buffer exceeds optmem_max). Then it logs
 * `sending fds_per_message=253 messages=40 fd=<fd>` and sends up to 40 messages (10 120 fds in all),
 * each a correct `HookDone { id: 1, status: 0 }` frame with 253 copies attached, the first blocking,
 * the rest MSG_DONTWAIT, stopping at the first error; then it sleeps 10 s and returns 0. The service
 * must refuse the fds (closing every one it received; the kernel drops those that did not fit) and
 * kill the host; none of them may stay open in the service.
 *
 * Witness: with PH_MARKER set, the entry point forks a child named $PH_MARKER that leaves the session,
 * ignores SIGTERM/SIGINT/SIGHUP, closes every fd and pauses forever; it must die with the host.
 *
 * Env: PH_LOG, PH_DIR, PH_MARKER (optional).
 * Tests expect: `loaded`, `ten_thousand errno=<non-zero>`, `sending fds_per_message=253`; the VM start
 * fails with "plugin 'hostile_fd_flood' crashed: protocol violation: sent file descriptors"; no fd
 * of the service refers to `$PH_DIR/file` afterwards; never `slept`.
 */
#include "ph_test.h"
#include "ph_hostile.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#define SCM_MAX 253
#define MESSAGES 40

/* Sends `frame` with `count` copies of `fd`; returns sendmsg's result (errno set on failure). */
static ssize_t send_fds(int channel, int fd, size_t count, int flags)
{
    static const unsigned char frame[] = {'P', 'H', 1, 0, 3, 1, 0, 0};
    size_t space = CMSG_SPACE(count * sizeof(int));
    char *control = calloc(1, space);
    if (control == NULL) {
        errno = ENOMEM;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)frame, .iov_len = sizeof frame};
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control,
        .msg_controllen = space,
    };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(count * sizeof(int));
    int *fds = (int *)(void *)CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; i++)
        fds[i] = fd;
    ssize_t n = sendmsg(channel, &msg, flags | MSG_NOSIGNAL);
    int saved = errno;
    free(control);
    errno = saved;
    return n;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    int channel = ph_find_channel();
    char path[4096];
    snprintf(path, sizeof path, "%s/file", ph_env("PH_DIR", "/nonexistent"));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (channel < 0 || fd < 0) {
        ph_log("no_channel_or_file channel=%d file=%d", channel, fd);
        return -EIO;
    }
    ssize_t n = send_fds(channel, fd, 10000, MSG_DONTWAIT);
    ph_log("ten_thousand errno=%d", n < 0 ? errno : 0);
    ph_log("sending fds_per_message=%d messages=%d fd=%d", SCM_MAX, MESSAGES, channel);
    int sent = 0;
    int error = 0;
    for (; sent < MESSAGES; sent++) {
        if (send_fds(channel, fd, SCM_MAX, sent == 0 ? 0 : MSG_DONTWAIT) < 0) {
            error = errno;
            break;
        }
    }
    /* Usually never written: the service kills the host on the first message. */
    ph_log("sent messages=%d errno=%d", sent, error);
    sleep(10);
    ph_log("slept");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    ph_fork_witness();
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
