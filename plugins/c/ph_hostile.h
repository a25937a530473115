/*
 * ph_hostile.h — what the hostile test plugins share: finding the host's channel and leaving a
 * witness process behind. Static inline helpers only; include after ph_test.h.
 */
#ifndef PH_HOSTILE_H
#define PH_HOSTILE_H

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ph_test.h"

/* The host's channel to the service: its lowest-numbered SOCK_SEQPACKET socket (-1 if none is
 * found). The call ring's fd lane is a SOCK_SEQPACKET socket too, but it comes with Welcome, after
 * the channel already had its fd, so it has a higher number. */
static inline int ph_find_channel(void)
{
    for (int fd = 0; fd < 1024; fd++) {
        int type = 0;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET)
            return fd;
    }
    return -1;
}

/* Forks a witness named $PH_MARKER (when set) that leaves the plugin's session, ignores SIGTERM,
 * SIGINT and SIGHUP, closes every fd and waits forever: the tests check it dies with the host. */
static inline void ph_fork_witness(void)
{
    const char *marker = getenv("PH_MARKER");
    if (marker == NULL || marker[0] == '\0')
        return;
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        prctl(PR_SET_NAME, (unsigned long)marker, 0, 0, 0);
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        for (int fd = 0; fd < 1024; fd++)
            close(fd);
        for (;;)
            pause();
    }
    ph_log("witness pid=%d", (int)pid);
}

#endif
