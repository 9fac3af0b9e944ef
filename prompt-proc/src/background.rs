//! Sky background: a coarse mesh of robust sky levels, interpolated to full resolution.
//!
//! Algorithm (after SExtractor, Bertin & Arnouts 1996, and the LSST `SubtractBackground`
//! task): the image is cut into `cell_size`² cells; in each cell the unmasked pixels
//! (every `sample_stride`-th pixel in x and y, for speed) are iteratively σ-clipped
//! about their median (σ from the interquartile range). The cell's sky level is
//! SExtractor's mode estimate `2.5 median − 1.5 mean` of the clipped pixels (it
//! corrects the upward bias faint sources give the median), or the median when the
//! clipped distribution is too skewed; the clipped IQR σ is its noise. Cells with too
//! few usable pixels are filled from the mean of their valid neighbours (repeatedly,
//! outwards). The mesh is then smoothed with a 3 × 3 median filter (which removes cells
//! spoiled by a bright star or a large galaxy) and interpolated **bilinearly** between
//! cell centres, with linear extrapolation beyond the outermost centres so that a
//! gradient is followed to the image edge.
//!
//! Units: those of the image (electrons after ISR).

use serde::Deserialize;

use crate::error::ScienceError;
use crate::image::{MaskedImage, mask};

/// Tunables of [`estimate`].
#[derive(Clone, Debug, Deserialize, PartialEq, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConfig {
    /// Side of a mesh cell, pixels.
    pub cell_size: usize,
    /// Use every `sample_stride`-th pixel in x and y for the statistics (1 = all).
    pub sample_stride: usize,
    /// Clipping threshold, σ.
    pub clip_sigma: f32,
    /// Clipping iterations.
    pub clip_iterations: usize,
    /// A cell is usable when at least this fraction of its sampled pixels is unmasked.
    pub min_good_fraction: f64,
    /// Mask planes whose pixels are ignored.
    pub ignore_planes: u32,
    /// Apply a 3 × 3 median filter to the mesh before interpolation.
    pub median_filter: bool,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self {
            cell_size: 256,
            sample_stride: 4,
            clip_sigma: 3.0,
            clip_iterations: 2,
            min_good_fraction: 0.25,
            ignore_planes: mask::UNUSABLE | mask::DETECTED | mask::STREAK,
            median_filter: true,
        }
    }
}

/// A fitted background: the mesh and its interpolation.
#[derive(Clone, Debug, PartialEq)]
pub struct Background {
    width: usize,
    height: usize,
    cell_size: usize,
    /// Mesh columns.
    pub nx: usize,
    /// Mesh rows.
    pub ny: usize,
    /// Sky level per cell after filling and smoothing (row-major `ny × nx`), image units.
    pub mesh: Vec<f32>,
    /// Clipped σ per cell (row-major), image units; NaN-free after filling.
    pub mesh_sigma: Vec<f32>,
    /// Whether each cell had enough usable pixels (before filling).
    pub mesh_valid: Vec<bool>,
    /// x of the centre of each mesh column, pixels.
    cx: Vec<f64>,
    /// y of the centre of each mesh row, pixels.
    cy: Vec<f64>,
}

/// Median and IQR σ of finite `values` (reordered): one selection for the median,
/// then one in each half for the quartiles.
fn median_iqr(values: &mut [f32]) -> Option<(f32, f32)> {
    let n = values.len();
    if n < 3 {
        return None;
    }
    let k = n / 2;
    let (lo, med, hi) = values.select_nth_unstable_by(k, f32::total_cmp);
    let med = *med;
    let q1k = (n - 1) / 4;
    let q1 = *lo
        .select_nth_unstable_by(q1k.min(lo.len() - 1), f32::total_cmp)
        .1;
    let q3k = (3 * (n - 1) / 4).saturating_sub(k + 1);
    let q3 = if hi.is_empty() {
        med
    } else {
        *hi.select_nth_unstable_by(q3k.min(hi.len() - 1), f32::total_cmp)
            .1
    };
    Some((med, (q3 - q1) / 1.349))
}

fn clipped_stats(values: &mut Vec<f32>, k: f32, iters: usize) -> Option<(f32, f32)> {
    values.retain(|v| v.is_finite());
    let (mut med, mut sig) = median_iqr(values)?;
    for _ in 0..iters {
        let (lo, hi) = (med - k * sig, med + k * sig);
        let before = values.len();
        values.retain(|&v| v >= lo && v <= hi);
        if values.len() < 3 {
            break;
        }
        let (m, s) = median_iqr(values)?;
        med = m;
        sig = s;
        if values.len() == before {
            break;
        }
    }
    // SExtractor's mode estimate corrects the upward skew faint sources give the
    // median; it is used unless the distribution is too skewed for it to be reliable.
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len().max(1) as f64;
    let mean = mean as f32;
    if (mean - med).abs() < 0.3 * sig {
        med = 2.5 * med - 1.5 * mean;
    }
    Some((med, sig))
}

/// Index and fraction for linear interpolation/extrapolation in the centres `c`.
#[inline]
fn locate(c: &[f64], x: f64) -> (usize, f64) {
    if c.len() == 1 {
        return (0, 0.0);
    }
    let step = c[1] - c[0];
    let k = (((x - c[0]) / step).floor() as isize).clamp(0, c.len() as isize - 2) as usize;
    (k, (x - c[k]) / step)
}

/// Estimates the background of `img` (see the module docs).
///
/// Errors: [`ScienceError::NanImage`] when more than half the pixels are not finite,
/// [`ScienceError::Saturated`] when no cell has enough usable pixels and most are
/// saturated, [`ScienceError::BadInput`] for an empty image or zero cell size.
pub fn estimate(img: &MaskedImage, cfg: &BackgroundConfig) -> Result<Background, ScienceError> {
    let (w, h) = img.dims();
    if w == 0 || h == 0 || cfg.cell_size == 0 {
        return Err(ScienceError::BadInput(
            "empty image or zero background cell size".into(),
        ));
    }
    let stride = cfg.sample_stride.max(1);
    let cs = cfg.cell_size;
    let nx = w.div_ceil(cs);
    let ny = h.div_ceil(cs);
    let mut mesh = vec![f32::NAN; nx * ny];
    let mut sigma = vec![f32::NAN; nx * ny];
    let mut valid = vec![false; nx * ny];
    let mut values: Vec<f32> = Vec::with_capacity((cs / stride + 1).pow(2));
    let (mut n_nan, mut n_sat, mut n_sampled) = (0usize, 0usize, 0usize);
    let off = stride / 2;
    for j in 0..ny {
        let y0 = j * cs;
        let y1 = (y0 + cs).min(h);
        for i in 0..nx {
            let x0 = i * cs;
            let x1 = (x0 + cs).min(w);
            values.clear();
            let mut total = 0usize;
            for y in (y0 + off.min(y1 - y0 - 1)..y1).step_by(stride) {
                let row = img.image.row(y);
                let mrow = img.mask.row(y);
                for x in (x0 + off.min(x1 - x0 - 1)..x1).step_by(stride) {
                    total += 1;
                    let v = row[x];
                    let m = mrow[x];
                    if !v.is_finite() {
                        n_nan += 1;
                        continue;
                    }
                    if m & mask::SAT != 0 {
                        n_sat += 1;
                    }
                    if m & cfg.ignore_planes == 0 {
                        values.push(v);
                    }
                }
            }
            n_sampled += total;
            if (values.len() as f64) < cfg.min_good_fraction * total as f64 || values.len() < 5 {
                continue;
            }
            if let Some((m, s)) = clipped_stats(&mut values, cfg.clip_sigma, cfg.clip_iterations) {
                mesh[j * nx + i] = m;
                sigma[j * nx + i] = s;
                valid[j * nx + i] = true;
            }
        }
    }
    let frac = |n: usize| 100.0 * n as f64 / n_sampled.max(1) as f64;
    if frac(n_nan) > 50.0 {
        return Err(ScienceError::NanImage {
            fraction: frac(n_nan),
        });
    }
    if !valid.iter().any(|&v| v) {
        if frac(n_sat) > 50.0 {
            return Err(ScienceError::Saturated {
                fraction: frac(n_sat),
            });
        }
        return Err(ScienceError::BadInput(
            "no background cell has enough usable pixels".into(),
        ));
    }
    fill_invalid(&mut mesh, nx, ny);
    fill_invalid(&mut sigma, nx, ny);
    if cfg.median_filter && nx * ny > 1 {
        mesh = median3(&mesh, nx, ny);
    }
    let cx = (0..nx)
        .map(|i| {
            let x0 = i * cs;
            0.5 * (x0 + (x0 + cs).min(w)) as f64 - 0.5
        })
        .collect();
    let cy = (0..ny)
        .map(|j| {
            let y0 = j * cs;
            0.5 * (y0 + (y0 + cs).min(h)) as f64 - 0.5
        })
        .collect();
    Ok(Background {
        width: w,
        height: h,
        cell_size: cs,
        nx,
        ny,
        mesh,
        mesh_sigma: sigma,
        mesh_valid: valid,
        cx,
        cy,
    })
}

/// Replaces NaN cells by the mean of their finite 8-neighbours, repeatedly.
fn fill_invalid(v: &mut [f32], nx: usize, ny: usize) {
    loop {
        let missing: Vec<usize> = (0..v.len()).filter(|&k| !v[k].is_finite()).collect();
        if missing.is_empty() || missing.len() == v.len() {
            return;
        }
        let snapshot = v.to_vec();
        for &k in &missing {
            let (i, j) = ((k % nx) as isize, (k / nx) as isize);
            let (mut s, mut n) = (0.0f32, 0);
            for dj in -1..=1 {
                for di in -1..=1 {
                    let (a, b) = (i + di, j + dj);
                    if a >= 0 && b >= 0 && (a as usize) < nx && (b as usize) < ny {
                        let u = snapshot[b as usize * nx + a as usize];
                        if u.is_finite() {
                            s += u;
                            n += 1;
                        }
                    }
                }
            }
            if n > 0 {
                v[k] = s / n as f32;
            }
        }
    }
}

/// 3 × 3 median filter; beyond the mesh edges the neighbourhood is completed by linear
/// extrapolation (`2 v[edge] − v[inner]`), so a gradient is not biased at the borders.
fn median3(v: &[f32], nx: usize, ny: usize) -> Vec<f32> {
    let at = |i: isize, j: isize| -> f32 {
        let clampi = |k: isize, n: usize| -> (usize, Option<usize>) {
            if k < 0 {
                (0, (n > 1).then_some(1))
            } else if k as usize >= n {
                (n - 1, (n > 1).then(|| n - 2))
            } else {
                (k as usize, None)
            }
        };
        let (ci, ri) = clampi(i, nx);
        let (cj, rj) = clampi(j, ny);
        let base = v[cj * nx + ci];
        let mut out = base;
        if let Some(r) = ri {
            out += base - v[cj * nx + r];
        }
        if let Some(r) = rj {
            out += base - v[r * nx + ci];
        }
        out
    };
    let mut out = v.to_vec();
    let mut buf = [0f32; 9];
    for j in 0..ny as isize {
        for i in 0..nx as isize {
            let mut k = 0;
            for b in -1..=1 {
                for a in -1..=1 {
                    buf[k] = at(i + a, j + b);
                    k += 1;
                }
            }
            buf.select_nth_unstable_by(4, f32::total_cmp);
            out[j as usize * nx + i as usize] = buf[4];
        }
    }
    out
}

impl Background {
    /// Image size `(width, height)` the background was fitted on.
    pub fn dims(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Side of a mesh cell, pixels.
    pub fn cell_size(&self) -> usize {
        self.cell_size
    }

    /// Interpolated background at pixel `(x, y)` (image units).
    pub fn value_at(&self, x: f64, y: f64) -> f64 {
        let (i, fx) = locate(&self.cx, x);
        let (j, fy) = locate(&self.cy, y);
        let at = |a: usize, b: usize| f64::from(self.mesh[b * self.nx + a]);
        let i1 = (i + 1).min(self.nx - 1);
        let j1 = (j + 1).min(self.ny - 1);
        let r0 = at(i, j) + fx * (at(i1, j) - at(i, j));
        let r1 = at(i, j1) + fx * (at(i1, j1) - at(i, j1));
        r0 + fy * (r1 - r0)
    }

    /// Median of the cells' clipped σ (image units): the typical sky noise per pixel.
    pub fn median_sigma(&self) -> f32 {
        let mut s = self.mesh_sigma.clone();
        crate::image::median_and_iqr_sigma(&mut s).map_or(f32::NAN, |v| v.0)
    }

    /// Fills `row` (length `width`) with the background of image row `y`.
    pub fn row_into(&self, y: usize, row: &mut [f32]) {
        let (j, fy) = locate(&self.cy, y as f64);
        let j1 = (j + 1).min(self.ny - 1);
        // Background along the mesh-column centres at this row.
        let col: Vec<f64> = (0..self.nx)
            .map(|i| {
                let a = f64::from(self.mesh[j * self.nx + i]);
                let b = f64::from(self.mesh[j1 * self.nx + i]);
                a + fy * (b - a)
            })
            .collect();
        if self.nx == 1 {
            row.fill(col[0] as f32);
            return;
        }
        let step = self.cx[1] - self.cx[0];
        let mut x = 0usize;
        while x < row.len() {
            let (i, _) = locate(&self.cx, x as f64);
            // Pixels served by interval i: up to the next centre (or the end).
            let end = if i + 2 >= self.nx {
                row.len()
            } else {
                (self.cx[i + 1].floor() as usize + 1).min(row.len())
            };
            let slope = (col[i + 1] - col[i]) / step;
            let mut v = col[i] + (x as f64 - self.cx[i]) * slope;
            for r in &mut row[x..end.max(x + 1)] {
                *r = v as f32;
                v += slope;
            }
            x = end.max(x + 1);
        }
    }

    /// Subtracts the background from the image plane of `img` (same size).
    pub fn subtract_from(&self, img: &mut MaskedImage) {
        let w = img.width().min(self.width);
        let mut buf = vec![0f32; self.width];
        for y in 0..img.height().min(self.height) {
            self.row_into(y, &mut buf);
            for (p, b) in img.image.row_mut(y)[..w].iter_mut().zip(&buf) {
                *p -= *b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn sky(x: f64, y: f64) -> f64 {
        1000.0 + 0.05 * x - 0.03 * y + 2e-5 * (x - 500.0) * (y - 300.0)
    }

    #[test]
    fn recovers_a_gradient_under_stars_and_noise() {
        let n = 1024;
        let sigma = 30.0f32;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let noise = Normal::new(0.0f32, sigma).unwrap();
        let mut img = MaskedImage::new(n, n);
        for y in 0..n {
            for x in 0..n {
                img.image
                    .set(x, y, sky(x as f64, y as f64) as f32 + noise.sample(&mut r));
            }
        }
        img.variance.data_mut().fill(sigma * sigma);
        // 400 stars, Gaussian σ 1.6 px, fluxes up to 2e6 e-.
        let psf = crate::psf::GaussianPsf { sigma: 1.6 };
        use rand::Rng;
        for _ in 0..400 {
            let (x, y) = (r.random_range(10..n - 10), r.random_range(10..n - 10));
            let f = 10f32.powf(r.random_range(3.0..6.3));
            let k = crate::psf::Psf::kernel(&psf, 0.0, 0.0, 15);
            for j in 0..15 {
                for i in 0..15 {
                    *img.image.at_mut(x + i - 7, y + j - 7) += f * k.get(i, j);
                }
            }
        }
        // A masked block must be ignored.
        for y in 600..700 {
            for x in 100..260 {
                img.image.set(x, y, 1e6);
                img.mask.set(x, y, mask::SAT);
            }
        }
        let bg = estimate(&img, &BackgroundConfig::default()).unwrap();
        let (mut s2, mut cnt, mut worst) = (0.0, 0, 0.0f64);
        for y in (0..n).step_by(7) {
            for x in (0..n).step_by(7) {
                let d = bg.value_at(x as f64, y as f64) - sky(x as f64, y as f64);
                s2 += d * d;
                cnt += 1;
                worst = worst.max(d.abs());
            }
        }
        let rms = (s2 / cnt as f64).sqrt();
        eprintln!("background rms error {rms:.3} (σ {sigma}), worst {worst:.3}");
        assert!(rms < 0.05 * sigma as f64, "rms {rms}");
        assert!(worst < 0.25 * sigma as f64, "worst {worst}");
        assert!((bg.median_sigma() - sigma).abs() < 0.05 * sigma);
        // subtract_from agrees with value_at.
        let mut sub = img.clone();
        bg.subtract_from(&mut sub);
        for &(x, y) in &[(0, 0), (1023, 5), (517, 800), (64, 64)] {
            let want = img.image.get(x, y) as f64 - bg.value_at(x as f64, y as f64);
            assert!((sub.image.get(x, y) as f64 - want).abs() < 0.01);
        }
    }

    #[test]
    fn nan_and_saturated_images_fail_typed() {
        let mut img = MaskedImage::new(256, 256);
        img.image.data_mut().fill(f32::NAN);
        assert!(matches!(
            estimate(&img, &BackgroundConfig::default()),
            Err(ScienceError::NanImage { .. })
        ));
        let mut img = MaskedImage::new(256, 256);
        img.mask.data_mut().fill(mask::SAT);
        assert!(matches!(
            estimate(&img, &BackgroundConfig::default()),
            Err(ScienceError::Saturated { .. })
        ));
    }
}
