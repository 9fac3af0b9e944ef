//! `apflow replay` and `apflow report` end to end on a small synthetic archive, and
//! `apflow run --raw`: a simulated night's raw images through the whole pipeline.

mod common;
use common::{apflow, numbers};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use apflow_alert_dist::archive::Archive;
use apflow_alert_dist::packet::{AlertEncoder, AssembleConfig, assemble};
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::schema::{SCHEMA_ID, alert_schema};
use apflow_alert_dist::synth;

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

/// The night both runs see: 2 visits × 2 detectors of 1024², one snap.
const NIGHT: [&str; 8] = [
    "--visits",
    "2",
    "--detectors",
    "2",
    "--size",
    "1024",
    "--seed",
    "7",
];

fn run(args: &[&str], config: &Path, out: &Path) -> (Output, String) {
    let o = apflow()
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--metrics-listen", "", "--workers", "2", "--out"])
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (o, stdout)
}

/// Ids of the alerts in an archive (`alerts/<id>.avro.gz`).
fn archived_ids(archive: &Path) -> BTreeSet<i64> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&archive.join("alerts"), &mut files);
    files
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .strip_suffix(".avro.gz")?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_raw_replay_reproduces_the_live_runs_alerts_and_dead_letters_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_config(dir.path());
    let night = dir.path().join("night");
    let o = apflow()
        .arg("simulate")
        .args(NIGHT)
        .arg("--out")
        .arg(&night)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The live run of the same spec, and the raw replay of the simulated night.
    let live = dir.path().join("live");
    let (_, live_out) = run(&NIGHT, &config, &live);
    let replayed = dir.path().join("replayed");
    let mut args = vec!["--raw", night.to_str().unwrap(), "--speed", "max"];
    let (_, out) = run(&args, &config, &replayed);
    assert!(out.contains("raw images from"), "{out}");
    assert!(out.contains("as fast as possible: 2 of 2 visits"), "{out}");
    assert!(
        out.contains("4 read out, 4 ingested, 0 dead-lettered"),
        "{out}"
    );
    assert!(out.contains("ids             original"), "{out}");
    // The same detectors processed and the same number of alerts archived.
    let processed = numbers(&out, "processed");
    assert_eq!(processed[..2], [4, 0], "{out}");
    assert_eq!(
        processed[..3],
        numbers(&live_out, "processed")[..3],
        "{live_out}\n{out}"
    );
    let alerts = numbers(&out, "alerts")[0];
    assert!(alerts > 0, "{out}");
    assert_eq!(alerts, numbers(&live_out, "alerts")[0], "{live_out}\n{out}");
    assert_eq!(
        numbers(&out, "visits complete")[..3],
        [2, 2, alerts],
        "{out}"
    );
    // The very same alert ids: they derive from visit and detector.
    let ids = archived_ids(&replayed.join("archive"));
    assert_eq!(ids.len(), alerts);
    assert_eq!(ids, archived_ids(&live.join("archive")));
    // Calibrations, templates and refcat were the night's: none written to the output.
    assert!(!replayed.join("calib").exists());
    assert!(!replayed.join("templates").exists());
    assert!(replayed.join("records.jsonl").is_file());

    // One raw file of the first visit corrupt: ingest dead-letters it, the other
    // detector is processed. Only the first visit (--limit-visits 1), at a cadence.
    let visit_dir = std::fs::read_dir(night.join("raw"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let victim = std::fs::read_dir(&visit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    // A new file, not the inode the first replay's landing area links to.
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, b"SIMPLE  = not a FITS file").unwrap();
    let again = dir.path().join("corrupt");
    args = vec![
        "--raw",
        night.to_str().unwrap(),
        "--cadence",
        "1s",
        "--limit-visits",
        "1",
    ];
    let (_, out) = run(&args, &config, &again);
    assert!(out.contains("one visit every 1s: 1 of 2 visits"), "{out}");
    assert!(
        out.contains("2 read out, 1 ingested, 1 dead-lettered"),
        "{out}"
    );
    assert!(out.contains("dead letter: "), "{out}");
    assert_eq!(numbers(&out, "processed")[..2], [1, 0], "{out}");
    // The visit completes with its failed detector counted.
    assert_eq!(numbers(&out, "visits complete")[..2], [1, 1], "{out}");

    // Replaying into the night directory itself is refused, not a crash.
    let o = apflow()
        .args(["run", "--raw"])
        .arg(&night)
        .args(["--speed", "max", "--metrics-listen", "", "--out"])
        .arg(&night)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("own output directory"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
