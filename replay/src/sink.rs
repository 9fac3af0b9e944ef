//! Where replayed alerts go: a trait ([`Sink`]) and an enum in front of it
//! ([`AnySink`]), as at apflow's other backend seams.
//!
//! * [`DirSink`] writes an archive-like tree with `apflow_alert_dist::archive::Archive`
//!   itself (`nights/<day_obs>/alerts-<id>.avro`, `alerts/<id>.avro.gz`,
//!   `schemas/<id>.json`), so a replay's output can be replayed, reported on or served
//!   again; it needs no service, which makes it the sink of tests and rehearsals.
//! * `KafkaSink` (feature `kafka`) produces each burst to one topic: key = the
//!   `diaSourceId` as decimal ASCII and header `producer_timestamp` (ms since the Unix
//!   epoch), as apflow's alert producer does, plus `apflow_replay_generation` (0 when
//!   the ids are the original ones). The client has the alert producer's settings:
//!   the bus's connection and security (`apflow_core::bus::kafka::base_config`), then
//!   idempotence, `acks=all`, compression, batching and timeouts from a
//!   `apflow_alert_dist::producer::ProducerConfig`, then its librdkafka overrides.
//!   apflow's `AlertProducer` itself is not used: it keeps a ledger per (visit,
//!   detector) and reports shutter-to-broker latency metrics, which a replay would
//!   pollute.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;

use apflow_alert_dist::archive::{Archive, ArchiveError};
use apflow_alert_dist::producer::FramedAlert;
use apflow_core::ids::{DetectorId, VisitId};
use thiserror::Error;

#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
pub use kafka::KafkaSink;

/// Why a sink refused or lost alerts.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The directory sink could not write (check the directory and the disk).
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The Kafka client could not be made (check the settings named).
    #[error("kafka sink configuration: {0}")]
    Config(String),
    /// The topic could not be created (check the broker).
    #[error("creating topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// Some alerts of a burst were not acknowledged (retryable: check the broker).
    #[error("visit {visit} detector {detector}: {failed} of {total} alerts undelivered: {reason}")]
    Undelivered {
        /// The visit.
        visit: VisitId,
        /// The detector.
        detector: DetectorId,
        /// Alerts not acknowledged.
        failed: usize,
        /// Alerts in the burst.
        total: usize,
        /// The first error.
        reason: String,
    },
    /// The sink was compiled out.
    #[error("the {0} sink needs apflow built with feature `{0}`")]
    NotBuilt(&'static str),
}

/// A destination for bursts of framed alerts.
pub trait Sink {
    /// Sends one detector's burst; returns once the sink holds every alert (written,
    /// or acknowledged by the broker).
    fn send_burst(
        &mut self,
        visit: VisitId,
        detector: DetectorId,
        alerts: &[FramedAlert],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called once after the last burst.
    fn finish(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// An archive-like directory.
#[derive(Debug)]
pub struct DirSink {
    archive: Archive,
    written: u64,
    duplicates: u64,
}

impl DirSink {
    /// Opens (or creates) the directory `dir` and stores the writer `schemas` (by id)
    /// the alerts are framed with.
    pub fn open(dir: &Path, schemas: &BTreeMap<u32, String>) -> Result<Self, SinkError> {
        let archive = Archive::open(dir)?;
        for (id, schema) in schemas {
            archive.put_schema(*id, schema)?;
        }
        Ok(Self {
            archive,
            written: 0,
            duplicates: 0,
        })
    }

    /// Alerts written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Alerts the directory already held (not written again).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

impl Sink for DirSink {
    fn send_burst(
        &mut self,
        _visit: VisitId,
        _detector: DetectorId,
        alerts: &[FramedAlert],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let r = self.archive.put_batch(alerts).map(|report| {
            self.written += report.written as u64;
            self.duplicates += report.duplicates as u64;
        });
        std::future::ready(r.map_err(SinkError::from))
    }

    fn finish(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The sinks apflow has, picked at run time.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnySink {
    /// [`DirSink`] (boxed: the archive it holds is much larger than the Kafka sink).
    Dir(Box<DirSink>),
    /// `KafkaSink` (feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(KafkaSink),
}

impl Sink for AnySink {
    async fn send_burst(
        &mut self,
        visit: VisitId,
        detector: DetectorId,
        alerts: &[FramedAlert],
    ) -> Result<(), SinkError> {
        match self {
            Self::Dir(s) => s.send_burst(visit, detector, alerts).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.send_burst(visit, detector, alerts).await,
        }
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        match self {
            Self::Dir(s) => s.finish().await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.finish().await,
        }
    }
}
