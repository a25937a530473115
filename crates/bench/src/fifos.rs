//! The two FIFOs a bench plugin is driven through (`plugins/c/bench_api.c`,
//! `plugins/c/bench_callbacks.c`): commands of three `u32` words down `ctl`, answers up `done`.
//! Not here: what the commands mean (each case's module).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use plughost::PluginConfig;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::cases::STUCK;
use crate::setup::Env;

pub struct BenchFifos {
    ctl: File,
    done: File,
}

impl BenchFifos {
    /// Makes `<name>.ctl` and `<name>.done` in the bench's scratch directory and opens both;
    /// returns them with `plugin` told where they are (and allowed to write there).
    pub fn open(env: &Env, name: &str, plugin: PluginConfig) -> Result<(BenchFifos, PluginConfig)> {
        let ctl_path = env.fifo(&format!("{name}.ctl"))?;
        let done_path = env.fifo(&format!("{name}.done"))?;
        // Read-write opens of a FIFO never block, and keep it from ever reaching end of file.
        let open = |p: &Path| {
            File::options()
                .read(true)
                .write(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))
        };
        let fifos = BenchFifos {
            ctl: open(&ctl_path)?,
            done: open(&done_path)?,
        };
        // The host confines the plugin's file access (Landlock): open the FIFOs' directory to it.
        let plugin = plugin
            .env("PH_BENCH_CTL", ctl_path.to_string_lossy())
            .env("PH_BENCH_DONE", done_path.to_string_lossy())
            .allow_write(&env.scratch);
        Ok((fifos, plugin))
    }

    /// Sends one command; returns the answer's two head words (failures, calls made).
    pub fn command(&mut self, words: [u32; 3]) -> Result<(u32, u32)> {
        let mut cmd = Vec::with_capacity(12);
        for word in words {
            cmd.extend_from_slice(&word.to_ne_bytes());
        }
        self.ctl
            .write_all(&cmd)
            .context("writing a bench command")?;
        let mut head = [0u8; 8];
        self.read_answer(&mut head)?;
        let word = |i: usize| u32::from_ne_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        Ok((word(0), word(4)))
    }

    /// Fills `buf` from `done`, each read within [`STUCK`].
    pub fn read_answer(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let ts = Timespec {
                tv_sec: STUCK.as_secs() as i64,
                tv_nsec: 0,
            };
            let mut fds = [PollFd::new(&self.done, PollFlags::IN)];
            let ready = poll(&mut fds, Some(&ts)).context("poll on the bench FIFO")?;
            if ready == 0 {
                bail!(
                    "the bench plugin did not answer within {STUCK:?} (can the host's user \
                     open the FIFOs? does its Landlock or seccomp policy refuse them?)"
                );
            }
            let n = self
                .done
                .read(&mut buf[filled..])
                .context("reading the bench FIFO")?;
            ensure!(n > 0, "the bench FIFO closed");
            filled += n;
        }
        Ok(())
    }
}
