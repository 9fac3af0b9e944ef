//! SQLite-specific behaviour: schema-version refusal, DiaObject versioning, URL errors.

use apflow_apdb::{AnyApdb, Apdb, ApdbConfig, ApdbError, Region, StoreBatch, TimeWindow};
use apflow_core::ids::{DetectorId, DiaObjectId};
use apflow_core::time::MjdTai;

use crate::contract::{forced, object, random_batch, source, visit};

#[tokio::test]
async fn schema_version_mismatch_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apdb.db");
    let url = format!("sqlite://{}", path.display());
    drop(AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE metadata SET value = '2.0' WHERE name = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let e = AnyApdb::open(&url).await.unwrap_err();
    assert!(matches!(e, ApdbError::SchemaMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("schema version 2.0") && msg.contains("1.0") && msg.contains(&url),
        "{msg}"
    );
    assert_eq!(e.kind(), apflow_apdb::ErrorKind::BadInput);
    // A newer minor version is refused too; an older one is accepted.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE metadata SET value = '1.7' WHERE name = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    assert!(matches!(
        AnyApdb::open(&url).await,
        Err(ApdbError::SchemaMismatch { .. })
    ));
}

#[tokio::test]
async fn open_and_create_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("none.db").display());
    let e = AnyApdb::open(&url).await.unwrap_err();
    assert!(e.to_string().contains("apflow apdb create"), "{e}");
    AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
    let e = AnyApdb::create(&url, &ApdbConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ApdbError::AlreadyExists { .. }), "{e}");
    // open_or_create opens the existing one
    AnyApdb::open_or_create(&url, &ApdbConfig::default())
        .await
        .unwrap();
    let stats = apflow_apdb::stats(&url).await.unwrap();
    assert_eq!(stats.counts.dia_sources, 0);
    assert!(stats.to_string().contains("schema version  1.0"), "{stats}");
}

#[tokio::test]
async fn dia_object_versions_are_closed_by_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apdb.db");
    let url = format!("sqlite://{}", path.display());
    let apdb = AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
    let id = source(visit(1), 0, 0, 1.0, 1.0, 61000.0, None)
        .dia_source_id
        .0;
    for (seq, t) in [(1, 61000.0), (2, 61002.0), (3, 61005.0)] {
        let v = visit(seq);
        let b = StoreBatch {
            visit: v,
            detector: DetectorId(0),
            visit_time: MjdTai(t),
            objects: vec![object(id, 1.0, 1.0, t, seq as i32)],
            sources: vec![source(v, 0, 0, 1.0, 1.0, t, Some(id))],
            forced: vec![],
        };
        apdb.store(&b).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(f64, Option<f64>)> = conn
        .prepare("SELECT validityStartMjdTai, validityEndMjdTai FROM DiaObject ORDER BY 1")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (61000.0, Some(61002.0)),
            (61002.0, Some(61005.0)),
            (61005.0, None)
        ]
    );
    assert_eq!(apdb.counts().await.unwrap().dia_objects, 1);
}

#[tokio::test]
async fn a_stored_value_of_the_wrong_type_is_corrupt_and_names_its_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apdb.db");
    let url = format!("sqlite://{}", path.display());
    let apdb = AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
    let v = visit(1);
    let s = source(v, 0, 0, 1.0, 1.0, 61000.0, None);
    let id = s.dia_source_id.0;
    apdb.store(&StoreBatch {
        visit: v,
        detector: DetectorId(0),
        visit_time: MjdTai(61000.0),
        objects: vec![object(id, 1.0, 1.0, 61000.0, 1)],
        sources: vec![s],
        forced: vec![],
    })
    .await
    .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE DiaSource SET psfFluxErr = 'x'", [])
        .unwrap();
    drop(conn);
    let poly = apflow_core::geom::SkyPolygon::from_tangent_rect(
        &apflow_core::geom::TangentPlane::new(1f64.to_radians(), 1f64.to_radians()),
        -1e-3,
        1e-3,
        -1e-3,
        1e-3,
    );
    let region = Region::new(poly, 0.0);
    let e = apdb
        .dia_sources(
            &region,
            &[DiaObjectId(id)],
            TimeWindow::history(MjdTai(61001.0)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ApdbError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("psfFluxErr"), "{e}");
}

/// History reads of many DiaObjects scan the region's pixels, of few look each object
/// up: both return the rows stored in the region's partitions inside the window.
#[tokio::test]
async fn history_reads_by_pixel_scan_and_by_object_lookup_agree() {
    use apflow_apdb::partition::{DEFAULT_MARGIN, pixel_of};
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("apdb.db").display());
    let apdb = AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
    let grid = apflow_apdb::bench::detector_grid(80.0, 20.0, 3);
    let (ra0, dec0) = grid[4].center().to_radec();
    let plane = apflow_core::geom::TangentPlane::new(ra0, dec0);
    let half = 2.0 * apflow_apdb::bench::DETECTOR_HALF_WIDTH;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut sources, mut forced_rows) = (Vec::new(), Vec::new());
    for seq in 1..=4 {
        let t = 61000.0 + f64::from(seq) * 100.0;
        let mut b = random_batch(&mut rng, visit(seq), 1, t, 700, &plane, half);
        b.forced = b
            .objects
            .iter()
            .enumerate()
            .map(|(k, o)| forced(b.visit, 1, k as u32, o.dia_object_id.0, o.ra, o.dec, t))
            .collect();
        sources.extend(b.sources.iter().cloned());
        forced_rows.extend(b.forced.iter().cloned());
        apdb.store(&b).await.unwrap();
    }
    let region = Region::new(grid[4].clone(), DEFAULT_MARGIN);
    // Visits 2 and 3 inside the window.
    let window = TimeWindow {
        start: MjdTai(61150.0),
        end: MjdTai(61350.0),
    };
    let ids: Vec<DiaObjectId> = sources.iter().filter_map(|s| s.dia_object_id).collect();
    assert!(ids.len() > 2000, "more objects than a lookup takes");
    let want: BTreeSet<i64> = sources
        .iter()
        .filter(|s| {
            region.covers_pixel(pixel_of(s.ra, s.dec)) && window.contains(s.midpoint_mjd_tai.0)
        })
        .map(|s| s.dia_source_id.0)
        .collect();
    assert!(want.len() > 100, "test too weak: {}", want.len());
    let want_forced: BTreeSet<i64> = forced_rows
        .iter()
        .filter(|f| {
            region.covers_pixel(pixel_of(f.ra, f.dec)) && window.contains(f.midpoint_mjd_tai.0)
        })
        .map(|f| f.dia_forced_source_id)
        .collect();

    let scanned = apdb.dia_sources(&region, &ids, window).await.unwrap();
    let scanned: BTreeSet<i64> = scanned.iter().map(|s| s.dia_source_id.0).collect();
    assert_eq!(scanned, want);
    let mut looked_up = BTreeSet::new();
    for chunk in ids.chunks(200) {
        let got = apdb.dia_sources(&region, chunk, window).await.unwrap();
        looked_up.extend(got.iter().map(|s| s.dia_source_id.0));
    }
    assert_eq!(looked_up, want);

    let scanned = apdb
        .dia_forced_sources(&region, &ids, window)
        .await
        .unwrap();
    let scanned: BTreeSet<i64> = scanned.iter().map(|f| f.dia_forced_source_id).collect();
    assert_eq!(scanned, want_forced);
    let mut looked_up = BTreeSet::new();
    for chunk in ids.chunks(200) {
        let got = apdb
            .dia_forced_sources(&region, chunk, window)
            .await
            .unwrap();
        looked_up.extend(got.iter().map(|f| f.dia_forced_source_id));
    }
    assert_eq!(looked_up, want_forced);

    // A database without the DiaObject indexes (created before them) scans instead.
    drop(apdb);
    let conn = rusqlite::Connection::open(dir.path().join("apdb.db")).unwrap();
    conn.execute_batch("DROP INDEX DiaSource_object; DROP INDEX DiaForcedSource_object;")
        .unwrap();
    drop(conn);
    let apdb = AnyApdb::open(&url).await.unwrap();
    let some = &ids[700..1100]; // visit 2, inside the window
    let got = apdb.dia_sources(&region, some, window).await.unwrap();
    let got: BTreeSet<i64> = got.iter().map(|s| s.dia_source_id.0).collect();
    let want_some: BTreeSet<i64> = sources
        .iter()
        .filter(|s| some.contains(&s.dia_object_id.unwrap()) && want.contains(&s.dia_source_id.0))
        .map(|s| s.dia_source_id.0)
        .collect();
    assert!(!want_some.is_empty());
    assert_eq!(got, want_some);
}
