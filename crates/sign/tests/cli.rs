//! keygen → sign → verify, and a tampered file refused, through the real binary.

use std::process::Command;

fn sign_tool(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_plughost-sign"))
        .args(args)
        .output()
        .expect("run plughost-sign")
}

#[test]
fn keygen_sign_verify_and_tamper() {
    let dir = std::env::temp_dir().join(format!("plughost-sign-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("op");
    let file = dir.join("plugin.so");
    std::fs::write(&file, b"pretend this is a shared library").unwrap();

    let out = sign_tool(&["keygen".as_ref(), prefix.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.join("op.key");
    let public = dir.join("op.pub");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = sign_tool(&["sign".as_ref(), key.as_os_str(), file.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sign_tool(&["verify".as_ref(), public.as_os_str(), file.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The library's own parser accepts what the tool wrote.
    let text = std::fs::read_to_string(&public).unwrap();
    assert!(plughost::parse_public_key(&text).is_ok());

    std::fs::write(&file, b"pretend this is a shared library, changed").unwrap();
    let out = sign_tool(&["verify".as_ref(), public.as_os_str(), file.as_os_str()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("signature does not verify"), "{stderr}");

    let out = sign_tool(&["bogus".as_ref()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    let _ = std::fs::remove_dir_all(&dir);
}
