//! The Prometheus metrics of apflow's shared machinery, registered in the default
//! registry on first use. Components register their own series the same way; the
//! catalogue is in `docs/METRICS.md`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, TextEncoder,
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
};

/// Buckets for operations that take milliseconds to seconds.
pub const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets for latencies against the 60 s alert budget.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(Opts::new(name, help), labels).expect("metric names are unique")
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register_histogram_vec!(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels
    )
    .expect("metric names are unique")
}

/// Messages published, by topic.
pub static BUS_PUBLISHED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "apflow_bus_messages_published_total",
        "Messages published, by topic.",
        &["topic"],
    )
});
/// Messages consumed, by topic.
pub static BUS_CONSUMED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "apflow_bus_messages_consumed_total",
        "Messages consumed, by topic.",
        &["topic"],
    )
});
/// Time from publish to broker acknowledgement.
pub static BUS_PUBLISH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "apflow_bus_publish_duration_seconds",
        "Time from publish to acknowledgement, by backend.",
        &["backend"],
        FAST_BUCKETS,
    )
});
/// Failed bus operations.
pub static BUS_ERRORS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "apflow_bus_errors_total",
        "Failed bus operations, by backend and operation.",
        &["backend", "op"],
    )
});
/// Consumer lag in messages, by topic and consumer group (set by
/// [`crate::bus::spawn_lag_monitor`]).
pub static BUS_CONSUMER_LAG_MESSAGES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        Opts::new(
            "apflow_bus_consumer_lag_messages",
            "Messages a consumer group has not committed yet (sum over the topic's partitions of \
             high watermark minus committed offset), by topic and group."
        ),
        &["topic", "group"]
    )
    .expect("metric names are unique")
});
/// Inputs dead-lettered, by stage and reason.
pub static DEAD_LETTERS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "apflow_dead_letters_total",
        "Inputs sent to the dead-letter topic, by stage and reason.",
        &["stage", "reason"],
    )
});
/// Time spent per pipeline stage.
pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "apflow_stage_duration_seconds",
        "Time spent in each stage per detector.",
        &["stage"],
        FAST_BUCKETS,
    )
});
/// Latency since end of readout when a stage finishes, per stage.
pub static LATENCY_SINCE_READOUT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "apflow_latency_since_readout_seconds",
        "Time from end of readout to the end of a stage, per detector.",
        &["stage"],
        LATENCY_BUCKETS,
    )
});
/// Build information.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        Opts::new("apflow_build_info", "apflow version, always 1."),
        &["version", "features"]
    )
    .expect("metric names are unique")
});

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// Touches the shared series so they are exported (at zero) before first use.
pub fn register_shared(version: &str, features: &str) {
    BUILD_INFO.with_label_values(&[version, features]).set(1);
    LazyLock::force(&BUS_PUBLISHED_TOTAL);
    LazyLock::force(&BUS_CONSUMED_TOTAL);
    LazyLock::force(&BUS_PUBLISH_SECONDS);
    LazyLock::force(&BUS_ERRORS_TOTAL);
    LazyLock::force(&BUS_CONSUMER_LAG_MESSAGES);
    LazyLock::force(&DEAD_LETTERS_TOTAL);
    LazyLock::force(&STAGE_SECONDS);
    LazyLock::force(&LATENCY_SINCE_READOUT_SECONDS);
}
