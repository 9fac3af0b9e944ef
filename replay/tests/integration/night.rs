//! Reading a night back from the archive's nightly container files.

use apflow_core::ids::DetectorId;
use apflow_replay::night::{NightError, load_night, nights, pick_night};

use crate::fixture::{self, DAY_OBS};

#[test]
fn a_night_reads_back_grouped_by_visit_and_detector_with_the_archived_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Visits written out of time order: the night must sort them by midpoint.
    let times = [0.0, 40.0, 20.0];
    let alerts = fixture::alerts(&times, 3, 4, 1);
    fixture::write_archive(dir.path(), &alerts, 5);
    assert_eq!(nights(dir.path()).unwrap(), vec![DAY_OBS]);
    assert_eq!(pick_night(dir.path(), None).unwrap(), DAY_OBS);
    let night = load_night(dir.path(), DAY_OBS).unwrap();
    assert_eq!(night.alert_count(), 36);
    let order: Vec<u32> = night.visits.iter().map(|v| v.visit.seq()).collect();
    assert_eq!(order, vec![1, 3, 2], "visits in time order");
    for v in &night.visits {
        let dets: Vec<DetectorId> = v.detectors.iter().map(|d| d.detector).collect();
        assert_eq!(dets, vec![DetectorId(0), DetectorId(1), DetectorId(2)]);
        for d in &v.detectors {
            assert_eq!(d.alerts.len(), 4);
            for a in &d.alerts {
                assert_eq!(a.visit, v.visit);
                assert_eq!(a.detector, d.detector);
                // Re-framed datum = the exact bytes that were archived.
                let orig = alerts
                    .iter()
                    .find(|x| x.dia_source_id == a.dia_source_id)
                    .unwrap();
                assert_eq!(a.framed().framed, orig.framed);
            }
        }
    }
    let t: Vec<f64> = night
        .visits
        .iter()
        .map(|v| (v.midpoint_mjd_tai - fixture::T0) * 86_400.0)
        .collect();
    for (got, want) in t.iter().zip([0.0, 20.0, 40.0]) {
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }
}

#[test]
fn picking_a_night_names_what_the_archive_holds() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        pick_night(dir.path(), None),
        Err(NightError::Empty(_))
    ));
    fixture::write_archive(dir.path(), &fixture::alerts(&[0.0], 1, 1, 2), 10);
    match pick_night(dir.path(), Some(20261123)) {
        Err(NightError::NoSuchNight { night, available }) => {
            assert_eq!(night, 20261123);
            assert_eq!(available, vec![DAY_OBS]);
        }
        other => panic!("{other:?}"),
    }
    // A second night makes the choice ambiguous.
    let other = dir.path().join("nights/20261123");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(
        dir.path().join("nights/20261122/alerts-1100.avro"),
        other.join("alerts-1100.avro"),
    )
    .unwrap();
    assert!(
        matches!(pick_night(dir.path(), None), Err(NightError::Ambiguous(n)) if n == vec![DAY_OBS, 20261123])
    );
    // A damaged file is a typed error, not a panic.
    let f = dir.path().join("nights/20261123/alerts-1100.avro");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 40);
    std::fs::write(&f, bytes).unwrap();
    assert!(load_night(dir.path(), 20261123).is_err());
}
