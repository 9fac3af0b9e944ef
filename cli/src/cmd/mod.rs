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
pub mod distribute;
pub mod filter;
pub mod ingest;
pub mod replay;
pub mod run;
pub mod run_filters;
pub mod simulate;

/// Visits the `run` command's camera has read out.
pub static VISITS_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "apflow_run_visits_total",
        "Visits the run command's camera has read out."
    )
    .expect("unique metric")
});

pub use apflow_replay::report::{LATENCY_BUDGET_S, StageTimes, quantile};

/// `p50 …, p95 …, p98 …, max …; …% within 60 s` of latencies in seconds (Rubin's
/// budget, [`LATENCY_BUDGET_S`]).
pub fn latency_summary(latencies: &[f64]) -> String {
    if latencies.is_empty() {
        return "none".into();
    }
    let mut v = latencies.to_vec();
    v.sort_by(f64::total_cmp);
    let within = v.iter().filter(|l| **l <= LATENCY_BUDGET_S).count();
    format!(
        "p50 {:.3} s, p95 {:.3} s, p98 {:.3} s, max {:.3} s; {:.1}% within {LATENCY_BUDGET_S:.0} s",
        quantile(&v, 0.5),
        quantile(&v, 0.95),
        quantile(&v, 0.98),
        v.last().copied().unwrap_or(f64::NAN),
        100.0 * within as f64 / v.len().max(1) as f64
    )
}
