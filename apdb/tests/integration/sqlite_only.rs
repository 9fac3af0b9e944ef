//! SQLite-specific behaviour: schema-version refusal, DiaObject versioning, URL errors.

use apflow_apdb::{AnyApdb, Apdb, ApdbConfig, ApdbError, StoreBatch};
use apflow_core::ids::DetectorId;
use apflow_core::time::MjdTai;

use crate::contract::{object, source, visit};

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
    let region = apflow_apdb::Region::new(poly, 0.0);
    let e = apdb
        .dia_sources(
            &region,
            &[apflow_core::ids::DiaObjectId(id)],
            apflow_apdb::TimeWindow::history(MjdTai(61001.0)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ApdbError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("psfFluxErr"), "{e}");
}
