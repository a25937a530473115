/*
 * vm_attacker.c: what a plugin can make a VM do, driven by files in $PH_DIR (read by the plugin, so each
 * test writes its own attack without a new plugin):
 *
 *   $PH_DIR/share         lines "HOST_PATH VM_PATH": on_vm_started first calls mount_folder(HOST_PATH,
 *                          VM_PATH, read-write) for each, logging `share status=` each time
 *   $PH_DIR/vm_script     a shell script: on_vm_started then runs `/bin/sh -c SCRIPT` with execute_binary
 *   $PH_DIR/distro_prog   a program path (default /bin/sh) and
 *   $PH_DIR/distro_script a script: on_distribution_started runs `PROG -c SCRIPT` with
 *                          execute_binary_in_distribution
 *
 * Every hook returns 0 (the attack never vetoes). Tests expect (in $PH_LOG):
 *   loaded
 *   share status=<s>
 *   vm_exec status=<s> out=<output, whitespace as _>
 *   distro_exec status=<s> out=<output, whitespace as _>
 */
#include "ph_test.h"

#include <fcntl.h>

static const struct plughost_api_v1 *api;

/* The content of $PH_DIR/name without a trailing newline, or NULL. */
static char *read_setting(const char *name, char *buf, size_t cap)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", ph_env("PH_DIR", "/nonexistent"), name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    ssize_t n = ph_read_all(fd, buf, cap);
    close(fd);
    if (n < 0)
        return NULL;
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    return buf;
}

static void run(const char *event, plughost_status s, int fd)
{
    static char out[16384];
    static char tok[16384];
    out[0] = '\0';
    if (s == PLUGHOST_OK) {
        if (ph_read_all(fd, out, sizeof out) < 0)
            out[0] = '\0';
        close(fd);
    }
    ph_log("%s status=%d out=%s", event, s, ph_tok(out, tok, sizeof tok));
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    char share[8192];
    if (read_setting("share", share, sizeof share) != NULL) {
        char *save = NULL;
        for (char *line = strtok_r(share, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
            char *space = strchr(line, ' ');
            plughost_status s = -EINVAL;
            if (space != NULL) {
                *space = '\0';
                s = api->mount_folder(session->id, line, space + 1, false, "attack");
            }
            ph_log("share status=%d", s);
        }
    }
    static char script[16384];
    if (read_setting("vm_script", script, sizeof script) != NULL) {
        const char *const argv[] = {"sh", "-c", script, NULL};
        int fd = -1;
        plughost_status s = api->execute_binary(session->id, "/bin/sh", argv, &fd);
        run("vm_exec", s, fd);
    }
    return PLUGHOST_OK;
}

static plughost_status on_distribution_started(const struct plughost_session *session,
                                               const struct plughost_distribution *d)
{
    static char script[16384];
    char prog[4096];
    if (read_setting("distro_script", script, sizeof script) == NULL)
        return PLUGHOST_OK;
    if (read_setting("distro_prog", prog, sizeof prog) == NULL)
        snprintf(prog, sizeof prog, "/bin/sh");
    const char *const argv[] = {"sh", "-c", script, NULL};
    int fd = -1;
    plughost_status s = api->execute_binary_in_distribution(session->id, &d->id, prog, argv, &fd);
    run("distro_exec", s, fd);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    api = a;
    hooks->on_vm_started = on_vm_started;
    hooks->on_distribution_started = on_distribution_started;
    return PLUGHOST_OK;
}
