//! Alard–Lupton subtraction with decorrelation on synthetic star fields with known PSFs,
//! flux scaling, background offset, noise and injected transients.

use apflow_prompt_proc::ScienceError;
use apflow_prompt_proc::convolve::{convolve_full, crop_centre};
use apflow_prompt_proc::decorrelate::second_moment;
use apflow_prompt_proc::image::{Image, MaskedImage, mask, median_and_iqr_sigma};
use apflow_prompt_proc::psf::{GaussianPsf, Psf};
use apflow_prompt_proc::subtract::{ConvolvedImage, SubtractConfig, Subtraction, subtract};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// A circular Gaussian PSF whose FWHM varies linearly with x.
#[derive(Debug, Clone, Copy)]
struct LinearGaussianPsf {
    fwhm0: f64,
    fwhm1: f64,
    width: f64,
}

impl LinearGaussianPsf {
    fn gauss(&self, x: f64) -> GaussianPsf {
        GaussianPsf::from_fwhm(self.fwhm0 + (self.fwhm1 - self.fwhm0) * x / (self.width - 1.0))
    }
}

impl Psf for LinearGaussianPsf {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.gauss(x).kernel(x, y, size)
    }
    fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        self.gauss(x).image_at_shifted(x, y, size, dx, dy)
    }
    fn sigma_at(&self, x: f64, _y: f64) -> f64 {
        self.gauss(x).sigma
    }
}

fn render(img: &mut Image<f32>, psf: &dyn Psf, x: f64, y: f64, flux: f64) {
    let size = 2 * (5.0 * psf.sigma_at(x, y)).ceil() as usize + 1;
    let (ix, iy) = (x.round(), y.round());
    let k = psf.image_at_shifted(x, y, size, x - ix, y - iy);
    let h = (size / 2) as isize;
    for j in 0..size {
        for i in 0..size {
            let (px, py) = (ix as isize + i as isize - h, iy as isize + j as isize - h);
            if px >= 0 && py >= 0 && (px as usize) < img.width() && (py as usize) < img.height() {
                *img.at_mut(px as usize, py as usize) += (flux * k.get(i, j) as f64) as f32;
            }
        }
    }
}

struct Scene {
    science: MaskedImage,
    template: MaskedImage,
    sci_psf: LinearGaussianPsf,
    tmpl_psf: LinearGaussianPsf,
    /// (x, y, science flux)
    stars: Vec<(f64, f64, f64)>,
    transients: Vec<(f64, f64, f64)>,
    candidates: Vec<(f64, f64)>,
}

const N: usize = 1024;
const SCALE: f64 = 1.03;
const VAR_SCI: f32 = 100.0;
const VAR_TMPL: f32 = 100.0 / 3.0;

fn background(x: f64, y: f64) -> f64 {
    5.0 + 0.004 * (x - 511.5) - 0.002 * (y - 511.5)
}

fn scene(seed: u64, sci: (f64, f64), tmpl: (f64, f64)) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = N as f64;
    let sci_psf = LinearGaussianPsf {
        fwhm0: sci.0,
        fwhm1: sci.1,
        width: w,
    };
    let tmpl_psf = LinearGaussianPsf {
        fwhm0: tmpl.0,
        fwhm1: tmpl.1,
        width: w,
    };
    let mut s = Image::<f32>::new(N, N);
    let mut t = Image::<f32>::new(N, N);
    let mut stars = Vec::new();
    for _ in 0..1000 {
        let x = rng.random_range(5.0..w - 5.0);
        let y = rng.random_range(5.0..w - 5.0);
        // Template flux log-uniform 2e3 … 1e5 nJy.
        let f = 2e3 * (50f64).powf(rng.random::<f64>());
        render(&mut t, &tmpl_psf, x, y, f);
        render(&mut s, &sci_psf, x, y, f * SCALE);
        stars.push((x, y, f * SCALE));
    }
    let mut transients = Vec::new();
    while transients.len() < 50 {
        let x = rng.random_range(40.0..w - 40.0);
        let y = rng.random_range(40.0..w - 40.0);
        if stars
            .iter()
            .any(|&(sx, sy, _)| (sx - x).hypot(sy - y) < 15.0)
        {
            continue;
        }
        let f = 2e3 * (5f64).powf(rng.random::<f64>());
        render(&mut s, &sci_psf, x, y, f);
        transients.push((x, y, f));
    }
    let ns = Normal::new(0.0, VAR_SCI.sqrt() as f64).unwrap();
    let nt = Normal::new(0.0, VAR_TMPL.sqrt() as f64).unwrap();
    for y in 0..N {
        for x in 0..N {
            *s.at_mut(x, y) += (background(x as f64, y as f64) + ns.sample(&mut rng)) as f32;
            *t.at_mut(x, y) += nt.sample(&mut rng) as f32;
        }
    }
    let candidates = stars
        .iter()
        .filter(|&&(x, y, f)| {
            f > 1.5e4
                && !transients
                    .iter()
                    .any(|&(tx, ty, _)| (tx - x).hypot(ty - y) < 20.0)
        })
        .map(|&(x, y, _)| (x, y))
        .collect();
    Scene {
        science: MaskedImage::from_parts(s, Image::filled(N, N, VAR_SCI), Image::new(N, N)),
        template: MaskedImage::from_parts(t, Image::filled(N, N, VAR_TMPL), Image::new(N, N)),
        sci_psf,
        tmpl_psf,
        stars,
        transients,
        candidates,
    }
}

/// PSF-weighted linear flux fit at a known position: (flux, σ).
fn psf_flux(d: &MaskedImage, psf: &dyn Psf, x: f64, y: f64) -> Option<(f64, f64)> {
    let size = 21;
    let (ix, iy) = (x.round(), y.round());
    let p = psf.image_at_shifted(x, y, size, x - ix, y - iy);
    let h = (size / 2) as isize;
    let (mut pd, mut pp, mut ppv) = (0.0, 0.0, 0.0);
    for j in 0..size {
        for i in 0..size {
            let (px, py) = (ix as isize + i as isize - h, iy as isize + j as isize - h);
            if px < 0 || py < 0 || px as usize >= N || py as usize >= N {
                return None;
            }
            let (px, py) = (px as usize, py as usize);
            if d.mask.get(px, py) & (mask::EDGE | mask::NO_DATA) != 0 {
                return None;
            }
            let pv = p.get(i, j) as f64;
            pd += pv * d.image.get(px, py) as f64;
            pp += pv * pv;
            ppv += pv * pv * d.variance.get(px, py) as f64;
        }
    }
    Some((pd / pp, ppv.sqrt() / pp))
}

struct Checks {
    blank_sigma: f32,
    star_ok_fraction: f64,
    n_stars: usize,
    flux_ratio: f32,
    pull_sigma: f32,
    /// Robust σ of forced-photometry pulls at blank positions.
    blank_pull_sigma: f32,
}

fn check(sc: &Scene, sub: &Subtraction<'_>) -> Checks {
    let d = &sub.difference;
    // Blank pixels: far from every star and transient.
    let mut near = Image::<u8>::new(N, N);
    for &(x, y, _) in sc.stars.iter().chain(&sc.transients) {
        let r = 14i64;
        for dy in -r..=r {
            for dx in -r..=r {
                let (px, py) = (x.round() as i64 + dx, y.round() as i64 + dy);
                if px >= 0 && py >= 0 && (px as usize) < N && (py as usize) < N {
                    near.set(px as usize, py as usize, 1);
                }
            }
        }
    }
    let mut z = Vec::new();
    for y in 0..N {
        for x in 0..N {
            if near.get(x, y) == 0 && d.mask.get(x, y) & (mask::EDGE | mask::NO_DATA) == 0 {
                z.push(d.image.get(x, y) / d.variance.get(x, y).sqrt());
            }
        }
    }
    let (_, blank_sigma) = median_and_iqr_sigma(&mut z).unwrap();
    // Stars: PSF-weighted residual flux within 3σ.
    let (mut ok, mut n) = (0, 0);
    for &(x, y, _) in &sc.stars {
        if sc
            .transients
            .iter()
            .any(|&(tx, ty, _)| (tx - x).hypot(ty - y) < 20.0)
        {
            continue;
        }
        if let Some((f, s)) = psf_flux(d, &sub.psf, x, y) {
            n += 1;
            if (f / s).abs() < 3.0 {
                ok += 1;
            }
        }
    }
    // Transients.
    let mut ratios = Vec::new();
    let mut pulls = Vec::new();
    for &(x, y, f) in &sc.transients {
        let (m, s) = psf_flux(d, &sub.psf, x, y).expect("transient inside");
        ratios.push((m / f) as f32);
        pulls.push(((m - f) / s) as f32);
    }
    let (flux_ratio, _) = median_and_iqr_sigma(&mut ratios).unwrap();
    let (_, pull_sigma) = median_and_iqr_sigma(&mut pulls).unwrap();
    // Forced PSF photometry at blank positions: the pull σ of pure noise.
    let mut blank_pulls = Vec::new();
    for j in 0..40 {
        for i in 0..40 {
            let (x, y) = (30.0 + i as f64 * 24.3, 30.0 + j as f64 * 24.3);
            if near.get(x as usize, y as usize) != 0 {
                continue;
            }
            if let Some((m, s)) = psf_flux(d, &sub.psf, x, y) {
                blank_pulls.push((m / s) as f32);
            }
        }
    }
    let n_blank = blank_pulls.len();
    let (_, blank_pull_sigma) = median_and_iqr_sigma(&mut blank_pulls).unwrap();
    eprintln!("blank forced photometry: {n_blank} positions, pull σ {blank_pull_sigma:.3}");
    Checks {
        blank_sigma,
        star_ok_fraction: ok as f64 / n as f64,
        n_stars: n,
        flux_ratio,
        pull_sigma,
        blank_pull_sigma,
    }
}

/// How well the fitted kernel at (x, y) matches the analytic one: the relative L2
/// residual of `K ⊗ P_A` against `s P_B` (the matched PSF, what the subtraction needs),
/// the kernel sum, and the kernel's second moment against the analytic `σ_B² − σ_A²`
/// (a Gaussian of that width, scaled by `s`, is the analytic matching kernel).
fn kernel_match(
    sub: &Subtraction<'_>,
    psf_b: &dyn Psf,
    psf_a: &dyn Psf,
    scale: f64,
    x: f64,
    y: f64,
) -> (f64, f64, f64) {
    let k = sub.kernel.image_at(x, y);
    let pa = psf_a.kernel(x, y, 31);
    let pb = psf_b.kernel(x, y, 31);
    let m = crop_centre(&convolve_full(&pa, &k), 31);
    let num: f64 = m
        .data()
        .iter()
        .zip(pb.data())
        .map(|(&a, &b)| (a as f64 - scale * b as f64).powi(2))
        .sum();
    let den: f64 = pb.data().iter().map(|&b| (scale * b as f64).powi(2)).sum();
    let sum = sub.kernel.sum_at(x, y);
    let s2 = psf_b.sigma_at(x, y).powi(2) - psf_a.sigma_at(x, y).powi(2);
    let m2 = second_moment(&k) / s2;
    ((num / den).sqrt(), sum / scale, m2)
}

fn assert_kernel(sub: &Subtraction<'_>, psf_b: &dyn Psf, psf_a: &dyn Psf, scale: f64) {
    for &(x, y) in &[
        (200.0, 200.0),
        (511.5, 511.5),
        (820.0, 300.0),
        (850.0, 850.0),
    ] {
        let (res, sum, m2) = kernel_match(sub, psf_b, psf_a, scale, x, y);
        eprintln!(
            "kernel at ({x}, {y}): matched-PSF residual {res:.4}, sum/truth {sum:.4}, \
             second moment/truth {m2:.3}"
        );
        assert!(res < 0.02, "{res}");
        assert!((sum - 1.0).abs() < 0.004, "{sum}");
        assert!((m2 - 1.0).abs() < 0.1, "{m2}");
    }
}

#[test]
fn template_narrower_convolves_the_template() {
    let sc = scene(11, (3.5, 4.5), (3.0, 3.0));
    // The science FWHM changes by 25% across the image: quadratic spatial variation
    // (with order 1 about 94.5% of the stars are clean instead of 99.6%).
    let cfg = SubtractConfig {
        spatial_order: 2,
        ..SubtractConfig::default()
    };
    let sub = subtract(
        &sc.science,
        &sc.sci_psf,
        &sc.template,
        &sc.tmpl_psf,
        &sc.candidates,
        &cfg,
    )
    .unwrap();
    assert_eq!(sub.convolved, ConvolvedImage::Template);
    assert!(sub.decorrelated);
    let c = check(&sc, &sub);
    // Decorrelated noise: PSF photometry on blank sky has unit pulls.
    assert!(
        (0.9..=1.15).contains(&c.blank_pull_sigma),
        "{}",
        c.blank_pull_sigma
    );
    assert_kernel(&sub, &sc.sci_psf, &sc.tmpl_psf, SCALE);
    let bg_err = [(511.5, 511.5), (150.0, 850.0), (850.0, 150.0)]
        .iter()
        .map(|&(x, y)| (sub.kernel.background_at(x, y) - background(x, y)).abs())
        .fold(0.0f64, f64::max);
    eprintln!(
        "template mode: stamps {} used {} rejected, rms {:.3}, ksum {:.4}, bg {:.3}, \
         blank σ {:.3}, stars ok {:.3} of {}, flux ratio {:.4}, pull σ {:.3}, bg err {:.3}",
        sub.n_stamps_used,
        sub.n_stamps_rejected,
        sub.stamp_residual_rms,
        sub.kernel_sum_at_centre,
        sub.background_at_centre,
        c.blank_sigma,
        c.star_ok_fraction,
        c.n_stars,
        c.flux_ratio,
        c.pull_sigma,
        bg_err
    );
    assert!((sub.kernel_sum_at_centre - SCALE).abs() < 0.003);
    assert!(bg_err < 0.3, "{bg_err}");
    assert!((0.95..=1.10).contains(&c.blank_sigma), "{}", c.blank_sigma);
    assert!(c.star_ok_fraction >= 0.95, "{}", c.star_ok_fraction);
    assert!((c.flux_ratio - 1.0).abs() < 0.02, "{}", c.flux_ratio);
    assert!((0.9..=1.2).contains(&c.pull_sigma), "{}", c.pull_sigma);
    // The difference PSF is the science PSF sharpened by the decorrelation, sum ≈ 1.
    let p = sub.psf.kernel(511.5, 511.5, 31);
    let s: f32 = p.data().iter().sum();
    assert!((s - 1.0).abs() < 1e-3, "{s}");
}

#[test]
fn science_narrower_convolves_the_science() {
    let sc = scene(23, (2.6, 3.0), (3.6, 3.6));
    let cfg = SubtractConfig::default();
    let sub = subtract(
        &sc.science,
        &sc.sci_psf,
        &sc.template,
        &sc.tmpl_psf,
        &sc.candidates,
        &cfg,
    )
    .unwrap();
    assert_eq!(sub.convolved, ConvolvedImage::Science);
    let c = check(&sc, &sub);
    assert!(
        (0.9..=1.15).contains(&c.blank_pull_sigma),
        "{}",
        c.blank_pull_sigma
    );
    assert_kernel(&sub, &sc.tmpl_psf, &sc.sci_psf, 1.0 / SCALE);
    eprintln!(
        "science mode: stamps {} used {} rejected, rms {:.3}, ksum {:.4}, bg {:.3}, \
         blank σ {:.3}, stars ok {:.3} of {}, flux ratio {:.4}, pull σ {:.3}",
        sub.n_stamps_used,
        sub.n_stamps_rejected,
        sub.stamp_residual_rms,
        sub.kernel_sum_at_centre,
        sub.background_at_centre,
        c.blank_sigma,
        c.star_ok_fraction,
        c.n_stars,
        c.flux_ratio,
        c.pull_sigma,
    );
    assert!((sub.kernel_sum_at_centre - 1.0 / SCALE).abs() < 0.003);
    // T ≈ K ⊗ S + b with b = −s · background.
    let b = sub.background_at_centre + background(511.5, 511.5) / SCALE;
    assert!(b.abs() < 0.3, "{b}");
    assert!((0.95..=1.10).contains(&c.blank_sigma), "{}", c.blank_sigma);
    assert!(c.star_ok_fraction >= 0.95, "{}", c.star_ok_fraction);
    assert!((c.flux_ratio - 1.0).abs() < 0.02, "{}", c.flux_ratio);
    assert!((0.9..=1.2).contains(&c.pull_sigma), "{}", c.pull_sigma);
}

#[test]
fn too_few_candidates_fail_typed() {
    let sc = scene(5, (3.5, 4.5), (3.0, 3.0));
    let cfg = SubtractConfig::default();
    let r = subtract(
        &sc.science,
        &sc.sci_psf,
        &sc.template,
        &sc.tmpl_psf,
        &sc.candidates[..5],
        &cfg,
    );
    assert!(
        matches!(
            r,
            Err(ScienceError::TooFewKernelStars {
                found: 5,
                needed: 15
            })
        ),
        "{r:?}"
    );
    // A NaN-filled science image does not panic either.
    let mut bad = sc.science.clone();
    bad.image.data_mut().fill(f32::NAN);
    let r = subtract(
        &bad,
        &sc.sci_psf,
        &sc.template,
        &sc.tmpl_psf,
        &sc.candidates,
        &cfg,
    );
    assert!(
        matches!(r, Err(ScienceError::TooFewKernelStars { found: 0, .. })),
        "{r:?}"
    );
}

#[test]
fn without_decorrelation_the_variance_plane_is_the_convolved_one() {
    let sc = scene(31, (3.8, 4.2), (3.0, 3.0));
    let cfg = SubtractConfig {
        decorrelate: false,
        ..SubtractConfig::default()
    };
    let sub = subtract(
        &sc.science,
        &sc.sci_psf,
        &sc.template,
        &sc.tmpl_psf,
        &sc.candidates,
        &cfg,
    )
    .unwrap();
    assert!(!sub.decorrelated && sub.decorrelation_kernel.is_none());
    let c = check(&sc, &sub);
    eprintln!(
        "no decorrelation: blank σ {:.3}, stars ok {:.3}, flux ratio {:.4}",
        c.blank_sigma, c.star_ok_fraction, c.flux_ratio
    );
    // Per-pixel noise matches var_S + K² ⊗ var_T (correlated noise, so PSF-weighted
    // pulls are not asserted here).
    assert!((0.95..=1.10).contains(&c.blank_sigma), "{}", c.blank_sigma);
    assert!((c.flux_ratio - 1.0).abs() < 0.02, "{}", c.flux_ratio);
    // The variance is below the decorrelated σ_S² + s² σ_T² (template noise smoothed).
    let v = sub.difference.variance.get(500, 500);
    assert!(
        v > VAR_SCI && v < VAR_SCI + (SCALE * SCALE) as f32 * VAR_TMPL,
        "{v}"
    );
}
