//! `plughost-sign`: make a key pair, sign a plugin library, verify a signature — what an operator
//! needs for `signature = "..."` and `trusted_keys = [...]` without other tools.
//!
//! ```text
//! plughost-sign keygen PREFIX              writes PREFIX.key (secret, mode 0600) and PREFIX.pub
//! plughost-sign sign KEY FILE [SIG]        writes SIG (default FILE.sig)
//! plughost-sign verify PUB FILE [SIG]      exits 0 if SIG (default FILE.sig) verifies with PUB
//! ```
//! Keys and signatures are base64 text: a 32-byte ed25519 seed (secret), a 32-byte public key, a
//! 64-byte signature over the file's bytes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier};

const USAGE: &str = "usage:
  plughost-sign keygen PREFIX            writes PREFIX.key (secret) and PREFIX.pub
  plughost-sign sign KEY FILE [SIG]      signs FILE into SIG (default FILE.sig)
  plughost-sign verify PUB FILE [SIG]    checks SIG (default FILE.sig) against PUB";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("plughost-sign: {e:#}");
        std::process::exit(1);
    }
}

fn sig_path(file: &str, sig: Option<&String>) -> PathBuf {
    sig.map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{file}.sig")))
}

fn run(args: &[String]) -> Result<()> {
    match args {
        [cmd, prefix] if cmd == "keygen" => keygen(prefix),
        [cmd, key, file, rest @ ..] if cmd == "sign" && rest.len() <= 1 => sign(
            Path::new(key),
            Path::new(file),
            &sig_path(file, rest.first()),
        ),
        [cmd, public, file, rest @ ..] if cmd == "verify" && rest.len() <= 1 => verify(
            Path::new(public),
            Path::new(file),
            &sig_path(file, rest.first()),
        ),
        _ => bail!("{USAGE}"),
    }
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", path.display()))
}

fn keygen(prefix: &str) -> Result<()> {
    let mut seed = [0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        filled +=
            rustix::rand::getrandom(&mut seed[filled..], rustix::rand::GetRandomFlags::empty())
                .context("getrandom")?;
    }
    let key = SigningKey::from_bytes(&seed);
    let secret = PathBuf::from(format!("{prefix}.key"));
    let public = PathBuf::from(format!("{prefix}.pub"));
    write_new(&secret, &STANDARD.encode(key.to_bytes()), 0o600)?;
    write_new(
        &public,
        &STANDARD.encode(key.verifying_key().to_bytes()),
        0o644,
    )?;
    println!(
        "secret key: {}\npublic key: {}",
        secret.display(),
        public.display()
    );
    Ok(())
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn sign(key: &Path, file: &Path, sig: &Path) -> Result<()> {
    let seed = STANDARD
        .decode(read_text(key, "secret key")?.trim())
        .with_context(|| format!("{} is not base64", key.display()))?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} is not a 32-byte secret key", key.display()))?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let signature = SigningKey::from_bytes(&seed).sign(&bytes);
    std::fs::write(sig, format!("{}\n", STANDARD.encode(signature.to_bytes())))
        .with_context(|| format!("cannot write {}", sig.display()))?;
    println!("signature: {}", sig.display());
    Ok(())
}

fn verify(public: &Path, file: &Path, sig: &Path) -> Result<()> {
    let key = plughost::parse_public_key(&read_text(public, "public key")?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", public.display()))?;
    let signature = plughost::parse_signature(&read_text(sig, "signature")?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", sig.display()))?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if key.verify(&bytes, &signature).is_err() {
        bail!(
            "{}: signature does not verify with {}",
            file.display(),
            public.display()
        );
    }
    println!("{}: signature verifies", file.display());
    Ok(())
}
