//! The workload of `apflow bench filters` and `benches/filters.rs`: one realistic
//! synthetic visit and 100 realistic filters (the shipped `deploy/filters/` set plus
//! fixed-seed variants with other thresholds, cones, polygons and bands).
//!
//! [`crate::synth::visit`] fills every field uniformly at random (it exercises the
//! encoder); [`realistic_visit`] then gives the fields filters read plausible
//! distributions: one band for the visit (a visit has one filter), positions over a
//! 1.75°-radius field of view, magnitudes 17–24.5 with errors from a 5σ depth of
//! 24.5, 15 % negative difference fluxes, a reliability mostly near 1 or near 0, rare
//! pixel flags, 20 % of objects new (no history), variable objects whose history
//! scatters ±0.7 mag around their mean with per-band colours, and DiaObject summaries
//! consistent with the history.

use std::collections::HashMap;

use apflow_apdb::schema::BANDS;
use apflow_core::geom::TangentPlane;
use apflow_core::ids::DiaObjectId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::AB_ZERO_POINT_NJY;
use super::check::CostModel;
use super::file::{DEFAULT_QUOTA, Filter, FilterSet, FilterSpec};
use crate::packet::{AlertEncoder, AssembleConfig, inputs};
use crate::synth::{SynthVisit, visit};

/// The shipped filter files (`deploy/filters/`), by file name.
pub const DEPLOY_FILTERS: [(&str, &str); 4] = [
    (
        "new_transients.toml",
        include_str!("../../../deploy/filters/new_transients.toml"),
    ),
    (
        "brightening_variables.toml",
        include_str!("../../../deploy/filters/brightening_variables.toml"),
    ),
    (
        "solar_system.toml",
        include_str!("../../../deploy/filters/solar_system.toml"),
    ),
    (
        "extragalactic.toml",
        include_str!("../../../deploy/filters/extragalactic.toml"),
    ),
];

/// Centre of the synthetic field (ICRS degrees), as [`crate::synth::visit`].
pub const FIELD_CENTER: (f64, f64) = (150.0, 2.2);
/// Radius of the synthetic field of view, degrees.
pub const FIELD_RADIUS_DEG: f64 = 1.75;

fn flux_of_mag(m: f64) -> f64 {
    10f64.powf((AB_ZERO_POINT_NJY - m) / 2.5)
}

/// A visit of `n` DiaSources with realistic filter-relevant fields (module docs),
/// 10 previous DiaSources and 20 forced sources per object, `cutout_size`² cutouts.
/// Deterministic in `seed`.
pub fn realistic_visit(seed: u64, n: usize, cutout_size: usize) -> SynthVisit {
    let mut v = visit(seed, n, 10, 20, cutout_size);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f11e);
    let plane = TangentPlane::new(FIELD_CENTER.0.to_radians(), FIELD_CENTER.1.to_radians());
    let band = BANDS[1 + (seed as usize % 4)];
    let depth = 24.5;
    let err_at_depth = flux_of_mag(depth) / 5.0;
    // Per object: position, mean magnitude, colour offsets, new or not.
    struct Obj {
        ra: f64,
        dec: f64,
        mag: f64,
        colour: [f64; 6],
        new: bool,
    }
    let mut objs: HashMap<DiaObjectId, Obj> = HashMap::new();
    let draw = |rng: &mut ChaCha8Rng| {
        let r = FIELD_RADIUS_DEG.to_radians() * rng.random::<f64>().sqrt();
        let th = rng.random_range(0.0..std::f64::consts::TAU);
        let (ra, dec) = plane.deproject(r * th.cos(), r * th.sin()).to_radec_deg();
        let g_r = rng.random_range(-0.3..1.2);
        let mut colour = [0.0; 6];
        for (k, c) in colour.iter_mut().enumerate() {
            *c = g_r * (k as f64 - 2.0) * -0.5;
        }
        Obj {
            ra,
            dec,
            mag: rng.random_range(17.0..24.5),
            colour,
            new: rng.random_bool(0.2),
        }
    };
    for o in &v.dia_objects {
        let obj = draw(&mut rng);
        objs.insert(o.dia_object_id, obj);
    }
    let scale_flags = |rng: &mut ChaCha8Rng| Some(rng.random_bool(0.02));
    for s in &mut v.dia_sources {
        let (ra, dec, m) = match s.dia_object_id.and_then(|id| objs.get(&id)) {
            Some(o) => (o.ra, o.dec, o.mag + rng.random_range(-0.7..0.7)),
            None => {
                let o = draw(&mut rng);
                (o.ra, o.dec, o.mag)
            }
        };
        s.ra = ra;
        s.dec = dec;
        s.band = band.to_string();
        let negative = rng.random_bool(0.15);
        let f = flux_of_mag(m) * if negative { -1.0 } else { 1.0 };
        let err = (err_at_depth.powi(2) + f.abs() * 0.5).sqrt();
        s.psf_flux = Some(f as f32);
        s.psf_flux_err = Some(err as f32);
        s.snr = Some((f.abs() / err) as f32);
        s.is_negative = Some(negative);
        s.reliability = Some(if rng.random_bool(0.65) {
            1.0 - 0.3 * rng.random::<f32>().powi(2)
        } else {
            0.5 * rng.random::<f32>()
        });
        s.extendedness = Some(if rng.random_bool(0.3) {
            1.0
        } else {
            rng.random_range(0.0..0.3)
        });
        s.is_dipole = scale_flags(&mut rng);
        s.pixel_flags_saturated = scale_flags(&mut rng);
        s.pixel_flags_bad = scale_flags(&mut rng);
        s.pixel_flags_cr = scale_flags(&mut rng);
        s.pixel_flags_edge = scale_flags(&mut rng);
        s.pixel_flags_suspect = scale_flags(&mut rng);
        s.pixel_flags_streak = scale_flags(&mut rng);
        s.centroid_flag = scale_flags(&mut rng);
        s.psf_flux_flag = scale_flags(&mut rng);
        s.shape_flag = scale_flags(&mut rng);
    }
    // New objects lose their history; the rest get fluxes around their magnitude.
    v.history.retain(|h| {
        h.dia_object_id
            .and_then(|id| objs.get(&id))
            .is_none_or(|o| !o.new)
    });
    let mut first: HashMap<DiaObjectId, (f64, i32)> = HashMap::new();
    let t = v.t;
    for h in &mut v.history {
        let Some(o) = h.dia_object_id.and_then(|id| objs.get(&id)) else {
            continue;
        };
        h.ra = o.ra;
        h.dec = o.dec;
        let b = super::view::band_index(&h.band).map_or(2, usize::from);
        let m = o.mag + o.colour[b] + rng.random_range(-0.7..0.7);
        let f = flux_of_mag(m);
        h.psf_flux = Some(f as f32);
        h.psf_flux_err = Some(((err_at_depth.powi(2) + f * 0.5).sqrt()) as f32);
        h.reliability = Some(rng.random_range(0.5..1.0));
        if t - h.midpoint_mjd_tai.0 <= 365.0 {
            let e = first
                .entry(h.dia_object_id.expect("checked"))
                .or_insert((f64::INFINITY, 0));
            e.0 = e.0.min(h.midpoint_mjd_tai.0);
            e.1 += 1;
        }
    }
    for f in &mut v.forced {
        if let Some(o) = objs.get(&f.dia_object_id) {
            f.ra = o.ra;
            f.dec = o.dec;
        }
    }
    for o in &mut v.dia_objects {
        let obj = &objs[&o.dia_object_id];
        o.ra = obj.ra;
        o.dec = obj.dec;
        let (f0, n) = first.get(&o.dia_object_id).copied().unwrap_or((t, 0));
        o.first_dia_source_mjd_tai = Some(f0);
        o.last_dia_source_mjd_tai = Some(t);
        o.n_dia_sources = n + 1;
    }
    v
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// `n` filter expressions, named: the shipped ones (their `expression`), then
/// fixed-seed variants of nine shapes (thresholds, IN lists of bands, cones and
/// polygons inside the synthetic field, colours, history functions).
pub fn filter_expressions(seed: u64, n: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = DEPLOY_FILTERS
        .iter()
        .map(|(_, text)| {
            let s: FilterSpec = toml::from_str(text).expect("shipped filters parse (tested)");
            (s.name.into_inner(), s.expression.into_inner())
        })
        .collect();
    out.truncate(n);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let plane = TangentPlane::new(FIELD_CENTER.0.to_radians(), FIELD_CENTER.1.to_radians());
    let mut k = 0;
    while out.len() < n {
        let r = rng.random_range(0.5..0.98);
        let s = rng.random_range(5.0..30.0);
        let b = pick(&mut rng, &BANDS);
        let (cra, cdec) = {
            let rr = FIELD_RADIUS_DEG.to_radians() * rng.random::<f64>().sqrt();
            let th = rng.random_range(0.0..std::f64::consts::TAU);
            plane.deproject(rr * th.cos(), rr * th.sin()).to_radec_deg()
        };
        let e = match k % 9 {
            0 => {
                let bands = (0..rng.random_range(1..4))
                    .map(|_| format!("'{}'", pick(&mut rng, &BANDS)))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "diaSource.reliability >= {r:.3} AND diaSource.snr >= {s:.1} AND diaSource.band IN ({bands})"
                )
            }
            1 => format!(
                "cone({cra:.4}, {cdec:.4}, {:.3}) AND diaSource.reliability > {r:.3}",
                rng.random_range(0.1..1.0)
            ),
            2 => format!(
                "n_previous() >= {} AND mag_change() < -{:.2} AND diaSource.band = '{b}'",
                rng.random_range(1..8),
                rng.random_range(0.1..0.8)
            ),
            3 => {
                let lo = rng.random_range(-1.0..0.5);
                format!(
                    "colour('g', 'r') BETWEEN {lo:.2} AND {:.2} AND diaSource.psfFlux > {:.0}",
                    lo + rng.random_range(0.2..1.0),
                    rng.random_range(500.0..20000.0)
                )
            }
            4 => format!(
                "abs(galactic_latitude()) > {:.1} AND days_since_first() < {:.0} AND diaSource.reliability >= {r:.3}",
                rng.random_range(10.0..60.0),
                rng.random_range(5.0..300.0)
            ),
            5 => {
                let h = rng.random_range(0.1..0.8);
                format!(
                    "polygon({:.4}, {:.4}, {:.4}, {:.4}, {:.4}, {:.4}, {:.4}, {:.4}) AND diaSource.snr > {s:.1}",
                    cra - h,
                    cdec - h,
                    cra + h,
                    cdec - h,
                    cra + h,
                    cdec + h,
                    cra - h,
                    cdec + h
                )
            }
            6 => format!(
                "mag(diaSource.psfFlux) < {:.2} AND diaObject.nDiaSources > {} AND NOT diaSource.isDipole",
                rng.random_range(18.0..24.0),
                rng.random_range(1..10)
            ),
            7 => format!(
                "flux_change() > {:.0} AND diaSource.psfFlux / diaSource.psfFluxErr > {s:.1} AND diaSource.pixelFlags_saturated = FALSE",
                rng.random_range(0.0..5000.0)
            ),
            _ => format!(
                "ssSource.ssObjectId IS NOT NULL AND mag(diaSource.psfFlux) BETWEEN {:.1} AND 24.5 OR (diaSource.reliability > {r:.3} AND diaSource.extendedness < {:.2} AND diaSource.isNegative = FALSE AND observation_reason = 'wfd')",
                rng.random_range(17.0..22.0),
                rng.random_range(0.05..0.5)
            ),
        };
        out.push((format!("variant_{k:02}"), e));
        k += 1;
    }
    out
}

/// The benchmark's inputs: framed alerts of one visit and the filters.
#[derive(Debug)]
pub struct Workload {
    /// Confluent-framed alerts (30 × 30 cutouts, 10 previous DiaSources and 20 forced
    /// sources per object), as a broker would deliver them.
    pub framed: Vec<Vec<u8>>,
    /// The filters ([`filter_expressions`]), default quota.
    pub set: FilterSet,
}

/// Builds the workload: `n_alerts` alerts of [`realistic_visit`]`(seed, …)` encoded,
/// and `n_filters` filters from [`filter_expressions`]`(seed, …)`.
///
/// # Errors
/// A message if an alert cannot be encoded or a filter does not compile (both bugs).
pub fn workload(
    seed: u64,
    n_alerts: usize,
    n_filters: usize,
    cutout_size: usize,
) -> Result<Workload, String> {
    let v = realistic_visit(seed, n_alerts, cutout_size);
    let (alerts, dead) = inputs(&v.sources(), &v.context, &AssembleConfig::default());
    if !dead.is_empty() {
        return Err(format!("{} synthetic alerts dead-lettered", dead.len()));
    }
    let mut enc = AlertEncoder::new();
    let framed = alerts
        .iter()
        .map(|a| enc.to_framed(a).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let model = CostModel::default();
    // The shipped filters as they are loaded (owner, quota, topic), then the variants.
    let shipped = n_filters.min(DEPLOY_FILTERS.len());
    let mut filters = DEPLOY_FILTERS[..shipped]
        .iter()
        .map(|(file, text)| {
            Filter::from_toml(text, std::path::Path::new(file), &model).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (name, e) in filter_expressions(seed, n_filters)
        .into_iter()
        .skip(shipped)
    {
        filters.push(
            Filter::new("bench", &name, &e, DEFAULT_QUOTA, None, &model)
                .map_err(|err| format!("{name}: {err}"))?,
        );
    }
    let set = FilterSet::new(filters).map_err(|e| e.to_string())?;
    Ok(Workload { framed, set })
}

/// Evaluates every filter on every view with the reference interpreter; returns its
/// steps.
pub fn interpret(set: &FilterSet, views: &[super::AlertView]) -> u64 {
    let mut steps = 0;
    for v in views {
        for f in set.filters() {
            std::hint::black_box(f.condition.interpret(v, &mut steps));
        }
    }
    steps
}

/// Evaluates every filter on every view; returns the matches per filter.
pub fn evaluate(set: &FilterSet, views: &[super::AlertView]) -> Vec<u64> {
    let mut counts = vec![0u64; set.len()];
    let mut out = Vec::with_capacity(set.len());
    for v in views {
        out.clear();
        set.matching(v, &mut out);
        for &i in &out {
            counts[i] += 1;
        }
    }
    counts
}
