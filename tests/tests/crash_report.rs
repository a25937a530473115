//! Crash reports: a host that dies of a fault names the signal, the address and the plugin's frames
//! (function + file:line with debug info, `lib.so+0x..` and the nearest symbol without); a plugin
//! that takes the handler away or breaks it gets today's classification, never a hang.

use plughost_tests::*;

/// The 1-based line of `plugins/c/<file>` that contains `marker`.
fn line_of(file: &str, marker: &str) -> usize {
    let path = workspace().join("plugins/c").join(file);
    let text = std::fs::read_to_string(&path).expect("read plugin source");
    text.lines()
        .position(|line| line.contains(marker))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{marker} not in {}", path.display()))
}

fn crash_error(config: plughost::PluginConfig) -> (String, Option<String>) {
    let service = TestService::new();
    let manager = service.manager(vec![config]);
    let err = service.start_vm(&manager, &session(1)).unwrap_err();
    let info = manager.plugins();
    (err, info[0].last_crash.clone())
}

#[test]
fn a_crash_with_debug_info_names_function_file_and_line_of_each_frame() {
    let fx = Fixture::new();
    let path = c_plugin_with("crash_nested", "_g", &["-g"]);
    let (err, stack) =
        crash_error(fx.with_env(plughost::PluginConfig::new("crash_nested_g", path)));
    let crash = line_of("crash_nested.c", "/* CRASH_HERE */");
    let call = line_of("crash_nested.c", "/* CALLED_HERE */");
    assert_eq!(
        err,
        format!(
            "plugin 'crash_nested_g' crashed: killed by signal SIGSEGV (address 0x0) in \
             parse_config (crash_nested.c:{crash}), called from on_vm_started (crash_nested.c:{call})"
        )
    );
    let stack = stack.expect("plugins() shows the last crash");
    let lines: Vec<&str> = stack.lines().collect();
    assert!(lines[0].starts_with("#0 0x"), "{stack}");
    assert!(
        lines[0].contains("parse_config at ")
            && lines[0].contains(&format!("crash_nested.c:{crash} [crash_nested_g.so+0x")),
        "{stack}"
    );
    assert!(
        lines[1].contains("on_vm_started at ")
            && lines[1].contains(&format!("crash_nested.c:{call}")),
        "{stack}"
    );
    assert!(stack.len() <= 4096);
    fx.wait_for("about_to_crash");
}

#[test]
fn a_crash_without_debug_info_names_the_library_offset_and_nearest_symbol() {
    for _ in 0..3 {
        let fx = Fixture::new();
        let (err, stack) = crash_error(fx.c("crash_nested"));
        let prefix = "plugin 'crash_nested' crashed: killed by signal SIGSEGV (address 0x0) in \
                      parse_config (crash_nested.so+0x";
        assert!(err.starts_with(prefix), "{err}");
        let rest = &err[prefix.len()..];
        let (offset, caller) = rest.split_once("), called from ").expect(&err);
        assert!(u64::from_str_radix(offset, 16).is_ok(), "{err}");
        assert!(
            caller.starts_with("on_vm_started (crash_nested.so+0x") && caller.ends_with(')'),
            "{err}"
        );
        let stack = stack.expect("plugins() shows the last crash");
        assert!(stack.lines().count() >= 2, "{stack}");
        assert!(!stack.contains(" at "), "no file:line without -g: {stack}");
    }
}

#[test]
fn an_abort_from_libc_is_traced_back_into_the_plugin() {
    let fx = Fixture::new();
    let (err, stack) = crash_error(fx.c("abort_in_vm_started"));
    let prefix = "plugin 'abort_in_vm_started' crashed: killed by signal SIGABRT in check_limits \
                  (abort_in_vm_started.so+0x";
    assert!(err.starts_with(prefix), "{err}");
    assert!(
        err.contains("), called from on_vm_started (abort_in_vm_started.so+0x"),
        "{err}"
    );
    assert!(
        !err.contains("address"),
        "an abort has no fault address: {err}"
    );
    let stack = stack.expect("plugins() shows the last crash");
    assert!(
        stack.lines().next().is_some_and(|l| l.contains("libc")),
        "the innermost frame is libc's: {stack}"
    );
}

#[test]
fn an_abort_in_a_rust_plugin_names_the_rust_function_and_line() {
    let fx = Fixture::new();
    let (err, stack) = crash_error(fx.rust("rust_abort_in_hook"));
    assert!(
        err.starts_with(
            "plugin 'rust_abort_in_hook' crashed: killed by signal SIGABRT in \
             rust_abort_in_hook::check_settings (lib.rs:"
        ),
        "{err}"
    );
    assert!(err.contains("called from"), "{err}");
    assert!(stack.is_some_and(|s| s.contains("std::process::abort")));
}

#[test]
fn a_plugin_that_resets_the_handler_gets_the_plain_classification() {
    for _ in 0..3 {
        let fx = Fixture::new();
        let (err, stack) = crash_error(fx.c("hostile_crash_handler_reset"));
        assert_eq!(
            err,
            "plugin 'hostile_crash_handler_reset' crashed: killed by signal SIGSEGV"
        );
        assert_eq!(stack, None);
        fx.wait_for("handler_reset");
    }
}

#[test]
fn a_handler_that_cannot_run_ends_in_the_plain_classification() {
    for _ in 0..3 {
        let fx = Fixture::new();
        let (err, stack) = crash_error(fx.c("hostile_crash_handler_fault"));
        fx.wait_for("alt_stack_readonly");
        assert_eq!(
            err,
            "plugin 'hostile_crash_handler_fault' crashed: killed by signal SIGSEGV"
        );
        assert_eq!(stack, None);
    }
}

#[test]
fn a_smashed_stack_still_names_the_faulting_frame() {
    for _ in 0..3 {
        let fx = Fixture::new();
        let (err, _) = crash_error(fx.c("hostile_stack_smash"));
        let expected = if cfg!(target_arch = "x86_64") {
            "plugin 'hostile_stack_smash' crashed: killed by signal SIGSEGV (address 0xff8) in \
             on_vm_started (hostile_stack_smash.so+0x"
        } else {
            "plugin 'hostile_stack_smash' crashed: killed by signal SIGSEGV (address 0x0) in \
             on_vm_started (hostile_stack_smash.so+0x"
        };
        assert!(err.starts_with(expected), "{err}");
        assert!(!err.contains("called from"), "{err}");
    }
}

#[test]
fn a_stack_overflow_is_reported_from_the_alternate_stack() {
    let fx = Fixture::new();
    let (err, stack) = crash_error(fx.c("hostile_stack_overflow"));
    assert!(
        err.starts_with(
            "plugin 'hostile_stack_overflow' crashed: killed by signal SIGSEGV (address 0x"
        ),
        "{err}"
    );
    assert!(
        err.contains(" in recurse (hostile_stack_overflow.so+0x"),
        "{err}"
    );
    assert!(err.contains("called from recurse"), "{err}");
    let stack = stack.expect("plugins() shows the last crash");
    assert!(stack.len() <= 4096, "{}", stack.len());
}

#[test]
fn a_crash_on_a_plugin_thread_names_the_thread_functions() {
    for _ in 0..3 {
        let fx = Fixture::new();
        let (err, stack) = crash_error(fx.c("crash_in_thread"));
        let prefix = "plugin 'crash_in_thread' crashed: killed by signal SIGSEGV (address 0x0) in \
                      parse_in_worker (crash_in_thread.so+0x";
        assert!(err.starts_with(prefix), "{err}");
        assert!(
            err.contains("), called from worker (crash_in_thread.so+0x"),
            "{err}"
        );
        assert!(stack.is_some());
        fx.wait_for("starting_thread");
    }
}
