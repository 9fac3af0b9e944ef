//! Association: DiaSources of one detector and visit against the DiaObjects of its
//! region and the predicted positions of solar-system objects.
//!
//! 1. Solar-system: a source within `ss_radius_arcsec` of a predicted SSObject position
//!    (from the simulator's ephemerides, later an orbit service) gets its `ssObjectId`
//!    and no DiaObject.
//! 2. DiaObjects: every other source is matched to the DiaObjects within
//!    `radius_arcsec` (1″) found with a k-d tree (`kiddo`) on unit vectors; pairs are
//!    taken greedily by increasing separation, so the match is one-to-one by best score.
//! 3. Unmatched sources create DiaObjects (id = the creating source's id).
//! 4. Each DiaObject that got a source is recomputed from its history in the window
//!    (12 months) plus the new sources: position, per-band PSF-flux statistics and
//!    forced-flux means ([`summarize`]).
//!
//! Steps 1–3 need only the region's DiaObjects ([`match_sources`]); step 4
//! ([`update_objects`]) needs the history of the DiaObjects matched
//! ([`Association::history_objects`]), so a caller can read just that history in
//! between. [`associate`] does both.
//!
//! Everything is pure: no I/O. Statistics follow Rubin's `DiaObject` definitions
//! (inverse-variance weighted means; LSE-163 §3.3.1).

use std::collections::HashMap;

use apflow_apdb::schema::{BandStats, Bands, DiaForcedSource, DiaObject, DiaObjectLast, DiaSource};
use apflow_core::geom::{ARCSEC, SkyPolygon, UnitVector};
use apflow_core::ids::{DiaObjectId, DiaSourceId};
use apflow_core::time::MjdTai;
use kiddo::{KdTree, SquaredEuclidean};
use serde::{Deserialize, Serialize};

/// Association parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssociationConfig {
    /// DiaSource–DiaObject match radius, arcseconds.
    pub radius_arcsec: f64,
    /// DiaSource–predicted SSObject match radius, arcseconds.
    pub ss_radius_arcsec: f64,
    /// Forced photometry is measured at DiaObjects with at least this many DiaSources.
    pub forced_min_detections: i32,
    /// History read before association (DiaSources and forced sources), days.
    pub history_days: f64,
}

impl Default for AssociationConfig {
    fn default() -> Self {
        Self {
            radius_arcsec: 1.0,
            ss_radius_arcsec: 2.0,
            forced_min_detections: 2,
            history_days: apflow_apdb::partition::HISTORY_DAYS,
        }
    }
}

/// The predicted position of a solar-system object at the visit's midpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SsPrediction {
    /// The SSObject.
    pub ss_object_id: i64,
    /// Predicted right ascension, degrees.
    pub ra: f64,
    /// Predicted declination, degrees.
    pub dec: f64,
}

/// What association reads: this detector's new sources and its region's history.
#[derive(Clone, Copy, Debug)]
pub struct AssociationInput<'a> {
    /// The visit's midpoint, MJD TAI.
    pub visit_time: MjdTai,
    /// New DiaSources of this detector and visit (ids unset).
    pub sources: &'a [DiaSource],
    /// DiaObjects of the region (detector polygon + margin), latest versions.
    pub objects: &'a [DiaObjectLast],
    /// DiaSources in the history window (before `visit_time`) of those objects, or at
    /// least of the ones the sources match ([`Association::history_objects`]);
    /// [`match_sources`] does not read it.
    pub history_sources: &'a [DiaSource],
    /// Forced sources in the history window of the same objects.
    pub history_forced: &'a [DiaForcedSource],
    /// Predicted solar-system positions in the footprint.
    pub predictions: &'a [SsPrediction],
}

/// What association returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Association {
    /// The input sources with `diaObjectId` or `ssObjectId` set, in input order.
    pub sources: Vec<DiaSource>,
    /// New versions of every DiaObject that got a source (matched or new), with
    /// recomputed statistics and `validityStartMjdTai` = the visit time.
    pub objects: Vec<DiaObject>,
    /// Sources matched to existing DiaObjects.
    pub matched: Vec<(DiaSourceId, DiaObjectId)>,
    /// DiaObjects created by this visit.
    pub created: Vec<DiaObjectId>,
    /// Sources associated with solar-system objects.
    pub ss_matched: Vec<(DiaSourceId, i64)>,
}

fn chord2(radius: f64) -> f64 {
    let c = 2.0 * (radius / 2.0).sin();
    c * c
}

fn vec3(ra: f64, dec: f64) -> [f64; 3] {
    let u = UnitVector::from_radec_deg(ra, dec);
    [u.x, u.y, u.z]
}

/// Greedy one-to-one assignment of candidate pairs `(distance², a, b)`, best first.
fn one_to_one(mut pairs: Vec<(f64, usize, usize)>, na: usize, nb: usize) -> Vec<(usize, usize)> {
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let (mut used_a, mut used_b) = (vec![false; na], vec![false; nb]);
    let mut out = Vec::new();
    for (_, a, b) in pairs {
        if !used_a[a] && !used_b[b] {
            used_a[a] = true;
            used_b[b] = true;
            out.push((a, b));
        }
    }
    out
}

impl Association {
    /// The existing DiaObjects matched by this detector's sources, sorted: the only
    /// ones whose history [`update_objects`] reads (DiaObjects created by this visit
    /// have none, and the region's other DiaObjects get no new version).
    pub fn history_objects(&self) -> Vec<DiaObjectId> {
        let mut ids: Vec<DiaObjectId> = self.matched.iter().map(|(_, o)| *o).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Associates one detector's sources; see the module docs. [`match_sources`] then
/// [`update_objects`].
pub fn associate(input: &AssociationInput<'_>, config: &AssociationConfig) -> Association {
    let mut a = match_sources(input, config);
    update_objects(&mut a, input);
    a
}

/// Steps 1–3 of the module docs: every source gets its `ssObjectId` or `diaObjectId`
/// (matched or created); `objects` is left empty. Reads no history.
pub fn match_sources(input: &AssociationInput<'_>, config: &AssociationConfig) -> Association {
    let mut sources = input.sources.to_vec();
    let n = sources.len();
    let mut taken = vec![false; n];
    let mut out = Association::default();

    // 1. Solar-system objects first.
    if !input.predictions.is_empty() && n > 0 {
        let mut tree: KdTree<f64, 3> = KdTree::new();
        for (i, s) in sources.iter().enumerate() {
            tree.add(&vec3(s.ra, s.dec), i as u64);
        }
        let r2 = chord2(config.ss_radius_arcsec * ARCSEC);
        let mut pairs = Vec::new();
        for (j, p) in input.predictions.iter().enumerate() {
            for nb in tree.within_unsorted::<SquaredEuclidean>(&vec3(p.ra, p.dec), r2) {
                pairs.push((nb.distance, nb.item as usize, j));
            }
        }
        for (i, j) in one_to_one(pairs, n, input.predictions.len()) {
            let ss = input.predictions[j].ss_object_id;
            sources[i].ss_object_id = Some(ss);
            sources[i].dia_object_id = None;
            taken[i] = true;
            out.ss_matched.push((sources[i].dia_source_id, ss));
        }
    }

    // 2. DiaObjects.
    let mut matched_to: Vec<Option<usize>> = vec![None; n];
    if !input.objects.is_empty() {
        let mut tree: KdTree<f64, 3> = KdTree::new();
        for (j, o) in input.objects.iter().enumerate() {
            tree.add(&vec3(o.ra, o.dec), j as u64);
        }
        let r2 = chord2(config.radius_arcsec * ARCSEC);
        let mut pairs = Vec::new();
        for (i, s) in sources.iter().enumerate().filter(|(i, _)| !taken[*i]) {
            for nb in tree.within_unsorted::<SquaredEuclidean>(&vec3(s.ra, s.dec), r2) {
                pairs.push((nb.distance, i, nb.item as usize));
            }
        }
        for (i, j) in one_to_one(pairs, n, input.objects.len()) {
            matched_to[i] = Some(j);
        }
    }

    // 3. Ids.
    for (i, s) in sources.iter_mut().enumerate() {
        if taken[i] {
            continue;
        }
        let id = match matched_to[i] {
            Some(j) => {
                let id = input.objects[j].dia_object_id;
                out.matched.push((s.dia_source_id, id));
                id
            }
            None => {
                let id = DiaObjectId::created_by(s.dia_source_id);
                out.created.push(id);
                id
            }
        };
        s.dia_object_id = Some(id);
        s.ss_object_id = None;
    }
    out.sources = sources;
    out
}

/// Step 4 of the module docs: a new version of every DiaObject that got a source in
/// `out` (from [`match_sources`] on the same `input`), recomputed from its history in
/// `input` and the new sources, into `out.objects` (replacing what was there).
pub fn update_objects(out: &mut Association, input: &AssociationInput<'_>) {
    out.objects.clear();
    let mut hist: HashMap<DiaObjectId, Vec<&DiaSource>> = HashMap::new();
    for s in input.history_sources {
        if let Some(o) = s.dia_object_id
            && s.midpoint_mjd_tai.0 < input.visit_time.0
        {
            hist.entry(o).or_default().push(s);
        }
    }
    let mut forced: HashMap<DiaObjectId, Vec<&DiaForcedSource>> = HashMap::new();
    for f in input.history_forced {
        if f.midpoint_mjd_tai.0 < input.visit_time.0 {
            forced.entry(f.dia_object_id).or_default().push(f);
        }
    }
    let mut order: Vec<DiaObjectId> = Vec::new();
    let mut new_by_object: HashMap<DiaObjectId, Vec<&DiaSource>> = HashMap::new();
    for s in out.sources.iter().filter(|s| s.ss_object_id.is_none()) {
        let id = s.dia_object_id.expect("set above");
        if !new_by_object.contains_key(&id) {
            order.push(id);
        }
        new_by_object.entry(id).or_default().push(s);
    }
    let prior: HashMap<DiaObjectId, &DiaObjectLast> =
        input.objects.iter().map(|o| (o.dia_object_id, o)).collect();
    for id in order {
        let mut all: Vec<&DiaSource> = hist.remove(&id).unwrap_or_default();
        all.extend(new_by_object[&id].iter().copied());
        let fs = forced.remove(&id).unwrap_or_default();
        let mut obj = DiaObject {
            dia_object_id: id,
            validity_start_mjd_tai: input.visit_time.0,
            ..Default::default()
        };
        summarize(&mut obj, &all, &fs);
        if let Some(p) = prior.get(&id) {
            // The first detection may predate the history window.
            obj.first_dia_source_mjd_tai =
                match (p.first_dia_source_mjd_tai, obj.first_dia_source_mjd_tai) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
        }
        out.objects.push(obj);
    }
}

/// Weighted statistics of one band's measurements `(time d, flux nJy, error nJy)`.
#[derive(Debug)]
struct Lc {
    n: usize,
    mean: f64,
    mean_err: f64,
    sigma: Option<f64>,
    chi2: f64,
    min: f64,
    max: f64,
    max_slope: Option<f64>,
    err_mean: f64,
}

fn light_curve(points: &[(f64, f64, f64)]) -> Option<Lc> {
    let pts: Vec<_> = points
        .iter()
        .copied()
        .filter(|p| p.1.is_finite() && p.2.is_finite() && p.2 > 0.0)
        .collect();
    let n = pts.len();
    if n == 0 {
        return None;
    }
    let wsum: f64 = pts.iter().map(|p| 1.0 / (p.2 * p.2)).sum();
    let mean = pts.iter().map(|p| p.1 / (p.2 * p.2)).sum::<f64>() / wsum;
    let plain_mean = pts.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let sigma = (n >= 2).then(|| {
        (pts.iter().map(|p| (p.1 - plain_mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
    });
    let chi2 = pts.iter().map(|p| ((p.1 - mean) / p.2).powi(2)).sum();
    let mut sorted = pts.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_slope = sorted
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| ((w[1].1 - w[0].1) / (w[1].0 - w[0].0)).abs())
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
    Some(Lc {
        n,
        mean,
        mean_err: (1.0 / wsum).sqrt(),
        sigma,
        chi2,
        min: pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        max: pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        max_slope,
        err_mean: pts.iter().map(|p| p.2).sum::<f64>() / n as f64,
    })
}

/// Recomputes a DiaObject's position, counts, times and per-band statistics from its
/// DiaSources and forced sources (history window plus this visit).
///
/// * position: mean of the sources' unit vectors; `raErr`/`decErr` the standard error
///   of that mean (the single source's errors for one source), degrees;
/// * `<band>_psfFlux*`: inverse-variance weighted mean and its error, sample standard
///   deviation, χ² about the weighted mean, N, min, max, max |Δflux/Δt| between
///   consecutive detections (nJy/d), mean error — from DiaSource `psfFlux`;
/// * `<band>_fpFluxMean(Err)` from forced `psfFlux` (difference image),
///   `<band>_scienceFluxMean(Err)` from forced `scienceFlux` (science image);
/// * `nDiaSources`, `first`/`lastDiaSourceMjdTai` over the sources given.
pub fn summarize(obj: &mut DiaObject, sources: &[&DiaSource], forced: &[&DiaForcedSource]) {
    if !sources.is_empty() {
        let (mut x, mut y, mut z) = (0.0, 0.0, 0.0);
        for s in sources {
            let u = UnitVector::from_radec_deg(s.ra, s.dec);
            x += u.x;
            y += u.y;
            z += u.z;
        }
        let c = UnitVector::normalized(x, y, z);
        let (ra, dec) = c.to_radec_deg();
        obj.ra = ra;
        obj.dec = dec;
        let n = sources.len() as f64;
        if sources.len() >= 2 {
            let cosd = dec.to_radians().cos();
            let mut dra2 = 0.0;
            let mut ddec2 = 0.0;
            for s in sources {
                let mut dra = s.ra - ra;
                if dra > 180.0 {
                    dra -= 360.0;
                } else if dra < -180.0 {
                    dra += 360.0;
                }
                dra2 += (dra * cosd).powi(2);
                ddec2 += (s.dec - dec).powi(2);
            }
            obj.ra_err = Some(((dra2 / (n - 1.0)) / n).sqrt() as f32);
            obj.dec_err = Some(((ddec2 / (n - 1.0)) / n).sqrt() as f32);
        } else {
            obj.ra_err = sources[0].ra_err;
            obj.dec_err = sources[0].dec_err;
            obj.ra_dec_cov = sources[0].ra_dec_cov;
        }
        obj.n_dia_sources = sources.len() as i32;
        obj.first_dia_source_mjd_tai = sources
            .iter()
            .map(|s| s.midpoint_mjd_tai.0)
            .reduce(f64::min);
        obj.last_dia_source_mjd_tai = sources
            .iter()
            .map(|s| s.midpoint_mjd_tai.0)
            .reduce(f64::max);
    }
    let mut bands = Bands::default();
    for (bi, band) in apflow_apdb::schema::BANDS.iter().enumerate() {
        let st: &mut BandStats = &mut bands.0[bi];
        let pts: Vec<(f64, f64, f64)> = sources
            .iter()
            .filter(|s| s.band == *band)
            .filter_map(|s| {
                Some((
                    s.midpoint_mjd_tai.0,
                    f64::from(s.psf_flux?),
                    f64::from(s.psf_flux_err?),
                ))
            })
            .collect();
        if let Some(lc) = light_curve(&pts) {
            st.psf_flux_mean = Some(lc.mean as f32);
            st.psf_flux_mean_err = Some(lc.mean_err as f32);
            st.psf_flux_sigma = lc.sigma.map(|s| s as f32);
            st.psf_flux_chi2 = Some(lc.chi2 as f32);
            st.psf_flux_ndata = lc.n as i32;
            st.psf_flux_min = Some(lc.min as f32);
            st.psf_flux_max = Some(lc.max as f32);
            st.psf_flux_max_slope = lc.max_slope.map(|s| s as f32);
            st.psf_flux_err_mean = Some(lc.err_mean as f32);
        }
        let fb: Vec<&&DiaForcedSource> = forced.iter().filter(|f| f.band == *band).collect();
        // The same light-curve summary over forced PSF fluxes and science-image fluxes.
        let forced_curve = |flux: fn(&DiaForcedSource) -> Option<(f32, f32)>| {
            let pts: Vec<_> = fb
                .iter()
                .filter_map(|f| {
                    let (v, e) = flux(f)?;
                    Some((f.midpoint_mjd_tai.0, f64::from(v), f64::from(e)))
                })
                .collect();
            light_curve(&pts)
        };
        if let Some(lc) = forced_curve(|f| Some((f.psf_flux?, f.psf_flux_err?))) {
            st.fp_flux_mean = Some(lc.mean as f32);
            st.fp_flux_mean_err = Some(lc.mean_err as f32);
        }
        if let Some(lc) = forced_curve(|f| Some((f.science_flux?, f.science_flux_err?))) {
            st.science_flux_mean = Some(lc.mean as f32);
            st.science_flux_mean_err = Some(lc.mean_err as f32);
        }
    }
    obj.bands = bands;
}

/// Updates the forced-flux statistics of DiaObject versions once this visit's forced
/// photometry is measured (`history_forced` in the window, `forced` of this visit; any
/// objects).
pub fn apply_forced(
    objects: &mut [DiaObject],
    sources: &[DiaSource],
    history_sources: &[DiaSource],
    history_forced: &[DiaForcedSource],
    forced: &[DiaForcedSource],
) {
    let mut f_by: HashMap<DiaObjectId, Vec<&DiaForcedSource>> = HashMap::new();
    for f in history_forced.iter().chain(forced) {
        f_by.entry(f.dia_object_id).or_default().push(f);
    }
    let mut s_by: HashMap<DiaObjectId, Vec<&DiaSource>> = HashMap::new();
    for s in history_sources.iter().chain(sources) {
        if let Some(o) = s.dia_object_id {
            s_by.entry(o).or_default().push(s);
        }
    }
    for o in objects {
        let first = o.first_dia_source_mjd_tai;
        let ss = s_by.remove(&o.dia_object_id).unwrap_or_default();
        let fs = f_by.remove(&o.dia_object_id).unwrap_or_default();
        summarize(o, &ss, &fs);
        o.first_dia_source_mjd_tai = match (first, o.first_dia_source_mjd_tai) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Where forced photometry is to be measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForcedTarget {
    /// The DiaObject.
    pub dia_object_id: DiaObjectId,
    /// Its position, degrees.
    pub ra: f64,
    /// Its position, degrees.
    pub dec: f64,
}

/// The DiaObjects to force-photometer on this detector: inside `footprint` (no margin)
/// with at least `config.forced_min_detections` DiaSources, counting this visit's.
/// `region_objects` are the objects read before association; `updated` the new
/// versions association produced (they take precedence). Sorted by id.
pub fn forced_targets(
    footprint: &SkyPolygon,
    region_objects: &[DiaObjectLast],
    updated: &[DiaObject],
    config: &AssociationConfig,
) -> Vec<ForcedTarget> {
    let mut by: HashMap<DiaObjectId, (f64, f64, i32)> = region_objects
        .iter()
        .map(|o| (o.dia_object_id, (o.ra, o.dec, o.n_dia_sources)))
        .collect();
    for o in updated {
        by.insert(o.dia_object_id, (o.ra, o.dec, o.n_dia_sources));
    }
    let mut out: Vec<ForcedTarget> = by
        .into_iter()
        .filter(|(_, (ra, dec, n))| {
            *n >= config.forced_min_detections
                && footprint.contains(UnitVector::from_radec_deg(*ra, *dec))
        })
        .map(|(id, (ra, dec, _))| ForcedTarget {
            dia_object_id: id,
            ra,
            dec,
        })
        .collect();
    out.sort_by_key(|t| t.dia_object_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflow_core::ids::{DetectorId, VisitId};

    fn src(k: u32, ra: f64, dec: f64) -> DiaSource {
        let v = VisitId::new(20261122, 5).unwrap();
        DiaSource {
            dia_source_id: DiaSourceId::new(v, DetectorId(1), k).unwrap(),
            visit: v,
            detector: DetectorId(1),
            midpoint_mjd_tai: MjdTai(61000.0),
            ra,
            dec,
            psf_flux: Some(100.0),
            psf_flux_err: Some(10.0),
            band: "g".into(),
            ..Default::default()
        }
    }

    fn obj(id: i64, ra: f64, dec: f64) -> DiaObjectLast {
        DiaObjectLast {
            dia_object_id: DiaObjectId(id),
            ra,
            dec,
            n_dia_sources: 1,
            ..Default::default()
        }
    }

    #[test]
    fn one_to_one_by_best_separation() {
        let a = 0.5 / 3600.0;
        // Two sources both within 1″ of object 1; the closer one wins, the other is
        // free to take object 2 (0.9″ away) instead of creating a new object.
        let sources = [src(0, 10.0 + a, 0.0), src(1, 10.0 + 0.2 * a, 0.0)];
        let objects = [obj(1, 10.0, 0.0), obj(2, 10.0 + 2.0 * a, 0.0)];
        let out = associate(
            &AssociationInput {
                visit_time: MjdTai(61000.0),
                sources: &sources,
                objects: &objects,
                history_sources: &[],
                history_forced: &[],
                predictions: &[],
            },
            &AssociationConfig::default(),
        );
        assert_eq!(out.sources[1].dia_object_id, Some(DiaObjectId(1)));
        assert_eq!(out.sources[0].dia_object_id, Some(DiaObjectId(2)));
        assert!(out.created.is_empty());
    }

    #[test]
    fn beyond_radius_creates_and_ss_takes_precedence() {
        let sources = [src(0, 10.0 + 1.1 / 3600.0, 0.0), src(1, 20.0, 0.0)];
        let objects = [obj(1, 10.0, 0.0), obj(2, 20.0, 0.0)];
        let preds = [SsPrediction {
            ss_object_id: 9,
            ra: 20.0 + 0.5 / 3600.0,
            dec: 0.0,
        }];
        let out = associate(
            &AssociationInput {
                visit_time: MjdTai(61000.0),
                sources: &sources,
                objects: &objects,
                history_sources: &[],
                history_forced: &[],
                predictions: &preds,
            },
            &AssociationConfig::default(),
        );
        assert_eq!(
            out.created,
            vec![DiaObjectId::created_by(sources[0].dia_source_id)]
        );
        assert_eq!(out.sources[1].ss_object_id, Some(9));
        assert_eq!(out.sources[1].dia_object_id, None);
        assert_eq!(out.objects.len(), 1);
    }

    #[test]
    fn matched_objects_history_alone_gives_the_same_association() {
        // Objects 1 and 2 are matched, 3 (in the region, with history) is not; one
        // source creates an object and one goes to a solar-system object.
        let sources = [
            src(0, 10.0, 0.0),
            src(1, 11.0, 0.0),
            src(2, 12.0, 0.0),
            src(3, 13.0, 0.0),
        ];
        let objects = [obj(1, 10.0, 0.0), obj(2, 11.0, 0.0), obj(3, 14.0, 0.0)];
        let v = VisitId::new(20261121, 1).unwrap();
        let old = |o: i64, k: u32, t: f64| DiaSource {
            dia_source_id: DiaSourceId::new(v, DetectorId(1), k).unwrap(),
            dia_object_id: Some(DiaObjectId(o)),
            midpoint_mjd_tai: MjdTai(t),
            psf_flux: Some(50.0 + k as f32),
            ..src(k, 10.0 + (o - 1) as f64, 0.0)
        };
        let history: Vec<DiaSource> = (0..9)
            .map(|k| old(1 + i64::from(k % 3), k, 60990.0 + f64::from(k)))
            .collect();
        let forced: Vec<DiaForcedSource> = (0..6)
            .map(|k| DiaForcedSource {
                dia_forced_source_id: i64::from(k),
                dia_object_id: DiaObjectId(1 + i64::from(k % 3)),
                midpoint_mjd_tai: MjdTai(60995.0 + f64::from(k)),
                psf_flux: Some(20.0),
                psf_flux_err: Some(5.0),
                band: "g".into(),
                ..Default::default()
            })
            .collect();
        let preds = [SsPrediction {
            ss_object_id: 7,
            ra: 13.0,
            dec: 0.0,
        }];
        let input = AssociationInput {
            visit_time: MjdTai(61000.0),
            sources: &sources,
            objects: &objects,
            history_sources: &history,
            history_forced: &forced,
            predictions: &preds,
        };
        let cfg = AssociationConfig::default();
        let whole = associate(&input, &cfg);

        let mut split = match_sources(&input, &cfg);
        let ids = split.history_objects();
        assert_eq!(ids, vec![DiaObjectId(1), DiaObjectId(2)]);
        let hs: Vec<DiaSource> = history
            .iter()
            .filter(|s| ids.contains(&s.dia_object_id.unwrap()))
            .cloned()
            .collect();
        let hf: Vec<DiaForcedSource> = forced
            .iter()
            .filter(|f| ids.contains(&f.dia_object_id))
            .cloned()
            .collect();
        update_objects(
            &mut split,
            &AssociationInput {
                history_sources: &hs,
                history_forced: &hf,
                ..input
            },
        );
        assert_eq!(split, whole);
        assert_eq!(whole.objects.len(), 3, "two matched, one created");
        assert_eq!(
            whole.objects[0].n_dia_sources, 4,
            "3 earlier + this visit's"
        );
    }

    #[test]
    fn light_curve_statistics() {
        let pts = vec![(1.0, 100.0, 10.0), (2.0, 130.0, 10.0), (4.0, 110.0, 20.0)];
        let lc = light_curve(&pts).unwrap();
        // weights 1/100, 1/100, 1/400
        let w = [0.01, 0.01, 0.0025];
        let mean = (100.0 * w[0] + 130.0 * w[1] + 110.0 * w[2]) / (w[0] + w[1] + w[2]);
        assert!((lc.mean - mean).abs() < 1e-9);
        assert!((lc.mean_err - (1.0 / 0.0225f64).sqrt()).abs() < 1e-9);
        assert!((lc.sigma.unwrap() - 15.275252316519468).abs() < 1e-9);
        assert_eq!((lc.min, lc.max), (100.0, 130.0));
        assert!((lc.max_slope.unwrap() - 30.0).abs() < 1e-12);
        assert!((lc.err_mean - 40.0 / 3.0).abs() < 1e-12);
        let chi2 = (100.0f64 - mean).powi(2) / 100.0
            + (130.0 - mean).powi(2) / 100.0
            + (110.0 - mean).powi(2) / 400.0;
        assert!((lc.chi2 - chi2).abs() < 1e-9);
    }
}
