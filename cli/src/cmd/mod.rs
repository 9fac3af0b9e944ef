//! One module per subcommand.

use std::sync::LazyLock;

use apflow_core::telemetry::http;
use prometheus::{IntCounter, IntCounterVec, register_int_counter, register_int_counter_vec};

pub mod alert;
pub mod alert_dist;
pub mod apdb;
pub mod archive;
pub mod bench;
pub mod bench_alerts;
pub mod camera;
pub mod config;
pub mod detector;
pub mod diffim;
pub mod distribute;
pub mod filter;
pub mod ingest;
pub mod process;
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

/// Visits whose every detector is accounted for (`VisitComplete` published), by result.
pub static VISITS_COMPLETE_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "apflow_visits_complete_total",
        "Visits whose every detector is accounted for (VisitComplete published), by result: \
         alerts, no_alerts (detectors processed, not one alert), failed (no detector processed).",
        &["result"]
    )
    .expect("unique metric")
});

/// Complete visits whose p98 alert latency exceeded the 60 s budget.
pub static VISITS_OVER_BUDGET_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "apflow_visits_over_budget_total",
        "Complete visits whose p98 alert latency from end of readout exceeded the 60 s budget."
    )
    .expect("unique metric")
});

/// The result label of [`VISITS_COMPLETE_TOTAL`] for a visit's `VisitComplete`.
pub fn visit_result(e: &apflow_core::events::VisitComplete) -> &'static str {
    match (e.detectors_done, e.n_alerts) {
        (0, _) => "failed",
        (_, 0) => "no_alerts",
        _ => "alerts",
    }
}

/// Creates the visit series at zero (every `result`), so a scrape shows them before
/// the first visit completes.
pub fn register_visit_metrics() {
    for r in ["alerts", "no_alerts", "failed"] {
        VISITS_COMPLETE_TOTAL.with_label_values(&[r]);
    }
    LazyLock::force(&VISITS_OVER_BUDGET_TOTAL);
}

pub use apflow_core::latency::quantile;
pub use apflow_replay::report::StageTimes;

/// `p50 …, p95 …, p98 …, max …; …% within 60 s` of latencies in seconds (Rubin's
/// budget, [`apflow_core::latency::LATENCY_BUDGET_S`]), or `none`.
pub fn latency_summary(latencies: &[f64]) -> String {
    apflow_core::latency::LatencySummary::of(latencies)
        .map_or_else(|| "none".into(), |s| s.to_string())
}

/// Resolves SIGINT or SIGTERM.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves `router` (build it on [`http::router`]: /metrics and /healthz) on `listen`,
/// else on `[telemetry] metrics_listen`; `None` when the address is empty.
pub(crate) async fn serve_http(
    listen: Option<&str>,
    config: &crate::config::AppConfig,
    router: axum::Router,
) -> std::io::Result<Option<http::Server>> {
    let listen = listen.unwrap_or(&config.telemetry.metrics_listen);
    if listen.is_empty() {
        return Ok(None);
    }
    http::serve(listen, router).await.map(Some)
}

/// Creates, when missing, the full alert topic a consumer of the stream reads (`topic`,
/// else the producer's for the current schema's major version) and the dead-letter
/// topic its bad messages go to; returns the alert topic's name.
pub(crate) async fn ensure_alert_input(
    bus: &apflow_core::bus::Bus,
    config: &crate::config::AppConfig,
    topic: Option<&str>,
) -> anyhow::Result<String> {
    use apflow_core::bus::{TopicSpec, Topics};
    let topic = topic.map_or_else(
        || {
            config
                .producer
                .topic(apflow_alert_dist::schema::SCHEMA_ID / 100)
        },
        str::to_owned,
    );
    let topics = Topics::new(config.bus.topic_prefix.clone());
    bus.ensure_topics(&[
        TopicSpec {
            name: topic.clone(),
            partitions: config.producer.partitions,
        },
        TopicSpec {
            name: topics.of::<apflow_core::events::DeadLetter>(),
            partitions: config.bus.partitions,
        },
    ])
    .await?;
    Ok(topic)
}
