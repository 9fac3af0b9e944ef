//! The one schema definition of the APDB: tables, columns, types, units and
//! descriptions, and the plain record structs the pipeline fills.
//!
//! Each record struct is declared once, through the `record!` macro, together with the
//! column each field maps to: the Rubin column name (camelCase, exactly as in Rubin's
//! APDB and the `lsst.v11_0` alert schema), its unit, its description (the field's doc
//! comment) and whether `lsst.v11_0` has an Avro field for it (`avro`) or it is an
//! apflow/APDB-only column (`local`). The SQLite and Scylla tables are created from
//! [`schema()`], rows are written and read through [`Record`], and the drift test
//! (`tests/integration/avro_drift.rs`) checks the definition against the checked-in
//! `schemas/avro/lsst.v11_0/*.avsc`. An Avro generator can walk [`schema()`] and emit
//! the `avro` columns.
//!
//! Units: fluxes in nJy, positions in degrees (ICRS), times as MJD TAI in days.

use std::sync::LazyLock;

use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use apflow_core::time::MjdTai;
use serde::{Deserialize, Serialize};

/// The version of the APDB schema this code reads and writes.
///
/// Stored in the metadata table at creation; a database whose major version differs,
/// or whose minor version is newer than this, is refused when opened.
pub const SCHEMA_VERSION: SchemaVersion = SchemaVersion { major: 1, minor: 0 };

/// A schema version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// Incompatible changes (columns removed, renamed or retyped, keys changed).
    pub major: u32,
    /// Compatible additions (new nullable columns, new tables).
    pub minor: u32,
}

impl SchemaVersion {
    /// Whether code at `self` can read and write a database at `db`.
    pub fn can_open(self, db: SchemaVersion) -> bool {
        self.major == db.major && db.minor <= self.minor
    }
}

impl std::fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for SchemaVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("schema version {s:?} is not MAJOR.MINOR"))?;
        Ok(Self {
            major: a
                .parse()
                .map_err(|_| format!("bad major version in {s:?}"))?,
            minor: b
                .parse()
                .map_err(|_| format!("bad minor version in {s:?}"))?,
        })
    }
}

/// The logical type of a column; Avro primitive types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ColumnType {
    /// 64-bit signed integer (Avro `long`, SQL `INTEGER`, CQL `bigint`).
    Long,
    /// 32-bit signed integer (Avro `int`, CQL `int`).
    Int,
    /// 64-bit float (Avro `double`).
    Double,
    /// 32-bit float (Avro `float`).
    Float,
    /// Boolean (Avro `boolean`).
    Boolean,
    /// UTF-8 string (Avro `string`).
    String,
}

impl ColumnType {
    /// The Avro primitive type name.
    pub fn avro_name(self) -> &'static str {
        match self {
            Self::Long => "long",
            Self::Int => "int",
            Self::Double => "double",
            Self::Float => "float",
            Self::Boolean => "boolean",
            Self::String => "string",
        }
    }
    /// The SQLite column type (type affinity).
    pub fn sqlite_name(self) -> &'static str {
        match self {
            Self::Long | Self::Int | Self::Boolean => "INTEGER",
            Self::Double | Self::Float => "REAL",
            Self::String => "TEXT",
        }
    }
    /// The CQL type.
    pub fn cql_name(self) -> &'static str {
        match self {
            Self::Long => "bigint",
            Self::Int => "int",
            Self::Double => "double",
            Self::Float => "float",
            Self::Boolean => "boolean",
            Self::String => "text",
        }
    }
}

/// One column of an APDB table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Column {
    /// Column name (Rubin camelCase).
    pub name: String,
    /// Logical type.
    pub ty: ColumnType,
    /// Whether the column may be NULL.
    pub nullable: bool,
    /// Unit (e.g. `nJy`, `deg`, `d`), empty when dimensionless.
    pub unit: &'static str,
    /// Human-readable description.
    pub description: String,
    /// Whether the `lsst.v11_0` Avro record of this table has a field of this name.
    pub avro: bool,
}

/// A cell value, as written to and read from a backend.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// NULL.
    Null,
    /// [`ColumnType::Long`].
    Long(i64),
    /// [`ColumnType::Int`].
    Int(i32),
    /// [`ColumnType::Double`].
    Double(f64),
    /// [`ColumnType::Float`].
    Float(f32),
    /// [`ColumnType::Boolean`].
    Boolean(bool),
    /// [`ColumnType::String`].
    String(String),
}

/// A value read from a backend does not fit the field it is meant for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "column {column}: expected {expected:?}, found {found:?}; is the database schema the one this apflow expects?"
)]
pub struct ValueError {
    /// The column.
    pub column: String,
    /// The expected type.
    pub expected: ColumnType,
    /// The value found.
    pub found: Value,
}

/// Receives a record's values one column at a time, in column order, typed and
/// borrowed: what [`Fields::visit_values`] calls. Serialisers (the alert encoder's
/// Avro writer) implement it to write a record straight from its struct, without the
/// per-field [`Value`] (and `String` clone) that [`Fields::push_values`] builds.
///
/// Each call is one column; the method says the column's type ([`ColumnType`]), and
/// [`FieldVisitor::null`] is a NULL in a nullable column.
pub trait FieldVisitor {
    /// NULL.
    fn null(&mut self);
    /// A [`ColumnType::Long`] value.
    fn long(&mut self, v: i64);
    /// A [`ColumnType::Int`] value.
    fn int(&mut self, v: i32);
    /// A [`ColumnType::Double`] value.
    fn double(&mut self, v: f64);
    /// A [`ColumnType::Float`] value.
    fn float(&mut self, v: f32);
    /// A [`ColumnType::Boolean`] value.
    fn boolean(&mut self, v: bool);
    /// A [`ColumnType::String`] value.
    fn string(&mut self, v: &str);
}

/// The visitor behind [`Fields::push_values`]: each column as a [`Value`].
struct PushValues<'a>(&'a mut Vec<Value>);

impl FieldVisitor for PushValues<'_> {
    fn null(&mut self) {
        self.0.push(Value::Null);
    }
    fn long(&mut self, v: i64) {
        self.0.push(Value::Long(v));
    }
    fn int(&mut self, v: i32) {
        self.0.push(Value::Int(v));
    }
    fn double(&mut self, v: f64) {
        self.0.push(Value::Double(v));
    }
    fn float(&mut self, v: f32) {
        self.0.push(Value::Float(v));
    }
    fn boolean(&mut self, v: bool) {
        self.0.push(Value::Boolean(v));
    }
    fn string(&mut self, v: &str) {
        self.0.push(Value::String(v.to_owned()));
    }
}

/// Hands out a stored row's values one column at a time, in column order: what
/// [`Fields::read_values`] takes. A backend's row reader implements it so a record is
/// built straight from the row, without first collecting the row into a `Vec<Value>`
/// (the SQLite history read: ~100 columns per DiaSource, thousands of rows per
/// detector).
pub trait ValueSource {
    /// The next column's value.
    fn next_value(&mut self) -> Value;
}

/// A Rust type that maps to one column.
pub trait Field: Sized {
    /// The column type.
    const TYPE: ColumnType;
    /// Whether NULL is allowed.
    const NULLABLE: bool = false;
    /// Hands the value to `v` (one call, of the method for [`Field::TYPE`], or
    /// [`FieldVisitor::null`]).
    fn visit<V: FieldVisitor>(&self, v: &mut V);
    /// The field from a stored value; `None` when the value does not fit.
    fn from_value(v: Value) -> Option<Self>;
}

macro_rules! field_impl {
    ($t:ty, $ct:ident, |$s:ident, $vis:ident| $visit:expr, |$v:ident| $from:expr) => {
        impl Field for $t {
            const TYPE: ColumnType = ColumnType::$ct;
            #[inline(always)]
            fn visit<V: FieldVisitor>(&self, $vis: &mut V) {
                let $s = self;
                $visit
            }
            fn from_value($v: Value) -> Option<Self> {
                $from
            }
        }
    };
}

field_impl!(i64, Long, |s, v| v.long(*s), |v| match v {
    Value::Long(x) => Some(x),
    Value::Int(x) => Some(x.into()),
    _ => None,
});
field_impl!(i32, Int, |s, v| v.int(*s), |v| match v {
    Value::Int(x) => Some(x),
    Value::Long(x) => i32::try_from(x).ok(),
    _ => None,
});
field_impl!(f64, Double, |s, v| v.double(*s), |v| {
    match v {
        Value::Double(x) => Some(x),
        Value::Float(x) => Some(x.into()),
        _ => None,
    }
});
field_impl!(f32, Float, |s, v| v.float(*s), |v| {
    match v {
        Value::Float(x) => Some(x),
        Value::Double(x) => Some(x as f32),
        _ => None,
    }
});
field_impl!(bool, Boolean, |s, v| v.boolean(*s), |v| {
    match v {
        Value::Boolean(x) => Some(x),
        Value::Long(x) => Some(x != 0),
        Value::Int(x) => Some(x != 0),
        _ => None,
    }
});
field_impl!(String, String, |s, v| v.string(s), |v| {
    match v {
        Value::String(x) => Some(x),
        _ => None,
    }
});
field_impl!(DiaSourceId, Long, |s, v| v.long(s.0), |v| {
    i64::from_value(v).map(DiaSourceId)
});
field_impl!(DiaObjectId, Long, |s, v| v.long(s.0), |v| {
    i64::from_value(v).map(DiaObjectId)
});
field_impl!(VisitId, Long, |s, v| v.long(s.0 as i64), |v| {
    i64::from_value(v)
        .and_then(|x| u64::try_from(x).ok())
        .map(VisitId)
});
field_impl!(DetectorId, Int, |s, v| v.int(i32::from(s.0)), |v| {
    i32::from_value(v)
        .and_then(|x| u16::try_from(x).ok())
        .map(DetectorId)
});
field_impl!(MjdTai, Double, |s, v| v.double(s.0), |v| {
    f64::from_value(v).map(MjdTai)
});

impl<T: Field> Field for Option<T> {
    const TYPE: ColumnType = T::TYPE;
    const NULLABLE: bool = true;
    #[inline(always)]
    fn visit<V: FieldVisitor>(&self, v: &mut V) {
        match self {
            Some(x) => x.visit(v),
            None => v.null(),
        }
    }
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A group of fields mapped to consecutive columns (a record, or a part of one).
pub trait Fields: Sized {
    /// The columns, each name prefixed with `prefix`.
    fn columns_with_prefix(prefix: &str) -> Vec<Column>;
    /// Hands the values to `v`, in column order, one call per column (the one walk of
    /// a record's fields; [`Fields::push_values`] is this walk into [`Value`]s).
    fn visit_values<V: FieldVisitor>(&self, v: &mut V);
    /// Appends the values, in column order.
    fn push_values(&self, out: &mut Vec<Value>) {
        self.visit_values(&mut PushValues(out));
    }
    /// Takes the values, in column order.
    fn take_values(prefix: &str, it: &mut dyn Iterator<Item = Value>) -> Result<Self, ValueError>;
    /// Reads the values, in column order, from `src`: the same conversions as
    /// [`Fields::take_values`] ([`Field::from_value`]), without the per-column copy
    /// kept for the error. `None` at the first value that does not fit its field; the
    /// source knows which column that was, and the caller builds the [`ValueError`].
    fn read_values<S: ValueSource>(src: &mut S) -> Option<Self>;
}

/// A row type of an APDB table.
pub trait Record: Fields {
    /// The table name.
    const TABLE: &'static str;
    /// The columns in row order.
    fn columns() -> Vec<Column> {
        Self::columns_with_prefix("")
    }
    /// The row's values in column order.
    fn to_values(&self) -> Vec<Value> {
        let mut v = Vec::new();
        self.push_values(&mut v);
        v
    }
    /// The record from values in column order.
    fn from_values(values: Vec<Value>) -> Result<Self, ValueError> {
        Self::take_values("", &mut values.into_iter())
    }
}

fn take<T: Field>(
    prefix: &str,
    name: &str,
    it: &mut dyn Iterator<Item = Value>,
) -> Result<T, ValueError> {
    let v = it.next().unwrap_or(Value::Null);
    T::from_value(v.clone()).ok_or_else(|| ValueError {
        column: format!("{prefix}{name}"),
        expected: T::TYPE,
        found: v,
    })
}

macro_rules! record {
    (
        $(#[doc = $sdoc:literal])*
        struct $name:ident $(=> $table:literal)? {
            $(
                #[doc = $doc:literal]
                $field:ident : $ty:ty = $col:literal, $unit:literal, $kind:ident;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
        pub struct $name {
            $(
                #[doc = $doc]
                #[doc = ""]
                #[doc = concat!("Column `", $col, "`, unit `", $unit, "`, ", stringify!($kind), ".")]
                pub $field: $ty,
            )*
        }

        impl Fields for $name {
            fn columns_with_prefix(prefix: &str) -> Vec<Column> {
                let mut cols = Vec::new();
                $( record!(@col cols, prefix, $ty, $col, $unit, $doc, $kind); )*
                cols
            }
            // Inlined into each visitor's caller, so a visitor's state (a cursor, the
            // column index) lives in registers across the fields.
            #[inline(always)]
            fn visit_values<V: FieldVisitor>(&self, v: &mut V) {
                $( record!(@visit v, self.$field, $kind); )*
            }
            fn take_values(
                prefix: &str,
                it: &mut dyn Iterator<Item = Value>,
            ) -> Result<Self, ValueError> {
                Ok(Self {
                    $( $field: record!(@take prefix, it, $ty, $col, $kind), )*
                })
            }
            #[inline]
            fn read_values<S: ValueSource>(src: &mut S) -> Option<Self> {
                Some(Self {
                    $( $field: record!(@read src, $ty, $kind), )*
                })
            }
        }

        $( impl Record for $name {
            const TABLE: &'static str = $table;
        } )?
    };
    (@col $cols:ident, $prefix:ident, $ty:ty, $col:literal, $unit:literal, $doc:literal, flatten) => {
        $cols.extend(<$ty as Fields>::columns_with_prefix(&format!("{}{}", $prefix, $col)));
    };
    (@col $cols:ident, $prefix:ident, $ty:ty, $col:literal, $unit:literal, $doc:literal, $kind:ident) => {
        $cols.push(Column {
            name: format!("{}{}", $prefix, $col),
            ty: <$ty as Field>::TYPE,
            nullable: <$ty as Field>::NULLABLE,
            unit: $unit,
            description: $doc.trim().to_string(),
            avro: record!(@isavro $kind),
        });
    };
    (@isavro avro) => { true };
    (@isavro local) => { false };
    (@visit $v:ident, $e:expr, flatten) => { $e.visit_values($v) };
    (@visit $v:ident, $e:expr, $kind:ident) => { Field::visit(&$e, $v) };
    (@take $prefix:ident, $it:ident, $ty:ty, $col:literal, flatten) => {
        <$ty as Fields>::take_values(&format!("{}{}", $prefix, $col), $it)?
    };
    (@take $prefix:ident, $it:ident, $ty:ty, $col:literal, $kind:ident) => {
        take::<$ty>($prefix, $col, $it)?
    };
    (@read $src:ident, $ty:ty, flatten) => {
        <$ty as Fields>::read_values($src)?
    };
    (@read $src:ident, $ty:ty, $kind:ident) => {
        <$ty as Field>::from_value($src.next_value())?
    };
}

record! {
    /// A detection on a difference image (`DiaSource` table, `lsst.v11_0.diaSource`).
    ///
    /// Filled by measurement; association sets `dia_object_id` or `ss_object_id`.
    struct DiaSource => "DiaSource" {
        /// Unique identifier of this DiaSource.
        dia_source_id: DiaSourceId = "diaSourceId", "", avro;
        /// Id of the visit where this diaSource was measured.
        visit: VisitId = "visit", "", avro;
        /// Id of the detector where this diaSource was measured. Datatype short instead of byte because of DB concerns about unsigned bytes.
        detector: DetectorId = "detector", "", avro;
        /// Id of the diaObject this source was associated with, if any. If not, it is set to NULL (each diaSource will be associated with either a diaObject or ssObject).
        dia_object_id: Option<DiaObjectId> = "diaObjectId", "", avro;
        /// Id of the ssObject this source was associated with, if any. If not, it is set to NULL (each diaSource will be associated with either a diaObject or ssObject).
        ss_object_id: Option<i64> = "ssObjectId", "", avro;
        /// Id of the parent diaSource this diaSource has been deblended from, if any.
        parent_dia_source_id: Option<DiaSourceId> = "parentDiaSourceId", "", avro;
        /// Effective mid-visit time for this diaSource, expressed as Modified Julian Date, International Atomic Time.
        midpoint_mjd_tai: MjdTai = "midpointMjdTai", "d", avro;
        /// Right ascension coordinate of the center of this diaSource.
        ra: f64 = "ra", "deg", avro;
        /// Uncertainty of ra.
        ra_err: Option<f32> = "raErr", "deg", avro;
        /// Declination coordinate of the center of this diaSource.
        dec: f64 = "dec", "deg", avro;
        /// Uncertainty of dec.
        dec_err: Option<f32> = "decErr", "deg", avro;
        /// Covariance between ra and dec.
        ra_dec_cov: Option<f32> = "ra_dec_Cov", "deg**2", avro;
        /// x position computed by a centroiding algorithm.
        x: f32 = "x", "pixel", avro;
        /// Uncertainty of x.
        x_err: Option<f32> = "xErr", "pixel", avro;
        /// y position computed by a centroiding algorithm.
        y: f32 = "y", "pixel", avro;
        /// Uncertainty of y.
        y_err: Option<f32> = "yErr", "pixel", avro;
        /// General centroid algorithm failure flag; set if anything went wrong when fitting the centroid. Another centroid flag field should also be set to provide more information.
        centroid_flag: Option<bool> = "centroid_flag", "", avro;
        /// Flux in a 12 pixel radius aperture on the difference image.
        ap_flux: Option<f32> = "apFlux", "nJy", avro;
        /// Estimated uncertainty of apFlux.
        ap_flux_err: Option<f32> = "apFluxErr", "nJy", avro;
        /// General aperture flux algorithm failure flag; set if anything went wrong when measuring aperture fluxes. Another apFlux flag field should also be set to provide more information.
        ap_flux_flag: Option<bool> = "apFlux_flag", "", avro;
        /// Aperture did not fit within measurement image.
        ap_flux_flag_aperture_truncated: Option<bool> = "apFlux_flag_apertureTruncated", "", avro;
        /// Source was detected as significantly negative.
        is_negative: Option<bool> = "isNegative", "", avro;
        /// The signal-to-noise ratio at which this source was detected in the difference image.
        snr: Option<f32> = "snr", "", avro;
        /// Flux for Point Source model. Note this actually measures the flux difference between the template and the visit image.
        psf_flux: Option<f32> = "psfFlux", "nJy", avro;
        /// Uncertainty of psfFlux.
        psf_flux_err: Option<f32> = "psfFluxErr", "nJy", avro;
        /// Natural log likelihood of the observed data given the point source model.
        psf_ln_l: Option<f32> = "psfLnL", "", avro;
        /// Chi^2 statistic of the point source model fit.
        psf_chi2: Option<f32> = "psfChi2", "", avro;
        /// The number of data points (pixels) used to fit the point source model.
        psf_ndata: i32 = "psfNdata", "", avro;
        /// Failure to derive linear least-squares fit of psf model. Another psfFlux flag field should also be set to provide more information.
        psf_flux_flag: Option<bool> = "psfFlux_flag", "", avro;
        /// Object was too close to the edge of the image to use the full PSF model.
        psf_flux_flag_edge: Option<bool> = "psfFlux_flag_edge", "", avro;
        /// Not enough non-rejected pixels in data to attempt the fit.
        psf_flux_flag_no_good_pixels: Option<bool> = "psfFlux_flag_noGoodPixels", "", avro;
        /// Flux for a trailed source model. Note this actually measures the flux difference between the template and the visit image.
        trail_flux: Option<f32> = "trailFlux", "nJy", avro;
        /// Uncertainty of trailFlux.
        trail_flux_err: Option<f32> = "trailFluxErr", "nJy", avro;
        /// Right ascension coordinate of centroid for trailed source model.
        trail_ra: Option<f64> = "trailRa", "deg", avro;
        /// Uncertainty of trailRa.
        trail_ra_err: Option<f32> = "trailRaErr", "deg", avro;
        /// Declination coordinate of centroid for trailed source model.
        trail_dec: Option<f64> = "trailDec", "deg", avro;
        /// Uncertainty of trailDec.
        trail_dec_err: Option<f32> = "trailDecErr", "deg", avro;
        /// Maximum likelihood fit of trail length.
        trail_length: Option<f32> = "trailLength", "arcsec", avro;
        /// Uncertainty of trailLength.
        trail_length_err: Option<f32> = "trailLengthErr", "nJy", avro;
        /// Maximum likelihood fit of the angle between the meridian through the centroid and the trail direction (bearing).
        trail_angle: Option<f32> = "trailAngle", "deg", avro;
        /// Uncertainty of trailAngle.
        trail_angle_err: Option<f32> = "trailAngleErr", "nJy", avro;
        /// Chi^2 statistic of the trailed source model fit.
        trail_chi2: Option<f32> = "trailChi2", "", avro;
        /// The number of data points (pixels) used to fit the trailed source model.
        trail_ndata: i32 = "trailNdata", "", avro;
        /// This flag is set if a trailed source extends onto or past edge pixels.
        trail_flag_edge: Option<bool> = "trail_flag_edge", "", avro;
        /// Maximum likelihood value for the mean absolute flux of the two lobes for a dipole model.
        dipole_mean_flux: Option<f32> = "dipoleMeanFlux", "nJy", avro;
        /// Uncertainty of dipoleMeanFlux.
        dipole_mean_flux_err: Option<f32> = "dipoleMeanFluxErr", "nJy", avro;
        /// Maximum likelihood value for the difference of absolute fluxes of the two lobes for a dipole model.
        dipole_flux_diff: Option<f32> = "dipoleFluxDiff", "nJy", avro;
        /// Uncertainty of dipoleFluxDiff.
        dipole_flux_diff_err: Option<f32> = "dipoleFluxDiffErr", "nJy", avro;
        /// Maximum likelihood value for the lobe separation in dipole model.
        dipole_length: Option<f32> = "dipoleLength", "arcsec", avro;
        /// Maximum likelihood fit of the angle between the meridian through the centroid and the dipole direction (bearing, from negative to positive lobe).
        dipole_angle: Option<f32> = "dipoleAngle", "deg", avro;
        /// Chi^2 statistic of the model fit.
        dipole_chi2: Option<f32> = "dipoleChi2", "", avro;
        /// The number of data points (pixels) used to fit the model.
        dipole_ndata: i32 = "dipoleNdata", "", avro;
        /// Forced photometry flux for a point source model measured on the visit image centered at DiaSource position.
        science_flux: Option<f32> = "scienceFlux", "nJy", avro;
        /// Estimated uncertainty of scienceFlux.
        science_flux_err: Option<f32> = "scienceFluxErr", "nJy", avro;
        /// Forced PSF photometry on science image failed. Another forced_PsfFlux flag field should also be set to provide more information.
        forced_psf_flux_flag: Option<bool> = "forced_PsfFlux_flag", "", avro;
        /// Forced PSF flux on science image was too close to the edge of the image to use the full PSF model.
        forced_psf_flux_flag_edge: Option<bool> = "forced_PsfFlux_flag_edge", "", avro;
        /// Forced PSF flux not enough non-rejected pixels in data to attempt the fit.
        forced_psf_flux_flag_no_good_pixels: Option<bool> = "forced_PsfFlux_flag_noGoodPixels", "", avro;
        /// Forced photometry flux for a point source model measured on the template image centered at the DiaObject position.
        template_flux: Option<f32> = "templateFlux", "nJy", avro;
        /// Uncertainty of templateFlux.
        template_flux_err: Option<f32> = "templateFluxErr", "nJy", avro;
        /// Adaptive second moment of the source intensity.
        ixx: Option<f32> = "ixx", "nJy.arcsec**2", avro;
        /// Adaptive second moment of the source intensity.
        iyy: Option<f32> = "iyy", "nJy.arcsec**2", avro;
        /// Adaptive second moment of the source intensity.
        ixy: Option<f32> = "ixy", "nJy.arcsec**2", avro;
        /// Adaptive second moment for the PSF.
        ixx_psf: Option<f32> = "ixxPSF", "nJy.arcsec**2", avro;
        /// Adaptive second moment for the PSF.
        iyy_psf: Option<f32> = "iyyPSF", "nJy.arcsec**2", avro;
        /// Adaptive second moment for the PSF.
        ixy_psf: Option<f32> = "ixyPSF", "nJy.arcsec**2", avro;
        /// General source shape algorithm failure flag; set if anything went wrong when measuring the shape. Another shape flag field should also be set to provide more information.
        shape_flag: Option<bool> = "shape_flag", "", avro;
        /// No pixels to measure shape.
        shape_flag_no_pixels: Option<bool> = "shape_flag_no_pixels", "", avro;
        /// Center not contained in footprint bounding box.
        shape_flag_not_contained: Option<bool> = "shape_flag_not_contained", "", avro;
        /// This source is a parent source; we should only be measuring on deblended children in difference imaging.
        shape_flag_parent_source: Option<bool> = "shape_flag_parent_source", "", avro;
        /// A measure of extendedness, computed by comparing an object's moment-based traced radius to the PSF moments. extendedness = 1 implies a high degree of confidence that the source is extended. extendedness = 0 implies a high degree of confidence that the source is point-like.
        extendedness: Option<f32> = "extendedness", "", avro;
        /// Probability (0-1) that the diaSource is astrophysical, derived from a machine learning model.
        reliability: Option<f32> = "reliability", "", avro;
        /// Filter band this source was observed with.
        band: String = "band", "", avro;
        /// Source well fit by a dipole.
        is_dipole: Option<bool> = "isDipole", "", avro;
        /// Attempted to fit a dipole model to this source.
        dipole_fit_attempted: Option<bool> = "dipoleFitAttempted", "", avro;
        /// Time when the image was processed and this DiaSource record was generated, expressed as Modified Julian Date, International Atomic Time.
        time_processed_mjd_tai: f64 = "timeProcessedMjdTai", "", avro;
        /// Time when this record was marked invalid, expressed as Modified Julian Date, International Atomic Time.
        time_withdrawn_mjd_tai: Option<f64> = "timeWithdrawnMjdTai", "", avro;
        /// Size of the square bounding box that fully contains the detection footprint.
        bbox_size: i32 = "bboxSize", "pixel", avro;
        /// General pixel flags failure; set if anything went wrong when setting pixels flags from this footprint's mask. This implies that some pixelFlags for this source may be incorrectly set to False.
        pixel_flags: Option<bool> = "pixelFlags", "", avro;
        /// Bad pixel in the DiaSource footprint.
        pixel_flags_bad: Option<bool> = "pixelFlags_bad", "", avro;
        /// Cosmic ray in the DiaSource footprint.
        pixel_flags_cr: Option<bool> = "pixelFlags_cr", "", avro;
        /// Cosmic ray in the 3x3 region around the centroid.
        pixel_flags_cr_center: Option<bool> = "pixelFlags_crCenter", "", avro;
        /// Some of the source footprint is outside usable exposure region (masked EDGE or centroid off image).
        pixel_flags_edge: Option<bool> = "pixelFlags_edge", "", avro;
        /// NO_DATA pixel in the source footprint.
        pixel_flags_nodata: Option<bool> = "pixelFlags_nodata", "", avro;
        /// NO_DATA pixel in the 3x3 region around the centroid.
        pixel_flags_nodata_center: Option<bool> = "pixelFlags_nodataCenter", "", avro;
        /// Interpolated pixel in the DiaSource footprint.
        pixel_flags_interpolated: Option<bool> = "pixelFlags_interpolated", "", avro;
        /// Interpolated pixel in the 3x3 region around the centroid.
        pixel_flags_interpolated_center: Option<bool> = "pixelFlags_interpolatedCenter", "", avro;
        /// DiaSource center is off image.
        pixel_flags_offimage: Option<bool> = "pixelFlags_offimage", "", avro;
        /// Saturated pixel in the DiaSource footprint.
        pixel_flags_saturated: Option<bool> = "pixelFlags_saturated", "", avro;
        /// Saturated pixel in the 3x3 region around the centroid.
        pixel_flags_saturated_center: Option<bool> = "pixelFlags_saturatedCenter", "", avro;
        /// DiaSource's footprint includes suspect pixels.
        pixel_flags_suspect: Option<bool> = "pixelFlags_suspect", "", avro;
        /// Suspect pixel in the 3x3 region around the centroid.
        pixel_flags_suspect_center: Option<bool> = "pixelFlags_suspectCenter", "", avro;
        /// Streak in the DiaSource footprint.
        pixel_flags_streak: Option<bool> = "pixelFlags_streak", "", avro;
        /// Streak in the 3x3 region around the centroid.
        pixel_flags_streak_center: Option<bool> = "pixelFlags_streakCenter", "", avro;
        /// Injection in the DiaSource footprint.
        pixel_flags_injected: Option<bool> = "pixelFlags_injected", "", avro;
        /// Injection in the 3x3 region around the centroid.
        pixel_flags_injected_center: Option<bool> = "pixelFlags_injectedCenter", "", avro;
        /// Template injection in the DiaSource footprint.
        pixel_flags_injected_template: Option<bool> = "pixelFlags_injected_template", "", avro;
        /// Template injection in the 3x3 region around the centroid.
        pixel_flags_injected_template_center: Option<bool> = "pixelFlags_injected_templateCenter", "", avro;
        /// This flag is set if the source is part of a glint trail.
        glint_trail: Option<bool> = "glint_trail", "", avro;
    }
}

record! {
    /// Forced photometry of a DiaObject on one visit's difference and science images
    /// (`DiaForcedSource` table, `lsst.v11_0.diaForcedSource`).
    struct DiaForcedSource => "DiaForcedSource" {
        /// Unique id.
        dia_forced_source_id: i64 = "diaForcedSourceId", "", avro;
        /// Id of the DiaObject that this DiaForcedSource was associated with.
        dia_object_id: DiaObjectId = "diaObjectId", "", avro;
        /// Right ascension coordinate of the position of the DiaObject.
        ra: f64 = "ra", "deg", avro;
        /// Declination coordinate of the position of the DiaObject.
        dec: f64 = "dec", "deg", avro;
        /// Id of the visit where this forcedSource was measured.
        visit: VisitId = "visit", "", avro;
        /// Id of the detector where this forcedSource was measured. Datatype short instead of byte because of DB concerns about unsigned bytes.
        detector: DetectorId = "detector", "", avro;
        /// Point Source model flux.
        psf_flux: Option<f32> = "psfFlux", "nJy", avro;
        /// Uncertainty of psfFlux.
        psf_flux_err: Option<f32> = "psfFluxErr", "nJy", avro;
        /// Effective mid-visit time for this diaForcedSource, expressed as Modified Julian Date, International Atomic Time.
        midpoint_mjd_tai: MjdTai = "midpointMjdTai", "d", avro;
        /// Forced photometry flux for a point source model measured on the visit image centered at the DiaObject position.
        science_flux: Option<f32> = "scienceFlux", "nJy", avro;
        /// Uncertainty of scienceFlux.
        science_flux_err: Option<f32> = "scienceFluxErr", "nJy", avro;
        /// Filter band this source was observed with.
        band: String = "band", "", avro;
        /// Time when this record was generated, expressed as Modified Julian Date, International Atomic Time.
        time_processed_mjd_tai: f64 = "timeProcessedMjdTai", "", avro;
        /// Time when this record was marked invalid, expressed as Modified Julian Date, International Atomic Time.
        time_withdrawn_mjd_tai: Option<f64> = "timeWithdrawnMjdTai", "", avro;
    }
}

record! {
    /// Light-curve summary of one band of a DiaObject (columns `<band>_…`).
    ///
    /// Computed over the DiaSources (`psf*`) and forced sources (`fp*`, `science*`)
    /// within the history window (12 months by default).
    struct BandStats {
        /// Weighted mean point-source model flux (inverse-variance weights).
        psf_flux_mean: Option<f32> = "psfFluxMean", "nJy", avro;
        /// Standard error of the weighted mean psfFlux.
        psf_flux_mean_err: Option<f32> = "psfFluxMeanErr", "nJy", avro;
        /// Standard deviation of the distribution of psfFlux.
        psf_flux_sigma: Option<f32> = "psfFluxSigma", "nJy", avro;
        /// Chi^2 of the psfFlux about their weighted mean.
        psf_flux_chi2: Option<f32> = "psfFluxChi2", "", local;
        /// The number of psfFlux data points.
        psf_flux_ndata: i32 = "psfFluxNdata", "", avro;
        /// Weighted mean forced photometry flux on difference images.
        fp_flux_mean: Option<f32> = "fpFluxMean", "nJy", avro;
        /// Standard error of fpFluxMean.
        fp_flux_mean_err: Option<f32> = "fpFluxMeanErr", "nJy", avro;
        /// Weighted mean forced photometry flux on science (direct) images.
        science_flux_mean: Option<f32> = "scienceFluxMean", "nJy", avro;
        /// Standard error of scienceFluxMean.
        science_flux_mean_err: Option<f32> = "scienceFluxMeanErr", "nJy", avro;
        /// Minimum observed psfFlux.
        psf_flux_min: Option<f32> = "psfFluxMin", "nJy", avro;
        /// Maximum observed psfFlux.
        psf_flux_max: Option<f32> = "psfFluxMax", "nJy", avro;
        /// Maximum slope between consecutive psfFlux observations, max(|Δflux/Δtime|).
        psf_flux_max_slope: Option<f32> = "psfFluxMaxSlope", "nJy/d", avro;
        /// Mean of the psfFlux errors.
        psf_flux_err_mean: Option<f32> = "psfFluxErrMean", "nJy", avro;
    }
}

/// The LSST bands, in the order of [`Bands`].
pub const BANDS: [&str; 6] = ["u", "g", "r", "i", "z", "y"];

/// Per-band summaries of a DiaObject, `u` to `y`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Bands(pub [BandStats; 6]);

impl Bands {
    /// The stats of `band` (`"u"` … `"y"`), `None` for other bands.
    pub fn get(&self, band: &str) -> Option<&BandStats> {
        BANDS.iter().position(|b| *b == band).map(|i| &self.0[i])
    }
    /// Mutable stats of `band`.
    pub fn get_mut(&mut self, band: &str) -> Option<&mut BandStats> {
        BANDS
            .iter()
            .position(|b| *b == band)
            .map(|i| &mut self.0[i])
    }
}

impl Fields for Bands {
    fn columns_with_prefix(prefix: &str) -> Vec<Column> {
        BANDS
            .iter()
            .flat_map(|b| BandStats::columns_with_prefix(&format!("{prefix}{b}_")))
            .collect()
    }
    #[inline(always)]
    fn visit_values<V: FieldVisitor>(&self, v: &mut V) {
        for s in &self.0 {
            s.visit_values(v);
        }
    }
    fn take_values(prefix: &str, it: &mut dyn Iterator<Item = Value>) -> Result<Self, ValueError> {
        let mut out: [BandStats; 6] = Default::default();
        for (i, b) in BANDS.iter().enumerate() {
            out[i] = BandStats::take_values(&format!("{prefix}{b}_"), it)?;
        }
        Ok(Self(out))
    }
    #[inline]
    fn read_values<S: ValueSource>(src: &mut S) -> Option<Self> {
        let mut out: [BandStats; 6] = Default::default();
        for s in out.iter_mut() {
            *s = BandStats::read_values(src)?;
        }
        Some(Self(out))
    }
}

record! {
    /// One version of a DiaObject (`DiaObject` table, `lsst.v11_0.diaObject`): an
    /// astrophysical object seen on difference images, with its light-curve summary.
    ///
    /// Versioned: each visit that updates an object adds a row valid from
    /// `validity_start_mjd_tai` (the visit's midpoint); the previous version's
    /// `validity_end_mjd_tai` is set to the same time (SQLite backend).
    struct DiaObject => "DiaObject" {
        /// Unique identifier of this DiaObject (the id of the DiaSource that created it).
        dia_object_id: DiaObjectId = "diaObjectId", "", avro;
        /// Time when validity of this version starts (the midpoint of the visit that wrote it).
        validity_start_mjd_tai: f64 = "validityStartMjdTai", "d", avro;
        /// Time when validity of this version ends; NULL for the current version.
        validity_end_mjd_tai: Option<f64> = "validityEndMjdTai", "d", local;
        /// Right ascension of the position of the object.
        ra: f64 = "ra", "deg", avro;
        /// Uncertainty of ra.
        ra_err: Option<f32> = "raErr", "deg", avro;
        /// Declination of the position of the object.
        dec: f64 = "dec", "deg", avro;
        /// Uncertainty of dec.
        dec_err: Option<f32> = "decErr", "deg", avro;
        /// Covariance between ra and dec.
        ra_dec_cov: Option<f32> = "ra_dec_Cov", "deg**2", avro;
        /// Per-band light-curve summaries.
        bands: Bands = "", "", flatten;
        /// Time of the first DiaSource.
        first_dia_source_mjd_tai: Option<f64> = "firstDiaSourceMjdTai", "d", avro;
        /// Time of the most recent DiaSource.
        last_dia_source_mjd_tai: Option<f64> = "lastDiaSourceMjdTai", "d", avro;
        /// Total number of DiaSources associated with this DiaObject.
        n_dia_sources: i32 = "nDiaSources", "", avro;
    }
}

record! {
    /// The latest version of a DiaObject, slim: what association reads for a region
    /// (`DiaObjectLast` table; its columns are a subset of `DiaObject`'s).
    struct DiaObjectLast => "DiaObjectLast" {
        /// Unique identifier of this DiaObject.
        dia_object_id: DiaObjectId = "diaObjectId", "", avro;
        /// Time when validity of this version starts.
        validity_start_mjd_tai: f64 = "validityStartMjdTai", "d", avro;
        /// Right ascension of the position of the object.
        ra: f64 = "ra", "deg", avro;
        /// Uncertainty of ra.
        ra_err: Option<f32> = "raErr", "deg", avro;
        /// Declination of the position of the object.
        dec: f64 = "dec", "deg", avro;
        /// Uncertainty of dec.
        dec_err: Option<f32> = "decErr", "deg", avro;
        /// Covariance between ra and dec.
        ra_dec_cov: Option<f32> = "ra_dec_Cov", "deg**2", avro;
        /// Time of the first DiaSource.
        first_dia_source_mjd_tai: Option<f64> = "firstDiaSourceMjdTai", "d", avro;
        /// Time of the most recent DiaSource.
        last_dia_source_mjd_tai: Option<f64> = "lastDiaSourceMjdTai", "d", avro;
        /// Total number of DiaSources associated with this DiaObject.
        n_dia_sources: i32 = "nDiaSources", "", avro;
    }
}

impl DiaObject {
    /// The slim latest-version row of this version.
    pub fn to_last(&self) -> DiaObjectLast {
        DiaObjectLast {
            dia_object_id: self.dia_object_id,
            validity_start_mjd_tai: self.validity_start_mjd_tai,
            ra: self.ra,
            ra_err: self.ra_err,
            dec: self.dec,
            dec_err: self.dec_err,
            ra_dec_cov: self.ra_dec_cov,
            first_dia_source_mjd_tai: self.first_dia_source_mjd_tai,
            last_dia_source_mjd_tai: self.last_dia_source_mjd_tai,
            n_dia_sources: self.n_dia_sources,
        }
    }
}

record! {
    /// A solar-system object (`SSObject` table, a subset of `lsst.v11_0.ssObject`:
    /// identity and observation summary; phase-curve fits belong to the orbit service).
    struct SsObject => "SSObject" {
        /// Unique identifier.
        ss_object_id: i64 = "ssObjectId", "", avro;
        /// The unpacked primary provisional designation for this object.
        designation: Option<String> = "designation", "", avro;
        /// Total number of LSST observations of this object.
        n_obs: i32 = "nObs", "", avro;
        /// Timespan ('arc') of all LSST observations, t_last - t_first.
        arc: f32 = "arc", "d", avro;
        /// The time of the first LSST observation of this object.
        first_observation_mjd_tai: Option<f64> = "firstObservationMjdTai", "d", avro;
    }
}

/// One table of the APDB.
#[derive(Clone, Debug, Serialize)]
pub struct TableDef {
    /// Table name.
    pub name: &'static str,
    /// What the table holds.
    pub description: &'static str,
    /// Columns of the record, in row order.
    pub columns: Vec<Column>,
    /// Primary key columns.
    pub primary_key: &'static [&'static str],
    /// The `lsst.v11_0` Avro record this table corresponds to, if any.
    pub avro_record: Option<&'static str>,
}

impl TableDef {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The whole APDB schema.
#[derive(Clone, Debug, Serialize)]
pub struct Schema {
    /// Its version.
    pub version: SchemaVersion,
    /// Its tables.
    pub tables: Vec<TableDef>,
}

impl Schema {
    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables.iter().find(|t| t.name == name)
    }
}

fn plain(name: &str, ty: ColumnType, nullable: bool, unit: &'static str, d: &str) -> Column {
    Column {
        name: name.into(),
        ty,
        nullable,
        unit,
        description: d.into(),
        avro: false,
    }
}

/// The APDB schema: record tables plus the metadata and bookkeeping tables.
pub fn schema() -> &'static Schema {
    static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
        version: SCHEMA_VERSION,
        tables: vec![
            TableDef {
                name: DiaObject::TABLE,
                description: "All versions of every DiaObject, with per-band light-curve summaries.",
                columns: DiaObject::columns(),
                primary_key: &["diaObjectId", "validityStartMjdTai"],
                avro_record: Some("diaObject"),
            },
            TableDef {
                name: DiaObjectLast::TABLE,
                description: "The latest version of every DiaObject, slim; read by association.",
                columns: DiaObjectLast::columns(),
                primary_key: &["diaObjectId"],
                avro_record: None,
            },
            TableDef {
                name: DiaSource::TABLE,
                description: "Detections on difference images.",
                columns: DiaSource::columns(),
                primary_key: &["diaSourceId"],
                avro_record: Some("diaSource"),
            },
            TableDef {
                name: DiaForcedSource::TABLE,
                description: "Forced photometry of DiaObjects on difference and science images.",
                columns: DiaForcedSource::columns(),
                primary_key: &["diaForcedSourceId"],
                avro_record: Some("diaForcedSource"),
            },
            TableDef {
                name: SsObject::TABLE,
                description: "Solar-system objects known to the pipeline.",
                columns: SsObject::columns(),
                primary_key: &["ssObjectId"],
                avro_record: Some("ssObject"),
            },
            TableDef {
                name: METADATA_TABLE,
                description: "Schema version and configuration of this APDB.",
                columns: vec![
                    plain("name", ColumnType::String, false, "", "Metadata key."),
                    plain("value", ColumnType::String, false, "", "Metadata value."),
                ],
                primary_key: &["name"],
                avro_record: None,
            },
            TableDef {
                name: VISIT_DETECTOR_TABLE,
                description: "One row per stored (visit, detector): what makes store idempotent.",
                columns: vec![
                    plain("visit", ColumnType::Long, false, "", "Visit id."),
                    plain("detector", ColumnType::Int, false, "", "Detector id."),
                    plain(
                        "storedMjdTai",
                        ColumnType::Double,
                        false,
                        "d",
                        "Time of the store (of the visit's midpoint).",
                    ),
                    plain(
                        "nDiaObjects",
                        ColumnType::Int,
                        false,
                        "",
                        "DiaObject versions written.",
                    ),
                    plain(
                        "nDiaSources",
                        ColumnType::Int,
                        false,
                        "",
                        "DiaSources written.",
                    ),
                    plain(
                        "nDiaForcedSources",
                        ColumnType::Int,
                        false,
                        "",
                        "Forced sources written.",
                    ),
                    plain(
                        "writtenKeys",
                        ColumnType::String,
                        true,
                        "",
                        "Partition keys of the rows written (JSON), for replacing them on a rerun (Scylla backend).",
                    ),
                ],
                primary_key: &["visit", "detector"],
                avro_record: None,
            },
        ],
    });
    &SCHEMA
}

/// Name of the metadata table.
pub const METADATA_TABLE: &str = "metadata";
/// Name of the (visit, detector) bookkeeping table.
pub const VISIT_DETECTOR_TABLE: &str = "ApdbVisitDetector";
/// Storage column holding the spatial partition (NESTED HEALPix cell at [`crate::partition::PIXEL_DEPTH`]).
pub const PART_COLUMN: &str = "apdb_part";
/// Storage column holding the time partition (`floor(MJD TAI / 30 d)`).
pub const TIME_PART_COLUMN: &str = "apdb_time_part";

/// The column names of a record, in order.
pub(crate) fn column_names<R: Record>() -> Vec<String> {
    R::columns().into_iter().map(|c| c.name).collect()
}

/// Column names double-quoted and comma-separated, for SQL and CQL.
pub(crate) fn quoted(cols: &[String]) -> String {
    cols.iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of a history table (DiaSource, DiaForcedSource): read back in time order.
pub(crate) trait HistoryRow {
    /// `(midpointMjdTai, id)`.
    fn order_key(&self) -> (f64, i64);
}

impl HistoryRow for DiaSource {
    fn order_key(&self) -> (f64, i64) {
        (self.midpoint_mjd_tai.0, self.dia_source_id.0)
    }
}

impl HistoryRow for DiaForcedSource {
    fn order_key(&self) -> (f64, i64) {
        (self.midpoint_mjd_tai.0, self.dia_forced_source_id)
    }
}

/// Sorts history rows by time, then id (the order every backend returns).
pub(crate) fn sort_history<T: HistoryRow>(rows: &mut [T]) {
    rows.sort_by(|a, b| {
        let (ta, ia) = a.order_key();
        let (tb, ib) = b.order_key();
        ta.total_cmp(&tb).then(ia.cmp(&ib))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_values() {
        let mut s = DiaSource {
            dia_source_id: DiaSourceId(42),
            visit: VisitId(2026112200001),
            detector: DetectorId(7),
            dia_object_id: Some(DiaObjectId(42)),
            midpoint_mjd_tai: MjdTai(61000.5),
            ra: 10.0,
            dec: -20.0,
            psf_flux: Some(1234.5),
            band: "r".into(),
            ..Default::default()
        };
        s.is_dipole = Some(false);
        let v = s.to_values();
        assert_eq!(v.len(), DiaSource::columns().len());
        assert_eq!(DiaSource::from_values(v).unwrap(), s);

        let mut o = DiaObject {
            dia_object_id: DiaObjectId(9),
            n_dia_sources: 3,
            ..Default::default()
        };
        o.bands.get_mut("i").unwrap().psf_flux_mean = Some(5.0);
        let v = o.to_values();
        assert_eq!(v.len(), DiaObject::columns().len());
        assert_eq!(DiaObject::from_values(v).unwrap(), o);
    }

    /// Records, per call, the column type the visitor method stands for (`None`: null).
    struct Types(Vec<Option<ColumnType>>);

    impl FieldVisitor for Types {
        fn null(&mut self) {
            self.0.push(None);
        }
        fn long(&mut self, _: i64) {
            self.0.push(Some(ColumnType::Long));
        }
        fn int(&mut self, _: i32) {
            self.0.push(Some(ColumnType::Int));
        }
        fn double(&mut self, _: f64) {
            self.0.push(Some(ColumnType::Double));
        }
        fn float(&mut self, _: f32) {
            self.0.push(Some(ColumnType::Float));
        }
        fn boolean(&mut self, _: bool) {
            self.0.push(Some(ColumnType::Boolean));
        }
        fn string(&mut self, _: &str) {
            self.0.push(Some(ColumnType::String));
        }
    }

    /// Every visit call is the column's own type (nulls only in nullable columns), one
    /// call per column: serialisers rely on it to write the schema's types.
    fn check_visit_types<R: Record>(r: &R) {
        let cols = R::columns();
        let mut t = Types(Vec::new());
        r.visit_values(&mut t);
        assert_eq!(t.0.len(), cols.len(), "{}", R::TABLE);
        for (c, ty) in cols.iter().zip(&t.0) {
            match ty {
                Some(ty) => assert_eq!(*ty, c.ty, "{}.{}", R::TABLE, c.name),
                None => assert!(c.nullable, "{}.{} is null", R::TABLE, c.name),
            }
        }
    }

    #[test]
    fn visits_are_typed_like_the_columns_for_nulls_and_values() {
        // Default records: every nullable column null.
        check_visit_types(&DiaSource::default());
        check_visit_types(&DiaObject::default());
        check_visit_types(&DiaForcedSource::default());
        check_visit_types(&DiaObjectLast::default());
        // Every column set: values of each type.
        fn full<R: Record>() -> R {
            let v = R::columns()
                .iter()
                .map(|c| match c.ty {
                    ColumnType::Long => Value::Long(1),
                    ColumnType::Int => Value::Int(2),
                    ColumnType::Double => Value::Double(3.0),
                    ColumnType::Float => Value::Float(4.0),
                    ColumnType::Boolean => Value::Boolean(true),
                    ColumnType::String => Value::String("r".into()),
                })
                .collect();
            R::from_values(v).unwrap()
        }
        let s: DiaSource = full();
        check_visit_types(&s);
        assert!(s.to_values().iter().all(|v| *v != Value::Null));
        check_visit_types(&full::<DiaObject>());
        check_visit_types(&full::<DiaForcedSource>());
    }

    /// Values handed out one at a time, as a backend's row reader does.
    struct Cells(std::vec::IntoIter<Value>);

    impl ValueSource for Cells {
        fn next_value(&mut self) -> Value {
            self.0.next().unwrap_or(Value::Null)
        }
    }

    #[test]
    fn read_values_builds_the_same_records_as_from_values() {
        let mut s = DiaSource {
            dia_source_id: DiaSourceId(42),
            dia_object_id: Some(DiaObjectId(42)),
            midpoint_mjd_tai: MjdTai(61000.5),
            psf_flux: Some(1234.5),
            band: "r".into(),
            ..Default::default()
        };
        s.is_dipole = Some(true);
        let read = |v: Vec<Value>| DiaSource::read_values(&mut Cells(v.into_iter()));
        assert_eq!(read(s.to_values()), Some(s.clone()));
        let mut o = DiaObject::default();
        o.bands.get_mut("y").unwrap().fp_flux_mean = Some(-3.0);
        assert_eq!(
            DiaObject::read_values(&mut Cells(o.to_values().into_iter())),
            Some(o)
        );
        // A value that does not fit stops the read where it is.
        let mut v = s.to_values();
        v[2] = Value::String("x".into());
        let mut cells = Cells(v.into_iter());
        assert_eq!(DiaSource::read_values(&mut cells), None);
        assert_eq!(cells.0.len(), DiaSource::columns().len() - 3);
    }

    #[test]
    fn wrong_value_type_names_the_column() {
        let mut v = DiaForcedSource::default().to_values();
        v[2] = Value::String("x".into());
        let e = DiaForcedSource::from_values(v).unwrap_err();
        assert_eq!(e.column, "ra");
    }

    #[test]
    fn column_names_are_unique_and_documented() {
        for t in &schema().tables {
            let mut names: Vec<_> = t.columns.iter().map(|c| c.name.as_str()).collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), n, "duplicate column in {}", t.name);
            for c in &t.columns {
                assert!(
                    !c.description.is_empty(),
                    "{}.{} has no description",
                    t.name,
                    c.name
                );
            }
            for k in t.primary_key {
                assert!(t.column(k).is_some(), "{}: key {k} is not a column", t.name);
            }
        }
        let obj = schema().table("DiaObject").unwrap();
        assert!(obj.column("g_psfFluxMaxSlope").is_some());
        assert_eq!(obj.column("r_psfFluxMean").unwrap().unit, "nJy");
        // DiaObjectLast is a column subset of DiaObject with the same types.
        for c in &schema().table("DiaObjectLast").unwrap().columns {
            assert_eq!(
                obj.column(&c.name).map(|o| (o.ty, o.nullable)),
                Some((c.ty, c.nullable))
            );
        }
    }

    #[test]
    fn version_compatibility() {
        let v = |s: &str| s.parse::<SchemaVersion>().unwrap();
        assert!(v("1.0").can_open(v("1.0")));
        assert!(v("1.2").can_open(v("1.1")));
        assert!(!v("1.1").can_open(v("1.2")));
        assert!(!v("2.0").can_open(v("1.0")));
        assert!("x".parse::<SchemaVersion>().is_err());
    }
}
