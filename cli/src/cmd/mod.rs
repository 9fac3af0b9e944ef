//! One module per subcommand.

use std::sync::LazyLock;

use prometheus::{IntCounter, register_int_counter};

pub mod alert;
pub mod apdb;
pub mod archive;
pub mod bench;
pub mod bench_alerts;
pub mod config;
pub mod diffim;
pub mod filter;
pub mod ingest;
pub mod replay;
pub mod run;
pub mod simulate;

/// Visits the `run` command's camera has read out.
pub static VISITS_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "apflow_run_visits_total",
        "Visits the run command's camera has read out."
    )
    .expect("unique metric")
});

/// The value at quantile `q` of sorted values (NaN when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Seconds per stage over many detectors, stages in the order first seen.
#[derive(Debug, Default)]
pub struct StageTimes(Vec<(String, Vec<f64>)>);

impl StageTimes {
    /// Adds one detector's seconds in `stage`.
    pub fn add(&mut self, stage: &str, seconds: f64) {
        match self.0.iter_mut().find(|(s, _)| s == stage) {
            Some((_, v)) => v.push(seconds),
            None => self.0.push((stage.to_string(), vec![seconds])),
        }
    }

    /// The median seconds of each stage, in order.
    pub fn medians(&self) -> Vec<(&str, f64)> {
        self.0
            .iter()
            .map(|(s, v)| {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                (s.as_str(), quantile(&v, 0.5))
            })
            .collect()
    }
}

/// `p50 …, p95 …, p98 …, max …; …% within 60 s` of latencies in seconds.
pub fn latency_summary(latencies: &[f64]) -> String {
    if latencies.is_empty() {
        return "none".into();
    }
    let mut v = latencies.to_vec();
    v.sort_by(f64::total_cmp);
    let within = v.iter().filter(|l| **l <= 60.0).count();
    format!(
        "p50 {:.3} s, p95 {:.3} s, p98 {:.3} s, max {:.3} s; {:.1}% within 60 s",
        quantile(&v, 0.5),
        quantile(&v, 0.95),
        quantile(&v, 0.98),
        v.last().copied().unwrap_or(f64::NAN),
        100.0 * within as f64 / v.len().max(1) as f64
    )
}
