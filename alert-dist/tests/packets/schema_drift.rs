//! The committed writer schema is the generated one.
//!
//! Regenerate with `APFLOW_WRITE_SCHEMAS=1 cargo test -p apflow-alert-dist --test packets schema_drift`.

use std::path::PathBuf;

use apflow_alert_dist::schema::{SCHEMA_PATH, alert_schema, generate};

#[test]
fn committed_alert_schema_is_the_generated_one() {
    let generated = generate().expect("the alert schema generates");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SCHEMA_PATH);
    if std::env::var_os("APFLOW_WRITE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated.json).unwrap();
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (regenerate: see this file's docs)", path.display()));
    assert!(
        committed == generated.json,
        "{} differs from the schema generated from the APDB definition; regenerate it \
         (APFLOW_WRITE_SCHEMAS=1 cargo test -p apflow-alert-dist --test packets schema_drift) \
         and review the diff",
        path.display()
    );
    assert_eq!(alert_schema().json, generated.json);
}
