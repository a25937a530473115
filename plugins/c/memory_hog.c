/*
 * memory_hog.c — allocates and touches memory in on_vm_started until malloc fails, then aborts (as
 * most code does on a failed allocation). Logs `hogging` first and `malloc_failed mib=<n>` at the end.
 */
#include <stdlib.h>
#include <string.h>

#include "ph_test.h"

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("hogging");
    for (unsigned long mib = 1;; mib++) {
        char *block = malloc(1024 * 1024);
        if (!block) {
            ph_log("malloc_failed mib=%lu", mib);
            abort();
        }
        memset(block, 1, 1024 * 1024);
    }
    return PLUGHOST_OK;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
