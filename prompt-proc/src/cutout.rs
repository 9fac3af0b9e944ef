//! Image cutouts ("postage stamps") of the science, template and difference images
//! around a DiaSource, for alerts.
//!
//! Each [`Cutout`] carries its masked pixels (outside the detector: 0 with `NO_DATA`),
//! the detector position of its lower-left pixel, a WCS valid on the cutout's own pixel
//! grid and the PSF image at the source. The cutout WCS is the detector's TAN-SIP WCS
//! with `CRPIX` moved by `(−x0, −y0)`: SIP is a polynomial in `(x + 1 − CRPIX)`, so this
//! is exactly the same mapping (not an approximation). Units are those of the images
//! (nJy per pixel).

use crate::error::ScienceError;
use crate::image::{Image, MaskedImage};
use crate::measure::DiaSourceMeasurement;
use crate::psf::{FWHM_PER_SIGMA, Psf};
use apflow_core::wcs::TanSipWcs;
use serde::Deserialize;

/// Side of the PSF image stored with each cutout, pixels (odd).
pub const CUTOUT_PSF_SIZE: usize = 25;

/// Tunables of [`cutout_size_for`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CutoutConfig {
    /// Smallest cutout side, pixels.
    pub min_size: usize,
    /// Largest cutout side, pixels.
    pub max_size: usize,
    /// Margin around a footprint or trail, in PSF FWHM on each side.
    pub margin_fwhm: f64,
}

impl Default for CutoutConfig {
    fn default() -> Self {
        Self {
            min_size: 30,
            max_size: 128,
            margin_fwhm: 2.0,
        }
    }
}

/// One cutout.
#[derive(Clone, Debug, PartialEq)]
pub struct Cutout {
    /// Pixels, variance and mask; outside the detector 0 with `NO_DATA`.
    pub masked: MaskedImage,
    /// Detector column of the cutout's pixel (0, 0).
    pub x0: i64,
    /// Detector row of the cutout's pixel (0, 0).
    pub y0: i64,
    /// WCS of the cutout's pixel grid (`CRPIX` relative to the cutout).
    pub wcs: TanSipWcs,
    /// PSF image at the source, [`CUTOUT_PSF_SIZE`]², centred, sum 1.
    pub psf: Image<f32>,
}

/// The three cutouts of a DiaSource.
#[derive(Clone, Debug, PartialEq)]
pub struct CutoutSet {
    /// Science (visit) image.
    pub science: Cutout,
    /// Warped, PSF-unmatched template.
    pub template: Cutout,
    /// Difference image.
    pub difference: Cutout,
}

/// The cutout side for a measurement: the footprint box or the trail plus
/// `margin_fwhm` FWHM on each side, at least `min_size`, at most `max_size`.
pub fn cutout_size_for(m: &DiaSourceMeasurement, cfg: &CutoutConfig) -> usize {
    let psf2 = m.ixx_psf + m.iyy_psf;
    let fwhm = if psf2.is_finite() && psf2 > 0.0 {
        (0.5 * psf2).sqrt() * FWHM_PER_SIGMA
    } else {
        4.0
    };
    let margin = 2.0 * cfg.margin_fwhm * fwhm;
    let mut extent = m.bbox.width().max(m.bbox.height()) as f64;
    if m.trail_length.is_finite() {
        extent = extent.max(m.trail_length);
    }
    if m.dipole_length.is_finite() {
        extent = extent.max(m.dipole_length);
    }
    let s = (extent + margin).ceil() as usize;
    s.clamp(cfg.min_size, cfg.max_size.max(cfg.min_size))
}

/// The WCS of a cutout whose pixel (0, 0) is detector pixel `(x0, y0)`.
pub fn shifted_wcs(wcs: &TanSipWcs, x0: i64, y0: i64) -> TanSipWcs {
    let mut w = wcs.clone();
    w.crpix[0] -= x0 as f64;
    w.crpix[1] -= y0 as f64;
    w
}

fn one(img: &MaskedImage, wcs: &TanSipWcs, psf: &dyn Psf, x: f64, y: f64, size: usize) -> Cutout {
    let x0 = x.round() as i64 - (size / 2) as i64;
    let y0 = y.round() as i64 - (size / 2) as i64;
    Cutout {
        masked: img.cutout(x0 as isize, y0 as isize, size, size),
        x0,
        y0,
        wcs: shifted_wcs(wcs, x0, y0),
        psf: psf.kernel(x, y, CUTOUT_PSF_SIZE),
    }
}

/// Cuts `size` × `size` pixels centred on `(x, y)` from the three images (which share
/// the detector's pixel grid and `wcs`), each with its PSF image at `(x, y)`.
/// Errors: the images differ in size, `size` is 0, or `(x, y)` is not finite.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    diff: &MaskedImage,
    science: &MaskedImage,
    template: &MaskedImage,
    wcs: &TanSipWcs,
    sci_psf: &dyn Psf,
    tmpl_psf: &dyn Psf,
    diff_psf: &dyn Psf,
    x: f64,
    y: f64,
    size: usize,
) -> Result<CutoutSet, ScienceError> {
    if diff.dims() != science.dims() || diff.dims() != template.dims() {
        return Err(ScienceError::BadInput(format!(
            "cutout images differ in size: {:?} {:?} {:?}",
            diff.dims(),
            science.dims(),
            template.dims()
        )));
    }
    if size == 0 || !x.is_finite() || !y.is_finite() {
        return Err(ScienceError::BadInput(format!(
            "cutout of size {size} at ({x}, {y})"
        )));
    }
    Ok(CutoutSet {
        science: one(science, wcs, sci_psf, x, y, size),
        template: one(template, wcs, tmpl_psf, x, y, size),
        difference: one(diff, wcs, diff_psf, x, y, size),
    })
}
