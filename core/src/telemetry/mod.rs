//! Telemetry: structured `tracing` logs, Prometheus metrics, and the HTTP endpoints
//! `/metrics` and `/healthz` that every service serves.
//!
//! Metric names follow `apflow_<component>_<what>_<unit>` (see `docs/METRICS.md`);
//! metrics are emitted from typed events ([`events`]), once per batch, never per pixel.

pub mod events;
pub mod http;
pub mod metrics;

use serde::{Deserialize, Serialize};

/// `[telemetry]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `pretty` (for people) or `json` (for log shippers).
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `apflow_core=debug,info`. `RUST_LOG` wins.
    pub log_level: String,
    /// Where `/metrics` and `/healthz` listen; empty to disable.
    pub metrics_listen: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            metrics_listen: "127.0.0.1:9464".into(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Installs the global log subscriber (to stderr). Calling it twice is harmless.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
