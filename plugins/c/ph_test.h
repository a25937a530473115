/*
 * ph_test.h: tiny helpers shared by the C test plugins (static inline only, no link-time symbols).
 *
 * Include it FIRST in a plugin (it defines _GNU_SOURCE before any system header).
 *
 *   ph_log(fmt, ...)         appends ONE line (formatted text + '\n') to the file named by $PH_LOG, when set;
 *                            one open(O_APPEND) + one write() + close per line, so lines written concurrently by
 *                            threads or processes never interleave. Preserves errno. Lines are capped at 4 KiB.
 *   ph_read_all(fd, buf, cap) reads until EOF (retrying EINTR), NUL-terminates; returns the length or -1.
 *                            Stops storing (and returns) once cap-1 bytes are held.
 *   ph_uuid_hex(uuid, out)   32 lowercase hex digits + NUL.
 *   ph_env(name, fallback)   getenv() or the fallback when unset or empty.
 *   ph_tok(s, buf, cap)      a log-safe token: "-" for NULL or "", any byte <= ' ' or DEL replaced by '_'.
 *
 * Log line format used by every plugin: `event key=value key=value` (values never contain spaces).
 */
#ifndef PH_TEST_H
#define PH_TEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <plughost/plugin_api.h>

static inline void ph_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline void ph_log(const char *fmt, ...)
{
    const char *path = getenv("PH_LOG");
    if (path == NULL || path[0] == '\0')
        return;

    int saved_errno = errno;
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) {
        errno = saved_errno;
        return;
    }
    size_t len = (size_t)n < sizeof line - 2 ? (size_t)n : sizeof line - 2;
    line[len++] = '\n';

    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w;
        do {
            w = write(fd, line, len);
        } while (w < 0 && errno == EINTR);
        close(fd);
    }
    errno = saved_errno;
}

static inline ssize_t ph_read_all(int fd, char *buf, size_t cap)
{
    if (buf == NULL || cap == 0)
        return -1;
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            buf[len] = '\0';
            return -1;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    return (ssize_t)len;
}

static inline void ph_uuid_hex(const struct plughost_uuid *uuid, char out[33])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = digits[uuid->bytes[i] >> 4];
        out[2 * i + 1] = digits[uuid->bytes[i] & 0x0f];
    }
    out[32] = '\0';
}

static inline const char *ph_env(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return (value != NULL && value[0] != '\0') ? value : fallback;
}

static inline const char *ph_tok(const char *s, char *buf, size_t cap)
{
    if (buf == NULL || cap < 2)
        return "-";
    if (s == NULL || s[0] == '\0') {
        buf[0] = '-';
        buf[1] = '\0';
        return buf;
    }
    size_t i = 0;
    for (; s[i] != '\0' && i + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c <= ' ' || c == 0x7f) ? '_' : (char)c;
    }
    buf[i] = '\0';
    return buf;
}

#endif /* PH_TEST_H */
