//! Shared foundation of apflow: identifiers, time scales, sky geometry, the events that
//! cross stages, the event bus (in-process or Kafka), layered configuration and
//! telemetry (logs, Prometheus metrics, the `/metrics` and `/healthz` endpoints).
//!
//! Everything here is a library: it never depends on the `apflow` binary.

pub mod bus;
pub mod config;
pub mod events;
pub mod geom;
pub mod ids;
pub mod latency;
pub mod telemetry;
pub mod time;
pub mod wcs;
