//! The night report on a synthetic archive and synthetic detector records.

use std::io::Write;

use apflow_core::ids::{DetectorId, VisitId};
use apflow_replay::report::{
    DetectorRecord, LATENCY_BUDGET_S, ReportError, build_report, night_report, read_records,
};

use crate::fixture::{self, DAY_OBS, T0};

/// 101 detector-visits with latencies 0.25, 1.25, …, 100.25 s (none on the 60 s
/// boundary, where f64 MJD rounding could tip it), two stages.
fn records() -> Vec<DetectorRecord> {
    (0u32..101)
        .map(|i| {
            let readout = T0 + f64::from(i) * 40.0 / 86_400.0;
            DetectorRecord {
                visit: fixture::visit_id(i as usize / 10),
                detector: DetectorId((i % 10) as u16),
                readout_end_tai: readout,
                alerts_done_tai: readout + (f64::from(i) + 0.25) / 86_400.0,
                n_alerts: u64::from(i % 3),
                stages: vec![
                    ("isr".into(), 1.0 + f64::from(i % 5)),
                    ("diffim".into(), 10.0),
                ],
            }
        })
        .collect()
}

#[test]
fn latency_percentiles_and_stage_medians_from_records() {
    let r = build_report(None, &records());
    let l = r.latency.expect("records give a latency report");
    assert_eq!(l.detectors, 101);
    assert_eq!(l.budget_s, LATENCY_BUDGET_S);
    for (got, want) in [
        (l.p50_s, 50.25),
        (l.p90_s, 90.25),
        (l.p98_s, 98.25),
        (l.p99_s, 99.25),
        (l.max_s, 100.25),
    ] {
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }
    assert_eq!(l.over_budget, 41);
    assert!((l.within_budget - 60.0 / 101.0).abs() < 1e-12);
    assert_eq!(
        l.stage_medians_s,
        vec![("isr".to_string(), 3.0), ("diffim".to_string(), 10.0)]
    );
    assert_eq!(l.histogram.counts.iter().sum::<u64>(), 101);
    // Counts from the records when there is no archive: visit 0 holds i = 0..9.
    assert_eq!(r.visits[0].visit, fixture::visit_id(0));
    assert_eq!(r.visits[0].alerts, (0..10).map(|i| i % 3).sum::<u64>());
    assert_eq!(r.alerts, (0..101).map(|i| i % 3).sum::<u64>());
    // Per visit, per alert: visit 0's nine alerts wait 1.25 s (1 alert), 2.25 s (2),
    // 4.25 s (1), 5.25 s (2), 7.25 s (1), 8.25 s (2); all of visit 6's exceed 60 s.
    let v0 = r.visits[0]
        .latency
        .as_ref()
        .expect("records give visit latencies");
    assert_eq!(v0.count, 9);
    assert!(
        (v0.p50_s - 5.25).abs() < 1e-3 && (v0.max_s - 8.25).abs() < 1e-3,
        "{v0:?}"
    );
    assert_eq!(v0.within_budget, 1.0);
    let v6 = r.visits[6].latency.as_ref().unwrap();
    assert_eq!((v6.count, v6.within_budget), (9, 0.0));
}

#[test]
fn report_from_an_archive_and_records_writes_json_and_plots() {
    let archive = tempfile::tempdir().unwrap();
    let times = [0.0, 40.0, 80.0];
    let alerts = fixture::alerts(&times, 3, 4, 5);
    // One detector-visit fewer: visit 3 has no alerts on detector 2.
    let kept: Vec<_> = alerts
        .into_iter()
        .filter(|a| {
            let p = apflow_core::ids::DiaSourceId(a.dia_source_id)
                .parts()
                .unwrap();
            !(p.visit == fixture::visit_id(2) && p.detector == DetectorId(2))
        })
        .collect();
    fixture::write_archive(archive.path(), &kept, 9);
    let recs = archive.path().join("records.jsonl");
    let mut f = std::fs::File::create(&recs).unwrap();
    for r in records() {
        r.write_jsonl(&mut f).unwrap();
    }
    writeln!(f).unwrap();
    drop(f);
    // A filtering service's matches log: filter `a` forwarded 2 + 1 alerts in two
    // visits, `b` one.
    let matches = archive.path().join("filter-matches.jsonl");
    let (v0, v1) = (fixture::visit_id(0).0, fixture::visit_id(1).0);
    std::fs::write(
        &matches,
        [("a", v0, 1), ("a", v0, 2), ("b", v0, 2), ("a", v1, 3)]
            .iter()
            .map(|(f, v, id)| {
                format!(
                    "{{\"filter\":\"{f}\",\"topic\":\"t.{f}\",\"visit\":{v},\"detector\":0,\"diaSourceId\":{id}}}\n"
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let out = archive.path().join("report");
    let (report, files) = night_report(
        Some(archive.path()),
        None,
        Some(&recs),
        Some(&matches),
        &out,
    )
    .unwrap();
    let filters: Vec<(&str, u64, u64, u64)> = report
        .filters
        .iter()
        .map(|f| (f.filter.as_str(), f.forwarded, f.visits, f.max_per_visit))
        .collect();
    assert_eq!(filters, vec![("a", 3, 2, 2), ("b", 1, 1, 1)]);
    assert_eq!(report.day_obs, Some(DAY_OBS));
    assert_eq!(report.alerts, 32);
    let per_visit: Vec<(VisitId, u64, usize)> = report
        .visits
        .iter()
        .map(|v| (v.visit, v.alerts, v.detectors))
        .collect();
    assert_eq!(
        per_visit,
        vec![
            (fixture::visit_id(0), 12, 3),
            (fixture::visit_id(1), 12, 3),
            (fixture::visit_id(2), 8, 2)
        ]
    );
    let per_det: Vec<(u16, u64, usize)> = report
        .detectors
        .iter()
        .map(|d| (d.detector.0, d.alerts, d.visits))
        .collect();
    assert_eq!(per_det, vec![(0, 12, 3), (1, 12, 3), (2, 8, 2)]);
    let apv = report.alerts_per_visit.as_ref().unwrap();
    assert_eq!((apv.min, apv.p50, apv.max), (8.0, 12.0, 12.0));
    assert!(report.latency.is_some());
    // The JSON summary holds the same numbers.
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files.summary).unwrap()).unwrap();
    assert_eq!(j["alerts"], 32);
    assert_eq!(j["latency"]["over_budget"], 41);
    assert_eq!(j["visits"][2]["alerts"], 8);
    assert_eq!(j["filters"][0]["topic"], "t.a");
    assert_eq!(j["filters"][0]["forwarded"], 3);
    for png in [files.latency_png.unwrap(), files.alerts_png.unwrap()] {
        let b = std::fs::read(&png).unwrap();
        assert!(b.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", png.display());
    }
}

#[test]
fn bad_record_lines_are_named_and_no_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    records()[0].write_jsonl(&mut f).unwrap();
    writeln!(f, "{{\"visit\": 1}}").unwrap();
    drop(f);
    match read_records(&p) {
        Err(ReportError::Record { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        night_report(None, None, None, None, dir.path()),
        Err(ReportError::NoInput)
    ));
    // Round trip of the record format.
    let mut buf = Vec::new();
    records()[7].write_jsonl(&mut buf).unwrap();
    let back: DetectorRecord = serde_json::from_slice(&buf).unwrap();
    assert_eq!(back, records()[7]);
    assert!((back.latency_s() - 7.25).abs() < 1e-4);
}
