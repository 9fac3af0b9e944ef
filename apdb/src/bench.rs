//! `apflow bench apdb`: per-detector read and write time against the amount of history.
//!
//! A field of 3 × 3 LSST-sized detectors (13.65′ square, 0.2″ pixels × 4096) is filled
//! visit after visit with synthetic, LSST-like history from a seeded model: per detector
//! and visit ≈ 50 DiaSources, of which `recurrent` come from persistent variable objects
//! (detected with probability 0.6, forced-photometered on every visit once they have ≥ 2
//! detections) and the rest are one-off detections that each create a DiaObject — the
//! mix that makes Rubin's APDB region reads grow. At 10 %, 25 %, 50 %, 100 %, 150 % and
//! 200 % of a year (≈ 140 visits) the central detector's work is timed over `repeats`
//! visits:
//!
//! * **read** — what prompt processing reads per detector: `dia_objects(region)`, then
//!   `dia_sources` + `dia_forced_sources` over the 12-month window of the DiaObjects
//!   this visit's sources match (association needs the others' positions only);
//! * **write** — the `store` of that detector's results for the visit;
//! * **full read** — `dia_objects(region)` + the history of *every* DiaObject of the
//!   region (what the pipeline read before it associated first): the raw region-read
//!   throughput, reported per returned row.
//!
//! Beyond 100 % the 12-month window holds the same amount of history, so the history
//! reads should stay flat there (what time partitioning buys); the DiaObjects of the
//! region keep accumulating (the region read has no time window).
//!
//! The model is not association: objects are known by construction. Medians are reported.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use apflow_core::geom::{ARCSEC, SkyPolygon, TangentPlane};
use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use apflow_core::time::MjdTai;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ApdbConfig;
use crate::api::{Apdb, StoreBatch};
use crate::error::ApdbError;
use crate::partition::{DEFAULT_MARGIN, Region, TimeWindow};
use crate::schema::{BANDS, BandStats, Bands, DiaForcedSource, DiaObject, DiaSource};
use crate::sqlite::SqliteApdb;

/// Parameters of the benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Visits of the field in a year.
    pub visits_per_year: usize,
    /// DiaSources per detector per visit.
    pub sources_per_visit: usize,
    /// Persistent variable objects per detector (part of `sources_per_visit` when detected).
    pub recurrent: usize,
    /// Fractions of the year at which to measure.
    pub fractions: Vec<f64>,
    /// Visits timed at each fraction.
    pub repeats: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            visits_per_year: 140,
            sources_per_visit: 50,
            recurrent: 20,
            fractions: vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.0],
            repeats: 5,
            seed: 20260101,
        }
    }
}

/// Figures at one amount of history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchPoint {
    /// Fraction of a year of history stored.
    pub fraction: f64,
    /// Visits stored before the measurement.
    pub visits: usize,
    /// DiaObjects returned by the region read.
    pub objects_read: usize,
    /// DiaObjects whose history is read: the existing ones this visit's sources match.
    pub matched_objects: usize,
    /// DiaSources returned by the history read of the matched DiaObjects.
    pub sources_read: usize,
    /// Forced sources returned by the history read of the matched DiaObjects.
    pub forced_read: usize,
    /// Median read time per detector (region DiaObjects + matched history), ms.
    pub read_ms: f64,
    /// Median store time per detector, ms.
    pub write_ms: f64,
    /// DiaSources of every DiaObject of the region in the window.
    pub full_sources_read: usize,
    /// Forced sources of every DiaObject of the region in the window.
    pub full_forced_read: usize,
    /// Median time of the region read plus the history of every region DiaObject, ms.
    pub full_read_ms: f64,
}

impl BenchPoint {
    /// Read plus write, ms.
    pub fn total_ms(&self) -> f64 {
        self.read_ms + self.write_ms
    }
    /// Full read time per returned row (DiaObjects, DiaSources, forced sources), µs.
    pub fn full_us_per_row(&self) -> f64 {
        let rows = self.objects_read + self.full_sources_read + self.full_forced_read;
        self.full_read_ms * 1e3 / rows.max(1) as f64
    }
}

/// The benchmark result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The backend measured.
    pub backend: String,
    /// Parameters.
    pub config: BenchConfig,
    /// One point per fraction.
    pub points: Vec<BenchPoint>,
    /// Rows in the database at the end (DiaSources).
    pub total_sources: u64,
}

impl BenchReport {
    /// (read + write at 100 % of a year) / (read + write at the smallest fraction): the
    /// issue's "within 1.5×" figure. NaN without both points.
    pub fn growth(&self) -> f64 {
        let at_year = self.points.iter().find(|p| p.fraction == 1.0);
        match (self.points.first(), at_year) {
            (Some(a), Some(b)) => b.total_ms() / a.total_ms(),
            _ => f64::NAN,
        }
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "APDB benchmark ({}), {} sources/detector/visit, {} visits/year, median of {} visits",
            self.backend,
            self.config.sources_per_visit,
            self.config.visits_per_year,
            self.config.repeats
        )?;
        writeln!(
            f,
            "{:>8} {:>6} {:>7} {:>7} {:>7} {:>6} {:>8} {:>8} {:>8} | {:>7} {:>6} {:>8} {:>7}",
            "history",
            "visits",
            "objects",
            "matched",
            "sources",
            "forced",
            "read ms",
            "write ms",
            "total ms",
            "sources",
            "forced",
            "full ms",
            "µs/row"
        )?;
        for p in &self.points {
            writeln!(
                f,
                "{:>7.0}% {:>6} {:>7} {:>7} {:>7} {:>6} {:>8.2} {:>8.2} {:>8.2} | {:>7} {:>6} {:>8.2} {:>7.2}",
                p.fraction * 100.0,
                p.visits,
                p.objects_read,
                p.matched_objects,
                p.sources_read,
                p.forced_read,
                p.read_ms,
                p.write_ms,
                p.total_ms(),
                p.full_sources_read,
                p.full_forced_read,
                p.full_read_ms,
                p.full_us_per_row()
            )?;
        }
        writeln!(
            f,
            "read = region DiaObjects + history of the matched ones; after | : history of every region DiaObject"
        )?;
        write!(
            f,
            "total 100%/first = {:.2}x; {} DiaSources in the database",
            self.growth(),
            self.total_sources
        )
    }
}

/// Detector half-width: 4096 px × 0.2″ / 2, radians.
pub const DETECTOR_HALF_WIDTH: f64 = 2048.0 * 0.2 * ARCSEC;

/// The footprints of a `n × n` block of abutting detectors centred on (ra, dec) degrees.
pub fn detector_grid(ra_deg: f64, dec_deg: f64, n: usize) -> Vec<SkyPolygon> {
    let plane = TangentPlane::new(ra_deg.to_radians(), dec_deg.to_radians());
    let w = 2.0 * DETECTOR_HALF_WIDTH;
    let off = (n as f64 - 1.0) / 2.0;
    let mut out = Vec::new();
    for j in 0..n {
        for i in 0..n {
            let cx = (i as f64 - off) * w;
            let cy = (j as f64 - off) * w;
            out.push(SkyPolygon::from_tangent_rect(
                &plane,
                cx - w / 2.0,
                cx + w / 2.0,
                cy - w / 2.0,
                cy + w / 2.0,
            ));
        }
    }
    out
}

#[derive(Debug)]
struct Recurrent {
    ra: f64,
    dec: f64,
    id: Option<DiaObjectId>,
    n: i32,
    first: f64,
}

#[derive(Debug)]
struct Sky {
    polys: Vec<SkyPolygon>,
    planes: Vec<(TangentPlane, f64, f64)>,
    recurrent: Vec<Vec<Recurrent>>,
    rng: ChaCha8Rng,
}

fn full_bands(rng: &mut ChaCha8Rng, n: i32) -> Bands {
    let mut b = Bands::default();
    for s in b.0.iter_mut() {
        let m: f32 = rng.random_range(500.0..5000.0);
        *s = BandStats {
            psf_flux_mean: Some(m),
            psf_flux_mean_err: Some(m * 0.05),
            psf_flux_sigma: Some(m * 0.1),
            psf_flux_chi2: Some(1.1),
            psf_flux_ndata: n,
            fp_flux_mean: Some(m),
            fp_flux_mean_err: Some(20.0),
            science_flux_mean: Some(m * 3.0),
            science_flux_mean_err: Some(25.0),
            psf_flux_min: Some(m * 0.8),
            psf_flux_max: Some(m * 1.2),
            psf_flux_max_slope: Some(40.0),
            psf_flux_err_mean: Some(60.0),
        };
    }
    b
}

impl Sky {
    fn new(seed: u64, recurrent: usize) -> Self {
        let polys = detector_grid(150.1, 2.2, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let planes = polys
            .iter()
            .map(|p| {
                let (ra, dec) = p.center().to_radec();
                (TangentPlane::new(ra, dec), ra, dec)
            })
            .collect();
        let mut s = Self {
            polys,
            planes,
            recurrent: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(0),
        };
        s.recurrent = (0..s.polys.len())
            .map(|d| {
                (0..recurrent)
                    .map(|_| {
                        let (ra, dec) = s.random_position(d, &mut rng);
                        Recurrent {
                            ra,
                            dec,
                            id: None,
                            n: 0,
                            first: 0.0,
                        }
                    })
                    .collect()
            })
            .collect();
        s.rng = rng;
        s
    }

    fn random_position(&self, det: usize, rng: &mut ChaCha8Rng) -> (f64, f64) {
        let h = DETECTOR_HALF_WIDTH * 0.98;
        let (plane, _, _) = &self.planes[det];
        plane
            .deproject(rng.random_range(-h..h), rng.random_range(-h..h))
            .to_radec_deg()
    }

    /// One detector's batch for a visit.
    fn batch(&mut self, visit: VisitId, det: usize, t: f64, per_visit: usize) -> StoreBatch {
        let detector = DetectorId(det as u16);
        let band = BANDS[visit.seq() as usize % 6].to_string();
        let mut rng = std::mem::replace(&mut self.rng, ChaCha8Rng::seed_from_u64(0));
        let mut b = StoreBatch {
            visit,
            detector,
            visit_time: MjdTai(t),
            ..Default::default()
        };
        let mut counter = 0u32;
        let mut source = |ra: f64, dec: f64, obj: Option<DiaObjectId>, rng: &mut ChaCha8Rng| {
            let id = DiaSourceId::new(visit, detector, counter).expect("id fits");
            counter += 1;
            let flux: f32 = rng.random_range(300.0..8000.0);
            DiaSource {
                dia_source_id: id,
                visit,
                detector,
                dia_object_id: Some(obj.unwrap_or(DiaObjectId::created_by(id))),
                midpoint_mjd_tai: MjdTai(t),
                ra,
                ra_err: Some(1e-5),
                dec,
                dec_err: Some(1e-5),
                ra_dec_cov: Some(0.0),
                x: rng.random_range(0.0..4096.0),
                y: rng.random_range(0.0..4096.0),
                x_err: Some(0.05),
                y_err: Some(0.05),
                ap_flux: Some(flux),
                ap_flux_err: Some(80.0),
                snr: Some(flux / 80.0),
                psf_flux: Some(flux),
                psf_flux_err: Some(70.0),
                psf_chi2: Some(1.0),
                psf_ndata: 225,
                science_flux: Some(flux * 3.0),
                science_flux_err: Some(90.0),
                template_flux: Some(flux * 2.0),
                template_flux_err: Some(90.0),
                ixx: Some(0.5),
                iyy: Some(0.5),
                ixy: Some(0.0),
                extendedness: Some(0.1),
                reliability: Some(0.9),
                band: band.clone(),
                is_dipole: Some(false),
                time_processed_mjd_tai: t + 0.0005,
                bbox_size: 25,
                pixel_flags: Some(false),
                ..Default::default()
            }
        };
        // Persistent variables: detected with probability 0.6.
        let mut forced_objects = Vec::new();
        for r in self.recurrent[det].iter_mut() {
            if rng.random_bool(0.6) {
                let s = source(r.ra, r.dec, r.id, &mut rng);
                if r.id.is_none() {
                    r.id = s.dia_object_id;
                    r.first = t;
                }
                r.n += 1;
                b.objects.push(DiaObject {
                    dia_object_id: r.id.expect("set"),
                    validity_start_mjd_tai: t,
                    ra: r.ra,
                    dec: r.dec,
                    ra_err: Some(1e-5),
                    dec_err: Some(1e-5),
                    ra_dec_cov: Some(0.0),
                    bands: full_bands(&mut rng, r.n),
                    first_dia_source_mjd_tai: Some(r.first),
                    last_dia_source_mjd_tai: Some(t),
                    n_dia_sources: r.n,
                    ..Default::default()
                });
                b.sources.push(s);
            }
            if r.n >= 2 {
                forced_objects.push((r.id.expect("set"), r.ra, r.dec));
            }
        }
        // One-off detections, each a new DiaObject.
        while b.sources.len() < per_visit {
            let (ra, dec) = self.random_position(det, &mut rng);
            let s = source(ra, dec, None, &mut rng);
            b.objects.push(DiaObject {
                dia_object_id: s.dia_object_id.expect("set"),
                validity_start_mjd_tai: t,
                ra,
                dec,
                ra_err: Some(1e-5),
                dec_err: Some(1e-5),
                ra_dec_cov: Some(0.0),
                bands: full_bands(&mut rng, 1),
                first_dia_source_mjd_tai: Some(t),
                last_dia_source_mjd_tai: Some(t),
                n_dia_sources: 1,
                ..Default::default()
            });
            b.sources.push(s);
        }
        for (k, (obj, ra, dec)) in forced_objects.into_iter().enumerate() {
            b.forced.push(DiaForcedSource {
                dia_forced_source_id: DiaSourceId::new(visit, detector, k as u32).expect("fits").0,
                dia_object_id: obj,
                ra,
                dec,
                visit,
                detector,
                psf_flux: Some(rng.random_range(-200.0..3000.0)),
                psf_flux_err: Some(70.0),
                midpoint_mjd_tai: MjdTai(t),
                science_flux: Some(rng.random_range(1000.0..9000.0)),
                science_flux_err: Some(90.0),
                band: band.clone(),
                time_processed_mjd_tai: t + 0.0005,
                time_withdrawn_mjd_tai: None,
            });
        }
        self.rng = rng;
        b
    }
}

/// Runs the benchmark on a fresh SQLite APDB in `dir`.
pub async fn run_sqlite(config: &BenchConfig, dir: &Path) -> Result<BenchReport, ApdbError> {
    let apdb = SqliteApdb::create(dir.join("apdb-bench.db"), &ApdbConfig::default())?;
    run(&apdb, "sqlite", config).await
}

/// Runs the benchmark on an empty APDB.
pub async fn run<A: Apdb>(
    apdb: &A,
    backend: &str,
    config: &BenchConfig,
) -> Result<BenchReport, ApdbError> {
    let mut sky = Sky::new(config.seed, config.recurrent);
    let n_det = sky.polys.len();
    let centre = n_det / 2;
    let region = Region::new(sky.polys[centre].clone(), DEFAULT_MARGIN);
    let t0 = 61_000.0;
    let cadence = 365.25 / config.visits_per_year as f64;
    let mut visit_no = 0usize;
    let visit_of = |k: usize| {
        let t = t0 + k as f64 * cadence;
        // Ids only need to be unique: one night, the sequence number carries k.
        (VisitId::new(20260101, k as u32 + 1).expect("visit"), t)
    };
    let mut points = Vec::new();
    let mut fractions = config.fractions.clone();
    fractions.sort_by(f64::total_cmp);
    for f in fractions {
        let target = ((f * config.visits_per_year as f64).round() as usize).max(1);
        while visit_no < target {
            let (visit, t) = visit_of(visit_no);
            for d in 0..n_det {
                let b = sky.batch(visit, d, t, config.sources_per_visit);
                apdb.store(&b).await?;
            }
            visit_no += 1;
        }
        let visits = visit_no;
        let (mut reads, mut writes, mut fulls) = (Vec::new(), Vec::new(), Vec::new());
        let mut p = BenchPoint {
            fraction: f,
            visits,
            objects_read: 0,
            matched_objects: 0,
            sources_read: 0,
            forced_read: 0,
            read_ms: 0.0,
            write_ms: 0.0,
            full_sources_read: 0,
            full_forced_read: 0,
            full_read_ms: 0.0,
        };
        for _ in 0..config.repeats {
            let (visit, t) = visit_of(visit_no);
            let batches: Vec<StoreBatch> = (0..n_det)
                .map(|d| sky.batch(visit, d, t, config.sources_per_visit))
                .collect();
            let w = TimeWindow::history(MjdTai(t));
            let tr = Instant::now();
            let objects = apdb.dia_objects(&region).await?;
            let objects_ms = tr.elapsed().as_secs_f64() * 1e3;
            // What association matches (known here by construction): the existing
            // DiaObjects this visit's sources belong to.
            let known: HashSet<DiaObjectId> = objects.iter().map(|o| o.dia_object_id).collect();
            let mut matched: Vec<DiaObjectId> = batches[centre]
                .sources
                .iter()
                .filter_map(|s| s.dia_object_id)
                .filter(|o| known.contains(o))
                .collect();
            matched.sort_unstable();
            matched.dedup();
            let th = Instant::now();
            let sources = apdb.dia_sources(&region, &matched, w).await?;
            let forced = apdb.dia_forced_sources(&region, &matched, w).await?;
            reads.push(objects_ms + th.elapsed().as_secs_f64() * 1e3);
            let all: Vec<DiaObjectId> = objects.iter().map(|o| o.dia_object_id).collect();
            let tf = Instant::now();
            let full_sources = apdb.dia_sources(&region, &all, w).await?;
            let full_forced = apdb.dia_forced_sources(&region, &all, w).await?;
            fulls.push(objects_ms + tf.elapsed().as_secs_f64() * 1e3);
            (p.objects_read, p.matched_objects) = (objects.len(), matched.len());
            (p.sources_read, p.forced_read) = (sources.len(), forced.len());
            (p.full_sources_read, p.full_forced_read) = (full_sources.len(), full_forced.len());
            for (d, b) in batches.iter().enumerate() {
                let tw = Instant::now();
                apdb.store(b).await?;
                if d == centre {
                    writes.push(tw.elapsed().as_secs_f64() * 1e3);
                }
            }
            visit_no += 1;
        }
        p.read_ms = median(&mut reads);
        p.write_ms = median(&mut writes);
        p.full_read_ms = median(&mut fulls);
        points.push(p);
    }
    Ok(BenchReport {
        backend: backend.into(),
        config: config.clone(),
        points,
        total_sources: apdb.counts().await?.dia_sources,
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
