//! `plughost check` against the project's own test plugins: the well-behaved ones pass, each
//! hostile one fails for its reason. Runs the real binary, which runs real hosts.

use std::process::Command;

use plughost_tests::{c_plugin, rust_plugin};
use serde_json::Value;

/// Runs `plughost check PLUGIN --json ARGS`; returns the exit code and the report.
fn check(plugin: &std::path::Path, args: &[&str]) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_plughost"))
        .arg("check")
        .arg(plugin)
        .arg("--json")
        .args(args)
        .output()
        .expect("run plughost check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

fn hook<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["hooks"]
        .as_array()
        .and_then(|hooks| hooks.iter().find(|h| h["hook"] == name))
        .unwrap_or_else(|| panic!("no row for {name}: {report:#}"))
}

fn reasons(row: &Value) -> Vec<String> {
    row["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn findings(report: &Value, verdict: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter(|f| f["verdict"] == verdict)
                .filter_map(|f| f["what"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn well_behaved_plugins_pass() {
    for plugin in [
        c_plugin("noop"),
        c_plugin("ok_mount_exec"),
        rust_plugin("rust_mount_exec"),
    ] {
        let (code, report) = check(&plugin, &["--cycles", "20"]);
        assert_eq!(code, 0, "{report:#}");
        assert_eq!(report["passed"], true);
        assert_eq!(report["hooks"].as_array().map(Vec::len), Some(10));
        assert!(findings(&report, "fail").is_empty(), "{report:#}");
        let started = hook(&report, "on_vm_started");
        assert_eq!(started["verdict"], "pass");
        assert!(started["calls"].as_u64() > Some(20), "{report:#}");
        assert!(started["median_us"].as_u64().is_some());
        assert!(started["p99_us"].as_u64() >= started["median_us"].as_u64());
    }
}

#[test]
fn a_plugin_that_calls_back_is_served_in_its_hooks_and_after_them() {
    // ok_mount_exec vetoes unless `cat` prints OK: with that output it goes through the whole
    // lifecycle, and its distribution hook leaves a thread that calls back 200 ms later.
    let (code, report) = check(
        &c_plugin("ok_mount_exec"),
        &["--cycles", "5", "--exec-output", "OK"],
    );
    assert_eq!(code, 0, "{report:#}");
    // mount_folder and execute_binary in every on_vm_started.
    let started = hook(&report, "on_vm_started");
    assert!(started["api_calls"].as_u64() >= started["calls"].as_u64().map(|c| 2 * c));
    for row in report["hooks"].as_array().into_iter().flatten() {
        assert!(row["calls"].as_u64() > Some(5), "{row:#}");
    }
    assert!(
        report["calls_outside_hooks"].as_u64() > Some(0),
        "{report:#}"
    );
    // Four plugin threads calling back while the hook waits for them.
    let (code, report) = check(&c_plugin("threads_in_vm_started"), &["--cycles", "5"]);
    assert_eq!(code, 0, "{report:#}");
    let started = hook(&report, "on_vm_started");
    assert!(started["api_calls"].as_u64() >= started["calls"].as_u64().map(|c| 4 * c));
}

#[test]
fn a_veto_without_a_message_fails() {
    let (code, report) = check(&c_plugin("veto"), &["--cycles", "5"]);
    assert_eq!(code, 1);
    assert_eq!(report["passed"], false);
    let started = hook(&report, "on_vm_started");
    assert_eq!(started["verdict"], "fail");
    assert_eq!(reasons(started)[0], "vetoed with no message (status -5)");
}

#[test]
fn a_crash_fails_with_its_report() {
    let (code, report) = check(&c_plugin("crash_in_vm_started"), &["--cycles", "2"]);
    assert_eq!(code, 1);
    let started = hook(&report, "on_vm_started");
    assert_eq!(started["verdict"], "fail");
    let reason = &reasons(started)[0];
    assert!(
        reason.starts_with(
            "crashed: killed by signal SIGSEGV (address 0x0) in on_vm_started \
             (crash_in_vm_started.so+0x"
        ),
        "{reason}"
    );
    assert!(report["last_crash"]
        .as_str()
        .is_some_and(|s| s.starts_with("#0 0x")));
}

#[test]
fn a_hook_past_its_deadline_fails() {
    let (code, report) = check(
        &c_plugin("hang_in_vm_stopping"),
        &["--cycles", "0", "--deadline", "0.5"],
    );
    assert_eq!(code, 1);
    let stopping = hook(&report, "on_vm_stopping");
    assert_eq!(stopping["verdict"], "fail");
    assert_eq!(
        reasons(stopping)[0],
        "exceeded its deadline: did not answer on_vm_stopping within 500 ms"
    );
    assert_eq!(hook(&report, "on_vm_started")["verdict"], "pass");
}

#[test]
fn plugin_error_outside_a_veto_hook_fails() {
    let (code, report) = check(&c_plugin("error_in_vm_stopping"), &["--cycles", "2"]);
    assert_eq!(code, 1);
    let stopping = hook(&report, "on_vm_stopping");
    assert_eq!(stopping["verdict"], "fail");
    assert_eq!(
        reasons(stopping)[0],
        "plugin_error refused (-10002) in on_vm_stopping, which may not veto: cannot stop"
    );
}

#[test]
fn a_message_with_success_fails() {
    let (code, report) = check(&c_plugin("message_then_success"), &["--cycles", "2"]);
    assert_eq!(code, 1);
    let started = hook(&report, "on_vm_started");
    assert!(
        reasons(started).contains(
            &"set a plugin_error message and returned success (reported as \
              PLUGHOST_E_ILLEGAL_STATE)"
                .to_owned()
        ),
        "{started:#}"
    );
}

#[test]
fn leaked_fds_and_threads_fail() {
    let (code, report) = check(&c_plugin("leak_fd_per_vm"), &["--cycles", "20"]);
    assert_eq!(code, 1);
    let fails = findings(&report, "fail");
    assert!(
        fails
            .iter()
            .any(|f| f.starts_with("open fds grew from ") && f.ends_with(" across 20 lifecycles")),
        "{report:#}"
    );
    let (code, report) = check(&c_plugin("leak_thread_per_vm"), &["--cycles", "20"]);
    assert_eq!(code, 1);
    let fails = findings(&report, "fail");
    assert!(
        fails.iter().any(|f| f.starts_with("threads grew from ")),
        "{report:#}"
    );
}

#[test]
fn load_failures_fail_with_their_reason() {
    let (code, report) = check(&c_plugin("entry_fails"), &[]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&report, "fail"),
        ["plugin 'entry_fails' failed to load: entry point returned status -22 (EINVAL)"]
    );
    let (code, report) = check(&c_plugin("requires_future"), &[]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&report, "fail"),
        [format!(
            "plugin 'requires_future' requires a newer version of plughost than {}",
            plughost::service_version()
        )]
    );
}

#[test]
fn output_is_a_warning_not_a_failure() {
    let (code, report) = check(&c_plugin("printer"), &["--cycles", "2"]);
    assert_eq!(code, 0, "{report:#}");
    let warns = findings(&report, "warn");
    assert!(
        warns
            .iter()
            .any(|w| w.starts_with("printed ") && w.contains("\"hello from")),
        "{report:#}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_plughost"))
        .args(["check"])
        .output()
        .expect("run plughost check");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: plughost check"));
}
