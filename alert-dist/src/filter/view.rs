//! What a filter reads: [`AlertView`], one decoded alert as typed values by slot (every
//! scalar field of the alert, the `diaSource`, the `diaObject` and the `ssSource`
//! records) plus the history of previous detections, summarised once per alert.
//!
//! Slots come from [`field_table`], built from the alert writer schema
//! ([`crate::schema::alert_schema`]): the top-level `diaSourceId`, `observation_reason`,
//! `target_name`, then `diaSource.*`, `diaObject.*` and `ssSource.*` in writer order.
//! A field of a record that is absent (`diaObject` of a solar-system source, `ssSource`
//! of anything else) reads NULL, so every `diaObject.*` and `ssSource.*` field is
//! typed nullable. `mpc_orbits` (always null in apflow's alerts), the cutouts and the
//! forced photometry are not fields of the language.
//!
//! Floating-point values that are NaN read as NULL: Rubin and apflow write NaN or
//! null for "not measured", and the language has one notion of missing.
//!
//! Three ways in, which give the same view (a test checks it):
//! * [`AlertView::decode_framed`] — straight from Confluent-framed wire bytes, a
//!   hand-written Avro reader driven by the writer schema's record plans (Avro 1.11
//!   "Binary Encoding"); it skips the cutouts without copying them. It falls back to
//!   apache-avro for the one shape it does not read (a non-null `mpc_orbits`);
//! * [`AlertView::from_avro`] — from apache-avro's decoded value
//!   ([`crate::packet::decode_framed`]);
//! * [`AlertView::from_input`] — from the APDB records of an [`AlertInput`], before
//!   serialisation.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::types::Value as Avro;
use apflow_apdb::schema::{BANDS, ColumnType, Record, Value};
use apflow_core::geom::UnitVector;
use thiserror::Error;

use crate::coords::galactic;
use crate::packet::{AlertInput, ss_source_values};
use crate::schema::{RecordPlan, SCHEMA_ID, alert_schema};
use crate::wire;

/// Most previous detections a view keeps (the most recent ones, in the alert's order).
/// History functions scan at most this many entries: the bound of their cost.
pub const MAX_HISTORY: usize = 1000;

/// The static type of a value in the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// `TRUE` / `FALSE`.
    Bool,
    /// 64-bit integer (Avro `int` and `long`).
    Int,
    /// 64-bit float (Avro `float` and `double`).
    Float,
    /// Text (Avro `string`).
    Str,
    /// The type of the literal `NULL`: fits anywhere.
    Null,
}

impl Type {
    /// Whether the type is a number (or NULL, which fits a number).
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Int | Self::Float | Self::Null)
    }
    fn of(c: ColumnType) -> Self {
        match c {
            ColumnType::Long | ColumnType::Int => Self::Int,
            ColumnType::Double | ColumnType::Float => Self::Float,
            ColumnType::Boolean => Self::Bool,
            _ => Self::Str,
        }
    }
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bool => "boolean",
            Self::Int => "integer",
            Self::Float => "float",
            Self::Str => "string",
            Self::Null => "NULL",
        })
    }
}

/// A value at run time.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    /// Missing / unknown.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A finite-or-infinite float, never NaN.
    Float(f64),
    /// Text.
    Str(Box<str>),
}

impl Val {
    fn float(x: f64) -> Self {
        if x.is_nan() {
            Self::Null
        } else {
            Self::Float(x)
        }
    }
    fn from_apdb(v: &Value) -> Self {
        match v {
            Value::Null => Self::Null,
            Value::Long(i) => Self::Int(*i),
            Value::Int(i) => Self::Int(i64::from(*i)),
            Value::Double(x) => Self::float(*x),
            Value::Float(x) => Self::float(f64::from(*x)),
            Value::Boolean(b) => Self::Bool(*b),
            Value::String(s) => Self::Str(s.as_str().into()),
            // A value type added to the APDB later reads as missing until mapped here.
            _ => Self::Null,
        }
    }
    fn from_avro(v: &Avro) -> Result<Self, ViewError> {
        Ok(match v {
            Avro::Null => Self::Null,
            Avro::Union(_, b) => Self::from_avro(b)?,
            Avro::Long(i) => Self::Int(*i),
            Avro::Int(i) => Self::Int(i64::from(*i)),
            Avro::Double(x) => Self::float(*x),
            Avro::Float(x) => Self::float(f64::from(*x)),
            Avro::Boolean(b) => Self::Bool(*b),
            Avro::String(s) => Self::Str(s.as_str().into()),
            other => return Err(ViewError::Shape(format!("unexpected value {other:?}"))),
        })
    }
    /// The value as a float (integers converted), `None` for NULL and non-numbers.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(*i as f64),
            Self::Float(x) => Some(*x),
            _ => None,
        }
    }
}

/// One field the language can read.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDef {
    /// The path as written in expressions (`diaSource.psfFlux`, `diaSourceId`).
    pub path: String,
    /// Its type.
    pub ty: Type,
    /// Whether it can be NULL.
    pub nullable: bool,
}

/// Every field of the language, by slot.
#[derive(Debug)]
pub struct FieldTable {
    /// The fields; a field's slot is its index.
    pub fields: Vec<FieldDef>,
    index: HashMap<String, usize>,
    /// First slot of `diaSource.*`.
    pub dia_source: usize,
    /// First slot of `diaObject.*`.
    pub dia_object: usize,
    /// First slot of `ssSource.*`.
    pub ss_source: usize,
    ra: usize,
    dec: usize,
    /// Slot of `diaSource.midpointMjdTai`.
    pub(crate) mjd: usize,
    band: usize,
    /// Slot of `diaSource.psfFlux`.
    pub(crate) psf_flux: usize,
}

impl FieldTable {
    /// The slot of a path.
    pub fn slot(&self, path: &str) -> Option<usize> {
        self.index.get(path).copied()
    }
}

/// The field table of the alert schema.
pub fn field_table() -> &'static FieldTable {
    static T: LazyLock<FieldTable> = LazyLock::new(|| {
        let s = alert_schema();
        let mut fields = vec![
            FieldDef {
                path: "diaSourceId".into(),
                ty: Type::Int,
                nullable: false,
            },
            FieldDef {
                path: "observation_reason".into(),
                ty: Type::Str,
                nullable: true,
            },
            FieldDef {
                path: "target_name".into(),
                ty: Type::Str,
                nullable: true,
            },
        ];
        let mut push = |plan: &RecordPlan, record_nullable: bool| {
            let start = fields.len();
            for f in &plan.fields {
                fields.push(FieldDef {
                    path: format!("{}.{}", plan.name, f.name),
                    ty: Type::of(f.ty),
                    nullable: record_nullable || f.nullable,
                });
            }
            start
        };
        let dia_source = push(&s.dia_source, false);
        let dia_object = push(&s.dia_object, true);
        let ss_source = push(&s.ss_source, true);
        let index: HashMap<String, usize> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.clone(), i))
            .collect();
        let at = |p: &str| index[p];
        FieldTable {
            ra: at("diaSource.ra"),
            dec: at("diaSource.dec"),
            mjd: at("diaSource.midpointMjdTai"),
            band: at("diaSource.band"),
            psf_flux: at("diaSource.psfFlux"),
            fields,
            index,
            dia_source,
            dia_object,
            ss_source,
        }
    });
    &T
}

/// The index of a band name in [`BANDS`] (`u` … `y`).
pub fn band_index(b: &str) -> Option<u8> {
    BANDS.iter().position(|x| *x == b).map(|i| i as u8)
}

/// One previous detection, as the history functions see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// `midpointMjdTai`, MJD TAI (days).
    pub mjd: Option<f64>,
    /// `band` as an index in [`BANDS`]; `None` for a band outside `ugrizy`.
    pub band: Option<u8>,
    /// `psfFlux`, nJy.
    pub psf_flux: Option<f64>,
}

/// The history quantities, computed once per alert (see [`super`] for their
/// definitions); the tree-walking interpreter recomputes them from the history.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Summary {
    /// Number of previous detections kept.
    pub n_prev: i64,
    /// Earliest `midpointMjdTai` of the current and previous detections.
    pub first_mjd: Option<f64>,
    /// `psfFlux` of the latest previous detection in the current source's band (`None`
    /// when there is none, or its flux is null).
    pub prev_flux_same_band: Option<f64>,
    /// Per band: `psfFlux` of the latest detection (the current one if in that band).
    pub band_flux: [Option<f64>; 6],
    /// Unit vector of (`diaSource.ra`, `diaSource.dec`).
    pub position: Option<UnitVector>,
    /// Galactic latitude of the position, degrees.
    pub gal_lat: Option<f64>,
}

/// A decoded alert as filters read it.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertView {
    values: Vec<Val>,
    history: Vec<Detection>,
    summary: Summary,
}

/// Why bytes or a value could not be turned into an [`AlertView`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ViewError {
    /// Not a Confluent-framed message.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// A schema id other than the alert schema's.
    #[error("schema id {0} is not the alert schema ({SCHEMA_ID})")]
    UnknownSchema(u32),
    /// The Avro body ends early or holds something the schema does not allow.
    #[error("malformed alert body at byte {0}: {1}")]
    Malformed(usize, &'static str),
    /// A decoded value does not have the alert schema's shape.
    #[error("alert value: {0}")]
    Shape(String),
    /// apache-avro could not decode the message.
    #[error("alert decode: {0}")]
    Avro(String),
}

impl AlertView {
    fn empty() -> Self {
        Self {
            values: vec![Val::Null; field_table().fields.len()],
            history: Vec::new(),
            summary: Summary::default(),
        }
    }

    /// The value in `slot` (NULL for a slot out of range).
    #[inline]
    pub fn get(&self, slot: usize) -> &Val {
        self.values.get(slot).unwrap_or(&Val::Null)
    }

    /// The value of a field path, if the path exists (the interpreter's slow path).
    pub fn get_path(&self, path: &str) -> Option<&Val> {
        field_table().slot(path).map(|s| self.get(s))
    }

    /// The previous detections kept (the alert's `prvDiaSources`, oldest first, at most
    /// [`MAX_HISTORY`] of the most recent).
    pub fn history(&self) -> &[Detection] {
        &self.history
    }

    /// The history summary.
    #[inline]
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// A view from field values by slot and a history, for tests and generators.
    /// Missing slots are NULL; values of the wrong type are kept as given (the
    /// evaluators treat a value of an unexpected type as NULL).
    pub fn from_parts(mut values: Vec<Val>, mut history: Vec<Detection>) -> Self {
        values.resize(field_table().fields.len(), Val::Null);
        if history.len() > MAX_HISTORY {
            history.drain(..history.len() - MAX_HISTORY);
        }
        let mut v = Self {
            values,
            history,
            summary: Summary::default(),
        };
        v.summarize();
        v
    }

    fn summarize(&mut self) {
        let t = field_table();
        let f = |slot: usize| self.values[slot].as_f64();
        let mjd = f(t.mjd);
        let band = match &self.values[t.band] {
            Val::Str(s) => band_index(s),
            _ => None,
        };
        let flux = f(t.psf_flux);
        let mut s = Summary {
            n_prev: self.history.len() as i64,
            first_mjd: mjd,
            ..Summary::default()
        };
        for d in &self.history {
            if let (Some(m), Some(first)) = (d.mjd, s.first_mjd)
                && m < first
            {
                s.first_mjd = Some(m);
            }
            if let Some(b) = d.band {
                s.band_flux[b as usize] = d.psf_flux;
                if Some(b) == band {
                    s.prev_flux_same_band = d.psf_flux;
                }
            }
        }
        if let Some(b) = band {
            s.band_flux[b as usize] = flux;
        }
        if let (Some(ra), Some(dec)) = (f(t.ra), f(t.dec)) {
            s.position = Some(UnitVector::from_radec_deg(ra, dec));
            s.gal_lat = Some(galactic(ra, dec).1);
        }
        self.summary = s;
    }

    /// The view of an alert before serialisation (APDB records).
    pub fn from_input(a: &AlertInput) -> Self {
        let t = field_table();
        let s = alert_schema();
        let mut v = Self::empty();
        v.values[0] = Val::Int(a.dia_source.dia_source_id.0);
        v.values[1] = a
            .context
            .observation_reason
            .as_deref()
            .map_or(Val::Null, |x| Val::Str(x.into()));
        v.values[2] = a
            .context
            .target_name
            .as_deref()
            .map_or(Val::Null, |x| Val::Str(x.into()));
        let fill = |values: &mut [Val], plan: &RecordPlan, src: &[Value]| {
            for (k, f) in plan.fields.iter().enumerate() {
                values[k] = f
                    .source
                    .and_then(|i| src.get(i))
                    .map_or(Val::Null, Val::from_apdb);
            }
        };
        fill(
            &mut v.values[t.dia_source..],
            &s.dia_source,
            &a.dia_source.to_values(),
        );
        if let Some(o) = &a.dia_object {
            fill(&mut v.values[t.dia_object..], &s.dia_object, &o.to_values());
        }
        if let Some(ss) = ss_source_values(&a.dia_source, a.ss_object.as_ref()) {
            fill(&mut v.values[t.ss_source..], &s.ss_source, &ss);
        }
        if let Some(prv) = &a.prv_dia_sources {
            let keep = &prv[prv.len().saturating_sub(MAX_HISTORY)..];
            v.history = keep
                .iter()
                .map(|d| Detection {
                    mjd: Some(d.midpoint_mjd_tai.0).filter(|x| !x.is_nan()),
                    band: band_index(&d.band),
                    psf_flux: d.psf_flux.map(f64::from).filter(|x| !x.is_nan()),
                })
                .collect();
        }
        v.summarize();
        v
    }

    /// The view of an alert decoded by apache-avro ([`crate::packet::decode_framed`]).
    ///
    /// # Errors
    /// [`ViewError::Shape`] when the value is not an alert record of the schema.
    pub fn from_avro(value: &Avro) -> Result<Self, ViewError> {
        let t = field_table();
        let s = alert_schema();
        let Avro::Record(top) = value else {
            return Err(ViewError::Shape("not a record".into()));
        };
        let mut v = Self::empty();
        let record = |values: &mut [Val], plan: &RecordPlan, r: &Avro| -> Result<(), ViewError> {
            let r = match r {
                Avro::Union(_, b) => b.as_ref(),
                r => r,
            };
            match r {
                Avro::Null => Ok(()),
                Avro::Record(fs) => {
                    for (k, f) in plan.fields.iter().enumerate() {
                        let x = fs
                            .get(k)
                            .filter(|(n, _)| *n == f.name)
                            .or_else(|| fs.iter().find(|(n, _)| *n == f.name))
                            .ok_or_else(|| {
                                ViewError::Shape(format!("{} has no field {}", plan.name, f.name))
                            })?;
                        values[k] = Val::from_avro(&x.1)?;
                    }
                    Ok(())
                }
                other => Err(ViewError::Shape(format!(
                    "{} is not a record: {other:?}",
                    plan.name
                ))),
            }
        };
        for (name, x) in top {
            match name.as_str() {
                "diaSourceId" => v.values[0] = Val::from_avro(x)?,
                "observation_reason" => v.values[1] = Val::from_avro(x)?,
                "target_name" => v.values[2] = Val::from_avro(x)?,
                "diaSource" => record(&mut v.values[t.dia_source..], &s.dia_source, x)?,
                "diaObject" => record(&mut v.values[t.dia_object..], &s.dia_object, x)?,
                "ssSource" => record(&mut v.values[t.ss_source..], &s.ss_source, x)?,
                "prvDiaSources" => {
                    let x = match x {
                        Avro::Union(_, b) => b.as_ref(),
                        x => x,
                    };
                    if let Avro::Array(items) = x {
                        let keep = &items[items.len().saturating_sub(MAX_HISTORY)..];
                        let n = s.dia_source.fields.len();
                        let mut scratch = vec![Val::Null; n];
                        for it in keep {
                            record(&mut scratch, &s.dia_source, it)?;
                            v.history.push(detection(&scratch));
                        }
                    }
                }
                _ => {}
            }
        }
        v.summarize();
        Ok(v)
    }

    /// The view of Confluent-framed wire bytes, read directly (see the module docs).
    ///
    /// # Errors
    /// [`ViewError`] for a bad frame, another schema id or a malformed body.
    pub fn decode_framed(msg: &[u8]) -> Result<Self, ViewError> {
        let (id, body) = wire::unframe(msg)?;
        if id != SCHEMA_ID {
            return Err(ViewError::UnknownSchema(id));
        }
        match decode_body(body) {
            Err(DirectError::MpcOrbits) => {
                let d = crate::packet::decode_framed(msg)
                    .map_err(|e| ViewError::Avro(e.to_string()))?;
                Self::from_avro(&d.value)
            }
            Err(DirectError::At(p, m)) => Err(ViewError::Malformed(p, m)),
            Ok(v) => Ok(v),
        }
    }
}

fn detection(values: &[Val]) -> Detection {
    let t = field_table();
    let at = |slot: usize| &values[slot - t.dia_source];
    Detection {
        mjd: at(t.mjd).as_f64(),
        band: match at(t.band) {
            Val::Str(s) => band_index(s),
            _ => None,
        },
        psf_flux: at(t.psf_flux).as_f64(),
    }
}

/// A field value as the sparse reader hands it over (integers and booleans are
/// skipped: the history needs none).
enum Sparse<'a> {
    Null,
    Num(f64),
    Str(&'a [u8]),
}

enum DirectError {
    At(usize, &'static str),
    MpcOrbits,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn err(&self, m: &'static str) -> DirectError {
        DirectError::At(self.pos, m)
    }
    fn long(&mut self) -> Result<i64, DirectError> {
        wire::get_long(self.buf, &mut self.pos).ok_or_else(|| self.err("bad long"))
    }
    fn bytes(&mut self) -> Result<&[u8], DirectError> {
        let at = self.pos;
        wire::get_bytes(self.buf, &mut self.pos).ok_or(DirectError::At(at, "bad bytes"))
    }
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DirectError> {
        let s = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += N;
        Ok(s.try_into().expect("slice of length N"))
    }
    /// Reads a `["null", T]` union index: `true` when the value follows.
    fn present(&mut self) -> Result<bool, DirectError> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("union index out of range")),
        }
    }
    fn value(&mut self, ty: ColumnType) -> Result<Val, DirectError> {
        Ok(match ty {
            ColumnType::Long | ColumnType::Int => Val::Int(self.long()?),
            ColumnType::Double => Val::float(f64::from_le_bytes(self.fixed()?)),
            ColumnType::Float => Val::float(f64::from(f32::from_le_bytes(self.fixed()?))),
            ColumnType::Boolean => match self.fixed::<1>()?[0] {
                0 => Val::Bool(false),
                1 => Val::Bool(true),
                _ => return Err(self.err("bad boolean")),
            },
            _ => {
                let at = self.pos;
                let b = self.bytes()?;
                Val::Str(
                    std::str::from_utf8(b)
                        .map_err(|_| DirectError::At(at, "string is not UTF-8"))?
                        .into(),
                )
            }
        })
    }
    fn record(&mut self, plan: &RecordPlan, out: &mut [Val]) -> Result<(), DirectError> {
        for (k, f) in plan.fields.iter().enumerate() {
            out[k] = if f.nullable && !self.present()? {
                Val::Null
            } else {
                self.value(f.ty)?
            };
        }
        Ok(())
    }
    /// Reads one record of `plan` keeping only the fields `keep` asks for (by index in
    /// the plan): no allocation, strings are borrowed.
    fn sparse_record(
        &mut self,
        plan: &RecordPlan,
        mut keep: impl FnMut(usize, Sparse<'_>),
    ) -> Result<(), DirectError> {
        for (k, f) in plan.fields.iter().enumerate() {
            if f.nullable && !self.present()? {
                keep(k, Sparse::Null);
                continue;
            }
            match f.ty {
                ColumnType::Long | ColumnType::Int => {
                    self.long()?;
                }
                ColumnType::Double => keep(k, Sparse::Num(f64::from_le_bytes(self.fixed()?))),
                ColumnType::Float => {
                    keep(k, Sparse::Num(f64::from(f32::from_le_bytes(self.fixed()?))))
                }
                ColumnType::Boolean => {
                    self.fixed::<1>()?;
                }
                _ => {
                    let b = self.bytes()?;
                    keep(k, Sparse::Str(b));
                }
            }
        }
        Ok(())
    }

    /// An optional array: `item` reads each item.
    fn items(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DirectError>,
    ) -> Result<(), DirectError> {
        if !self.present()? {
            return Ok(());
        }
        loop {
            let mut n = self.long()?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                n = n.checked_neg().ok_or_else(|| self.err("bad block count"))?;
                self.long()?; // block size in bytes
            }
            for _ in 0..n {
                item(self)?;
            }
        }
    }
}

fn decode_body(body: &[u8]) -> Result<AlertView, DirectError> {
    let t = field_table();
    let s = alert_schema();
    let mut r = Reader { buf: body, pos: 0 };
    let mut v = AlertView::empty();
    v.values[0] = Val::Int(r.long()?);
    for k in [1, 2] {
        v.values[k] = if r.present()? {
            r.value(ColumnType::String)?
        } else {
            Val::Null
        };
    }
    r.record(&s.dia_source, &mut v.values[t.dia_source..])?;
    let (mjd, band, flux) = (
        t.mjd - t.dia_source,
        t.band - t.dia_source,
        t.psf_flux - t.dia_source,
    );
    let mut history = Vec::new();
    let num = |x: f64| (!x.is_nan()).then_some(x);
    r.items(|r| {
        let mut d = Detection {
            mjd: None,
            band: None,
            psf_flux: None,
        };
        r.sparse_record(&s.dia_source, |k, x| match x {
            Sparse::Num(x) if k == mjd => d.mjd = num(x),
            Sparse::Num(x) if k == flux => d.psf_flux = num(x),
            Sparse::Str(b) if k == band => {
                d.band = std::str::from_utf8(b).ok().and_then(band_index)
            }
            _ => {}
        })?;
        history.push(d);
        Ok(())
    })?;
    if history.len() > MAX_HISTORY {
        history.drain(..history.len() - MAX_HISTORY);
    }
    v.history = history;
    r.items(|r| r.sparse_record(&s.dia_forced_source, |_, _| {}))?;
    if r.present()? {
        r.record(&s.dia_object, &mut v.values[t.dia_object..])?;
    }
    if r.present()? {
        r.record(&s.ss_source, &mut v.values[t.ss_source..])?;
    }
    if r.present()? {
        return Err(DirectError::MpcOrbits);
    }
    for _ in 0..3 {
        if r.present()? {
            r.bytes()?;
        }
    }
    if r.pos != body.len() {
        return Err(r.err("trailing bytes"));
    }
    v.summarize();
    Ok(v)
}
