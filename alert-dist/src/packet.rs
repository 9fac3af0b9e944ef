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
//! then 0) directly from the typed APDB records: each record hands its fields to a
//! [`FieldVisitor`] ([`Fields::visit_values`]), no `Value` is built. Per record, a plan
//! is precomputed once from the generated schema ([`crate::schema::alert_schema`]):
//! when the writer's field order follows the record's column order (diaSource,
//! diaForcedSource, ssSource) the record is written in one pass at a cursor in a
//! scratch buffer, the always-null fields in between; otherwise (diaObject, whose
//! per-band fields lsst.v11_0 orders differently) the columns are encoded and then
//! copied in writer order, in runs. The packet buffer is reserved at once from the
//! cutouts' size and the last packet's, and each cutout's bytes are copied once.
//! apache-avro's `Value` path allocates a tree per alert and is ~30× slower; the
//! crate's tests check that our bytes equal apache-avro's encoding of the same values
//! (fixed alerts, and a fixed-seed property test over random records) and decode with
//! Rubin's `lsst.v11_0` as reader schema.
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
use std::sync::LazyLock;

use apflow_apdb::partition::{HISTORY_DAYS, TimeWindow};
use apflow_apdb::schema::{
    ColumnType, DiaForcedSource, DiaObject, DiaSource, FieldVisitor, Fields, Record, SsObject,
    Value,
};
use apflow_core::events::{ErrorClass, NextVisit};
use apflow_core::ids::{DiaObjectId, DiaSourceId};
use apflow_core::wcs::CardValue;
use apflow_prompt_proc::cutout::CutoutSet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::coords::{ecliptic_j2000, galactic};
use crate::fits::{self, CutoutBytes, FitsError};
use crate::schema::{self, RecordPlan, SCHEMA_ID, alert_schema};
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
    /// A record handed the encoder another number of columns than its schema plan
    /// has (the APDB record and its column list disagree: a bug).
    #[error("{record}: the record has {found} columns, the schema plan {expected}")]
    ColumnCount {
        /// Record name.
        record: &'static str,
        /// Columns in the plan.
        expected: usize,
        /// Columns visited.
        found: usize,
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

/// The `ssSource` row of a DiaSource associated with an SSObject, in
/// [`schema::ss_source_columns`] order.
struct SsSourceRow<'a> {
    dia_source_id: i64,
    ss_object_id: i64,
    designation: Option<&'a str>,
    ecl: (f64, f64),
    gal: (f64, f64),
}

impl<'a> SsSourceRow<'a> {
    /// `None` when the DiaSource is not associated with an SSObject.
    fn of(ds: &DiaSource, ss: Option<&'a SsObject>) -> Option<Self> {
        let id = ds.ss_object_id?;
        Some(Self {
            dia_source_id: ds.dia_source_id.0,
            ss_object_id: id,
            designation: ss
                .filter(|s| s.ss_object_id == id)
                .and_then(|s| s.designation.as_deref()),
            ecl: ecliptic_j2000(ds.ra, ds.dec),
            gal: galactic(ds.ra, ds.dec),
        })
    }

    /// The values in column order, as [`Fields::visit_values`] hands a record's.
    fn visit<V: FieldVisitor>(&self, v: &mut V) {
        v.long(self.dia_source_id);
        v.long(self.ss_object_id);
        match self.designation {
            Some(d) => v.string(d),
            None => v.null(),
        }
        v.double(self.ecl.0);
        v.double(self.ecl.1);
        v.double(self.gal.0);
        v.double(self.gal.1);
    }
}

/// The `ssSource` values apflow writes, in [`schema::ss_source_columns`] order; `None`
/// when the DiaSource is not associated with an SSObject.
pub fn ss_source_values(ds: &DiaSource, ss: Option<&SsObject>) -> Option<[Value; 7]> {
    let r = SsSourceRow::of(ds, ss)?;
    Some([
        Value::Long(r.dia_source_id),
        Value::Long(r.ss_object_id),
        r.designation
            .map_or(Value::Null, |d| Value::String(d.to_owned())),
        Value::Double(r.ecl.0),
        Value::Double(r.ecl.1),
        Value::Double(r.gal.0),
        Value::Double(r.gal.1),
    ])
}

/// A row the encoder writes: an APDB record, or the computed `ssSource` row.
trait Row {
    /// Hands the values to `v` in column order.
    fn visit<V: FieldVisitor>(&self, v: &mut V);
}

impl<F: Fields> Row for F {
    #[inline(always)]
    fn visit<V: FieldVisitor>(&self, v: &mut V) {
        self.visit_values(v);
    }
}

impl Row for SsSourceRow<'_> {
    fn visit<V: FieldVisitor>(&self, v: &mut V) {
        SsSourceRow::visit(self, v);
    }
}

/// How one column of an APDB record enters its Avro record.
#[derive(Clone, Copy, Debug)]
struct ColumnSpec {
    /// The Avro type written (the column's).
    ty: ColumnType,
    /// Written as the union `["null", ty]`.
    nullable: bool,
    /// Some field of the writer schema takes its value (`local` columns are not).
    used: bool,
}

/// A run of a record's fields in writer order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Segment {
    /// This many always-null fields (`["null", T]`, branch 0: one zero byte each).
    Nulls(usize),
    /// The encodings of columns `.0 .. .1`, consecutive in column order and in writer
    /// order: copied as one slice.
    Columns(usize, usize),
}

/// A record's encoding plan, precomputed once from the schema's [`RecordPlan`]: per
/// column, its type and union-ness; per writer field run, where the bytes come from.
#[derive(Debug)]
struct EncodePlan {
    /// Avro record name, for errors.
    record: &'static str,
    /// One per column of the source record, in column order.
    columns: Vec<ColumnSpec>,
    /// The writer field of each column, for errors.
    names: Vec<String>,
    /// The record's fields in writer order.
    segments: Vec<Segment>,
    /// When the writer order follows the column order (every shipped record): one op
    /// per column, for [`StreamWriter`], which writes the final bytes in one pass.
    stream: Option<Vec<ColumnOp>>,
    /// Always-null fields after the last column (with `stream`).
    trailing_nulls: usize,
}

/// One column of a record written in column order ([`EncodePlan::stream`]).
#[derive(Clone, Copy, Debug)]
struct ColumnOp {
    /// Always-null fields of the writer schema right before this column's field.
    nulls_before: u32,
    /// The column's spec.
    spec: ColumnSpec,
}

impl EncodePlan {
    /// The plan of `plan` over a source record of `n_columns` columns.
    fn new(plan: &RecordPlan, n_columns: usize) -> Self {
        let mut columns = vec![
            ColumnSpec {
                ty: ColumnType::Long,
                nullable: false,
                used: false,
            };
            n_columns
        ];
        let mut names = vec![String::new(); n_columns];
        let mut segments: Vec<Segment> = Vec::new();
        for f in &plan.fields {
            let seg = match f.source {
                // A source beyond the record's columns cannot be visited: the count
                // check in `AlertEncoder::record` reports it.
                Some(i) if i < n_columns => {
                    columns[i] = ColumnSpec {
                        ty: f.ty,
                        nullable: f.nullable,
                        used: true,
                    };
                    names[i].clone_from(&f.name);
                    Segment::Columns(i, i + 1)
                }
                Some(i) => Segment::Columns(i, i + 1),
                None => Segment::Nulls(1),
            };
            match (segments.last_mut(), seg) {
                (Some(Segment::Nulls(n)), Segment::Nulls(_)) => *n += 1,
                (Some(Segment::Columns(_, end)), Segment::Columns(a, b)) if *end == a => *end = b,
                _ => segments.push(seg),
            }
        }
        // The one-pass plan, when each sourced field follows the previous one's column.
        let mut stream: Option<Vec<ColumnOp>> = Some(
            columns
                .iter()
                .map(|&spec| ColumnOp {
                    nulls_before: 0,
                    spec,
                })
                .collect(),
        );
        let (mut pending, mut last) = (0u32, None);
        for f in &plan.fields {
            match (f.source, stream.as_mut()) {
                (None, _) => pending += 1,
                (Some(i), Some(ops)) if i < n_columns && last.is_none_or(|l| i > l) => {
                    ops[i].nulls_before = pending;
                    pending = 0;
                    last = Some(i);
                }
                _ => stream = None,
            }
        }
        Self {
            record: plan.name,
            columns,
            names,
            segments,
            stream,
            trailing_nulls: pending as usize,
        }
    }

    /// The error a writer recorded at column `i`.
    #[cold]
    fn error(&self, i: usize, fail: Fail) -> PacketError {
        let field = self.names.get(i).cloned().unwrap_or_default();
        match fail {
            Fail::Null => PacketError::NullInRequired {
                record: self.record,
                field,
            },
            Fail::Type(found) => PacketError::TypeMismatch {
                record: self.record,
                field,
                expected: self.columns.get(i).map_or("?", |c| c.ty.avro_name()),
                found: format!("a {} value", found.avro_name()),
            },
        }
    }
}

/// What went wrong at a column (turned into a [`PacketError`] by [`EncodePlan::error`]).
#[derive(Clone, Copy, Debug)]
enum Fail {
    /// A null in a non-nullable field.
    Null,
    /// A value of this type in a field of another.
    Type(ColumnType),
}

/// Writes a record whose writer order follows its column order in one pass over its
/// columns, into a plain byte slice at a cursor (no `Vec` length and capacity update
/// per byte). The slice is a scratch buffer: when a value does not fit (a long
/// string), `short` is set, writing goes on counting bytes, and the caller grows the
/// buffer to `pos` and writes the record again.
struct StreamWriter<'a> {
    ops: &'a [ColumnOp],
    buf: &'a mut [u8],
    pos: usize,
    /// The column being visited.
    i: usize,
    short: bool,
    err: Option<(usize, Fail)>,
}

impl StreamWriter<'_> {
    /// Writes `b` at the cursor.
    #[inline(always)]
    fn put<const N: usize>(&mut self, b: [u8; N]) {
        match self.buf.get_mut(self.pos..self.pos + N) {
            Some(d) => d.copy_from_slice(&b),
            None => self.short = true,
        }
        self.pos += N;
    }

    /// Writes `n` zero bytes (`n` null branches).
    #[inline]
    fn zeros(&mut self, n: usize) {
        match self.buf.get_mut(self.pos..self.pos + n) {
            Some(d) => d.fill(0),
            None => self.short = true,
        }
        self.pos += n;
    }

    /// An Avro `long`: zig-zag varint, written as ten bytes of which the first `n`
    /// count (the rest is overwritten next or lies past the end).
    #[inline(always)]
    fn long(&mut self, v: i64) {
        let z = ((v << 1) ^ (v >> 63)) as u64;
        if z < 0x80 {
            self.put([z as u8]);
            return;
        }
        let (b, len) = crate::wire::long_bytes(v);
        match self.buf.get_mut(self.pos..self.pos + 10) {
            Some(d) => d.copy_from_slice(&b),
            None => self.short = true,
        }
        self.pos += len;
    }

    /// Starts the current column's field when it is written and has type `ty`:
    /// the always-null fields before it, then the union branch of a nullable one.
    #[inline(always)]
    fn begin(&mut self, ty: ColumnType) -> bool {
        let Some(&op) = self.ops.get(self.i) else {
            return false;
        };
        if !op.spec.used {
            return false;
        }
        if op.nulls_before != 0 {
            self.zeros(op.nulls_before as usize);
        }
        if op.spec.ty != ty {
            self.fail(Fail::Type(ty));
            return false;
        }
        if op.spec.nullable {
            self.put([2]); // union branch 1, zig-zag
        }
        true
    }

    #[cold]
    fn fail(&mut self, f: Fail) {
        self.err.get_or_insert((self.i, f));
    }
}

impl FieldVisitor for StreamWriter<'_> {
    #[inline(always)]
    fn null(&mut self) {
        if let Some(&op) = self.ops.get(self.i)
            && op.spec.used
        {
            if op.nulls_before != 0 {
                self.zeros(op.nulls_before as usize);
            }
            if op.spec.nullable {
                self.put([0]);
            } else {
                self.fail(Fail::Null);
            }
        }
        self.i += 1;
    }
    #[inline(always)]
    fn long(&mut self, v: i64) {
        if self.begin(ColumnType::Long) {
            StreamWriter::long(self, v);
        }
        self.i += 1;
    }
    #[inline(always)]
    fn int(&mut self, v: i32) {
        if self.begin(ColumnType::Int) {
            StreamWriter::long(self, i64::from(v));
        }
        self.i += 1;
    }
    #[inline(always)]
    fn double(&mut self, v: f64) {
        if self.begin(ColumnType::Double) {
            self.put(v.to_le_bytes());
        }
        self.i += 1;
    }
    #[inline(always)]
    fn float(&mut self, v: f32) {
        if self.begin(ColumnType::Float) {
            self.put(v.to_le_bytes());
        }
        self.i += 1;
    }
    #[inline(always)]
    fn boolean(&mut self, v: bool) {
        if self.begin(ColumnType::Boolean) {
            self.put([u8::from(v)]);
        }
        self.i += 1;
    }
    #[inline(always)]
    fn string(&mut self, v: &str) {
        if self.begin(ColumnType::String) {
            match *v.as_bytes() {
                // Bands are one letter: no call to memcpy for a byte.
                [a] => self.put([2, a]),
                [a, b] => self.put([4, a, b]),
                _ => {
                    StreamWriter::long(self, v.len() as i64);
                    match self.buf.get_mut(self.pos..self.pos + v.len()) {
                        Some(d) => d.copy_from_slice(v.as_bytes()),
                        None => self.short = true,
                    }
                    self.pos += v.len();
                }
            }
        }
        self.i += 1;
    }
}

/// The encoding plans of the alert's records, built once from [`alert_schema`].
struct Plans {
    dia_source: EncodePlan,
    dia_object: EncodePlan,
    dia_forced_source: EncodePlan,
    ss_source: EncodePlan,
}

fn plans() -> &'static Plans {
    static PLANS: LazyLock<Plans> = LazyLock::new(|| {
        let s = alert_schema();
        Plans {
            dia_source: EncodePlan::new(&s.dia_source, DiaSource::columns().len()),
            dia_object: EncodePlan::new(&s.dia_object, DiaObject::columns().len()),
            dia_forced_source: EncodePlan::new(
                &s.dia_forced_source,
                DiaForcedSource::columns().len(),
            ),
            ss_source: EncodePlan::new(&s.ss_source, schema::ss_source_columns().len()),
        }
    });
    &PLANS
}

/// Writes each visited column's Avro encoding (union branch included) into a scratch
/// buffer and marks where it ends; the first error is kept.
struct ColumnWriter<'a> {
    plan: &'a EncodePlan,
    buf: &'a mut Vec<u8>,
    ends: &'a mut Vec<usize>,
    err: Option<PacketError>,
}

impl ColumnWriter<'_> {
    /// The current column's spec when it is written and has type `ty`; the union
    /// branch of a nullable one is written.
    #[inline(always)]
    fn begin(&mut self, ty: ColumnType) -> bool {
        match self.plan.columns.get(self.ends.len()) {
            Some(c) if c.used => {
                if c.ty != ty {
                    self.mismatch(c.ty, ty);
                    return false;
                }
                if c.nullable {
                    self.buf.push(2); // union branch 1, zig-zag
                }
                true
            }
            _ => false,
        }
    }

    #[inline(always)]
    fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    #[cold]
    fn mismatch(&mut self, expected: ColumnType, found: ColumnType) {
        let i = self.ends.len();
        self.err.get_or_insert_with(|| PacketError::TypeMismatch {
            record: self.plan.record,
            field: self.plan.names[i].clone(),
            expected: expected.avro_name(),
            found: format!("a {} value", found.avro_name()),
        });
    }

    #[cold]
    fn null_in_required(&mut self) {
        let i = self.ends.len();
        self.err.get_or_insert_with(|| PacketError::NullInRequired {
            record: self.plan.record,
            field: self.plan.names[i].clone(),
        });
    }
}

impl FieldVisitor for ColumnWriter<'_> {
    #[inline(always)]
    fn null(&mut self) {
        if let Some(c) = self.plan.columns.get(self.ends.len())
            && c.used
        {
            if c.nullable {
                self.buf.push(0);
            } else {
                self.null_in_required();
            }
        }
        self.end();
    }
    #[inline(always)]
    fn long(&mut self, v: i64) {
        if self.begin(ColumnType::Long) {
            put_long(self.buf, v);
        }
        self.end();
    }
    #[inline(always)]
    fn int(&mut self, v: i32) {
        if self.begin(ColumnType::Int) {
            put_long(self.buf, i64::from(v));
        }
        self.end();
    }
    #[inline(always)]
    fn double(&mut self, v: f64) {
        if self.begin(ColumnType::Double) {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.end();
    }
    #[inline(always)]
    fn float(&mut self, v: f32) {
        if self.begin(ColumnType::Float) {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.end();
    }
    #[inline(always)]
    fn boolean(&mut self, v: bool) {
        if self.begin(ColumnType::Boolean) {
            self.buf.push(u8::from(v));
        }
        self.end();
    }
    #[inline(always)]
    fn string(&mut self, v: &str) {
        if self.begin(ColumnType::String) {
            put_bytes(self.buf, v.as_bytes());
        }
        self.end();
    }
}

/// The direct Avro encoder of alerts (see the module docs). Reuse one per thread: it
/// keeps its scratch buffers and the size of the last packet.
#[derive(Debug, Default)]
pub struct AlertEncoder {
    /// Encoded columns of the record being written.
    scratch: Vec<u8>,
    /// End offset of each column in `scratch`.
    ends: Vec<usize>,
    /// Bytes of the last packet besides its cutouts: the reservation for the next.
    last_rest: usize,
}

impl AlertEncoder {
    /// A new encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes one record with `plan`: in one pass when the writer order follows the
    /// column order ([`StreamWriter`]), else gathered ([`Self::record_gathered`]).
    #[inline]
    fn record<R: Row>(
        &mut self,
        plan: &EncodePlan,
        r: &R,
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        let Some(ops) = &plan.stream else {
            return self.record_gathered(plan, r, out);
        };
        if self.scratch.len() < 4096 {
            self.scratch.resize(4096, 0);
        }
        loop {
            let mut w = StreamWriter {
                ops,
                buf: &mut self.scratch,
                pos: 0,
                i: 0,
                short: false,
                err: None,
            };
            r.visit(&mut w);
            w.zeros(plan.trailing_nulls);
            if let Some((i, f)) = w.err {
                return Err(plan.error(i, f));
            }
            if w.i != ops.len() {
                return Err(PacketError::ColumnCount {
                    record: plan.record,
                    expected: ops.len(),
                    found: w.i,
                });
            }
            let (pos, short) = (w.pos, w.short);
            if short {
                // A value did not fit: grow to what the pass counted, and again.
                let len = (pos + 16).max(self.scratch.len() * 2);
                self.scratch.resize(len, 0);
                continue;
            }
            out.extend_from_slice(&self.scratch[..pos.min(self.scratch.len())]);
            return Ok(());
        }
    }

    /// Encodes one record whose writer order is not its column order: its columns
    /// visited into the scratch buffer, then copied in writer order with the
    /// always-null fields between.
    fn record_gathered<R: Row>(
        &mut self,
        plan: &EncodePlan,
        r: &R,
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        self.scratch.clear();
        self.ends.clear();
        let mut w = ColumnWriter {
            plan,
            buf: &mut self.scratch,
            ends: &mut self.ends,
            err: None,
        };
        r.visit(&mut w);
        if let Some(e) = w.err {
            return Err(e);
        }
        if self.ends.len() != plan.columns.len() {
            return Err(PacketError::ColumnCount {
                record: plan.record,
                expected: plan.columns.len(),
                found: self.ends.len(),
            });
        }
        for seg in &plan.segments {
            match *seg {
                Segment::Nulls(n) => out.resize(out.len() + n, 0),
                Segment::Columns(a, b) => {
                    let start = a
                        .checked_sub(1)
                        .map_or(Some(0), |i| self.ends.get(i).copied());
                    let end = b.checked_sub(1).and_then(|i| self.ends.get(i).copied());
                    let bytes = start
                        .zip(end)
                        .and_then(|(s, e)| self.scratch.get(s..e))
                        .ok_or(PacketError::ColumnCount {
                            record: plan.record,
                            expected: b,
                            found: self.ends.len(),
                        })?;
                    out.extend_from_slice(bytes);
                }
            }
        }
        Ok(())
    }

    fn array<F: Fields>(
        &mut self,
        plan: &EncodePlan,
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
        let p = plans();
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
        self.record(&p.dia_source, &a.dia_source, out)?;
        self.array(&p.dia_source, a.prv_dia_sources.as_deref(), out)?;
        self.array(
            &p.dia_forced_source,
            a.prv_dia_forced_sources.as_deref(),
            out,
        )?;
        match &a.dia_object {
            None => out.push(0),
            Some(o) => {
                out.push(2);
                self.record(&p.dia_object, o, out)?;
            }
        }
        match SsSourceRow::of(&a.dia_source, a.ss_object.as_ref()) {
            None => out.push(0),
            Some(row) => {
                out.push(2);
                self.record(&p.ss_source, &row, out)?;
            }
        }
        out.push(0); // mpc_orbits: apflow has no orbits
        match &a.cutouts {
            None => out.extend_from_slice(&[0, 0, 0]),
            Some(c) => {
                // Each cutout's bytes are copied once, into `out`.
                for b in [&c.difference, &c.science, &c.template] {
                    out.push(2);
                    put_bytes(out, b);
                }
            }
        }
        Ok(())
    }

    /// Bytes to reserve for `a`'s packet: its cutouts, and the rest as large as the
    /// last packet's (at least 16 KiB), so a packet is written without regrowing.
    fn reservation(&self, a: &AlertInput) -> usize {
        let cutouts = a.cutouts.as_ref().map_or(0, |c| c.len() + 3 * 11);
        HEADER_LEN + cutouts + self.last_rest.max(16 * 1024)
    }

    /// Appends the Confluent-framed packet (header with id 1100, then the body).
    pub fn encode_framed(&mut self, a: &AlertInput, out: &mut Vec<u8>) -> Result<(), PacketError> {
        let start = out.len();
        out.reserve(self.reservation(a));
        wire::put_header(SCHEMA_ID, out);
        if let Err(e) = self.encode_body(a, out) {
            out.truncate(start);
            return Err(e);
        }
        let cutouts = a.cutouts.as_ref().map_or(0, CutoutBytes::len);
        self.last_rest = (out.len() - start).saturating_sub(cutouts);
        Ok(())
    }

    /// The framed packet as a new buffer (allocated once, at the reserved size).
    pub fn to_framed(&mut self, a: &AlertInput) -> Result<Vec<u8>, PacketError> {
        // encode_framed reserves the packet's size: the one allocation.
        let mut out = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::FieldPlan;
    use apflow_core::ids::{DetectorId, DiaObjectId, VisitId};
    use apflow_core::time::MjdTai;

    fn field(name: &str, ty: ColumnType, nullable: bool, source: Option<usize>) -> FieldPlan {
        FieldPlan {
            name: name.into(),
            ty,
            nullable,
            source,
        }
    }

    fn forced() -> DiaForcedSource {
        DiaForcedSource {
            dia_forced_source_id: -300,
            dia_object_id: DiaObjectId(7),
            ra: 1.5,
            dec: -2.25,
            visit: VisitId(9),
            detector: DetectorId(3),
            psf_flux: None,
            midpoint_mjd_tai: MjdTai(61000.0),
            band: "g".into(),
            ..Default::default()
        }
    }

    #[test]
    fn shipped_plans_cover_every_writer_field_in_few_copies() {
        let s = alert_schema();
        let p = plans();
        for (rec, plan) in [
            (&s.dia_source, &p.dia_source),
            (&s.dia_object, &p.dia_object),
            (&s.dia_forced_source, &p.dia_forced_source),
            (&s.ss_source, &p.ss_source),
        ] {
            let written: usize = plan
                .segments
                .iter()
                .map(|g| match *g {
                    Segment::Nulls(n) => n,
                    Segment::Columns(a, b) => b - a,
                })
                .sum();
            assert_eq!(written, rec.fields.len(), "{}", rec.name);
            // Consecutive runs are merged: no two neighbours of the same kind that
            // could be one.
            for w in plan.segments.windows(2) {
                match (w[0], w[1]) {
                    (Segment::Nulls(_), Segment::Nulls(_)) => panic!("unmerged nulls"),
                    (Segment::Columns(_, e), Segment::Columns(a, _)) => assert_ne!(e, a),
                    _ => {}
                }
            }
            let used = plan.columns.iter().filter(|c| c.used).count();
            assert_eq!(
                used,
                rec.fields.iter().filter(|f| f.source.is_some()).count()
            );
        }
        // The records of which an alert holds many are written in one pass (writer
        // order = column order); diaObject is not: lsst.v11_0 orders its per-band
        // fields otherwise than the APDB's band-by-band columns, so it is gathered.
        for plan in [&p.dia_source, &p.dia_forced_source, &p.ss_source] {
            assert!(plan.stream.is_some(), "{}", plan.record);
        }
        assert!(p.dia_object.stream.is_none());
        assert!(p.dia_object.segments.len() > 6);
        // diaObject drops the local columns (validityEndMjdTai, the psfFluxChi2s).
        assert!(p.dia_object.columns.iter().any(|c| !c.used));
    }

    #[test]
    fn a_plan_in_another_order_than_the_columns_writes_the_writer_order() {
        // Writer order: dec, an always-null float, diaForcedSourceId, ra, psfFlux, band.
        let rp = RecordPlan {
            name: "diaForcedSource",
            fields: vec![
                field("dec", ColumnType::Double, false, Some(3)),
                field("unmeasured", ColumnType::Float, true, None),
                field("diaForcedSourceId", ColumnType::Long, false, Some(0)),
                field("ra", ColumnType::Double, false, Some(2)),
                field("psfFlux", ColumnType::Float, true, Some(6)),
                field("band", ColumnType::String, false, Some(11)),
            ],
        };
        let plan = EncodePlan::new(&rp, DiaForcedSource::columns().len());
        assert_eq!(
            plan.segments,
            [
                Segment::Columns(3, 4),
                Segment::Nulls(1),
                Segment::Columns(0, 1),
                Segment::Columns(2, 3),
                Segment::Columns(6, 7),
                Segment::Columns(11, 12),
            ]
        );
        let mut enc = AlertEncoder::new();
        let mut out = vec![0xee];
        let f = forced();
        enc.record(&plan, &f, &mut out).unwrap();
        let mut want = vec![0xee];
        want.extend_from_slice(&(-2.25f64).to_le_bytes());
        want.push(0); // null branch
        want.extend_from_slice(&[0xd7, 0x04]); // -300 zig-zag = 599
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.push(0); // psfFlux None
        want.extend_from_slice(&[2, b'g']);
        assert_eq!(out, want);
    }

    /// The record written in one pass and gathered: the same bytes.
    fn both_agree<R: Row>(enc: &mut AlertEncoder, plan: &EncodePlan, r: &R) {
        let (mut one, mut gathered) = (Vec::new(), Vec::new());
        enc.record(plan, r, &mut one).unwrap();
        enc.record_gathered(plan, r, &mut gathered).unwrap();
        assert!(!one.is_empty());
        assert_eq!(one, gathered, "{}", plan.record);
    }

    #[test]
    fn one_pass_and_gathered_writes_agree_and_long_strings_regrow_the_scratch() {
        let p = plans();
        let mut enc = AlertEncoder::new();
        let a = &crate::synth::alert_inputs(11, 3)[2];
        both_agree(&mut enc, &p.dia_source, &a.dia_source);
        assert!(enc.scratch.len() < 12_000);
        let mut long = a.dia_source.clone();
        long.band = "é".repeat(6000); // 12 kB: past the 4 kB scratch
        both_agree(&mut enc, &p.dia_source, &long);
        assert!(enc.scratch.len() >= 12_000);
        both_agree(&mut enc, &p.dia_object, a.dia_object.as_ref().unwrap());
        let f = &a.prv_dia_forced_sources.as_ref().unwrap()[0];
        both_agree(&mut enc, &p.dia_forced_source, f);
        let mut ss = a.dia_source.clone();
        ss.ss_object_id = Some(77);
        let row = SsSourceRow::of(&ss, None).unwrap();
        both_agree(&mut enc, &p.ss_source, &row);
    }

    #[test]
    fn plans_that_disagree_with_the_record_are_errors() {
        let f = forced();
        let n = DiaForcedSource::columns().len();
        let mut enc = AlertEncoder::new();
        let mut out = Vec::new();
        // ra declared float: a type mismatch naming the field.
        let rp = RecordPlan {
            name: "diaForcedSource",
            fields: vec![field("ra", ColumnType::Float, false, Some(2))],
        };
        match enc.record(&EncodePlan::new(&rp, n), &f, &mut out) {
            Err(PacketError::TypeMismatch {
                field, expected, ..
            }) => assert_eq!((field.as_str(), expected), ("ra", "float")),
            other => panic!("{other:?}"),
        }
        // psfFlux (None) declared non-null.
        let rp = RecordPlan {
            name: "diaForcedSource",
            fields: vec![field("psfFlux", ColumnType::Float, false, Some(6))],
        };
        match enc.record(&EncodePlan::new(&rp, n), &f, &mut out) {
            Err(PacketError::NullInRequired { field, .. }) => assert_eq!(field, "psfFlux"),
            other => panic!("{other:?}"),
        }
        // A plan over fewer columns than the record has, and one whose source is
        // beyond the record's columns.
        let rp = RecordPlan {
            name: "diaForcedSource",
            fields: vec![field("ra", ColumnType::Double, false, Some(2))],
        };
        assert!(matches!(
            enc.record(&EncodePlan::new(&rp, 5), &f, &mut out),
            Err(PacketError::ColumnCount {
                expected: 5,
                found,
                ..
            }) if found == n
        ));
        let rp = RecordPlan {
            name: "diaForcedSource",
            fields: vec![field("x", ColumnType::Double, false, Some(n + 4))],
        };
        assert!(matches!(
            enc.record(&EncodePlan::new(&rp, n), &f, &mut out),
            Err(PacketError::ColumnCount { .. })
        ));
    }

    #[test]
    fn the_reservation_follows_the_last_packet() {
        let a = &crate::synth::alert_inputs(5, 1)[0];
        let mut enc = AlertEncoder::new();
        let first = enc.to_framed(a).unwrap();
        let cut = a.cutouts.as_ref().map_or(0, CutoutBytes::len);
        assert_eq!(enc.last_rest, first.len() - cut);
        // The next packet of the same shape fits its reservation exactly once: no
        // regrowth.
        let reserved = enc.reservation(a);
        let second = enc.to_framed(a).unwrap();
        assert_eq!(second, first);
        assert_eq!(second.capacity(), reserved, "the buffer regrew");
        assert!(second.capacity() >= second.len());
        assert!(second.capacity() <= second.len() + 16 * 1024 + 3 * 11);
    }
}
