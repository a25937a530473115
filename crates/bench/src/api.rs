//! The `api_*` cases: every plugin API call kind, with its success and (where the answer differs)
//! its error answer, timed one call at a time in the plugin (`plugins/c/bench_api.c`) from the
//! hook's thread (`_hook`: the hook's dispatcher serves the call with the dispatch's scope) and from
//! a plugin thread outside any hook (`_worker`: the call pool serves it), against the raw round
//! trips of the same run: `raw_rtt` for answers without an fd, `raw_fd_rtt` (the same round trip
//! with one fd passed back by SCM_RIGHTS, [`crate::echo`]) for answers that carry one.
//!
//! All `api_*` cases share one host (one `bench_api` plugin, driven over two FIFOs).

use std::cell::RefCell;
use std::fs::File;
use std::rc::Rc;
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};
use plughost::{PluginConfig, PluginManager, VmSettings};

use crate::cases::Case;
use crate::echo::Echo;
use crate::fifos::BenchFifos;
use crate::setup::{session, Env};
use crate::stats::{Samples, Unit};

/// Every call kind, in `bench_api.c`'s order: its name, and whether its answer carries an fd.
pub const API_KINDS: [(&str, bool); 19] = [
    ("mount_folder", false),
    ("mount_folder_err", false),
    ("execute_binary", true),
    ("execute_binary_err", false),
    ("execute_binary_in_distribution", true),
    ("execute_binary_in_distribution_err", false),
    ("container_mount_folder", false),
    ("container_mount_folder_err", false),
    ("container_unmount_folder", false),
    ("container_unmount_folder_err", false),
    ("container_create_process", false),
    ("container_create_process_err", false),
    ("container_process_get_fd", true),
    ("container_process_get_fd_err", false),
    ("container_process_get_exit_fd", true),
    ("container_process_get_exit_fd_err", false),
    ("container_process_get_exit_code", false),
    ("container_process_get_exit_code_err", false),
    ("container_process_release", false),
];

/// One `api_*` case.
#[derive(Clone, Copy)]
pub struct ApiCaseName {
    pub name: &'static str,
    pub kind: u32,
    pub from_hook: bool,
    /// Its answer carries an fd (its baseline is `raw_fd_rtt`).
    pub fd: bool,
}

/// Every `api_*` case, in report order: `api_<kind>_hook`, `api_<kind>_worker`.
pub fn api_cases() -> &'static [ApiCaseName] {
    static CASES: OnceLock<Vec<ApiCaseName>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut cases = Vec::new();
        for (kind, (name, fd)) in API_KINDS.iter().enumerate() {
            for from_hook in [true, false] {
                let thread = if from_hook { "hook" } else { "worker" };
                cases.push(ApiCaseName {
                    name: Box::leak(format!("api_{name}_{thread}").into_boxed_str()),
                    kind: kind as u32,
                    from_hook,
                    fd: *fd,
                });
            }
        }
        cases
    })
}

const MODE_WORKER: u32 = 1;
const MODE_ARM: u32 = 2;
const MODE_COLLECT: u32 = 3;
/// `bench_api.c`'s MAX_CALLS.
const MAX_CALLS: usize = 4000;

/// The host running `bench_api.c`, shared by every `api_*` case.
pub struct ApiPlugin<'a> {
    env: &'a Env,
    pub manager: PluginManager,
    fifos: BenchFifos,
}

impl<'a> ApiPlugin<'a> {
    pub fn start(env: &'a Env) -> Result<ApiPlugin<'a>> {
        let (fifos, plugin) =
            BenchFifos::open(env, "api", PluginConfig::new("bench_api", &env.api))?;
        let manager = env.ready_manager(vec![plugin])?;
        Ok(ApiPlugin {
            env,
            manager,
            fifos,
        })
    }

    fn command(&mut self, mode: u32, kind: u32, count: u32) -> Result<(u32, u32)> {
        self.fifos.command([mode, kind, count])
    }

    /// The samples of the last WORKER or COLLECT command, in µs.
    fn samples(
        &mut self,
        what: &str,
        head: (u32, u32),
        count: u32,
        out: &mut Vec<f64>,
    ) -> Result<()> {
        let (failures, n) = head;
        ensure!(
            failures == 0 && n == count,
            "{what}: {failures} of {n} calls did not answer as expected"
        );
        let mut raw = vec![0u8; n as usize * 8];
        self.fifos.read_answer(&mut raw)?;
        out.extend(raw.chunks_exact(8).map(|c| {
            let ns = u64::from_ne_bytes(c.try_into().unwrap_or_default());
            ns as f64 / 1e3
        }));
        Ok(())
    }

    /// `count` calls of `kind` from a plugin thread outside any hook.
    fn calls_from_worker(
        &mut self,
        what: &str,
        kind: u32,
        count: u32,
        out: &mut Vec<f64>,
    ) -> Result<()> {
        let head = self.command(MODE_WORKER, kind, count)?;
        self.samples(what, head, count, out)
    }

    /// `count` calls of `kind` from the hook's thread, inside one `on_vm_started`.
    fn calls_from_hook(
        &mut self,
        what: &str,
        kind: u32,
        count: u32,
        out: &mut Vec<f64>,
    ) -> Result<()> {
        self.command(MODE_ARM, kind, count)?;
        self.manager
            .on_vm_started(&session(), &VmSettings::default(), &*self.env.service)
            .with_context(|| format!("{what}: on_vm_started"))?;
        let head = self.command(MODE_COLLECT, kind, count)?;
        self.samples(what, head, count, out)
    }
}

/// One `api_*` case on the shared plugin.
pub struct ApiCase<'a> {
    pub case: ApiCaseName,
    pub plugin: Rc<RefCell<ApiPlugin<'a>>>,
}

impl Case for ApiCase<'_> {
    fn name(&self) -> &'static str {
        self.case.name
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        let mut plugin = self.plugin.borrow_mut();
        let mut left = iterations;
        while left > 0 {
            let n = left.min(MAX_CALLS);
            let (name, kind) = (self.case.name, self.case.kind);
            if self.case.from_hook {
                plugin.calls_from_hook(name, kind, n as u32, &mut out.values)?;
            } else {
                plugin.calls_from_worker(name, kind, n as u32, &mut out.values)?;
            }
            left -= n;
        }
        Ok(())
    }
    fn peers(&self) -> Vec<u32> {
        let plugin = self.plugin.borrow();
        plugin
            .manager
            .plugins()
            .iter()
            .filter_map(|p| p.host_pid)
            .collect()
    }
}

/// raw_fd_rtt: [`Echo`] whose peer answers with one fd (SCM_RIGHTS): the baseline of an API call
/// whose answer carries an fd.
pub struct RawFdRtt(pub Echo);

impl Case for RawFdRtt {
    fn name(&self) -> &'static str {
        "raw_fd_rtt"
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        for _ in 0..iterations {
            out.values.push(self.0.round_trip()?);
        }
        Ok(())
    }
    fn peers(&self) -> Vec<u32> {
        vec![self.0.peer_pid()]
    }
}

/// fd_pass: what passing one fd costs without a wake-up, as the ring's fd lane does it: one
/// `sendmsg` of 8 bytes with an fd (SCM_RIGHTS) and one non-blocking `recvmsg` of it, in this
/// process, and the received fd closed (the service closes its own copy after sending). The target
/// of an API call whose answer carries an fd is `raw_rtt + fd_pass` (issue 14).
pub struct FdPass {
    ours: plughost_sys::Seqpacket,
    theirs: plughost_sys::Seqpacket,
    file: std::fs::File,
}

impl FdPass {
    pub fn new() -> Result<FdPass> {
        let (ours, theirs) = plughost_sys::Seqpacket::pair().context("socketpair")?;
        let file = File::open("/dev/null").context("/dev/null")?;
        Ok(FdPass { ours, theirs, file })
    }
}

impl Case for FdPass {
    fn name(&self) -> &'static str {
        "fd_pass"
    }
    fn unit(&self) -> Unit {
        Unit::Micros
    }
    fn batch(&mut self, iterations: usize, out: &mut Samples) -> Result<()> {
        use std::os::fd::AsFd;
        let mut buf = [0u8; 16];
        let mut fds = Vec::with_capacity(1);
        for _ in 0..iterations {
            let start = std::time::Instant::now();
            self.ours
                .try_send(&7u64.to_le_bytes(), &[self.file.as_fd()])
                .context("fd_pass: send")?;
            let got = self
                .theirs
                .try_recv(&mut buf, &mut fds)
                .context("fd_pass: recv")?;
            fds.clear();
            out.values.push(start.elapsed().as_secs_f64() * 1e6);
            ensure!(got == Some(8), "fd_pass: got {got:?}");
        }
        Ok(())
    }
}
