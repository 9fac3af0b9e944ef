//! The APDB contract suite: written once, run on every available backend.
//!
//! * SQLite: always, on a fresh file in a temporary directory.
//! * Scylla/Cassandra: with `--features scylla` and `APFLOW_TEST_SCYLLA_URI` set to
//!   `scylla://host:port` (a fresh keyspace per test); skipped with a message otherwise.

use std::collections::BTreeSet;

use apflow_apdb::bench::detector_grid;
use apflow_apdb::partition::DEFAULT_MARGIN;
use apflow_apdb::{
    AnyApdb, Apdb, ApdbConfig, DiaForcedSource, DiaObject, DiaSource, Region, SsObject, StoreBatch,
    TimeWindow,
};
use apflow_core::geom::{ARCSEC, TangentPlane};
use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use apflow_core::time::MjdTai;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn visit(seq: u32) -> VisitId {
    VisitId::new(20261122, seq).unwrap()
}

pub fn source(
    v: VisitId,
    det: u16,
    k: u32,
    ra: f64,
    dec: f64,
    t: f64,
    obj: Option<i64>,
) -> DiaSource {
    let id = DiaSourceId::new(v, DetectorId(det), k).unwrap();
    DiaSource {
        dia_source_id: id,
        visit: v,
        detector: DetectorId(det),
        dia_object_id: Some(DiaObjectId(obj.unwrap_or(id.0))),
        midpoint_mjd_tai: MjdTai(t),
        ra,
        dec,
        psf_flux: Some(1000.0 + k as f32),
        psf_flux_err: Some(50.0),
        band: "r".into(),
        time_processed_mjd_tai: t,
        ..Default::default()
    }
}

pub fn object(id: i64, ra: f64, dec: f64, t: f64, n: i32) -> DiaObject {
    DiaObject {
        dia_object_id: DiaObjectId(id),
        validity_start_mjd_tai: t,
        ra,
        dec,
        n_dia_sources: n,
        first_dia_source_mjd_tai: Some(t),
        last_dia_source_mjd_tai: Some(t),
        ..Default::default()
    }
}

pub fn forced(
    v: VisitId,
    det: u16,
    k: u32,
    obj: i64,
    ra: f64,
    dec: f64,
    t: f64,
) -> DiaForcedSource {
    DiaForcedSource {
        dia_forced_source_id: DiaSourceId::new(v, DetectorId(det), k).unwrap().0,
        dia_object_id: DiaObjectId(obj),
        ra,
        dec,
        visit: v,
        detector: DetectorId(det),
        psf_flux: Some(10.0),
        psf_flux_err: Some(5.0),
        midpoint_mjd_tai: MjdTai(t),
        band: "g".into(),
        time_processed_mjd_tai: t,
        ..Default::default()
    }
}

/// A batch of `n` new objects, each with one source, at random positions on `det`.
pub fn random_batch(
    rng: &mut ChaCha8Rng,
    v: VisitId,
    det: u16,
    t: f64,
    n: u32,
    plane: &TangentPlane,
    half: f64,
) -> StoreBatch {
    let mut b = StoreBatch {
        visit: v,
        detector: DetectorId(det),
        visit_time: MjdTai(t),
        ..Default::default()
    };
    for k in 0..n {
        let (ra, dec) = plane
            .deproject(rng.random_range(-half..half), rng.random_range(-half..half))
            .to_radec_deg();
        let s = source(v, det, k, ra, dec, t, None);
        b.objects.push(object(s.dia_source_id.0, ra, dec, t, 1));
        b.sources.push(s);
    }
    b
}

pub mod scenarios {
    use super::*;

    /// Region reads return exactly the objects inside polygon + margin (brute force).
    pub async fn region_read_matches_brute_force(apdb: &AnyApdb) {
        let grid = detector_grid(210.0, -31.0, 3);
        let centre = grid[4].clone();
        let (ra0, dec0) = centre.center().to_radec();
        let plane = TangentPlane::new(ra0, dec0);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let half = 3.2 * apflow_apdb::bench::DETECTOR_HALF_WIDTH;
        let mut all = Vec::new();
        for seq in 1..=6 {
            let b = random_batch(
                &mut rng,
                visit(seq),
                1,
                61000.0 + f64::from(seq),
                400,
                &plane,
                half,
            );
            all.extend(b.objects.iter().map(|o| (o.dia_object_id, o.ra, o.dec)));
            apdb.store(&b).await.unwrap();
        }
        // Objects hugging the margin: just inside and just outside 10″ from the east edge.
        let mut b = StoreBatch {
            visit: visit(7),
            detector: DetectorId(2),
            visit_time: MjdTai(61007.0),
            ..Default::default()
        };
        let h = apflow_apdb::bench::DETECTOR_HALF_WIDTH;
        for (k, dx) in [9.0, 9.9, 10.1, 11.0].into_iter().enumerate() {
            let edge = plane.deproject(h + dx * ARCSEC, 0.0);
            let (ra, dec) = edge.to_radec_deg();
            let s = source(visit(7), 2, k as u32, ra, dec, 61007.0, None);
            b.objects
                .push(object(s.dia_source_id.0, ra, dec, 61007.0, 1));
            all.push((s.dia_object_id.unwrap(), ra, dec));
            b.sources.push(s);
        }
        apdb.store(&b).await.unwrap();

        for margin in [0.0, DEFAULT_MARGIN, 60.0 * ARCSEC] {
            let region = Region::new(centre.clone(), margin);
            let got: BTreeSet<DiaObjectId> = apdb
                .dia_objects(&region)
                .await
                .unwrap()
                .iter()
                .map(|o| o.dia_object_id)
                .collect();
            let want: BTreeSet<DiaObjectId> = all
                .iter()
                .filter(|(_, ra, dec)| region.contains_deg(*ra, *dec))
                .map(|(id, _, _)| *id)
                .collect();
            assert!(want.len() > 100, "test too weak: {} inside", want.len());
            assert_eq!(got, want, "margin {margin}");
        }
        let near: Vec<_> = apdb
            .dia_objects(&Region::new(centre, DEFAULT_MARGIN))
            .await
            .unwrap();
        let edge_ids: Vec<i64> = (0..4)
            .map(|k| DiaSourceId::new(visit(7), DetectorId(2), k).unwrap().0)
            .collect();
        let present: Vec<bool> = edge_ids
            .iter()
            .map(|id| near.iter().any(|o| o.dia_object_id.0 == *id))
            .collect();
        assert_eq!(
            present,
            [true, true, false, false],
            "9″ and 9.9″ in, 10.1″ and 11″ out of a 10″ margin"
        );
    }

    /// History reads keep exactly the sources of the asked objects inside the window.
    pub async fn history_window_cut(apdb: &AnyApdb) {
        let (ra, dec) = (35.0, -4.5);
        let obj = DiaSourceId::new(visit(1), DetectorId(3), 0).unwrap().0;
        let other = DiaSourceId::new(visit(1), DetectorId(3), 1).unwrap().0;
        let t_now = 61500.0;
        let times: Vec<f64> = (0..30)
            .map(|i| t_now - 420.0 + f64::from(i) * 14.5)
            .collect();
        for (i, &t) in times.iter().enumerate() {
            let v = visit(i as u32 + 1);
            let mut b = StoreBatch {
                visit: v,
                detector: DetectorId(3),
                visit_time: MjdTai(t),
                ..Default::default()
            };
            b.sources.push(source(v, 3, 0, ra, dec, t, Some(obj)));
            b.sources
                .push(source(v, 3, 1, ra + 5.0 / 3600.0, dec, t, Some(other)));
            b.forced.push(forced(v, 3, 0, obj, ra, dec, t));
            b.objects.push(object(obj, ra, dec, t, i as i32 + 1));
            apdb.store(&b).await.unwrap();
        }
        // A source exactly at the window start is in; one at t_now is not (stored later).
        let region = Region::new(detector_grid(ra, dec, 1).remove(0), DEFAULT_MARGIN);
        let w = TimeWindow::history(MjdTai(t_now));
        let srcs = apdb
            .dia_sources(&region, &[DiaObjectId(obj)], w)
            .await
            .unwrap();
        let want: Vec<f64> = times.iter().copied().filter(|t| w.contains(*t)).collect();
        assert!(want.len() < times.len() && want.len() > 10);
        assert_eq!(
            srcs.iter()
                .map(|s| s.midpoint_mjd_tai.0)
                .collect::<Vec<_>>(),
            want
        );
        assert!(
            srcs.iter()
                .all(|s| s.dia_object_id == Some(DiaObjectId(obj)))
        );
        let fs = apdb
            .dia_forced_sources(&region, &[DiaObjectId(obj)], w)
            .await
            .unwrap();
        assert_eq!(fs.len(), want.len());
        // Both objects
        let both = apdb
            .dia_sources(&region, &[DiaObjectId(obj), DiaObjectId(other)], w)
            .await
            .unwrap();
        assert_eq!(both.len(), 2 * want.len());
        // Latest version only in DiaObjectLast.
        let objs = apdb.dia_objects(&region).await.unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].n_dia_sources, 30);
    }

    /// Storing the same (visit, detector) again replaces its rows, never duplicates them.
    pub async fn idempotent_restore(apdb: &AnyApdb) {
        let (ra, dec) = (120.0, 10.0);
        let o1 = DiaSourceId::new(visit(1), DetectorId(5), 0).unwrap().0;
        let v1 = visit(1);
        let mut b1 = StoreBatch {
            visit: v1,
            detector: DetectorId(5),
            visit_time: MjdTai(61000.0),
            ..Default::default()
        };
        b1.sources.push(source(v1, 5, 0, ra, dec, 61000.0, None));
        b1.objects.push(object(o1, ra, dec, 61000.0, 1));
        apdb.store(&b1).await.unwrap();

        let v2 = visit(2);
        let t2 = 61001.0;
        let mut b2 = StoreBatch {
            visit: v2,
            detector: DetectorId(5),
            visit_time: MjdTai(t2),
            ..Default::default()
        };
        b2.sources.push(source(v2, 5, 0, ra, dec, t2, Some(o1)));
        let s_new = source(v2, 5, 1, ra + 0.01, dec, t2, None);
        b2.objects.push(object(o1, ra, dec, t2, 2));
        b2.objects
            .push(object(s_new.dia_source_id.0, s_new.ra, s_new.dec, t2, 1));
        b2.sources.push(s_new.clone());
        b2.forced.push(forced(v2, 5, 0, o1, ra, dec, t2));
        assert!(!apdb.is_stored(v2, DetectorId(5)).await.unwrap());
        let r = apdb.store(&b2).await.unwrap();
        assert!(!r.replaced_previous);
        let c1 = apdb.counts().await.unwrap();
        // Crash after the write, rerun of the same detector: same rows.
        let r = apdb.store(&b2).await.unwrap();
        assert!(r.replaced_previous);
        assert_eq!(apdb.counts().await.unwrap(), c1);
        assert!(apdb.is_stored(v2, DetectorId(5)).await.unwrap());
        assert_eq!(
            (c1.dia_sources, c1.dia_forced_sources, c1.dia_objects),
            (3, 1, 2)
        );

        // A rerun that finds less: the rows only the first run wrote disappear, and
        // the object it had updated falls back to its previous version.
        let mut b2b = b2.clone();
        b2b.sources
            .retain(|s| s.dia_source_id != s_new.dia_source_id);
        b2b.objects.clear();
        b2b.sources[0].dia_object_id = Some(DiaObjectId(o1));
        b2b.forced.clear();
        apdb.store(&b2b).await.unwrap();
        let c2 = apdb.counts().await.unwrap();
        assert_eq!(
            (c2.dia_sources, c2.dia_forced_sources, c2.dia_objects),
            (2, 0, 1)
        );
        let region = Region::new(detector_grid(ra, dec, 1).remove(0), DEFAULT_MARGIN);
        let objs = apdb.dia_objects(&region).await.unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].n_dia_sources, 1, "back to the version of visit 1");

        // Inconsistent input is refused as bad input, before anything is written.
        let mut bad = b2.clone();
        bad.sources[0].detector = DetectorId(6);
        let e = apdb.store(&bad).await.unwrap_err();
        assert_eq!(e.kind(), apflow_apdb::ErrorKind::BadInput, "{e}");
        assert_eq!(apdb.counts().await.unwrap(), c2);
    }

    /// Two detectors writing concurrently both land, completely.
    pub async fn concurrent_detectors(apdb: &AnyApdb) {
        let grid = detector_grid(10.0, 20.0, 2);
        let mut tasks = Vec::new();
        for det in 0..2u16 {
            let apdb = apdb.clone();
            let poly = grid[det as usize].clone();
            tasks.push(tokio::spawn(async move {
                let (ra0, dec0) = poly.center().to_radec();
                let plane = TangentPlane::new(ra0, dec0);
                let mut rng = ChaCha8Rng::seed_from_u64(u64::from(det));
                for seq in 1..=15 {
                    let b = random_batch(
                        &mut rng,
                        visit(seq),
                        det,
                        61000.0 + f64::from(seq),
                        40,
                        &plane,
                        apflow_apdb::bench::DETECTOR_HALF_WIDTH * 0.9,
                    );
                    apdb.store(&b).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let c = apdb.counts().await.unwrap();
        assert_eq!(
            (c.dia_sources, c.dia_objects, c.visit_detectors),
            (1200, 1200, 30)
        );
        for (det, poly) in grid.iter().enumerate().take(2) {
            let objs = apdb
                .dia_objects(&Region::new(poly.clone(), 0.0))
                .await
                .unwrap();
            assert_eq!(objs.len(), 600, "detector {det}");
        }
    }

    /// Reassignment to SSObjects, SSObject storage and info.
    pub async fn reassign_and_info(apdb: &AnyApdb) {
        let v = visit(1);
        let mut b = StoreBatch {
            visit: v,
            detector: DetectorId(0),
            visit_time: MjdTai(61000.0),
            ..Default::default()
        };
        for k in 0..3 {
            let s = source(v, 0, k, 50.0 + f64::from(k) * 1e-3, 0.5, 61000.0, None);
            b.objects
                .push(object(s.dia_source_id.0, s.ra, s.dec, 61000.0, 1));
            b.sources.push(s);
        }
        apdb.store(&b).await.unwrap();
        apdb.store_ss_objects(&[SsObject {
            ss_object_id: 77,
            designation: Some("2026 AB".into()),
            n_obs: 1,
            arc: 0.0,
            first_observation_mjd_tai: Some(61000.0),
        }])
        .await
        .unwrap();
        let n = apdb
            .reassign_to_ss_objects(&[(b.sources[1].dia_source_id, 77), (DiaSourceId(12345), 77)])
            .await
            .unwrap();
        assert_eq!(n, 1, "only the stored source is reassigned");
        let region = Region::new(detector_grid(50.0, 0.5, 1).remove(0), DEFAULT_MARGIN);
        let ids: Vec<_> = b.objects.iter().map(|o| o.dia_object_id).collect();
        let srcs = apdb
            .dia_sources(&region, &ids, TimeWindow::history(MjdTai(61001.0)))
            .await
            .unwrap();
        assert_eq!(
            srcs.len(),
            2,
            "the reassigned source no longer belongs to its DiaObject"
        );
        let c = apdb.counts().await.unwrap();
        assert_eq!(c.ss_objects, 1);
        let info = apdb.info().await.unwrap();
        assert_eq!(info.schema_version, apflow_apdb::schema::SCHEMA_VERSION);
        assert_eq!(
            info.metadata.get("pixel_depth").map(String::as_str),
            Some("10")
        );
    }
}

pub async fn sqlite_fresh() -> (tempfile::TempDir, AnyApdb) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("apdb.db").display());
    let apdb = AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
    (dir, apdb)
}

#[cfg(feature = "scylla")]
pub async fn scylla_fresh(test: &str) -> Option<AnyApdb> {
    let base = std::env::var("APFLOW_TEST_SCYLLA_URI").ok()?;
    let ks = format!("apflow_test_{}_{}", test, std::process::id());
    let url = format!("{}/{}", base.trim_end_matches('/'), &ks[..ks.len().min(48)]);
    let config = ApdbConfig {
        replication_factor: 1,
        consistency: "ONE".into(),
    };
    Some(AnyApdb::create(&url, &config).await.unwrap())
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, apdb) = super::sqlite_fresh().await;
                    super::scenarios::$name(&apdb).await;
                }
            )*
        }
        #[cfg(feature = "scylla")]
        mod scylla_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(apdb) = super::scylla_fresh(stringify!($name)).await else {
                        eprintln!("skipped: set APFLOW_TEST_SCYLLA_URI=scylla://host:9042 to run");
                        return;
                    };
                    super::scenarios::$name(&apdb).await;
                }
            )*
        }
    };
}

contract!(
    region_read_matches_brute_force,
    history_window_cut,
    idempotent_restore,
    concurrent_detectors,
    reassign_and_info,
);
