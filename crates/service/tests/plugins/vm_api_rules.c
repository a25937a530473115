/*
 * vm_api_rules.c: documented outcomes of the VM calls and of plugin_error (a test plugin of
 * crates/service; built by tests/contract.rs with the same flags as plugins/c). One line
 * `key=<status>` each:
 *
 * entry point:          plugin_error("x") outside any hook                         entry_error -> ILLEGAL_CALL
 * on_distribution_registered(s, d): remembers d->id                                -> `registered`
 * on_vm_started(s, settings):
 *   exec_in_stopped_distro  execute_binary_in_distribution(s, &registered id, "/bin/true", ...)
 *                                                     -> NOT_RUNNING (known, not running; else NOT_FOUND)
 *   exec_in_distro_null     execute_binary_in_distribution(s, NULL, ...)            -> -EFAULT
 *   exec_unknown_session    execute_binary(0x7fffffff, "/bin/true", ...)            -> NOT_FOUND
 *   mount_relative          mount_folder(s, "/", "mnt/rel", true, "r")              -> -EINVAL
 *   error_null              plugin_error(NULL)                                      -> -EFAULT
 *   error_first             plugin_error("first")                                   -> 0
 *   error_second            plugin_error("second")                                  -> ILLEGAL_STATE
 *   then returns -EACCES: the start fails with "...: first (status -13 (EACCES))".
 * Env: PH_LOG.
 */
#include "ph_test.h"

static const struct plughost_api_v1 *api;
static struct plughost_uuid registered;
static int have_registered;

static plughost_status on_distribution_registered(const struct plughost_session *session,
                                                  const struct plughost_offline_distribution *d)
{
    (void)session;
    registered = d->id;
    have_registered = 1;
    ph_log("registered");
    return PLUGHOST_OK;
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)settings;
    const char *const argv[] = {"true", NULL};
    int fd = -1;
    plughost_status s;
    if (have_registered) {
        s = api->execute_binary_in_distribution(session->id, &registered, "/bin/true", argv, &fd);
        if (s == PLUGHOST_OK)
            close(fd);
        ph_log("exec_in_stopped_distro=%d", s);
    }
    ph_log("exec_in_distro_null=%d",
           api->execute_binary_in_distribution(session->id, NULL, "/bin/true", argv, &fd));
    fd = -1;
    s = api->execute_binary(0x7fffffff, "/bin/true", argv, &fd);
    if (s == PLUGHOST_OK)
        close(fd);
    ph_log("exec_unknown_session=%d", s);
    ph_log("mount_relative=%d", api->mount_folder(session->id, "/", "mnt/rel", true, "r"));
    ph_log("error_null=%d", api->plugin_error(NULL));
    ph_log("error_first=%d", api->plugin_error("first"));
    ph_log("error_second=%d", api->plugin_error("second"));
    return -EACCES;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *a,
                                                        struct plughost_hooks_v1 *hooks)
{
    api = a;
    ph_log("entry_error=%d", api->plugin_error("x"));
    hooks->on_distribution_registered = on_distribution_registered;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
