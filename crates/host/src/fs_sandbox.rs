//! Landlock: after it, the plugin can open files only beneath the allowed trees — read (and
//! execute) beneath the system directories and the configured read paths, read and write beneath
//! the configured write paths. Fds it already holds (its channel, the sealed library) keep working.

use std::path::Path;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

/// Read-only trees every plugin gets: what the dynamic loader, libc and `/proc/self` need.
pub const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev",
];

/// How well the kernel enforced the rules.
pub enum Enforcement {
    Full,
    Partial,
    NotEnforced,
}

fn existing<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    paths
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect()
}

/// The rules in one log line, naming the configuration keys that widen them (`read_paths`,
/// `write_paths` and `landlock` in plughostd's configuration; `PluginConfig::allow_read` /
/// `allow_write` in the library).
pub fn describe(read: &[String], write: &[String]) -> String {
    let list = |paths: &[String]| {
        if paths.is_empty() {
            "none".to_owned()
        } else {
            paths.join(" ")
        }
    };
    format!(
        "Landlock: the plugin may open files read-only beneath the system trees and its read_paths ({}), \
         read-write beneath its write_paths ({}); any other open fails with EACCES (Permission denied): \
         add the path to read_paths or write_paths in the plugin's configuration",
        list(read),
        list(write)
    )
}

/// Restricts this process (and every thread and child created after) to `read` and `write`.
pub fn restrict(read: &[String], write: &[String]) -> Result<Enforcement, String> {
    let abi = ABI::V5;
    let read_paths = existing(
        SYSTEM_READ
            .iter()
            .copied()
            .chain(read.iter().map(String::as_str)),
    );
    let write_paths = existing(write.iter().map(String::as_str));
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(read_paths, AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(write_paths, AccessFs::from_all(abi))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::NotEnforced,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_description_names_the_keys_and_the_paths() {
        let line = super::describe(&[], &["/var/log/audit.log".into()]);
        assert!(line.contains("read_paths (none)"), "{line}");
        assert!(line.contains("write_paths (/var/log/audit.log)"), "{line}");
        assert!(
            line.ends_with(
                "add the path to read_paths or write_paths in the plugin's configuration"
            ),
            "{line}"
        );
    }
}
