//! Who may use the control socket: the checks that refuse a plugin host (or any process of one)
//! every request, by its user, its pid namespace, its cgroup or its ancestry. They decide nothing
//! else (limits and ownership are checked by each operation).

use std::path::Path;

use super::{lock, Caller, Config, Daemon, Isolation};

/// The overflow user, `nobody`.
const NOBODY: u32 = 65534;

/// The uids the configured plugin hosts run as, root excepted (a host that runs as the service
/// is recognised by its cgroup or its ancestry instead).
pub(super) fn host_uids(config: &Config) -> Vec<(u32, String)> {
    config
        .plugins
        .iter()
        .filter(|p| p.config.isolation == Isolation::Process)
        .filter_map(|p| match p.config.user.resolve() {
            Ok(Some((uid, _))) if uid != 0 => Some((uid, p.name.clone())),
            _ => None,
        })
        .collect()
}

/// Why process `pid` is (a descendant of) a plugin host, if it is: it lives in a host's cgroup
/// (`host-<plughostd's pid>-...`, which its descendants cannot leave), or one of its ancestors
/// runs the host binary.
fn host_process(pid: u32) -> Option<String> {
    let own = std::process::id();
    let marker = format!("host-{own}-");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    for line in cgroup.lines().take(64) {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        if path.split('/').any(|c| c.starts_with(&marker)) {
            return Some(format!("process {pid} is in a plugin host's cgroup"));
        }
    }
    let mut current = pid;
    for _ in 0..64 {
        if current <= 1 || current == own {
            return None;
        }
        let exe = std::fs::read_link(format!("/proc/{current}/exe")).ok();
        if exe
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "plughost-host")
        {
            return Some(format!("process {pid} descends from plugin host {current}"));
        }
        let stat = std::fs::read_to_string(format!("/proc/{current}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; the last ')' ends it.
        let after = &stat[stat.rfind(')')? + 1..];
        current = after.split_whitespace().nth(1)?.parse().ok()?;
    }
    None
}

impl Daemon {
    /// Why `caller` is a plugin host (or one of its processes), if it is: such a caller is refused
    /// every control request (a program it ran through `exec` would leave the host's seccomp,
    /// `no_new_privs` and Landlock behind).
    ///
    /// The strongest sign is the pid namespace: every process of a host (double-forked and
    /// `setsid()`ed ones included) lives in the one its outer process made. A host's dedicated
    /// user is refused too; `nobody` is not refused by uid alone (ordinary unprivileged clients
    /// run as it), only by the process checks.
    pub fn plugin_host(&self, caller: Caller) -> Option<String> {
        if caller.uid != 0 && caller.uid != NOBODY {
            let uids = lock(&self.host_uids);
            if let Some((_, plugin)) = uids.iter().find(|(uid, _)| *uid == caller.uid) {
                return Some(format!(
                    "uid {} is the user of plugin '{plugin}'",
                    caller.uid
                ));
            }
        }
        if let Some(why) = self.in_a_hosts_pid_namespace(caller.pid) {
            return Some(why);
        }
        host_process(caller.pid)
    }

    /// Why `caller` is a VM's id (its root, or any id its user namespace maps into the pool), if
    /// it is: such a caller is refused every control request. A VM's root can take any of the
    /// 65 536 ids of its range, each a host uid with limits of its own; it reaches the socket
    /// wherever a VM sees the host's `/run` or `/tmp` (a distribution whose rootfs is `/`, a
    /// share), and would otherwise be served as a user.
    pub fn vm_id(&self, caller: Caller) -> Option<String> {
        lock(&self.shared.id_ranges)
            .in_pool(caller.uid)
            .then(|| format!("uid {} is an id of a VM, not a user", caller.uid))
    }

    /// Whether process `pid` lives in the pid namespace of one of our plugin hosts.
    fn in_a_hosts_pid_namespace(&self, pid: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let ns = |path: String| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let peer = ns(format!("/proc/{pid}/ns/pid"))?;
        if Some(peer) == ns("/proc/self/ns/pid".into()) {
            return None;
        }
        let hosts = self
            .with_manager(|m| {
                m.plugins()
                    .into_iter()
                    .filter_map(|p| Some((p.name, p.host_pid?)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        hosts.into_iter().find_map(|(plugin, host)| {
            (ns(format!("/proc/{host}/ns/pid_for_children")) == Some(peer))
                .then(|| format!("process {pid} lives in the pid namespace of plugin '{plugin}'"))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A process whose parent runs a binary named `plughost-host` is a host's: refused.
    #[test]
    fn a_descendant_of_a_host_binary_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake_host = dir.path().join("plughost-host");
        std::fs::copy("/bin/sh", &fake_host).expect("copy sh");
        // ETXTBSY while another test thread's fork still holds the copy's write fd: retry.
        let mut tries = 0;
        let mut shell = loop {
            match std::process::Command::new(&fake_host)
                .args(["-c", "sleep 30; true"])
                .spawn()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.expect("spawn"),
            }
        };
        let children = format!("/proc/{0}/task/{0}/children", shell.id());
        let mut child = None;
        for _ in 0..500 {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            child = text.split_whitespace().next().and_then(|p| p.parse().ok());
            // Once it runs sleep (before its exec it is a copy of the fake host itself).
            let execed = child.is_some_and(|pid: u32| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|n| n != "plughost-host"))
            });
            if execed {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let child: u32 = child.expect("the shell started sleep");
        let why = host_process(child);
        if let Some(pid) = rustix::process::Pid::from_raw(child as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = shell.kill();
        let _ = shell.wait();
        assert_eq!(
            why,
            Some(format!(
                "process {child} descends from plugin host {}",
                shell.id()
            ))
        );
        assert_eq!(host_process(std::process::id()), None);
    }
}
