/*
 * printer.c: writes to its own stdout and stderr (the service must capture a host's output into its log,
 * line by line, tagged with the plugin, and must not let it corrupt anything).
 *
 * The entry point and on_vm_started each print "hello from stdout\n" (stdout, flushed) and
 * "hello from stderr\n" (stderr); on_vm_stopping prints "partial" to stderr without a trailing newline
 * (the service must still log it, at the latest when the host exits). Every hook returns 0.
 *
 * Env: PH_LOG.
 * Tests expect in $PH_LOG: `loaded`, `vm_started`, `vm_stopping`; in the service's log: the two hello
 * lines (twice each) and "partial".
 */
#include "ph_test.h"

static void hello(void)
{
    printf("hello from stdout\n");
    fflush(stdout);
    fprintf(stderr, "hello from stderr\n");
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("vm_started");
    hello();
    return PLUGHOST_OK;
}

static plughost_status on_vm_stopping(const struct plughost_session *session)
{
    (void)session;
    ph_log("vm_stopping");
    fprintf(stderr, "partial");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hello();
    hooks->on_vm_started = on_vm_started;
    hooks->on_vm_stopping = on_vm_stopping;
    return PLUGHOST_OK;
}
