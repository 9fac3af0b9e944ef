//! Detection and measurement of bright sources on a background-subtracted image, for
//! PSF modelling, astrometry and photometric calibration.
//!
//! Algorithm:
//! 1. **Candidates**: local maxima (8-connected, ties broken in raster order) of pixels
//!    above `pixel_threshold_sigma` × √variance, ignoring unusable pixels except
//!    saturated ones (saturated stars are found and flagged).
//! 2. **Detection**: each candidate's matched-filter significance
//!    ν = Σ g v / √(Σ g² var) with a circular Gaussian `g` of σ `smoothing_sigma`
//!    (the light smoothing, evaluated at the peak only); candidates with
//!    ν ≥ `threshold_sigma` are detections. Detections closer than `merge_radius_px`
//!    to a brighter one are dropped.
//! 3. **Measurement**: adaptive Gaussian-weighted moments (Bernstein & Jarvis 2002;
//!    the weight is round and iterated to the source's size, centroid as SExtractor's
//!    `XWIN`), deconvolved from the weight, give the centroid, its error and the
//!    second moments `ixx, iyy, ixy` (pixel², the pixel box included); the aperture
//!    flux is summed in a circle of `aperture_sigmas` × the median size (with linear
//!    edge weights), its error from the variance plane.
//! 4. **Flags**: saturated, near the edge, masked pixels in the aperture, blended (a
//!    neighbouring candidate brighter than `blend_peak_ratio` × this peak within
//!    `isolation_radius_px`).
//!
//! Units: image units (electrons after ISR), pixels 0-based.

use serde::Deserialize;

use crate::image::{MaskedImage, mask};

/// Bits of [`Star::flags`].
pub mod flags {
    /// A saturated pixel lies in the aperture.
    pub const SATURATED: u32 = 1 << 0;
    /// The aperture or measurement window crosses the image edge (or `EDGE` pixels).
    pub const EDGE: u32 = 1 << 1;
    /// Other unusable pixels (bad, cosmic ray, no data) lie in the aperture.
    pub const MASKED: u32 = 1 << 2;
    /// A neighbouring peak is within the isolation radius.
    pub const BLENDED: u32 = 1 << 3;
    /// The adaptive moments did not converge (size or centroid unreliable).
    pub const BAD_SHAPE: u32 = 1 << 4;
    /// Flags that exclude a star from PSF modelling and calibration.
    pub const ANY_BAD: u32 = SATURATED | EDGE | MASKED | BLENDED | BAD_SHAPE;
}

/// A detected bright source.
#[derive(Clone, Debug, PartialEq)]
pub struct Star {
    /// Centroid x, pixels (0-based).
    pub x: f64,
    /// Centroid y, pixels.
    pub y: f64,
    /// 1σ error of `x`, pixels.
    pub x_err: f64,
    /// 1σ error of `y`, pixels.
    pub y_err: f64,
    /// Aperture flux, image units.
    pub flux: f64,
    /// Error of the aperture flux.
    pub flux_err: f64,
    /// PSF flux (NaN until [`crate::psf_model::measure_psf_flux`]).
    pub psf_flux: f64,
    /// Error of the PSF flux (NaN until measured).
    pub psf_flux_err: f64,
    /// Second moment ⟨dx²⟩, pixels².
    pub ixx: f64,
    /// Second moment ⟨dy²⟩, pixels².
    pub iyy: f64,
    /// Second moment ⟨dx dy⟩, pixels².
    pub ixy: f64,
    /// Highest pixel value near the centroid, image units.
    pub peak: f64,
    /// Detection significance of the smoothed peak, σ.
    pub significance: f64,
    /// Flags, see [`flags`].
    pub flags: u32,
    /// No neighbour within the isolation radius (`flags & BLENDED == 0`).
    pub isolated: bool,
}

impl Star {
    /// Gaussian-equivalent size √((ixx + iyy) / 2), pixels.
    pub fn size(&self) -> f64 {
        (0.5 * (self.ixx + self.iyy)).max(0.0).sqrt()
    }

    /// Aperture signal-to-noise ratio.
    pub fn snr(&self) -> f64 {
        if self.flux_err > 0.0 {
            self.flux / self.flux_err
        } else {
            0.0
        }
    }

    /// Whether no flag in `flags::ANY_BAD` is set.
    pub fn is_clean(&self) -> bool {
        self.flags & flags::ANY_BAD == 0
    }
}

/// Tunables of [`detect_stars`].
#[derive(Clone, Debug, Deserialize, PartialEq, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StarConfig {
    /// Detection threshold on the smoothed peak's significance, σ.
    pub threshold_sigma: f64,
    /// Candidate peaks must have a pixel above this many σ of its own noise.
    pub pixel_threshold_sigma: f64,
    /// σ of the Gaussian smoothing (matched filter) used for the significance, pixels.
    pub smoothing_sigma: f64,
    /// Detections within this distance of a brighter one are dropped, pixels.
    pub merge_radius_px: f64,
    /// Radius within which a neighbour peak makes a star blended, pixels.
    pub isolation_radius_px: f64,
    /// A neighbour counts when its peak exceeds this fraction of the star's peak.
    pub blend_peak_ratio: f64,
    /// Aperture radius in units of the median source size σ (clamped to 2.5–25 px);
    /// ignored when `aperture_radius_px` > 0.
    pub aperture_sigmas: f64,
    /// Fixed aperture radius, pixels (0 = automatic).
    pub aperture_radius_px: f64,
    /// Largest half-width of the moments window, pixels.
    pub max_window_px: usize,
    /// Keep at most this many detections (the most significant).
    pub max_stars: usize,
}

impl Default for StarConfig {
    fn default() -> Self {
        Self {
            threshold_sigma: 15.0,
            pixel_threshold_sigma: 5.0,
            smoothing_sigma: 1.5,
            merge_radius_px: 3.0,
            isolation_radius_px: 12.0,
            blend_peak_ratio: 0.02,
            aperture_sigmas: 4.0,
            aperture_radius_px: 0.0,
            max_window_px: 15,
            max_stars: 20_000,
        }
    }
}

/// Pixels that are not used for measurement (saturated ones are, but flagged).
const SKIP: u32 = mask::BAD | mask::CR | mask::NO_DATA;

#[derive(Clone, Copy)]
struct Candidate {
    x: usize,
    y: usize,
    peak: f32,
    /// Noise σ of the peak pixel.
    sig: f32,
}

fn find_candidates(img: &MaskedImage, t: f64) -> Vec<Candidate> {
    let (w, h) = img.dims();
    let t2 = (t * t) as f32;
    // A pixel can only pass `v² > t² var` if `v > t √var_floor`: a first cut that reads
    // the image plane only. The floor is half the median variance (sampled), so only
    // pixels with an unusually low variance could be missed.
    let mut sample: Vec<f32> = img.variance.data().iter().step_by(997).copied().collect();
    let floor = crate::image::median_and_iqr_sigma(&mut sample).map_or(0.0, |v| 0.5 * v.0.max(0.0));
    let cut = (t as f32) * floor.sqrt();
    let data = img.image.data();
    let mut out = Vec::new();
    for y in 0..h {
        let row = img.image.row(y);
        let vrow = img.variance.row(y);
        for (x, &v) in row.iter().enumerate() {
            // NaN fails `v > cut` and is skipped.
            if v.partial_cmp(&cut) != Some(std::cmp::Ordering::Greater) || v * v <= t2 * vrow[x] {
                continue;
            }
            if img.mask.get(x, y) & SKIP != 0 {
                continue;
            }
            // Local maximum: > earlier neighbours in raster order, >= later ones.
            let mut is_max = true;
            'n: for dy in -1isize..=1 {
                let yy = y as isize + dy;
                if yy < 0 || yy >= h as isize {
                    continue;
                }
                for dx in -1isize..=1 {
                    let xx = x as isize + dx;
                    if (dx == 0 && dy == 0) || xx < 0 || xx >= w as isize {
                        continue;
                    }
                    let u = data[yy as usize * w + xx as usize];
                    let earlier = dy < 0 || (dy == 0 && dx < 0);
                    if (earlier && u >= v) || (!earlier && u > v) {
                        is_max = false;
                        break 'n;
                    }
                }
            }
            if is_max {
                out.push(Candidate {
                    x,
                    y,
                    peak: v,
                    sig: vrow[x].max(0.0).sqrt(),
                });
            }
        }
    }
    out
}

/// A uniform grid of point indices for neighbour queries.
pub(crate) struct Grid {
    cell: f64,
    nx: usize,
    ny: usize,
    cells: Vec<Vec<usize>>,
}

impl Grid {
    pub(crate) fn new(points: impl Iterator<Item = (f64, f64)>, w: f64, h: f64, cell: f64) -> Self {
        let nx = ((w / cell).ceil() as usize).max(1);
        let ny = ((h / cell).ceil() as usize).max(1);
        let mut cells = vec![Vec::new(); nx * ny];
        let mut g = Self {
            cell,
            nx,
            ny,
            cells: Vec::new(),
        };
        for (k, (x, y)) in points.enumerate() {
            let (i, j) = g.index(x, y);
            cells[j * nx + i].push(k);
        }
        g.cells = cells;
        g
    }

    fn index(&self, x: f64, y: f64) -> (usize, usize) {
        let i = ((x / self.cell).floor().max(0.0) as usize).min(self.nx - 1);
        let j = ((y / self.cell).floor().max(0.0) as usize).min(self.ny - 1);
        (i, j)
    }

    /// Calls `f(k)` for every point in the cells within `r` of (x, y).
    pub(crate) fn near(&self, x: f64, y: f64, r: f64, mut f: impl FnMut(usize)) {
        let (i0, j0) = self.index(x - r, y - r);
        let (i1, j1) = self.index(x + r, y + r);
        for j in j0..=j1 {
            for i in i0..=i1 {
                for &k in &self.cells[j * self.nx + i] {
                    f(k);
                }
            }
        }
    }
}

fn significance(img: &MaskedImage, c: &Candidate, g: &[f64], r: isize) -> f64 {
    let (w, h) = img.dims();
    let (mut s, mut v2) = (0.0, 0.0);
    for dy in -r..=r {
        let y = c.y as isize + dy;
        if y < 0 || y >= h as isize {
            continue;
        }
        let gy = g[(dy + r) as usize];
        let row = img.image.row(y as usize);
        let vrow = img.variance.row(y as usize);
        let mrow = img.mask.row(y as usize);
        for dx in -r..=r {
            let x = c.x as isize + dx;
            if x < 0 || x >= w as isize || mrow[x as usize] & SKIP != 0 {
                continue;
            }
            let wgt = gy * g[(dx + r) as usize];
            let v = f64::from(row[x as usize]);
            let var = f64::from(vrow[x as usize]);
            if !v.is_finite() || !var.is_finite() {
                continue;
            }
            s += wgt * v;
            v2 += wgt * wgt * var.max(0.0);
        }
    }
    if v2 > 0.0 { s / v2.sqrt() } else { 0.0 }
}

/// Result of the adaptive moments.
struct Moments {
    x: f64,
    y: f64,
    x_err: f64,
    y_err: f64,
    ixx: f64,
    iyy: f64,
    ixy: f64,
    converged: bool,
    window_clipped: bool,
}

fn adaptive_moments(img: &MaskedImage, x0: f64, y0: f64, sigma0: f64, max_half: usize) -> Moments {
    let (w, h) = img.dims();
    let (mut xc, mut yc) = (x0, y0);
    let mut sw2 = sigma0 * sigma0;
    let mut out = Moments {
        x: x0,
        y: y0,
        x_err: f64::NAN,
        y_err: f64::NAN,
        ixx: sw2,
        iyy: sw2,
        ixy: 0.0,
        converged: false,
        window_clipped: false,
    };
    let mut wx = Vec::with_capacity(2 * max_half + 1);
    let mut wy = Vec::with_capacity(2 * max_half + 1);
    for it in 0..8 {
        let sw = sw2.sqrt();
        let half = ((4.0 * sw).ceil() as usize).clamp(3, max_half) as isize;
        let (ix, iy) = (xc.round() as isize, yc.round() as isize);
        wx.clear();
        wy.clear();
        for d in -half..=half {
            let dx = (ix + d) as f64 - xc;
            wx.push((-0.5 * dx * dx / sw2).exp());
            let dy = (iy + d) as f64 - yc;
            wy.push((-0.5 * dy * dy / sw2).exp());
        }
        let (mut s0, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut vx, mut vy) = (0.0, 0.0);
        let mut clipped = false;
        for b in -half..=half {
            let y = iy + b;
            if y < 0 || y >= h as isize {
                clipped = true;
                continue;
            }
            let row = img.image.row(y as usize);
            let vrow = img.variance.row(y as usize);
            let mrow = img.mask.row(y as usize);
            let gy = wy[(b + half) as usize];
            let dy = y as f64 - yc;
            for a in -half..=half {
                let x = ix + a;
                if x < 0 || x >= w as isize {
                    clipped = true;
                    continue;
                }
                let xu = x as usize;
                let v = f64::from(row[xu]);
                if mrow[xu] & SKIP != 0 || !v.is_finite() {
                    continue;
                }
                let g = gy * wx[(a + half) as usize];
                let dx = x as f64 - xc;
                let gv = g * v;
                s0 += gv;
                sx += gv * dx;
                sy += gv * dy;
                sxx += gv * dx * dx;
                syy += gv * dy * dy;
                sxy += gv * dx * dy;
                let var = f64::from(vrow[xu]).max(0.0);
                vx += g * g * dx * dx * var;
                vy += g * g * dy * dy * var;
            }
        }
        out.window_clipped = clipped;
        if s0 <= 0.0 {
            return out;
        }
        let (mx, my) = (sx / s0, sy / s0);
        let mxx = sxx / s0 - mx * mx;
        let myy = syy / s0 - my * my;
        let mxy = sxy / s0 - mx * my;
        xc += mx;
        yc += my;
        if (xc - x0).abs() > 3.0 || (yc - y0).abs() > 3.0 {
            return out;
        }
        // Deconvolve the round weight: Σ_s = (Σ_m⁻¹ − Σ_w⁻¹)⁻¹.
        let det = mxx * myy - mxy * mxy;
        if det <= 0.0 {
            return out;
        }
        let (a, b, c) = (myy / det - 1.0 / sw2, -mxy / det, mxx / det - 1.0 / sw2);
        let d2 = a * c - b * b;
        if a <= 0.0 || d2 <= 0.0 {
            // The source is larger than the weight: grow the weight.
            sw2 = (sw2 * 2.0).min((max_half as f64 / 3.0).powi(2));
            continue;
        }
        let (ixx, iyy, ixy) = (c / d2, a / d2, -b / d2);
        // Error of the converged centroid: twice the fixed-weight error for matched size.
        let size2 = 0.5 * (ixx + iyy);
        let gain = 1.0 + size2 / sw2;
        out = Moments {
            x: xc,
            y: yc,
            x_err: gain * vx.sqrt() / s0,
            y_err: gain * vy.sqrt() / s0,
            ixx,
            iyy,
            ixy,
            converged: false,
            window_clipped: clipped,
        };
        let new_sw2 = size2.clamp(0.25, (max_half as f64 / 3.0).powi(2));
        let done = (new_sw2 / sw2 - 1.0).abs() < 1e-3 && mx.abs() + my.abs() < 1e-3;
        sw2 = new_sw2;
        if done || it == 7 {
            out.converged = done || (mx.abs() + my.abs() < 0.01);
            break;
        }
    }
    out
}

/// A generous upper bound of a source's light at squared distance `r2` from its peak:
/// a Gaussian of twice its measured size (the PSF has wide halo and wing components).
fn wing_expectation(c: &Candidate, m: &Moments, r2: f64) -> f64 {
    let s2 = (0.5 * (m.ixx + m.iyy)).clamp(0.5, 100.0);
    f64::from(c.peak) * (-0.5 * r2 / (4.0 * s2)).exp()
}

/// Detects and measures bright sources on a background-subtracted image (see the
/// module docs). Returns them sorted by decreasing significance; empty when nothing
/// passes (never panics on NaN or fully masked images).
pub fn detect_stars(img: &MaskedImage, cfg: &StarConfig) -> Vec<Star> {
    let (w, h) = img.dims();
    if w < 3 || h < 3 {
        return Vec::new();
    }
    let cands = find_candidates(img, cfg.pixel_threshold_sigma);
    let r = (3.0 * cfg.smoothing_sigma).ceil().max(1.0) as isize;
    let g: Vec<f64> = (-r..=r)
        .map(|d| (-0.5 * (d * d) as f64 / cfg.smoothing_sigma.powi(2)).exp())
        .collect();
    let mut det: Vec<(usize, f64)> = cands
        .iter()
        .enumerate()
        .filter_map(|(k, c)| {
            let nu = significance(img, c, &g, r);
            (nu >= cfg.threshold_sigma).then_some((k, nu))
        })
        .collect();
    det.sort_by(|a, b| b.1.total_cmp(&a.1));
    let grid = Grid::new(
        cands.iter().map(|c| (c.x as f64, c.y as f64)),
        w as f64,
        h as f64,
        32.0,
    );
    // Walk the detections from the most significant: drop those within the merge
    // radius of a kept one, or whose peak is explained by a kept one's wing.
    let sigma0 = cfg.smoothing_sigma.max(1.0);
    let mut kept_of = vec![usize::MAX; cands.len()];
    let mut kept: Vec<(usize, f64)> = Vec::with_capacity(det.len());
    let mut moments: Vec<Moments> = Vec::with_capacity(det.len());
    let mr2 = cfg.merge_radius_px * cfg.merge_radius_px;
    for &(k, nu) in &det {
        let c = cands[k];
        let mut drop = false;
        grid.near(c.x as f64, c.y as f64, cfg.isolation_radius_px, |j| {
            let kj = kept_of[j];
            if kj != usize::MAX && !drop {
                let d = cands[j];
                let (dx, dy) = (d.x as f64 - c.x as f64, d.y as f64 - c.y as f64);
                let r2 = dx * dx + dy * dy;
                let wing = wing_expectation(&d, &moments[kj], r2);
                drop = r2 <= mr2
                    || f64::from(c.peak) < wing + cfg.pixel_threshold_sigma * f64::from(c.sig);
            }
        });
        if !drop {
            kept_of[k] = kept.len();
            kept.push((k, nu));
            moments.push(adaptive_moments(
                img,
                c.x as f64,
                c.y as f64,
                sigma0,
                cfg.max_window_px,
            ));
            if kept.len() >= cfg.max_stars {
                break;
            }
        }
    }
    let radius = if cfg.aperture_radius_px > 0.0 {
        cfg.aperture_radius_px
    } else {
        let mut sizes: Vec<f32> = moments
            .iter()
            .filter(|m| m.converged)
            .map(|m| (0.5 * (m.ixx + m.iyy)).sqrt() as f32)
            .collect();
        let med = crate::image::median_and_iqr_sigma(&mut sizes).map_or(2.0, |v| f64::from(v.0));
        (cfg.aperture_sigmas * med).clamp(2.5, 25.0)
    };
    let ri2 = cfg.isolation_radius_px * cfg.isolation_radius_px;
    kept.iter()
        .zip(&moments)
        .map(|(&(k, nu), m)| {
            let c = cands[k];
            let mut fl = 0;
            if !m.converged {
                fl |= flags::BAD_SHAPE;
            }
            if m.window_clipped {
                fl |= flags::EDGE;
            }
            let (ap, ap_var, peak, apflags) = aperture(img, m.x, m.y, radius);
            fl |= apflags;
            let mut blended = false;
            grid.near(c.x as f64, c.y as f64, cfg.isolation_radius_px, |j| {
                if j != k {
                    let d = cands[j];
                    let (dx, dy) = (d.x as f64 - c.x as f64, d.y as f64 - c.y as f64);
                    let r2 = dx * dx + dy * dy;
                    let excess = f64::from(d.peak) - wing_expectation(&c, m, r2);
                    blended |= r2 <= ri2
                        && excess > cfg.blend_peak_ratio * f64::from(c.peak)
                        && excess > cfg.pixel_threshold_sigma * f64::from(d.sig);
                }
            });
            if blended {
                fl |= flags::BLENDED;
            }
            Star {
                x: m.x,
                y: m.y,
                x_err: m.x_err,
                y_err: m.y_err,
                flux: ap,
                flux_err: ap_var.sqrt(),
                psf_flux: f64::NAN,
                psf_flux_err: f64::NAN,
                ixx: m.ixx,
                iyy: m.iyy,
                ixy: m.ixy,
                peak,
                significance: nu,
                flags: fl,
                isolated: !blended,
            }
        })
        .collect()
}

/// Circular-aperture sum at (xc, yc) of radius `r` with linear edge weights: returns
/// (flux, variance, peak near the centre, flags).
pub fn aperture(img: &MaskedImage, xc: f64, yc: f64, r: f64) -> (f64, f64, f64, u32) {
    let (w, h) = img.dims();
    let half = (r + 1.0).ceil() as isize;
    let (ix, iy) = (xc.round() as isize, yc.round() as isize);
    let (mut s, mut var, mut peak, mut fl) = (0.0, 0.0, f64::NEG_INFINITY, 0u32);
    for b in -half..=half {
        let y = iy + b;
        let dy = y as f64 - yc;
        for a in -half..=half {
            let x = ix + a;
            let dx = x as f64 - xc;
            let d = (dx * dx + dy * dy).sqrt();
            let wgt = (r + 0.5 - d).clamp(0.0, 1.0);
            if wgt <= 0.0 {
                continue;
            }
            if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
                fl |= flags::EDGE;
                continue;
            }
            let (xu, yu) = (x as usize, y as usize);
            let m = img.mask.get(xu, yu);
            if m & mask::SAT != 0 {
                fl |= flags::SATURATED;
            }
            if m & mask::EDGE != 0 {
                fl |= flags::EDGE;
            }
            let v = f64::from(img.image.get(xu, yu));
            if m & SKIP != 0 || !v.is_finite() {
                fl |= flags::MASKED;
                continue;
            }
            s += wgt * v;
            var += wgt * wgt * f64::from(img.variance.get(xu, yu)).max(0.0);
            if a.abs() <= 1 && b.abs() <= 1 {
                peak = peak.max(v);
            }
        }
    }
    (s, var, peak, fl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::psf::{GaussianPsf, Psf};
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// Gaussian stars of σ 1.7 px on unit-variance noise, sky subtracted.
    fn field(n: usize, stars: &[(f64, f64, f64)], seed: u64) -> MaskedImage {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let sky = 400.0f32;
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let mut img = MaskedImage::new(n, n);
        let psf = GaussianPsf { sigma: 1.7 };
        let mut truth = vec![0f32; n * n];
        for &(x, y, f) in stars {
            let (ix, iy) = (x.round() as isize, y.round() as isize);
            let k = psf.image_at_shifted(0.0, 0.0, 21, x - ix as f64, y - iy as f64);
            for j in 0..21 {
                for i in 0..21 {
                    let (xx, yy) = (ix + i as isize - 10, iy + j as isize - 10);
                    if xx >= 0 && yy >= 0 && (xx as usize) < n && (yy as usize) < n {
                        truth[yy as usize * n + xx as usize] += (f as f32) * k.get(i, j);
                    }
                }
            }
        }
        for (k, t) in truth.iter().enumerate() {
            let var = sky + t;
            img.image.data_mut()[k] = t + var.sqrt() * noise.sample(&mut r);
            img.variance.data_mut()[k] = var;
        }
        img
    }

    #[test]
    fn finds_and_measures_gaussian_stars() {
        let n = 512;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut stars = Vec::new();
        for gx in 0..8 {
            for gy in 0..8 {
                let x = 30.0 + gx as f64 * 62.0 + r.random_range(-0.5..0.5);
                let y = 30.0 + gy as f64 * 62.0 + r.random_range(-0.5..0.5);
                stars.push((x, y, 10f64.powf(r.random_range(4.0..5.5))));
            }
        }
        // A close pair: both blended.
        stars[0].0 = 40.0;
        stars[1] = (stars[0].0 + 6.0, stars[0].1 + 1.0, stars[0].2);
        let img = field(n, &stars, 11);
        let found = detect_stars(&img, &StarConfig::default());
        assert!(found.len() >= 63, "{}", found.len());
        let mut pulls = Vec::new();
        for (k, &(x, y, f)) in stars.iter().enumerate() {
            if k <= 1 {
                // The pair's moments are pulled together; it must be flagged blended.
                let near: Vec<&Star> = found
                    .iter()
                    .filter(|s| (s.x - x).hypot(s.y - y) < 5.0)
                    .collect();
                assert!(!near.is_empty());
                assert!(
                    near.iter()
                        .all(|s| !s.isolated && s.flags & flags::BLENDED != 0)
                );
                continue;
            }
            let s = found
                .iter()
                .find(|s| (s.x - x).hypot(s.y - y) < 2.0)
                .unwrap_or_else(|| panic!("star {k} at {x},{y} not found"));
            assert!(s.isolated && s.is_clean(), "{s:?}");
            pulls.push((s.x - x) / s.x_err);
            pulls.push((s.y - y) / s.y_err);
            assert!((s.size() - 1.7f64.hypot(0.0)).abs() < 0.1, "{}", s.size());
            // Aperture 4σ ≈ 6.8 px holds 1 - exp(-8) of the flux.
            assert!(
                (s.flux / f - 1.0).abs() < 4.0 * s.flux_err / f + 0.003,
                "{s:?} {f}"
            );
            assert!(s.x_err > 0.0 && s.x_err < 0.05);
        }
        let rms = (pulls.iter().map(|p| p * p).sum::<f64>() / pulls.len() as f64).sqrt();
        assert!(rms > 0.6 && rms < 1.5, "centroid pull rms {rms}");
    }

    #[test]
    fn saturated_masked_and_empty_inputs() {
        let mut img = field(128, &[(64.0, 64.0, 1e6)], 2);
        for y in 62..67 {
            for x in 62..67 {
                img.mask.set(x, y, mask::SAT);
            }
        }
        let found = detect_stars(&img, &StarConfig::default());
        assert_eq!(found.len(), 1);
        assert!(found[0].flags & flags::SATURATED != 0);
        let mut nan = MaskedImage::new(64, 64);
        nan.image.data_mut().fill(f32::NAN);
        assert!(detect_stars(&nan, &StarConfig::default()).is_empty());
        assert!(detect_stars(&MaskedImage::new(0, 0), &StarConfig::default()).is_empty());
    }
}
