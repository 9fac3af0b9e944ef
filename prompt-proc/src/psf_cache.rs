//! A [`Psf`] that caches an expensive PSF (for example the difference image's PSF,
//! which convolves the science PSF with the matching kernel and the decorrelation
//! kernel on every evaluation) on a grid of nodes over the detector.
//!
//! **Algorithm.** The inner PSF's centred image (phase 0, `node_size`² pixels) is
//! evaluated lazily, once, at each node of a regular grid whose spacing is at most
//! `spacing` pixels (nodes at both image edges). An evaluation at `(x, y)` blends the
//! four surrounding node images bilinearly (exact for a PSF varying linearly across a
//! cell; the models here are polynomials of order ≤ 2 over the detector, so the error
//! is ≤ `c·h²/8` for curvature `c` and cell size `h`), then shifts the blend to the
//! requested sub-pixel phase with the separable, moment-corrected Lanczos-3 weights of
//! [`psf_model::shift_weights`] (sum 1, exact first moment) and crops the requested
//! size. `sigma_at` is blended the same way from the nodes' values. Requests larger than
//! the cached images (less the interpolation taps) fall through to the inner PSF.
//!
//! Thread-safe: nodes are filled through [`OnceLock`], so a cache can be shared by a
//! rayon measurement.
//!
//! Units: pixels; images normalised as the inner PSF's (sum 1 over the infinite plane).

use std::sync::OnceLock;

use crate::image::Image;
use crate::psf::Psf;
use crate::psf_model::shift_weights;

/// Taps of the interpolation kernel on each side (Lanczos-3: −2 ..= +3).
const TAPS: usize = 3;

/// A grid cache of another PSF; see the module doc.
pub struct CachedPsf<'a> {
    inner: &'a dyn Psf,
    nx: usize,
    ny: usize,
    dx: f64,
    dy: f64,
    node_size: usize,
    nodes: Vec<OnceLock<(Vec<f32>, f64)>>,
    /// One node serves everywhere.
    constant: bool,
}

impl std::fmt::Debug for CachedPsf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedPsf")
            .field("inner", &self.inner)
            .field("nx", &self.nx)
            .field("ny", &self.ny)
            .field("node_size", &self.node_size)
            .finish()
    }
}

/// The cached PSF frozen at one position (the blend of the node images done once), for
/// the many stamps of one source's fits; see [`CachedPsf::local`]. Its `x, y` arguments
/// are ignored except for stamps too large for the cache, which go to the inner PSF.
#[derive(Debug)]
pub struct LocalPsf<'a> {
    inner: &'a dyn Psf,
    blended: Option<Vec<f64>>,
    node_size: usize,
    sigma: f64,
}

impl Psf for LocalPsf<'_> {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.image_at_shifted(x, y, size, 0.0, 0.0)
    }

    fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        match &self.blended {
            Some(b) if size + 2 * TAPS <= self.node_size && dx.is_finite() && dy.is_finite() => {
                shifted(b, self.node_size, size, dx, dy)
            }
            _ => self.inner.image_at_shifted(x, y, size, dx, dy),
        }
    }

    fn sigma_at(&self, _x: f64, _y: f64) -> f64 {
        self.sigma
    }
}

/// Stamp `size`² from a centred `n`² image, the star at `(size/2 + dx, size/2 + dy)`.
fn shifted(blended: &[f64], n: usize, size: usize, dx: f64, dy: f64) -> Image<f32> {
    // Output pixel i (centre size/2 + dx) samples the node image at
    // i − size/2 − dx + n/2.
    let off = (n / 2) as f64 - (size / 2) as f64;
    Image::from_vec(size, size, shift_crop(blended, n, size, off - dx, off - dy))
}

impl<'a> CachedPsf<'a> {
    /// The PSF at `(x, y)` for repeated shifted stamps there (one blend). Without a
    /// cache (spacing ≤ 0) it evaluates the inner PSF at `(x, y)` on every call.
    pub fn local(&self, x: f64, y: f64) -> LocalPsf<'a> {
        LocalPsf {
            inner: self.inner,
            blended: (!self.nodes.is_empty()).then(|| self.blend(x, y)),
            node_size: self.node_size,
            sigma: self.sigma_at(x, y),
        }
    }

    /// Caches `inner` over a `width` × `height` image with nodes at most `spacing`
    /// pixels apart and node images of `max_size + 2·3` pixels (the largest stamp
    /// served from the cache is `max_size`, odd; larger ones go to `inner`).
    pub fn new(
        inner: &'a dyn Psf,
        width: usize,
        height: usize,
        spacing: f64,
        max_size: usize,
    ) -> Self {
        let cells = |n: usize| -> usize {
            let span = (n.max(2) - 1) as f64;
            ((span / spacing.max(1.0)).ceil() as usize).max(1)
        };
        if spacing.is_nan() || spacing <= 0.0 {
            // No cache: every call goes to the inner PSF.
            return Self {
                inner,
                nx: 0,
                ny: 0,
                dx: 1.0,
                dy: 1.0,
                node_size: 0,
                nodes: Vec::new(),
                constant: false,
            };
        }
        let (cx, cy) = (cells(width), cells(height));
        let max_size = max_size.max(3) | 1;
        Self {
            inner,
            nx: cx + 1,
            ny: cy + 1,
            dx: (width.max(2) - 1) as f64 / cx as f64,
            dy: (height.max(2) - 1) as f64 / cy as f64,
            node_size: max_size + 2 * TAPS,
            nodes: (0..(cx + 1) * (cy + 1)).map(|_| OnceLock::new()).collect(),
            constant: false,
        }
    }

    /// A cache of a PSF that is the same everywhere (one node, at the image centre).
    pub fn constant(inner: &'a dyn Psf, width: usize, height: usize) -> Self {
        let mut c = Self::for_image(inner, width, height, f64::INFINITY);
        c.constant = true;
        c
    }

    /// A cache with the node image size chosen from the inner PSF's width at the image
    /// centre: stamps up to `2·⌈8σ⌉ + 1` pixels (at least 31) come from the cache.
    pub fn for_image(inner: &'a dyn Psf, width: usize, height: usize, spacing: f64) -> Self {
        let s = inner.sigma_at(0.5 * width as f64, 0.5 * height as f64);
        let s = if s.is_finite() {
            s.clamp(0.3, 10.0)
        } else {
            2.0
        };
        let max_size = (2 * (8.0 * s).ceil() as usize + 1).max(31);
        Self::new(inner, width, height, spacing, max_size)
    }

    /// Nodes evaluated so far.
    pub fn evaluated_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.get().is_some()).count()
    }

    fn node(&self, i: usize, j: usize) -> &(Vec<f32>, f64) {
        self.nodes[j * self.nx + i].get_or_init(|| {
            let (x, y) = if self.constant {
                let c = |n: usize, d: f64| 0.5 * (n - 1) as f64 * d;
                (c(self.nx, self.dx), c(self.ny, self.dy))
            } else {
                (i as f64 * self.dx, j as f64 * self.dy)
            };
            let img = self.inner.kernel(x, y, self.node_size);
            (img.into_vec(), self.inner.sigma_at(x, y))
        })
    }

    /// Bilinear node weights at `(x, y)`: `[(i, j, weight); 4]`.
    fn weights(&self, x: f64, y: f64) -> [(usize, usize, f64); 4] {
        if self.constant {
            return [(0, 0, 1.0), (0, 0, 0.0), (0, 0, 0.0), (0, 0, 0.0)];
        }
        let axis = |v: f64, d: f64, n: usize| -> (usize, f64) {
            let u = if v.is_finite() {
                (v / d).clamp(0.0, (n - 1) as f64)
            } else {
                0.0
            };
            let i = (u.floor() as usize).min(n - 2);
            (i, u - i as f64)
        };
        let (i, fx) = axis(x, self.dx, self.nx);
        let (j, fy) = axis(y, self.dy, self.ny);
        [
            (i, j, (1.0 - fx) * (1.0 - fy)),
            (i + 1, j, fx * (1.0 - fy)),
            (i, j + 1, (1.0 - fx) * fy),
            (i + 1, j + 1, fx * fy),
        ]
    }

    /// The bilinear blend of the node images at `(x, y)`, `node_size`², row-major.
    fn blend(&self, x: f64, y: f64) -> Vec<f64> {
        let n = self.node_size;
        let mut acc = vec![0.0f64; n * n];
        for (i, j, w) in self.weights(x, y) {
            if w == 0.0 {
                continue;
            }
            for (a, &v) in acc.iter_mut().zip(&self.node(i, j).0) {
                *a += w * f64::from(v);
            }
        }
        acc
    }
}

/// `out[j][i] = src` at `(i + ox, j + oy)` (separable corrected Lanczos-3, zero outside
/// `src`), `src` `n`², `out` `m`².
fn shift_crop(src: &[f64], n: usize, m: usize, ox: f64, oy: f64) -> Vec<f32> {
    let (fx, fy) = (ox.floor(), oy.floor());
    let (wx, wy) = (shift_weights(ox - fx), shift_weights(oy - fy));
    let (bx, by) = (fx as isize - 2, fy as isize - 2);
    if bx >= 0 && by >= 0 && bx as usize + m + 5 <= n && by as usize + m + 5 <= n {
        // Fast path: every tap inside `src` (the usual case, |phase| ≤ 0.5).
        let (bx, by) = (bx as usize, by as usize);
        let mut tmp = vec![0.0f64; (m + 5) * m];
        for (r, t) in tmp.chunks_exact_mut(m).enumerate() {
            let row = &src[(by + r) * n + bx..(by + r) * n + bx + m + 5];
            for (i, o) in t.iter_mut().enumerate() {
                let v = &row[i..i + 6];
                *o = wx[0] * v[0]
                    + wx[1] * v[1]
                    + wx[2] * v[2]
                    + wx[3] * v[3]
                    + wx[4] * v[4]
                    + wx[5] * v[5];
            }
        }
        let mut out = vec![0.0f32; m * m];
        for (j, o) in out.chunks_exact_mut(m).enumerate() {
            let rows: [&[f64]; 6] = std::array::from_fn(|k| &tmp[(j + k) * m..(j + k + 1) * m]);
            for (i, o) in o.iter_mut().enumerate() {
                *o = (wy[0] * rows[0][i]
                    + wy[1] * rows[1][i]
                    + wy[2] * rows[2][i]
                    + wy[3] * rows[3][i]
                    + wy[4] * rows[4][i]
                    + wy[5] * rows[5][i]) as f32;
            }
        }
        return out;
    }
    // Rows of `src` that contribute.
    let r0 = by.max(0) as usize;
    let r1 = ((m as isize - 1 + by + 5).min(n as isize - 1)).max(-1);
    let nrows = (r1 + 1 - r0 as isize).max(0) as usize;
    let mut tmp = vec![0.0f64; nrows * m];
    for r in 0..nrows {
        let row = &src[(r0 + r) * n..(r0 + r + 1) * n];
        for i in 0..m {
            let mut acc = 0.0;
            for (k, w) in wx.iter().enumerate() {
                let x = i as isize + bx + k as isize;
                if x >= 0 && (x as usize) < n {
                    acc += w * row[x as usize];
                }
            }
            tmp[r * m + i] = acc;
        }
    }
    let mut out = vec![0.0f32; m * m];
    let mut acc = vec![0.0f64; m];
    for j in 0..m {
        let o = &mut out[j * m..(j + 1) * m];
        acc.fill(0.0);
        for (k, w) in wy.iter().enumerate() {
            let y = j as isize + by + k as isize;
            if y >= r0 as isize && y <= r1 {
                let t = &tmp[(y as usize - r0) * m..(y as usize - r0 + 1) * m];
                for (a, v) in acc.iter_mut().zip(t) {
                    *a += w * v;
                }
            }
        }
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = *a as f32;
        }
    }
    out
}

impl Psf for CachedPsf<'_> {
    fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
        self.image_at_shifted(x, y, size, 0.0, 0.0)
    }

    fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
        if self.nodes.is_empty()
            || size + 2 * TAPS > self.node_size
            || !(dx.is_finite() && dy.is_finite())
        {
            return self.inner.image_at_shifted(x, y, size, dx, dy);
        }
        shifted(&self.blend(x, y), self.node_size, size, dx, dy)
    }

    fn sigma_at(&self, x: f64, y: f64) -> f64 {
        if self.nodes.is_empty() {
            return self.inner.sigma_at(x, y);
        }
        self.weights(x, y)
            .iter()
            .filter(|w| w.2 != 0.0)
            .map(|&(i, j, w)| w * self.node(i, j).1)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::psf::GaussianPsf;

    /// A Gaussian whose width varies linearly across the image.
    #[derive(Debug)]
    struct Varying;
    impl Psf for Varying {
        fn kernel(&self, x: f64, y: f64, size: usize) -> Image<f32> {
            self.image_at_shifted(x, y, size, 0.0, 0.0)
        }
        fn image_at_shifted(&self, x: f64, y: f64, size: usize, dx: f64, dy: f64) -> Image<f32> {
            GaussianPsf {
                sigma: self.sigma_at(x, y),
            }
            .image_at_shifted(x, y, size, dx, dy)
        }
        fn sigma_at(&self, x: f64, y: f64) -> f64 {
            1.6 + 1e-4 * x - 5e-5 * y
        }
    }

    #[test]
    fn cached_images_match_the_inner_psf() {
        let inner = Varying;
        let c = CachedPsf::for_image(&inner, 2048, 2048, 512.0);
        let mut worst: f64 = 0.0;
        for &(x, y, dx, dy, size) in &[
            (100.0, 200.0, 0.0, 0.0, 17),
            (1000.3, 1500.7, 0.3, -0.4, 21),
            (2047.0, 0.0, -0.5, 0.5, 25),
            (700.0, 1800.0, 0.17, 0.49, 11),
        ] {
            let a = c.image_at_shifted(x, y, size, dx, dy);
            let b = inner.image_at_shifted(x, y, size, dx, dy);
            let peak = b.data().iter().copied().fold(0.0f32, f32::max) as f64;
            for (u, v) in a.data().iter().zip(b.data()) {
                worst = worst.max((*u as f64 - *v as f64).abs() / peak);
            }
            let sa: f64 = a.data().iter().map(|&v| v as f64).sum();
            let sb: f64 = b.data().iter().map(|&v| v as f64).sum();
            assert!((sa - sb).abs() < 1e-3, "{sa} {sb}");
            // The PSF-fit flux of the true image with the cached model.
            let (mut ab, mut aa) = (0.0, 0.0);
            for (u, v) in a.data().iter().zip(b.data()) {
                ab += *u as f64 * *v as f64;
                aa += *u as f64 * *u as f64;
            }
            assert!((ab / aa - 1.0).abs() < 1e-3, "flux ratio {}", ab / aa);
            assert!((c.sigma_at(x, y) - inner.sigma_at(x, y)).abs() < 1e-9);
        }
        // Lanczos-3 interpolation of a σ = 1.6 px PSF: a few 1e-3 of the peak.
        assert!(worst < 6e-3, "{worst}");
        assert!(c.evaluated_nodes() <= 25);
        // Too large a stamp falls through to the inner PSF.
        let big = c.kernel(10.0, 10.0, 101);
        assert_eq!(big, inner.kernel(10.0, 10.0, 101));
    }
}
