/*
 * entry_fails.c: the entry point fails (returns -22, -EINVAL) without setting any hook.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded` in the log (the entry point did run), then a load failure naming the plugin and
 * the status (-22); no hook of this plugin is ever called.
 */
#include "ph_test.h"

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    (void)hooks;
    ph_log("loaded");
    return -22;
}
