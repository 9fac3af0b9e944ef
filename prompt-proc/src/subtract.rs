//! PSF-matched image subtraction (Alard & Lupton 1998, ApJ 503, 325; Alard 2000,
//! A&AS 144, 363) with decorrelation (Reiss & Lupton 2016, DMTN-021; see
//! [`crate::decorrelate`]).
//!
//! Inputs are the calibrated science image and the warped template on the same pixel
//! grid, both in nJy per pixel and background-subtracted, with their PSFs.
//!
//! **Direction.** The image with the narrower PSF at the detector centre is convolved
//! (call it `A`; the other is `B`). The model is `B ≈ K(x, y) ⊗ A + b(x, y)` with a
//! spatially varying kernel `K` and a differential background `b`. The difference is
//! always *science − template* in the science image's photometric units:
//! - template convolved ([`ConvolvedImage::Template`]): `D = S − K ⊗ T − b`, whose PSF
//!   is the science PSF;
//! - science convolved ([`ConvolvedImage::Science`]): `D = (K ⊗ S + b − T) / s(x, y)`,
//!   `s` the local kernel sum, so a transient keeps its science flux; its PSF is the
//!   science PSF ⊗ K / s (≈ the template PSF).
//!
//! **Kernel basis.** Gaussians × polynomials: Gaussian `k` of width `σ_k` (by default
//! 0.5, 1 and 2 × the matching width `σ_m = sqrt(|σ_B² − σ_A²|)` at the centre) times
//! `(u/σ_k)^p (v/σ_k)^q` for `p + q ≤ d_k` (degrees 4, 3, 2: 15 + 10 + 6 = 31
//! functions). The first basis function is the narrowest Gaussian with sum 1; every other
//! one has that Gaussian's multiple subtracted so it sums to zero, so the first
//! coefficient alone is the kernel sum (photometric scaling), as in the LSST
//! implementation. Every basis function is separable, so stamps are convolved with
//! 1-D passes. The kernel is `(2h + 1)²` with `h ≈ 4 σ_m` (clamped to 5–25 px).
//!
//! **Fit.** Stamps of `(2 h_s + 1)²` pixels (`h_s = h + 2.5 σ_B`) around the candidate
//! stars; stamps with any unusable mask bit or non-finite pixel are skipped. Each stamp
//! gets its own least-squares fit (weights `1 / (var_A + var_B)`); stamps whose kernel sum
//! or reduced χ² are outliers (robust σ from the IQR, `clip_sigma`) are rejected. Then
//! the coefficients of every basis function become polynomials of order
//! `spatial_order` in the normalised coordinates (`x_n = 2x / (w − 1) − 1`), the
//! background a polynomial of order `background_order`, and one linear system over all
//! surviving stamps is built from the per-stamp normal equations (the spatial terms
//! are taken as constant across a stamp) and solved by Cholesky; stamps whose χ² under
//! the spatial model are outliers are rejected and the fit repeated (at most
//! `max_iterations` times; the outliers found in the last round are still removed
//! before one final solve). Fewer than
//! `min_stamps` survivors give [`ScienceError::TooFewKernelStars`].
//!
//! **Application.** `K(x, y) = Σ_m q_m(x, y) K_m` with `q_m` the spatial monomials, so the
//! image is convolved with each `K_m` and the results combined per pixel. All
//! convolutions go through one f32 FFT grid: `A` is transformed once, each `K_m` once
//! (only its few non-zero rows along x), and one inverse per `m`. With decorrelation the
//! filter φ̂ (from the centre kernel `K_0`) is folded into the products, and the
//! constant term shares its inverse with `B`:
//! `D' = F⁻¹[φ̂ (B̂ − K̂_0 Â)] − Σ_{m≥1} q_m F⁻¹[φ̂ K̂_m Â] − b` — φ commutes with the slow
//! `q_m` to first order because φ is symmetric. Order 1 with decorrelation costs
//! 2 forward + 3 kernel + 3 inverse transforms.
//!
//! **Variance and mask.** With decorrelation the difference noise is white with
//! per-pixel variance `var_B + s² var_A` (divided by `s²` when the science is
//! convolved); without it the variance is `var_B + K_c² ⊗ var_A`, with the centre kernel
//! squared approximated by the outer product of its row and column sums and applied as a
//! separable convolution. The mask is `B`'s mask OR `A`'s unusable planes dilated by
//! `h`; pixels within `2h` of the border (the FFT wrap-around and φ's reach) or of
//! `NO_DATA` get `EDGE`. Pixels with no data (non-finite or `NO_DATA` in either input)
//! are 0 with infinite variance and `NO_DATA`.
//!
//! **Background re-fit.** The differential background of the kernel fit is constrained
//! only on the stamps around bright stars, where it trades off against the kernel's
//! broad wings and anything else in the stamps (a satellite streak crossing a few of
//! them tilted it by 0.5 σ per pixel across a simulated detector, which moved every
//! PSF flux by ~3 σ and the matched filter's noise by ×1.9). With
//! [`SubtractConfig::refit_background`] a polynomial of the same order is fitted to
//! the medians of blocks of the finished difference (all usable pixels, so it is
//! determined by millions of sky pixels) with clipping of deviant blocks, and
//! subtracted; decorrelation leaves such a polynomial unchanged (φ sums to 1 and is
//! symmetric), so fitting after it is the same as before.

use crate::convolve::{
    RealFft2d, convolve_full, convolve_separable, crop_centre, dilate_bits, next_fast_len,
};
use crate::decorrelate::{decorrelation_kernel, phi_hat, second_moment};
use crate::error::ScienceError;
use crate::image::{Image, MaskedImage, mask, median_and_iqr_sigma};
use crate::psf::{FWHM_PER_SIGMA, Psf};
use crate::psf_model::fwhm_of_image;
use serde::Deserialize;

/// Which input gets convolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConvolveChoice {
    /// The one with the narrower PSF at the detector centre.
    #[default]
    Auto,
    /// Always the template.
    Template,
    /// Always the science image.
    Science,
}

/// Which image was convolved by the matching kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvolvedImage {
    /// The template (its PSF was narrower): `D = S − K ⊗ T − b`.
    Template,
    /// The science image: `D = (K ⊗ S + b − T) / s`.
    Science,
}

/// Tunables of [`subtract`].
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct SubtractConfig {
    /// Which image to convolve.
    pub convolve: ConvolveChoice,
    /// Kernel half-size in pixels; `None`: `4 σ_m` clamped to 5–25.
    pub kernel_half_size: Option<usize>,
    /// Widths of the basis Gaussians in units of the matching σ (each at least 0.4 px).
    pub gauss_sigma_factors: Vec<f64>,
    /// Polynomial degree multiplying each Gaussian (same length as the factors).
    pub gauss_degrees: Vec<usize>,
    /// Order of the spatial polynomial of the kernel coefficients (0, 1 or 2).
    pub spatial_order: usize,
    /// Order of the differential background polynomial (0, 1 or 2).
    pub background_order: usize,
    /// Stamp half-size in pixels; `None`: kernel half-size + 2.5 σ of the wider PSF.
    pub stamp_half_size: Option<usize>,
    /// At most this many stamps are used (evenly subsampled from the candidates).
    pub max_stamps: usize,
    /// Fewer surviving stamps than this fail with `TooFewKernelStars`.
    pub min_stamps: usize,
    /// Rejection threshold in robust σ for kernel sums and stamp χ².
    pub clip_sigma: f64,
    /// Rejection rounds of the spatial fit (the last round's outliers are removed and
    /// the kernel solved once more).
    pub max_iterations: usize,
    /// Apply the decorrelation afterburner.
    pub decorrelate: bool,
    /// Re-fit the differential background on the difference image itself (robust
    /// polynomial of `background_order` through block medians) and subtract it; see the
    /// module documentation.
    pub refit_background: bool,
    /// Blocks per side for that re-fit.
    pub refit_background_blocks: usize,
}

impl Default for SubtractConfig {
    fn default() -> Self {
        Self {
            convolve: ConvolveChoice::Auto,
            kernel_half_size: None,
            gauss_sigma_factors: vec![0.5, 1.0, 2.0],
            gauss_degrees: vec![4, 3, 2],
            spatial_order: 1,
            background_order: 1,
            stamp_half_size: None,
            max_stamps: 300,
            min_stamps: 15,
            clip_sigma: 3.0,
            max_iterations: 3,
            decorrelate: true,
            refit_background: true,
            refit_background_blocks: 16,
        }
    }
}

/// Monomials `x_n^p y_n^q` with `p + q ≤ order`, ordered by total degree then by `q`:
/// order 1 gives `1, x, y`; order 2 adds `x², x y, y²`.
fn monomials(order: usize) -> Vec<(i32, i32)> {
    let mut v = Vec::new();
    for d in 0..=order as i32 {
        for q in 0..=d {
            v.push((d - q, q));
        }
    }
    v
}

/// The fitted spatially varying matching kernel and differential background.
#[derive(Clone, Debug)]
pub struct SpatialKernel {
    half: usize,
    width: usize,
    height: usize,
    basis: Vec<Image<f32>>,
    terms: Vec<(i32, i32)>,
    bg_terms: Vec<(i32, i32)>,
    /// `coeffs[m * nb + i]`: spatial term `m` of basis function `i`.
    coeffs: Vec<f64>,
    bg: Vec<f64>,
}

impl SpatialKernel {
    /// Kernel half-size `h` (the kernel image is `(2h + 1)²`).
    pub fn half_size(&self) -> usize {
        self.half
    }

    /// Number of basis functions.
    pub fn n_basis(&self) -> usize {
        self.basis.len()
    }

    fn norm_xy(&self, x: f64, y: f64) -> (f64, f64) {
        (
            2.0 * x / (self.width.max(2) - 1) as f64 - 1.0,
            2.0 * y / (self.height.max(2) - 1) as f64 - 1.0,
        )
    }

    /// The kernel image at pixel `(x, y)`, `C(x) = Σ_d K(d) A(x − d)`, centre pixel at
    /// `(h, h)`.
    pub fn image_at(&self, x: f64, y: f64) -> Image<f32> {
        let (xn, yn) = self.norm_xy(x, y);
        let nb = self.basis.len();
        let size = 2 * self.half + 1;
        let mut acc = vec![0.0f64; size * size];
        for (i, b) in self.basis.iter().enumerate() {
            let c: f64 = self
                .terms
                .iter()
                .enumerate()
                .map(|(m, &(p, q))| self.coeffs[m * nb + i] * xn.powi(p) * yn.powi(q))
                .sum();
            for (a, &v) in acc.iter_mut().zip(b.data()) {
                *a += c * v as f64;
            }
        }
        Image::from_vec(size, size, acc.into_iter().map(|v| v as f32).collect())
    }

    /// The kernel sum (photometric scaling) at `(x, y)`.
    pub fn sum_at(&self, x: f64, y: f64) -> f64 {
        // Only the first basis function has a non-zero sum (1).
        let (xn, yn) = self.norm_xy(x, y);
        let nb = self.basis.len();
        self.terms
            .iter()
            .enumerate()
            .map(|(m, &(p, q))| self.coeffs[m * nb] * xn.powi(p) * yn.powi(q))
            .sum()
    }

    /// The differential background `b(x, y)` in nJy per pixel (`B ≈ K ⊗ A + b`).
    pub fn background_at(&self, x: f64, y: f64) -> f64 {
        let (xn, yn) = self.norm_xy(x, y);
        self.bg_terms
            .iter()
            .zip(&self.bg)
            .map(|(&(p, q), &c)| c * xn.powi(p) * yn.powi(q))
            .sum()
    }

    /// The kernel images `K_m` of the spatial terms, `K(x, y) = Σ_m x_n^p y_n^q K_m`,
    /// with the `(p, q)` exponents.
    pub fn spatial_images(&self) -> Vec<((i32, i32), Image<f32>)> {
        let nb = self.basis.len();
        let size = 2 * self.half + 1;
        self.terms
            .iter()
            .enumerate()
            .map(|(m, &pq)| {
                let mut acc = vec![0.0f64; size * size];
                for (i, b) in self.basis.iter().enumerate() {
                    let c = self.coeffs[m * nb + i];
                    for (a, &v) in acc.iter_mut().zip(b.data()) {
                        *a += c * v as f64;
                    }
                }
                (
                    pq,
                    Image::from_vec(size, size, acc.into_iter().map(|v| v as f32).collect()),
                )
            })
            .collect()
    }
}

/// The PSF of the difference image: the science PSF, convolved with `K / s` when the
/// science image was convolved, and with the decorrelation kernel φ when decorrelated.
#[derive(Debug)]
pub struct DifferencePsf<'a> {
    science: &'a dyn Psf,
    kernel: Option<SpatialKernel>,
    phi: Option<Image<f32>>,
}

impl DifferencePsf<'_> {
    fn pad(&self) -> usize {
        self.kernel.as_ref().map_or(0, |k| k.half) + self.phi.as_ref().map_or(0, |p| p.width() / 2)
    }

    fn apply(&self, x: f64, y: f64, base: Image<f32>, size: usize) -> Image<f32> {
        let mut img = base;
        if let Some(k) = &self.kernel {
            let s = k.sum_at(x, y) as f32;
            let kimg = k.image_at(x, y).map(|v| v / s);
            img = crop_centre(&convolve_full(&img, &kimg), img.width());
        }
        if let Some(phi) = &self.phi {
            img = crop_centre(&convolve_full(&img, phi), img.width());
        }
        crop_centre(&img, size)
    }
}

impl Psf for DifferencePsf<'_> {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.image_at_shifted(x, y, size, 0.0, 0.0)
    }

    fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        let big = size + 2 * self.pad();
        let base = self.science.image_at_shifted(x, y, big, dx, dy);
        self.apply(x, y, base, size)
    }

    fn sigma_at(&self, x: f64, y: f64) -> f64 {
        let mut m2 = self.science.sigma_at(x, y).powi(2);
        if let Some(k) = &self.kernel {
            m2 += second_moment(&k.image_at(x, y));
        }
        if let Some(phi) = &self.phi {
            m2 += second_moment(phi);
        }
        m2.max(0.01).sqrt()
    }
}

/// The result of [`subtract`].
#[derive(Debug)]
pub struct Subtraction<'a> {
    /// Science − matched template (decorrelated if `decorrelated`), nJy per pixel.
    pub difference: MaskedImage,
    /// PSF of `difference`.
    pub psf: DifferencePsf<'a>,
    /// Which input was convolved.
    pub convolved: ConvolvedImage,
    /// The fitted kernel and differential background.
    pub kernel: SpatialKernel,
    /// Kernel sum at the detector centre (photometric scaling `B / A`).
    pub kernel_sum_at_centre: f64,
    /// Differential background at the centre, nJy per pixel (from the kernel fit).
    pub background_at_centre: f64,
    /// The background re-fitted on the difference and subtracted from it
    /// ([`SubtractConfig::refit_background`]), at the centre, nJy per pixel.
    pub residual_background_at_centre: f64,
    /// Stamps in the final fit.
    pub n_stamps_used: usize,
    /// Stamps rejected as outliers (or with a singular fit).
    pub n_stamps_rejected: usize,
    /// `sqrt(χ² / dof)` of the surviving stamps under the final model (≈ 1 if perfect).
    pub stamp_residual_rms: f64,
    /// Whether the decorrelation was applied.
    pub decorrelated: bool,
    /// The real-space decorrelation kernel (centre), if applied.
    pub decorrelation_kernel: Option<Image<f32>>,
    /// Wall-clock time of the steps.
    pub timings: SubtractTimings,
}

/// Wall-clock milliseconds of the steps of [`subtract`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SubtractTimings {
    /// Stamp building, per-stamp and spatial fits.
    pub fit_ms: f64,
    /// FFT convolution (and decorrelation) of the images.
    pub convolve_ms: f64,
    /// Background, variance and mask planes.
    pub planes_ms: f64,
}

/// The Gaussian × polynomial basis, separable.
struct Basis {
    half: usize,
    /// 1-D factors, each of length `2 half + 1`, index `d + half`.
    factors: Vec<Vec<f64>>,
    /// Basis function `i`: (x factor, y factor, normalisation, multiple of basis 0
    /// subtracted before normalising).
    terms: Vec<(usize, usize, f64, f64)>,
}

impl Basis {
    fn new(half: usize, sigmas: &[f64], degrees: &[usize]) -> Self {
        let mut factors = Vec::new();
        let mut terms = Vec::new();
        let n = 2 * half + 1;
        for (k, (&s, &deg)) in sigmas.iter().zip(degrees).enumerate() {
            let g: Vec<f64> = (0..n)
                .map(|i| {
                    let d = i as f64 - half as f64;
                    (-0.5 * d * d / (s * s)).exp()
                })
                .collect();
            let norm: f64 = g.iter().sum();
            let first = factors.len();
            for p in 0..=deg {
                factors.push(
                    (0..n)
                        .map(|i| g[i] / norm * ((i as f64 - half as f64) / s).powi(p as i32))
                        .collect::<Vec<f64>>(),
                );
            }
            for d in 0..=deg {
                for q in 0..=d {
                    let _ = k;
                    terms.push((first + d - q, first + q, 1.0, 0.0));
                }
            }
        }
        let mut b = Self {
            half,
            factors,
            terms,
        };
        // Zero-sum and L2 normalisation relative to the first function.
        let b0 = b.raw(0);
        let n0 = b0.iter().map(|v| v * v).sum::<f64>().sqrt();
        for i in 1..b.terms.len() {
            let r = b.raw(i);
            let s: f64 = r.iter().sum();
            let l2 = r
                .iter()
                .zip(&b0)
                .map(|(a, c)| (a - s * c).powi(2))
                .sum::<f64>()
                .sqrt();
            b.terms[i].2 = n0 / l2.max(1e-300);
            b.terms[i].3 = s;
        }
        b
    }

    fn raw(&self, i: usize) -> Vec<f64> {
        let (fx, fy, _, _) = self.terms[i];
        let (fx, fy) = (&self.factors[fx], &self.factors[fy]);
        let mut out = Vec::with_capacity(fx.len() * fy.len());
        for &b in fy {
            for &a in fx {
                out.push(a * b);
            }
        }
        out
    }

    fn images(&self) -> Vec<Image<f32>> {
        let n = 2 * self.half + 1;
        let b0 = self.raw(0);
        (0..self.terms.len())
            .map(|i| {
                let (_, _, norm, s) = self.terms[i];
                let r = self.raw(i);
                let v = if i == 0 {
                    r.iter().map(|&v| v as f32).collect()
                } else {
                    r.iter()
                        .zip(&b0)
                        .map(|(a, c)| (norm * (a - s * c)) as f32)
                        .collect()
                };
                Image::from_vec(n, n, v)
            })
            .collect()
    }
}

/// Normal equations of one stamp: unknowns are the basis coefficients then a constant
/// background.
struct Stamp {
    x: f64,
    y: f64,
    m: Vec<f64>,
    b: Vec<f64>,
    bb: f64,
    npix: usize,
    sum: f64,
    chi2: f64,
}

#[allow(clippy::too_many_arguments)]
fn build_stamp(
    a: &MaskedImage,
    b: &MaskedImage,
    basis: &Basis,
    xc: usize,
    yc: usize,
    hs: usize,
    hx: &mut [Vec<f64>],
    cols: &mut [Vec<f64>],
) -> Option<Stamp> {
    let h = basis.half;
    let s = 2 * hs + 1;
    let l = s + 2 * h;
    let (x0, y0) = (xc - hs - h, yc - hs - h);
    // Input cutout of A, checked.
    let mut acut = vec![0.0f64; l * l];
    for j in 0..l {
        for i in 0..l {
            let (x, y) = (x0 + i, y0 + j);
            let v = a.image.get(x, y);
            if !v.is_finite() || a.mask.get(x, y) & mask::UNUSABLE != 0 {
                return None;
            }
            acut[j * l + i] = v as f64;
        }
    }
    let n = s * s;
    let mut bv = vec![0.0f64; n];
    let mut w = vec![0.0f64; n];
    for j in 0..s {
        for i in 0..s {
            let (x, y) = (xc - hs + i, yc - hs + j);
            let v = b.image.get(x, y);
            let var = b.variance.get(x, y) as f64 + a.variance.get(x, y) as f64;
            if !v.is_finite()
                || b.mask.get(x, y) & mask::UNUSABLE != 0
                || var.is_nan()
                || var <= 0.0
            {
                return None;
            }
            bv[j * s + i] = v as f64;
            w[j * s + i] = 1.0 / var;
        }
    }
    // Horizontal passes: hx[f][(row 0..l) * s + col] = Σ_a f[a] A(col + 2h − a).
    for (f, out) in basis.factors.iter().zip(hx.iter_mut()) {
        for j in 0..l {
            let row = &acut[j * l..(j + 1) * l];
            let dst = &mut out[j * s..(j + 1) * s];
            dst.fill(0.0);
            for (ai, &fa) in f.iter().enumerate() {
                let off = 2 * h - ai;
                for (d, &v) in dst.iter_mut().zip(&row[off..off + s]) {
                    *d += fa * v;
                }
            }
        }
    }
    // Vertical passes per basis function.
    let nb = basis.terms.len();
    for (i, &(fx, fy, norm, sub)) in basis.terms.iter().enumerate() {
        let f = &basis.factors[fy];
        let src = &hx[fx];
        let mut col = std::mem::take(&mut cols[i]);
        col.fill(0.0);
        for j in 0..s {
            let dst = &mut col[j * s..(j + 1) * s];
            for (bi, &fb) in f.iter().enumerate() {
                let r = j + 2 * h - bi;
                for (d, &v) in dst.iter_mut().zip(&src[r * s..(r + 1) * s]) {
                    *d += fb * v;
                }
            }
        }
        if i > 0 {
            let c0 = &cols[0];
            for (d, &z) in col.iter_mut().zip(c0) {
                *d = norm * (*d - sub * z);
            }
        }
        cols[i] = col;
    }
    let np = nb + 1;
    let mut m = vec![0.0f64; np * np];
    let mut rhs = vec![0.0f64; np];
    let mut wc = vec![0.0f64; n];
    for i in 0..np {
        let ci: &[f64] = if i < nb { &cols[i] } else { &w };
        if i < nb {
            for ((o, &c), &ww) in wc.iter_mut().zip(ci).zip(&w) {
                *o = c * ww;
            }
        } else {
            wc.copy_from_slice(&w);
        }
        for j in i..np {
            let v: f64 = if j < nb {
                wc.iter().zip(&cols[j]).map(|(p, q)| p * q).sum()
            } else {
                wc.iter().sum()
            };
            m[i * np + j] = v;
            m[j * np + i] = v;
        }
        rhs[i] = wc.iter().zip(&bv).map(|(p, q)| p * q).sum();
    }
    let bb = bv.iter().zip(&w).map(|(v, ww)| v * v * ww).sum();
    Some(Stamp {
        x: xc as f64,
        y: yc as f64,
        m,
        b: rhs,
        bb,
        npix: n,
        sum: 0.0,
        chi2: 0.0,
    })
}

/// Solves `m x = b` (symmetric positive definite) by Cholesky, with a tiny ridge retry.
fn solve_spd(m: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    let trace: f64 = (0..n).map(|i| m[i * n + i]).sum::<f64>() / n as f64;
    for ridge in [0.0, 1e-12, 1e-9, 1e-6] {
        if let Some(x) = cholesky_solve(m, b, ridge * trace) {
            return Some(x);
        }
    }
    None
}

fn cholesky_solve(m: &[f64], b: &[f64], ridge: f64) -> Option<Vec<f64>> {
    let n = b.len();
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = m[i * n + j] + if i == j { ridge } else { 0.0 };
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0f64; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    let mut x = vec![0.0f64; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// χ² of a stamp under coefficients `c` (basis then background).
fn stamp_chi2(s: &Stamp, c: &[f64]) -> f64 {
    let n = c.len();
    let mut q = 0.0;
    for i in 0..n {
        let r: f64 = s.m[i * n..(i + 1) * n]
            .iter()
            .zip(c)
            .map(|(a, b)| a * b)
            .sum();
        q += c[i] * (r - 2.0 * s.b[i]);
    }
    (s.bb + q).max(0.0)
}

/// `(median − nsig σ, median + nsig σ)` with σ the IQR σ of `values` (at least `floor`).
fn clip_bounds(values: &[f64], nsig: f64, floor: f64) -> Option<(f64, f64)> {
    let mut v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    let (med, sig) = median_and_iqr_sigma(&mut v)?;
    let (med, sig) = (f64::from(med), f64::from(sig).max(floor));
    Some((med - nsig * sig, med + nsig * sig))
}

/// Robust upper (and optionally lower) clip of `values`: `keep[i]` false for outliers.
fn clip(values: &[f64], nsig: f64, two_sided: bool, floor: f64) -> Vec<bool> {
    let Some((lo, hi)) = clip_bounds(values, nsig, floor) else {
        return vec![true; values.len()];
    };
    values
        .iter()
        .map(|&x| x.is_finite() && x <= hi && (!two_sided || x >= lo))
        .collect()
}

/// Mean of the variance plane over pixels with data.
fn mean_variance(img: &MaskedImage) -> f64 {
    // Eight independent partial sums in fixed-length chunks, so the loop is branch-free
    // and vectorised (one long f64 sum is bound by its add chain).
    const L: usize = 8;
    let (var, msk, img) = (img.variance.data(), img.mask.data(), img.image.data());
    let usable = |v: f32, m: u32, p: f32| {
        v.is_finite() && v > 0.0 && p.is_finite() && m & mask::NO_DATA == 0
    };
    let (mut s, mut n) = ([0.0f64; L], [0u64; L]);
    let (vc, mc, pc) = (
        var.chunks_exact(L),
        msk.chunks_exact(L),
        img.chunks_exact(L),
    );
    let tail = vc
        .remainder()
        .iter()
        .zip(mc.remainder())
        .zip(pc.remainder());
    for ((v, m), p) in vc.zip(mc).zip(pc) {
        for k in 0..L {
            let ok = usable(v[k], m[k], p[k]);
            s[k] += if ok { f64::from(v[k]) } else { 0.0 };
            n[k] += u64::from(ok);
        }
    }
    for ((&v, &m), &p) in tail {
        if usable(v, m, p) {
            s[0] += f64::from(v);
            n[0] += 1;
        }
    }
    let (s, n) = (s.iter().sum::<f64>(), n.iter().sum::<u64>());
    if n == 0 { 0.0 } else { s / n as f64 }
}

/// PSF-matched subtraction of `template` from `science`, with decorrelation; see the
/// module documentation. Both images in nJy per pixel on the same grid; `candidates` are
/// pixel positions of bright unsaturated stars.
pub fn subtract<'a>(
    science: &MaskedImage,
    sci_psf: &'a dyn Psf,
    template: &MaskedImage,
    tmpl_psf: &dyn Psf,
    candidates: &[(f64, f64)],
    cfg: &SubtractConfig,
) -> Result<Subtraction<'a>, ScienceError> {
    let (w, h) = science.dims();
    if template.dims() != (w, h) {
        return Err(ScienceError::BadInput(format!(
            "template {:?} and science {:?} differ in size",
            template.dims(),
            (w, h)
        )));
    }
    if w < 16 || h < 16 {
        return Err(ScienceError::BadInput(format!("image too small: {w}x{h}")));
    }
    if cfg.gauss_sigma_factors.is_empty()
        || cfg.gauss_sigma_factors.len() != cfg.gauss_degrees.len()
        || cfg.spatial_order > 2
        || cfg.background_order > 2
    {
        return Err(ScienceError::BadInput("bad subtraction config".into()));
    }
    let t0 = std::time::Instant::now();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    // One width measure for both PSFs (their `sigma_at` may differ in kind: half-maximum
    // width for a fitted model, second moments for a stored image, which a faint wide
    // wing inflates by tens of per cent).
    let sig_s = half_max_sigma(sci_psf, cx, cy);
    let sig_t = half_max_sigma(tmpl_psf, cx, cy);
    let convolved = match cfg.convolve {
        ConvolveChoice::Template => ConvolvedImage::Template,
        ConvolveChoice::Science => ConvolvedImage::Science,
        ConvolveChoice::Auto if sig_t <= sig_s => ConvolvedImage::Template,
        ConvolveChoice::Auto => ConvolvedImage::Science,
    };
    let (a, b, sig_a, sig_b) = match convolved {
        ConvolvedImage::Template => (template, science, sig_t, sig_s),
        ConvolvedImage::Science => (science, template, sig_s, sig_t),
    };
    let sig_m = (sig_b * sig_b - sig_a * sig_a).abs().sqrt().max(0.5);
    let half = cfg
        .kernel_half_size
        .unwrap_or_else(|| ((4.0 * sig_m).ceil() as usize).clamp(5, 25));
    let hs = cfg
        .stamp_half_size
        .unwrap_or(half + (2.5 * sig_b.max(sig_a)).ceil() as usize);
    let sigmas: Vec<f64> = cfg
        .gauss_sigma_factors
        .iter()
        .map(|f| (f * sig_m).max(0.4))
        .collect();
    let basis = Basis::new(half, &sigmas, &cfg.gauss_degrees);
    let nb = basis.terms.len();

    // Stamps.
    let margin = hs + half;
    let mut usable: Vec<(usize, usize)> = candidates
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (x.round(), y.round()))
        .filter(|&(x, y)| {
            x >= margin as f64
                && y >= margin as f64
                && x + (margin as f64) < w as f64
                && y + (margin as f64) < h as f64
        })
        .map(|(x, y)| (x as usize, y as usize))
        .collect();
    if usable.len() > cfg.max_stamps {
        let step = usable.len() as f64 / cfg.max_stamps as f64;
        usable = (0..cfg.max_stamps)
            .map(|k| usable[(k as f64 * step) as usize])
            .collect();
    }
    let s = 2 * hs + 1;
    let l = s + 2 * half;
    let mut hx = vec![vec![0.0f64; l * s]; basis.factors.len()];
    let mut cols = vec![vec![0.0f64; s * s]; nb];
    let mut stamps: Vec<Stamp> = usable
        .iter()
        .filter_map(|&(x, y)| build_stamp(a, b, &basis, x, y, hs, &mut hx, &mut cols))
        .collect();
    let n_built = stamps.len();
    let too_few = |found: usize| ScienceError::TooFewKernelStars {
        found,
        needed: cfg.min_stamps,
    };
    if n_built < cfg.min_stamps.max(1) {
        return Err(too_few(n_built));
    }
    // Per-stamp fits and rejection on kernel sum and χ².
    stamps.retain_mut(|st| match solve_spd(&st.m, &st.b) {
        Some(c) => {
            st.sum = c[0];
            st.chi2 = stamp_chi2(st, &c) / (st.npix - nb - 1) as f64;
            true
        }
        None => false,
    });
    let sums: Vec<f64> = stamps.iter().map(|s| s.sum).collect();
    let chis: Vec<f64> = stamps.iter().map(|s| s.chi2).collect();
    let k1 = clip(&sums, cfg.clip_sigma, true, 1e-3);
    let k2 = clip(&chis, cfg.clip_sigma, false, 0.05);
    let mut it = k1.iter().zip(&k2).map(|(p, q)| *p && *q);
    stamps.retain(|_| it.next().unwrap_or(false));
    if stamps.len() < cfg.min_stamps.max(1) {
        return Err(too_few(stamps.len()));
    }

    // Spatial fit with rejection.
    let terms = monomials(cfg.spatial_order);
    let bg_terms = monomials(cfg.background_order);
    let nsp = terms.len();
    let nbg = bg_terms.len();
    let np = nsp * nb + nbg;
    let q_of = |x: f64, y: f64, t: &[(i32, i32)]| -> Vec<f64> {
        let xn = 2.0 * x / (w - 1) as f64 - 1.0;
        let yn = 2.0 * y / (h - 1) as f64 - 1.0;
        t.iter().map(|&(p, q)| xn.powi(p) * yn.powi(q)).collect()
    };
    let mut solution;
    let mut iteration = 0;
    // Set once the rejection budget is spent: the outliers of the last round are
    // still removed and the kernel solved once more without them.
    let mut last_fit = false;
    loop {
        let mut gm = vec![0.0f64; np * np];
        let mut gb = vec![0.0f64; np];
        for st in &stamps {
            let qk = q_of(st.x, st.y, &terms);
            let qb = q_of(st.x, st.y, &bg_terms);
            // Global index and spatial weight of every (term, local unknown) pair.
            let mut idx: Vec<(usize, usize, f64)> = Vec::with_capacity(np);
            for (m, &qm) in qk.iter().enumerate() {
                for i in 0..nb {
                    idx.push((m * nb + i, i, qm));
                }
            }
            for (l2, &ql) in qb.iter().enumerate() {
                idx.push((nsp * nb + l2, nb, ql));
            }
            let n1 = nb + 1;
            for &(gi, li, qi) in &idx {
                gb[gi] += qi * st.b[li];
                let row = &st.m[li * n1..(li + 1) * n1];
                let grow = &mut gm[gi * np..(gi + 1) * np];
                for &(gj, lj, qj) in &idx {
                    grow[gj] += qi * qj * row[lj];
                }
            }
        }
        solution = solve_spd(&gm, &gb).ok_or_else(|| ScienceError::Numerical {
            stage: "subtract",
            message: "singular spatial kernel fit".into(),
        })?;
        // Per-stamp χ² under the spatial model.
        let chis: Vec<f64> = stamps
            .iter()
            .map(|st| {
                let qk = q_of(st.x, st.y, &terms);
                let qb = q_of(st.x, st.y, &bg_terms);
                let mut c = vec![0.0f64; nb + 1];
                for (m, &qm) in qk.iter().enumerate() {
                    for i in 0..nb {
                        c[i] += qm * solution[m * nb + i];
                    }
                }
                for (l2, &ql) in qb.iter().enumerate() {
                    c[nb] += ql * solution[nsp * nb + l2];
                }
                stamp_chi2(st, &c) / (st.npix - nb - 1) as f64
            })
            .collect();
        for (st, &c) in stamps.iter_mut().zip(&chis) {
            st.chi2 = c;
        }
        if last_fit {
            break;
        }
        iteration += 1;
        let keep = clip(&chis, cfg.clip_sigma, false, 0.05);
        let n_out = keep.iter().filter(|k| !**k).count();
        if n_out == 0 {
            break;
        }
        last_fit = iteration > cfg.max_iterations;
        let mut it = keep.into_iter();
        stamps.retain(|_| it.next().unwrap_or(false));
        if stamps.len() < cfg.min_stamps.max(1) {
            return Err(too_few(stamps.len()));
        }
    }
    let n_used = stamps.len();
    let rms = (stamps.iter().map(|s| s.chi2).sum::<f64>() / n_used as f64).sqrt();
    let kernel = SpatialKernel {
        half,
        width: w,
        height: h,
        basis: basis.images(),
        terms: terms.clone(),
        bg_terms: bg_terms.clone(),
        coeffs: solution[..nsp * nb].to_vec(),
        bg: solution[nsp * nb..].to_vec(),
    };
    let ksum_c = kernel.sum_at(cx, cy);
    if !(ksum_c.is_finite() && ksum_c > 0.0) {
        return Err(ScienceError::Numerical {
            stage: "subtract",
            message: format!("kernel sum {ksum_c} at the centre"),
        });
    }
    let var_a = mean_variance(a);
    let var_b = mean_variance(b);
    let decorrelate = cfg.decorrelate && var_a > 0.0 && var_b > 0.0;
    let phi =
        decorrelate.then(|| decorrelation_kernel(&kernel.image_at(cx, cy), var_b, var_a, 3 * half));
    let t1 = std::time::Instant::now();
    let mut difference = apply_kernel(a, b, &kernel, decorrelate, var_a, var_b);
    let t2 = std::time::Instant::now();
    let edge = if decorrelate { 2 * half } else { half };
    finish_planes(&mut difference, a, b, &kernel, convolved, decorrelate, edge);
    let residual_background = if cfg.refit_background {
        refit_background(
            &mut difference,
            &bg_terms,
            cfg.refit_background_blocks,
            cfg.clip_sigma,
        )
    } else {
        0.0
    };
    let timings = SubtractTimings {
        fit_ms: (t1 - t0).as_secs_f64() * 1e3,
        convolve_ms: (t2 - t1).as_secs_f64() * 1e3,
        planes_ms: t2.elapsed().as_secs_f64() * 1e3,
    };
    tracing::debug!(?timings, n_used, residual_background, "subtraction");
    Ok(Subtraction {
        difference,
        psf: DifferencePsf {
            science: sci_psf,
            kernel: (convolved == ConvolvedImage::Science).then(|| kernel.clone()),
            phi: phi.clone(),
        },
        convolved,
        kernel_sum_at_centre: ksum_c,
        background_at_centre: kernel.background_at(cx, cy),
        residual_background_at_centre: residual_background,
        kernel,
        n_stamps_used: n_used,
        n_stamps_rejected: n_built - n_used,
        stamp_residual_rms: rms,
        decorrelated: decorrelate,
        decorrelation_kernel: phi,
        timings,
    })
}

/// Gaussian-equivalent σ (pixels) of `psf` at `(x, y)` from the half-maximum width of
/// its pixel image, `FWHM / 2.3548`; falls back to `Psf::sigma_at` if that fails.
fn half_max_sigma(psf: &dyn Psf, x: f64, y: f64) -> f64 {
    let s = psf.sigma_at(x, y);
    let half = ((4.0 * s).ceil() as usize).clamp(7, 40);
    let f = fwhm_of_image(&psf.kernel(x, y, 2 * half + 1));
    if f.is_finite() && f > 0.0 {
        f / FWHM_PER_SIGMA
    } else {
        s
    }
}

fn has_data(v: f32, m: u32) -> bool {
    v.is_finite() && m & mask::NO_DATA == 0
}

/// The difference image values (`B − K ⊗ A − b`, decorrelated if asked), before the
/// science-convolved sign flip and scaling.
fn apply_kernel(
    a: &MaskedImage,
    b: &MaskedImage,
    kernel: &SpatialKernel,
    decorrelate: bool,
    var_a: f64,
    var_b: f64,
) -> MaskedImage {
    let (w, h) = a.dims();
    let mut fft = RealFft2d::new(next_fast_len(w), next_fast_len(h));
    let norm = 1.0 / (fft.nx() * fft.ny()) as f32;
    let amask = a.mask.data();
    let bmask = b.mask.data();
    let mut ahat = fft.new_spectrum();
    fft.forward_image(
        &a.image,
        |i, v| if has_data(v, amask[i]) { v } else { 0.0 },
        &mut ahat,
    );
    let kimgs = kernel.spatial_images();
    let mut khat = fft.new_spectrum();
    let mut out = vec![0.0f32; w * h];
    // Constant term.
    fft.forward_kernel(&kimgs[0].1, &mut khat);
    if decorrelate {
        let ks = kernel.sum_at((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0) as f32;
        let (vb, va) = (var_b as f32, var_a as f32);
        let mut bhat = fft.new_spectrum();
        fft.forward_image(
            &b.image,
            |i, v| if has_data(v, bmask[i]) { v } else { 0.0 },
            &mut bhat,
        );
        // Φ (with the inverse-FFT normalisation) is folded into Â here, so the spatial
        // terms below need no separate Φ array (one fewer spectrum-sized buffer/pass).
        for ((bb, &k), aa) in bhat.iter_mut().zip(&khat).zip(ahat.iter_mut()) {
            let p = phi_hat(k.norm_sqr(), vb, va, ks * ks) * norm;
            *bb = (*bb - k * *aa) * p;
            *aa *= p;
        }
        fft.inverse_with(&mut bhat, w, h, |i, row| {
            out[i..i + row.len()].copy_from_slice(row);
        });
    } else {
        for (k, &aa) in khat.iter_mut().zip(&ahat) {
            *k = *k * aa * norm;
        }
        let bimg = b.image.data();
        fft.inverse_with(&mut khat, w, h, |i, row| {
            for ((o, &v), (&bv, &bm)) in out[i..i + row.len()]
                .iter_mut()
                .zip(row)
                .zip(bimg[i..].iter().zip(&bmask[i..]))
            {
                *o = if has_data(bv, bm) { bv - v } else { -v };
            }
        });
    }
    // Spatial terms.
    for ((p, q), kimg) in kimgs.iter().skip(1) {
        fft.forward_kernel(kimg, &mut khat);
        if decorrelate {
            // Â already carries Φ and the normalisation.
            for (k, &aa) in khat.iter_mut().zip(&ahat) {
                *k *= aa;
            }
        } else {
            for (k, &aa) in khat.iter_mut().zip(&ahat) {
                *k = *k * aa * norm;
            }
        }
        let xp: Vec<f32> = (0..w)
            .map(|x| (2.0 * x as f64 / (w - 1) as f64 - 1.0).powi(*p) as f32)
            .collect();
        fft.inverse_with(&mut khat, w, h, |i, row| {
            let y = i / w;
            let yq = (2.0 * y as f64 / (h - 1) as f64 - 1.0).powi(*q) as f32;
            for ((o, &v), &xv) in out[i..i + row.len()].iter_mut().zip(row).zip(&xp) {
                *o -= v * xv * yq;
            }
        });
    }
    MaskedImage::from_parts(
        Image::from_vec(w, h, out),
        Image::new(w, h),
        Image::new(w, h),
    )
}

/// Fits a polynomial with monomials `terms` (normalised coordinates as the kernel's)
/// through the medians of `blocks` × `blocks` blocks of the difference (usable pixels,
/// every other row and column), weighted by the pixels used and with blocks beyond
/// `clip` robust σ of the residuals rejected (three passes), and subtracts it from the
/// pixels with data. Returns its value at the centre (0 when too few blocks).
fn refit_background(d: &mut MaskedImage, terms: &[(i32, i32)], blocks: usize, clip: f64) -> f64 {
    let (w, h) = d.dims();
    let nblk = blocks.clamp(1, 64);
    let (bw, bh) = (w.div_ceil(nblk), h.div_ceil(nblk));
    let skip = mask::UNUSABLE | mask::INTRP | mask::STREAK;
    let norm = |x: f64, n: usize| 2.0 * x / (n.max(2) - 1) as f64 - 1.0;
    // (x_n, y_n, median, weight) per block.
    let mut pts: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut vals: Vec<f32> = Vec::with_capacity(bw * bh / 4 + 1);
    for by in 0..nblk {
        for bx in 0..nblk {
            vals.clear();
            let (x0, y0) = (bx * bw, by * bh);
            let (x1, y1) = ((x0 + bw).min(w), (y0 + bh).min(h));
            if x0 >= x1 || y0 >= y1 {
                continue;
            }
            for y in (y0..y1).step_by(2) {
                let (im, va, mk) = (d.image.row(y), d.variance.row(y), d.mask.row(y));
                for x in (x0..x1).step_by(2) {
                    if mk[x] & skip == 0 && im[x].is_finite() && va[x].is_finite() {
                        vals.push(im[x]);
                    }
                }
            }
            let cap = (x1 - x0).div_ceil(2) * (y1 - y0).div_ceil(2);
            if vals.len() < 16 || vals.len() * 4 < cap {
                continue;
            }
            let n = vals.len();
            let med = *vals.select_nth_unstable_by(n / 2, f32::total_cmp).1;
            let (xc, yc) = (0.5 * (x0 + x1 - 1) as f64, 0.5 * (y0 + y1 - 1) as f64);
            pts.push((norm(xc, w), norm(yc, h), f64::from(med), n as f64));
        }
    }
    let nt = terms.len();
    if nt == 0 || pts.len() < 3 * nt {
        return 0.0;
    }
    let mono = |x: f64, y: f64| -> Vec<f64> {
        terms.iter().map(|&(p, q)| x.powi(p) * y.powi(q)).collect()
    };
    let mut keep = vec![true; pts.len()];
    let mut coef = vec![0.0; nt];
    for _ in 0..3 {
        let mut m = vec![0.0; nt * nt];
        let mut rhs = vec![0.0; nt];
        for (&(x, y, v, wt), _) in pts.iter().zip(&keep).filter(|(_, k)| **k) {
            let q = mono(x, y);
            for i in 0..nt {
                rhs[i] += wt * q[i] * v;
                for j in 0..nt {
                    m[i * nt + j] += wt * q[i] * q[j];
                }
            }
        }
        let Some(c) = solve_spd(&m, &rhs) else {
            return 0.0;
        };
        coef = c;
        let res: Vec<f64> = pts
            .iter()
            .map(|&(x, y, v, _)| {
                v - mono(x, y)
                    .iter()
                    .zip(&coef)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            })
            .collect();
        let kept: Vec<f64> = res
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(r, _)| *r)
            .collect();
        let k = clip_bounds(&kept, clip, 1e-12);
        let Some((lo, hi)) = k else { break };
        let new: Vec<bool> = res.iter().map(|&r| r >= lo && r <= hi).collect();
        if new == keep || new.iter().filter(|k| **k).count() < 3 * nt {
            break;
        }
        keep = new;
    }
    let xs: Vec<Vec<f64>> = (0..=2)
        .map(|p| (0..w).map(|x| norm(x as f64, w).powi(p)).collect())
        .collect();
    let mut row = vec![0.0f32; w];
    for y in 0..h {
        let yn = norm(y as f64, h);
        row.fill(0.0);
        for (&(p, q), &c) in terms.iter().zip(&coef) {
            let cy = c * yn.powi(q);
            for (o, &xp) in row.iter_mut().zip(&xs[p as usize]) {
                *o += (cy * xp) as f32;
            }
        }
        let (image, msk) = (&mut d.image, &d.mask);
        for ((v, &b), &m) in image.row_mut(y).iter_mut().zip(&row).zip(msk.row(y)) {
            if m & mask::NO_DATA == 0 {
                *v -= b;
            }
        }
    }
    mono(
        norm(0.5 * (w as f64 - 1.0), w),
        norm(0.5 * (h as f64 - 1.0), h),
    )
    .iter()
    .zip(&coef)
    .map(|(a, b)| a * b)
    .sum()
}

/// Background, sign and scale, variance and mask of the difference.
fn finish_planes(
    d: &mut MaskedImage,
    a: &MaskedImage,
    b: &MaskedImage,
    kernel: &SpatialKernel,
    convolved: ConvolvedImage,
    decorrelate: bool,
    edge: usize,
) {
    let (w, h) = d.dims();
    let science_conv = convolved == ConvolvedImage::Science;
    // Non-decorrelated variance needs K_c² ⊗ var_A (rank-1 separable approximation).
    let conv_var = (!decorrelate).then(|| {
        let kc = kernel.image_at((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        let n = kc.width();
        let k2 = kc.map(|v| v * v);
        let tot: f32 = k2.data().iter().sum();
        let kx: Vec<f32> = (0..n).map(|i| (0..n).map(|j| k2.get(i, j)).sum()).collect();
        let ky: Vec<f32> = (0..n)
            .map(|j| (0..n).map(|i| k2.get(i, j)).sum::<f32>() / tot)
            .collect();
        let va = a.variance.map(|v| if v.is_finite() { v } else { 0.0 });
        convolve_separable(&va, &kx, &ky)
    });
    // Masks: A's unusable planes dilated by the kernel; EDGE near the border and NO_DATA.
    let spread = mask::BAD | mask::SAT | mask::CR | mask::INTRP | mask::SUSPECT | mask::STREAK;
    let dil_a = a
        .mask
        .data()
        .iter()
        .any(|&m| m & spread != 0)
        .then(|| dilate_bits(&a.mask, spread, kernel.half));
    let is_nodata = |(((&av, &am), &bv), &bm): (((&f32, &u32), &f32), &u32)| {
        !has_data(av, am) || !has_data(bv, bm)
    };
    let planes = || {
        a.image
            .data()
            .iter()
            .zip(a.mask.data())
            .zip(b.image.data())
            .zip(b.mask.data())
    };
    let nodata = planes().any(is_nodata).then(|| {
        Image::from_vec(
            w,
            h,
            planes()
                .map(|p| if is_nodata(p) { mask::NO_DATA } else { 0 })
                .collect(),
        )
    });
    let near_nodata = nodata
        .as_ref()
        .map(|nd| dilate_bits(nd, mask::NO_DATA, edge));
    // Kernel sum and background per pixel: sums over monomials, tabulated per column
    // and per row.
    let nb = kernel.basis.len();
    let xs: Vec<f64> = (0..w)
        .map(|x| 2.0 * x as f64 / (w - 1) as f64 - 1.0)
        .collect();
    let xpow: Vec<Vec<f32>> = (0..=2)
        .map(|p| xs.iter().map(|&x| x.powi(p) as f32).collect())
        .collect();
    let mut srow = vec![0.0f32; w];
    let mut brow = vec![0.0f32; w];
    let bimg = b.variance.data();
    let avar = a.variance.data();
    let bmask = b.mask.data();
    let (dimg, rest) = (&mut d.image, (&mut d.variance, &mut d.mask));
    let (dvar, dmask) = rest;
    for y in 0..h {
        let yn = 2.0 * y as f64 / (h - 1) as f64 - 1.0;
        srow.fill(0.0);
        brow.fill(0.0);
        for (m, &(p, q)) in kernel.terms.iter().enumerate() {
            let c = (kernel.coeffs[m * nb] * yn.powi(q)) as f32;
            for (o, &xp) in srow.iter_mut().zip(&xpow[p as usize]) {
                *o += c * xp;
            }
        }
        for (&(p, q), &cb) in kernel.bg_terms.iter().zip(&kernel.bg) {
            let c = (cb * yn.powi(q)) as f32;
            for (o, &xp) in brow.iter_mut().zip(&xpow[p as usize]) {
                *o += c * xp;
            }
        }
        let r = y * w..(y + 1) * w;
        let cv = conv_var.as_ref().map(|c| &c.data()[r.clone()]);
        let img = &mut dimg.data_mut()[r.clone()];
        let var = &mut dvar.data_mut()[r.clone()];
        let (va, vb) = (&avar[r.clone()], &bimg[r.clone()]);
        for x in 0..w {
            let s = srow[x];
            let mut v = img[x] - brow[x];
            let mut vv = match cv {
                Some(c) => vb[x] + c[x],
                None => vb[x] + s * s * va[x],
            };
            if science_conv {
                let inv = 1.0 / s;
                v = -v * inv;
                vv *= inv * inv;
            }
            img[x] = v;
            var[x] = vv;
        }
        let ymask = y < edge || y + edge >= h;
        let mrow = &mut dmask.data_mut()[r.clone()];
        let bm = &bmask[r.clone()];
        mrow.copy_from_slice(bm);
        if let Some(da) = &dil_a {
            for (o, &v) in mrow.iter_mut().zip(&da.data()[r.clone()]) {
                *o |= v;
            }
        }
        if ymask {
            mrow.iter_mut().for_each(|m| *m |= mask::EDGE);
        } else {
            let e = edge.min(w);
            mrow[..e].iter_mut().for_each(|m| *m |= mask::EDGE);
            mrow[w - e..].iter_mut().for_each(|m| *m |= mask::EDGE);
        }
        if let (Some(nd), Some(nnd)) = (&nodata, &near_nodata) {
            let (nd, nnd) = (&nd.data()[r.clone()], &nnd.data()[r.clone()]);
            for x in 0..w {
                if nnd[x] != 0 {
                    mrow[x] |= mask::EDGE;
                }
                if nd[x] != 0 {
                    mrow[x] |= mask::NO_DATA;
                    img[x] = 0.0;
                    var[x] = f32::INFINITY;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::psf::{GaussianPsf, ImagePsf};

    /// A round core + halo + wing mixture (weights 0.78, 0.19, 0.03; widths 1, 1.9,
    /// 4.5 × `core`), like the simulated camera's PSF, as a pixel image.
    fn mixture(core: f64, half: usize) -> ImagePsf {
        let n = 2 * half + 1;
        let mut img = Image::new(n, n);
        for y in 0..n {
            for x in 0..n {
                let r2 = (x as f64 - half as f64).powi(2) + (y as f64 - half as f64).powi(2);
                let v: f64 = [(0.78, 1.0), (0.19, 1.9), (0.03, 4.5)]
                    .iter()
                    .map(|&(w, f)| {
                        let s = core * f;
                        w / (s * s) * (-0.5 * r2 / (s * s)).exp()
                    })
                    .sum();
                img.set(x, y, v as f32);
            }
        }
        ImagePsf::new(img)
    }

    #[test]
    fn width_comparison_ignores_the_wing() {
        // The winged template is narrower at half maximum than the Gaussian science PSF,
        // but its second moments say it is broader: the half-maximum widths must win.
        let tmpl = mixture(1.6, 30);
        let sci = GaussianPsf { sigma: 2.1 };
        assert!(tmpl.sigma_at(0.0, 0.0) > sci.sigma_at(0.0, 0.0));
        let (st, ss) = (
            half_max_sigma(&tmpl, 0.0, 0.0),
            half_max_sigma(&sci, 0.0, 0.0),
        );
        assert!(st < ss, "template {st} science {ss}");
        // A Gaussian's half-maximum σ is its σ (plus the pixel box).
        assert!((ss - 2.1).abs() < 0.06, "{ss}");
    }
}
