//! The Prometheus series of alert distribution (catalogue: `docs/METRICS.md`).
//! Registered in the default registry on first use; [`register`] exports them at zero
//! before the first alert, so dashboards and the catalogue test see them.

use std::sync::LazyLock;

use apflow_core::telemetry::metrics::LATENCY_BUCKETS;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, register_histogram,
    register_histogram_vec, register_int_counter, register_int_counter_vec,
};

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter!(name, help).expect("metric names are unique")
}

/// Alerts the broker acknowledged.
pub static SENT_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "apflow_alerts_sent_total",
        "Alerts acknowledged by the Kafka broker.",
    )
});
/// Bytes of alerts the broker acknowledged (wire bytes, before compression).
pub static SENT_BYTES_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "apflow_alerts_sent_bytes_total",
        "Wire bytes of alerts acknowledged by the Kafka broker, before compression.",
    )
});
/// Alerts not sent because the ledger says a previous run delivered them.
pub static SKIPPED_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "apflow_alerts_skipped_total",
        "Alerts not sent again because the ledger records an earlier delivery.",
    )
});
/// Failed delivery reports, by what happened next (`retried` or `given_up`).
pub static DELIVERY_FAILURES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "apflow_alerts_delivery_failures_total",
            "Failed delivery reports, by outcome (retried or given_up)."
        ),
        &["outcome"]
    )
    .expect("metric names are unique")
});
/// Shutter close until the broker acknowledged the alert.
pub static LATENCY_SINCE_SHUTTER_CLOSE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new(
            "apflow_alerts_latency_since_shutter_close_seconds",
            "Time from shutter close to the broker's acknowledgement, per alert."
        )
        .buckets(LATENCY_BUCKETS.to_vec())
    )
    .expect("metric names are unique")
});
/// End of readout until the broker acknowledged the alert (the 60 s budget's clock);
/// on the embedded bus, until the alert was archived.
pub static LATENCY_SINCE_READOUT_END_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new(
            "apflow_alerts_latency_since_readout_end_seconds",
            "Time from the end of the detector's readout to the broker's acknowledgement \
             (embedded bus: to archival), per alert; the 60 s budget applies to it."
        )
        .buckets(LATENCY_BUCKETS.to_vec())
    )
    .expect("metric names are unique")
});
/// Alerts written to the archive.
pub static ARCHIVED_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "apflow_alerts_archived_total",
        "Alerts written to the alert archive.",
    )
});
/// The operations of the archive's object store (an S3 archive), as the label `op`
/// takes them: `get`, `put` (a schema), `exist` (a batch's HEADs), `create` (a
/// batch's alert objects), `list`, `size` (a night's HEAD), `upload` and `download`
/// (a nightly file).
pub const ARCHIVE_STORE_OPS: [&str; 8] = [
    "get", "put", "exist", "create", "list", "size", "upload", "download",
];
/// Time of the archive's object-store calls (one per batch-level operation, which may
/// be many requests), by `op`.
pub static ARCHIVE_STORE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "apflow_archive_store_seconds",
        "Time of the alert archive's object-store calls (S3), seconds, by operation.",
        &["op"],
        vec![
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0
        ]
    )
    .expect("metric names are unique")
});
/// Failed object-store calls of the archive, by `op`.
pub static ARCHIVE_STORE_ERRORS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "apflow_archive_store_errors_total",
            "Failed object-store calls (S3) of the alert archive, by operation."
        ),
        &["op"]
    )
    .expect("metric names are unique")
});

/// Alerts that matched a filter, per filter name (before the quota).
pub static FILTER_MATCHES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "apflow_filter_matches_total",
            "Alerts that matched a filter, per filter, before its per-visit quota."
        ),
        &["filter"]
    )
    .expect("metric names are unique")
});
/// Matches dropped by a filter's per-visit quota (or a closed visit), per filter name.
pub static FILTER_QUOTA_DROPS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "apflow_filter_quota_drops_total",
            "Filter matches dropped by the filter's per-visit quota, per filter."
        ),
        &["filter"]
    )
    .expect("metric names are unique")
});

/// Matches forwarded to a filter's topic (within its quota), per filter name.
pub static FILTER_PASSED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "apflow_filter_passed_total",
            "Filter matches forwarded to the filter's topic (within its per-visit quota), per filter."
        ),
        &["filter"]
    )
    .expect("metric names are unique")
});
/// Messages the filtering service consumed from the full alert stream.
pub static FILTER_CONSUMED_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "apflow_filter_alerts_consumed_total",
        "Messages the filtering service consumed from the full alert stream.",
    )
});
/// Messages of the alert stream the filtering service could not decode as alerts.
pub static FILTER_BAD_MESSAGES_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "apflow_filter_bad_messages_total",
        "Messages of the alert stream that are not alerts (skipped by the filtering service).",
    )
});
/// Reloads of the filter directory, by outcome (`ok`, or `refused`: the new set did
/// not load and the old one kept running).
pub static FILTER_RELOADS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "apflow_filter_reloads_total",
            "Reloads of the filter directory, by outcome (ok or refused)."
        ),
        &["outcome"]
    )
    .expect("metric names are unique")
});

/// Adds one batch's counts ([`crate::filter::QuotaEngine::take_counts`]) of the filters
/// of `set` to [`FILTER_MATCHES_TOTAL`], [`FILTER_PASSED_TOTAL`] and
/// [`FILTER_QUOTA_DROPS_TOTAL`].
pub fn record_filter_counts(set: &crate::filter::FilterSet, counts: &crate::filter::VisitCounts) {
    for (i, f) in set.filters().iter().enumerate() {
        let (m, p) = (
            counts.matched.get(i).copied().unwrap_or(0),
            counts.passed.get(i).copied().unwrap_or(0),
        );
        FILTER_MATCHES_TOTAL
            .with_label_values(&[f.name.as_str()])
            .inc_by(m);
        FILTER_PASSED_TOTAL
            .with_label_values(&[f.name.as_str()])
            .inc_by(p);
        FILTER_QUOTA_DROPS_TOTAL
            .with_label_values(&[f.name.as_str()])
            .inc_by(m.saturating_sub(p));
    }
}

/// Exports every alert-distribution series (at zero) before first use.
pub fn register() {
    LazyLock::force(&SENT_TOTAL);
    LazyLock::force(&SENT_BYTES_TOTAL);
    LazyLock::force(&SKIPPED_TOTAL);
    for outcome in ["retried", "given_up"] {
        DELIVERY_FAILURES_TOTAL.with_label_values(&[outcome]);
    }
    LazyLock::force(&LATENCY_SINCE_SHUTTER_CLOSE_SECONDS);
    LazyLock::force(&LATENCY_SINCE_READOUT_END_SECONDS);
    LazyLock::force(&ARCHIVED_TOTAL);
    for op in ARCHIVE_STORE_OPS {
        ARCHIVE_STORE_SECONDS.with_label_values(&[op]);
        ARCHIVE_STORE_ERRORS_TOTAL.with_label_values(&[op]);
    }
    LazyLock::force(&FILTER_CONSUMED_TOTAL);
    LazyLock::force(&FILTER_BAD_MESSAGES_TOTAL);
    for outcome in ["ok", "refused"] {
        FILTER_RELOADS_TOTAL.with_label_values(&[outcome]);
    }
}
