//! The alert writer schema (Avro JSON), generated from the APDB schema definition
//! ([`apflow_apdb::schema`]) in the shape of Rubin's `lsst.v11_0` alert schema.
//!
//! # How it is generated
//!
//! For each Avro record that has an APDB table (`diaSource` ← `DiaSource`,
//! `diaObject` ← `DiaObject`, `diaForcedSource` ← `DiaForcedSource`) the fields are
//! Rubin's fields, in Rubin's order (from the verbatim copy of the reference schema in
//! `schemas/avro/lsst.v11_0/`, compiled in), each typed from the APDB column of the same
//! name: the column's Avro type, `["null", T]` with default `null` when the column is
//! nullable, the column's description as `doc`. A Rubin field with no APDB column is
//! written as Rubin types it (a union with `null`, default `null`) and always carries
//! `null`: apflow never makes up a value. Columns marked `local` (apflow/APDB-only, such
//! as `validityEndMjdTai`) are not in the alert. A Rubin field without a default and
//! without a column is a generation error: such a writer schema could not be read with
//! Rubin's schema as reader.
//!
//! `ssSource` is generated the same way from the columns apflow can fill for a
//! DiaSource associated with a solar-system object ([`ss_source_columns`]: the ids,
//! the designation, and ecliptic and Galactic coordinates computed from the position).
//! `mpc_orbits` has no counterpart in apflow (orbits come from the Minor Planet
//! Center): it is Rubin's record verbatim and always `null` in our alerts.
//!
//! The `alert` record has Rubin's fields in Rubin's order. Everything is one
//! self-contained schema (named types defined at first use, referenced by full name
//! after), which is what a Confluent registry serves for id [`SCHEMA_ID`] (1100).
//!
//! # Compatibility
//!
//! The result must be readable with Rubin's `lsst.v11_0.alert` as the *reader* schema
//! (Avro specification 1.11, "Schema Resolution"): records match by name, every reader
//! field without a default exists in the writer with the same or a promotable type
//! (`int` → `long`, `float` → `double`), and a writer union resolves to a reader union
//! branch by branch. The crate's tests decode our datums with Rubin's schema as reader
//! (apache-avro in Rust, fastavro in `scripts/python-checks`).
//!
//! The generated schema is committed as `schemas/avro/apflow/lsst.v11_0.alert.avsc`;
//! a test fails when the committed file differs from [`alert_schema`]`().json`.

use std::sync::LazyLock;

use apflow_apdb::schema::{Column, ColumnType, schema};
use serde_json::{Map, Value as Json, json};
use thiserror::Error;

use crate::wire;

/// The Avro namespace of every record, as Rubin's.
pub const NAMESPACE: &str = "lsst.v11_0";
/// The Confluent schema id of the alert schema: `11 × 100 + 0`.
pub const SCHEMA_ID: u32 = wire::schema_id(11, 0);
/// Path of the committed generated schema, relative to the repository root.
pub const SCHEMA_PATH: &str = "schemas/avro/apflow/lsst.v11_0.alert.avsc";

/// Rubin's reference schemas (verbatim copies from `lsst-alert-packet`), by record name.
pub const RUBIN_V11_0: [(&str, &str); 7] = [
    (
        "alert",
        include_str!("../../schemas/avro/lsst.v11_0/lsst.v11_0.alert.avsc"),
    ),
    (
        "diaSource",
        include_str!("../../schemas/avro/lsst.v11_0/lsst.v11_0.diaSource.avsc"),
    ),
    (
        "diaObject",
        include_str!("../../schemas/avro/lsst.v11_0/lsst.v11_0.diaObject.avsc"),
    ),
    (
        "diaForcedSource",
        include_str!("../../schemas/avro/lsst.v11_0/lsst.v11_0.diaForcedSource.avsc"),
    ),
    (
        "ssSource",
        include_str!("../../schemas/avro/lsst.v11_0/lsst.v11_0.ssSource.avsc"),
    ),
    (
        "mpc_orbits",
        include_str!("../../schemas/avro/lsst.v11_0/lsst.v11_0.mpc_orbits.avsc"),
    ),
    (
        "ssObject",
        include_str!("../../schemas/avro/lsst.v11_0/lsst.v11_0.ssObject.avsc"),
    ),
];

/// Why the writer schema could not be generated (a bug in the APDB definition or the
/// generator, caught by the crate's tests).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A reference schema is not valid JSON or not a record.
    #[error("Rubin reference schema {0}: {1}")]
    Reference(String, String),
    /// An APDB table the generator needs is missing.
    #[error("APDB schema has no table {0}")]
    MissingTable(String),
    /// A Rubin field without a default has no APDB column: the writer could not be
    /// read with Rubin's schema as reader.
    #[error("{record}.{field} has no default in lsst.v11_0 and no APDB column")]
    Unfillable {
        /// The record.
        record: String,
        /// The field.
        field: String,
    },
    /// An APDB column's type cannot be read as Rubin's type.
    #[error("{record}.{field}: APDB {ours} (or nullable) cannot be read as lsst.v11_0 {theirs}")]
    Incompatible {
        /// The record.
        record: String,
        /// The field.
        field: String,
        /// Our Avro type.
        ours: &'static str,
        /// Rubin's Avro type.
        theirs: String,
    },
}

/// One field of a generated record and where its value comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldPlan {
    /// Avro field name.
    pub name: String,
    /// Avro type written (the APDB column's type, or Rubin's for always-null fields).
    pub ty: ColumnType,
    /// Whether the field is `["null", ty]`.
    pub nullable: bool,
    /// Index of the source value in the record's column order
    /// ([`apflow_apdb::schema::Record::to_values`]); `None` for a field that is always
    /// null.
    pub source: Option<usize>,
}

/// A generated record: its fields in writer order.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordPlan {
    /// Avro record name (without namespace).
    pub name: &'static str,
    /// Fields in writer-schema order.
    pub fields: Vec<FieldPlan>,
}

/// The generated alert writer schema.
#[derive(Clone, Debug)]
pub struct AlertSchema {
    /// The schema as pretty-printed JSON (the committed `.avsc`, the registry's text).
    pub json: String,
    /// The `diaSource` record.
    pub dia_source: RecordPlan,
    /// The `diaObject` record.
    pub dia_object: RecordPlan,
    /// The `diaForcedSource` record.
    pub dia_forced_source: RecordPlan,
    /// The `ssSource` record (sources: [`ss_source_columns`]).
    pub ss_source: RecordPlan,
}

/// The `alert` record's fields, in writer order (Rubin's). The encoder in
/// [`crate::packet`] writes them in this order.
pub const ALERT_FIELDS: [&str; 12] = [
    "diaSourceId",
    "observation_reason",
    "target_name",
    "diaSource",
    "prvDiaSources",
    "prvDiaForcedSources",
    "diaObject",
    "ssSource",
    "mpc_orbits",
    "cutoutDifference",
    "cutoutScience",
    "cutoutTemplate",
];

fn col(name: &str, ty: ColumnType, nullable: bool, unit: &'static str, d: &str) -> Column {
    Column {
        name: name.into(),
        ty,
        nullable,
        unit,
        description: d.into(),
        avro: true,
    }
}

/// The values apflow writes in an alert's `ssSource` record, in this order (see
/// [`crate::packet::ss_source_values`]): ids, designation, and coordinates computed from
/// the DiaSource's position. Every other `ssSource` field is null.
pub fn ss_source_columns() -> Vec<Column> {
    use ColumnType::{Double, Long, String};
    vec![
        col(
            "diaSourceId",
            Long,
            false,
            "",
            "Unique identifier of the observation (the triggering DiaSource).",
        ),
        col(
            "ssObjectId",
            Long,
            false,
            "",
            "Id of the solar-system object the DiaSource was associated with.",
        ),
        col(
            "designation",
            String,
            true,
            "",
            "The unpacked primary provisional designation of the object, when the SSObject table knows it.",
        ),
        col(
            "eclLambda",
            Double,
            false,
            "deg",
            "Ecliptic longitude of the DiaSource (mean ecliptic and equinox of J2000, IAU 2006 obliquity), computed from ra, dec.",
        ),
        col(
            "eclBeta",
            Double,
            false,
            "deg",
            "Ecliptic latitude of the DiaSource (mean ecliptic and equinox of J2000), computed from ra, dec.",
        ),
        col(
            "galLon",
            Double,
            false,
            "deg",
            "Galactic longitude of the DiaSource (ICRS to Galactic rotation of the Hipparcos catalogue, ESA 1997), computed from ra, dec.",
        ),
        col(
            "galLat",
            Double,
            false,
            "deg",
            "Galactic latitude of the DiaSource, computed from ra, dec.",
        ),
    ]
}

fn rubin(record: &str) -> Result<Json, SchemaError> {
    let text = RUBIN_V11_0
        .iter()
        .find(|(n, _)| *n == record)
        .map(|(_, t)| *t)
        .ok_or_else(|| SchemaError::Reference(record.into(), "not compiled in".into()))?;
    let v: Json = serde_json::from_str(text)
        .map_err(|e| SchemaError::Reference(record.into(), e.to_string()))?;
    if v["type"] != "record" || !v["fields"].is_array() {
        return Err(SchemaError::Reference(record.into(), "not a record".into()));
    }
    Ok(v)
}

/// (non-null type name, nullable) of a Rubin field type.
fn rubin_type(t: &Json) -> (String, bool) {
    match t {
        Json::String(s) => (s.clone(), false),
        Json::Array(u) => {
            let non_null: Vec<_> = u.iter().filter(|x| x.as_str() != Some("null")).collect();
            let name = match non_null.first() {
                Some(Json::String(s)) => s.clone(),
                Some(other) => other["type"].as_str().unwrap_or("complex").to_string(),
                None => "null".into(),
            };
            (name, u.len() > non_null.len())
        }
        other => (
            other["type"].as_str().unwrap_or("complex").to_string(),
            false,
        ),
    }
}

fn column_type_of(name: &str) -> Option<ColumnType> {
    Some(match name {
        "long" => ColumnType::Long,
        "int" => ColumnType::Int,
        "double" => ColumnType::Double,
        "float" => ColumnType::Float,
        "boolean" => ColumnType::Boolean,
        "string" => ColumnType::String,
        _ => return None,
    })
}

/// Whether a writer `ours` resolves to reader `theirs` (Avro promotion rules).
fn promotable(ours: ColumnType, theirs: &str) -> bool {
    matches!(
        (ours, theirs),
        (ColumnType::Long, "long" | "float" | "double")
            | (ColumnType::Int, "int" | "long" | "float" | "double")
            | (ColumnType::Double, "double")
            | (ColumnType::Float, "float" | "double")
            | (ColumnType::Boolean, "boolean")
            | (ColumnType::String, "string" | "bytes")
    )
}

fn typed(ty: ColumnType, nullable: bool) -> Json {
    if nullable {
        json!(["null", ty.avro_name()])
    } else {
        json!(ty.avro_name())
    }
}

/// Generates one record from Rubin's field list and our columns.
fn record(
    record: &'static str,
    doc: &str,
    columns: &[Column],
) -> Result<(Json, RecordPlan), SchemaError> {
    let reference = rubin(record)?;
    let mut fields = Vec::new();
    let mut plan = Vec::new();
    for f in reference["fields"].as_array().into_iter().flatten() {
        let name = f["name"].as_str().unwrap_or_default();
        let (theirs, their_nullable) = rubin_type(&f["type"]);
        let has_default = f.get("default").is_some();
        let found = columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.avro && c.name == name);
        match found {
            Some((i, c)) => {
                if !promotable(c.ty, &theirs) || (c.nullable && !their_nullable) {
                    return Err(SchemaError::Incompatible {
                        record: record.into(),
                        field: name.into(),
                        ours: c.ty.avro_name(),
                        theirs: if their_nullable {
                            theirs
                        } else {
                            format!("{theirs} (non-null)")
                        },
                    });
                }
                let mut field = Map::new();
                field.insert("name".into(), json!(name));
                field.insert("type".into(), typed(c.ty, c.nullable));
                if c.nullable {
                    field.insert("default".into(), Json::Null);
                }
                let doc = if c.unit.is_empty() {
                    c.description.clone()
                } else {
                    format!("{} [{}]", c.description, c.unit)
                };
                field.insert("doc".into(), json!(doc));
                fields.push(Json::Object(field));
                plan.push(FieldPlan {
                    name: name.into(),
                    ty: c.ty,
                    nullable: c.nullable,
                    source: Some(i),
                });
            }
            None => {
                let ty = column_type_of(&theirs);
                match (ty, their_nullable && has_default) {
                    (Some(ty), true) => {
                        let rubin_doc = f["doc"].as_str().unwrap_or_default();
                        fields.push(json!({
                            "name": name,
                            "type": ["null", ty.avro_name()],
                            "default": null,
                            "doc": format!("Not measured by apflow: always null. (lsst.v11_0: {rubin_doc})"),
                        }));
                        plan.push(FieldPlan {
                            name: name.into(),
                            ty,
                            nullable: true,
                            source: None,
                        });
                    }
                    _ => {
                        return Err(SchemaError::Unfillable {
                            record: record.into(),
                            field: name.into(),
                        });
                    }
                }
            }
        }
    }
    // An `avro` column that Rubin's record lacks would be silently dropped: refuse.
    for c in columns.iter().filter(|c| c.avro) {
        if !plan.iter().any(|p| p.name == c.name) {
            return Err(SchemaError::Reference(
                record.into(),
                format!(
                    "column {} is marked avro but lsst.v11_0 has no such field",
                    c.name
                ),
            ));
        }
    }
    let json = json!({
        "type": "record",
        "name": record,
        "namespace": NAMESPACE,
        "doc": doc,
        "fields": fields,
    });
    Ok((
        json,
        RecordPlan {
            name: record,
            fields: plan,
        },
    ))
}

fn table_columns(table: &str) -> Result<Vec<Column>, SchemaError> {
    schema()
        .table(table)
        .map(|t| t.columns.clone())
        .ok_or_else(|| SchemaError::MissingTable(table.into()))
}

/// Generates the alert writer schema (see the module docs).
pub fn generate() -> Result<AlertSchema, SchemaError> {
    let (dia_source_json, dia_source) = record(
        "diaSource",
        "A detection on a difference image (apflow, from the APDB DiaSource table).",
        &table_columns("DiaSource")?,
    )?;
    let (dia_object_json, dia_object) = record(
        "diaObject",
        "The DiaObject of the triggering DiaSource, latest version (apflow, from the APDB DiaObject table).",
        &table_columns("DiaObject")?,
    )?;
    let (forced_json, dia_forced_source) = record(
        "diaForcedSource",
        "Forced photometry of the DiaObject (apflow, from the APDB DiaForcedSource table).",
        &table_columns("DiaForcedSource")?,
    )?;
    let (ss_json, ss_source) = record(
        "ssSource",
        "Solar-system fields of a DiaSource associated with an SSObject (apflow).",
        &ss_source_columns(),
    )?;
    let mpc_orbits = rubin("mpc_orbits")?;
    let full = |n: &str| format!("{NAMESPACE}.{n}");
    let nullable = |t: Json, doc: &str, name: &str| json!({"name": name, "type": ["null", t], "default": null, "doc": doc});
    let alert = json!({
        "type": "record",
        "name": "alert",
        "namespace": NAMESPACE,
        "doc": "apflow alert packet, readable with Rubin's lsst.v11_0 alert schema (generated from the APDB schema definition).",
        "fields": [
            {"name": "diaSourceId", "type": "long", "doc": "Identifier of the triggering DiaSource"},
            nullable(json!("string"), "Scheduler reason for the image containing this diaSource (RTN-097); null when the scheduler gave none.", "observation_reason"),
            nullable(json!("string"), "Scheduler target for the image containing this diaSource (RTN-097); null when the scheduler gave none.", "target_name"),
            {"name": "diaSource", "type": dia_source_json, "doc": "The triggering DiaSource."},
            nullable(json!({"type": "array", "items": full("diaSource")}),
                "DiaSources of the same DiaObject in the 12 months before this one; null when not looked up (solar-system sources).", "prvDiaSources"),
            nullable(json!({"type": "array", "items": forced_json}),
                "Forced photometry of the DiaObject in the 12 months before this DiaSource; null when not looked up.", "prvDiaForcedSources"),
            nullable(dia_object_json, "The DiaObject, latest version; null for a solar-system source.", "diaObject"),
            nullable(ss_json, "Solar-system fields; null unless the DiaSource is associated with an SSObject.", "ssSource"),
            nullable(mpc_orbits, "MPC orbit of the SSObject: apflow has no orbits, always null.", "mpc_orbits"),
            nullable(json!("bytes"), "Difference-image cutout, FITS (flux nJy, variance, mask, WCS, PSF).", "cutoutDifference"),
            nullable(json!("bytes"), "Science-image cutout, FITS (flux nJy, variance, mask, WCS, PSF).", "cutoutScience"),
            nullable(json!("bytes"), "Template cutout, FITS (flux nJy, variance, mask, WCS, PSF).", "cutoutTemplate"),
        ],
    });
    let mut text = serde_json::to_string_pretty(&alert)
        .map_err(|e| SchemaError::Reference("alert".into(), e.to_string()))?;
    text.push('\n');
    Ok(AlertSchema {
        json: text,
        dia_source,
        dia_object,
        dia_forced_source,
        ss_source,
    })
}

/// The generated alert schema, built once.
///
/// # Panics
/// Only if the compiled-in definitions are inconsistent, which the crate's tests rule
/// out (`generate()` succeeds in `schema_generates_and_matches_the_committed_file`).
pub fn alert_schema() -> &'static AlertSchema {
    static SCHEMA: LazyLock<AlertSchema> = LazyLock::new(|| match generate() {
        Ok(s) => s,
        Err(e) => panic!("apflow's alert schema does not generate: {e}"),
    });
    &SCHEMA
}

/// The writer schema parsed by apache-avro (for decoding and checks).
pub fn parsed_writer_schema() -> Result<apache_avro::Schema, apache_avro::Error> {
    apache_avro::Schema::parse_str(&alert_schema().json)
}

/// [`parsed_writer_schema`] parsed once per process: decoders take it per alert
/// (parsing the schema again per alert cost milliseconds each).
pub fn cached_writer_schema() -> Result<&'static apache_avro::Schema, String> {
    static PARSED: std::sync::LazyLock<Result<apache_avro::Schema, String>> =
        std::sync::LazyLock::new(|| parsed_writer_schema().map_err(|e| e.to_string()));
    PARSED.as_ref().map_err(Clone::clone)
}

/// Rubin's `lsst.v11_0.alert` parsed with its referenced named types, for use as the
/// reader schema: `(alert, all named schemas)`.
pub fn rubin_reader_schema()
-> Result<(apache_avro::Schema, Vec<apache_avro::Schema>), apache_avro::Error> {
    let others: Vec<&str> = RUBIN_V11_0
        .iter()
        .filter(|(n, _)| *n != "alert" && *n != "ssObject")
        .map(|(_, t)| *t)
        .collect();
    let alert = RUBIN_V11_0[0].1;
    apache_avro::Schema::parse_str_with_list(alert, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_rubin_and_fill_every_required_field() {
        let s = alert_schema();
        // Every APDB avro column of DiaSource has a field with a source.
        let cols = table_columns("DiaSource").unwrap();
        for c in cols.iter().filter(|c| c.avro) {
            let f = s
                .dia_source
                .fields
                .iter()
                .find(|f| f.name == c.name)
                .unwrap();
            assert_eq!(f.source.map(|i| &cols[i].name), Some(&c.name));
            assert_eq!((f.ty, f.nullable), (c.ty, c.nullable));
        }
        // Local columns are not in the alert.
        assert!(
            !s.dia_object
                .fields
                .iter()
                .any(|f| f.name == "validityEndMjdTai")
        );
        assert!(
            !s.dia_object
                .fields
                .iter()
                .any(|f| f.name.ends_with("psfFluxChi2"))
        );
        // Field order is Rubin's.
        let rubin_names: Vec<String> = rubin("diaSource").unwrap()["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect();
        let ours: Vec<String> = s.dia_source.fields.iter().map(|f| f.name.clone()).collect();
        assert_eq!(ours, rubin_names);
        // ssSource: what we cannot fill is nullable and never sourced.
        for f in &s.ss_source.fields {
            assert!(f.source.is_some() || f.nullable, "{}", f.name);
        }
        assert_eq!(
            s.ss_source
                .fields
                .iter()
                .filter(|f| f.source.is_some())
                .count(),
            7
        );
    }

    #[test]
    fn a_required_rubin_field_without_a_column_is_refused() {
        let mut cols = table_columns("DiaForcedSource").unwrap();
        cols.retain(|c| c.name != "midpointMjdTai");
        match record("diaForcedSource", "", &cols) {
            Err(SchemaError::Unfillable { field, .. }) => assert_eq!(field, "midpointMjdTai"),
            other => panic!("{other:?}"),
        }
        let mut cols = table_columns("DiaForcedSource").unwrap();
        cols[0].ty = ColumnType::String; // diaForcedSourceId as a string
        assert!(matches!(
            record("diaForcedSource", "", &cols),
            Err(SchemaError::Incompatible { .. })
        ));
    }

    #[test]
    fn both_schemas_parse() {
        parsed_writer_schema().unwrap();
        let (alert, named) = rubin_reader_schema().unwrap();
        assert!(matches!(alert, apache_avro::Schema::Record(_)));
        assert_eq!(named.len(), 5);
    }
}
