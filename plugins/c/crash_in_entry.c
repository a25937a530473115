/*
 * crash_in_entry.c: the entry point crashes its host (SIGSEGV, a real invalid memory write) while the
 * service waits for the load to finish.
 *
 * Env: PH_LOG.
 * Tests expect: `loading`; the plugin fails to load with "plugin '<name>' crashed: killed by signal
 * SIGSEGV", latched: every VM start fails fast with it; never `did_not_crash`.
 */
#include "ph_test.h"

static int *volatile null_pointer = NULL;

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    (void)hooks;
    ph_log("loading");
    *(volatile int *)null_pointer = 1;
    ph_log("did_not_crash");
    return PLUGHOST_OK;
}
