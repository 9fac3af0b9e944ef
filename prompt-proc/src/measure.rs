//! Measurement of DiaSources on the difference image: centroid, PSF and aperture
//! fluxes, second moments, dipole and trail fits, forced fluxes on the science and
//! template images, sky position and pixel flags.
//!
//! One [`DiaSourceMeasurement`] is made per deblended peak of a footprint, or one per
//! dipole candidate. Algorithms (all on pixels whose mask has none of
//! [`mask::UNUSABLE`], weighted by the inverse variance plane):
//!
//! * **Centroid and PSF flux**: Gauss–Newton fit of `F · P(x − x_c, y − y_c)` for
//!   `(x_c, y_c, F)` on a `(2r+1)²` box (`r = fit_radius_sigma · σ_PSF`) around the peak,
//!   `P` rendered with [`Psf::image_at_shifted`] (its own integer anchor per evaluation,
//!   so the phase stays within ±0.5 px); derivatives by central differences. Errors
//!   from the inverse Fisher matrix. The final PSF flux is the weighted linear least
//!   squares `F = Σ w P d / Σ w P²`, `σ_F = (Σ w P²)^{-1/2}`, with `psfChi2 = Σ w (d − F P)²`
//!   over `psfNdata` pixels (the estimator of Bosch et al. 2018, PASJ 70, S5, §4.9).
//! * **Aperture flux**: sum in a circle of radius `ap_radius` px (default 12, as the
//!   APDB's `apFlux`), boundary pixels split 5×5; error `sqrt(Σ var)`.
//! * **Second moments**: adaptive Gaussian-weighted moments (Bernstein & Jarvis 2002,
//!   AJ 123, 583): the weight's covariance is iterated to the source's by deconvolving
//!   the weight from the weighted moments, `S = (Q⁻¹ − W⁻¹)⁻¹` (falling back to `2Q`).
//!   Measured also on the PSF image, for comparisons (`ixxPsf`…).
//! * **Dipole** (dipole candidates): Levenberg–Marquardt fit of
//!   `F₊ P(x₊, y₊) − F₋ P(x₋, y₋)` (6 parameters) on the footprint's box. `isDipole` when
//!   the χ² improvement over the best single PSF exceeds `dipole_min_delta_chi2` and both
//!   lobes have `F/σ_F ≥ dipole_min_lobe_snr` (σ_F at fixed positions). On the
//!   difference image alone a dipole of separation `d ≲ σ` only constrains `F·d`; when
//!   the science and template images show the star (forced S/N ≥ 5 at the fitted lobe
//!   positions) the lobe fluxes get Gaussian priors from those forced fluxes (error
//!   floor `dipole_prior_rel_err`), as the LSST dipole fit uses the pre-subtraction
//!   images, and the fit is repeated.
//! * **Trail**: when the adaptive moments' major axis exceeds `trail_moment_ratio`
//!   times the PSF's, a Levenberg–Marquardt fit of the trailed-Gaussian model of Vereš
//!   et al. 2012 (PASP 124, 1197): a Gaussian of the PSF's σ (plus the pixel's 1/12 px²)
//!   convolved with a segment of length `L` at angle `θ`, for `(x_c, y_c, F, L, θ)`,
//!   started from the moments' centre, length `√(12 (λ_max − λ_PSF))` and angle. When
//!   the trail is longer than one FWHM its centre becomes the source's `x, y`.
//! * **Forced fluxes**: the linear PSF fit at the difference-image centroid on the
//!   science and template images with their own PSFs.
//! * **Sky**: `(ra, dec)` from the WCS; position errors propagated through
//!   [`TanSipWcs::local_jacobian_arcsec`].
//!
//! **Speed.** Every PSF stamp of the fits comes from a [`CachedPsf`] grid cache
//! (`psf_cache_spacing`): the difference image's PSF convolves the science PSF with the
//! decorrelation kernel (61² px) on every evaluation (~1–3 ms), and the fits ask for
//! ~20–30 stamps per source; the cache evaluates it once per grid node and each
//! source's stamps are Lanczos shifts of one bilinear blend of the nodes
//! ([`CachedPsf::local`]).
//!
//! **Fluxes are not aperture-corrected here**: the photometric calibration divides
//! reference fluxes by PSF fluxes measured with the same (stamp-normalised) PSF model,
//! so PSF fluxes on the calibrated images are already on the reference (total-flux)
//! scale; an aperture correction on top would count the PSF's far wings twice.
//!
//! Units: fluxes in nJy (the difference image's unit), positions in 0-based pixels,
//! moments in px², angles in degrees, `ra`/`dec` in degrees, `raErr`/`decErr` in
//! degrees on the sky (the RA error is of `ra·cos(dec)`).

// Small dense linear algebra and run lists read best with index loops.
#![allow(clippy::needless_range_loop)]

use crate::detect::{BBox, Detections, Footprint, Peak};
use crate::image::{MaskedImage, mask};
use crate::psf::{FWHM_PER_SIGMA, Psf};
use crate::psf_cache::CachedPsf;
use apflow_core::wcs::TanSipWcs;
use serde::Deserialize;

/// Tunables of [`measure`].
#[derive(Clone, Debug, Deserialize, PartialEq, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeasureConfig {
    /// Half-width of the PSF-fit box in PSF σ.
    pub fit_radius_sigma: f64,
    /// Gauss–Newton iterations of the centroid fit.
    pub centroid_iterations: usize,
    /// The centroid may move at most this many pixels from the peak; beyond, the fit is
    /// flagged and the peak is used.
    pub max_centroid_shift: f64,
    /// Aperture radius in pixels.
    pub ap_radius: f64,
    /// Iterations of the adaptive moments.
    pub moments_iterations: usize,
    /// Levenberg–Marquardt iterations of the dipole and trail fits.
    pub lm_iterations: usize,
    /// Minimum χ² improvement of the dipole model over one PSF for `isDipole`.
    pub dipole_min_delta_chi2: f64,
    /// Minimum significance of each lobe for `isDipole`.
    pub dipole_min_lobe_snr: f64,
    /// Relative error floor of the dipole's lobe-flux priors from the science and
    /// template forced fluxes.
    pub dipole_prior_rel_err: f64,
    /// Trail fit when the moments' major-axis variance exceeds this multiple of the
    /// PSF's.
    pub trail_moment_ratio: f64,
    /// Minimum PSF S/N for a trail fit.
    pub trail_min_snr: f64,
    /// Largest box (px per side) used by the dipole, trail and moments fits.
    pub max_fit_box: usize,
    /// Measure footprints in parallel with rayon.
    pub parallel: bool,
    /// Node spacing (pixels) of the grid cache of the difference PSF
    /// ([`CachedPsf`]); 0 evaluates the PSF itself for every stamp.
    pub psf_cache_spacing: f64,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        Self {
            fit_radius_sigma: 3.0,
            centroid_iterations: 6,
            max_centroid_shift: 2.5,
            ap_radius: 12.0,
            moments_iterations: 20,
            lm_iterations: 20,
            dipole_min_delta_chi2: 25.0,
            dipole_min_lobe_snr: 3.0,
            dipole_prior_rel_err: 0.03,
            trail_moment_ratio: 2.0,
            trail_min_snr: 5.0,
            max_fit_box: 121,
            parallel: false,
            psf_cache_spacing: 1024.0,
        }
    }
}

impl MeasureConfig {
    /// Half-side of the PSF-fit box for a PSF of Gaussian-equivalent σ (pixels):
    /// `fit_radius_sigma · σ`, σ clamped to 0.3–30 px, at least 2.
    pub fn fit_half(&self, sigma: f64) -> i32 {
        ((self.fit_radius_sigma * sigma.clamp(0.3, 30.0)).ceil() as i32).max(2)
    }
}

/// Mask-plane summary of a set of pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PixelFlags {
    /// OR of all mask bits.
    pub bits: u32,
    /// `SAT`.
    pub saturated: bool,
    /// `EDGE` or `NO_DATA`, or the pixels run off the image.
    pub edge: bool,
    /// `BAD`.
    pub bad: bool,
    /// `CR`.
    pub cosmic_ray: bool,
    /// `INTRP`.
    pub interpolated: bool,
    /// `SUSPECT`.
    pub suspect: bool,
    /// `STREAK`.
    pub streak: bool,
}

impl PixelFlags {
    /// Flags of a mask OR; `off_image` when some pixels were outside the image.
    pub fn from_bits(bits: u32, off_image: bool) -> Self {
        Self {
            bits,
            saturated: bits & mask::SAT != 0,
            edge: off_image || bits & (mask::EDGE | mask::NO_DATA) != 0,
            bad: bits & mask::BAD != 0,
            cosmic_ray: bits & mask::CR != 0,
            interpolated: bits & mask::INTRP != 0,
            suspect: bits & mask::SUSPECT != 0,
            streak: bits & mask::STREAK != 0,
        }
    }
}

/// A measured DiaSource (names after the APDB's `lsst.v11` DiaSource columns in the
/// docs). `NaN` means "not measured" (for example the trail of an untrailed source).
#[derive(Clone, Debug, PartialEq)]
pub struct DiaSourceMeasurement {
    /// `x`: centroid column, 0-based pixels.
    pub x: f64,
    /// `y`: centroid row, 0-based pixels.
    pub y: f64,
    /// `xErr`, pixels.
    pub x_err: f64,
    /// `yErr`, pixels.
    pub y_err: f64,
    /// Covariance of x and y, px².
    pub xy_cov: f64,
    /// `centroid_flag`: the centroid fit failed (the peak pixel is reported).
    pub centroid_flag: bool,
    /// `ra`, degrees.
    pub ra: f64,
    /// `dec`, degrees.
    pub dec: f64,
    /// `raErr`: σ of `ra·cos(dec)`, degrees.
    pub ra_err: f64,
    /// `decErr`, degrees.
    pub dec_err: f64,
    /// `ra_dec_Cov`, deg² (of `ra·cos(dec)` and `dec`).
    pub ra_dec_cov: f64,
    /// `psfFlux`, nJy (signed: negative sources are negative).
    pub psf_flux: f64,
    /// `psfFluxErr`, nJy.
    pub psf_flux_err: f64,
    /// `psfChi2` of the PSF fit.
    pub psf_chi2: f64,
    /// `psfNdata`: pixels in the PSF fit.
    pub psf_ndata: usize,
    /// `psfFlux_flag`: no usable pixels or a singular fit.
    pub psf_flux_flag: bool,
    /// `psfFlux_flag_edge`: the fit box runs off the image or over EDGE/NO_DATA.
    pub psf_flux_flag_edge: bool,
    /// `apFlux`, nJy, in a circle of `ap_radius` px.
    pub ap_flux: f64,
    /// `apFluxErr`, nJy.
    pub ap_flux_err: f64,
    /// `apFlux_flag`: unusable pixels inside the aperture were skipped.
    pub ap_flux_flag: bool,
    /// `apFlux_flag_apertureTruncated`: the aperture runs off the image.
    pub ap_flux_flag_truncated: bool,
    /// `snr`: |psfFlux| / psfFluxErr.
    pub snr: f64,
    /// Peak significance of the detection (σ of the matched-filter image, signed).
    pub significance: f64,
    /// `isNegative`.
    pub is_negative: bool,
    /// The footprint was a dipole candidate (both signs).
    pub is_dipole_candidate: bool,
    /// `isDipole`: the dipole model is significantly better than one PSF and both
    /// lobes are significant.
    pub is_dipole: bool,
    /// `dipoleMeanFlux`: (F₊ + F₋) / 2, nJy.
    pub dipole_mean_flux: f64,
    /// `dipoleMeanFluxErr`, nJy.
    pub dipole_mean_flux_err: f64,
    /// `dipoleFluxDiff`: F₊ − F₋, nJy.
    pub dipole_flux_diff: f64,
    /// `dipoleFluxDiffErr`, nJy.
    pub dipole_flux_diff_err: f64,
    /// `dipoleLength`: lobe separation, pixels.
    pub dipole_length: f64,
    /// `dipoleLength` in arcsec (the APDB's unit).
    pub dipole_length_arcsec: f64,
    /// `dipoleAngle` in the pixel frame: direction from the negative to the positive lobe,
    /// degrees counter-clockwise from +x, in (−180, 180].
    pub dipole_angle: f64,
    /// `dipoleAngle` on the sky: bearing east of north of the same direction, degrees.
    pub dipole_bearing: f64,
    /// `dipoleChi2` of the dipole fit.
    pub dipole_chi2: f64,
    /// `dipoleNdata`.
    pub dipole_ndata: usize,
    /// χ² of the best single-PSF fit on the dipole's pixels.
    pub dipole_single_chi2: f64,
    /// `trailLength`, pixels.
    pub trail_length: f64,
    /// `trailLength`, arcsec (the APDB's unit).
    pub trail_length_arcsec: f64,
    /// `trailAngle` in the pixel frame, degrees counter-clockwise from +x, in (−90, 90].
    pub trail_angle: f64,
    /// `trailAngle` on the sky: bearing east of north, degrees in [0, 180).
    pub trail_bearing: f64,
    /// `trailFlux`, nJy.
    pub trail_flux: f64,
    /// `trailFluxErr`, nJy (at fixed shape).
    pub trail_flux_err: f64,
    /// Trail centre column, pixels.
    pub trail_x: f64,
    /// Trail centre row, pixels.
    pub trail_y: f64,
    /// `trailChi2`.
    pub trail_chi2: f64,
    /// `trailNdata`.
    pub trail_ndata: usize,
    /// `ixx`: adaptive second moment, px².
    pub ixx: f64,
    /// `iyy`, px².
    pub iyy: f64,
    /// `ixy`, px².
    pub ixy: f64,
    /// `ixxPSF`: the PSF's adaptive moment at the source, px².
    pub ixx_psf: f64,
    /// `iyyPSF`, px².
    pub iyy_psf: f64,
    /// `ixyPSF`, px².
    pub ixy_psf: f64,
    /// `shape_flag`: the adaptive moments did not converge.
    pub shape_flag: bool,
    /// `scienceFlux`: forced PSF flux on the science image, nJy.
    pub science_flux: f64,
    /// `scienceFluxErr`, nJy.
    pub science_flux_err: f64,
    /// `templateFlux`: forced PSF flux on the template, nJy.
    pub template_flux: f64,
    /// `templateFluxErr`, nJy.
    pub template_flux_err: f64,
    /// Mask summary over the footprint.
    pub footprint_flags: PixelFlags,
    /// Mask summary over the 3×3 pixels at the centroid.
    pub centre_flags: PixelFlags,
    /// Pixels in the footprint.
    pub footprint_npix: usize,
    /// Bounding box of the footprint.
    pub bbox: BBox,
    /// Index of the footprint in [`Detections::footprints`].
    pub footprint_index: usize,
    /// Number of peaks measured from the same footprint (> 1: deblended).
    pub n_siblings: usize,
}

/// A PSF image anchored on the detector: pixel `(i, j)` of `data` is detector pixel
/// `(x0 + i, y0 + j)`.
struct Stamp {
    x0: i32,
    y0: i32,
    size: i32,
    data: Vec<f32>,
}

impl Stamp {
    fn render(psf: &dyn Psf, x: f64, y: f64, half: i32) -> Self {
        let (ix, iy) = (x.round(), y.round());
        let size = (2 * half + 1) as usize;
        let img = psf.image_at_shifted(x, y, size, x - ix, y - iy);
        Self {
            x0: ix as i32 - half,
            y0: iy as i32 - half,
            size: size as i32,
            data: img.into_vec(),
        }
    }

    #[inline]
    fn at(&self, x: i32, y: i32) -> f64 {
        let (i, j) = (x - self.x0, y - self.y0);
        if i < 0 || j < 0 || i >= self.size || j >= self.size {
            0.0
        } else {
            self.data[(j * self.size + i) as usize] as f64
        }
    }
}

/// Usable pixels of a box: `(x, y, value, weight)`, and whether the box was clipped by
/// the image or touched EDGE/NO_DATA.
struct Pixels {
    px: Vec<(i32, i32, f64, f64)>,
    edge: bool,
}

fn gather(img: &MaskedImage, b: BBox) -> Pixels {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let mut edge = b.x0 < 0 || b.y0 < 0 || b.x1 >= w || b.y1 >= h;
    let mut px = Vec::with_capacity(b.width() * b.height());
    for y in b.y0.max(0)..=b.y1.min(h - 1) {
        let (ir, vr, mr) = (
            img.image.row(y as usize),
            img.variance.row(y as usize),
            img.mask.row(y as usize),
        );
        for x in b.x0.max(0)..=b.x1.min(w - 1) {
            let (v, var, m) = (ir[x as usize], vr[x as usize], mr[x as usize]);
            if m & (mask::EDGE | mask::NO_DATA) != 0 {
                edge = true;
            }
            if m & mask::UNUSABLE == 0 && v.is_finite() && var.is_finite() && var > 0.0 {
                px.push((x, y, v as f64, 1.0 / var as f64));
            }
        }
    }
    Pixels { px, edge }
}

fn square(cx: f64, cy: f64, r: i32) -> BBox {
    let (ix, iy) = (cx.round() as i32, cy.round() as i32);
    BBox {
        x0: ix - r,
        y0: iy - r,
        x1: ix + r,
        y1: iy + r,
    }
}

/// Solves the symmetric positive system `a x = b` (n ≤ 8) by Gaussian elimination
/// with partial pivoting; `None` when singular.
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    for c in 0..N {
        let p = (c..N).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() <= 1e-300 || !a[p][c].is_finite() {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..N {
            let f = a[r][c] / a[c][c];
            for k in c..N {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = [0.0; N];
    for c in (0..N).rev() {
        let mut s = b[c];
        for k in c + 1..N {
            s -= a[c][k] * x[k];
        }
        x[c] = s / a[c][c];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Inverse of a small symmetric matrix by solving for unit vectors.
fn invert<const N: usize>(a: [[f64; N]; N]) -> Option<[[f64; N]; N]> {
    let mut inv = [[0.0; N]; N];
    for c in 0..N {
        let mut e = [0.0; N];
        e[c] = 1.0;
        let col = solve(a, e)?;
        for r in 0..N {
            inv[r][c] = col[r];
        }
    }
    Some(inv)
}

/// Result of a PSF fit.
#[derive(Clone, Copy, Debug)]
struct PsfFit {
    x: f64,
    y: f64,
    x_err: f64,
    y_err: f64,
    xy_cov: f64,
    flux: f64,
    flux_err: f64,
    chi2: f64,
    ndata: usize,
    ok: bool,
    centroid_ok: bool,
}

/// Linear PSF flux at fixed position: `(F, σ_F, χ², n)`.
fn linear_flux(pix: &[(i32, i32, f64, f64)], st: &Stamp) -> Option<(f64, f64, f64, usize)> {
    let (mut spp, mut spd) = (0.0, 0.0);
    for &(x, y, d, w) in pix {
        let p = st.at(x, y);
        spp += w * p * p;
        spd += w * p * d;
    }
    if spp.is_nan() || spp <= 0.0 {
        return None;
    }
    let f = spd / spp;
    let chi2 = pix
        .iter()
        .map(|&(x, y, d, w)| {
            let r = d - f * st.at(x, y);
            w * r * r
        })
        .sum();
    Some((f, spp.powf(-0.5), chi2, pix.len()))
}

/// Gauss–Newton PSF fit for (x, y, F) on the pixels of a box around `(x0, y0)`.
fn fit_psf(
    pix: &[(i32, i32, f64, f64)],
    psf: &dyn Psf,
    x0: f64,
    y0: f64,
    half: i32,
    cfg: &MeasureConfig,
) -> PsfFit {
    let h = 0.05;
    let (mut x, mut y) = (x0, y0);
    let mut centroid_ok = pix.len() >= 4;
    let mut cov = None;
    if centroid_ok {
        for it in 0..cfg.centroid_iterations.max(1) {
            let p0 = Stamp::render(psf, x, y, half);
            let pxp = Stamp::render(psf, x + h, y, half);
            let pxm = Stamp::render(psf, x - h, y, half);
            let pyp = Stamp::render(psf, x, y + h, half);
            let pym = Stamp::render(psf, x, y - h, half);
            let Some((f, _, _, _)) = linear_flux(pix, &p0) else {
                centroid_ok = false;
                break;
            };
            let mut a = [[0.0; 3]; 3];
            let mut b = [0.0; 3];
            for &(px, py, d, w) in pix {
                let p = p0.at(px, py);
                let dx = f * (pxp.at(px, py) - pxm.at(px, py)) / (2.0 * h);
                let dy = f * (pyp.at(px, py) - pym.at(px, py)) / (2.0 * h);
                let j = [dx, dy, p];
                let r = d - f * p;
                for u in 0..3 {
                    b[u] += w * j[u] * r;
                    for v in 0..3 {
                        a[u][v] += w * j[u] * j[v];
                    }
                }
            }
            cov = invert(a);
            let Some(step) = solve(a, b) else {
                centroid_ok = false;
                break;
            };
            let (sx, sy) = (step[0].clamp(-1.0, 1.0), step[1].clamp(-1.0, 1.0));
            x += sx;
            y += sy;
            if (x - x0).hypot(y - y0) > cfg.max_centroid_shift {
                centroid_ok = false;
                break;
            }
            if sx.abs() < 1e-3 && sy.abs() < 1e-3 && it > 0 {
                break;
            }
        }
    }
    if !centroid_ok {
        x = x0;
        y = y0;
        cov = None;
    }
    let p0 = Stamp::render(psf, x, y, half);
    let lin = linear_flux(pix, &p0);
    let (flux, flux_err, chi2, ndata) = lin.unwrap_or((f64::NAN, f64::NAN, f64::NAN, pix.len()));
    let (x_err, y_err, xy_cov) = match cov {
        Some(c) if c[0][0] > 0.0 && c[1][1] > 0.0 => (c[0][0].sqrt(), c[1][1].sqrt(), c[0][1]),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    };
    PsfFit {
        x,
        y,
        x_err,
        y_err,
        xy_cov,
        flux,
        flux_err,
        chi2,
        ndata,
        ok: lin.is_some(),
        centroid_ok,
    }
}

/// Forced linear PSF flux at `(x, y)` on `img` over a `(2·half+1)²` box: `(F, σ_F)`,
/// NaN when no pixel is usable.
pub fn forced_flux(img: &MaskedImage, psf: &dyn Psf, x: f64, y: f64, half: i32) -> (f64, f64) {
    let pix = gather(img, square(x, y, half));
    let st = Stamp::render(psf, x, y, half + 1);
    match linear_flux(&pix.px, &st) {
        Some((f, e, _, _)) => (f, e),
        None => (f64::NAN, f64::NAN),
    }
}

/// Aperture sum: `(flux, err, skipped_unusable, truncated)`.
fn aperture(img: &MaskedImage, x: f64, y: f64, r: f64) -> (f64, f64, bool, bool) {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let ri = r.ceil() as i32 + 1;
    let (ix, iy) = (x.round() as i32, y.round() as i32);
    let (mut f, mut v, mut skipped, mut trunc) = (0.0, 0.0, false, false);
    for py in iy - ri..=iy + ri {
        for px in ix - ri..=ix + ri {
            let d = ((px as f64 - x).powi(2) + (py as f64 - y).powi(2)).sqrt();
            let frac = if d <= r - 0.71 {
                1.0
            } else if d >= r + 0.71 {
                0.0
            } else {
                let mut n = 0;
                for a in 0..5 {
                    for b in 0..5 {
                        let sx = px as f64 - 0.4 + 0.2 * a as f64 - x;
                        let sy = py as f64 - 0.4 + 0.2 * b as f64 - y;
                        if sx * sx + sy * sy <= r * r {
                            n += 1;
                        }
                    }
                }
                n as f64 / 25.0
            };
            if frac == 0.0 {
                continue;
            }
            if px < 0 || py < 0 || px >= w || py >= h {
                trunc = true;
                continue;
            }
            let (pv, var, m) = (
                img.image.get(px as usize, py as usize),
                img.variance.get(px as usize, py as usize),
                img.mask.get(px as usize, py as usize),
            );
            if m & mask::UNUSABLE != 0 || !pv.is_finite() || !var.is_finite() {
                skipped = true;
                continue;
            }
            f += frac * pv as f64;
            v += frac * frac * var as f64;
        }
    }
    (f, v.sqrt(), skipped, trunc)
}

/// Adaptive moments of `data` starting at `(xc, yc)` with the weight covariance
/// `start`; the centre moves to the weighted centroid each iteration (at most
/// `max_half` from the start). `([ixx, iyy, ixy] px², (x, y))` or `None`.
fn adaptive_moments(
    data: &dyn Fn(i32, i32) -> Option<f64>,
    x_start: f64,
    y_start: f64,
    start: [f64; 3],
    max_half: i32,
    iters: usize,
) -> Option<([f64; 3], (f64, f64))> {
    let [mut wxx, mut wyy, mut wxy] = start;
    let (mut xc, mut yc) = (x_start, y_start);
    for _ in 0..iters.max(1) {
        let det = wxx * wyy - wxy * wxy;
        if det.is_nan() || det <= 0.0 {
            return None;
        }
        let (ixx, iyy, ixy) = (wyy / det, wxx / det, -wxy / det);
        let lmax = 0.5 * (wxx + wyy) + (0.25 * (wxx - wyy).powi(2) + wxy * wxy).sqrt();
        let half = ((4.0 * lmax.sqrt()).ceil() as i32).clamp(2, max_half);
        let (cx, cy) = (xc.round() as i32, yc.round() as i32);
        let (mut s0, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for py in cy - half..=cy + half {
            for px in cx - half..=cx + half {
                let Some(d) = data(px, py) else { continue };
                let (dx, dy) = (px as f64 - xc, py as f64 - yc);
                let q = ixx * dx * dx + iyy * dy * dy + 2.0 * ixy * dx * dy;
                if q > 25.0 {
                    continue;
                }
                let wd = (-0.5 * q).exp() * d;
                s0 += wd;
                sx += wd * dx;
                sy += wd * dy;
                sxx += wd * dx * dx;
                syy += wd * dy * dy;
                sxy += wd * dx * dy;
            }
        }
        if s0.is_nan() || s0 <= 0.0 {
            return None;
        }
        let (mx, my) = (sx / s0, sy / s0);
        let (qxx, qyy, qxy) = (sxx / s0 - mx * mx, syy / s0 - my * my, sxy / s0 - mx * my);
        // Move the centre (bounded per step and in total).
        xc += mx.clamp(-2.0, 2.0);
        yc += my.clamp(-2.0, 2.0);
        if (xc - x_start).hypot(yc - y_start) > max_half as f64 {
            return None;
        }
        // S = (Q⁻¹ − W⁻¹)⁻¹ when positive definite, else 2Q.
        let qdet = qxx * qyy - qxy * qxy;
        let mut next = [2.0 * qxx, 2.0 * qyy, 2.0 * qxy];
        if qdet > 0.0 {
            let (axx, ayy, axy) = (qyy / qdet - ixx, qxx / qdet - iyy, -qxy / qdet - ixy);
            let adet = axx * ayy - axy * axy;
            if axx > 0.0 && adet > 0.0 {
                let s = [ayy / adet, axx / adet, -axy / adet];
                // Guard against runaway growth on noise.
                if s[0] < 4.0 * (wxx + 1.0) && s[1] < 4.0 * (wyy + 1.0) {
                    next = s;
                }
            }
        }
        // Pixel-sampled point sources have at least the pixel's 1/12 px².
        next[0] = next[0].max(1.0 / 12.0);
        next[1] = next[1].max(1.0 / 12.0);
        let change = (next[0] - wxx).abs() + (next[1] - wyy).abs() + (next[2] - wxy).abs();
        wxx = next[0];
        wyy = next[1];
        wxy = next[2];
        if !(wxx.is_finite() && wyy.is_finite() && wxy.is_finite()) {
            return None;
        }
        if wxx > (max_half as f64).powi(2) || wyy > (max_half as f64).powi(2) {
            return None;
        }
        if change < 1e-5 * (wxx + wyy) && mx.abs() + my.abs() < 1e-4 {
            break;
        }
    }
    Some(([wxx, wyy, wxy], (xc, yc)))
}

/// An analytic Jacobian: one row of derivatives per observation.
type Jacobian<'a, const N: usize> = dyn Fn(&[f64; N]) -> Vec<[f64; N]> + 'a;

/// Levenberg–Marquardt on `N` parameters with numeric derivatives.
fn levenberg_marquardt<const N: usize>(
    obs: &[(f64, f64)],
    p0: [f64; N],
    steps: [f64; N],
    iters: usize,
    model: &dyn Fn(&[f64; N]) -> Option<Vec<f64>>,
    jacobian: Option<&Jacobian<'_, N>>,
) -> Option<([f64; N], f64, [[f64; N]; N])> {
    let chi2_of = |m: &[f64]| -> f64 {
        obs.iter()
            .zip(m)
            .map(|(&(d, w), &mv)| w * (d - mv) * (d - mv))
            .sum()
    };
    let mut p = p0;
    let mut m = model(&p)?;
    let mut chi2 = chi2_of(&m);
    let mut lambda = 1e-3;
    let mut a = [[0.0; N]; N];
    for _ in 0..iters {
        // Analytic Jacobian when given, else central differences.
        let jac: Vec<[f64; N]> = match jacobian {
            Some(j) => j(&p),
            None => {
                let mut jac = vec![[0.0; N]; obs.len()];
                for k in 0..N {
                    let (mut pp, mut pm) = (p, p);
                    pp[k] += steps[k];
                    pm[k] -= steps[k];
                    let (mp, mm) = (model(&pp)?, model(&pm)?);
                    for (i, row) in jac.iter_mut().enumerate() {
                        row[k] = (mp[i] - mm[i]) / (2.0 * steps[k]);
                    }
                }
                jac
            }
        };
        a = [[0.0; N]; N];
        let mut b = [0.0; N];
        for (i, &(d, w)) in obs.iter().enumerate() {
            let r = d - m[i];
            let j = &jac[i];
            for u in 0..N {
                b[u] += w * j[u] * r;
                for v in u..N {
                    a[u][v] += w * j[u] * j[v];
                }
            }
        }
        for u in 0..N {
            for v in 0..u {
                a[u][v] = a[v][u];
            }
        }
        let mut improved = false;
        for _ in 0..6 {
            let mut damped = a;
            for (u, row) in damped.iter_mut().enumerate() {
                row[u] += lambda * a[u][u].max(1e-12);
            }
            let Some(step) = solve(damped, b) else {
                lambda *= 10.0;
                continue;
            };
            let mut trial = p;
            for u in 0..N {
                trial[u] += step[u];
            }
            if let Some(mt) = model(&trial) {
                let c = chi2_of(&mt);
                if c < chi2 {
                    let rel = (chi2 - c) / chi2.max(1e-300);
                    p = trial;
                    m = mt;
                    chi2 = c;
                    lambda = (lambda / 5.0).max(1e-9);
                    improved = rel > 1e-7;
                    break;
                }
            }
            lambda *= 8.0;
        }
        if !improved {
            break;
        }
    }
    Some((p, chi2, a))
}

/// Inputs shared by every source.
struct Ctx<'a> {
    diff: &'a MaskedImage,
    science: &'a MaskedImage,
    template: &'a MaskedImage,
    diff_psf: &'a CachedPsf<'a>,
    sci_psf: &'a CachedPsf<'a>,
    tmpl_psf: &'a CachedPsf<'a>,
    wcs: &'a TanSipWcs,
    cfg: &'a MeasureConfig,
}

/// Measures every deblended peak and dipole candidate of `detections`; see the module
/// doc. The same `psf` is used for the forced fluxes on the science and template
/// images; use [`measure_with_psfs`] when their PSFs differ.
pub fn measure(
    diff: &MaskedImage,
    science: &MaskedImage,
    template: &MaskedImage,
    psf: &dyn Psf,
    wcs: &TanSipWcs,
    detections: &Detections,
    cfg: &MeasureConfig,
) -> Vec<DiaSourceMeasurement> {
    measure_with_psfs(diff, science, template, psf, psf, psf, wcs, detections, cfg)
}

/// As [`measure`] with the science image's and the template's own PSFs for the forced
/// fluxes.
#[allow(clippy::too_many_arguments)]
pub fn measure_with_psfs(
    diff: &MaskedImage,
    science: &MaskedImage,
    template: &MaskedImage,
    diff_psf: &dyn Psf,
    sci_psf: &dyn Psf,
    tmpl_psf: &dyn Psf,
    wcs: &TanSipWcs,
    detections: &Detections,
    cfg: &MeasureConfig,
) -> Vec<DiaSourceMeasurement> {
    // The difference PSF is usually expensive to evaluate (a convolution per call):
    // serve the many stamps of the fits from grid caches of the PSFs.
    let (w, h) = diff.dims();
    let sp = cfg.psf_cache_spacing;
    let d = CachedPsf::for_image(diff_psf, w, h, sp);
    let s = CachedPsf::for_image(sci_psf, w, h, sp);
    let t = CachedPsf::for_image(tmpl_psf, w, h, sp);
    measure_with_cached_psfs(diff, science, template, &d, &s, &t, wcs, detections, cfg)
}

/// As [`measure_with_psfs`] with PSFs already wrapped in [`CachedPsf`]s (for callers
/// that share the caches with the cutouts).
#[allow(clippy::too_many_arguments)]
pub fn measure_with_cached_psfs(
    diff: &MaskedImage,
    science: &MaskedImage,
    template: &MaskedImage,
    diff_psf: &CachedPsf<'_>,
    sci_psf: &CachedPsf<'_>,
    tmpl_psf: &CachedPsf<'_>,
    wcs: &TanSipWcs,
    detections: &Detections,
    cfg: &MeasureConfig,
) -> Vec<DiaSourceMeasurement> {
    let ctx = Ctx {
        diff,
        science,
        template,
        diff_psf,
        sci_psf,
        tmpl_psf,
        wcs,
        cfg,
    };
    let one = |(i, fp): (usize, &Footprint)| -> Vec<DiaSourceMeasurement> {
        if fp.is_dipole_candidate {
            vec![measure_dipole(&ctx, i, fp)]
        } else {
            fp.peaks
                .iter()
                .map(|pk| measure_peak(&ctx, i, fp, pk))
                .collect()
        }
    };
    if cfg.parallel {
        use rayon::prelude::*;
        detections
            .footprints
            .par_iter()
            .enumerate()
            .flat_map_iter(one)
            .collect()
    } else {
        detections
            .footprints
            .iter()
            .enumerate()
            .flat_map(one)
            .collect()
    }
}

fn mask_or(img: &MaskedImage, fp: &Footprint) -> (u32, bool) {
    let (w, h) = (img.width() as i32, img.height() as i32);
    let mut bits = 0;
    let mut off = false;
    for s in &fp.spans {
        if s.y < 0 || s.y >= h || s.x0 < 0 || s.x1 >= w {
            off = true;
        }
        if s.y < 0 || s.y >= h {
            continue;
        }
        let row = img.mask.row(s.y as usize);
        for x in s.x0.max(0)..=s.x1.min(w - 1) {
            bits |= row[x as usize];
        }
    }
    (bits, off)
}

fn centre_bits(img: &MaskedImage, x: f64, y: f64) -> (u32, bool) {
    let (ix, iy) = (x.round() as isize, y.round() as isize);
    let mut bits = 0;
    let mut off = false;
    for dy in -1..=1 {
        for dx in -1..=1 {
            match img.mask.get_checked(ix + dx, iy + dy) {
                Some(m) => bits |= m,
                None => off = true,
            }
        }
    }
    (bits, off)
}

/// A measurement with every optional field unset.
fn blank(fp_index: usize, fp: &Footprint) -> DiaSourceMeasurement {
    let nan = f64::NAN;
    DiaSourceMeasurement {
        x: nan,
        y: nan,
        x_err: nan,
        y_err: nan,
        xy_cov: nan,
        centroid_flag: false,
        ra: nan,
        dec: nan,
        ra_err: nan,
        dec_err: nan,
        ra_dec_cov: nan,
        psf_flux: nan,
        psf_flux_err: nan,
        psf_chi2: nan,
        psf_ndata: 0,
        psf_flux_flag: false,
        psf_flux_flag_edge: false,
        ap_flux: nan,
        ap_flux_err: nan,
        ap_flux_flag: false,
        ap_flux_flag_truncated: false,
        snr: nan,
        significance: nan,
        is_negative: fp.is_negative,
        is_dipole_candidate: fp.is_dipole_candidate,
        is_dipole: false,
        dipole_mean_flux: nan,
        dipole_mean_flux_err: nan,
        dipole_flux_diff: nan,
        dipole_flux_diff_err: nan,
        dipole_length: nan,
        dipole_length_arcsec: nan,
        dipole_angle: nan,
        dipole_bearing: nan,
        dipole_chi2: nan,
        dipole_ndata: 0,
        dipole_single_chi2: nan,
        trail_length: nan,
        trail_length_arcsec: nan,
        trail_angle: nan,
        trail_bearing: nan,
        trail_flux: nan,
        trail_flux_err: nan,
        trail_x: nan,
        trail_y: nan,
        trail_chi2: nan,
        trail_ndata: 0,
        ixx: nan,
        iyy: nan,
        ixy: nan,
        ixx_psf: nan,
        iyy_psf: nan,
        ixy_psf: nan,
        shape_flag: false,
        science_flux: nan,
        science_flux_err: nan,
        template_flux: nan,
        template_flux_err: nan,
        footprint_flags: PixelFlags::default(),
        centre_flags: PixelFlags::default(),
        footprint_npix: fp.npix(),
        bbox: fp.bbox,
        footprint_index: fp_index,
        n_siblings: if fp.is_dipole_candidate {
            1
        } else {
            fp.peaks.len()
        },
    }
}

/// Bearing east of north (degrees, [0, 360)) of the pixel direction `(dx, dy)`.
fn bearing(wcs: &TanSipWcs, x: f64, y: f64, dx: f64, dy: f64) -> (f64, f64) {
    let j = wcs.local_jacobian_arcsec(x, y);
    let dxi = j[0][0] * dx + j[0][1] * dy;
    let deta = j[1][0] * dx + j[1][1] * dy;
    (
        dxi.atan2(deta).to_degrees().rem_euclid(360.0),
        dxi.hypot(deta),
    )
}

/// Centroid, fluxes, moments, sky position and flags common to every source kind.
/// Returns the adaptive moments' centre.
fn measure_common(
    ctx: &Ctx<'_>,
    m: &mut DiaSourceMeasurement,
    fp: &Footprint,
    pk: &Peak,
) -> (f64, f64) {
    let cfg = ctx.cfg;
    let (px, py) = (pk.x as f64, pk.y as f64);
    let local = ctx.diff_psf.local(px, py);
    let diff_psf: &dyn Psf = &local;
    let sigma = diff_psf.sigma_at(px, py).clamp(0.3, 30.0);
    let half = cfg.fit_half(sigma);
    let pix = gather(ctx.diff, square(px, py, half));
    let fit = fit_psf(&pix.px, diff_psf, px, py, half + 3, cfg);
    m.x = fit.x;
    m.y = fit.y;
    m.x_err = fit.x_err;
    m.y_err = fit.y_err;
    m.xy_cov = fit.xy_cov;
    m.centroid_flag = !fit.centroid_ok;
    m.psf_flux = fit.flux;
    m.psf_flux_err = fit.flux_err;
    m.psf_chi2 = fit.chi2;
    m.psf_ndata = fit.ndata;
    m.psf_flux_flag = !fit.ok;
    m.psf_flux_flag_edge = pix.edge;
    m.snr = (fit.flux / fit.flux_err).abs();
    m.significance = pk.significance as f64;

    let (af, ae, skipped, trunc) = aperture(ctx.diff, m.x, m.y, cfg.ap_radius);
    m.ap_flux = af;
    m.ap_flux_err = ae;
    m.ap_flux_flag = skipped;
    m.ap_flux_flag_truncated = trunc;

    // Adaptive moments of the source (sign-corrected) and of the PSF.
    let s2 = sigma * sigma;
    let sign = if fit.flux < 0.0 || (fit.flux.is_nan() && fp.is_negative) {
        -1.0
    } else {
        1.0
    };
    let diff = ctx.diff;
    let data = |x: i32, y: i32| -> Option<f64> {
        if x < 0 || y < 0 || x as usize >= diff.width() || y as usize >= diff.height() {
            return None;
        }
        let (v, mk) = (
            diff.image.get(x as usize, y as usize),
            diff.mask.get(x as usize, y as usize),
        );
        (mk & (mask::NO_DATA | mask::EDGE) == 0 && v.is_finite()).then_some(sign * v as f64)
    };
    // Start from the larger of the PSF size and the footprint's extent.
    let ext = (fp.bbox.width().max(fp.bbox.height()) as f64 / 4.0).powi(2);
    let start = if fp.peaks.len() == 1 { s2.max(ext) } else { s2 };
    let max_half = (cfg.max_fit_box / 2) as i32;
    let mut moments_centre = (m.x, m.y);
    match adaptive_moments(
        &data,
        m.x,
        m.y,
        [start, start, 0.0],
        max_half,
        cfg.moments_iterations,
    ) {
        Some(([a, b, c], centre)) => {
            m.ixx = a;
            m.iyy = b;
            m.ixy = c;
            moments_centre = centre;
        }
        None => m.shape_flag = true,
    }
    let khalf = ((5.0 * sigma).ceil() as i32).max(3);
    let k = Stamp::render(diff_psf, m.x, m.y, khalf);
    let kd = |x: i32, y: i32| -> Option<f64> { Some(k.at(x, y)) };
    if let Some(([a, b, c], _)) =
        adaptive_moments(&kd, m.x, m.y, [s2, s2, 0.0], khalf, cfg.moments_iterations)
    {
        m.ixx_psf = a;
        m.iyy_psf = b;
        m.ixy_psf = c;
    }

    let (sf, se) = forced_flux(ctx.science, ctx.sci_psf, m.x, m.y, half);
    m.science_flux = sf;
    m.science_flux_err = se;
    let (tf, te) = forced_flux(ctx.template, ctx.tmpl_psf, m.x, m.y, half);
    m.template_flux = tf;
    m.template_flux_err = te;

    let (fb, foff) = mask_or(ctx.diff, fp);
    m.footprint_flags = PixelFlags::from_bits(fb, foff);
    let (cb, coff) = centre_bits(ctx.diff, m.x, m.y);
    m.centre_flags = PixelFlags::from_bits(cb, coff);
    moments_centre
}

fn sky(ctx: &Ctx<'_>, m: &mut DiaSourceMeasurement) {
    let (ra, dec) = ctx.wcs.pixel_to_sky(m.x, m.y);
    m.ra = ra;
    m.dec = dec;
    let j = ctx.wcs.local_jacobian_arcsec(m.x, m.y);
    let cxy = if m.xy_cov.is_finite() { m.xy_cov } else { 0.0 };
    let c = [[m.x_err * m.x_err, cxy], [cxy, m.y_err * m.y_err]];
    // Σ_sky = J C Jᵀ (arcsec²).
    let mut s = [[0.0; 2]; 2];
    for (a, sa) in s.iter_mut().enumerate() {
        for (b, sab) in sa.iter_mut().enumerate() {
            for k in 0..2 {
                for l in 0..2 {
                    *sab += j[a][k] * c[k][l] * j[b][l];
                }
            }
        }
    }
    m.ra_err = s[0][0].sqrt() / 3600.0;
    m.dec_err = s[1][1].sqrt() / 3600.0;
    m.ra_dec_cov = s[0][1] / (3600.0 * 3600.0);
}

/// One peak of an ordinary (single-sign) footprint.
fn measure_peak(ctx: &Ctx<'_>, fp_index: usize, fp: &Footprint, pk: &Peak) -> DiaSourceMeasurement {
    let mut m = blank(fp_index, fp);
    let centre = measure_common(ctx, &mut m, fp, pk);
    // Trail fit for elongated sources.
    if !m.shape_flag && m.snr >= ctx.cfg.trail_min_snr && m.ixx_psf.is_finite() {
        let lmax = 0.5 * (m.ixx + m.iyy) + (0.25 * (m.ixx - m.iyy).powi(2) + m.ixy.powi(2)).sqrt();
        let lpsf = 0.5 * (m.ixx_psf + m.iyy_psf);
        if lmax > ctx.cfg.trail_moment_ratio * lpsf {
            fit_trail(ctx, &mut m, fp, centre, lmax, lpsf);
        }
    }
    sky(ctx, &mut m);
    m
}

/// The trailed-Gaussian model (Vereš et al. 2012) at pixel offsets.
fn trail_model(pix: &[(i32, i32, f64, f64)], p: &[f64; 5], sigma: f64) -> Vec<f64> {
    let [xc, yc, f, l, th] = *p;
    let l = l.abs().max(1e-3);
    let (s, c) = th.sin_cos();
    let k = std::f64::consts::FRAC_1_SQRT_2 / sigma;
    let norm = f / (2.0 * l) / (sigma * (2.0 * std::f64::consts::PI).sqrt());
    pix.iter()
        .map(|&(x, y, _, _)| {
            let (dx, dy) = (x as f64 - xc, y as f64 - yc);
            let u = dx * c + dy * s;
            let v = -dx * s + dy * c;
            let along = crate::psf::erf((u + 0.5 * l) * k) - crate::psf::erf((u - 0.5 * l) * k);
            norm * along * (-0.5 * v * v / (sigma * sigma)).exp()
        })
        .collect()
}

/// Analytic derivatives of [`trail_model`] with respect to `(x_c, y_c, F, L, θ)`.
fn trail_jacobian(pix: &[(i32, i32, f64, f64)], p: &[f64; 5], sigma: f64) -> Vec<[f64; 5]> {
    let [xc, yc, f, l, th] = *p;
    let l = l.abs().max(1e-3);
    let (s, c) = th.sin_cos();
    let k = std::f64::consts::FRAC_1_SQRT_2 / sigma;
    let n0 = 1.0 / (2.0 * l) / (sigma * (2.0 * std::f64::consts::PI).sqrt());
    let dk = 2.0 / std::f64::consts::PI.sqrt() * k;
    pix.iter()
        .map(|&(x, y, _, _)| {
            let (dx, dy) = (x as f64 - xc, y as f64 - yc);
            let u = dx * c + dy * s;
            let v = -dx * s + dy * c;
            let (a, b) = ((u + 0.5 * l) * k, (u - 0.5 * l) * k);
            let along = crate::psf::erf(a) - crate::psf::erf(b);
            let (ea, eb) = ((-a * a).exp(), (-b * b).exp());
            let g = (-0.5 * v * v / (sigma * sigma)).exp();
            let da_du = dk * (ea - eb);
            let da_dl = dk * 0.5 * (ea + eb);
            let dg_dv = -v / (sigma * sigma) * g;
            let nf = n0 * f;
            let m = nf * along * g;
            [
                nf * (-c * da_du * g + s * along * dg_dv),
                nf * (-s * da_du * g - c * along * dg_dv),
                n0 * along * g,
                nf * g * da_dl - m / l,
                nf * (v * da_du * g - u * along * dg_dv),
            ]
        })
        .collect()
}

fn fit_trail(
    ctx: &Ctx<'_>,
    m: &mut DiaSourceMeasurement,
    fp: &Footprint,
    centre: (f64, f64),
    lmax: f64,
    lpsf: f64,
) {
    let cfg = ctx.cfg;
    let sigma = (lpsf.max(0.09)).sqrt();
    let l0 = (12.0 * (lmax - lpsf)).max(1.0).sqrt();
    let th0 = 0.5 * (2.0 * m.ixy).atan2(m.ixx - m.iyy);
    let margin = (3.0 * sigma).ceil() as i32;
    let half_cap = (cfg.max_fit_box / 2) as i32;
    let (cx, cy) = (centre.0.round() as i32, centre.1.round() as i32);
    let b = BBox {
        x0: (fp.bbox.x0 - margin).max(cx - half_cap),
        y0: (fp.bbox.y0 - margin).max(cy - half_cap),
        x1: (fp.bbox.x1 + margin).min(cx + half_cap),
        y1: (fp.bbox.y1 + margin).min(cy + half_cap),
    };
    let pix = gather(ctx.diff, b);
    if pix.px.len() < 8 {
        return;
    }
    // Initial flux by linear least squares at the initial shape.
    let unit = trail_model(&pix.px, &[centre.0, centre.1, 1.0, l0, th0], sigma);
    let (mut sp, mut sd) = (0.0, 0.0);
    for (i, &(_, _, d, w)) in pix.px.iter().enumerate() {
        sp += w * unit[i] * unit[i];
        sd += w * unit[i] * d;
    }
    if sp.is_nan() || sp <= 0.0 {
        return;
    }
    let f0 = sd / sp;
    let p0 = [centre.0, centre.1, f0, l0, th0];
    let steps = [0.02, 0.02, f0.abs().max(1e-6) * 1e-3, 0.02, 0.002];
    let model = |p: &[f64; 5]| Some(trail_model(&pix.px, p, sigma));
    let obs: Vec<(f64, f64)> = pix.px.iter().map(|&(_, _, d, w)| (d, w)).collect();
    let jac = |p: &[f64; 5]| trail_jacobian(&pix.px, p, sigma);
    let Some((p, chi2, a)) =
        levenberg_marquardt(&obs, p0, steps, cfg.lm_iterations, &model, Some(&jac))
    else {
        return;
    };
    let [xc, yc, f, l, th] = p;
    let l = l.abs();
    let mut ang = th.to_degrees();
    ang = (ang + 90.0).rem_euclid(180.0) - 90.0;
    if ang <= -90.0 {
        ang += 180.0;
    }
    m.trail_x = xc;
    m.trail_y = yc;
    m.trail_flux = f;
    m.trail_flux_err = if a[2][2] > 0.0 {
        a[2][2].powf(-0.5)
    } else {
        f64::NAN
    };
    m.trail_length = l;
    m.trail_angle = ang;
    let (dir, scale) = bearing(ctx.wcs, xc, yc, th.cos(), th.sin());
    m.trail_bearing = dir.rem_euclid(180.0);
    m.trail_length_arcsec = l * scale;
    m.trail_chi2 = chi2;
    m.trail_ndata = pix.px.len();
    // A resolved trail's position is its centre, not where a PSF fit lands on it.
    let fwhm = sigma * FWHM_PER_SIGMA;
    if l > fwhm && (xc - centre.0).hypot(yc - centre.1) < l {
        m.x = xc;
        m.y = yc;
        if let Some(c) = invert(a) {
            m.x_err = c[0][0].max(0.0).sqrt();
            m.y_err = c[1][1].max(0.0).sqrt();
            m.xy_cov = c[0][1];
        }
    }
}

/// One dipole candidate.
fn measure_dipole(ctx: &Ctx<'_>, fp_index: usize, fp: &Footprint) -> DiaSourceMeasurement {
    let cfg = ctx.cfg;
    let mut m = blank(fp_index, fp);
    let pos = fp.peaks.iter().find(|p| p.significance > 0.0).copied();
    let neg = fp.peaks.iter().find(|p| p.significance < 0.0).copied();
    let (Some(pos), Some(neg)) = (pos, neg) else {
        let pk = fp.peaks[0];
        let _ = measure_common(ctx, &mut m, fp, &pk);
        sky(ctx, &mut m);
        return m;
    };
    // Common measurements at the brighter lobe, then the dipole fit.
    let brighter = if pos.significance.abs() >= neg.significance.abs() {
        pos
    } else {
        neg
    };
    let _ = measure_common(ctx, &mut m, fp, &brighter);
    let sigma = ctx
        .diff_psf
        .sigma_at(pos.x as f64, pos.y as f64)
        .clamp(0.3, 30.0);
    let margin = (2.0 * sigma).ceil() as i32;
    let half_cap = (cfg.max_fit_box / 2) as i32;
    let mx = (pos.x + neg.x) / 2;
    let my = (pos.y + neg.y) / 2;
    let b = BBox {
        x0: (fp.bbox.x0 - margin).max(mx - half_cap),
        y0: (fp.bbox.y0 - margin).max(my - half_cap),
        x1: (fp.bbox.x1 + margin).min(mx + half_cap),
        y1: (fp.bbox.y1 + margin).min(my + half_cap),
    };
    let pix = gather(ctx.diff, b);
    let khalf = ((5.0 * sigma).ceil() as i32).max(3);
    let local = ctx.diff_psf.local(mx as f64, my as f64);
    let psf: &dyn Psf = &local;
    // Model on the pixels, then (optionally) the two lobe fluxes for the priors.
    let model = |p: &[f64; 6], priors: bool| -> Vec<f64> {
        let sp = Stamp::render(psf, p[0], p[1], khalf);
        let sn = Stamp::render(psf, p[3], p[4], khalf);
        let mut v: Vec<f64> = pix
            .px
            .iter()
            .map(|&(x, y, _, _)| p[2] * sp.at(x, y) - p[5] * sn.at(x, y))
            .collect();
        if priors {
            v.push(p[2]);
            v.push(p[5]);
        }
        v
    };
    // Initial fluxes: two-parameter linear fit at the peaks.
    let (sp0, sn0) = (
        Stamp::render(psf, pos.x as f64, pos.y as f64, khalf),
        Stamp::render(psf, neg.x as f64, neg.y as f64, khalf),
    );
    let mut a2 = [[0.0; 2]; 2];
    let mut b2 = [0.0; 2];
    for &(x, y, d, w) in &pix.px {
        let j = [sp0.at(x, y), -sn0.at(x, y)];
        for u in 0..2 {
            b2[u] += w * j[u] * d;
            for v in 0..2 {
                a2[u][v] += w * j[u] * j[v];
            }
        }
    }
    let f0 = solve(a2, b2).unwrap_or([pos.value as f64, -(neg.value as f64)]);
    let p0 = [
        pos.x as f64,
        pos.y as f64,
        f0[0].abs(),
        neg.x as f64,
        neg.y as f64,
        f0[1].abs(),
    ];
    let fs = f0[0].abs().max(f0[1].abs()).max(1e-6) * 1e-3;
    let steps = [0.02, 0.02, fs, 0.02, 0.02, fs];
    let mut obs: Vec<(f64, f64)> = pix.px.iter().map(|&(_, _, d, w)| (d, w)).collect();
    let npix = obs.len();
    let free = |p: &[f64; 6]| Some(model(p, false));
    let mut fit = if npix >= 8 {
        levenberg_marquardt(&obs, p0, steps, cfg.lm_iterations, &free, None)
    } else {
        None
    };
    // Flux priors from the pre-subtraction images (as the LSST dipole fit uses them):
    // the positive lobe is the science star, the negative lobe the template star. A
    // dipole of small separation only constrains F·d on the difference image; the
    // forced fluxes at the fitted lobe positions break that degeneracy.
    if let Some((p, _, _)) = fit {
        let half = cfg.fit_half(sigma);
        let (s, se) = forced_flux(ctx.science, ctx.sci_psf, p[0], p[1], half);
        let (t, te) = forced_flux(ctx.template, ctx.tmpl_psf, p[3], p[4], half);
        if s / se >= 5.0 && t / te >= 5.0 {
            let rel = cfg.dipole_prior_rel_err;
            obs.push((s, 1.0 / (se * se + (rel * s).powi(2))));
            obs.push((t, 1.0 / (te * te + (rel * t).powi(2))));
            let with = |p: &[f64; 6]| Some(model(p, true));
            if let Some(r) = levenberg_marquardt(&obs, p, steps, cfg.lm_iterations, &with, None) {
                // χ² of the pixels only.
                let mv = model(&r.0, false);
                let chi2: f64 = obs[..npix]
                    .iter()
                    .zip(&mv)
                    .map(|(&(d, w), &m)| w * (d - m) * (d - m))
                    .sum();
                fit = Some((r.0, chi2, r.2));
            }
        }
    }
    if let Some((p, chi2, a)) = fit {
        let (fp_, fn_) = (p[2], p[5]);
        let (dx, dy) = (p[0] - p[3], p[1] - p[4]);
        let len = dx.hypot(dy);
        // Flux errors at fixed positions (conditional), and of the mean / difference.
        let e = invert([[a[2][2], a[2][5]], [a[5][2], a[5][5]]]);
        m.dipole_mean_flux = 0.5 * (fp_ + fn_);
        m.dipole_flux_diff = fp_ - fn_;
        if let Some(c) = e {
            m.dipole_mean_flux_err = 0.5 * (c[0][0] + c[1][1] + 2.0 * c[0][1]).max(0.0).sqrt();
            m.dipole_flux_diff_err = (c[0][0] + c[1][1] - 2.0 * c[0][1]).max(0.0).sqrt();
        }
        let lobe_snr_p = fp_ * a[2][2].max(0.0).sqrt();
        let lobe_snr_n = fn_ * a[5][5].max(0.0).sqrt();
        m.dipole_length = len;
        m.dipole_angle = dy.atan2(dx).to_degrees();
        let (cx, cy) = (0.5 * (p[0] + p[3]), 0.5 * (p[1] + p[4]));
        let (dir, scale) = bearing(ctx.wcs, cx, cy, dx, dy);
        m.dipole_bearing = dir;
        m.dipole_length_arcsec = scale;
        m.dipole_chi2 = chi2;
        m.dipole_ndata = npix;
        // Best single PSF of either sign on the same pixels.
        let single = fit_psf(
            &pix.px,
            psf,
            brighter.x as f64,
            brighter.y as f64,
            khalf,
            cfg,
        );
        m.dipole_single_chi2 = single.chi2;
        m.is_dipole = fp_ > 0.0
            && fn_ > 0.0
            && single.chi2 - chi2 >= cfg.dipole_min_delta_chi2
            && lobe_snr_p >= cfg.dipole_min_lobe_snr
            && lobe_snr_n >= cfg.dipole_min_lobe_snr;
        if m.is_dipole && len < 0.5 * half_cap as f64 {
            // The dipole's position is the lobes' midpoint.
            m.x = cx;
            m.y = cy;
        }
    }
    sky(ctx, &mut m);
    m
}

/// FWHM in pixels of the PSF at a measurement (for callers sizing things).
pub fn psf_fwhm_at(psf: &dyn Psf, m: &DiaSourceMeasurement) -> f64 {
    psf.sigma_at(m.x, m.y) * FWHM_PER_SIGMA
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{DetectConfig, detect};
    use crate::synth::{DoubleGaussianPsf, Rng, add_psf, add_trail, flux_for_snr, noise_image};

    fn psf(w: usize, h: usize) -> DoubleGaussianPsf {
        DoubleGaussianPsf::demo(w, h)
    }

    fn wcs() -> TanSipWcs {
        TanSipWcs::tan([150.0, 2.0], [512.0, 512.0], 0.2, 30.0)
    }

    /// `science − template` with the summed variance.
    fn difference(sci: &MaskedImage, tmpl: &MaskedImage) -> MaskedImage {
        let mut diff = sci.clone();
        for (d, t) in diff.image.data_mut().iter_mut().zip(tmpl.image.data()) {
            *d -= t;
        }
        for (d, t) in diff
            .variance
            .data_mut()
            .iter_mut()
            .zip(tmpl.variance.data())
        {
            *d += t;
        }
        diff
    }

    fn std(v: &[f64]) -> f64 {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// Nearest measurement to `(x, y)`.
    fn nearest(ms: &[DiaSourceMeasurement], x: f64, y: f64) -> Option<&DiaSourceMeasurement> {
        ms.iter()
            .filter(|m| (m.x - x).hypot(m.y - y) < 3.0)
            .min_by(|a, b| {
                (a.x - x)
                    .hypot(a.y - y)
                    .total_cmp(&(b.x - x).hypot(b.y - y))
            })
    }

    #[test]
    fn psf_fluxes_and_centroids_have_right_values_and_errors() {
        let (w, h) = (1024, 1024);
        let sn = 5.0;
        let mut diff = noise_image(w, h, sn as f32, 31);
        let p = psf(w, h);
        let mut rng = Rng::new(9);
        let mut truth = Vec::new();
        let step = 40;
        for gy in 1..(h / step) - 1 {
            for gx in 1..(w / step) - 1 {
                let x = (gx * step) as f64 + rng.uniform() * 6.0 - 3.0;
                let y = (gy * step) as f64 + rng.uniform() * 6.0 - 3.0;
                let snr = 15.0 + rng.uniform() * 85.0;
                let f = flux_for_snr(&p, x, y, snr, sn);
                add_psf(&mut diff.image, &p, x, y, f, 12);
                truth.push((x, y, f));
            }
        }
        let zero = MaskedImage::new(w, h);
        let det = detect(&diff, &p, &DetectConfig::default());
        let ms = measure(
            &diff,
            &zero,
            &zero,
            &p,
            &wcs(),
            &det,
            &MeasureConfig::default(),
        );
        let (mut ratio, mut pf, mut px, mut py, mut pap) = (vec![], vec![], vec![], vec![], vec![]);
        for &(x, y, f) in &truth {
            let m = nearest(&ms, x, y).expect("source measured");
            assert!(!m.centroid_flag && !m.psf_flux_flag);
            ratio.push(m.psf_flux / f);
            pf.push((m.psf_flux - f) / m.psf_flux_err);
            px.push((m.x - x) / m.x_err);
            py.push((m.y - y) / m.y_err);
            pap.push((m.ap_flux - f) / m.ap_flux_err);
            assert!(m.psf_ndata > 40);
            // Sky position and its error.
            let (ra, dec) = wcs().pixel_to_sky(m.x, m.y);
            assert!((ra - m.ra).abs() < 1e-12 && (dec - m.dec).abs() < 1e-12);
            let e = m.ra_err.hypot(m.dec_err) * 3600.0 / 0.2;
            assert!((e - m.x_err.hypot(m.y_err)).abs() < 1e-3 * e.max(1e-9) + 1e-6);
        }
        let (mr, sf, sx, sy, sa) = (median(ratio), std(&pf), std(&px), std(&py), std(&pap));
        let chi2dof = median(
            ms.iter()
                .map(|m| m.psf_chi2 / (m.psf_ndata as f64 - 3.0))
                .collect(),
        );
        eprintln!(
            "n {} flux ratio median {mr:.4}, pull σ flux {sf:.3} x {sx:.3} y {sy:.3} ap {sa:.3}, χ²/dof {chi2dof:.3}",
            truth.len()
        );
        assert!(truth.len() >= 200);
        assert!((mr - 1.0).abs() < 0.02, "{mr}");
        for s in [sf, sx, sy, sa] {
            assert!((0.9..1.2).contains(&s), "pull σ {s}");
        }
        assert!((chi2dof - 1.0).abs() < 0.15, "{chi2dof}");
        // Point sources are round and PSF-sized, and no trail is fitted on them.
        let sizes = median(
            ms.iter()
                .map(|m| (m.ixx + m.iyy) / (m.ixx_psf + m.iyy_psf))
                .collect(),
        );
        assert!((sizes - 1.0).abs() < 0.1, "{sizes}");
        let trails = ms.iter().filter(|m| m.trail_length.is_finite()).count();
        assert!(trails * 50 < ms.len(), "{trails}");
    }

    #[test]
    fn dipoles_are_measured_as_dipoles() {
        let (w, h) = (256, 256);
        let p = psf(w, h);
        for (k, &(shift, ang)) in [(1.0f64, 30.0f64), (0.6, -120.0), (1.5, 75.0), (0.3, 160.0)]
            .iter()
            .enumerate()
        {
            let mut sci = noise_image(w, h, 1.6, 40 + k as u64);
            let mut tmpl = noise_image(w, h, 1.2, 140 + k as u64);
            let f = flux_for_snr(&p, 128.0, 128.0, 600.0, 2.0);
            let (s, c) = ang.to_radians().sin_cos();
            // Science star at +shift/2, template star at −shift/2.
            add_psf(
                &mut sci.image,
                &p,
                128.0 + 0.5 * shift * c,
                128.0 + 0.5 * shift * s,
                f,
                15,
            );
            add_psf(
                &mut tmpl.image,
                &p,
                128.0 - 0.5 * shift * c,
                128.0 - 0.5 * shift * s,
                f,
                15,
            );
            let diff = difference(&sci, &tmpl);
            let det = detect(&diff, &p, &DetectConfig::default());
            let ms = measure(
                &diff,
                &sci,
                &tmpl,
                &p,
                &wcs(),
                &det,
                &MeasureConfig::default(),
            );
            assert_eq!(ms.len(), 1);
            let m = &ms[0];
            eprintln!(
                "dipole shift {shift} angle {ang}: length {:.3} angle {:.2} mean {:.0} ({f:.0}) diff {:.0} χ² {:.0} vs {:.0}",
                m.dipole_length,
                m.dipole_angle,
                m.dipole_mean_flux,
                m.dipole_flux_diff,
                m.dipole_chi2,
                m.dipole_single_chi2
            );
            assert!(m.is_dipole);
            assert!(
                (m.dipole_length - shift).abs() < 0.1 * shift,
                "{}",
                m.dipole_length
            );
            let da = (m.dipole_angle - ang + 540.0).rem_euclid(360.0) - 180.0;
            assert!(da.abs() < 3.0, "{}", m.dipole_angle);
            assert!((m.dipole_length_arcsec - 0.2 * m.dipole_length).abs() < 1e-3);
            assert!((m.x - 128.0).abs() < 0.2 && (m.y - 128.0).abs() < 0.2);
        }
    }

    #[test]
    fn a_single_star_is_not_a_dipole_and_a_trail_is_measured() {
        let (w, h) = (256, 256);
        let p = psf(w, h);
        let zero = MaskedImage::new(w, h);
        let mut diff = noise_image(w, h, 2.0, 50);
        let f = flux_for_snr(&p, 128.0, 128.0, 150.0, 2.0);
        add_trail(&mut diff.image, &p, 128.0, 128.0, f, 20.0, 30.0);
        let det = detect(&diff, &p, &DetectConfig::default());
        let ms = measure(
            &diff,
            &zero,
            &zero,
            &p,
            &wcs(),
            &det,
            &MeasureConfig::default(),
        );
        assert_eq!(ms.len(), 1, "{ms:?}");
        let m = &ms[0];
        eprintln!(
            "trail: length {:.2} angle {:.2} flux {:.0} ({f:.0}) centre ({:.2}, {:.2}) bearing {:.1}",
            m.trail_length, m.trail_angle, m.trail_flux, m.trail_x, m.trail_y, m.trail_bearing
        );
        assert!((m.trail_length - 20.0).abs() < 2.0, "{}", m.trail_length);
        assert!((m.trail_angle - 30.0).abs() < 3.0, "{}", m.trail_angle);
        assert!((m.trail_flux / f - 1.0).abs() < 0.1, "{}", m.trail_flux);
        assert!((m.trail_length_arcsec - 0.2 * m.trail_length).abs() < 1e-3);
        assert!(!m.is_dipole);
    }

    #[test]
    fn forced_fluxes_on_science_and_template() {
        let (w, h) = (256, 256);
        let p = psf(w, h);
        let mut sci = noise_image(w, h, 3.0, 60);
        let mut tmpl = noise_image(w, h, 1.5, 61);
        let (fs, ft) = (20_000.0, 12_000.0);
        add_psf(&mut sci.image, &p, 100.3, 120.6, fs, 15);
        add_psf(&mut tmpl.image, &p, 100.3, 120.6, ft, 15);
        // A new source only in the science image.
        add_psf(&mut sci.image, &p, 180.0, 60.0, 5_000.0, 15);
        let diff = difference(&sci, &tmpl);
        let det = detect(&diff, &p, &DetectConfig::default());
        let ms = measure(
            &diff,
            &sci,
            &tmpl,
            &p,
            &wcs(),
            &det,
            &MeasureConfig::default(),
        );
        let a = nearest(&ms, 100.3, 120.6).expect("variable");
        let b = nearest(&ms, 180.0, 60.0).expect("new source");
        eprintln!(
            "variable: sci {:.0}±{:.0} tmpl {:.0}±{:.0} diff {:.0}; new: sci {:.0} tmpl {:.0}±{:.0}",
            a.science_flux,
            a.science_flux_err,
            a.template_flux,
            a.template_flux_err,
            a.psf_flux,
            b.science_flux,
            b.template_flux,
            b.template_flux_err
        );
        assert!((a.science_flux - fs).abs() < 4.0 * a.science_flux_err);
        assert!((a.template_flux - ft).abs() < 4.0 * a.template_flux_err);
        assert!((a.psf_flux - (fs - ft)).abs() < 4.0 * a.psf_flux_err);
        assert!((b.science_flux - 5000.0).abs() < 4.0 * b.science_flux_err);
        assert!(b.template_flux.abs() < 4.0 * b.template_flux_err);
    }

    #[test]
    fn pixel_flags_follow_the_mask() {
        let (w, h) = (256, 256);
        let p = psf(w, h);
        let zero = MaskedImage::new(w, h);
        let mut diff = noise_image(w, h, 2.0, 70);
        let f = flux_for_snr(&p, 50.0, 50.0, 80.0, 2.0);
        for &(x, y) in &[(50.0, 50.0), (150.0, 50.0), (5.0, 200.0), (200.0, 200.0)] {
            add_psf(&mut diff.image, &p, x, y, f, 15);
        }
        diff.mask.set(50, 50, mask::SAT);
        diff.mask.set(151, 50, mask::CR);
        for y in 0..h {
            for x in 0..4 {
                diff.mask.set(x, y, mask::EDGE);
            }
        }
        let det = detect(&diff, &p, &DetectConfig::default());
        let ms = measure(
            &diff,
            &zero,
            &zero,
            &p,
            &wcs(),
            &det,
            &MeasureConfig::default(),
        );
        let sat = nearest(&ms, 50.0, 50.0).unwrap();
        assert!(sat.centre_flags.saturated && sat.footprint_flags.saturated);
        assert!(sat.psf_flux.is_finite(), "fit without the saturated pixel");
        let cr = nearest(&ms, 150.0, 50.0).unwrap();
        assert!(cr.centre_flags.cosmic_ray && !cr.centre_flags.saturated);
        let edge = nearest(&ms, 5.0, 200.0).unwrap();
        assert!(edge.footprint_flags.edge && edge.psf_flux_flag_edge);
        let clean = nearest(&ms, 200.0, 200.0).unwrap();
        assert_eq!(clean.centre_flags, PixelFlags::default());
        assert_eq!(clean.footprint_flags.bits & mask::UNUSABLE, 0);
        assert!(!clean.psf_flux_flag_edge && !clean.ap_flux_flag_truncated);
    }

    #[test]
    fn negative_sources_are_measured_negative_and_empty_input_is_fine() {
        let (w, h) = (128, 128);
        let p = psf(w, h);
        let zero = MaskedImage::new(w, h);
        let mut diff = noise_image(w, h, 1.0, 80);
        let f = flux_for_snr(&p, 64.0, 64.0, 50.0, 1.0);
        add_psf(&mut diff.image, &p, 64.2, 63.7, -f, 15);
        let det = detect(&diff, &p, &DetectConfig::default());
        let ms = measure(
            &diff,
            &zero,
            &zero,
            &p,
            &wcs(),
            &det,
            &MeasureConfig::default(),
        );
        let m = nearest(&ms, 64.2, 63.7).unwrap();
        assert!(m.is_negative && m.psf_flux < 0.0);
        assert!((m.psf_flux + f).abs() < 4.0 * m.psf_flux_err);
        assert!(((m.ixx + m.iyy) / (m.ixx_psf + m.iyy_psf) - 1.0).abs() < 0.3);
        let none = Detections {
            footprints: vec![],
            positive: 0,
            negative: 0,
            dipoles: 0,
            filtered_sigma: 1.0,
            threshold: 5.0,
            filter_sigma: 1.7,
            bin: 1,
        };
        assert!(
            measure(
                &diff,
                &zero,
                &zero,
                &p,
                &wcs(),
                &none,
                &MeasureConfig::default()
            )
            .is_empty()
        );
    }
}
