/*
 * whoami.c — reports what the host process looks like from inside, for the least-privilege tests.
 *
 * on_vm_started logs one line:
 *   whoami uid=<getuid> euid=<geteuid> gid=<getgid> groups=<getgroups count> session_leader=<0|1>
 *          nnp=<NoNewPrivs> seccomp=<Seccomp> capeff=<CapEff> umask=<Umask> fds=<open fds>
 *          env=<number of environment entries> cwd=<cwd> nofile=<RLIMIT_NOFILE soft limit>
 *          secret=<1 if the file named by PH_SECRET could be opened>
 * (values read from getuid() etc. and /proc/self/status) and returns 0.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sys/resource.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ph_test.h"

extern char **environ;

static void status_field(const char *key, char *out, size_t cap)
{
    snprintf(out, cap, "-");
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return;
    char line[512];
    size_t len = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, len) == 0 && line[len] == ':') {
            char *value = line + len + 1;
            while (*value == ' ' || *value == '\t')
                value++;
            value[strcspn(value, "\n")] = '\0';
            snprintf(out, cap, "%s", value);
            break;
        }
    }
    fclose(f);
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own fd */
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    char nnp[32], seccomp[32], capeff[64], umask_text[32], cwd[256];
    status_field("NoNewPrivs", nnp, sizeof nnp);
    status_field("Seccomp", seccomp, sizeof seccomp);
    status_field("CapEff", capeff, sizeof capeff);
    status_field("Umask", umask_text, sizeof umask_text);
    if (!getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, "-");
    int env = 0;
    for (char **e = environ; e && *e; e++)
        env++;
    /* Can it open a file outside the paths it was given (Landlock)? */
    const char *secret_path = ph_env("PH_SECRET", "/nonexistent");
    FILE *secret = fopen(secret_path, "re");
    int secret_readable = secret != NULL;
    if (secret)
        fclose(secret);
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) != 0)
        nofile.rlim_cur = 0;
    ph_log("whoami uid=%d euid=%d gid=%d groups=%d session_leader=%d nnp=%s seccomp=%s capeff=%s "
           "umask=%s fds=%d env=%d cwd=%s nofile=%llu secret=%d",
           (int)getuid(), (int)geteuid(), (int)getgid(), getgroups(0, NULL), getsid(0) == getpid(), nnp,
           seccomp, capeff, umask_text, count_fds(), env, cwd, (unsigned long long)nofile.rlim_cur,
           secret_readable);
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
