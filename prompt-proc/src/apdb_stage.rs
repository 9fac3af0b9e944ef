//! The association stage: one processed detector into the APDB.
//!
//! 1. The pipeline's measurements become APDB [`DiaSource`] records
//!    ([`dia_source_records`]): ids minted from (visit, detector, n), fluxes in nJy,
//!    NaN ("not measured") written as null.
//! 2. The DiaObjects inside the detector footprint plus a margin are read, and
//!    [`match_sources`] matches the new sources to them or to predicted solar-system
//!    objects.
//! 3. The history of the matched DiaObjects only — their DiaSources and forced sources
//!    in the history window (`history_days`, 12 months by default) — is read, and
//!    [`update_objects`] recomputes the DiaObjects that got a source. The region's other
//!    DiaObjects get no new version, and their history is needed by nothing downstream
//!    (alert packets carry the history of their own DiaSource's DiaObject), so it is not
//!    read: at 12 months of LSST-like history that is ~12 of ~5,500 DiaObjects.
//! 4. Forced photometry is measured at every DiaObject in the footprint with enough
//!    detections ([`forced_targets`]), on the difference and science images
//!    ([`forced_photometry`]), and folded into the DiaObject summaries.
//! 5. Everything goes to the APDB in one idempotent [`Apdb::store`]: a rerun of the same
//!    detector replaces its rows, and produces the same ids.
//!
//! [`associate_and_store`] does 2–5 for any catalogue and any forced-photometry
//! measurement, so tests can drive it with modelled catalogues.

use std::time::Instant;

use apflow_apdb::partition::DEFAULT_MARGIN;
use apflow_apdb::{
    Apdb, ApdbError, DiaForcedSource, DiaObject, DiaSource, Region, StoreBatch, StoreReport,
    TimeWindow,
};
use apflow_core::events::ErrorClass;
use apflow_core::geom::SkyPolygon;
use apflow_core::ids::{DetectorId, DiaSourceId, IdError, VisitId};
use apflow_core::time::{MjdTai, TimeError};
use apflow_core::wcs::TanSipWcs;

use crate::association::{
    AssociationConfig, AssociationInput, ForcedTarget, SsPrediction, apply_forced, forced_targets,
    match_sources, update_objects,
};
use crate::error::ScienceError;
use crate::io::RawSnap;
use crate::measure::{MeasureConfig, forced_flux};
use crate::pipeline::{self, DetectorResult};
use crate::psf::{ImagePsf, Psf};

/// Forced sources take id counters from here up, DiaSources below (both tables key on
/// ids of the [`DiaSourceId`] layout; keeping the ranges apart keeps ids unique across
/// the two).
pub const FORCED_COUNTER_BASE: u32 = 1 << 19;

/// Which detector of which visit a result belongs to, from the raw headers.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorVisit {
    /// The visit.
    pub visit: VisitId,
    /// The detector.
    pub detector: DetectorId,
    /// The band (`u` … `y`).
    pub band: String,
    /// Midpoint of the visit (first shutter open to last shutter close), MJD TAI.
    pub midpoint: MjdTai,
    /// Assembled detector size, pixels.
    pub size: (usize, usize),
}

impl DetectorVisit {
    /// From the snaps of one detector (their headers must agree on visit and detector).
    pub fn from_snaps(snaps: &[RawSnap]) -> Result<Self, ScienceError> {
        let first = &snaps
            .first()
            .ok_or_else(|| ScienceError::BadInput("no raw snap".into()))?
            .meta;
        if let Some(s) = snaps
            .iter()
            .find(|s| s.meta.visit != first.visit || s.meta.detector != first.detector)
        {
            return Err(ScienceError::BadInput(format!(
                "snaps of visit {} detector {} and visit {} detector {} processed together",
                first.visit, first.detector, s.meta.visit, s.meta.detector
            )));
        }
        let start = snaps
            .iter()
            .map(|s| s.meta.mjd_obs)
            .fold(f64::MAX, f64::min);
        let end = snaps
            .iter()
            .map(|s| s.meta.mjd_end)
            .fold(f64::MIN, f64::max);
        Ok(Self {
            visit: VisitId(first.visit),
            detector: DetectorId(first.detector),
            band: first.band.clone(),
            midpoint: MjdTai(0.5 * (start + end)),
            size: first.detector_size,
        })
    }

    /// The detector's outline on the sky through `wcs` (pixel-edge corners).
    pub fn footprint(&self, wcs: &TanSipWcs) -> Result<SkyPolygon, ScienceError> {
        wcs.footprint(self.size.0 as f64, self.size.1 as f64)
            .map_err(|e| ScienceError::BadInput(format!("detector footprint: {e}")))
    }
}

fn finite(v: f64) -> Option<f32> {
    v.is_finite().then_some(v as f32)
}

/// The pipeline's sources as APDB records (association fills `diaObjectId` or
/// `ssObjectId`). The n-th source gets id `(visit, detector, n)`.
///
/// Second moments are the pixel-frame moments times the local pixel area, arcsec²;
/// trail and dipole angles are bearings on the sky (east of north), lengths in arcsec.
/// Columns with nothing measured behind them (`psfLnL`, `extendedness`, the trail and
/// angle errors, injection flags) are null.
pub fn dia_source_records(
    visit: &DetectorVisit,
    sources: &[pipeline::DiaSource],
    wcs: &TanSipWcs,
    processed: MjdTai,
) -> Result<Vec<DiaSource>, IdError> {
    sources
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let m = &s.measurement;
            let j = wcs.local_jacobian_arcsec(m.x, m.y);
            let area = (j[0][0] * j[1][1] - j[0][1] * j[1][0]).abs();
            let trailed = m.trail_ndata > 0 && m.trail_length.is_finite();
            let (trail_ra, trail_dec) = if trailed {
                let (ra, dec) = wcs.pixel_to_sky(m.trail_x, m.trail_y);
                (Some(ra), Some(dec))
            } else {
                (None, None)
            };
            let dipole = m.is_dipole_candidate;
            let (fp, fc) = (&m.footprint_flags, &m.centre_flags);
            let bbox = (m.bbox.x1 - m.bbox.x0 + 1).max(m.bbox.y1 - m.bbox.y0 + 1);
            Ok(DiaSource {
                dia_source_id: DiaSourceId::new(visit.visit, visit.detector, n as u32)?,
                visit: visit.visit,
                detector: visit.detector,
                midpoint_mjd_tai: visit.midpoint,
                ra: m.ra,
                ra_err: finite(m.ra_err),
                dec: m.dec,
                dec_err: finite(m.dec_err),
                ra_dec_cov: finite(m.ra_dec_cov),
                x: m.x as f32,
                x_err: finite(m.x_err),
                y: m.y as f32,
                y_err: finite(m.y_err),
                centroid_flag: Some(m.centroid_flag),
                ap_flux: finite(m.ap_flux),
                ap_flux_err: finite(m.ap_flux_err),
                ap_flux_flag: Some(m.ap_flux_flag),
                ap_flux_flag_aperture_truncated: Some(m.ap_flux_flag_truncated),
                is_negative: Some(m.is_negative),
                snr: finite(m.snr),
                psf_flux: finite(m.psf_flux),
                psf_flux_err: finite(m.psf_flux_err),
                psf_chi2: finite(m.psf_chi2),
                psf_ndata: m.psf_ndata as i32,
                psf_flux_flag: Some(m.psf_flux_flag),
                psf_flux_flag_edge: Some(m.psf_flux_flag_edge),
                psf_flux_flag_no_good_pixels: Some(m.psf_ndata == 0),
                trail_flux: trailed.then(|| finite(m.trail_flux)).flatten(),
                trail_flux_err: trailed.then(|| finite(m.trail_flux_err)).flatten(),
                trail_ra,
                trail_dec,
                trail_length: trailed.then(|| finite(m.trail_length_arcsec)).flatten(),
                trail_angle: trailed.then(|| finite(m.trail_bearing)).flatten(),
                trail_chi2: trailed.then(|| finite(m.trail_chi2)).flatten(),
                trail_ndata: m.trail_ndata as i32,
                dipole_mean_flux: dipole.then(|| finite(m.dipole_mean_flux)).flatten(),
                dipole_mean_flux_err: dipole.then(|| finite(m.dipole_mean_flux_err)).flatten(),
                dipole_flux_diff: dipole.then(|| finite(m.dipole_flux_diff)).flatten(),
                dipole_flux_diff_err: dipole.then(|| finite(m.dipole_flux_diff_err)).flatten(),
                dipole_length: dipole.then(|| finite(m.dipole_length_arcsec)).flatten(),
                dipole_angle: dipole.then(|| finite(m.dipole_bearing)).flatten(),
                dipole_chi2: dipole.then(|| finite(m.dipole_chi2)).flatten(),
                dipole_ndata: m.dipole_ndata as i32,
                science_flux: finite(m.science_flux),
                science_flux_err: finite(m.science_flux_err),
                forced_psf_flux_flag: Some(!m.science_flux.is_finite()),
                forced_psf_flux_flag_edge: Some(fc.edge),
                template_flux: finite(m.template_flux),
                template_flux_err: finite(m.template_flux_err),
                ixx: finite(m.ixx * area),
                iyy: finite(m.iyy * area),
                ixy: finite(m.ixy * area),
                ixx_psf: finite(m.ixx_psf * area),
                iyy_psf: finite(m.iyy_psf * area),
                ixy_psf: finite(m.ixy_psf * area),
                shape_flag: Some(m.shape_flag),
                reliability: Some(s.reliability),
                band: visit.band.clone(),
                is_dipole: Some(m.is_dipole),
                dipole_fit_attempted: Some(dipole),
                time_processed_mjd_tai: processed.0,
                bbox_size: bbox,
                pixel_flags: Some(false),
                pixel_flags_bad: Some(fp.bad),
                pixel_flags_cr: Some(fp.cosmic_ray),
                pixel_flags_cr_center: Some(fc.cosmic_ray),
                pixel_flags_edge: Some(fp.edge),
                pixel_flags_interpolated: Some(fp.interpolated),
                pixel_flags_interpolated_center: Some(fc.interpolated),
                pixel_flags_offimage: Some(
                    m.x < -0.5
                        || m.y < -0.5
                        || m.x > visit.size.0 as f64 - 0.5
                        || m.y > visit.size.1 as f64 - 0.5,
                ),
                pixel_flags_saturated: Some(fp.saturated),
                pixel_flags_saturated_center: Some(fc.saturated),
                pixel_flags_suspect: Some(fp.suspect),
                pixel_flags_suspect_center: Some(fc.suspect),
                pixel_flags_streak: Some(fp.streak),
                pixel_flags_streak_center: Some(fc.streak),
                ..Default::default()
            })
        })
        .collect()
}

/// Forced PSF photometry at `targets` on the difference image (`psfFlux`, with the
/// difference PSF at the detector centre, which the result keeps) and the science image
/// (`scienceFlux`, with the science PSF model at the position), over the box the
/// DiaSource fits use ([`MeasureConfig::fit_half`] of the difference PSF's width).
/// Targets whose position falls off the image are skipped.
pub fn forced_photometry(
    visit: &DetectorVisit,
    result: &DetectorResult,
    targets: &[ForcedTarget],
    cfg: &MeasureConfig,
    processed: MjdTai,
) -> Result<Vec<DiaForcedSource>, IdError> {
    let diff_psf = ImagePsf::new(result.difference_psf_centre.clone());
    let (w, h) = (
        result.difference.width() as f64,
        result.difference.height() as f64,
    );
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let Some((x, y)) = result.wcs.sky_to_pixel(t.ra, t.dec) else {
            continue;
        };
        if !(x >= -0.5 && y >= -0.5 && x < w - 0.5 && y < h - 0.5) {
            continue;
        }
        // The DiaSource fits' box: from the difference PSF's width.
        let half = cfg.fit_half(diff_psf.sigma_at(x, y));
        let (f, fe) = forced_flux(&result.difference, &diff_psf, x, y, half);
        let (s, se) = forced_flux(&result.science, &result.science_psf, x, y, half);
        let counter = FORCED_COUNTER_BASE + out.len() as u32;
        out.push(DiaForcedSource {
            dia_forced_source_id: DiaSourceId::new(visit.visit, visit.detector, counter)?.0,
            dia_object_id: t.dia_object_id,
            ra: t.ra,
            dec: t.dec,
            visit: visit.visit,
            detector: visit.detector,
            psf_flux: finite(f),
            psf_flux_err: finite(fe),
            midpoint_mjd_tai: visit.midpoint,
            science_flux: finite(s),
            science_flux_err: finite(se),
            band: visit.band.clone(),
            time_processed_mjd_tai: processed.0,
            time_withdrawn_mjd_tai: None,
        });
    }
    Ok(out)
}

/// What [`associate_and_store`] read, decided and wrote for one detector.
#[derive(Clone, Debug, Default)]
pub struct Associated {
    /// The stored batch: this detector's DiaSources (associated), the new DiaObject
    /// versions and the forced sources.
    pub batch: StoreBatch,
    /// DiaSources in the history window, before this visit, of the existing DiaObjects
    /// this detector's sources matched (the others' history is not read).
    pub history_sources: Vec<DiaSource>,
    /// Their forced sources in the history window, before this visit.
    pub history_forced: Vec<DiaForcedSource>,
    /// Sources matched to existing DiaObjects.
    pub matched: usize,
    /// DiaObjects created.
    pub created: usize,
    /// Sources associated with solar-system objects.
    pub ss_matched: usize,
    /// What the store wrote.
    pub report: StoreReport,
    /// Seconds reading the APDB: the region's DiaObjects and the matched ones' history.
    pub read_seconds: f64,
    /// Seconds in the store call.
    pub write_seconds: f64,
}

impl Associated {
    /// The DiaObject version written for `source` (none for a solar-system source).
    pub fn object_of(&self, source: &DiaSource) -> Option<&DiaObject> {
        let id = source.dia_object_id?;
        self.batch.objects.iter().find(|o| o.dia_object_id == id)
    }
}

/// Why the association stage could not complete.
#[derive(Debug, thiserror::Error)]
pub enum AssociateError {
    /// The APDB refused or failed.
    #[error(transparent)]
    Apdb(#[from] ApdbError),
    /// An id could not be minted (too many sources on one detector).
    #[error(transparent)]
    Id(#[from] IdError),
    /// The detector's footprint could not be built from its WCS.
    #[error(transparent)]
    Science(#[from] ScienceError),
    /// The processing time could not be expressed in TAI.
    #[error(transparent)]
    Clock(#[from] TimeError),
}

impl AssociateError {
    /// Short machine-readable reason, for dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Apdb(_) => "apdb",
            Self::Id(_) => "id_overflow",
            Self::Science(e) => e.reason(),
            Self::Clock(_) => "clock",
        }
    }
    /// What to do with the input: the APDB's own class (retry an outage), else a bug.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Apdb(e) => e.class(),
            Self::Science(e) => e.class(),
            Self::Id(_) | Self::Clock(_) => ErrorClass::Internal,
        }
    }
}

/// Reads the region's DiaObjects from `apdb`, associates `sources` (records of this
/// detector and visit, ids set, not yet associated), reads the history of the matched
/// DiaObjects, measures forced photometry at the DiaObjects `forced` is asked for, and
/// stores everything in one call.
pub async fn associate_and_store<A: Apdb>(
    apdb: &A,
    visit: &DetectorVisit,
    footprint: &SkyPolygon,
    sources: Vec<DiaSource>,
    predictions: &[SsPrediction],
    cfg: &AssociationConfig,
    forced: impl FnOnce(&[ForcedTarget]) -> Result<Vec<DiaForcedSource>, IdError>,
) -> Result<Associated, AssociateError> {
    let read = Instant::now();
    let region = Region::new(footprint.clone(), DEFAULT_MARGIN);
    let objects = apdb.dia_objects(&region).await?;
    let mut read_seconds = read.elapsed().as_secs_f64();
    let mut input = AssociationInput {
        visit_time: visit.midpoint,
        sources: &sources,
        objects: &objects,
        history_sources: &[],
        history_forced: &[],
        predictions,
    };
    let mut a = match_sources(&input, cfg);

    let read = Instant::now();
    let ids = a.history_objects();
    // The window ends at the visit (exclusive), so a rerun of this detector does not
    // read its own earlier rows as history.
    let window = TimeWindow::days_before(visit.midpoint, cfg.history_days);
    let (history_sources, history_forced) = if ids.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (
            apdb.dia_sources(&region, &ids, window).await?,
            apdb.dia_forced_sources(&region, &ids, window).await?,
        )
    };
    read_seconds += read.elapsed().as_secs_f64();
    input.history_sources = &history_sources;
    input.history_forced = &history_forced;
    update_objects(&mut a, &input);

    let targets = forced_targets(footprint, &objects, &a.objects, cfg);
    let new_forced = forced(&targets)?;
    apply_forced(
        &mut a.objects,
        &a.sources,
        &history_sources,
        &history_forced,
        &new_forced,
    );

    let batch = StoreBatch {
        visit: visit.visit,
        detector: visit.detector,
        visit_time: visit.midpoint,
        objects: a.objects,
        sources: a.sources,
        forced: new_forced,
    };
    let write = Instant::now();
    let report = apdb.store(&batch).await?;
    Ok(Associated {
        batch,
        history_sources,
        history_forced,
        matched: a.matched.len(),
        created: a.created.len(),
        ss_matched: a.ss_matched.len(),
        report,
        read_seconds,
        write_seconds: write.elapsed().as_secs_f64(),
    })
}
