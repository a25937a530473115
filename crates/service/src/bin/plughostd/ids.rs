//! Host uid/gid ranges for the VMs' user namespaces (rootless-container style).
//!
//! Every user gets a range of [`RANGE`] host ids of their own, out of a pool that no login user is
//! in: `vm_id_base` / `vm_id_ranges` in the configuration, else the `plughost` user's first
//! `/etc/subuid` and `/etc/subgid` entries, else 0x70000000 with 4095 ranges: above what
//! systemd gives containers (0x80000-0x6FFFFFFF) and below 2^31, which many tools take for
//! negative. A range that overlaps another user's `/etc/subuid` or `/etc/subgid` entry is never
//! given out. The VM's root and every
//! id but the user's own maps into that range; the session user's own uid and gid map to
//! themselves, so `exec` runs as the caller and the files it writes in shared folders are theirs.
//! Root's own session maps nothing to itself: root in root's VM is an unprivileged range too.
//!
//! A range, once given to a uid, stays that uid's (recorded in `<state dir>/id-ranges`, 0600), so
//! files a VM left in a shared folder can never be owned by another user's VM later.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Ids per VM: the whole 16-bit space a distribution expects.
pub const RANGE: u32 = 65_536;

const DEFAULT_BASE: u32 = 0x7000_0000;
/// Ranges from [`DEFAULT_BASE`] up to 2^31.
const DEFAULT_RANGES: u32 = 4095;

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("cannot record id ranges in {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: expected `<uid> <range index>`")]
    Corrupt { path: PathBuf, line: usize },
    #[error("every one of the {count} VM id ranges is taken (raise vm_id_ranges)")]
    Exhausted { count: u32 },
    #[error(
        "uid {uid} / gid {gid} lies inside the VM id pool {base}..{end}: \
         move vm_id_base so that no login user is inside it"
    )]
    UserInPool {
        uid: u32,
        gid: u32,
        base: u64,
        end: u64,
    },
}

/// Where the ranges come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub base: u32,
    pub ranges: u32,
}

impl Pool {
    /// The configured pool, else the `plughost` user's subordinate ids, else the default.
    pub fn resolve(base: Option<u32>, ranges: Option<u32>) -> Pool {
        if let Some(base) = base {
            let room = (u64::from(u32::MAX) - u64::from(base)) / u64::from(RANGE);
            let ranges = ranges.unwrap_or(1024).min(room as u32).max(1);
            return Pool { base, ranges };
        }
        if let (Some((ub, uc)), Some((gb, gc))) = (
            subordinate("/etc/subuid", "plughost"),
            subordinate("/etc/subgid", "plughost"),
        ) {
            if ub == gb && uc / RANGE > 0 && gc / RANGE > 0 {
                return Pool {
                    base: ub,
                    ranges: (uc.min(gc) / RANGE).min(ranges.unwrap_or(u32::MAX)),
                };
            }
        }
        Pool {
            base: DEFAULT_BASE,
            ranges: ranges.unwrap_or(DEFAULT_RANGES).clamp(1, DEFAULT_RANGES),
        }
    }

    fn end(&self) -> u64 {
        u64::from(self.base) + u64::from(self.ranges) * u64::from(RANGE)
    }
}

/// Every other user's `name:start:count` entries in `/etc/subuid` and `/etc/subgid`.
fn foreign_subordinate_ranges() -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines() {
            let mut fields = line.split(':');
            let (Some(name), Some(start), Some(count)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if name == "plughost" {
                continue;
            }
            if let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) {
                ranges.push((start, start + count));
            }
        }
    }
    ranges
}

/// `name:start:count` in a subordinate id file.
fn subordinate(file: &str, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The ids of one VM's user namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmIds {
    /// Host uid and gid of the VM's root.
    pub root_uid: u32,
    pub root_gid: u32,
    /// `uid_map` / `gid_map` lines (inside outside count).
    pub uid_map: String,
    pub gid_map: String,
    /// The session user maps to itself (false for root's own session).
    pub user_is_mapped: bool,
}

fn map_lines(base: u32, own: u32) -> String {
    if own == 0 {
        return format!("0 {base} {RANGE}");
    }
    let mut lines = Vec::new();
    if own < RANGE {
        lines.push(format!("0 {base} {own}"));
        lines.push(format!("{own} {own} 1"));
        let rest = RANGE - own - 1;
        if rest > 0 {
            lines.push(format!("{} {} {rest}", own + 1, base + own + 1));
        }
    } else {
        lines.push(format!("0 {base} {RANGE}"));
        lines.push(format!("{own} {own} 1"));
    }
    lines.join("\n")
}

/// The ranges given out, by uid.
pub struct IdRanges {
    pool: Pool,
    path: PathBuf,
    by_uid: BTreeMap<u32, u32>,
}

impl IdRanges {
    pub fn open(state_dir: &Path, pool: Pool) -> Result<IdRanges, IdError> {
        let path = state_dir.join("id-ranges");
        let mut by_uid = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let parsed =
                    (|| Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?)))();
                let Some((uid, index)) = parsed else {
                    return Err(IdError::Corrupt { path, line: n + 1 });
                };
                by_uid.insert(uid, index);
            }
        }
        Ok(IdRanges { pool, path, by_uid })
    }

    /// Whether host id `id` lies in the pool: it is then an id of some VM (its root, or any id
    /// but the session user's), never a user's.
    pub fn in_pool(&self, id: u32) -> bool {
        (u64::from(self.pool.base)..self.pool.end()).contains(&u64::from(id))
    }

    /// The ids of a VM whose session user is `uid`/`gid` (a range recorded for good on first use).
    pub fn for_user(&mut self, uid: u32, gid: u32) -> Result<VmIds, IdError> {
        let (start, end) = (u64::from(self.pool.base), self.pool.end());
        let inside = |id: u32| (start..end).contains(&u64::from(id));
        if inside(uid) || inside(gid) {
            return Err(IdError::UserInPool {
                uid,
                gid,
                base: start,
                end,
            });
        }
        let index = match self.by_uid.get(&uid) {
            Some(&index) if index < self.pool.ranges => index,
            _ => {
                let taken: std::collections::BTreeSet<u32> =
                    self.by_uid.values().copied().collect();
                let foreign = foreign_subordinate_ranges();
                let base = u64::from(self.pool.base);
                let overlaps = |i: u32| {
                    let start = base + u64::from(i) * u64::from(RANGE);
                    let end = start + u64::from(RANGE);
                    foreign.iter().any(|&(s, e)| s < end && start < e)
                };
                let index = (0..self.pool.ranges)
                    .find(|&i| !taken.contains(&i) && !overlaps(i))
                    .ok_or(IdError::Exhausted {
                        count: self.pool.ranges,
                    })?;
                self.by_uid.insert(uid, index);
                if let Err(source) = self.save() {
                    self.by_uid.remove(&uid);
                    return Err(IdError::Save {
                        path: self.path.clone(),
                        source,
                    });
                }
                index
            }
        };
        let base = self.pool.base + index * RANGE;
        Ok(VmIds {
            root_uid: base,
            root_gid: base,
            uid_map: map_lines(base, uid),
            gid_map: map_lines(base, if uid == 0 { 0 } else { gid }),
            user_is_mapped: uid != 0,
        })
    }

    fn save(&self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension("tmp");
        let mut text = String::from("# uid range-index: plughostd's VM id ranges (see ids.rs)\n");
        for (uid, index) in &self.by_uid {
            text.push_str(&format!("{uid} {index}\n"));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_maps_to_itself_and_everything_else_into_the_range() {
        assert_eq!(
            map_lines(1 << 31, 1000),
            "0 2147483648 1000\n1000 1000 1\n1001 2147484649 64535"
        );
        assert_eq!(map_lines(1 << 31, 0), "0 2147483648 65536");
        assert_eq!(
            map_lines(1 << 31, 65535),
            "0 2147483648 65535\n65535 65535 1"
        );
        assert_eq!(
            map_lines(1 << 31, 100_000),
            "0 2147483648 65536\n100000 100000 1"
        );
    }

    #[test]
    fn ranges_are_per_user_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool {
            base: 1 << 30,
            ranges: 2,
        };
        let mut ids = IdRanges::open(dir.path(), pool).expect("open");
        let a = ids.for_user(1000, 1000).expect("a");
        let b = ids.for_user(1001, 1001).expect("b");
        assert_ne!(a.root_uid, b.root_uid);
        assert!(matches!(
            ids.for_user(1002, 1002),
            Err(IdError::Exhausted { count: 2 })
        ));
        let mut again = IdRanges::open(dir.path(), pool).expect("reopen");
        assert_eq!(again.for_user(1001, 1001).expect("b").root_uid, b.root_uid);
        assert_eq!(again.for_user(1000, 1000).expect("a").root_uid, a.root_uid);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("id-ranges"))
                .expect("file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_user_inside_the_pool_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool {
            base: 1000,
            ranges: 1,
        };
        let mut ids = IdRanges::open(dir.path(), pool).expect("open");
        assert!(matches!(
            ids.for_user(1500, 0),
            Err(IdError::UserInPool { .. })
        ));
    }
}
