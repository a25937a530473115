/*
 * hostile_stack_overflow.c: on_vm_started recurses without end until the main thread's stack runs
 * into its guard page (SIGSEGV).
 *
 * The handler runs on the alternate stack and reports the innermost frames, all in `recurse`.
 *
 * Env: PH_LOG.
 * Tests expect: `loaded`, `recursing`.
 */
#include "ph_test.h"

/* Never reached: only there so the compiler does not see the recursion as endless. */
static volatile long depth_limit = 1L << 40;

__attribute__((noinline)) static int recurse(volatile char *previous, long depth)
{
    volatile char frame[256];
    frame[0] = previous ? previous[0] + 1 : 0;
    if (depth == depth_limit)
        return frame[0];
    return recurse(frame, depth + 1) + frame[1];
}

static plughost_status on_vm_started(const struct plughost_session *session,
                                     const struct plughost_vm_settings *settings)
{
    (void)session;
    (void)settings;
    ph_log("recursing");
    return recurse(NULL, 0) ? -EFAULT : -EINVAL;
}

PLUGHOST_EXPORT plughost_status PLUGHOST_ENTRY_POINT_V1(const struct plughost_api_v1 *api,
                                                        struct plughost_hooks_v1 *hooks)
{
    (void)api;
    ph_log("loaded");
    hooks->on_vm_started = on_vm_started;
    return PLUGHOST_OK;
}
