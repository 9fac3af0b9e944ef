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
#[derive(Clone, Debug, Deserialize, PartialEq, serde::Serialize)]
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
            margin_fwhm: 1.0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{DetectConfig, detect};
    use crate::image::mask;
    use crate::measure::{MeasureConfig, measure};
    use crate::psf::GaussianPsf;
    use crate::synth::{add_psf, add_trail, noise_image};
    use apflow_core::geom::UnitVector;

    fn sep_mas(a: (f64, f64), b: (f64, f64)) -> f64 {
        let (u, v) = (
            UnitVector::from_radec_deg(a.0, a.1),
            UnitVector::from_radec_deg(b.0, b.1),
        );
        let d = ((u.x - v.x).powi(2) + (u.y - v.y).powi(2) + (u.z - v.z).powi(2)).sqrt();
        d.to_degrees() * 3.6e6
    }

    #[test]
    fn cutout_wcs_matches_the_detector_wcs_and_edges_are_padded() {
        let (w, h) = (512, 400);
        let wcs =
            TanSipWcs::tan([120.0, -45.0], [256.5, 200.5], 0.2, 37.0).with_radial_distortion(2e-9);
        let img = noise_image(w, h, 1.0, 1);
        let sci = noise_image(w, h, 1.0, 2);
        let tmpl = noise_image(w, h, 1.0, 3);
        let p = GaussianPsf { sigma: 1.7 };
        let mut worst: f64 = 0.0;
        for &(x, y) in &[(3.2, 5.7), (500.0, 390.0), (256.0, 200.0), (30.4, 380.9)] {
            let c = extract(&img, &sci, &tmpl, &wcs, &p, &p, &p, x, y, 31).unwrap();
            for cut in [&c.science, &c.template, &c.difference] {
                assert_eq!(cut.masked.dims(), (31, 31));
                for j in 0..31 {
                    for i in 0..31 {
                        let (dx, dy) = (cut.x0 + i, cut.y0 + j);
                        let a = cut.wcs.pixel_to_sky(i as f64 + 0.3, j as f64 - 0.2);
                        let b = wcs.pixel_to_sky(dx as f64 + 0.3, dy as f64 - 0.2);
                        worst = worst.max(sep_mas(a, b));
                        let inside = dx >= 0 && dy >= 0 && (dx as usize) < w && (dy as usize) < h;
                        let m = cut.masked.mask.get(i as usize, j as usize);
                        if inside {
                            assert_eq!(m & mask::NO_DATA, 0);
                        } else {
                            assert_eq!(m & mask::NO_DATA, mask::NO_DATA);
                            assert_eq!(cut.masked.image.get(i as usize, j as usize), 0.0);
                        }
                    }
                }
                let s: f32 = cut.psf.data().iter().sum();
                assert!((s - 1.0).abs() < 1e-3 && cut.psf.width() == CUTOUT_PSF_SIZE);
            }
            // The source is at the cutout's centre pixel.
            assert_eq!(c.difference.x0 + 15, x.round() as i64);
            let d = &c.difference;
            assert_eq!(
                d.masked.image.get(15, 15),
                img.image.get(x.round() as usize, y.round() as usize)
            );
        }
        eprintln!("worst cutout WCS difference {worst:.2e} mas");
        assert!(worst < 1.0, "{worst}");
        assert!(
            extract(
                &img,
                &sci,
                &MaskedImage::new(3, 3),
                &wcs,
                &p,
                &p,
                &p,
                1.0,
                1.0,
                30
            )
            .is_err()
        );
        assert!(extract(&img, &sci, &tmpl, &wcs, &p, &p, &p, f64::NAN, 1.0, 30).is_err());
    }

    #[test]
    fn cutouts_grow_for_trails_up_to_a_cap() {
        let (w, h) = (400, 400);
        let p = GaussianPsf { sigma: 1.7 };
        let mut diff = noise_image(w, h, 1.0, 9);
        add_trail(&mut diff.image, &p, 200.0, 200.0, 8000.0, 60.0, 10.0);
        add_psf(&mut diff.image, &p, 80.0, 80.0, 300.0, 12);
        let zero = MaskedImage::new(w, h);
        let wcs = TanSipWcs::tan([0.0, 0.0], [200.0, 200.0], 0.2, 0.0);
        let det = detect(&diff, &p, &DetectConfig::default());
        let ms = measure(
            &diff,
            &zero,
            &zero,
            &p,
            &wcs,
            &det,
            &MeasureConfig::default(),
        );
        let cfg = CutoutConfig::default();
        let star = ms.iter().find(|m| (m.x - 80.0).abs() < 2.0).unwrap();
        let trail = ms.iter().find(|m| (m.x - 200.0).abs() < 3.0).unwrap();
        let (s1, s2) = (cutout_size_for(star, &cfg), cutout_size_for(trail, &cfg));
        eprintln!(
            "star {s1} px, trail {s2} px (length {:.1})",
            trail.trail_length
        );
        assert_eq!(s1, 30);
        assert!(s2 >= 60 + 2 && s2 <= cfg.max_size, "{s2}");
        let small = CutoutConfig {
            max_size: 40,
            ..cfg
        };
        assert_eq!(cutout_size_for(trail, &small), 40);
    }
}
