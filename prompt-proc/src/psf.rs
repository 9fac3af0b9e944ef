//! Point-spread functions: the [`Psf`] interface every stage uses, and two simple
//! implementations (a circular Gaussian and a fixed image). The spatially varying model
//! fitted on a science image implements the same trait.

use crate::image::Image;

/// FWHM / σ of a Gaussian: 2 √(2 ln 2).
pub const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949;

/// A PSF that can be evaluated anywhere on its image.
pub trait Psf: Send + Sync + std::fmt::Debug {
    /// The PSF image centred on pixel `(x, y)` of the detector: a `size` × `size`
    /// kernel (`size` odd), its centre pixel at `(size / 2, size / 2)`, sampled with the
    /// pixel response and normalised to sum 1. The sub-pixel phase is 0 (the star sits
    /// on the centre of the middle pixel); use [`Psf::image_at_shifted`] for others.
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32>;

    /// As [`Psf::kernel`] with the star at `(size / 2 + dx, size / 2 + dy)`
    /// (|dx|, |dy| ≤ 0.5), still normalised to sum 1 over the infinite plane (so a
    /// stamp that clips the wings sums to slightly less than 1).
    fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32>;

    /// Gaussian-equivalent σ in pixels at `(x, y)` (from the second moments).
    fn sigma_at(&self, x: f64, y: f64) -> f64;

    /// FWHM in pixels at `(x, y)` (σ × 2.3548 for the Gaussian-equivalent width).
    fn fwhm_at(&self, x: f64, y: f64) -> f64 {
        self.sigma_at(x, y) * FWHM_PER_SIGMA
    }
}

/// A circular Gaussian PSF of width `sigma` pixels, the same everywhere, integrated over
/// each pixel (exact via the error function).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaussianPsf {
    /// σ in pixels.
    pub sigma: f64,
}

impl GaussianPsf {
    /// A Gaussian of FWHM `fwhm` pixels.
    pub fn from_fwhm(fwhm: f64) -> Self {
        Self {
            sigma: fwhm / FWHM_PER_SIGMA,
        }
    }
}

/// ∫ of a unit 1-D Gaussian of width `sigma` centred at `c` over `[a, b]`.
fn gauss_interval(a: f64, b: f64, c: f64, sigma: f64) -> f64 {
    let s = sigma * std::f64::consts::SQRT_2;
    0.5 * (erf((b - c) / s) - erf((a - c) / s))
}

/// The error function, from the Chebyshev fit of erfc in Numerical Recipes
/// (fractional error < 1.2e-7).
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { 1.0 - r } else { r - 1.0 }
}

impl Psf for GaussianPsf {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.image_at_shifted(x, y, size, 0.0, 0.0)
    }

    fn image_at_shifted(&self, _x: f64, _y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        let c = (size / 2) as f64;
        let wx: Vec<f64> = (0..size)
            .map(|i| gauss_interval(i as f64 - 0.5, i as f64 + 0.5, c + dx, self.sigma))
            .collect();
        let wy: Vec<f64> = (0..size)
            .map(|j| gauss_interval(j as f64 - 0.5, j as f64 + 0.5, c + dy, self.sigma))
            .collect();
        let mut img = Image::new(size, size);
        for (j, &a) in wy.iter().enumerate() {
            for (i, &b) in wx.iter().enumerate() {
                img.set(i, j, (a * b) as f32);
            }
        }
        img
    }

    fn sigma_at(&self, _x: f64, _y: f64) -> f64 {
        self.sigma
    }
}

/// A PSF given as one image, the same everywhere (for example a template tile's `PSF`
/// HDU). Shifted evaluations resample the stored image with a Lanczos-3 kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePsf {
    image: Image<f32>,
    sigma: f64,
}

impl ImagePsf {
    /// Wraps a PSF image (odd size, centred); it is normalised to sum 1.
    pub fn new(image: Image<f32>) -> Self {
        assert!(
            image.width() % 2 == 1 && image.width() == image.height(),
            "odd square PSF"
        );
        let sum: f64 = image.data().iter().map(|&v| v as f64).sum();
        let image = image.map(|v| (v as f64 / sum) as f32);
        let c = (image.width() / 2) as f64;
        let mut m2 = 0.0;
        for y in 0..image.height() {
            for x in 0..image.width() {
                let (dx, dy) = (x as f64 - c, y as f64 - c);
                m2 += image.get(x, y) as f64 * (dx * dx + dy * dy);
            }
        }
        // Subtract the pixel box's 1/12 px² per axis to get the underlying width.
        let sigma = (m2 / 2.0 - 1.0 / 12.0).max(0.01).sqrt();
        Self { image, sigma }
    }

    /// The stored image.
    pub fn image(&self) -> &Image<f32> {
        &self.image
    }
}

/// Lanczos-3 kernel.
pub fn lanczos3(x: f64) -> f64 {
    let ax = x.abs();
    if ax < 1e-12 {
        1.0
    } else if ax >= 3.0 {
        0.0
    } else {
        let px = std::f64::consts::PI * x;
        3.0 * px.sin() * (px / 3.0).sin() / (px * px)
    }
}

impl Psf for ImagePsf {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.image_at_shifted(x, y, size, 0.0, 0.0)
    }

    fn image_at_shifted(&self, _x: f64, _y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        let n = self.image.width() as isize;
        let c_src = n / 2;
        let c_dst = (size / 2) as isize;
        let mut out = Image::new(size, size);
        for j in 0..size as isize {
            for i in 0..size as isize {
                // Source coordinate of this output pixel.
                let sx = (i - c_dst) as f64 - dx + c_src as f64;
                let sy = (j - c_dst) as f64 - dy + c_src as f64;
                let (fx, fy) = (sx.floor(), sy.floor());
                let mut acc = 0.0;
                for b in -2..=3 {
                    let yy = fy as isize + b;
                    let wy = lanczos3(sy - yy as f64);
                    if wy == 0.0 {
                        continue;
                    }
                    for a in -2..=3 {
                        let xx = fx as isize + a;
                        if let Some(v) = self.image.get_checked(xx, yy) {
                            acc += v as f64 * wy * lanczos3(sx - xx as f64);
                        }
                    }
                }
                out.set(i as usize, j as usize, acc as f32);
            }
        }
        out
    }

    fn sigma_at(&self, _x: f64, _y: f64) -> f64 {
        self.sigma
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_kernel_is_normalised_and_has_its_width() {
        let p = GaussianPsf::from_fwhm(4.0);
        let k = p.kernel(0.0, 0.0, 31);
        let sum: f64 = k.data().iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        let ip = ImagePsf::new(k);
        assert!(
            (ip.sigma_at(0.0, 0.0) - p.sigma).abs() < 0.01,
            "{}",
            ip.sigma_at(0.0, 0.0)
        );
    }

    #[test]
    fn shifted_image_psf_moves_its_centroid() {
        // Lanczos-3 does not reproduce linear functions exactly: its weights' first
        // moment at a 0.3 px phase is 0.018 px, so the centroid moves ~6% short.
        let p = GaussianPsf::from_fwhm(4.0);
        let ip = ImagePsf::new(p.kernel(0.0, 0.0, 31));
        let k = ip.image_at_shifted(0.0, 0.0, 31, 0.3, -0.2);
        let (mut sx, mut sy, mut s) = (0.0, 0.0, 0.0);
        for y in 0..31 {
            for x in 0..31 {
                let v = k.get(x, y) as f64;
                sx += v * (x as f64 - 15.0);
                sy += v * (y as f64 - 15.0);
                s += v;
            }
        }
        assert!(
            (sx / s - 0.3).abs() < 0.03 && (sy / s + 0.2).abs() < 0.03,
            "{} {}",
            sx / s,
            sy / s
        );
    }

    #[test]
    fn erf_matches_known_values() {
        assert!((erf(0.5) - 0.520_499_877_8).abs() < 2e-7);
        assert!((erf(-1.5) + 0.966_105_146_5).abs() < 2e-7);
    }
}
