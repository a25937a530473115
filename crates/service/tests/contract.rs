//! The contract's remaining rules through a real `plughostd` (docs/PLUGIN_ABI.md): calls while a
//! session VM stops, container sessions reaped when their application exits. Real namespaces,
//! processes and plugin hosts; each test has its own daemon.

mod common;

use common::*;

/// The status of PLUGHOST_E_NOT_RUNNING as the test plugins log it.
const NOT_RUNNING: &str = "-10004";

/// `csession stop`: container_create_process from on_session_vm_stopping, on the hook thread and on
/// a plugin thread the hook joins, runs in the session VM; once the hook returned, it is NOT_RUNNING.
#[test]
fn session_vm_serves_calls_during_its_stopping_hook() {
    if !need_root("session_vm_serves_calls_during_its_stopping_hook") {
        return;
    }
    let world = World::new(vec![service_plugin("stopping_calls")]);
    let daemon = world.start();
    let fx = &world.fx;
    for round in 0..3 {
        let name = format!("box{round}");
        daemon.ctl(&["csession", "create", &name]).ok();
        daemon.ctl(&["csession", "run", &name, "--", "true"]).ok();
        daemon.ctl(&["csession", "stop", &name]).ok();
        let hook = fx.events("stopping_hook");
        let thread = fx.events("stopping_thread");
        let after = fx.events("after_stop");
        assert_eq!(hook.len(), round + 1, "{:?}", fx.lines());
        let (hook, thread, after) = (&hook[round], &thread[round], &after[round]);
        assert_eq!(field(hook, "status"), "0", "{hook}");
        assert_eq!(field(hook, "content"), "hook_"); // "hook\n", logged as a token
        assert_eq!(field(hook, "exit"), "0");
        assert_eq!(field(thread, "status"), "0", "{thread}");
        assert_eq!(field(thread, "content"), "thread_");
        assert_eq!(field(thread, "exit"), "0");
        assert_eq!(field(after, "status"), NOT_RUNNING, "{after}");
    }
}
