//! The point-spread function: a mixture of three concentric elliptical Gaussians (a
//! core, a halo and a faint wide wing, like the double-Gaussian-plus-wing models of
//! survey pipelines), whose width and ellipticity vary smoothly across the focal
//! plane and from visit to visit.
//!
//! Galaxies are mixtures of Gaussians too (an exponential disk and a de Vaucouleurs
//! bulge, each approximated as in Hogg & Lang 2013 with coefficients fitted by
//! `sim/tools/fit_sersic_mog.py`), so a galaxy seen through the PSF is the exact
//! convolution of the two mixtures: the covariances add.
//!
//! Pixels integrate the light over their area: each Gaussian's covariance gets the
//! variance of a unit box, 1/12 pixel², which makes centre-sampling accurate.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Relative weights of the PSF's core, halo and wing.
pub const PSF_WEIGHTS: [f64; 3] = [0.78, 0.19, 0.03];
/// Widths of the halo and wing relative to the core.
pub const PSF_WIDTH_RATIOS: [f64; 3] = [1.0, 1.9, 4.5];
/// Focal-plane distance (pixels) over which the PSF's field terms are normalised.
pub const FIELD_SCALE_PX: f64 = 10_000.0;

/// The exponential (Sérsic n = 1) profile with half-light radius 1: (weight, variance).
pub const EXP_MOG: [(f64, f64); 6] = [
    (0.003_130_721, 0.008_159_747),
    (0.037_571_11, 0.054_778_82),
    (0.187_025_6, 0.232_796_2),
    (0.401_014, 0.688_569_8),
    (0.327_827_1, 1.727_565),
    (0.043_697_91, 4.162_999),
];
/// The de Vaucouleurs (Sérsic n = 4) profile with half-light radius 1, truncated beyond
/// ~8 radii: (weight, variance).
pub const DEV_MOG: [(f64, f64); 8] = [
    (0.007_256_329, 0.000_141_920_7),
    (0.040_411_92, 0.002_648_398),
    (0.096_122_71, 0.020_784_22),
    (0.148_984, 0.102_462_4),
    (0.194_904_7, 0.415_898_7),
    (0.170_567_9, 1.446_531),
    (0.181_209_6, 4.598_487),
    (0.137_874_3, 23.488_91),
];

/// A 2-D Gaussian component: weight (fraction of the flux) and covariance
/// `[σxx², σxy, σyy²]` in pixels².
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gauss {
    /// Fraction of the total flux.
    pub weight: f64,
    /// Covariance `[xx, xy, yy]`, pixels².
    pub cov: [f64; 3],
}

/// The FWHM of the mixture's round profile in units of the core σ.
pub fn fwhm_over_sigma() -> f64 {
    static CELL: OnceLock<f64> = OnceLock::new();
    *CELL.get_or_init(|| {
        let profile = |r: f64| -> f64 {
            PSF_WEIGHTS
                .iter()
                .zip(PSF_WIDTH_RATIOS)
                .map(|(w, s)| w / (s * s) * (-0.5 * r * r / (s * s)).exp())
                .sum()
        };
        let half = 0.5 * profile(0.0);
        let (mut lo, mut hi) = (0.0, 10.0);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if profile(mid) > half {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        2.0 * lo
    })
}

/// How the PSF of one visit varies across the focal plane. With `(u, w)` the
/// focal-plane position divided by [`FIELD_SCALE_PX`]:
/// `FWHM = fwhm_arcsec · (1 + size[0] u + size[1] w + size[2] (u² + w²))`,
/// `e1 = e1[0] + e1[1] u + e1[2] w`, `e2` likewise (each clamped to ±0.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PsfField {
    /// FWHM at the boresight, arcsec.
    pub fwhm_arcsec: f64,
    /// Size terms (dimensionless).
    pub size: [f64; 3],
    /// Ellipticity component e1 terms (elongation along x for e1 > 0).
    pub e1: [f64; 3],
    /// Ellipticity component e2 terms (elongation along x = y for e2 > 0).
    pub e2: [f64; 3],
}

impl PsfField {
    /// A round PSF of constant width.
    pub fn constant(fwhm_arcsec: f64) -> Self {
        Self {
            fwhm_arcsec,
            size: [0.0; 3],
            e1: [0.0; 3],
            e2: [0.0; 3],
        }
    }

    /// FWHM (arcsec) and ellipticity (e1, e2) at focal-plane position (fx, fy), pixels
    /// from the boresight, in the camera frame.
    pub fn shape_at(&self, fx: f64, fy: f64) -> (f64, f64, f64) {
        let u = fx / FIELD_SCALE_PX;
        let w = fy / FIELD_SCALE_PX;
        let f = self.fwhm_arcsec
            * (1.0 + self.size[0] * u + self.size[1] * w + self.size[2] * (u * u + w * w));
        let e1 = (self.e1[0] + self.e1[1] * u + self.e1[2] * w).clamp(-0.3, 0.3);
        let e2 = (self.e2[0] + self.e2[1] * u + self.e2[2] * w).clamp(-0.3, 0.3);
        (f.max(0.05), e1, e2)
    }

    /// The PSF at focal-plane position (fx, fy) as Gaussians in pixel units (without the
    /// pixel box), for pixel scale `scale_arcsec`. The ellipticity shears the
    /// covariance: `Σ = σ² [[1 + e1, e2], [e2, 1 − e1]]`.
    pub fn at(&self, fx: f64, fy: f64, scale_arcsec: f64) -> [Gauss; 3] {
        let (fwhm, e1, e2) = self.shape_at(fx, fy);
        let sigma = fwhm / scale_arcsec / fwhm_over_sigma();
        let mut out = [Gauss {
            weight: 0.0,
            cov: [0.0; 3],
        }; 3];
        for (k, g) in out.iter_mut().enumerate() {
            let s2 = (sigma * PSF_WIDTH_RATIOS[k]).powi(2);
            // Only the core and halo carry the ellipticity; the wing is scattered light.
            let (a, b) = if k < 2 { (e1, e2) } else { (0.0, 0.0) };
            *g = Gauss {
                weight: PSF_WEIGHTS[k],
                cov: [s2 * (1.0 + a), s2 * b, s2 * (1.0 - a)],
            };
        }
        out
    }
}

/// The Gaussians of a galaxy (disk + bulge) with half-light radii in pixels, disk axis
/// ratio `q` and position angle `pa_rad` of the major axis from +x towards +y; the
/// bulge has axis ratio `(1 + q) / 2`. `bulge_fraction` of the flux is in the bulge.
pub fn galaxy_gaussians(
    disk_re_px: f64,
    bulge_re_px: f64,
    bulge_fraction: f64,
    q: f64,
    pa_rad: f64,
) -> Vec<Gauss> {
    let shape = |re: f64, q: f64| -> [f64; 3] {
        // Major axis a = re / √q and minor b = re √q keep the circularised radius re.
        let (a2, b2) = (re * re / q, re * re * q);
        let (s, c) = pa_rad.sin_cos();
        [
            a2 * c * c + b2 * s * s,
            (a2 - b2) * s * c,
            a2 * s * s + b2 * c * c,
        ]
    };
    let mut out = Vec::with_capacity(14);
    let exp_sum: f64 = EXP_MOG.iter().map(|g| g.0).sum();
    let dev_sum: f64 = DEV_MOG.iter().map(|g| g.0).sum();
    let disk = shape(disk_re_px, q);
    for (w, v) in EXP_MOG {
        out.push(Gauss {
            weight: (1.0 - bulge_fraction) * w / exp_sum,
            cov: [disk[0] * v, disk[1] * v, disk[2] * v],
        });
    }
    let bulge = shape(bulge_re_px, 0.5 * (1.0 + q));
    for (w, v) in DEV_MOG {
        out.push(Gauss {
            weight: bulge_fraction * w / dev_sum,
            cov: [bulge[0] * v, bulge[1] * v, bulge[2] * v],
        });
    }
    out.retain(|g| g.weight > 0.0);
    out
}

/// Convolves two Gaussian mixtures (the covariances add, the weights multiply).
pub fn convolve(a: &[Gauss], b: &[Gauss]) -> Vec<Gauss> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            out.push(Gauss {
                weight: x.weight * y.weight,
                cov: [
                    x.cov[0] + y.cov[0],
                    x.cov[1] + y.cov[1],
                    x.cov[2] + y.cov[2],
                ],
            });
        }
    }
    out
}

/// Adds `flux` (any unit per image) spread as the mixture `gs` centred at (xc, yc)
/// (0-based pixels) into the row-major image `img` of `width × height`, including the
/// 1/12 px² pixel box. Each component is drawn out to where it falls below
/// `floor` per pixel (same unit as `flux`), so faint sources cost a few pixels and
/// bright ones get their wings.
///
/// The Gaussian is evaluated with an exact multiplicative recurrence along each row
/// (two multiplications per pixel instead of an `exp`).
#[allow(clippy::too_many_arguments)]
pub fn add_mixture(
    img: &mut [f32],
    width: usize,
    height: usize,
    xc: f64,
    yc: f64,
    flux: f64,
    gs: &[Gauss],
    floor: f64,
) {
    for g in gs {
        let amp_total = flux * g.weight;
        if amp_total <= 0.0 {
            continue;
        }
        let sxx = g.cov[0] + 1.0 / 12.0;
        let syy = g.cov[2] + 1.0 / 12.0;
        let sxy = g.cov[1];
        let det = sxx * syy - sxy * sxy;
        if det <= 0.0 {
            continue;
        }
        let peak = amp_total / (std::f64::consts::TAU * det.sqrt());
        if peak < floor {
            continue;
        }
        // Inverse covariance.
        let (ia, ib, ic) = (syy / det, -sxy / det, sxx / det);
        // Radius (in Mahalanobis units) where the component falls to the floor.
        let m2 = 2.0 * (peak / floor).ln();
        let rx = (m2 * sxx).sqrt();
        let ry = (m2 * syy).sqrt();
        let x0 = ((xc - rx).floor().max(0.0)) as i64;
        let x1 = ((xc + rx).ceil().min(width as f64 - 1.0)) as i64;
        let y0 = ((yc - ry).floor().max(0.0)) as i64;
        let y1 = ((yc + ry).ceil().min(height as f64 - 1.0)) as i64;
        if x0 > x1 || y0 > y1 {
            continue;
        }
        let step = (-ia).exp();
        for y in y0..=y1 {
            let dy = y as f64 - yc;
            let dx0 = x0 as f64 - xc;
            let q0 = ia * dx0 * dx0 + 2.0 * ib * dx0 * dy + ic * dy * dy;
            let mut val = peak * (-0.5 * q0).exp();
            // ratio between consecutive pixels: exp(-0.5 (ia (2 dx + 1) + 2 ib dy))
            let mut ratio = (-0.5 * (ia * (2.0 * dx0 + 1.0) + 2.0 * ib * dy)).exp();
            let row = &mut img[y as usize * width..(y as usize + 1) * width];
            for px in &mut row[x0 as usize..=x1 as usize] {
                *px += val as f32;
                val *= ratio;
                ratio *= step;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enclosed(mog: &[(f64, f64)], r: f64) -> f64 {
        mog.iter()
            .map(|(w, v)| w * (1.0 - (-0.5 * r * r / v).exp()))
            .sum::<f64>()
            / mog.iter().map(|(w, _)| w).sum::<f64>()
    }

    #[test]
    fn galaxy_mixtures_have_unit_half_light_radius_and_sersic_shape() {
        assert!((enclosed(&EXP_MOG, 1.0) - 0.5).abs() < 0.01);
        assert!((enclosed(&DEV_MOG, 1.0) - 0.5).abs() < 0.03);
        // Exponential profile exp(-b (r - 1)) relative to r = 1 within 3% out to 4 r_e.
        let prof = |r: f64| -> f64 {
            EXP_MOG
                .iter()
                .map(|(w, v)| w / v * (-0.5 * r * r / v).exp())
                .sum()
        };
        for r in [0.1, 0.3, 0.5, 1.5, 2.0, 3.0, 4.0] {
            let model = prof(r) / prof(1.0);
            let sersic = (-1.678_35 * (r - 1.0)).exp();
            assert!(
                (model / sersic - 1.0).abs() < 0.03,
                "r={r}: {model} vs {sersic}"
            );
        }
    }

    #[test]
    fn mixture_fwhm_matches_request() {
        let f = PsfField::constant(0.8);
        let g = f.at(0.0, 0.0, 0.2);
        let mut img = vec![0f32; 101 * 101];
        add_mixture(&mut img, 101, 101, 50.0, 50.0, 1.0e6, &g, 1e-6);
        // Half maximum along the x axis through the centre (including the pixel box).
        let row = &img[50 * 101..51 * 101];
        let peak = row[50];
        let mut x = 50;
        while row[x] > 0.5 * peak {
            x += 1;
        }
        // interpolate
        let frac = (row[x - 1] - 0.5 * peak) / (row[x - 1] - row[x]);
        let half_width = (x - 1) as f32 + frac - 50.0;
        let fwhm_px = 2.0 * half_width;
        assert!((fwhm_px - 4.0).abs() < 0.15, "fwhm {fwhm_px} px, want 4.0");
    }

    #[test]
    fn rendered_flux_and_centroid_are_exact() {
        let f = PsfField {
            fwhm_arcsec: 0.9,
            size: [0.0; 3],
            e1: [0.1, 0.0, 0.0],
            e2: [-0.05, 0.0, 0.0],
        };
        let g = f.at(0.0, 0.0, 0.2);
        let (w, h) = (128usize, 128usize);
        let mut img = vec![0f32; w * h];
        let (xc, yc) = (63.3, 60.77);
        add_mixture(&mut img, w, h, xc, yc, 1.0e5, &g, 1e-4);
        let (mut s, mut sx, mut sy) = (0.0f64, 0.0f64, 0.0f64);
        for y in 0..h {
            for x in 0..w {
                let v = f64::from(img[y * w + x]);
                s += v;
                sx += v * x as f64;
                sy += v * y as f64;
            }
        }
        assert!((s / 1.0e5 - 1.0).abs() < 1e-3, "flux {s}");
        assert!((sx / s - xc).abs() < 1e-3 && (sy / s - yc).abs() < 1e-3);
    }

    #[test]
    fn galaxy_convolution_conserves_flux() {
        let psf = PsfField::constant(0.7).at(0.0, 0.0, 0.2);
        let gal = galaxy_gaussians(5.0, 1.5, 0.3, 0.5, 0.7);
        let conv = convolve(&gal, &psf);
        let total: f64 = conv.iter().map(|g| g.weight).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let (w, h) = (256usize, 256usize);
        let mut img = vec![0f32; w * h];
        add_mixture(&mut img, w, h, 128.0, 128.0, 1.0e5, &conv, 1e-4);
        let s: f64 = img.iter().map(|&v| f64::from(v)).sum();
        assert!((s / (1.0e5 * total) - 1.0).abs() < 5e-3, "{s}");
    }

    #[test]
    fn field_variation_changes_width_and_ellipticity() {
        let f = PsfField {
            fwhm_arcsec: 0.8,
            size: [0.05, -0.02, 0.03],
            e1: [0.02, 0.03, 0.0],
            e2: [0.0, 0.0, -0.04],
        };
        let (f0, e10, e20) = f.shape_at(0.0, 0.0);
        let (f1, e11, e21) = f.shape_at(10_000.0, 10_000.0);
        assert!((f0 - 0.8).abs() < 1e-12);
        assert!((f1 - 0.8 * (1.0 + 0.05 - 0.02 + 0.06)).abs() < 1e-12);
        assert!((e10 - 0.02).abs() < 1e-12 && (e11 - 0.05).abs() < 1e-12);
        assert!(e20.abs() < 1e-12 && (e21 + 0.04).abs() < 1e-12);
    }
}
