//! Samples of one measurement and their summary (median and p99, the slow tail).

/// How a measurement is expressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Micros,
    Millis,
    PerSecond,
    MiB,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Micros => "µs",
            Unit::Millis => "ms",
            Unit::PerSecond => "calls/s",
            Unit::MiB => "MiB",
        }
    }

    /// Plain-ASCII name for the JSON output.
    pub fn key(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::Millis => "ms",
            Unit::PerSecond => "per_s",
            Unit::MiB => "MiB",
        }
    }

    /// A rate: its slow tail is its low end.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Unit::PerSecond)
    }
}

/// One measurement's samples, in its unit.
#[derive(Clone, Debug)]
pub struct Samples {
    pub name: &'static str,
    pub unit: Unit,
    pub values: Vec<f64>,
}

/// What the report shows of [`Samples`].
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    /// The 99th percentile on the slow side: the high end of times, the low end of rates.
    pub p99: f64,
    /// The best sample: the fastest time, the highest rate.
    pub best: f64,
    pub n: usize,
}

impl Samples {
    pub fn new(name: &'static str, unit: Unit) -> Samples {
        Samples {
            name,
            unit,
            values: Vec::new(),
        }
    }

    pub fn summary(&self) -> Option<Summary> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        // Nearest rank: the smallest sample with at least 99% of the samples at or below it.
        let rank = (n * 99).div_ceil(100).max(1);
        let (p99, best) = if self.unit.higher_is_better() {
            (sorted[n - rank], sorted[n - 1])
        } else {
            (sorted[rank - 1], sorted[0])
        };
        Some(Summary {
            median,
            p99,
            best,
            n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_of_a_hundred_samples() {
        let mut s = Samples::new("x", Unit::Micros);
        s.values = (1..=100).rev().map(f64::from).collect();
        let sum = s.summary().unwrap();
        assert_eq!(sum.median, 50.5);
        assert_eq!(sum.p99, 99.0);
        assert_eq!(sum.best, 1.0);
    }

    #[test]
    fn the_slow_tail_of_a_rate_is_its_low_end() {
        let mut s = Samples::new("x", Unit::PerSecond);
        s.values = (1..=100).map(f64::from).collect();
        let sum = s.summary().unwrap();
        assert_eq!(sum.p99, 2.0);
        assert_eq!(sum.best, 100.0);
    }
}
