//! Alert distribution: everything between a detector's associated DiaSources and the
//! bytes a community broker decodes.
//!
//! * [`wire`] — the Confluent wire format (magic byte 0, 4-byte big-endian schema id)
//!   and schema ids (major × 100 + minor).
//! * [`schema`] — the alert writer schema, generated from the APDB schema definition
//!   (`apflow_apdb::schema`) and readable with Rubin's `lsst.v11_0` as reader schema.
//! * [`coords`] — ecliptic and Galactic coordinates for `ssSource`.
//! * [`synth`] — fixed-seed synthetic alert inputs for tests, benches and checks.
//! * [`filter`] — the filter language, filter files, the per-visit quota.
//! * [`thumb`] — zscale + asinh stretch for cutout thumbnails.
//! * [`fits`] — cutouts as in-memory FITS files (flux in nJy, variance, mask, local
//!   WCS, PSF).
//! * [`packet`] — assembling one alert per DiaSource and serialising it.
//! * [`registry`] — the read-only, Confluent-compatible schema registry over HTTP,
//!   and registration in an external one.
//! * [`producer`] — Kafka distribution (the client needs feature `kafka`), and the
//!   `VisitComplete` tally.
//! * [`ledger`] — what the broker acknowledged per (visit, detector), so reruns do not
//!   resend.
//! * [`archive`] — every published alert kept, retrievable by id.
//! * [`metrics`] — the Prometheus series of alert distribution.
//! * [`bench`] — the produce part of `apflow bench alerts`.

#![forbid(unsafe_code)]

pub mod archive;
pub mod bench;
pub mod coords;
pub mod filter;
pub mod fits;
pub mod ledger;
pub mod metrics;
pub mod packet;
pub mod producer;
pub mod registry;
pub mod schema;
pub mod synth;
pub mod thumb;
pub mod wire;
