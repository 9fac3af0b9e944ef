//! Decorrelation of a PSF-matched difference image ("afterburner"), after Reiss &
//! Lupton 2016, DMTN-021 "Image Differencing Decorrelation"
//! (<https://dmtn-021.lsst.io>); see also Kaiser 2004 (Pan-STARRS PSDC-002-011) and
//! Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27 for the optimal-subtraction context.
//!
//! Convolving image `A` (noise variance σ²_A per pixel, white) with the matching kernel
//! κ (sum `s`, the photometric scaling) and subtracting it from `B` (σ²_B) leaves noise
//! with power spectrum `σ²_B + σ²_A |κ̂(k)|²`: correlated, and its per-pixel variance
//! `σ²_B + σ²_A Σκ²` underestimates what a PSF-sized aperture sees. The decorrelation
//! filter
//!
//! `φ̂(k) = sqrt((σ²_B + s² σ²_A) / (σ²_B + σ²_A |κ̂(k)|²))`
//!
//! whitens it: after `φ ⊗ D` the power spectrum is the constant `σ²_B + s² σ²_A`, so
//! the per-pixel variance is `σ²_B + s² σ²_A` (locally: `var_B + s² var_A`). φ̂(0) = 1
//! (κ̂(0) = s), so fluxes are preserved; the PSF of the decorrelated difference is the
//! difference PSF convolved with φ. σ² are the mean variances of the two input images
//! (the unconvolved template, not the convolved one), in (nJy per pixel)².

use crate::convolve::next_fast_len;
use crate::image::Image;
use rustfft::FftPlanner;
use rustfft::num_complex::Complex64;

/// The decorrelation filter φ̂ at one frequency, given `|κ̂(k)|²`, the mean variances of
/// the unconvolved (`var_b`) and convolved (`var_a`) images and the kernel sum squared.
#[inline]
pub fn phi_hat(kappa2: f32, var_b: f32, var_a: f32, ksum2: f32) -> f32 {
    ((var_b + ksum2 * var_a) / (var_b + var_a * kappa2)).sqrt()
}

/// The real-space decorrelation kernel φ for the matching kernel `kernel` (odd size,
/// centred), as a `(2 half + 1)²` image normalised to sum 1. Computed on a zero-padded
/// grid of at least 64² with a complex FFT (a small computation, used for the PSF of the
/// decorrelated difference).
pub fn decorrelation_kernel(
    kernel: &Image<f32>,
    var_b: f64,
    var_a: f64,
    half: usize,
) -> Image<f32> {
    let n = next_fast_len((4 * kernel.width()).max(4 * (2 * half + 1)).max(64));
    let hk = (kernel.width() / 2) as isize;
    let mut grid = vec![Complex64::default(); n * n];
    let mut ksum = 0.0;
    for j in 0..kernel.height() {
        for i in 0..kernel.width() {
            let gx = (i as isize - hk).rem_euclid(n as isize) as usize;
            let gy = (j as isize - hk).rem_euclid(n as isize) as usize;
            let v = kernel.get(i, j) as f64;
            grid[gy * n + gx].re += v;
            ksum += v;
        }
    }
    let mut planner = FftPlanner::<f64>::new();
    fft2(&mut grid, n, &*planner.plan_fft_forward(n));
    for c in grid.iter_mut() {
        let k2 = c.norm_sqr();
        *c = Complex64::new(
            ((var_b + ksum * ksum * var_a) / (var_b + var_a * k2)).sqrt(),
            0.0,
        );
    }
    fft2(&mut grid, n, &*planner.plan_fft_inverse(n));
    let size = 2 * half + 1;
    let mut out = Image::new(size, size);
    let mut sum = 0.0;
    for j in 0..size {
        for i in 0..size {
            let gx = (i as isize - half as isize).rem_euclid(n as isize) as usize;
            let gy = (j as isize - half as isize).rem_euclid(n as isize) as usize;
            let v = grid[gy * n + gx].re;
            sum += v;
            out.set(i, j, v as f32);
        }
    }
    out.map(|v| (v as f64 / sum) as f32)
}

/// In-place 2-D complex FFT of an `n` × `n` grid (rows, then columns via a copy).
fn fft2(grid: &mut [Complex64], n: usize, fft: &dyn rustfft::Fft<f64>) {
    fft.process(grid);
    let mut col = vec![Complex64::default(); n];
    for x in 0..n {
        for y in 0..n {
            col[y] = grid[y * n + x];
        }
        fft.process(&mut col);
        for y in 0..n {
            grid[y * n + x] = col[y];
        }
    }
}

/// Second moment per axis `⟨x²⟩` (pixels²) of a centred kernel, weighted by its values
/// and divided by their sum: it adds under convolution.
pub fn second_moment(kernel: &Image<f32>) -> f64 {
    let (w, h) = kernel.dims();
    let (cx, cy) = ((w / 2) as f64, (h / 2) as f64);
    let (mut s, mut m) = (0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            let v = kernel.get(x, y) as f64;
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            s += v;
            m += v * 0.5 * (dx * dx + dy * dy);
        }
    }
    if s.abs() > 0.0 { m / s } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::psf::{GaussianPsf, Psf};

    #[test]
    fn decorrelation_kernel_whitens_the_noise_spectrum() {
        // A Gaussian matching kernel with sum 1.03; the decorrelation kernel is a
        // sharpening filter: positive centre, sum 1, and narrower than a delta's
        // neighbours' weight would suggest (negative second moment).
        let k = GaussianPsf { sigma: 1.2 }
            .kernel(0.0, 0.0, 15)
            .map(|v| v * 1.03);
        let phi = decorrelation_kernel(&k, 100.0, 33.0, 7);
        let sum: f64 = phi.data().iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert!(phi.get(7, 7) > 1.0, "{}", phi.get(7, 7));
        assert!(second_moment(&phi) < 0.0);
        // With no template noise it is the identity.
        let id = decorrelation_kernel(&k, 100.0, 0.0, 3);
        assert!((id.get(3, 3) - 1.0).abs() < 1e-5);
        assert!((phi_hat(1.03 * 1.03, 100.0, 33.0, 1.03 * 1.03) - 1.0).abs() < 1e-6);
    }
}
