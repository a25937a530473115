/*
 * slow_entry.c: an entry point that takes 3 s (a plugin that loads slowly: a big model, a slow
 * disk). Logs `entered` when its entry point begins and `loaded` when it returns; every hook is a
 * no-op. Tests use it to show what waits for a host's start-up and what does not.
 *
 * Env: PH_LOG.
 */
#include "ph_test.h"

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    (void)hooks;
    ph_log("entered");
    sleep(3);
    ph_log("loaded");
    return PLUGHOST_OK;
}
