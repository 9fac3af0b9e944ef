//! Kafka distribution of the alert stream.
//!
//! * **Topics**: one per schema major version, named from a template
//!   ([`ProducerConfig::topic_template`], default `alerts-v{major}`), created with
//!   [`ProducerConfig::partitions`] partitions when missing. A consumer therefore never
//!   meets a schema it cannot read with the reader schema of its major version.
//! * **Messages**: value = the Confluent-framed alert ([`crate::wire`]), key = the
//!   `diaSourceId` as decimal ASCII; headers (milliseconds since the Unix epoch,
//!   decimal ASCII) `producer_timestamp` = when apflow handed the alert to the client,
//!   `shutter_close_timestamp` and `readout_end_timestamp` of the alert's detector, so
//!   a consumer can measure the latency of each alert from the end of readout.
//! * **Delivery**: an idempotent producer (`enable.idempotence=true`, so `acks=all`
//!   and ordered, duplicate-free retries within a session), batched by `linger.ms`,
//!   `batch.num.messages` and `batch.size`, compressed (none, lz4, zstd or snappy).
//!   Alerts of a detector are enqueued without waiting; delivery reports are awaited
//!   afterwards — never a flush per message (Rubin's producer flushes after every
//!   alert; DMTN-028). The detectors of a visit share one client, and the room in its
//!   queue is a semaphore ([`FramedSender`]): a detector that finds the queue full
//!   waits its turn instead of polling. A failed delivery report is retried up to
//!   [`ProducerConfig::retries`] times before the detector is reported as failed.
//! * **Payloads**: alerts come already framed ([`Framed`]: the service, which also
//!   archives the bytes, and replay), or are encoded one at a time as they are handed
//!   to the client ([`Encoding`]), into one buffer that librdkafka copies — so a batch
//!   in flight costs librdkafka's queue, not every packet at once.
//! * **Ledger**: alerts the broker acknowledged are recorded per (visit, detector)
//!   ([`crate::ledger`]); a rerun sends only the others.
//! * **Metrics** (from delivery reports, once per detector batch): alerts and bytes
//!   acknowledged, skipped, failed deliveries, and the latency per alert from shutter
//!   close and from end of readout to acknowledgement ([`crate::metrics`]); the latter
//!   also goes, per visit, into `VisitComplete` ([`VisitTally`]).
//! * **VisitComplete**: [`VisitTally`] gathers detector outcomes into the
//!   `apflow_core::events::VisitComplete` event.
//!
//! The Kafka client itself ([`AlertProducer`]) needs the `kafka` feature.

use std::collections::BTreeSet;
use std::time::Duration;

use apflow_core::events::VisitComplete;
use apflow_core::ids::{DetectorId, VisitId};
use apflow_core::latency::LatencySummary;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg(feature = "kafka")]
pub(crate) mod kafka;
#[cfg(feature = "kafka")]
pub use kafka::{
    AlertProducer, Delivered, FramedSender, ProduceError, Sent, client_config, ensure_topic,
};

/// The header of every alert message: when apflow handed it to the client
/// (milliseconds since the Unix epoch, decimal ASCII).
pub const PRODUCER_TIMESTAMP_HEADER: &str = "producer_timestamp";
/// The header of the alert's detector's shutter close (same encoding).
pub const SHUTTER_CLOSE_HEADER: &str = "shutter_close_timestamp";
/// The header of the alert's detector's end of readout (same encoding).
pub const READOUT_END_HEADER: &str = "readout_end_timestamp";

/// One alert ready for the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramedAlert {
    /// The `diaSourceId` of the triggering DiaSource (the message key).
    pub dia_source_id: i64,
    /// The Confluent-framed Avro datum (`Bytes::from(vec)` takes a `Vec<u8>`
    /// without copying).
    pub framed: bytes::Bytes,
}

/// The alerts a producer sends, by index: already framed ([`Framed`]) or encoded on
/// demand ([`Encoding`]). librdkafka copies a payload when it is handed over, so an
/// implementation may hand out one buffer, overwritten for every alert.
pub trait Payloads {
    /// How many alerts.
    fn len(&self) -> usize;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `diaSourceId` of alert `i` (its message key).
    fn dia_source_id(&self, i: usize) -> i64;
    /// The Confluent-framed bytes of alert `i`, or why there are none (a reason that
    /// names no alert: the caller adds the `diaSourceId`).
    fn payload(&mut self, i: usize) -> Result<&[u8], String>;
}

/// Alerts already framed.
#[derive(Clone, Copy, Debug)]
pub struct Framed<'a>(pub &'a [FramedAlert]);

impl Payloads for Framed<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn dia_source_id(&self, i: usize) -> i64 {
        self.0[i].dia_source_id
    }
    fn payload(&mut self, i: usize) -> Result<&[u8], String> {
        Ok(&self.0[i].framed)
    }
}

/// Alerts encoded one at a time as the producer hands them to the client, into one
/// reused buffer: the memory of a batch in flight is librdkafka's copies, bounded by
/// its queue, not every packet of the batch at once (at Rubin's peak, 40,000 packets
/// are ~3.3 GB, and first touching that much fresh memory costs seconds of kernel
/// time). A retried alert is encoded again.
#[derive(Debug)]
pub struct Encoding<'a> {
    alerts: Vec<(i64, &'a crate::packet::AlertInput)>,
    encoder: crate::packet::AlertEncoder,
    buf: Vec<u8>,
    /// The alert whose encoding `buf` holds.
    holds: Option<usize>,
}

impl<'a> Encoding<'a> {
    /// Alerts keyed by the given `diaSourceId`s.
    pub fn keyed(alerts: Vec<(i64, &'a crate::packet::AlertInput)>) -> Self {
        Self {
            alerts,
            encoder: crate::packet::AlertEncoder::new(),
            buf: Vec::new(),
            holds: None,
        }
    }

    /// Alerts keyed by their triggering DiaSource.
    pub fn of(inputs: &'a [crate::packet::AlertInput]) -> Self {
        Self::keyed(
            inputs
                .iter()
                .map(|a| (a.dia_source.dia_source_id.0, a))
                .collect(),
        )
    }
}

impl Payloads for Encoding<'_> {
    fn len(&self) -> usize {
        self.alerts.len()
    }
    fn dia_source_id(&self, i: usize) -> i64 {
        self.alerts[i].0
    }
    fn payload(&mut self, i: usize) -> Result<&[u8], String> {
        if self.holds != Some(i) {
            self.holds = None;
            self.buf.clear();
            self.encoder
                .encode_framed(self.alerts[i].1, &mut self.buf)
                .map_err(|e| format!("encoding the alert: {e}"))?;
            self.holds = Some(i);
        }
        Ok(&self.buf)
    }
}

/// The alerts of one detector of one visit.
#[derive(Clone, Copy, Debug)]
pub struct DetectorAlerts<'a> {
    /// The visit.
    pub visit: VisitId,
    /// The detector.
    pub detector: DetectorId,
    /// Shutter close of the visit, UTC.
    pub shutter_close: DateTime<Utc>,
    /// End of the detector's readout, UTC: the alert latency budget (60 s) is measured
    /// from it.
    pub readout_end: DateTime<Utc>,
    /// The alerts.
    pub alerts: &'a [FramedAlert],
}

/// Compression of produced batches (`compression.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4 (Kafka's framing).
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
    /// Snappy.
    Snappy,
}

impl Compression {
    /// Every setting, for benchmarks.
    pub const ALL: [Self; 4] = [Self::None, Self::Lz4, Self::Zstd, Self::Snappy];

    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
            Self::Snappy => "snappy",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("compression {s:?} is not one of none, lz4, zstd, snappy"))
    }
}

/// Settings of the alert producer (serde only; the connection and security settings
/// are the bus's `KafkaConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Topic name; `{major}` is replaced by the schema's major version.
    pub topic_template: String,
    /// Partitions of a topic apflow creates (its replication factor is the bus's,
    /// `[bus.kafka] replication_factor`).
    pub partitions: i32,
    /// Batch compression.
    pub compression: Compression,
    /// `linger.ms`: how long to wait to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// `batch.num.messages`: most messages per batch.
    pub batch_num_messages: u32,
    /// `batch.size`: most bytes per batch.
    pub batch_size: u32,
    /// `message.max.bytes`: the largest message (an alert with its cutouts).
    pub message_max_bytes: u32,
    /// `message.timeout.ms`: how long librdkafka keeps trying one message.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// How many times a failed delivery report is retried by apflow.
    pub retries: u32,
    /// Other librdkafka settings, passed as they are.
    pub librdkafka: std::collections::BTreeMap<String, String>,
    /// An external Confluent-compatible schema registry (`http://host[:port][/path]`)
    /// apflow registers its schemas in at start-up, under subjects `<topic>-value`;
    /// empty: none (brokers then use apflow's own read-only registry API).
    pub registry_url: String,
    /// How to register there.
    pub registry: crate::registry::RegisterOptions,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            topic_template: "alerts-v{major}".into(),
            partitions: 8,
            compression: Compression::Lz4,
            linger: Duration::from_millis(5),
            batch_num_messages: 10_000,
            batch_size: 8 << 20,
            message_max_bytes: 8 << 20,
            message_timeout: Duration::from_secs(60),
            retries: 3,
            librdkafka: Default::default(),
            registry_url: String::new(),
            registry: Default::default(),
        }
    }
}

impl ProducerConfig {
    /// The topic of schema major version `major`.
    pub fn topic(&self, major: u32) -> String {
        self.topic_template.replace("{major}", &major.to_string())
    }
}

/// What happened to one detector's alerts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DetectorReport {
    /// Alerts acknowledged by the broker in this call.
    pub sent: u32,
    /// Alerts skipped because the ledger records an earlier delivery.
    pub skipped: u32,
    /// Wire bytes acknowledged in this call.
    pub bytes: u64,
    /// Per alert acknowledged in this call, seconds from the end of the detector's
    /// readout to the acknowledgement.
    pub latencies_s: Vec<f64>,
}

/// Gathers the outcome of each detector of a visit into a
/// [`VisitComplete`] event (Rubin's "Alert Production Complete" and "Number of
/// Alerts").
#[derive(Clone, Debug)]
pub struct VisitTally {
    visit: VisitId,
    expected: u32,
    done: BTreeSet<DetectorId>,
    failed: BTreeSet<DetectorId>,
    alerts: u64,
    latencies_s: Vec<f64>,
}

impl VisitTally {
    /// A visit with `expected` detectors.
    pub fn new(visit: VisitId, expected: u32) -> Self {
        Self {
            visit,
            expected,
            done: BTreeSet::new(),
            failed: BTreeSet::new(),
            alerts: 0,
            latencies_s: Vec::new(),
        }
    }

    /// A detector whose alerts are all published (sent now or by an earlier run).
    /// A detector reported twice counts once; success replaces an earlier failure.
    pub fn done(&mut self, detector: DetectorId, report: &DetectorReport) {
        self.delivered(detector, report.sent, report.skipped, &report.latencies_s);
    }

    /// [`Self::done`] from a detector's `DetectorProcessed`: `sent` alerts now (their
    /// latencies) and `already_sent` by an earlier run.
    pub fn delivered(
        &mut self,
        detector: DetectorId,
        sent: u32,
        already_sent: u32,
        latencies_s: &[f64],
    ) {
        self.failed.remove(&detector);
        if self.done.insert(detector) {
            self.alerts += u64::from(sent) + u64::from(already_sent);
            self.latencies_s.extend_from_slice(latencies_s);
        }
    }

    /// A detector that failed (processing or distribution).
    pub fn failed(&mut self, detector: DetectorId) {
        if !self.done.contains(&detector) {
            self.failed.insert(detector);
        }
    }

    /// Alerts of the detectors done so far.
    pub fn alerts(&self) -> u64 {
        self.alerts
    }

    /// True when every expected detector is done or failed.
    pub fn is_complete(&self) -> bool {
        self.done.len() + self.failed.len() >= self.expected as usize
    }

    /// The event.
    pub fn event(&self, completed_at: DateTime<Utc>) -> VisitComplete {
        VisitComplete {
            visit: self.visit,
            n_alerts: self.alerts,
            detectors_expected: self.expected,
            detectors_done: self.done.len() as u32,
            detectors_failed: self.failed.iter().copied().collect(),
            completed_at,
            latency: LatencySummary::of(&self.latencies_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_named_per_major_version_and_compression_parses() {
        let c = ProducerConfig::default();
        assert_eq!(c.topic(11), "alerts-v11");
        assert_eq!("zstd".parse::<Compression>(), Ok(Compression::Zstd));
        assert!("gzip9".parse::<Compression>().is_err());
        let c: ProducerConfig =
            serde_json::from_str(r#"{"compression":"snappy","linger":"20ms"}"#).unwrap();
        assert_eq!(c.compression, Compression::Snappy);
        assert_eq!(c.linger, Duration::from_millis(20));
        assert!(serde_json::from_str::<ProducerConfig>(r#"{"lingr":"20ms"}"#).is_err());
    }

    #[test]
    fn a_visit_tally_counts_each_detector_once() {
        let v = VisitId(2026112200007);
        let mut t = VisitTally::new(v, 3);
        let r = DetectorReport {
            sent: 5,
            skipped: 2,
            latencies_s: vec![10.0, 11.0, 12.0, 13.0, 70.0],
            ..Default::default()
        };
        t.failed(DetectorId(2));
        t.done(DetectorId(1), &r);
        t.done(DetectorId(1), &r);
        assert!(!t.is_complete());
        t.done(DetectorId(2), &r); // a rerun succeeded
        t.failed(DetectorId(3));
        assert!(t.is_complete());
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let e = t.event(at);
        assert_eq!(e.visit, v);
        assert_eq!(e.n_alerts, 14);
        assert_eq!(e.detectors_expected, 3);
        assert_eq!(e.detectors_done, 2);
        assert_eq!(e.detectors_failed, vec![DetectorId(3)]);
        // The latencies of the two detectors done, each counted once.
        let l = e.latency.expect("alerts were sent");
        assert_eq!(l.count, 10);
        assert_eq!((l.p50_s, l.max_s), (12.0, 70.0));
        assert!((l.within_budget - 0.8).abs() < 1e-12);
        assert_eq!(VisitTally::new(v, 1).event(at).latency, None);
    }
}
