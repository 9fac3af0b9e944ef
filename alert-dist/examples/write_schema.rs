//! Writes the generated alert writer schema to `schemas/avro/apflow/` (the committed
//! file the `schema_drift` test compares against).
//!
//! Usage: `cargo run -p apflow-alert-dist --example write_schema`.

use std::path::PathBuf;

use apflow_alert_dist::schema::{SCHEMA_PATH, generate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SCHEMA_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, generate()?.json)?;
    println!("wrote {}", path.display());
    Ok(())
}
