//! The per-detector pipeline: composes the stages, times each one and says which stage
//! failed and why.
//!
//! ```text
//! raw snaps ─ isr ─ characterize ─ calibrate ─ warp ─ subtract ─ detect ─ measure ─ score ─ cutouts
//!             e⁻     background,    WCS, zero   template  Alard–Lupton  matched   PSF flux,   reliability
//!                    stars, PSF     point → nJy on grid   + decorr.     filter    dipoles…
//! ```
//!
//! [`process_detector`] starts from raw snaps (what `apflow run` and the `process`
//! service call); [`process_calibrated`] starts from a calibrated science image and an
//! unwarped template with WCS (what `apflow diffim` calls): steps 2–10, with the
//! astrometric and photometric calibration against a reference catalogue when one is
//! given, else the science header WCS and a relative photometric scale measured on
//! bright stars in both images (so fluxes come out in the template's unit).
//!
//! No stage does I/O; [`crate::service`] loads files and calls these.

use std::time::Instant;

use apflow_core::wcs::TanSipWcs;
use serde::{Deserialize, Serialize};

use crate::background::{self, BackgroundConfig};
use crate::calibrate::{
    AB_NJY_ZERO_POINT, AstrometryConfig, BANDS, PhotometryConfig, RefStar, fit_astrometry,
    fit_photometry, refcat_in_detector,
};
use crate::cutout::{self, CutoutConfig, CutoutSet};
use crate::detect::{self, DetectConfig};
use crate::error::ScienceError;
use crate::image::{Image, MaskedImage};
use crate::io::{MasterCalibs, RawSnap, TemplateTile};
use crate::isr::{self, IsrConfig};
use crate::measure::{self, DiaSourceMeasurement, MeasureConfig};
use crate::psf::{ImagePsf, Psf};
use crate::psf_cache::CachedPsf;
use crate::psf_model::{self, PsfConfig, PsfModel};
use crate::reliability::{LogisticModel, ReliabilityFeatures, ReliabilityModel};
use crate::stars::{self, Star, StarConfig};
use crate::subtract::{self, ConvolvedImage, SubtractConfig};
use crate::warp::{self, WarpConfig, WarpedTemplate};

/// Every stage's settings (`[science]` in the apflow configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Instrument signature removal.
    pub isr: IsrConfig,
    /// Background mesh.
    pub background: BackgroundConfig,
    /// Bright-star detection on the science image.
    pub stars: StarConfig,
    /// PSF model.
    pub psf: PsfConfig,
    /// Astrometric fit.
    pub astrometry: AstrometryConfig,
    /// Photometric zero point.
    pub photometry: PhotometryConfig,
    /// Template warping.
    pub warp: WarpConfig,
    /// PSF matching and subtraction.
    pub subtract: SubtractConfig,
    /// Detection on the difference image.
    pub detect: DetectConfig,
    /// DiaSource measurement.
    pub measure: MeasureConfig,
    /// Cutouts.
    pub cutout: CutoutConfig,
    /// Reliability model weights.
    pub reliability: LogisticModel,
    /// Minimum aperture S/N of a star to be offered as a PSF-matching kernel candidate.
    pub kernel_candidate_min_snr: f64,
    /// DiaSources whose reliability is below this are kept but flagged
    /// ([`DiaSource::passes_reliability`]); alerts are sent for those at or above it.
    pub reliability_threshold: f32,
    /// Reference-catalogue search margin around the detector, pixels.
    pub refcat_margin_px: f64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            isr: IsrConfig::default(),
            background: BackgroundConfig::default(),
            stars: StarConfig::default(),
            psf: PsfConfig::default(),
            astrometry: AstrometryConfig::default(),
            photometry: PhotometryConfig::default(),
            warp: WarpConfig::default(),
            subtract: SubtractConfig::default(),
            detect: DetectConfig::default(),
            measure: MeasureConfig::default(),
            cutout: CutoutConfig::default(),
            reliability: LogisticModel::default(),
            kernel_candidate_min_snr: 30.0,
            reliability_threshold: 0.5,
            refcat_margin_px: 50.0,
        }
    }
}

/// A stage failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{stage}: {error}")]
pub struct StageFailure {
    /// The stage (`isr`, `characterize`, `calibrate`, `warp`, `subtract`, …; `load` for
    /// input files).
    pub stage: &'static str,
    /// Why.
    pub error: ScienceError,
}

impl StageFailure {
    fn at(stage: &'static str) -> impl Fn(ScienceError) -> StageFailure {
        move |error| StageFailure { stage, error }
    }
}

/// Seconds spent in one stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageTime {
    /// Stage name.
    pub stage: &'static str,
    /// Seconds.
    pub seconds: f64,
}

#[derive(Debug, Default)]
struct Clock {
    times: Vec<StageTime>,
}

impl Clock {
    /// Runs `f`, adding its time to `stage` (a stage timed in several parts keeps one
    /// entry, in the order it first ran).
    fn time<T>(&mut self, stage: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let seconds = t.elapsed().as_secs_f64();
        match self.times.iter_mut().find(|s| s.stage == stage) {
            Some(s) => s.seconds += seconds,
            None => self.times.push(StageTime { stage, seconds }),
        }
        r
    }
}

/// One measured, scored DiaSource with its cutouts.
#[derive(Clone, Debug)]
pub struct DiaSource {
    /// Everything measured on the difference, science and template images.
    pub measurement: DiaSourceMeasurement,
    /// Reliability score in [0, 1].
    pub reliability: f32,
    /// Whether `reliability` reaches the configured threshold.
    pub passes_reliability: bool,
    /// Science, template and difference cutouts.
    pub cutouts: Option<CutoutSet>,
}

/// How the astrometry and photometry were calibrated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationSummary {
    /// RMS of bright matched stars after the WCS fit, arcsec (`None` without a refcat).
    pub astrometric_rms_arcsec: Option<f64>,
    /// Stars matched to the reference catalogue.
    pub n_matched: usize,
    /// Multiplier from the science image's input unit to nJy (or to the template's
    /// unit for a relative calibration).
    pub scale_to_njy: f64,
    /// Its 1σ uncertainty.
    pub scale_err: f64,
    /// AB zero point of one input unit, mag (`None` for a relative calibration).
    pub zero_point_mag: Option<f64>,
    /// `refcat`, `relative` (stars on the template) or `unit` (BUNIT nJy).
    pub method: &'static str,
}

/// Summary of the PSF-matched subtraction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubtractionSummary {
    /// `template` or `science`.
    pub convolved: &'static str,
    /// Kernel sum at the centre (photometric ratio science / template).
    pub kernel_sum: f64,
    /// Stamps used in the final kernel fit.
    pub n_stamps_used: usize,
    /// Stamps rejected as outliers.
    pub n_stamps_rejected: usize,
    /// RMS of the normalised stamp residuals.
    pub stamp_residual_rms: f64,
    /// Whether the difference was decorrelated.
    pub decorrelated: bool,
    /// Residual background removed from the difference by the refit, at the detector
    /// centre (nJy per pixel; 0 without the refit).
    pub residual_background: f64,
}

/// Everything the pipeline produced for one detector.
#[derive(Debug)]
pub struct DetectorResult {
    /// DiaSources, positive and negative, dipoles and trails included.
    pub sources: Vec<DiaSource>,
    /// The calibrated science image, nJy per pixel, background subtracted.
    pub science: MaskedImage,
    /// The warped template, nJy per pixel.
    pub template: MaskedImage,
    /// The decorrelated difference image, nJy per pixel.
    pub difference: MaskedImage,
    /// The refined science WCS.
    pub wcs: TanSipWcs,
    /// The science PSF model.
    pub science_psf: PsfModel,
    /// The template PSF on science pixels.
    pub template_psf: ImagePsf,
    /// The difference image's PSF at the detector centre (for files).
    pub difference_psf_centre: Image<f32>,
    /// Calibration summary.
    pub calibration: CalibrationSummary,
    /// Subtraction summary.
    pub subtraction: SubtractionSummary,
    /// Fraction of the detector the template covers.
    pub template_coverage: f64,
    /// Bright stars measured on the science image.
    pub n_stars: usize,
    /// Stars used for the PSF model.
    pub n_psf_stars: usize,
    /// Positive / negative footprints before dipole merging.
    pub footprints: (usize, usize),
    /// Seconds per stage, in order.
    pub timings: Vec<StageTime>,
}

impl DetectorResult {
    /// Total seconds over the stages.
    pub fn total_seconds(&self) -> f64 {
        self.timings.iter().map(|t| t.seconds).sum()
    }

    /// DiaSources at or above the reliability threshold.
    pub fn reliable(&self) -> impl Iterator<Item = &DiaSource> {
        self.sources.iter().filter(|s| s.passes_reliability)
    }
}

/// Index of a band in the reference catalogue's `u g r i z y` columns.
pub fn band_index(band: &str) -> Option<usize> {
    BANDS
        .iter()
        .position(|b| b.eq_ignore_ascii_case(band.trim()))
}

struct Characterized {
    stars: Vec<Star>,
    psf: psf_model::PsfFit,
}

/// Background, bright stars, PSF model and PSF fluxes of a science image (in place:
/// the background is subtracted).
fn characterize(
    img: &mut MaskedImage,
    cfg: &PipelineConfig,
) -> Result<Characterized, ScienceError> {
    let bg = background::estimate(img, &cfg.background)?;
    bg.subtract_from(img);
    let mut stars = stars::detect_stars(img, &cfg.stars);
    let psf = psf_model::fit_psf(img, &stars, &cfg.psf)?;
    psf_model::measure_psf_flux(img, &psf.model, &mut stars);
    Ok(Characterized { stars, psf })
}

/// A clean, isolated star bright enough to match PSFs or scale photometry on.
fn is_kernel_star(s: &Star, min_snr: f64) -> bool {
    s.is_clean() && s.isolated && s.snr() >= min_snr
}

/// Positions of the stars offered to the kernel fit.
fn kernel_candidates(stars: &[Star], min_snr: f64) -> Vec<(f64, f64)> {
    stars
        .iter()
        .filter(|s| is_kernel_star(s, min_snr))
        .map(|s| (s.x, s.y))
        .collect()
}

/// Steps 5–10 on a calibrated (nJy, background-subtracted) science image.
#[allow(clippy::too_many_arguments)]
fn difference_and_sources(
    clock: &mut Clock,
    science: MaskedImage,
    wcs: TanSipWcs,
    ch: Characterized,
    warped: WarpedTemplate,
    calibration: CalibrationSummary,
    cfg: &PipelineConfig,
) -> Result<DetectorResult, StageFailure> {
    let (w, h) = science.dims();
    let sci_psf = &ch.psf.model;
    let candidates = kernel_candidates(&ch.stars, cfg.kernel_candidate_min_snr);
    let mut sub = clock
        .time("subtract", || {
            subtract::subtract(
                &science,
                sci_psf,
                &warped.masked,
                &warped.psf,
                &candidates,
                &cfg.subtract,
            )
        })
        .map_err(StageFailure::at("subtract"))?;
    let detections = clock.time("detect", || {
        let d = detect::detect(&sub.difference, &sub.psf, &cfg.detect);
        d.apply_mask(&mut sub.difference.mask);
        d
    });
    // Grid caches of the PSFs (the difference PSF is a convolution per evaluation),
    // shared by the measurement and the cutouts (`psf_cache_spacing` 0: no cache).
    let sp = cfg.measure.psf_cache_spacing;
    let diff_psf = CachedPsf::for_image(&sub.psf, w, h, sp);
    let sci_psf_c = CachedPsf::for_image(sci_psf, w, h, sp);
    // The warped template's PSF is one image (`ImagePsf`), the same everywhere.
    let tmpl_psf_c = if sp > 0.0 {
        CachedPsf::constant(&warped.psf, w, h)
    } else {
        CachedPsf::for_image(&warped.psf, w, h, sp)
    };
    let measurements = clock.time("measure", || {
        measure::measure_with_cached_psfs(
            &sub.difference,
            &science,
            &warped.masked,
            &diff_psf,
            &sci_psf_c,
            &tmpl_psf_c,
            &wcs,
            &detections,
            &cfg.measure,
        )
    });
    let sources = clock.time("score", || -> Result<Vec<DiaSource>, StageFailure> {
        measurements
            .into_iter()
            .map(|m| {
                let f = ReliabilityFeatures::from_measurement(&m, &sub.difference);
                let r = cfg.reliability.score(&f);
                let size = cutout::cutout_size_for(&m, &cfg.cutout);
                let cut = cutout::extract(
                    &sub.difference,
                    &science,
                    &warped.masked,
                    &wcs,
                    &sci_psf_c,
                    &tmpl_psf_c,
                    &diff_psf,
                    m.x,
                    m.y,
                    size,
                )
                .map_err(StageFailure::at("cutouts"))?;
                Ok(DiaSource {
                    measurement: m,
                    reliability: r,
                    passes_reliability: r >= cfg.reliability_threshold,
                    cutouts: Some(cut),
                })
            })
            .collect()
    })?;
    let (cx, cy) = (0.5 * (w as f64 - 1.0), 0.5 * (h as f64 - 1.0));
    let difference_psf_centre = sub.psf.kernel(cx, cy, 41);
    let subtraction = SubtractionSummary {
        convolved: match sub.convolved {
            ConvolvedImage::Template => "template",
            ConvolvedImage::Science => "science",
        },
        kernel_sum: sub.kernel_sum_at_centre,
        n_stamps_used: sub.n_stamps_used,
        n_stamps_rejected: sub.n_stamps_rejected,
        stamp_residual_rms: sub.stamp_residual_rms,
        decorrelated: sub.decorrelated,
        residual_background: sub.residual_background_at_centre,
    };
    let difference = sub.difference;
    Ok(DetectorResult {
        sources,
        science,
        template: warped.masked,
        difference,
        wcs,
        n_stars: ch.stars.len(),
        n_psf_stars: ch.psf.used.len(),
        science_psf: ch.psf.model,
        template_psf: warped.psf,
        difference_psf_centre,
        calibration,
        subtraction,
        template_coverage: warped.coverage,
        footprints: (detections.positive, detections.negative),
        timings: std::mem::take(&mut clock.times),
    })
}

/// The whole chain for one detector: raw snaps (one or two) → ISR → … → measured,
/// scored DiaSources with cutouts. `tiles` are the template tiles of the visit's band
/// around the detector (see [`warp::select_tiles`]); `refcat` the reference stars
/// (any area; the detector's are selected here).
pub fn process_detector(
    snaps: &[RawSnap],
    calibs: &MasterCalibs,
    tiles: &[&TemplateTile],
    refcat: &[RefStar],
    cfg: &PipelineConfig,
) -> Result<DetectorResult, StageFailure> {
    let mut clock = Clock::default();
    let out = clock
        .time("isr", || isr::run(snaps, calibs, &cfg.isr))
        .map_err(StageFailure::at("isr"))?;
    let science = CalibratedScience {
        masked: out.image,
        wcs: out.meta.wcs,
        band: Some(out.meta.band),
        mjd: Some(out.mjd_mid),
        in_njy: false,
    };
    calibrated_to_sources(&mut clock, science, tiles, Some(refcat), cfg)
}

/// A calibrated science image for [`process_calibrated`].
#[derive(Debug)]
pub struct CalibratedScience {
    /// Pixels (any linear unit), variance and mask; the background is estimated and
    /// subtracted here.
    pub masked: MaskedImage,
    /// The header WCS.
    pub wcs: TanSipWcs,
    /// Band, for the photometric calibration against a reference catalogue.
    pub band: Option<String>,
    /// Epoch (MJD TAI) for the reference catalogue's proper motions.
    pub mjd: Option<f64>,
    /// Whether the pixels are already in nJy (`BUNIT = 'nJy'`).
    pub in_njy: bool,
}

/// Steps 2–10 on a calibrated science image and template tiles with their own WCS (not
/// necessarily on the science grid): what `apflow diffim` runs.
///
/// With a reference catalogue the WCS is refined and the zero point fitted (the
/// science band must be known); without one the header WCS is used and, unless the
/// science image is already in nJy, its scale to the template's unit is the median
/// ratio of PSF fluxes of bright isolated stars measured on both.
pub fn process_calibrated(
    science: CalibratedScience,
    templates: &[&TemplateTile],
    refcat: Option<&[RefStar]>,
    cfg: &PipelineConfig,
) -> Result<DetectorResult, StageFailure> {
    calibrated_to_sources(&mut Clock::default(), science, templates, refcat, cfg)
}

/// Steps 2–10, shared by [`process_detector`] (after ISR) and [`process_calibrated`].
fn calibrated_to_sources(
    clock: &mut Clock,
    science: CalibratedScience,
    templates: &[&TemplateTile],
    refcat: Option<&[RefStar]>,
    cfg: &PipelineConfig,
) -> Result<DetectorResult, StageFailure> {
    let CalibratedScience {
        masked: mut img,
        wcs: header_wcs,
        band,
        mjd,
        in_njy,
    } = science;
    let (w, h) = img.dims();
    let ch = clock
        .time("characterize", || characterize(&mut img, cfg))
        .map_err(StageFailure::at("characterize"))?;
    // Astrometry: against the refcat when there is one, else the header WCS.
    let astrometry = clock
        .time("calibrate", || -> Result<_, ScienceError> {
            let Some(refcat) = refcat else {
                return Ok(None);
            };
            let mjd = mjd.ok_or_else(|| {
                ScienceError::BadInput("the science image has no MJD-OBS for the refcat".into())
            })?;
            let refs = refcat_in_detector(refcat, &header_wcs, w, h, cfg.refcat_margin_px, mjd);
            let astro = fit_astrometry(&ch.stars, &header_wcs, &refs, mjd, &cfg.astrometry)?;
            Ok(Some((refs, astro)))
        })
        .map_err(StageFailure::at("calibrate"))?;
    let wcs = astrometry
        .as_ref()
        .map_or_else(|| header_wcs.clone(), |(_, a)| a.wcs.clone());
    let warped = clock
        .time("warp", || {
            warp::warp_template(templates, &wcs, w, h, &cfg.warp)
        })
        .map_err(StageFailure::at("warp"))?;
    // Photometry: the unit already, the refcat's zero point, or relative to the template.
    let (scale_to_njy, scale_err, zero_point_mag, method) = clock
        .time("calibrate", || -> Result<_, ScienceError> {
            if in_njy {
                return Ok((1.0, 0.0, Some(AB_NJY_ZERO_POINT), "unit"));
            }
            if let Some((refs, astro)) = &astrometry {
                let band = band.as_deref().unwrap_or_default();
                let bi = band_index(band).ok_or_else(|| {
                    ScienceError::PhotoCalib(format!("unknown band {band:?} for the refcat"))
                })?;
                let p = fit_photometry(&ch.stars, refs, &astro.matches, bi, &cfg.photometry)?;
                return Ok((p.njy_per_electron, p.err, Some(p.zero_point_mag), "refcat"));
            }
            let (scale, err) = relative_scale(&ch, &img, &warped, cfg)?;
            Ok((scale, err, None, "relative"))
        })
        .map_err(StageFailure::at("calibrate"))?;
    let calibration = CalibrationSummary {
        astrometric_rms_arcsec: astrometry.as_ref().map(|(_, a)| a.rms_arcsec),
        n_matched: astrometry.as_ref().map_or(0, |(_, a)| a.n_matched),
        scale_to_njy,
        scale_err,
        zero_point_mag,
        method,
    };
    img.scale(scale_to_njy as f32);
    difference_and_sources(clock, img, wcs, ch, warped, calibration, cfg)
}

/// Median ratio (template flux / science flux) of bright isolated stars in a circular
/// aperture of 3 FWHM of the broader PSF (so neither image's PSF model enters), and its
/// error from the scatter.
fn relative_scale(
    ch: &Characterized,
    science: &MaskedImage,
    warped: &WarpedTemplate,
    cfg: &PipelineConfig,
) -> Result<(f64, f64), ScienceError> {
    let (cx, cy) = (
        0.5 * (warped.masked.width() as f64 - 1.0),
        0.5 * (warped.masked.height() as f64 - 1.0),
    );
    let fwhm = ch.psf.model.fwhm_at(cx, cy).max(warped.psf.fwhm_at(cx, cy));
    let r = 3.0 * fwhm;
    let mut ratios: Vec<f32> = ch
        .stars
        .iter()
        .filter(|s| is_kernel_star(s, cfg.kernel_candidate_min_snr))
        .filter_map(|s| {
            let (t, _, _, tf) = stars::aperture(&warped.masked, s.x, s.y, r);
            let (f, _, _, sf) = stars::aperture(science, s.x, s.y, r);
            (tf == 0 && sf == 0 && t > 0.0 && f > 0.0).then(|| (t / f) as f32)
        })
        .collect();
    let n = ratios.len();
    if n < cfg.photometry.min_stars {
        return Err(ScienceError::PhotoCalib(format!(
            "{n} stars measured on both images, {} needed for a relative scale",
            cfg.photometry.min_stars
        )));
    }
    let (med, sigma) = crate::image::median_and_iqr_sigma(&mut ratios)
        .ok_or_else(|| ScienceError::PhotoCalib("no usable star for a relative scale".into()))?;
    Ok((f64::from(med), f64::from(sigma) / (n as f64).sqrt()))
}
