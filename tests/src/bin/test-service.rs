//! A minimal service process for tests that must kill the service itself: loads the plugins named on
//! the command line (C test plugins, already compiled), starts session 1's VM, prints
//! `READY <host pid>...` and waits to be killed.
//!
//! Usage: `test-service PH_DIR PH_LOG PH_MARKER PLUGIN.so...`

use std::io::Write;

use plughost::{ManagerConfig, PluginConfig};
use plughost_tests::{session, TestService};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, log, marker, plugins @ ..] = args.as_slice() else {
        eprintln!("usage: test-service PH_DIR PH_LOG PH_MARKER PLUGIN.so...");
        std::process::exit(2);
    };
    let configs = plugins
        .iter()
        .enumerate()
        .map(|(i, path)| {
            PluginConfig::new(format!("plugin{i}"), path)
                .env("PH_DIR", dir)
                .env("PH_LOG", log)
                .env("PH_MARKER", marker)
        })
        .collect();
    let service = TestService::new();
    let manager = service.manager_with(ManagerConfig::new(configs));
    if let Err(e) = service.start_vm(&manager, &session(1)) {
        eprintln!("vm start failed: {e}");
        std::process::exit(1);
    }
    let pids: Vec<String> = manager
        .plugins()
        .iter()
        .filter_map(|p| p.host_pid)
        .map(|p| p.to_string())
        .collect();
    println!("READY {}", pids.join(" "));
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
