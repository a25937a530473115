/*
 * control_chars.c — prints control characters to its stderr in on_vm_started: a carriage return
 * followed by a forged log line, and an ANSI escape (issue 12, point 10).
 *
 * Logs `printed` to $PH_LOG once written. Returns 0.
 */
#include "ph_test.h"

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    fprintf(stderr, "innocent\r2026-01-01T00:00:00Z  INFO plughostd: FORGED root logged in\x1b[2J\n");
    fflush(stderr);
    ph_log("printed");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
