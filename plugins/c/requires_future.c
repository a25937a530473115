/*
 * requires_future.c: requires plughost 99.0.0, so its entry point returns PLUGHOST_E_REQUIRES_UPDATE
 * through PLUGHOST_REQUIRE_VERSION before setting any hook.
 *
 * The entry point logs `loaded` (every plugin does, so the tests can see the entry point ran), then the
 * version check is the first thing that uses the API; past it (a service >= 99.0.0) it logs `version_ok`
 * and sets on_vm_started.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, NO `version_ok` and NO `vm_started`; the load fails with
 * "plugin '<name>' requires a newer version of plughost than <running version>".
 */
#include "ph_test.h"

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("vm_started");
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    ph_log("loaded");
    PLUGHOST_REQUIRE_VERSION(99, 0, 0, api);
    ph_log("version_ok");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
