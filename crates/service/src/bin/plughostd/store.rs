//! Registered distributions, persisted in `<state-dir>/distributions.json`.
//!
//! Writes are atomic (temporary file in the same directory, `fsync`, `rename`, `fsync` of the
//! directory): a crash leaves the old file or the new one. A file that does not parse is reported
//! with its path and the reason and is never overwritten or reset: the daemon refuses to start.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::os::fd::OwnedFd;

use plughost::DistributionId;
use serde::{Deserialize, Serialize};

use crate::userfs::{read_file_in_root, UserCred};

/// One registration. `owner` is the uid whose session registered it; names are unique per owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// 32 lowercase hex digits, a random (version 4) uuid.
    pub id: String,
    pub name: String,
    pub rootfs: PathBuf,
    pub package: String,
    pub owner: u32,
    /// `ID` of the rootfs's os-release, read once at registration (as the owner, bounded).
    #[serde(default)]
    pub flavor: String,
    /// `VERSION_ID` of it.
    #[serde(default)]
    pub version: String,
}

impl Registered {
    pub fn distribution_id(&self) -> DistributionId {
        DistributionId(plughost_service::parse_uuid_hex(&self.id).unwrap_or_default())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    distributions: Vec<Registered>,
}

const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("corrupt state file {path}: {reason} (fix or move it away; it was left untouched)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The registry, in memory and on disk.
pub struct Store {
    path: PathBuf,
    distributions: Vec<Registered>,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("distributions.json");
        let distributions = match std::fs::read(&path) {
            Ok(bytes) => {
                // A file an older version wrote world-readable becomes private now.
                let _ = std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                );
                parse(&path, &bytes)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Store {
            path,
            distributions,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn of_owner(&self, owner: u32) -> Vec<Registered> {
        self.distributions
            .iter()
            .filter(|d| d.owner == owner)
            .cloned()
            .collect()
    }

    /// Bytes of the state file that `owner`'s registrations take (`limits.state_bytes`).
    pub fn bytes_of_owner(&self, owner: u32) -> usize {
        self.distributions
            .iter()
            .filter(|d| d.owner == owner)
            .map(Store::entry_bytes)
            .sum()
    }

    /// Bytes of one registration in the state file (pretty JSON, indentation included).
    pub fn entry_bytes(entry: &Registered) -> usize {
        serde_json::to_vec_pretty(entry).map_or(usize::MAX, |v| v.len() + 16)
    }

    pub fn find(&self, owner: u32, name: &str) -> Option<Registered> {
        self.distributions
            .iter()
            .find(|d| d.owner == owner && d.name == name)
            .cloned()
    }

    pub fn find_id(&self, id: DistributionId) -> Option<Registered> {
        let hex = id.to_string();
        self.distributions.iter().find(|d| d.id == hex).cloned()
    }

    /// Adds `entry` and saves; on a write failure nothing changes.
    pub fn add(&mut self, entry: Registered) -> Result<(), StoreError> {
        let mut next = self.distributions.clone();
        next.push(entry);
        self.save(&next)?;
        self.distributions = next;
        Ok(())
    }

    pub fn remove(&mut self, owner: u32, name: &str) -> Result<Option<Registered>, StoreError> {
        let Some(found) = self.find(owner, name) else {
            return Ok(None);
        };
        let next: Vec<Registered> = self
            .distributions
            .iter()
            .filter(|d| d.id != found.id)
            .cloned()
            .collect();
        self.save(&next)?;
        self.distributions = next;
        Ok(Some(found))
    }

    fn save(&self, distributions: &[Registered]) -> Result<(), StoreError> {
        let write = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let file = StateFile {
            version: STATE_VERSION,
            distributions: distributions.to_vec(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| write(e.into()))?;
        bytes.push(b'\n');
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(".distributions.json.{}.tmp", std::process::id()));
        let result = (|| {
            // 0600: other users must not read everyone's distribution names, rootfs paths and
            // packages (the rename replaces a 0644 file an older version left).
            let mut f = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
                0o600,
            )
            .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Registered>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file: StateFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != STATE_VERSION {
        return Err(corrupt(format!("unknown version {}", file.version)));
    }
    for (i, d) in file.distributions.iter().enumerate() {
        if plughost_service::parse_uuid_hex(&d.id).is_none() {
            return Err(corrupt(format!("entry {i}: bad id {:?}", d.id)));
        }
        let twin = file.distributions[..i]
            .iter()
            .any(|o| o.id == d.id || (o.owner == d.owner && o.name == d.name));
        if twin {
            return Err(corrupt(format!("entry {i}: duplicate {:?}", d.name)));
        }
    }
    Ok(file.distributions)
}

/// A fresh random (version 4, RFC 9562) uuid from the kernel's generator.
pub fn new_uuid() -> std::io::Result<[u8; 16]> {
    let mut id = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut id)?;
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id)
}

/// Largest os-release file read (the whole file is a few hundred bytes on real distributions).
pub const MAX_OS_RELEASE: usize = 64 * 1024;

/// `ID` and `VERSION_ID` of the os-release beneath `root` (`""` when there is none), read as
/// `user` (see `userfs`): `etc/os-release`, else `usr/lib/os-release` (os-release(5)). A
/// symbolic link as either file is not followed (most distributions link the first to the
/// second, which is then read). An error names the file.
pub fn os_release(user: &UserCred, root: &OwnedFd) -> Result<(String, String), String> {
    let mut refused = None;
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        match read_file_in_root(user, root, rel, MAX_OS_RELEASE) {
            Ok(bytes) => return Ok(parse_os_release(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // Our own refusals read as a sentence ("etc/os-release is a FIFO, ..."); the
                // kernel's as a reason ("etc/os-release: Permission denied").
                let sep = if e.kind() == std::io::ErrorKind::InvalidInput {
                    " "
                } else {
                    ": "
                };
                refused.get_or_insert(format!("{rel}{sep}{e}"));
            }
        }
    }
    match refused {
        Some(reason) => Err(reason),
        None => Ok((String::new(), String::new())),
    }
}

fn parse_os_release(text: &str) -> (String, String) {
    let mut id = String::new();
    let mut version = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').trim_matches('\'').to_owned();
        match key.trim() {
            "ID" => id = value,
            "VERSION_ID" => version = value,
            _ => {}
        }
    }
    (id, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Registered {
        Registered {
            id: plughost_service::uuid_hex(&new_uuid().expect("uuid")),
            name: name.into(),
            rootfs: "/r".into(),
            package: String::new(),
            owner: 0,
            flavor: String::new(),
            version: String::new(),
        }
    }

    #[test]
    fn saved_registrations_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("opens empty");
        let d = entry("a");
        store.add(d.clone()).expect("adds");
        let again = Store::open(dir.path()).expect("reopens");
        assert_eq!(again.find(0, "a"), Some(d));
    }

    #[test]
    fn corrupt_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("distributions.json");
        std::fs::write(&path, "{not json").expect("write");
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(err.to_string().starts_with("corrupt state file "), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{not json");
    }

    #[test]
    fn uuid_is_version_4() {
        let id = new_uuid().expect("uuid");
        assert_eq!(id[6] >> 4, 4);
        assert_eq!(id[8] >> 6, 2);
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/os-release"),
            "NAME=\"Test\"\nID=testos\nVERSION_ID=\"1.2\"\n",
        )
        .expect("write");
        let root = crate::userfs::open_dir_as(&UserCred::of(0, 0), dir.path()).expect("open");
        assert_eq!(
            os_release(&UserCred::of(0, 0), &root),
            Ok(("testos".into(), "1.2".into()))
        );
    }
}
