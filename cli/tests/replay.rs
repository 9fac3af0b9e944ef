//! `apflow replay` and `apflow report` end to end on a small synthetic archive.

use std::process::Command;

use apflow_alert_dist::archive::Archive;
use apflow_alert_dist::packet::{AlertEncoder, AssembleConfig, assemble};
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::schema::{SCHEMA_ID, alert_schema};
use apflow_alert_dist::synth;

fn apflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apflow"));
    c.env_remove("APFLOW_CONFIG")
        .env_remove("APFLOW_ARCHIVE_DIR")
        .env("RUST_LOG", "warn");
    c
}

#[test]
fn replay_to_a_directory_with_fresh_ids_then_report_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let v = synth::visit(9, 6, 2, 2, 16);
    let out = assemble(
        &v.sources(),
        &v.context,
        &AssembleConfig::default(),
        &mut AlertEncoder::new(),
    );
    let alerts: Vec<FramedAlert> = out
        .packets
        .iter()
        .map(|p| FramedAlert {
            dia_source_id: p.dia_source_id.0,
            framed: p.bytes.clone().into(),
        })
        .collect();
    let src = dir.path().join("archive");
    let archive = Archive::open(&src).unwrap();
    archive.put_schema(SCHEMA_ID, &alert_schema().json).unwrap();
    archive.put_batch(&alerts).unwrap();
    drop(archive);

    let dst = dir.path().join("replayed");
    let o = apflow()
        .args(["replay", "--speed", "max", "--fresh-ids", "--archive"])
        .arg(&src)
        .arg("--to-dir")
        .arg(&dst)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("fresh ids (generation 1)"), "{stdout}");
    assert!(stdout.contains("sent 6 alerts"), "{stdout}");
    // The replayed alerts are in the new archive under their fresh ids only.
    for a in &alerts {
        let fresh = apflow_core::ids::DiaSourceId(a.dia_source_id)
            .fresh(1)
            .unwrap()
            .0;
        assert!(dst.join(format!("alerts/{fresh}.avro.gz")).is_file());
        assert!(
            !dst.join(format!("alerts/{}.avro.gz", a.dia_source_id))
                .exists()
        );
    }

    let rep = dir.path().join("report");
    let o = apflow()
        .args(["report", "--archive"])
        .arg(&dst)
        .arg("--out")
        .arg(&rep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rep.join("summary.json")).unwrap()).unwrap();
    assert_eq!(j["alerts"], 6);
    assert!(rep.join("alerts_per_visit.png").is_file());

    // A bad pacing setting is a clear error, not a panic.
    let o = apflow()
        .args(["replay", "--speed", "fast", "--archive"])
        .arg(&src)
        .arg("--to-dir")
        .arg(&dst)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("speed \"fast\""));
}
