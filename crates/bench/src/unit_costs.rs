//! `--unit-costs`: what the building blocks of a round trip cost on this machine, so that a profile
//! (syscalls and wake-ups per operation) can be turned into time: a null syscall, a seqpacket send and
//! receive without any wake-up, an `epoll_ctl`, and a thread hop (a futex wake-up of a parked
//! thread, through `std::thread::park`/`unpark`) on one CPU and across the two.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use plughost_sys::Seqpacket;
use rustix::event::epoll::{self, EventData, EventFlags};

use crate::pin;

const N: u32 = 100_000;

fn per_op(start: Instant, n: u32) -> f64 {
    start.elapsed().as_secs_f64() * 1e9 / f64::from(n)
}

/// Runs `f` on a new thread pinned to `cpu`.
fn on_cpu<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    std::thread::spawn(move || {
        pin::pin_self(cpu)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("unit-cost thread panicked"))?
}

/// Nanoseconds per operation, in report order.
pub fn measure() -> Result<Vec<(&'static str, f64)>> {
    let mut out = Vec::new();
    out.push((
        "null syscall (getppid)",
        on_cpu(0, || {
            let start = Instant::now();
            for _ in 0..N {
                std::hint::black_box(rustix::process::getppid());
            }
            per_op(start, N)
        })?,
    ));
    out.push((
        "Instant::now (vDSO)",
        on_cpu(0, || {
            let start = Instant::now();
            for _ in 0..N {
                std::hint::black_box(Instant::now());
            }
            per_op(start, N)
        })?,
    ));
    let (send, recv) = on_cpu(0, || -> Result<(f64, f64)> {
        let (a, b) = Seqpacket::pair()?;
        let msg = [7u8; 19];
        let mut buf = vec![0u8; plughost_wire::MAX_FRAME];
        let mut fds = Vec::new();
        let (mut send, mut recv) = (0.0, 0.0);
        for _ in 0..N {
            let t0 = Instant::now();
            a.send(&msg, &[])?;
            let t1 = Instant::now();
            b.recv(&mut buf, &mut fds)?;
            send += (t1 - t0).as_secs_f64();
            recv += t1.elapsed().as_secs_f64();
        }
        Ok((send * 1e9 / f64::from(N), recv * 1e9 / f64::from(N)))
    })??;
    out.push(("seqpacket send, 19 B, no wake-up", send));
    out.push(("seqpacket recv, 19 B, queued", recv));
    out.push((
        "epoll_ctl MOD (arm/disarm)",
        on_cpu(0, || -> Result<f64> {
            let (a, _b) = Seqpacket::pair()?;
            let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            let data = EventData::new_u64(1);
            epoll::add(&ep, &a, data, EventFlags::ONESHOT)?;
            let start = Instant::now();
            for i in 0..N {
                let flags = if i % 2 == 0 {
                    EventFlags::IN | EventFlags::ONESHOT
                } else {
                    EventFlags::ONESHOT
                };
                epoll::modify(&ep, &a, data, flags)?;
            }
            Ok(per_op(start, N))
        })??,
    ));
    out.push(("thread hop, same CPU (park/unpark)", hop(0, 0)?));
    out.push(("thread hop, across vCPUs (park/unpark)", hop(0, 1)?));
    Ok(out)
}

/// One hop = half a ping-pong between two threads that park in turn.
fn hop(cpu_a: usize, cpu_b: usize) -> Result<f64> {
    const ROUNDS: u32 = 20_000;
    // 0: A's turn, 1: B's turn.
    let turn = Arc::new(AtomicU32::new(0));
    let ready = Arc::new(AtomicBool::new(false));
    let a = std::thread::current();
    let (turn_b, ready_b) = (turn.clone(), ready.clone());
    let b = std::thread::spawn(move || -> Result<()> {
        pin::pin_self(cpu_b)?;
        ready_b.store(true, Ordering::Release);
        for _ in 0..ROUNDS {
            while turn_b.load(Ordering::Acquire) != 1 {
                std::thread::park();
            }
            turn_b.store(0, Ordering::Release);
            a.unpark();
        }
        Ok(())
    });
    let result = on_this_thread(cpu_a, || {
        while !ready.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let start = Instant::now();
        for _ in 0..ROUNDS {
            turn.store(1, Ordering::Release);
            b.thread().unpark();
            while turn.load(Ordering::Acquire) != 0 {
                std::thread::park();
            }
        }
        per_op(start, ROUNDS) / 2.0
    });
    let joined = b
        .join()
        .map_err(|_| anyhow::anyhow!("hop thread panicked"))?;
    joined.context("hop thread")?;
    result
}

/// Runs `f` on the calling thread pinned to `cpu`, then restores its previous affinity.
fn on_this_thread<T>(cpu: usize, f: impl FnOnce() -> T) -> Result<T> {
    let before = rustix::thread::sched_getaffinity(None).context("sched_getaffinity")?;
    pin::pin_self(cpu)?;
    let result = f();
    rustix::thread::sched_setaffinity(None, &before).context("restoring the affinity")?;
    Ok(result)
}
