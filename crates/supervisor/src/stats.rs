//! Per-plugin counters and hook latency histograms: lock-free, a few atomic adds per hook, kept
//! across restarts of the plugin's host. Rendered by [`crate::metrics`] and
//! [`PluginManager::plugins`](crate::PluginManager::plugins).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use plughost_wire::HookKind;

use crate::error::CrashCause;

/// Histogram buckets: bucket `i` holds latencies below `2^(i/4)` µs (4 buckets per doubling), up to
/// about 2^(63/4) µs ≈ 55 s; the last bucket takes everything above.
const BUCKETS: usize = 64;

/// `ceil(4 × log2(µs))`, from the float's exponent and mantissa: no `log2` call on the hook path
/// (a libm page a dispatch to many cold hosts would touch once per plugin).
fn bucket_of(d: Duration) -> usize {
    /// 2^(1/4), 2^(2/4), 2^(3/4): the quarter-doublings within one power of two.
    const QUARTERS: [f64; 3] = [
        1.189_207_115_002_721,
        std::f64::consts::SQRT_2,
        1.681_792_830_507_429,
    ];
    let us = d.as_secs_f64() * 1e6;
    if us.is_nan() || us <= 1.0 {
        return 0;
    }
    let bits = us.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as usize;
    if exponent < 1023 {
        return 0;
    }
    // The mantissa scaled into [1, 2).
    let mantissa = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let quarter = if mantissa == 1.0 {
        0
    } else {
        1 + QUARTERS.iter().filter(|&&q| mantissa > q).count()
    };
    (4 * (exponent - 1023) + quarter).min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> Duration {
    Duration::from_secs_f64(2f64.powf(i as f64 / 4.0) / 1e6)
}

/// Latencies of one hook kind.
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn record(&self, d: Duration) {
        self.buckets[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (an over-estimate by at most 19%).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(bucket_upper(i));
            }
        }
        Some(bucket_upper(BUCKETS - 1))
    }
}

/// Crash causes, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    Signal,
    Exit,
    ProtocolViolation,
    Hung,
    ChannelClosed,
    BlockedSyscall,
}

impl CrashKind {
    pub const ALL: [CrashKind; 6] = [
        CrashKind::Signal,
        CrashKind::Exit,
        CrashKind::ProtocolViolation,
        CrashKind::Hung,
        CrashKind::ChannelClosed,
        CrashKind::BlockedSyscall,
    ];

    pub fn of(cause: &CrashCause) -> CrashKind {
        match cause {
            CrashCause::Exited(plughost_sys::ProcessExit::Signal { .. })
            | CrashCause::Faulted { .. } => CrashKind::Signal,
            CrashCause::Exited(plughost_sys::ProcessExit::Code(_)) => CrashKind::Exit,
            CrashCause::ProtocolViolation(_) => CrashKind::ProtocolViolation,
            CrashCause::Hung { .. } => CrashKind::Hung,
            CrashCause::ChannelClosed => CrashKind::ChannelClosed,
            CrashCause::BlockedSyscall { .. } => CrashKind::BlockedSyscall,
            CrashCause::LimitExceeded(_)
            | CrashCause::ProbableMemoryLimit { .. }
            | CrashCause::ProbableProcessLimit { .. } => CrashKind::Signal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CrashKind::Signal => "signal",
            CrashKind::Exit => "exit",
            CrashKind::ProtocolViolation => "protocol_violation",
            CrashKind::Hung => "hung",
            CrashKind::ChannelClosed => "channel_closed",
            CrashKind::BlockedSyscall => "blocked_syscall",
        }
    }
}

const NOT_BUSY: u8 = u8::MAX;

/// Everything counted for one plugin.
pub(crate) struct Stats {
    pub hooks: [Histogram; 10],
    pub api_calls: AtomicU64,
    pub restarts: AtomicU64,
    crashes: [AtomicU64; 6],
    /// The hook in flight (`HookKind as u8`, or `NOT_BUSY`) and since when (ns after `epoch`).
    busy_kind: AtomicU8,
    busy_since: AtomicU64,
    epoch: Instant,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hooks: [const { Histogram::new() }; 10],
            api_calls: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            crashes: [const { AtomicU64::new(0) }; 6],
            busy_kind: AtomicU8::new(NOT_BUSY),
            busy_since: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Marks `kind` in flight; returns the start time for [`Stats::hook_done`].
    pub fn hook_started(&self, kind: HookKind) -> Instant {
        let now = Instant::now();
        let since = u64::try_from(now.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        self.busy_since.store(since, Ordering::Relaxed);
        self.busy_kind.store(kind as u8, Ordering::Release);
        now
    }

    pub fn hook_done(&self, kind: HookKind, started: Instant) {
        self.busy_kind.store(NOT_BUSY, Ordering::Release);
        self.hooks[kind as usize].record(started.elapsed());
    }

    /// The hook in flight and for how long.
    pub fn busy(&self) -> Option<(HookKind, Duration)> {
        let kind = self.busy_kind.load(Ordering::Acquire);
        let kind = *HookKind::ALL.get(usize::from(kind))?;
        let since = Duration::from_nanos(self.busy_since.load(Ordering::Relaxed));
        Some((kind, self.epoch.elapsed().saturating_sub(since)))
    }

    pub fn crashed(&self, cause: &CrashCause) {
        let kind = CrashKind::of(cause);
        let index = CrashKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.crashes[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn crashes(&self, kind: CrashKind) -> u64 {
        let index = CrashKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.crashes[index].load(Ordering::Relaxed)
    }

    pub fn total_crashes(&self) -> u64 {
        CrashKind::ALL.iter().map(|k| self.crashes(*k)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_right_buckets() {
        let h = Histogram::new();
        for _ in 0..98 {
            h.record(Duration::from_micros(10));
        }
        h.record(Duration::from_millis(5));
        h.record(Duration::from_millis(5));
        let p50 = h.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(10) && p50 < Duration::from_micros(12),
            "{p50:?}"
        );
        let p99 = h.quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_millis(5) && p99 < Duration::from_millis(6),
            "{p99:?}"
        );
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn buckets_are_quarter_doublings_of_a_microsecond() {
        let of = |us: f64| bucket_of(Duration::from_secs_f64(us / 1e6));
        for (us, bucket) in [
            (0.5, 0),
            (1.0, 0),
            (1.1, 1),
            (1.18, 1),
            (1.2, 2),
            (1.5, 3),
            (1.9, 4),
            (2.0, 4),
            (2.1, 5),
            (1000.0, 40),
            (1e12, BUCKETS - 1),
        ] {
            assert_eq!(of(us), bucket, "{us} µs");
        }
        // The same buckets as ceil(4 × log2(µs)) everywhere away from the exact boundaries.
        for i in 1..2000 {
            let us = 1.0 + f64::from(i) * 0.37;
            let expected = ((us.log2() * 4.0).ceil() as usize).min(BUCKETS - 1);
            assert_eq!(of(us), expected, "{us} µs");
        }
    }

    #[test]
    fn busy_is_reported_while_a_hook_runs() {
        let s = Stats::new();
        assert!(s.busy().is_none());
        let t = s.hook_started(HookKind::VmStarted);
        assert_eq!(s.busy().map(|b| b.0), Some(HookKind::VmStarted));
        s.hook_done(HookKind::VmStarted, t);
        assert!(s.busy().is_none());
        assert_eq!(s.hooks[0].count(), 1);
    }
}
