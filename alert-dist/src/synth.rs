//! Fixed-seed synthetic alert inputs for tests, the serialisation benchmarks
//! (`benches/serialize.rs`, `apflow bench alerts`) and the Python outside check.
//!
//! Records are filled column by column from the APDB schema definition (every
//! nullable column set, so every field of the packet carries a value and the
//! encoder's every path runs), then given consistent ids, times, positions and bands.
//! Cutouts are Gaussian noise with a PSF-shaped source at the centre, on a TAN-SIP WCS
//! with a radial distortion, 25 × 25 PSF images: the size of real ones.

use std::collections::HashMap;

use apflow_apdb::schema::{
    BANDS, ColumnType, DiaForcedSource, DiaObject, DiaSource, Record, SsObject, Value,
};
use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use apflow_core::time::MjdTai;
use apflow_core::wcs::TanSipWcs;
use apflow_prompt_proc::cutout::{CUTOUT_PSF_SIZE, Cutout, CutoutSet};
use apflow_prompt_proc::image::{Image, MaskedImage, mask};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::packet::{AlertInput, AlertSources, VisitContext};

/// First visit id of the synthetic night (day_obs 20261122 × 100000).
const VISIT0: u64 = 2_026_112_200_000;

/// A record of type `R` with every column set from `rng`.
fn filled<R: Record>(rng: &mut ChaCha8Rng) -> R {
    let values: Vec<Value> = R::columns()
        .iter()
        .map(|c| match c.ty {
            ColumnType::Long => Value::Long(rng.random_range(1..1_000_000_000)),
            ColumnType::Int => Value::Int(rng.random_range(0..1000)),
            ColumnType::Double => Value::Double(rng.random_range(-1e4..1e4)),
            ColumnType::Float => Value::Float(rng.random_range(-1e4f32..1e4)),
            ColumnType::Boolean => Value::Boolean(rng.random()),
            _ => Value::String(BANDS[rng.random_range(0..6)].to_string()),
        })
        .collect();
    // Every value has its column's type (ids are overwritten by the callers).
    R::from_values(values).expect("synthetic values have their columns' types")
}

/// A synthetic DiaSource of `object` at (ra, dec) and time `t`.
pub fn dia_source(
    rng: &mut ChaCha8Rng,
    id: i64,
    object: i64,
    ra: f64,
    dec: f64,
    t: f64,
) -> DiaSource {
    let mut s: DiaSource = filled(rng);
    s.dia_source_id = DiaSourceId(id);
    s.visit = VisitId(VISIT0 + rng.random_range(0..1000));
    s.detector = DetectorId(rng.random_range(0..189));
    s.dia_object_id = Some(DiaObjectId(object));
    s.ss_object_id = None;
    s.parent_dia_source_id = None;
    s.midpoint_mjd_tai = MjdTai(t);
    s.ra = ra;
    s.dec = dec;
    s.time_processed_mjd_tai = t + 0.001;
    s.time_withdrawn_mjd_tai = None;
    s.band = BANDS[rng.random_range(0..6)].to_string();
    s
}

/// A synthetic DiaObject.
pub fn dia_object(rng: &mut ChaCha8Rng, id: i64, ra: f64, dec: f64, t: f64) -> DiaObject {
    let mut o: DiaObject = filled(rng);
    o.dia_object_id = DiaObjectId(id);
    o.validity_start_mjd_tai = t;
    o.validity_end_mjd_tai = None;
    o.ra = ra;
    o.dec = dec;
    o
}

/// A synthetic forced source of `object`.
pub fn forced_source(
    rng: &mut ChaCha8Rng,
    id: i64,
    object: i64,
    ra: f64,
    dec: f64,
    t: f64,
) -> DiaForcedSource {
    let mut f: DiaForcedSource = filled(rng);
    f.dia_forced_source_id = id;
    f.dia_object_id = DiaObjectId(object);
    f.ra = ra;
    f.dec = dec;
    f.visit = VisitId(VISIT0 + rng.random_range(0..1000));
    f.detector = DetectorId(rng.random_range(0..189));
    f.midpoint_mjd_tai = MjdTai(t);
    f.time_processed_mjd_tai = t + 0.001;
    f.time_withdrawn_mjd_tai = None;
    f.band = BANDS[rng.random_range(0..6)].to_string();
    f
}

/// One cutout: noise of σ = `sigma` nJy, a Gaussian source of `flux` nJy (σ_psf = 1.7 px)
/// at the centre, variance σ², a few masked pixels.
pub fn cutout(
    rng: &mut ChaCha8Rng,
    size: usize,
    wcs: &TanSipWcs,
    x0: i64,
    y0: i64,
    flux: f32,
) -> Cutout {
    let sigma = 25.0f32;
    let noise =
        Normal::new(0.0f32, sigma).unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("unit normal"));
    let psf_sigma = 1.7f32;
    let c = (size / 2) as f32;
    let mut img = Image::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let r2 = (x as f32 - c).powi(2) + (y as f32 - c).powi(2);
            let s = flux * (-0.5 * r2 / (psf_sigma * psf_sigma)).exp()
                / (2.0 * std::f32::consts::PI * psf_sigma * psf_sigma);
            img.set(x, y, s + noise.sample(rng));
        }
    }
    let var = Image::filled(size, size, sigma * sigma);
    let mut m = Image::new(size, size);
    for _ in 0..5 {
        let (x, y) = (rng.random_range(0..size), rng.random_range(0..size));
        m.set(x, y, mask::CR | mask::INTRP);
    }
    m.set(size / 2, size / 2, mask::DETECTED);
    let k = CUTOUT_PSF_SIZE;
    let kc = (k / 2) as f32;
    let mut psf = Image::new(k, k);
    let mut sum = 0.0;
    for y in 0..k {
        for x in 0..k {
            let v = (-0.5 * ((x as f32 - kc).powi(2) + (y as f32 - kc).powi(2))
                / (psf_sigma * psf_sigma))
                .exp();
            psf.set(x, y, v);
            sum += v;
        }
    }
    for v in psf.data_mut() {
        *v /= sum;
    }
    Cutout {
        masked: MaskedImage::from_parts(img, var, m),
        x0,
        y0,
        wcs: apflow_prompt_proc::cutout::shifted_wcs(wcs, x0, y0),
        psf,
    }
}

/// The three cutouts of a source at detector pixel (x, y) on `wcs`.
pub fn cutout_set(rng: &mut ChaCha8Rng, size: usize, wcs: &TanSipWcs, x: f64, y: f64) -> CutoutSet {
    let x0 = x.round() as i64 - (size / 2) as i64;
    let y0 = y.round() as i64 - (size / 2) as i64;
    CutoutSet {
        science: cutout(rng, size, wcs, x0, y0, 5000.0),
        template: cutout(rng, size, wcs, x0, y0, 3000.0),
        difference: cutout(rng, size, wcs, x0, y0, 2000.0),
    }
}

/// A detector WCS like an LSST detector's (0.2″/px, 4k × 4k, radial distortion).
pub fn detector_wcs(ra: f64, dec: f64) -> TanSipWcs {
    TanSipWcs::tan([ra, dec], [2048.5, 2048.5], 0.2, 30.0).with_radial_distortion(2e-11)
}

/// A synthetic detector-visit: `n` new DiaSources (each 1 in 10 a solar-system
/// source), their DiaObjects, `n_prv` earlier DiaSources and `n_forced` forced sources
/// per object within the last year plus a few older ones (outside the window), and
/// `cutout_size`² cutouts.
#[derive(Debug, Clone)]
pub struct SynthVisit {
    /// New DiaSources.
    pub dia_sources: Vec<DiaSource>,
    /// Their DiaObjects.
    pub dia_objects: Vec<DiaObject>,
    /// SSObjects of the solar-system sources.
    pub ss_objects: Vec<SsObject>,
    /// Earlier DiaSources.
    pub history: Vec<DiaSource>,
    /// Forced sources.
    pub forced: Vec<DiaForcedSource>,
    /// Cutouts by DiaSource.
    pub cutouts: HashMap<DiaSourceId, CutoutSet>,
    /// Scheduler fields.
    pub context: VisitContext,
    /// The visit's midpoint, MJD TAI.
    pub t: f64,
}

impl SynthVisit {
    /// The borrowed view [`crate::packet::assemble`] takes.
    pub fn sources(&self) -> AlertSources<'_> {
        AlertSources {
            dia_sources: &self.dia_sources,
            dia_objects: &self.dia_objects,
            ss_objects: &self.ss_objects,
            history: &self.history,
            forced: &self.forced,
            cutouts: &self.cutouts,
        }
    }
}

/// See [`SynthVisit`]. Deterministic in `seed`.
pub fn visit(seed: u64, n: usize, n_prv: usize, n_forced: usize, cutout_size: usize) -> SynthVisit {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t = 61_000.25;
    let (ra0, dec0) = (150.0, 2.2);
    let wcs = detector_wcs(ra0, dec0);
    let mut v = SynthVisit {
        dia_sources: Vec::new(),
        dia_objects: Vec::new(),
        ss_objects: Vec::new(),
        history: Vec::new(),
        forced: Vec::new(),
        cutouts: HashMap::new(),
        context: VisitContext {
            observation_reason: Some("wfd".into()),
            target_name: Some("lowdust_150_2".into()),
        },
        t,
    };
    let mut next_id = 1_000_000 * (seed as i64 % 1000 + 1);
    let mut id = || {
        next_id += 1;
        next_id
    };
    for k in 0..n {
        let (x, y) = (
            rng.random_range(20.0..4076.0),
            rng.random_range(20.0..4076.0),
        );
        let (ra, dec) = wcs.pixel_to_sky(x, y);
        let sid = id();
        let ss = k % 10 == 9;
        if ss {
            let mut s = dia_source(&mut rng, sid, 0, ra, dec, t);
            (s.x, s.y) = (x as f32, y as f32);
            s.dia_object_id = None;
            let ss_id = id();
            s.ss_object_id = Some(ss_id);
            v.ss_objects.push(SsObject {
                ss_object_id: ss_id,
                designation: Some(format!("2026 A{}", k % 100)),
                n_obs: 12,
                arc: 3.5,
                first_observation_mjd_tai: Some(t - 3.5),
            });
            v.dia_sources.push(s);
        } else {
            let oid = id();
            v.dia_objects.push(dia_object(&mut rng, oid, ra, dec, t));
            for j in 0..n_prv + 2 {
                // Two of them are older than a year: the window must drop them.
                let dt = if j < 2 {
                    400.0 + j as f64
                } else {
                    rng.random_range(1.0..360.0)
                };
                let hid = id();
                v.history
                    .push(dia_source(&mut rng, hid, oid, ra, dec, t - dt));
            }
            for j in 0..n_forced + 1 {
                let dt = if j == 0 {
                    500.0
                } else {
                    rng.random_range(1.0..360.0)
                };
                let fid = id();
                v.forced
                    .push(forced_source(&mut rng, fid, oid, ra, dec, t - dt));
            }
            let mut s = dia_source(&mut rng, sid, oid, ra, dec, t);
            (s.x, s.y) = (x as f32, y as f32);
            v.dia_sources.push(s);
        }
        v.cutouts.insert(
            DiaSourceId(sid),
            cutout_set(&mut rng, cutout_size, &wcs, x, y),
        );
    }
    v
}

/// `n` realistic alert inputs (cutouts rendered as FITS), for the serialisation
/// benchmarks: 30 × 30 cutouts, 10 previous DiaSources and 20 forced sources per object.
pub fn alert_inputs(seed: u64, n: usize) -> Vec<AlertInput> {
    let v = visit(seed, n, 10, 20, 30);
    let cfg = crate::packet::AssembleConfig::default();
    crate::packet::inputs(&v.sources(), &v.context, &cfg).0
}
