//! The events that cross stage boundaries.
//!
//! Each event is a JSON document in a versioned envelope:
//!
//! ```json
//! {"type": "RawImageReady", "version": 1, "payload": { ... }}
//! ```
//!
//! `version` is the major version of the payload. A consumer refuses a type or a
//! version it does not know (the message is dead-lettered with the reason). Adding an
//! optional field is a compatible change (`#[serde(default)]`); removing or renaming a
//! field or changing its meaning bumps the version.
//!
//! Events carry visit, detector and the shutter-close / end-of-readout instants, so
//! every stage can measure its latency against the 60 s budget.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::geom::SkyPolygon;
use crate::ids::{DetectorId, ExposureId, VisitId};
use crate::time::MjdTai;

/// An event that crosses a stage boundary.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug + 'static {
    /// The envelope `type`, e.g. `"RawImageReady"`.
    const TYPE: &'static str;
    /// The major version of the payload.
    const VERSION: u32;
    /// The topic's base name (before the configured prefix), e.g. `"raw-image"`.
    const TOPIC: &'static str;
    /// The partition key: the detector for per-detector events, the visit otherwise.
    fn key(&self) -> String;
    /// The visit the event is about, for logs and metrics.
    fn visit(&self) -> Option<VisitId> {
        None
    }
    /// The detector the event is about, for logs and metrics.
    fn detector(&self) -> Option<DetectorId> {
        None
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a, E> {
    #[serde(rename = "type")]
    ty: &'a str,
    version: u32,
    payload: &'a E,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    #[serde(rename = "type")]
    ty: String,
    version: u32,
    payload: serde_json::Value,
}

/// Why bytes could not be decoded as an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a JSON envelope at all.
    #[error("not an event envelope (expected JSON with type, version, payload): {0}")]
    NotAnEnvelope(String),
    /// An envelope of another event type.
    #[error("expected event type {expected}, got {got}")]
    WrongType {
        /// What the consumer reads.
        expected: &'static str,
        /// What the message holds.
        got: String,
    },
    /// A version this build does not read.
    #[error("{ty} version {got} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Event type.
        ty: &'static str,
        /// The message's version.
        got: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The payload does not match the event's fields.
    #[error("{ty} payload is invalid at {path}: {message}")]
    BadPayload {
        /// Event type.
        ty: &'static str,
        /// Path to the offending field.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl DecodeError {
    /// A short, bounded label for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAnEnvelope(_) => "not_an_envelope",
            Self::WrongType { .. } => "wrong_event_type",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::BadPayload { .. } => "bad_payload",
        }
    }
}

/// Encodes an event in its envelope.
pub fn encode<E: Event>(event: &E) -> Vec<u8> {
    serde_json::to_vec(&EnvelopeOut {
        ty: E::TYPE,
        version: E::VERSION,
        payload: event,
    })
    .expect("events serialise to JSON")
}

/// Decodes an event from its envelope.
pub fn decode<E: Event>(bytes: &[u8]) -> Result<E, DecodeError> {
    let env: EnvelopeIn =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::NotAnEnvelope(e.to_string()))?;
    if env.ty != E::TYPE {
        return Err(DecodeError::WrongType {
            expected: E::TYPE,
            got: env.ty,
        });
    }
    if env.version != E::VERSION {
        return Err(DecodeError::UnsupportedVersion {
            ty: E::TYPE,
            got: env.version,
            supported: E::VERSION,
        });
    }
    serde_path_to_error::deserialize(env.payload).map_err(|e| DecodeError::BadPayload {
        ty: E::TYPE,
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// A pointing on the sky.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pointing {
    /// Right ascension of the boresight, degrees.
    pub ra_deg: f64,
    /// Declination of the boresight, degrees.
    pub dec_deg: f64,
    /// Rotation of the camera on the sky (position angle of detector +y, east of north), degrees.
    pub rotation_deg: f64,
}

/// Announced by the scheduler before a visit, so workers preload templates,
/// calibrations and APDB history for the predicted footprint (Rubin's `nextVisit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NextVisit {
    /// The visit.
    pub visit: VisitId,
    /// The scheduler's group name for the visit (snaps and repeats share it).
    pub group: String,
    /// Where the telescope will point.
    pub pointing: Pointing,
    /// Filter band: one of u g r i z y.
    pub band: String,
    /// Total open-shutter time, seconds.
    pub exposure_time_s: f64,
    /// Number of snaps (1 × 30 s or 2 × 15 s).
    pub n_snaps: u8,
    /// Predicted start of the exposure, MJD TAI.
    pub predicted_start: MjdTai,
    /// The predicted footprint of every detector on the sky.
    pub footprint: Vec<DetectorFootprint>,
    /// Why the scheduler chose this visit (survey, ToO, …), if it said.
    #[serde(default)]
    pub scheduler_reason: Option<String>,
    /// The target's name, if it said.
    #[serde(default)]
    pub target_name: Option<String>,
}

/// A detector's predicted footprint on the sky.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorFootprint {
    /// The detector.
    pub detector: DetectorId,
    /// Its corners on the sky.
    pub polygon: SkyPolygon,
}

impl Event for NextVisit {
    const TYPE: &'static str = "NextVisit";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = "next-visit";
    fn key(&self) -> String {
        self.visit.to_string()
    }
    fn visit(&self) -> Option<VisitId> {
        Some(self.visit)
    }
}

/// A raw detector image has been read out and stored (published by ingest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawImageReady {
    /// The visit.
    pub visit: VisitId,
    /// The exposure (snap) within the visit.
    pub exposure: ExposureId,
    /// The detector.
    pub detector: DetectorId,
    /// Where the raw FITS file is (`file://…` or `s3://…`).
    pub image_uri: String,
    /// When the shutter closed, UTC.
    pub shutter_close: DateTime<Utc>,
    /// When the readout ended, UTC: the start of the 60 s alert budget.
    pub readout_end: DateTime<Utc>,
    /// Checksum of the file's bytes, `sha256:<hex>`.
    pub checksum: String,
    /// Size of the file in bytes.
    pub size_bytes: u64,
}

impl Event for RawImageReady {
    const TYPE: &'static str = "RawImageReady";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = "raw-image";
    fn key(&self) -> String {
        self.detector.to_string()
    }
    fn visit(&self) -> Option<VisitId> {
        Some(self.visit)
    }
    fn detector(&self) -> Option<DetectorId> {
        Some(self.detector)
    }
}

/// How a detector's processing ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DetectorStatus {
    /// Every stage ran.
    Ok,
    /// A stage failed; the input was dead-lettered.
    Failed {
        /// The stage that failed.
        stage: String,
        /// What kind of failure.
        class: ErrorClass,
        /// Why, for people.
        reason: String,
    },
}

/// Counts of what a detector produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorCounts {
    /// DiaSources detected and measured.
    pub dia_sources: u32,
    /// DiaObjects created.
    pub new_dia_objects: u32,
    /// Forced-photometry measurements.
    pub forced_sources: u32,
    /// Alerts published.
    pub alerts: u32,
}

/// Time spent in one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// Stage name (`isr`, `subtraction`, …).
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// A detector of a visit has been processed (or has failed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorProcessed {
    /// The visit.
    pub visit: VisitId,
    /// The detector.
    pub detector: DetectorId,
    /// How it ended.
    pub status: DetectorStatus,
    /// What it produced.
    pub counts: DetectorCounts,
    /// Per-stage times.
    pub timings: Vec<StageTiming>,
    /// End of readout of the raw image, UTC.
    pub readout_end: DateTime<Utc>,
    /// When processing finished, UTC.
    pub finished_at: DateTime<Utc>,
    /// How its alerts reached the stream (empty for a failed detector); what the
    /// visit's `VisitComplete` is tallied from.
    #[serde(default)]
    pub delivered: AlertsDelivered,
}

/// A detector's alerts as they reached the stream: acknowledged by Kafka (or archived,
/// on the embedded bus) now, or by an earlier run of the detector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertsDelivered {
    /// Alerts delivered by this run.
    pub sent: u32,
    /// Alerts an earlier run of the detector had delivered (not sent again).
    pub already_sent: u32,
    /// Per alert delivered by this run: end of readout → acknowledgement, seconds.
    pub latencies_s: Vec<f64>,
}

impl Event for DetectorProcessed {
    const TYPE: &'static str = "DetectorProcessed";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = "detector-processed";
    fn key(&self) -> String {
        self.detector.to_string()
    }
    fn visit(&self) -> Option<VisitId> {
        Some(self.visit)
    }
    fn detector(&self) -> Option<DetectorId> {
        Some(self.detector)
    }
}

/// Every detector of a visit is accounted for: Rubin's "Alert Production Complete"
/// and "Number of Alerts" events in one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisitComplete {
    /// The visit.
    pub visit: VisitId,
    /// Alerts published for the visit.
    pub n_alerts: u64,
    /// Detectors that were expected.
    pub detectors_expected: u32,
    /// Detectors processed successfully.
    pub detectors_done: u32,
    /// Detectors that failed (their inputs are in the dead-letter topic).
    pub detectors_failed: Vec<DetectorId>,
    /// When the visit was declared complete, UTC.
    pub completed_at: DateTime<Utc>,
    /// Per alert of the visit sent in this run, seconds from the end of its detector's
    /// readout to its acknowledgement by Kafka (on the embedded bus: to its archival),
    /// against the 60 s budget; `None` when no alert was sent. Absent in events of
    /// older producers (a compatible addition to version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<crate::latency::LatencySummary>,
}

impl Event for VisitComplete {
    const TYPE: &'static str = "VisitComplete";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = "visit-complete";
    fn key(&self) -> String {
        self.visit.to_string()
    }
    fn visit(&self) -> Option<VisitId> {
        Some(self.visit)
    }
}

/// What to do with an error (arroyo's `DataflowError` classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The input is bad: dead-letter it and go on.
    BadInput,
    /// An external system failed: back off and retry.
    Retryable,
    /// A bug or broken invariant: fail loudly.
    Internal,
}

impl ErrorClass {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadInput => "bad_input",
            Self::Retryable => "retryable",
            Self::Internal => "internal",
        }
    }
}

/// The input that could not be processed: its bytes, or where they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Original {
    /// The message's bytes, base64 (standard alphabet).
    Bytes {
        /// base64 of the bytes.
        base64: String,
    },
    /// A reference to a file or object too large to copy.
    Reference {
        /// `file://…` or `s3://…`.
        uri: String,
    },
}

impl Original {
    /// Wraps raw bytes.
    pub fn bytes(b: &[u8]) -> Self {
        use base64::Engine;
        Self::Bytes {
            base64: base64::engine::general_purpose::STANDARD.encode(b),
        }
    }
    /// The bytes, when held inline.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            Self::Bytes { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .ok(),
            Self::Reference { .. } => None,
        }
    }
}

/// An input that a stage could not process, kept with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The input.
    pub original: Original,
    /// The topic it came from, if it came from one.
    #[serde(default)]
    pub source_topic: Option<String>,
    /// The stage that refused it.
    pub stage: String,
    /// A short, bounded reason label (`undecodable`, `missing_header_key`, …).
    pub reason: String,
    /// The full error message.
    pub detail: String,
    /// What kind of failure.
    pub class: ErrorClass,
    /// The visit, if known.
    #[serde(default)]
    pub visit: Option<VisitId>,
    /// The detector, if known.
    #[serde(default)]
    pub detector: Option<DetectorId>,
    /// When it was dead-lettered, UTC.
    pub at: DateTime<Utc>,
}

impl DeadLetter {
    /// A message of the alert stream that is not an alert (reason `not_an_alert`, bad
    /// input): its bytes, where it was read (topic, partition, offset) and why.
    pub fn not_an_alert(
        payload: &[u8],
        topic: &str,
        partition: i32,
        offset: i64,
        stage: &str,
        why: &dyn std::fmt::Display,
    ) -> Self {
        Self {
            original: Original::bytes(payload),
            source_topic: Some(topic.to_owned()),
            stage: stage.to_owned(),
            reason: "not_an_alert".to_owned(),
            detail: format!("{why} (partition {partition}, offset {offset})"),
            class: ErrorClass::BadInput,
            visit: None,
            detector: None,
            at: Utc::now(),
        }
    }
}

impl Event for DeadLetter {
    const TYPE: &'static str = "DeadLetter";
    const VERSION: u32 = 1;
    const TOPIC: &'static str = "dead-letter";
    fn key(&self) -> String {
        self.stage.clone()
    }
    fn visit(&self) -> Option<VisitId> {
        self.visit
    }
    fn detector(&self) -> Option<DetectorId> {
        self.detector
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn raw() -> RawImageReady {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap();
        let visit = VisitId::new(20261122, 5).unwrap();
        RawImageReady {
            visit,
            exposure: ExposureId::new(visit, 0),
            detector: DetectorId(12),
            image_uri: "file:///tmp/x.fits".into(),
            shutter_close: t,
            readout_end: t + chrono::Duration::seconds(2),
            checksum: "sha256:00".into(),
            size_bytes: 10,
        }
    }

    #[test]
    fn envelope_round_trip() {
        let e = raw();
        let bytes = encode(&e);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "RawImageReady");
        assert_eq!(v["version"], 1);
        assert_eq!(decode::<RawImageReady>(&bytes).unwrap(), e);
    }

    #[test]
    fn decode_errors_say_why() {
        let bytes = encode(&raw());
        assert!(matches!(
            decode::<NextVisit>(&bytes),
            Err(DecodeError::WrongType { .. })
        ));
        let v2 = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        let err = decode::<RawImageReady>(v2.as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "unsupported_version");
        assert!(err.to_string().contains("version 2"));
        let bad = String::from_utf8(bytes)
            .unwrap()
            .replace("\"detector\":12", "\"detector\":\"twelve\"");
        let err = decode::<RawImageReady>(bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("detector"), "{err}");
        assert_eq!(
            decode::<RawImageReady>(b"\xff\x00garbage")
                .unwrap_err()
                .reason(),
            "not_an_envelope"
        );
    }

    #[test]
    fn a_visit_complete_without_latency_still_decodes() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap();
        let mut e = VisitComplete {
            visit: VisitId::new(20261122, 5).unwrap(),
            n_alerts: 3,
            detectors_expected: 2,
            detectors_done: 2,
            detectors_failed: vec![],
            completed_at: t,
            latency: crate::latency::LatencySummary::of(&[3.0, 4.0, 5.0]),
        };
        let with = encode(&e);
        assert_eq!(decode::<VisitComplete>(&with).unwrap(), e);
        // An older producer's event has no latency field.
        let v: serde_json::Value = serde_json::from_slice(&with).unwrap();
        assert_eq!(v["payload"]["latency"]["p98_s"], 5.0, "{v}");
        e.latency = None;
        let without = encode(&e);
        assert!(!String::from_utf8_lossy(&without).contains("latency"));
        assert_eq!(decode::<VisitComplete>(&without).unwrap(), e);
    }

    #[test]
    fn dead_letter_keeps_bytes() {
        let o = Original::bytes(b"\x00\x01binary");
        assert_eq!(o.to_bytes().unwrap(), b"\x00\x01binary");
    }
}
