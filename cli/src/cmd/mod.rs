//! One module per subcommand.

use std::sync::LazyLock;

use prometheus::{IntCounter, register_int_counter};

pub mod apdb;
pub mod archive;
pub mod bench;
pub mod bench_alerts;
pub mod config;
pub mod diffim;
pub mod ingest;
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
