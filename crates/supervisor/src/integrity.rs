//! What a host loads: the plugin file is opened once, checked (owner, mode, directories), read once,
//! verified (sha256 pin or ed25519 signature) from those bytes, and copied into a sealed memfd that
//! the host maps. The path is never opened again, so swapping the file after the check changes
//! nothing: the verified bytes are what runs.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use rustix::fs::{MemfdFlags, SealFlags};
use sha2::{Digest, Sha256};

use crate::config::{PluginConfig, Trust};

/// Largest plugin library accepted (it is held in memory to verify it).
const MAX_LIBRARY: u64 = 256 * 1024 * 1024;

/// Parses a public key: 32 bytes in base64 (standard alphabet), surrounding whitespace ignored.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("public key is not base64: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "public key is not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("bad public key: {e}"))
}

/// Parses a detached signature: 64 bytes in base64.
pub fn parse_signature(text: &str) -> Result<Signature, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|_| "signature is not 64 bytes".to_string())?;
    Ok(Signature::from_bytes(&bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Refuses a file that someone other than root (or the service's own user) could change.
/// `sticky_ok`: a world-writable directory is accepted if it has the sticky bit (others cannot
/// rename or replace what is in it). Only for the library's higher ancestors (`/tmp` in
/// `/tmp/build/lib/x.so`); the library's own directory must not be writable by others at all,
/// sticky or not, as the README and SECURITY.md say.
fn check_ownership(path: &Path, meta: &std::fs::Metadata, sticky_ok: bool) -> Result<(), String> {
    let euid = rustix::process::geteuid().as_raw();
    let mode = meta.mode();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    if sticky_ok && mode & 0o1000 != 0 {
        // Like /tmp: whoever may write it cannot rename or remove the entry beneath it.
        return Ok(());
    }
    if mode & 0o002 != 0 {
        return Err(format!(
            "{} is writable by others (mode {:o})",
            path.display(),
            mode & 0o7777
        ));
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Err(format!(
            "{} is writable by group {} (mode {:o})",
            path.display(),
            meta.gid(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Is a sealed memfd mappable executable here (`vm.memfd_noexec` < 2)?
fn memfd_exec_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let value = std::fs::read_to_string("/proc/sys/vm/memfd_noexec").unwrap_or_default();
        let allowed = value.trim() != "2";
        if !allowed {
            tracing::warn!(
                "vm.memfd_noexec = 2: plugins are loaded by path, not from sealed memfds"
            );
        }
        allowed
    })
}

/// The library as the host will load it.
pub(crate) enum Library {
    /// A sealed memfd with exactly the verified bytes.
    Sealed(OwnedFd),
    /// A checked path (when memfds cannot be executable here).
    Path(std::path::PathBuf),
}

fn sealed_copy(name: &str, bytes: &[u8]) -> Result<OwnedFd, String> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let fd = rustix::fs::memfd_create(format!("plughost:{name}"), flags | MemfdFlags::EXEC)
        .or_else(|_| rustix::fs::memfd_create(format!("plughost:{name}"), flags))
        .map_err(|e| format!("memfd_create: {e}"))?;
    let mut written = 0;
    while written < bytes.len() {
        match rustix::io::write(&fd, &bytes[written..]) {
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("writing the memfd: {e}")),
        }
    }
    let seals = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    rustix::fs::fcntl_add_seals(fd.as_fd(), seals)
        .map_err(|e| format!("sealing the memfd: {e}"))?;
    Ok(fd)
}

/// Opens, checks, verifies and seals `config`'s library; also gives the sha256 of the bytes the
/// host gets. The error is the reason for `plugin '<name>' failed to load: <reason>`.
pub(crate) fn prepare(config: &PluginConfig, trust: &Trust) -> Result<(Library, String), String> {
    let (bytes, canonical) = verified_bytes(config, trust)?;
    let sha256 = sha256_hex(&bytes);
    let library = if memfd_exec_allowed() {
        sealed_copy(&config.name, &bytes).map(Library::Sealed)?
    } else {
        Library::Path(canonical)
    };
    Ok((library, sha256))
}

/// Checks `config`'s library as [`prepare`] does, under `trust`, and gives the sha256 of its
/// bytes now (a reload compares it with what runs).
pub(crate) fn verify(config: &PluginConfig, trust: &Trust) -> Result<String, String> {
    verified_bytes(config, trust).map(|(bytes, _)| sha256_hex(&bytes))
}

fn verified_bytes(
    config: &PluginConfig,
    trust: &Trust,
) -> Result<(Vec<u8>, std::path::PathBuf), String> {
    let path = &config.path;
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > MAX_LIBRARY {
        return Err(format!(
            "{} is larger than {MAX_LIBRARY} bytes",
            path.display()
        ));
    }
    check_ownership(path, &meta, false)?;
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (depth, dir) in canonical.ancestors().skip(1).enumerate() {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        check_ownership(dir, &meta, depth > 0)?;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut verified = false;
    if let Some(expected) = &config.sha256 {
        let got = sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(expected.trim()) {
            return Err(format!(
                "sha256 mismatch (expected {}, got {got})",
                expected.trim()
            ));
        }
        verified = true;
    }
    if let Some(signature_path) = &config.signature {
        let text = std::fs::read_to_string(signature_path)
            .map_err(|e| format!("cannot read signature {}: {e}", signature_path.display()))?;
        let signature = parse_signature(&text)?;
        if !trust
            .trusted_keys
            .iter()
            .any(|key| key.verify(&bytes, &signature).is_ok())
        {
            return Err("signature does not verify with any trusted key".into());
        }
        verified = true;
    }
    if trust.require_verified && !verified {
        return Err("no sha256 pin or signature, and require_verified is set".into());
    }
    Ok((bytes, canonical))
}
