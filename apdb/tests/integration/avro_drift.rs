//! The "never drift" check: every non-null field of Rubin's `lsst.v11_0` `diaSource`,
//! `diaObject` and `diaForcedSource` records (checked in under
//! `schemas/avro/lsst.v11_0/`) has a column of the same name and a compatible type in
//! the APDB schema definition, and every column marked `avro` exists in the Avro record.

use std::path::PathBuf;

use apflow_apdb::schema::{ColumnType, schema};
use serde_json::Value;

fn avsc(record: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/avro/lsst.v11_0")
        .join(format!("lsst.v11_0.{record}.avsc"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

/// (type name, nullable) of an Avro field type.
fn avro_type(t: &Value) -> (String, bool) {
    match t {
        Value::String(s) => (s.clone(), false),
        Value::Array(u) => {
            let non_null: Vec<_> = u.iter().filter(|x| x.as_str() != Some("null")).collect();
            assert_eq!(non_null.len(), 1, "unexpected union {t}");
            (avro_type(non_null[0]).0, u.len() > non_null.len())
        }
        other => panic!("unexpected Avro type {other}"),
    }
}

/// Whether a column of type `ours` can be written as Avro `theirs` without loss.
fn compatible(ours: ColumnType, theirs: &str) -> bool {
    matches!(
        (ours, theirs),
        (ColumnType::Long, "long")
            | (ColumnType::Int, "int" | "long")
            | (ColumnType::Double, "double")
            | (ColumnType::Float, "float" | "double")
            | (ColumnType::Boolean, "boolean")
            | (ColumnType::String, "string")
    )
}

fn check(table: &str, record: &str) {
    let def = schema().table(table).expect("table");
    let avsc = avsc(record);
    assert_eq!(avsc["namespace"], "lsst.v11_0");
    let fields = avsc["fields"].as_array().expect("fields");
    let mut problems = Vec::new();
    for f in fields {
        let name = f["name"].as_str().expect("name");
        let (ty, nullable) = avro_type(&f["type"]);
        match def.column(name) {
            None if !nullable => problems.push(format!("{record}.{name} ({ty}) has no column")),
            None => {}
            Some(c) => {
                if !compatible(c.ty, &ty) {
                    problems.push(format!("{record}.{name}: Avro {ty}, column {:?}", c.ty));
                }
                if c.nullable && !nullable {
                    problems.push(format!("{record}.{name}: Avro non-null, column nullable"));
                }
                if !c.avro {
                    problems.push(format!("{table}.{name} exists in Avro but is marked local"));
                }
            }
        }
    }
    for c in def.columns.iter().filter(|c| c.avro) {
        if !fields.iter().any(|f| f["name"] == c.name.as_str()) {
            problems.push(format!(
                "{table}.{} is marked avro but {record} has no such field",
                c.name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "schema drift:\n{}",
        problems.join("\n")
    );
}

#[test]
fn dia_source_matches_v11() {
    check("DiaSource", "diaSource");
}

#[test]
fn dia_object_matches_v11() {
    check("DiaObject", "diaObject");
}

#[test]
fn dia_forced_source_matches_v11() {
    check("DiaForcedSource", "diaForcedSource");
}

#[test]
fn ss_object_columns_exist_in_v11() {
    // SSObject holds a subset of the v11 record; its columns must still exist there.
    let def = schema().table("SSObject").expect("table");
    let avsc = avsc("ssObject");
    for c in &def.columns {
        let f = avsc["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == c.name.as_str())
            .unwrap_or_else(|| panic!("SSObject.{} not in v11 ssObject", c.name));
        assert!(
            compatible(c.ty, &avro_type(&f["type"]).0),
            "SSObject.{}",
            c.name
        );
    }
}
