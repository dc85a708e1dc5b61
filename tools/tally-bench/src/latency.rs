//! Latency recording: an HDR histogram per connection, merged into one summary per run.
//!
//! Values are recorded in nanoseconds with 3 significant digits (0.1% resolution) from
//! 1 ns to 60 s; longer values are clamped to 60 s so that one stall cannot make the
//! recorder fail, and counted (`latency_clamped` in reports): a `max_us` of 60,000,000
//! with a non-zero count means "at least 60 s". Percentiles are reported in
//! microseconds, the unit the goals use.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// The largest latency recorded exactly; longer ones are clamped to it.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// The latencies of one connection or of a whole run.
#[derive(Clone, Debug)]
pub struct Recorder {
    histogram: Histogram<u64>,
    /// Values above [`LATENCY_NS_MAX`], recorded as it.
    clamped: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            histogram: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
                .expect("bounds 1..60 s with 3 digits are valid"),
            clamped: 0,
        }
    }
}

impl Recorder {
    /// Record one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanoseconds = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.record_ns(nanoseconds);
    }

    /// Record one latency in nanoseconds.
    pub fn record_ns(&mut self, nanoseconds: u64) {
        self.clamped += u64::from(nanoseconds > LATENCY_NS_MAX);
        let clamped = nanoseconds.clamp(1, LATENCY_NS_MAX);
        self.histogram
            .record(clamped)
            .expect("a clamped value is within the histogram's bounds");
    }

    /// Add every value of `other`.
    pub fn merge(&mut self, other: &Recorder) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds merge");
        self.clamped += other.clamped;
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0..=1), in microseconds.
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// The usual percentiles.
    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            mean_us: self.histogram.mean() / 1_000.0,
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.histogram.max() as f64 / 1_000.0,
            latency_clamped: self.clamped,
        }
    }

    /// `(quantile, latency_us)` points from quantile 0 (the minimum) to quantile
    /// `1 - 1/count` (at most 6 nines; at least 0.9), evenly spaced on the "number of
    /// nines" scale that latency plots use. The maximum itself is not a point: it is in
    /// [`Summary::max_us`]. Worked example: 10,000 values give 61 points from quantile
    /// 0 to 0.9999, one every 1/15 of a nine.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.count() == 0 {
            return Vec::new();
        }
        let nines_max = (self.count() as f64).log10().clamp(1.0, 6.0);
        let steps = 60;
        (0..=steps)
            .map(|step| {
                let nines = nines_max * f64::from(step) / f64::from(steps);
                let quantile = 1.0 - 10_f64.powf(-nines);
                (quantile, self.quantile_us(quantile))
            })
            .collect()
    }
}

/// Latency percentiles of a run, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Latencies over 60 s, recorded as 60 s.
    pub latency_clamped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut recorder = Recorder::default();
        for microseconds in 1..=1_000_u64 {
            recorder.record(Duration::from_micros(microseconds));
        }
        let summary = recorder.summary();
        assert_eq!(summary.count, 1_000);
        // 3 significant digits: within 0.1% of the exact order statistic.
        assert!((summary.p50_us - 500.0).abs() <= 0.5, "{summary:?}");
        assert!((summary.p99_us - 990.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.max_us - 1_000.0).abs() <= 1.0, "{summary:?}");
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut fast = Recorder::default();
        let mut slow = Recorder::default();
        fast.record(Duration::from_micros(10));
        slow.record(Duration::from_millis(10));
        fast.merge(&slow);
        assert_eq!(fast.count(), 2);
        assert!(fast.summary().max_us >= 9_990.0);
    }

    #[test]
    fn huge_and_zero_latencies_are_clamped_not_rejected() {
        let mut recorder = Recorder::default();
        recorder.record(Duration::ZERO);
        recorder.record(Duration::from_secs(3_600));
        assert_eq!(recorder.count(), 2);
        assert_eq!(recorder.summary().latency_clamped, 1);
        // 3 significant digits: the maximum is 60 s within 0.1%.
        assert!((recorder.summary().max_us - 60e6).abs() <= 60e3);
    }

    #[test]
    fn curve_rises_with_the_quantile() {
        let mut recorder = Recorder::default();
        for microseconds in 1..=10_000_u64 {
            recorder.record(Duration::from_micros(microseconds));
        }
        let curve = recorder.percentile_curve();
        assert!(curve.windows(2).all(|pair| pair[0].1 <= pair[1].1));
        assert!(curve.last().unwrap().0 > 0.999);
    }
}
