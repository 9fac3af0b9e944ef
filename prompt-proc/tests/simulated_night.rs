//! Association + APDB over a *simulated* night.
//!
//! These tests generate the DiaSource catalogue of each visit directly from a seeded
//! model of the sky, so that what association should find is known exactly — they
//! exercise association, summary statistics, forced-target selection and the APDB, not
//! detection:
//!
//! * a transient at a fixed position, detected on visits 1–6 of 8 with 0.05″ centroid
//!   noise and a Gaussian light curve in g and r;
//! * two steady objects 2″ apart, detected on every visit;
//! * a moving object on a linear ephemeris (0.5°/day), whose predicted positions are
//!   given to association as the simulator's ephemerides would be;
//! * ten one-off spurious detections per visit.
//!
//! Forced photometry is "measured" from the same model. Each visit runs the association
//! stage (`apdb_stage::associate_and_store`: read → associate → forced → store) against a
//! real SQLite APDB. The same stage on real pixels runs in `apflow run`.

use apflow_apdb::partition::DEFAULT_MARGIN;
use apflow_apdb::{
    AnyApdb, Apdb, ApdbConfig, DiaForcedSource, DiaSource, Region, StoreBatch, StoreReport,
    TimeWindow,
};
use apflow_core::geom::{ARCSEC, SkyPolygon, TangentPlane, UnitVector};
use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use apflow_core::time::MjdTai;
use apflow_prompt_proc::apdb_stage::{DetectorVisit, FORCED_COUNTER_BASE, associate_and_store};
use apflow_prompt_proc::association::{AssociationConfig, ForcedTarget, SsPrediction};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

const RA0: f64 = 150.0;
const DEC0: f64 = 2.0;
const T0: f64 = 61000.1;
const N_VISITS: u32 = 8;
const SS_ID: i64 = 5_000_001;
const DET: DetectorId = DetectorId(42);

fn plane() -> TangentPlane {
    TangentPlane::new(RA0.to_radians(), DEC0.to_radians())
}

fn footprint() -> SkyPolygon {
    let h = 2048.0 * 0.2 * ARCSEC;
    SkyPolygon::from_tangent_rect(&plane(), -h, h, -h, h)
}

/// (ra, dec) degrees at standard coordinates in arcsec.
fn at(xi: f64, eta: f64) -> (f64, f64) {
    plane().deproject(xi * ARCSEC, eta * ARCSEC).to_radec_deg()
}

fn transient() -> (f64, f64) {
    at(120.0, 80.0)
}
fn pair() -> [(f64, f64); 2] {
    [at(-200.0, -50.0), at(-198.0, -50.0)]
}
fn visit_time(k: u32) -> f64 {
    T0 + f64::from(k) * 0.021
}
fn moving(t: f64) -> (f64, f64) {
    // 0.5 deg/day along +xi from (-300″, 200″) at T0
    at(-300.0 + 0.5 * 3600.0 * (t - T0), 200.0)
}
fn transient_flux(k: u32) -> f64 {
    6000.0 * (-(f64::from(k) - 3.0).powi(2) / 4.0).exp()
}
fn band(k: u32) -> &'static str {
    if k.is_multiple_of(2) { "g" } else { "r" }
}

struct Model;

impl Model {
    /// The catalogue of visit k (deterministic: seeded by k).
    fn catalogue(&self, k: u32) -> (VisitId, Vec<DiaSource>) {
        let v = VisitId::new(20261122, k + 1).unwrap();
        let t = visit_time(k);
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + u64::from(k));
        let noise = Normal::new(0.0, 0.05).unwrap();
        let mut out = Vec::new();
        let mut push = |ra: f64, dec: f64, flux: f64, sigma_pos: f64, rng: &mut ChaCha8Rng| {
            let (xi, eta) = plane()
                .project(UnitVector::from_radec_deg(ra, dec))
                .unwrap();
            let (ra, dec) = plane()
                .deproject(
                    xi + noise.sample(rng) * sigma_pos / 0.05 * ARCSEC,
                    eta + noise.sample(rng) * sigma_pos / 0.05 * ARCSEC,
                )
                .to_radec_deg();
            let n = out.len() as u32;
            out.push(DiaSource {
                dia_source_id: DiaSourceId::new(v, DET, n).unwrap(),
                visit: v,
                detector: DET,
                midpoint_mjd_tai: MjdTai(t),
                ra,
                dec,
                ra_err: Some((0.05 / 3600.0) as f32),
                dec_err: Some((0.05 / 3600.0) as f32),
                psf_flux: Some((flux + 100.0 * noise.sample(rng) / 0.05) as f32),
                psf_flux_err: Some(100.0),
                band: band(k).into(),
                time_processed_mjd_tai: t + 0.0004,
                ..Default::default()
            });
        };
        if (1..=6).contains(&k) {
            let (ra, dec) = transient();
            push(ra, dec, transient_flux(k), 0.05, &mut rng);
        }
        for (ra, dec) in pair() {
            push(ra, dec, 2500.0, 0.05, &mut rng);
        }
        let (ra, dec) = moving(t);
        push(ra, dec, 1500.0, 0.1, &mut rng);
        for _ in 0..10 {
            let (ra, dec) = at(
                rng.random_range(-390.0..390.0),
                rng.random_range(-390.0..390.0),
            );
            push(ra, dec, 800.0, 0.05, &mut rng);
        }
        (v, out)
    }

    /// Forced photometry "measured" at the targets on visit k.
    fn forced(&self, k: u32, v: VisitId, targets: &[ForcedTarget]) -> Vec<DiaForcedSource> {
        let t = visit_time(k);
        let mut rng = ChaCha8Rng::seed_from_u64(5000 + u64::from(k));
        let noise = Normal::new(0.0, 100.0).unwrap();
        targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                let (id, ra, dec) = (target.dia_object_id, target.ra, target.dec);
                let sep = UnitVector::from_radec_deg(ra, dec)
                    .separation(UnitVector::from_radec_deg(transient().0, transient().1));
                let truth = if sep < ARCSEC { transient_flux(k) } else { 0.0 };
                DiaForcedSource {
                    dia_forced_source_id: DiaSourceId::new(v, DET, FORCED_COUNTER_BASE + i as u32)
                        .unwrap()
                        .0,
                    dia_object_id: id,
                    ra,
                    dec,
                    visit: v,
                    detector: DET,
                    psf_flux: Some((truth + noise.sample(&mut rng)) as f32),
                    psf_flux_err: Some(100.0),
                    midpoint_mjd_tai: MjdTai(t),
                    science_flux: Some((truth + 3000.0 + noise.sample(&mut rng)) as f32),
                    science_flux_err: Some(100.0),
                    band: band(k).into(),
                    time_processed_mjd_tai: t + 0.0004,
                    time_withdrawn_mjd_tai: None,
                }
            })
            .collect()
    }
}

/// One detector of one visit through read → associate → forced → store.
async fn process(apdb: &AnyApdb, k: u32) -> (StoreBatch, StoreReport) {
    let t = visit_time(k);
    let (v, cat) = Model.catalogue(k);
    let visit = DetectorVisit {
        visit: v,
        detector: DET,
        band: band(k).into(),
        midpoint: MjdTai(t),
        size: (4096, 4096),
    };
    let (pra, pdec) = moving(t);
    let preds = [SsPrediction {
        ss_object_id: SS_ID,
        ra: pra,
        dec: pdec,
    }];
    let a = associate_and_store(
        apdb,
        &visit,
        &footprint(),
        cat,
        &preds,
        &AssociationConfig::default(),
        |targets| Ok(Model.forced(k, v, targets)),
    )
    .await
    .unwrap();
    // Only the matched DiaObjects' history is read, and all of it that the window
    // holds: every history row belongs to a DiaObject of this visit's sources.
    let ours: std::collections::HashSet<DiaObjectId> = a
        .batch
        .sources
        .iter()
        .filter_map(|s| s.dia_object_id)
        .collect();
    assert!(
        a.history_sources
            .iter()
            .all(|s| s.dia_object_id.is_some_and(|o| ours.contains(&o))),
        "visit {k}: history of an unmatched DiaObject read"
    );
    assert!(
        a.history_forced
            .iter()
            .all(|f| ours.contains(&f.dia_object_id)),
        "visit {k}: forced history of an unmatched DiaObject read"
    );
    (a.batch, a.report)
}

async fn night() -> (tempfile::TempDir, AnyApdb) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("apdb.db").display());
    let apdb = AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
    for k in 0..N_VISITS {
        process(&apdb, k).await;
    }
    (dir, apdb)
}

async fn objects_near(
    apdb: &AnyApdb,
    ra: f64,
    dec: f64,
    radius_arcsec: f64,
) -> Vec<apflow_apdb::DiaObjectLast> {
    let all = apdb
        .dia_objects(&Region::new(footprint(), DEFAULT_MARGIN))
        .await
        .unwrap();
    all.into_iter()
        .filter(|o| {
            UnitVector::from_radec_deg(o.ra, o.dec).separation(UnitVector::from_radec_deg(ra, dec))
                < radius_arcsec * ARCSEC
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_on_several_visits_is_one_dia_object_with_its_light_curve() {
    let (_d, apdb) = night().await;
    let (ra, dec) = transient();
    let objs = objects_near(&apdb, ra, dec, 1.0).await;
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert_eq!(objs[0].n_dia_sources, 6);
    assert_eq!(objs[0].first_dia_source_mjd_tai, Some(visit_time(1)));
    assert_eq!(objs[0].last_dia_source_mjd_tai, Some(visit_time(6)));
    let sep = UnitVector::from_radec_deg(objs[0].ra, objs[0].dec)
        .separation(UnitVector::from_radec_deg(ra, dec));
    assert!(sep < 0.1 * ARCSEC, "position off by {}″", sep / ARCSEC);

    // The g-band statistics equal those computed directly from the model's catalogue.
    let mut g: Vec<(f64, f64)> = Vec::new();
    for k in [2u32, 4, 6] {
        let (_, cat) = Model.catalogue(k);
        g.push((visit_time(k), f64::from(cat[0].psf_flux.unwrap())));
    }
    let mean = g.iter().map(|p| p.1).sum::<f64>() / 3.0; // equal errors: weighted = plain mean
    let sd = (g.iter().map(|p| (p.1 - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    let slope = g
        .windows(2)
        .map(|w| ((w[1].1 - w[0].1) / (w[1].0 - w[0].0)).abs())
        .fold(0.0, f64::max);
    let conn = recomputed(&apdb, objs[0].dia_object_id).await;
    let gs = conn.bands.get("g").unwrap();
    assert_eq!(gs.psf_flux_ndata, 3);
    assert!(
        (f64::from(gs.psf_flux_mean.unwrap()) - mean).abs() < 0.01 * mean.abs().max(1.0),
        "{gs:?} vs {mean}"
    );
    assert!((f64::from(gs.psf_flux_mean_err.unwrap()) - 100.0 / 3f64.sqrt()).abs() < 0.01);
    assert!((f64::from(gs.psf_flux_sigma.unwrap()) - sd).abs() < 0.01 * sd);
    assert!((f64::from(gs.psf_flux_max_slope.unwrap()) - slope).abs() < 0.01 * slope);
    assert_eq!(conn.bands.get("r").unwrap().psf_flux_ndata, 3);
    // Forced photometry ran on visit 7 (after ≥ 2 detections, not detected then).
    let region = Region::new(footprint(), DEFAULT_MARGIN);
    let fs = apdb
        .dia_forced_sources(
            &region,
            &[objs[0].dia_object_id],
            TimeWindow::history(MjdTai(visit_time(N_VISITS))),
        )
        .await
        .unwrap();
    let visits: Vec<f64> = fs.iter().map(|f| f.midpoint_mjd_tai.0).collect();
    assert_eq!(
        visits,
        (2..N_VISITS).map(visit_time).collect::<Vec<_>>(),
        "forced from the visit that made it 2 detections on"
    );
}

/// The DiaObject's statistics recomputed from what the APDB holds.
async fn recomputed(apdb: &AnyApdb, id: DiaObjectId) -> apflow_apdb::DiaObject {
    // The Apdb contract returns the slim DiaObjectLast; the full version for the
    // light-curve check is recomputed the way association stores it: from the history.
    let region = Region::new(footprint(), DEFAULT_MARGIN);
    let w = TimeWindow::history(MjdTai(visit_time(N_VISITS)));
    let hs = apdb.dia_sources(&region, &[id], w).await.unwrap();
    let hf = apdb.dia_forced_sources(&region, &[id], w).await.unwrap();
    let mut o = apflow_apdb::DiaObject {
        dia_object_id: id,
        ..Default::default()
    };
    let srcs: Vec<&DiaSource> = hs.iter().collect();
    let fs: Vec<&DiaForcedSource> = hf.iter().collect();
    apflow_prompt_proc::association::summarize(&mut o, &srcs, &fs);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_two_arcsec_apart_stay_two() {
    let (_d, apdb) = night().await;
    let [a, b] = pair();
    let near_a = objects_near(&apdb, a.0, a.1, 1.0).await;
    let near_b = objects_near(&apdb, b.0, b.1, 1.0).await;
    assert_eq!((near_a.len(), near_b.len()), (1, 1));
    assert_ne!(near_a[0].dia_object_id, near_b[0].dia_object_id);
    assert_eq!(
        (near_a[0].n_dia_sources, near_b[0].n_dia_sources),
        (N_VISITS as i32, N_VISITS as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_object_with_known_ephemeris_creates_no_dia_object() {
    let (_d, apdb) = night().await;
    for k in 0..N_VISITS {
        let (ra, dec) = moving(visit_time(k));
        assert!(
            objects_near(&apdb, ra, dec, 2.0).await.is_empty(),
            "visit {k}"
        );
    }
    // Every other source made exactly the expected objects: 1 transient + 2 + 10/visit.
    let c = apdb.counts().await.unwrap();
    assert_eq!(c.dia_objects, 1 + 2 + 10 * u64::from(N_VISITS));
    assert_eq!(c.dia_sources, 6 + 2 * 8 + 8 + 10 * 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_apdb_write_then_rerun_keeps_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("apdb.db").display());
    let apdb = AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
    for k in 0..4 {
        process(&apdb, k).await;
    }
    let (first, _) = process(&apdb, 4).await;
    let before = apdb.counts().await.unwrap();
    // Visit 4 "crashed" between the APDB write and alert production: rerun it.
    let (rerun, r) = process(&apdb, 4).await;
    assert!(r.replaced_previous);
    assert_eq!(apdb.counts().await.unwrap(), before);
    assert_eq!(
        first, rerun,
        "the rerun stores exactly what the first run stored"
    );
    assert!(!rerun.forced.is_empty());
    let region = Region::new(footprint(), DEFAULT_MARGIN);
    let ids: Vec<_> = apdb
        .dia_objects(&region)
        .await
        .unwrap()
        .iter()
        .map(|o| o.dia_object_id)
        .collect();
    let w = TimeWindow::history(MjdTai(visit_time(9)));
    let srcs = apdb.dia_sources(&region, &ids, w).await.unwrap();
    let mut seen: Vec<_> = srcs.iter().map(|s| s.dia_source_id).collect();
    let n = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), n, "no DiaSource twice");
    let fs = apdb.dia_forced_sources(&region, &ids, w).await.unwrap();
    assert_eq!(
        fs.iter().filter(|f| f.visit == rerun.visit).count(),
        rerun.forced.len()
    );
}
