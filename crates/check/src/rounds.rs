//! The rounds `plughost check` drives, in order: the lifecycle once (`on_vm_started` →
//! distribution registered, started → container session created → session VM started, stopping →
//! container session stopping → distribution stopping, unregistered → `on_vm_stopping`); every
//! stopping hook for ids never started; two sessions' lifecycles at once; `cycles` lifecycles (fds,
//! threads and memory of the host's processes compared before and after); one lifecycle per
//! documented API error; then a pause for calls from plugin threads after the hooks.

use std::time::{Duration, Instant};

use plughost::{
    ContainerSession, ContainerSessionId, Distribution, DistributionId, HookKind,
    OfflineDistribution, Session, SessionId, VmSettings,
};

use crate::drive::Driver;
use crate::report::Verdict;
use crate::service::{Answer, DOCUMENTED_ERRORS};

/// Processes, fds, threads and resident memory of a host (every process of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub processes: usize,
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

fn session(id: u32) -> Session {
    Session {
        id: SessionId(id),
        uid: 1000 + id,
        gid: 1000 + id,
        user_name: format!("checker{id}"),
    }
}

fn distribution(id: u32) -> Distribution {
    Distribution {
        id: DistributionId([id as u8; 16]),
        name: format!("debian-12-{id}"),
        pid_namespace: 4_026_532_000 + u64::from(id),
        package: "org.debian.bookworm".into(),
        init_pid: 4242,
        flavor: "debian".into(),
        version: "12".into(),
    }
}

fn offline(id: u32) -> OfflineDistribution {
    let d = distribution(id);
    OfflineDistribution {
        id: d.id,
        name: d.name,
        package: d.package,
        flavor: d.flavor,
        version: d.version,
    }
}

fn container_session(id: u32) -> ContainerSession {
    ContainerSession {
        id: ContainerSessionId(id),
        display_name: format!("editor-{id}"),
        application_pid: 4343,
        uid: 1000 + id,
        gid: 1000 + id,
    }
}

impl Driver {
    /// One lifecycle for `id`: every hook in order, stopping early (as a service would) where a
    /// start is vetoed or fails.
    pub fn lifecycle(&self, id: u32) {
        let (s, d, o, c) = (
            session(id),
            distribution(id),
            offline(id),
            container_session(id),
        );
        let service = &*self.service;
        let vm = self.call(HookKind::VmStarted, |me| {
            me.manager.on_vm_started(
                &s,
                &VmSettings { flags: 0 },
                &service.scope(HookKind::VmStarted),
            )
        });
        if !vm {
            return;
        }
        self.call(HookKind::DistributionRegistered, |me| {
            me.manager.on_distribution_registered(
                &s,
                &o,
                &service.scope(HookKind::DistributionRegistered),
            );
            Ok(())
        });
        let distro = self.call(HookKind::DistributionStarted, |me| {
            me.manager.on_distribution_started(
                &s,
                &d,
                &service.scope(HookKind::DistributionStarted),
            )
        });
        if distro {
            let created = self.call(HookKind::ContainerSessionCreated, |me| {
                me.manager.on_container_session_created(
                    &c,
                    &service.scope(HookKind::ContainerSessionCreated),
                )
            });
            if created {
                self.stop_session(id);
            }
        }
        self.stop_the_rest(id, distro);
    }

    /// The distribution's stop (when it `runs`), its unregistration and the VM's stop.
    fn stop_the_rest(&self, id: u32, runs: bool) {
        let (s, d, o) = (session(id), distribution(id), offline(id));
        let service = &*self.service;
        if runs {
            self.call(HookKind::DistributionStopping, |me| {
                me.manager.on_distribution_stopping(
                    &s,
                    &d,
                    &service.scope(HookKind::DistributionStopping),
                );
                Ok(())
            });
        }
        self.call(HookKind::DistributionUnregistered, |me| {
            me.manager.on_distribution_unregistered(
                &s,
                &o,
                &service.scope(HookKind::DistributionUnregistered),
            );
            Ok(())
        });
        self.call(HookKind::VmStopping, |me| {
            me.manager
                .on_vm_stopping(&s, &service.scope(HookKind::VmStopping));
            Ok(())
        });
    }

    /// A container session's VM start and stop, then its stop.
    fn stop_session(&self, id: u32) {
        let c = container_session(id);
        let service = &*self.service;
        for kind in [
            HookKind::SessionVmStarted,
            HookKind::SessionVmStopping,
            HookKind::ContainerSessionStopping,
        ] {
            self.call(kind, |me| {
                let scope = service.scope(kind);
                match kind {
                    HookKind::SessionVmStarted => me.manager.on_session_vm_started(&c, &scope),
                    HookKind::SessionVmStopping => me.manager.on_session_vm_stopping(&c, &scope),
                    _ => me.manager.on_container_session_stopping(&c, &scope),
                }
                Ok(())
            });
        }
    }

    /// Every stopping hook for ids that were never started.
    pub fn stop_unknown(&self) {
        let id = 9_999;
        self.stop_session(id);
        self.stop_the_rest(id, true);
    }

    /// Two sessions' lifecycles on two threads at once.
    pub fn two_at_once(&self) {
        std::thread::scope(|scope| {
            scope.spawn(|| self.lifecycle(2));
            scope.spawn(|| self.lifecycle(3));
        });
    }

    /// `cycles` lifecycles; what the host holds after them must not have grown.
    pub fn cycles(&self, cycles: u32) {
        // Warm up: lazily allocated buffers, thread pools and caches settle first.
        for id in 0..5 {
            self.lifecycle(100 + id);
        }
        let before = self.settled_usage(None);
        for id in 0..cycles {
            self.lifecycle(200 + id % 50);
        }
        let Some(before) = before else {
            self.finding(
                Verdict::Warn,
                "could not read the host's /proc entries: fds, threads and memory not checked"
                    .into(),
            );
            return;
        };
        let after = self.settled_usage(Some(before)).unwrap_or_default();
        let grew = |what: &str, a: u64, b: u64| {
            format!("{what} grew from {a} to {b} across {cycles} lifecycles")
        };
        if after.fds > before.fds {
            self.finding(
                Verdict::Fail,
                grew("open fds", before.fds as u64, after.fds as u64),
            );
        }
        if after.threads > before.threads {
            self.finding(
                Verdict::Fail,
                grew("threads", before.threads as u64, after.threads as u64),
            );
        }
        if after.processes > before.processes {
            self.finding(
                Verdict::Fail,
                grew("processes", before.processes as u64, after.processes as u64),
            );
        }
        if after.rss_kib > before.rss_kib + 4 * 1024 {
            self.finding(
                Verdict::Warn,
                grew("resident memory (KiB)", before.rss_kib, after.rss_kib),
            );
        }
    }

    /// The host's usage once it stops falling (detached threads finishing), at most 3 s; with
    /// `target`, as soon as it is back at or below it.
    fn settled_usage(&self, target: Option<Usage>) -> Option<Usage> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.usage()?;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.usage()?;
            let back = target.is_some_and(|t| {
                now.fds <= t.fds && now.threads <= t.threads && now.processes <= t.processes
            });
            if back || (target.is_none() && now == last) || Instant::now() > deadline {
                return Some(now);
            }
            last = now;
        }
    }

    fn usage(&self) -> Option<Usage> {
        let pid = self.manager.plugins().first()?.host_pid?;
        host_usage(pid)
    }

    /// One lifecycle per documented API error: every call fails with it.
    pub fn error_rounds(&self) {
        for (i, (status, _)) in DOCUMENTED_ERRORS.iter().enumerate() {
            self.service.set_answer(Answer::Error(*status));
            self.lifecycle(400 + i as u32);
        }
        self.service.set_answer(Answer::Success);
    }

    /// Waits for calls plugin threads make after the hooks returned; a crash then is a finding.
    pub fn after_hooks(&self, wait: Duration) {
        let crashes = self.crashes();
        std::thread::sleep(wait);
        if self.crashes() > crashes {
            let last = self
                .manager
                .plugins()
                .first()
                .and_then(|p| p.last_error.clone())
                .unwrap_or_default();
            self.finding(Verdict::Fail, format!("crashed outside any hook: {last}"));
        }
    }
}

/// Sums what `pid` and all its descendants hold (`/proc/PID/task/*/children`).
pub fn host_usage(pid: u32) -> Option<Usage> {
    let mut usage = Usage::default();
    let mut todo = vec![pid];
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        let dir = format!("/proc/{pid}");
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        usage.processes += 1;
        usage.threads += field("Threads:") as usize;
        usage.rss_kib += field("VmRSS:");
        usage.fds += std::fs::read_dir(format!("{dir}/fd")).ok()?.count();
        for task in std::fs::read_dir(format!("{dir}/task")).ok()?.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    Some(usage)
}
