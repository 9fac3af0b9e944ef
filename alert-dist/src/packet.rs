//! Alert packets: one per DiaSource, keyed by `diaSourceId`, assembled from APDB
//! records and serialised to Confluent-framed Avro (schema id 1100).
//!
//! # Contents
//! An [`AlertInput`] holds the triggering DiaSource; its DiaObject (latest version), or
//! the solar-system fields when the source is associated with an SSObject; the
//! DiaObject's DiaSources and forced sources of the previous 12 months
//! ([`AssembleConfig::history_days`]); the three cutouts as FITS ([`crate::fits`]);
//! and the scheduler's observation reason and target name when the `NextVisit` event
//! carried them ([`VisitContext`]).
//!
//! # Serialisation
//! [`AlertEncoder`] writes the Avro binary encoding (Avro specification 1.11, "Binary
//! Encoding": zig-zag varints for `int`/`long`, little-endian IEEE floats, length-
//! prefixed bytes and strings, unions as branch index then value, arrays as one block
//! then 0) directly, driven by the generated schema's field plans
//! ([`crate::schema::alert_schema`]). apache-avro's `Value` path allocates a tree per
//! alert and is ~10× slower; the crate's tests check that our bytes equal apache-avro's
//! encoding of the same values and decode with Rubin's `lsst.v11_0` as reader schema.
//!
//! # Size policy
//! A packet larger than [`AssembleConfig::max_packet_bytes`] (default 1,000,000 bytes,
//! under Kafka's default `message.max.bytes`) is rebuilt with smaller cutouts: the
//! central part of each, side × 3/4 per step, never below
//! [`AssembleConfig::min_cutout_size`] (30 px). If it is still too large at that size,
//! the DiaSource is dead-lettered with [`DeadLetterReason::TooLarge`] — never dropped
//! silently and never sent without its cutouts.

use std::collections::HashMap;
use std::io::Read;

use apflow_apdb::partition::{HISTORY_DAYS, TimeWindow};
use apflow_apdb::schema::{DiaForcedSource, DiaObject, DiaSource, Fields, SsObject, Value};
use apflow_core::events::{ErrorClass, NextVisit};
use apflow_core::ids::{DiaObjectId, DiaSourceId};
use apflow_core::wcs::CardValue;
use apflow_prompt_proc::cutout::CutoutSet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::coords::{ecliptic_j2000, galactic};
use crate::fits::{self, CutoutBytes, FitsError};
use crate::schema::{self, FieldPlan, RecordPlan, SCHEMA_ID, alert_schema};
use crate::wire::{self, HEADER_LEN, WireError, put_bytes, put_long};

/// Why a packet could not be encoded or decoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PacketError {
    /// A required (non-null) field has no value: a bug upstream (the APDB record
    /// violates its own schema). Dead-letter the DiaSource.
    #[error("{record}.{field} is required but null")]
    NullInRequired {
        /// Record name.
        record: &'static str,
        /// Field name.
        field: String,
    },
    /// A value's type is not the field's (the APDB record and the schema disagree).
    #[error("{record}.{field}: value {found} does not fit the field's type {expected}")]
    TypeMismatch {
        /// Record name.
        record: &'static str,
        /// Field name.
        field: String,
        /// The Avro type expected.
        expected: &'static str,
        /// The value found.
        found: String,
    },
    /// Not Confluent-framed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A schema id apflow does not know (only 1100 is built in).
    #[error("unknown schema id {0} (this apflow writes and reads {SCHEMA_ID})")]
    UnknownSchema(u32),
    /// The Avro body does not decode with the writer schema.
    #[error("Avro decoding failed: {0}")]
    Decode(String),
    /// A cutout could not be written.
    #[error(transparent)]
    Fits(#[from] FitsError),
}

/// The scheduler's fields for the visit, from its `NextVisit` event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VisitContext {
    /// Why the scheduler chose the visit (`observation_reason`), if it said.
    pub observation_reason: Option<String>,
    /// The target's name (`target_name`), if it said.
    pub target_name: Option<String>,
}

impl VisitContext {
    /// The fields of a `NextVisit` event.
    pub fn from_next_visit(nv: &NextVisit) -> Self {
        Self {
            observation_reason: nv.scheduler_reason.clone(),
            target_name: nv.target_name.clone(),
        }
    }
}

/// Everything one alert holds, from APDB records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertInput {
    /// The triggering DiaSource.
    pub dia_source: DiaSource,
    /// Its DiaObject (latest version); `None` for a solar-system source.
    pub dia_object: Option<DiaObject>,
    /// The SSObject when `dia_source.ss_object_id` is set and the table knows it (for
    /// the designation); the `ssSource` record is written whenever `ss_object_id` is set.
    pub ss_object: Option<SsObject>,
    /// Previous DiaSources of the DiaObject (oldest first); `None`: not looked up.
    pub prv_dia_sources: Option<Vec<DiaSource>>,
    /// Previous forced sources of the DiaObject (oldest first); `None`: not looked up.
    pub prv_dia_forced_sources: Option<Vec<DiaForcedSource>>,
    /// The scheduler's fields.
    pub context: VisitContext,
    /// The three cutouts as FITS, if cut.
    pub cutouts: Option<CutoutBytes>,
}

/// The `ssSource` values apflow writes, in [`schema::ss_source_columns`] order; `None`
/// when the DiaSource is not associated with an SSObject.
pub fn ss_source_values(ds: &DiaSource, ss: Option<&SsObject>) -> Option<[Value; 7]> {
    let id = ds.ss_object_id?;
    let (lam, beta) = ecliptic_j2000(ds.ra, ds.dec);
    let (l, b) = galactic(ds.ra, ds.dec);
    let designation = ss
        .filter(|s| s.ss_object_id == id)
        .and_then(|s| s.designation.clone())
        .map_or(Value::Null, Value::String);
    Some([
        Value::Long(ds.dia_source_id.0),
        Value::Long(id),
        designation,
        Value::Double(lam),
        Value::Double(beta),
        Value::Double(l),
        Value::Double(b),
    ])
}

fn value_text(v: &Value) -> String {
    format!("{v:?}")
}

#[inline]
fn put_value(
    rec: &'static str,
    f: &FieldPlan,
    v: &Value,
    out: &mut Vec<u8>,
) -> Result<(), PacketError> {
    use apflow_apdb::schema::ColumnType as T;
    match (f.ty, v) {
        (T::Long, Value::Long(x)) => put_long(out, *x),
        (T::Int, Value::Int(x)) => put_long(out, i64::from(*x)),
        (T::Double, Value::Double(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (T::Float, Value::Float(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (T::Boolean, Value::Boolean(x)) => out.push(u8::from(*x)),
        (T::String, Value::String(s)) => put_bytes(out, s.as_bytes()),
        (ty, v) => {
            return Err(PacketError::TypeMismatch {
                record: rec,
                field: f.name.clone(),
                expected: ty.avro_name(),
                found: value_text(v),
            });
        }
    }
    Ok(())
}

/// Encodes one record from its values in column order.
fn put_record(plan: &RecordPlan, values: &[Value], out: &mut Vec<u8>) -> Result<(), PacketError> {
    for f in &plan.fields {
        let v = f
            .source
            .and_then(|i| values.get(i))
            .filter(|v| !matches!(v, Value::Null));
        match (f.nullable, v) {
            (true, None) => out.push(0),
            (true, Some(v)) => {
                out.push(2); // union branch 1, zig-zag
                put_value(plan.name, f, v, out)?;
            }
            (false, Some(v)) => put_value(plan.name, f, v, out)?,
            (false, None) => {
                return Err(PacketError::NullInRequired {
                    record: plan.name,
                    field: f.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The direct Avro encoder of alerts (see the module docs). Reuse one per thread: it
/// keeps a scratch buffer.
#[derive(Debug, Default)]
pub struct AlertEncoder {
    scratch: Vec<Value>,
}

impl AlertEncoder {
    /// A new encoder.
    pub fn new() -> Self {
        Self::default()
    }

    fn record<F: Fields>(
        &mut self,
        plan: &RecordPlan,
        r: &F,
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        self.scratch.clear();
        r.push_values(&mut self.scratch);
        put_record(plan, &self.scratch, out)
    }

    fn array<F: Fields>(
        &mut self,
        plan: &RecordPlan,
        items: Option<&[F]>,
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        match items {
            None => out.push(0),
            Some(items) => {
                out.push(2);
                if !items.is_empty() {
                    put_long(out, items.len() as i64);
                    for r in items {
                        self.record(plan, r, out)?;
                    }
                }
                out.push(0);
            }
        }
        Ok(())
    }

    /// Appends the Avro body (no header) of `a` to `out`. On error `out` may hold a
    /// partial body: truncate it.
    pub fn encode_body(&mut self, a: &AlertInput, out: &mut Vec<u8>) -> Result<(), PacketError> {
        let s = alert_schema();
        let opt_str = |out: &mut Vec<u8>, v: &Option<String>| match v {
            None => out.push(0),
            Some(t) => {
                out.push(2);
                put_bytes(out, t.as_bytes());
            }
        };
        // The order is schema::ALERT_FIELDS.
        put_long(out, a.dia_source.dia_source_id.0);
        opt_str(out, &a.context.observation_reason);
        opt_str(out, &a.context.target_name);
        self.record(&s.dia_source, &a.dia_source, out)?;
        self.array(&s.dia_source, a.prv_dia_sources.as_deref(), out)?;
        self.array(
            &s.dia_forced_source,
            a.prv_dia_forced_sources.as_deref(),
            out,
        )?;
        match &a.dia_object {
            None => out.push(0),
            Some(o) => {
                out.push(2);
                self.record(&s.dia_object, o, out)?;
            }
        }
        match ss_source_values(&a.dia_source, a.ss_object.as_ref()) {
            None => out.push(0),
            Some(v) => {
                out.push(2);
                put_record(&s.ss_source, &v, out)?;
            }
        }
        out.push(0); // mpc_orbits: apflow has no orbits
        match &a.cutouts {
            None => out.extend_from_slice(&[0, 0, 0]),
            Some(c) => {
                for b in [&c.difference, &c.science, &c.template] {
                    out.push(2);
                    put_bytes(out, b);
                }
            }
        }
        Ok(())
    }

    /// Appends the Confluent-framed packet (header with id 1100, then the body).
    pub fn encode_framed(&mut self, a: &AlertInput, out: &mut Vec<u8>) -> Result<(), PacketError> {
        let start = out.len();
        wire::put_header(SCHEMA_ID, out);
        if let Err(e) = self.encode_body(a, out) {
            out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// The framed packet as a new buffer.
    pub fn to_framed(&mut self, a: &AlertInput) -> Result<Vec<u8>, PacketError> {
        let mut out =
            Vec::with_capacity(HEADER_LEN + 4096 + a.cutouts.as_ref().map_or(0, |c| c.len() + 16));
        self.encode_framed(a, &mut out)?;
        Ok(out)
    }
}

/// Tunables of packet assembly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssembleConfig {
    /// Largest framed packet, bytes; larger ones get smaller cutouts or are
    /// dead-lettered (module docs).
    pub max_packet_bytes: usize,
    /// Smallest cutout side when shrinking, pixels.
    pub min_cutout_size: usize,
    /// History window for previous DiaSources and forced sources, days (12 months).
    /// Not read from `[alerts]`: `apflow run` sets it to `[association] history_days`,
    /// the window association read from the APDB (one setting for one window).
    #[serde(skip)]
    pub history_days: f64,
}

impl Default for AssembleConfig {
    fn default() -> Self {
        Self {
            max_packet_bytes: 1_000_000,
            min_cutout_size: 30,
            history_days: HISTORY_DAYS,
        }
    }
}

/// The APDB records and cutouts of one detector-visit, as association left them.
#[derive(Clone, Copy, Debug)]
pub struct AlertSources<'a> {
    /// The visit's new DiaSources (one alert each).
    pub dia_sources: &'a [DiaSource],
    /// Latest versions of their DiaObjects.
    pub dia_objects: &'a [DiaObject],
    /// SSObjects of the solar-system sources (may be empty).
    pub ss_objects: &'a [SsObject],
    /// Earlier DiaSources of those DiaObjects, as read from the APDB.
    pub history: &'a [DiaSource],
    /// Forced sources of those DiaObjects, as read from the APDB.
    pub forced: &'a [DiaForcedSource],
    /// Cutouts by DiaSource.
    pub cutouts: &'a HashMap<DiaSourceId, CutoutSet>,
}

/// One serialised alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    /// The Kafka key.
    pub dia_source_id: DiaSourceId,
    /// The framed bytes.
    pub bytes: Vec<u8>,
    /// Side of the cutouts in the packet, pixels (`None`: no cutouts).
    pub cutout_size: Option<usize>,
    /// Whether the cutouts were shrunk to fit [`AssembleConfig::max_packet_bytes`].
    pub shrunk: bool,
}

/// Why a DiaSource got no alert.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// Over the size limit even with the smallest cutouts.
    #[error(
        "packet of {bytes} bytes with {cutout_size} px cutouts exceeds the limit of {limit} bytes"
    )]
    TooLarge {
        /// Size at the smallest cutouts.
        bytes: usize,
        /// The limit.
        limit: usize,
        /// The cutout side tried last.
        cutout_size: usize,
    },
    /// The DiaSource names a DiaObject that is not among the visit's.
    #[error("DiaObject {0} of the DiaSource is not among the visit's DiaObjects")]
    MissingDiaObject(i64),
    /// The records do not encode.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

impl DeadLetterReason {
    /// Short machine-readable reason, for dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "alert_too_large",
            Self::MissingDiaObject(_) => "alert_missing_dia_object",
            Self::Packet(_) => "alert_unencodable",
        }
    }
    /// A packet over the size limit is bad input; the others are inconsistencies of
    /// apflow's own records (bugs).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::TooLarge { .. } => ErrorClass::BadInput,
            Self::MissingDiaObject(_) | Self::Packet(_) => ErrorClass::Internal,
        }
    }
}

/// A DiaSource dead-lettered with its reason.
#[derive(Debug)]
pub struct DeadLetter {
    /// The DiaSource.
    pub dia_source_id: DiaSourceId,
    /// Why.
    pub reason: DeadLetterReason,
}

/// The result of assembling a detector-visit.
#[derive(Debug, Default)]
pub struct Assembled {
    /// One packet per DiaSource that got one, in input order.
    pub packets: Vec<Packet>,
    /// The others, with reasons.
    pub dead_letters: Vec<DeadLetter>,
}

/// Indexes of the visit's records by DiaObject.
struct Index<'a> {
    objects: HashMap<DiaObjectId, &'a DiaObject>,
    history: HashMap<DiaObjectId, Vec<&'a DiaSource>>,
    forced: HashMap<DiaObjectId, Vec<&'a DiaForcedSource>>,
}

impl<'a> Index<'a> {
    fn new(src: &AlertSources<'a>) -> Self {
        let mut history: HashMap<_, Vec<_>> = HashMap::new();
        for s in src.history {
            if let Some(o) = s.dia_object_id {
                history.entry(o).or_default().push(s);
            }
        }
        let mut forced: HashMap<_, Vec<_>> = HashMap::new();
        for f in src.forced {
            forced.entry(f.dia_object_id).or_default().push(f);
        }
        Self {
            objects: src
                .dia_objects
                .iter()
                .map(|o| (o.dia_object_id, o))
                .collect(),
            history,
            forced,
        }
    }
}

/// The alert input of one DiaSource, without cutouts: its DiaObject, or solar-system
/// fields; previous DiaSources (same DiaObject, other id, midpoint in
/// `[t − history_days, t)`) and forced sources (same window), oldest first.
fn input_for(
    ds: &DiaSource,
    src: &AlertSources<'_>,
    idx: &Index<'_>,
    ctx: &VisitContext,
    cfg: &AssembleConfig,
) -> Result<AlertInput, DeadLetterReason> {
    let history = TimeWindow::days_before(ds.midpoint_mjd_tai, cfg.history_days);
    let window = |m: f64| history.contains(m);
    let mut input = AlertInput {
        dia_source: ds.clone(),
        context: ctx.clone(),
        ..Default::default()
    };
    if let Some(oid) = ds.dia_object_id {
        let o = idx
            .objects
            .get(&oid)
            .ok_or(DeadLetterReason::MissingDiaObject(oid.0))?;
        input.dia_object = Some((*o).clone());
        let mut prv: Vec<DiaSource> = idx
            .history
            .get(&oid)
            .into_iter()
            .flatten()
            .filter(|s| s.dia_source_id != ds.dia_source_id && window(s.midpoint_mjd_tai.0))
            .map(|s| (*s).clone())
            .collect();
        prv.sort_by(|a, b| a.midpoint_mjd_tai.0.total_cmp(&b.midpoint_mjd_tai.0));
        let mut forced: Vec<DiaForcedSource> = idx
            .forced
            .get(&oid)
            .into_iter()
            .flatten()
            .filter(|f| window(f.midpoint_mjd_tai.0))
            .map(|f| (*f).clone())
            .collect();
        forced.sort_by(|a, b| a.midpoint_mjd_tai.0.total_cmp(&b.midpoint_mjd_tai.0));
        input.prv_dia_sources = Some(prv);
        input.prv_dia_forced_sources = Some(forced);
    }
    if let Some(sid) = ds.ss_object_id {
        input.ss_object = src
            .ss_objects
            .iter()
            .find(|s| s.ss_object_id == sid)
            .cloned();
    }
    Ok(input)
}

fn id_card(id: DiaSourceId) -> [apflow_core::wcs::Card; 1] {
    [(
        "DIASRCID".to_string(),
        CardValue::Int(id.0),
        "diaSourceId of the alert".to_string(),
    )]
}

/// Encodes one alert, shrinking the cutouts as the size policy says.
fn packet_for(
    mut input: AlertInput,
    cutouts: Option<&CutoutSet>,
    cfg: &AssembleConfig,
    enc: &mut AlertEncoder,
) -> Result<Packet, DeadLetterReason> {
    let id = input.dia_source.dia_source_id;
    let extra = id_card(id);
    let Some(full) = cutouts else {
        let bytes = enc.to_framed(&input)?;
        if bytes.len() > cfg.max_packet_bytes {
            return Err(DeadLetterReason::TooLarge {
                bytes: bytes.len(),
                limit: cfg.max_packet_bytes,
                cutout_size: 0,
            });
        }
        return Ok(Packet {
            dia_source_id: id,
            bytes,
            cutout_size: None,
            shrunk: false,
        });
    };
    let mut side = full
        .difference
        .masked
        .width()
        .max(full.difference.masked.height());
    let mut current = None;
    loop {
        let set = current.as_ref().unwrap_or(full);
        input.cutouts = Some(fits::cutout_set_fits(set, &extra).map_err(PacketError::from)?);
        let bytes = enc.to_framed(&input)?;
        if bytes.len() <= cfg.max_packet_bytes {
            return Ok(Packet {
                dia_source_id: id,
                bytes,
                cutout_size: Some(side),
                shrunk: current.is_some(),
            });
        }
        let next = (side * 3 / 4).max(cfg.min_cutout_size);
        match fits::crop_set(full, next) {
            Some(c) if next < side => {
                side = next;
                current = Some(c);
            }
            _ => {
                return Err(DeadLetterReason::TooLarge {
                    bytes: bytes.len(),
                    limit: cfg.max_packet_bytes,
                    cutout_size: side,
                });
            }
        }
    }
}

/// Runs `f` on the alert input of every DiaSource of a detector-visit, in order;
/// those that cannot get an alert come back as dead letters.
fn per_source<T>(
    src: &AlertSources<'_>,
    ctx: &VisitContext,
    cfg: &AssembleConfig,
    mut f: impl FnMut(&DiaSource, AlertInput) -> Result<T, DeadLetterReason>,
) -> (Vec<T>, Vec<DeadLetter>) {
    let idx = Index::new(src);
    let (mut ok, mut dead) = (Vec::new(), Vec::new());
    for ds in src.dia_sources {
        match input_for(ds, src, &idx, ctx, cfg).and_then(|input| f(ds, input)) {
            Ok(t) => ok.push(t),
            Err(reason) => dead.push(DeadLetter {
                dia_source_id: ds.dia_source_id,
                reason,
            }),
        }
    }
    (ok, dead)
}

/// One packet per DiaSource of a detector-visit, keyed by `diaSourceId` (module docs).
pub fn assemble(
    src: &AlertSources<'_>,
    ctx: &VisitContext,
    cfg: &AssembleConfig,
    enc: &mut AlertEncoder,
) -> Assembled {
    let (packets, dead_letters) = per_source(src, ctx, cfg, |ds, input| {
        packet_for(input, src.cutouts.get(&ds.dia_source_id), cfg, enc)
    });
    Assembled {
        packets,
        dead_letters,
    }
}

/// The alert inputs of a detector-visit with full-size cutouts, without encoding (for
/// callers that serialise elsewhere, and the benchmarks); DiaSources that cannot get
/// an alert come back as dead letters.
pub fn inputs(
    src: &AlertSources<'_>,
    ctx: &VisitContext,
    cfg: &AssembleConfig,
) -> (Vec<AlertInput>, Vec<DeadLetter>) {
    per_source(src, ctx, cfg, |ds, mut input| {
        if let Some(set) = src.cutouts.get(&ds.dia_source_id) {
            input.cutouts = Some(
                fits::cutout_set_fits(set, &id_card(ds.dia_source_id))
                    .map_err(PacketError::from)?,
            );
        }
        Ok(input)
    })
}

/// A decoded alert: its schema id and the Avro value.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedAlert {
    /// Schema id from the header.
    pub schema_id: u32,
    /// The datum, decoded with the writer schema.
    pub value: apache_avro::types::Value,
}

/// Decodes a framed packet (schema id 1100) with apache-avro.
pub fn decode_framed(msg: &[u8]) -> Result<DecodedAlert, PacketError> {
    let (id, mut body) = wire::unframe(msg)?;
    if id != SCHEMA_ID {
        return Err(PacketError::UnknownSchema(id));
    }
    let writer = schema::cached_writer_schema().map_err(PacketError::Decode)?;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .build()
        .and_then(|r| r.read_value(&mut body))
        .map_err(|e| PacketError::Decode(e.to_string()))?;
    if !body.is_empty() {
        return Err(PacketError::Decode(format!(
            "{} trailing bytes",
            body.len()
        )));
    }
    Ok(DecodedAlert {
        schema_id: id,
        value,
    })
}

/// Reads a packet file: the framed bytes, or gzip-compressed framed bytes
/// (`.avro.gz`, as the archive stores them), told apart by the gzip magic.
pub fn read_packet_bytes(raw: Vec<u8>) -> Result<Vec<u8>, PacketError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| PacketError::Decode(format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The JSON rendering of a decoded alert for people: every field as JSON; each cutout
/// replaced by a summary (`bytes`, `width`, `height`, `crval`) read from its FITS.
pub fn to_json(alert: &DecodedAlert) -> serde_json::Value {
    use apache_avro::types::Value as A;
    fn conv(v: &A) -> serde_json::Value {
        use serde_json::json;
        match v {
            A::Null => serde_json::Value::Null,
            A::Boolean(b) => json!(b),
            A::Int(i) => json!(i),
            A::Long(i) => json!(i),
            A::Float(x) => json!(x),
            A::Double(x) => json!(x),
            A::String(s) => json!(s),
            A::Union(_, b) => conv(b),
            A::Array(items) => serde_json::Value::Array(items.iter().map(conv).collect()),
            A::Record(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| {
                        let jv = match v {
                            A::Union(_, b) if matches!(**b, A::Bytes(_)) => cutout_summary(b),
                            A::Bytes(_) => cutout_summary(v),
                            other => conv(other),
                        };
                        (k.clone(), jv)
                    })
                    .collect(),
            ),
            A::Bytes(b) => json!({ "bytes": b.len() }),
            other => json!(format!("{other:?}")),
        }
    }
    fn cutout_summary(v: &A) -> serde_json::Value {
        use serde_json::json;
        let A::Bytes(b) = v else {
            return serde_json::Value::Null;
        };
        match fits::read_image(b, None) {
            Ok(img) => {
                let crval = img.wcs().ok().map(|w| w.crval_deg);
                json!({"fits_bytes": b.len(), "width": img.width, "height": img.height, "crval_deg": crval})
            }
            Err(e) => json!({"fits_bytes": b.len(), "error": e.to_string()}),
        }
    }
    let mut j = conv(&alert.value);
    if let serde_json::Value::Object(m) = &mut j {
        m.insert("_schema_id".into(), serde_json::json!(alert.schema_id));
    }
    j
}

/// The cutouts of a decoded alert as FITS bytes: `(field name, bytes)` for each present.
pub fn cutouts_of(alert: &DecodedAlert) -> Vec<(&'static str, &[u8])> {
    use apache_avro::types::Value as A;
    let A::Record(fields) = &alert.value else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in ["cutoutDifference", "cutoutScience", "cutoutTemplate"] {
        if let Some((_, v)) = fields.iter().find(|(k, _)| k == name) {
            let v = match v {
                A::Union(_, b) => b.as_ref(),
                v => v,
            };
            if let A::Bytes(b) = v {
                out.push((name, b.as_slice()));
            }
        }
    }
    out
}
