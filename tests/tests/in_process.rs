//! In-process mode: the same plugin library behind the same manager API, loaded into the service.
//! (Its own test binary: the in-process API table is process-global.)

use std::sync::atomic::Ordering;

use plughost_tests::*;

#[test]
fn in_process_plugins_get_the_same_hooks_api_and_error_texts() {
    let fx = Fixture::new();
    // In process, a plugin sees the service's own environment (its `env` config does not apply).
    // This binary runs this one test, so nothing else reads the environment concurrently.
    std::env::set_var("PH_DIR", fx.dir.path());
    std::env::set_var("PH_LOG", &fx.log);
    let service = TestService::new();
    let manager = service.manager(vec![
        fx.c("ok_mount_exec").in_process(),
        fx.c("api_errors").in_process(),
        fx.c("veto").in_process(),
    ]);
    assert!(manager
        .plugins()
        .iter()
        .all(|p| p.host_pid.is_none() && p.state == "ready"));
    let s = session(1);
    let err = service.start_vm(&manager, &s).unwrap_err();
    assert_eq!(
        err,
        "plugin 'veto' returned a fatal error: veto number 1 (status -22 (EINVAL))"
    );
    assert_eq!(fx.events("read content=OK").len(), 1, "{:?}", fx.lines());
    // The same statuses as out of process, including plugin_error from another thread.
    for (key, status) in [
        ("missing_host_path", "-2"),
        ("unknown_session", "-10005"),
        ("null_host_path", "-14"),
        ("error_from_thread", "-10002"),
        ("container_relative", "-22"),
    ] {
        assert_eq!(
            field(&fx.wait_for(&format!("{key}=")), key),
            status,
            "{key}"
        );
    }
    // The hook thread's calls ran in the dispatch's scope.
    assert!(service.calls_in_scope.load(Ordering::Relaxed) >= 3);
    assert_eq!(fx.events("vm_stopping").len(), 2);
    assert_eq!(
        field(&fx.wait_for("error_in_stopping="), "error_in_stopping"),
        "-10002"
    );
}
