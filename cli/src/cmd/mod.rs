//! One module per subcommand.

use std::sync::LazyLock;

use prometheus::{IntCounter, register_int_counter};

pub mod alert;
pub mod apdb;
pub mod archive;
pub mod bench;
pub mod bench_alerts;
pub mod camera;
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

pub use apflow_core::latency::quantile;
pub use apflow_replay::report::StageTimes;

/// `p50 …, p95 …, p98 …, max …; …% within 60 s` of latencies in seconds (Rubin's
/// budget, [`apflow_core::latency::LATENCY_BUDGET_S`]), or `none`.
pub fn latency_summary(latencies: &[f64]) -> String {
    apflow_core::latency::LatencySummary::of(latencies)
        .map_or_else(|| "none".into(), |s| s.to_string())
}
