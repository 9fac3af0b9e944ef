//! Alert latency against Rubin's 60 s budget: the budget, quantiles, and the summary
//! carried by `VisitComplete` and printed by `apflow run` and `apflow report`.
//!
//! Rubin's requirement (LPM-17, OTT1) is that 98% of alerts leave within 60 s of the
//! end of readout; the summary therefore reports p50, p95, p98 and the maximum, and
//! the fraction within the budget.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Rubin's latency budget for alerts, seconds (LPM-17, OTT1).
pub const LATENCY_BUDGET_S: f64 = 60.0;

/// The `q` quantile (0–1) of `sorted` (ascending), nearest rank; NaN when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Quantiles of a set of latencies, seconds, against [`LATENCY_BUDGET_S`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// How many latencies (alerts, or detectors) were summarised.
    pub count: u64,
    /// Median.
    pub p50_s: f64,
    /// 95th percentile.
    pub p95_s: f64,
    /// 98th percentile: Rubin's requirement is that it stays within the budget.
    pub p98_s: f64,
    /// The largest.
    pub max_s: f64,
    /// Fraction (0–1) within [`LATENCY_BUDGET_S`].
    pub within_budget: f64,
}

impl LatencySummary {
    /// The summary of `latencies` (seconds, any order; NaNs sort last), `None` when
    /// empty.
    pub fn of(latencies: &[f64]) -> Option<Self> {
        if latencies.is_empty() {
            return None;
        }
        let mut v = latencies.to_vec();
        v.sort_by(f64::total_cmp);
        let within = v.iter().filter(|l| **l <= LATENCY_BUDGET_S).count();
        Some(Self {
            count: v.len() as u64,
            p50_s: quantile(&v, 0.5),
            p95_s: quantile(&v, 0.95),
            p98_s: quantile(&v, 0.98),
            max_s: v[v.len() - 1],
            within_budget: within as f64 / v.len() as f64,
        })
    }

    /// Whether the p98 is within the budget (Rubin's requirement).
    pub fn meets_budget(&self) -> bool {
        self.p98_s <= LATENCY_BUDGET_S
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.3} s, p95 {:.3} s, p98 {:.3} s, max {:.3} s; {:.1}% within {LATENCY_BUDGET_S:.0} s",
            self.p50_s,
            self.p95_s,
            self.p98_s,
            self.max_s,
            100.0 * self.within_budget
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.98), 98.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn summary_counts_what_is_within_the_budget() {
        // 97 alerts at 10 s, 3 at 70 s: p98 over the budget, 97% within.
        let mut v = vec![10.0; 97];
        v.extend([70.0, 70.0, 70.0]);
        v.reverse();
        let s = LatencySummary::of(&v).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(
            (s.p50_s, s.p95_s, s.p98_s, s.max_s),
            (10.0, 10.0, 70.0, 70.0)
        );
        assert!((s.within_budget - 0.97).abs() < 1e-12);
        assert!(!s.meets_budget());
        assert_eq!(
            s.to_string(),
            "p50 10.000 s, p95 10.000 s, p98 70.000 s, max 70.000 s; 97.0% within 60 s"
        );
        assert!(LatencySummary::of(&[1.0, 2.0]).unwrap().meets_budget());
        assert_eq!(LatencySummary::of(&[]), None);
    }
}
