//! Synthetic difference-image scenes for tests and benchmarks: white Gaussian noise
//! with a known variance plane, point sources, dipoles, trails and cosmic-ray spikes,
//! and a spatially varying double-Gaussian PSF. Deterministic (a seeded SplitMix64
//! generator), no dependencies. Units are whatever the caller uses (nJy per pixel in
//! the pipeline).

use crate::image::{Image, MaskedImage};
use crate::psf::{GaussianPsf, Psf};

/// SplitMix64 pseudo-random numbers with Gaussian deviates (Box–Muller).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
            spare: None,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal deviate.
    pub fn gauss(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// A `w` × `h` image of white Gaussian noise of standard deviation `sigma`, variance
/// plane `sigma²`, no mask bits.
pub fn noise_image(w: usize, h: usize, sigma: f32, seed: u64) -> MaskedImage {
    let mut rng = Rng::new(seed);
    let data: Vec<f32> = (0..w * h).map(|_| rng.gauss() as f32 * sigma).collect();
    MaskedImage::from_parts(
        Image::from_vec(w, h, data),
        Image::filled(w, h, sigma * sigma),
        Image::new(w, h),
    )
}

/// Adds `flux × PSF` centred at `(x, y)` (within a `2·half + 1` box).
pub fn add_psf(img: &mut Image<f32>, psf: &dyn Psf, x: f64, y: f64, flux: f64, half: usize) {
    let (ix, iy) = (x.round(), y.round());
    let size = 2 * half + 1;
    let k = psf.image_at_shifted(x, y, size, x - ix, y - iy);
    for j in 0..size {
        let py = iy as isize + j as isize - half as isize;
        if py < 0 || py as usize >= img.height() {
            continue;
        }
        for i in 0..size {
            let px = ix as isize + i as isize - half as isize;
            if px < 0 || px as usize >= img.width() {
                continue;
            }
            *img.at_mut(px as usize, py as usize) += (flux * k.get(i, j) as f64) as f32;
        }
    }
}

/// Adds a trail: `flux` spread uniformly along a segment of `length` px at `angle_deg`
/// (counter-clockwise from +x) centred at `(x, y)`, as a sum of shifted PSFs every
/// 0.1 px.
pub fn add_trail(
    img: &mut Image<f32>,
    psf: &dyn Psf,
    x: f64,
    y: f64,
    flux: f64,
    length: f64,
    angle_deg: f64,
) {
    let n = ((length / 0.1).ceil() as usize).max(1);
    let (s, c) = angle_deg.to_radians().sin_cos();
    let half = (5.0 * psf.sigma_at(x, y)).ceil() as usize + 1;
    for k in 0..n {
        let t = -0.5 * length + length * (k as f64 + 0.5) / n as f64;
        add_psf(img, psf, x + t * c, y + t * s, flux / n as f64, half);
    }
}

/// A circular double-Gaussian PSF whose core width varies linearly across the image:
/// `σ₁(x, y) = sigma · (1 + gx·(x/w − ½) + gy·(y/h − ½))`, a halo of `halo_ratio · σ₁`
/// holding `halo_frac` of the flux.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DoubleGaussianPsf {
    /// Core σ at the image centre, pixels.
    pub sigma: f64,
    /// Halo σ / core σ.
    pub halo_ratio: f64,
    /// Fraction of the flux in the halo.
    pub halo_frac: f64,
    /// Relative gradient of σ across the image in x.
    pub gx: f64,
    /// Relative gradient of σ across the image in y.
    pub gy: f64,
    /// Image width, pixels.
    pub width: f64,
    /// Image height, pixels.
    pub height: f64,
}

impl DoubleGaussianPsf {
    /// The tests' and benches' PSF on a `w` × `h` image: core σ 1.7 px, a 10% halo at
    /// twice the width, σ growing 10% across x and shrinking 5% across y.
    pub fn demo(w: usize, h: usize) -> Self {
        Self {
            sigma: 1.7,
            halo_ratio: 2.0,
            halo_frac: 0.1,
            gx: 0.1,
            gy: -0.05,
            width: w as f64,
            height: h as f64,
        }
    }
}

/// Flux of a point source at (x, y) whose PSF-fit S/N is `snr` in white noise of σ `sn`.
pub fn flux_for_snr(p: &dyn Psf, x: f64, y: f64, snr: f64, sn: f64) -> f64 {
    let k = p.kernel(x, y, 31);
    let s2: f64 = k.data().iter().map(|&v| (v as f64).powi(2)).sum();
    snr * sn / s2.sqrt()
}

impl DoubleGaussianPsf {
    fn core_sigma(&self, x: f64, y: f64) -> f64 {
        self.sigma * (1.0 + self.gx * (x / self.width - 0.5) + self.gy * (y / self.height - 0.5))
    }
}

impl Psf for DoubleGaussianPsf {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.image_at_shifted(x, y, size, 0.0, 0.0)
    }

    fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        let s1 = self.core_sigma(x, y);
        let a = GaussianPsf { sigma: s1 }.image_at_shifted(x, y, size, dx, dy);
        let b = GaussianPsf {
            sigma: s1 * self.halo_ratio,
        }
        .image_at_shifted(x, y, size, dx, dy);
        let f = self.halo_frac as f32;
        let data = a
            .data()
            .iter()
            .zip(b.data())
            .map(|(p, q)| (1.0 - f) * p + f * q)
            .collect();
        Image::from_vec(size, size, data)
    }

    fn sigma_at(&self, x: f64, y: f64) -> f64 {
        let s1 = self.core_sigma(x, y);
        let s2 = s1 * self.halo_ratio;
        ((1.0 - self.halo_frac) * s1 * s1 + self.halo_frac * s2 * s2).sqrt()
    }
}

/// Another PSF with every width scaled by `scale` (for PSF-mismatch residuals).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaussianPsfScaled {
    /// The PSF.
    pub psf: DoubleGaussianPsf,
    /// Width factor.
    pub scale: f64,
}

impl Psf for GaussianPsfScaled {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.image_at_shifted(x, y, size, 0.0, 0.0)
    }

    fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        let p = DoubleGaussianPsf {
            sigma: self.psf.sigma * self.scale,
            ..self.psf
        };
        p.image_at_shifted(x, y, size, dx, dy)
    }

    fn sigma_at(&self, x: f64, y: f64) -> f64 {
        self.psf.sigma_at(x, y) * self.scale
    }
}

/// A benchmark scene: an `n` × `n` difference image (noise σ 30) with 90 point sources
/// (S/N 6–66, every fifth negative), 4 dipoles (a bright star moved by 0.6 px), 2
/// trails (25 px) and 4 single-pixel spikes, with matching science and template images,
/// the PSF and a TAN-SIP WCS.
#[derive(Debug)]
pub struct DemoScene {
    /// Difference image.
    pub diff: MaskedImage,
    /// Science image.
    pub science: MaskedImage,
    /// Template image.
    pub template: MaskedImage,
    /// The PSF of all three.
    pub psf: DoubleGaussianPsf,
    /// WCS of the detector.
    pub wcs: apflow_core::wcs::TanSipWcs,
}

/// Builds a [`DemoScene`] (deterministic for a given `n`).
pub fn demo_scene(n: usize) -> DemoScene {
    let psf = DoubleGaussianPsf::demo(n, n);
    let sn = 30.0f32;
    let mut diff = noise_image(n, n, sn, 1);
    let mut sci = noise_image(n, n, 25.0, 2);
    let mut tmpl = noise_image(n, n, 15.0, 3);
    let c = n as f64 / 2.0;
    let unit = {
        let k = psf.kernel(c, c, 31);
        sn as f64
            / k.data()
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
    };
    let mut rng = Rng::new(4);
    let span = n as f64 - 200.0;
    let mut pos = move || (100.0 + rng.uniform() * span, 100.0 + rng.uniform() * span);
    let mut r2 = Rng::new(5);
    for i in 0..90 {
        let (x, y) = pos();
        let snr = 6.0 + 60.0 * r2.uniform();
        let f = unit * snr * if i % 5 == 0 { -1.0 } else { 1.0 };
        add_psf(&mut diff.image, &psf, x, y, f, 15);
        add_psf(&mut sci.image, &psf, x, y, f.max(0.0), 15);
    }
    for _ in 0..4 {
        let (x, y) = pos();
        let f = unit * 500.0;
        add_psf(&mut diff.image, &psf, x + 0.3, y, f, 15);
        add_psf(&mut diff.image, &psf, x - 0.3, y, -f, 15);
        add_psf(&mut sci.image, &psf, x + 0.3, y, f, 15);
        add_psf(&mut tmpl.image, &psf, x - 0.3, y, f, 15);
    }
    for _ in 0..2 {
        let (x, y) = pos();
        add_trail(&mut diff.image, &psf, x, y, unit * 150.0, 25.0, 40.0);
    }
    for _ in 0..4 {
        let (x, y) = pos();
        *diff.image.at_mut(x as usize, y as usize) += 20.0 * sn;
    }
    let wcs = apflow_core::wcs::TanSipWcs::tan([150.0, 2.0], [c + 0.5, c + 0.5], 0.2, 10.0)
        .with_radial_distortion(1e-10);
    DemoScene {
        diff,
        science: sci,
        template: tmpl,
        psf,
        wcs,
    }
}
