//! The committed writer schema is the generated one.
//!
//! Regenerate with `cargo run -p apflow-alert-dist --example write_schema`.

use std::path::PathBuf;

use apflow_alert_dist::schema::{ALERT_FIELDS, SCHEMA_PATH, generate};

#[test]
fn committed_alert_schema_is_the_generated_one() {
    let generated = generate().expect("the alert schema generates");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SCHEMA_PATH);
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (regenerate: see this file's docs)", path.display()));
    assert!(
        committed == generated.json,
        "{} differs from the schema generated from the APDB definition; regenerate it \
         (cargo run -p apflow-alert-dist --example write_schema) and review the diff",
        path.display()
    );
    // The encoder writes the alert record's fields in ALERT_FIELDS order.
    let json: serde_json::Value = serde_json::from_str(&generated.json).unwrap();
    let names: Vec<&str> = json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALERT_FIELDS);
}
