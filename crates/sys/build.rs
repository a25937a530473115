//! Builds the waiter (`waiter/waiter.c`, see `src/waiter.rs`) with the system C compiler into
//! `OUT_DIR`, for `include_bytes!`. The waiter is x86_64 Linux only and needs a C compiler; when it
//! cannot be built, the build goes on with an empty program and the reason (a cargo warning, and
//! `PLUGHOST_WAITER_UNAVAILABLE`, which the host logs once per start): the outer host and the
//! namespace init then wait in Rust, as before the waiter existed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Freestanding, static, no libc: the program maps one page of code and touches one of stack.
/// `-fno-builtin` keeps the compiler from emitting calls to `memset`/`memcpy`, which do not exist
/// here; `noseparate-code` puts code and read-only data in one page-aligned segment.
const FLAGS: &[&str] = &[
    "-nostdlib",
    "-static",
    "-ffreestanding",
    "-fno-stack-protector",
    "-O2",
    "-fno-pie",
    "-no-pie",
    "-fno-builtin",
    "-fno-asynchronous-unwind-tables",
    "-Wall",
    "-Wl,--build-id=none",
    "-Wl,-z,noseparate-code",
    "-s",
];

fn main() {
    println!("cargo::rerun-if-changed=waiter/waiter.c");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let program = out.join("plughost-waiter");
    let unavailable = match build(&program) {
        Ok(()) => String::new(),
        Err(reason) => {
            // One line: it becomes an environment variable the host logs.
            let reason = reason.replace(['\n', '\r'], " ");
            println!(
                "cargo::warning=plughost-waiter not built ({reason}); hosts will wait in Rust"
            );
            std::fs::write(&program, b"").expect("write an empty waiter into OUT_DIR");
            reason
        }
    };
    println!("cargo::rustc-env=PLUGHOST_WAITER={}", program.display());
    println!("cargo::rustc-env=PLUGHOST_WAITER_UNAVAILABLE={unavailable}");
}

fn build(program: &Path) -> Result<(), String> {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        return Err(format!(
            "the waiter is x86_64 Linux only, the target is {arch} {os}"
        ));
    }
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let output = Command::new(&compiler)
        .args(FLAGS)
        .arg("-o")
        .arg(program)
        .arg("waiter/waiter.c")
        .output()
        .map_err(|e| format!("cannot run {compiler}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{compiler} failed ({}): {}",
            output.status,
            stderr.trim()
        ));
    }
    // A `CC` for another machine would build a program the kernel cannot run: check the ELF
    // header (64-bit, little-endian, executable, x86-64) rather than find out at exec time.
    let bytes = std::fs::read(program).map_err(|e| format!("cannot read the waiter: {e}"))?;
    let is_x86_64_executable = bytes.len() > 20
        && bytes[..4] == *b"\x7fELF"
        && bytes[4] == 2
        && bytes[5] == 1
        && bytes[16..18] == [2, 0]
        && bytes[18..20] == [0x3e, 0];
    if !is_x86_64_executable {
        return Err(format!("{compiler} did not build an x86-64 ELF executable"));
    }
    Ok(())
}
