//! Convolution utilities for image subtraction: a single-precision real 2-D FFT with a
//! transposed spectrum layout, spectra of small kernels, separable direct convolution,
//! and mask dilation.
//!
//! The 2-D FFT does a real-to-complex transform of every row ([`realfft`]) and then a
//! complex transform of every column ([`rustfft`], AVX when available). The spectrum is
//! kept transposed — column `u` (frequency along x, `0..=nx/2`) is one contiguous run
//! of `ny` values — so the column transforms run over contiguous memory and the inverse
//! starts where the forward stopped. Element `(u, v)` is at `u * ny + v`. Products of
//! spectra are element-wise, so callers never need to know the layout except to build a
//! filter that depends on the frequency (see [`RealFft2d::frequency`]).
//!
//! Convolutions through the FFT are circular on the padded grid; callers mask the
//! border within the kernel half-width (`mask::EDGE`), where the wrap-around lands.
//! Units are whatever the image's are (nJy per pixel in subtraction).

use crate::image::Image;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

/// Rows transformed together before the transposing copy (cache blocking).
const ROW_BLOCK: usize = 64;

/// The smallest integer ≥ `n` whose prime factors are all 2, 3, 5 or 7 (fast FFT sizes).
pub fn next_fast_len(n: usize) -> usize {
    let mut m = n.max(1);
    loop {
        let mut k = m;
        for p in [2, 3, 5, 7] {
            while k.is_multiple_of(p) {
                k /= p;
            }
        }
        if k == 1 {
            return m;
        }
        m += 1;
    }
}

/// A planned real 2-D FFT of an `nx` × `ny` grid (f32), with reusable scratch.
pub struct RealFft2d {
    nx: usize,
    ny: usize,
    nxc: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    cfwd: Arc<dyn Fft<f32>>,
    cinv: Arc<dyn Fft<f32>>,
    block: Vec<Complex32>,
    row_in: Vec<f32>,
    row_scratch: Vec<Complex32>,
    col_scratch: Vec<Complex32>,
}

impl std::fmt::Debug for RealFft2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RealFft2d({}x{})", self.nx, self.ny)
    }
}

impl RealFft2d {
    /// Plans transforms of an `nx` × `ny` grid.
    pub fn new(nx: usize, ny: usize) -> Self {
        let mut rp = RealFftPlanner::<f32>::new();
        let r2c = rp.plan_fft_forward(nx);
        let c2r = rp.plan_fft_inverse(nx);
        let mut cp = FftPlanner::<f32>::new();
        let cfwd = cp.plan_fft_forward(ny);
        let cinv = cp.plan_fft_inverse(ny);
        let nxc = nx / 2 + 1;
        let rs = r2c.get_scratch_len().max(c2r.get_scratch_len()).max(1);
        let cs = cfwd
            .get_inplace_scratch_len()
            .max(cinv.get_inplace_scratch_len())
            .max(1);
        Self {
            nx,
            ny,
            nxc,
            r2c,
            c2r,
            cfwd,
            cinv,
            block: vec![Complex32::default(); ROW_BLOCK * nxc],
            row_in: vec![0.0; nx],
            row_scratch: vec![Complex32::default(); rs],
            col_scratch: vec![Complex32::default(); cs],
        }
    }

    /// Grid width.
    pub fn nx(&self) -> usize {
        self.nx
    }

    /// Grid height.
    pub fn ny(&self) -> usize {
        self.ny
    }

    /// Number of complex values in a spectrum: `(nx / 2 + 1) * ny`.
    pub fn spectrum_len(&self) -> usize {
        self.nxc * self.ny
    }

    /// A zeroed spectrum buffer.
    pub fn new_spectrum(&self) -> Vec<Complex32> {
        vec![Complex32::default(); self.spectrum_len()]
    }

    /// The signed frequencies `(fx, fy)` in cycles per pixel of spectrum index `i`.
    pub fn frequency(&self, i: usize) -> (f64, f64) {
        let u = i / self.ny;
        let v = i % self.ny;
        let fy = if v <= self.ny / 2 {
            v as f64
        } else {
            v as f64 - self.ny as f64
        };
        (u as f64 / self.nx as f64, fy / self.ny as f64)
    }

    /// Forward transform of an image of `w` × `h` pixels (`w ≤ nx`, `h ≤ ny`), placed
    /// at the lower-left of the grid and zero-padded. `map` is applied to every pixel on
    /// the way in (for example to zero non-finite or masked pixels).
    pub fn forward_image(
        &mut self,
        img: &Image<f32>,
        map: impl Fn(usize, f32) -> f32,
        out: &mut [Complex32],
    ) {
        let (w, h) = img.dims();
        assert!(
            w <= self.nx && h <= self.ny,
            "image larger than the FFT grid"
        );
        assert_eq!(out.len(), self.spectrum_len());
        let nxc = self.nxc;
        let ny = self.ny;
        let mut y0 = 0;
        while y0 < ny {
            let nb = ROW_BLOCK.min(ny - y0);
            for r in 0..nb {
                let y = y0 + r;
                let dst = &mut self.block[r * nxc..(r + 1) * nxc];
                if y < h {
                    let row = img.row(y);
                    let base = y * w;
                    for (x, (o, &v)) in self.row_in.iter_mut().zip(row).enumerate() {
                        *o = map(base + x, v);
                    }
                    self.row_in[w..].fill(0.0);
                    self.r2c
                        .process_with_scratch(&mut self.row_in, dst, &mut self.row_scratch)
                        .expect("row fft sizes");
                } else {
                    dst.fill(Complex32::default());
                }
            }
            scatter_block(&self.block, nb, nxc, ny, y0, out);
            y0 += nb;
        }
        self.cfwd.process_with_scratch(out, &mut self.col_scratch);
    }

    /// Spectrum of a small centred kernel (odd size, centre pixel at the origin of the
    /// grid, wrapped), as used for convolution `C(x) = Σ_d K(d) A(x − d)`. Only the rows
    /// the kernel covers are transformed along x.
    pub fn forward_kernel(&mut self, kernel: &Image<f32>, out: &mut [Complex32]) {
        let (kw, kh) = kernel.dims();
        assert!(kw % 2 == 1 && kh % 2 == 1, "odd kernel");
        assert!(
            kw <= self.nx && kh <= self.ny,
            "kernel larger than the grid"
        );
        assert_eq!(out.len(), self.spectrum_len());
        out.fill(Complex32::default());
        let (hx, hy) = ((kw / 2) as isize, (kh / 2) as isize);
        let nxc = self.nxc;
        let ny = self.ny;
        let mut row = vec![Complex32::default(); nxc];
        for j in 0..kh {
            let gy = (j as isize - hy).rem_euclid(ny as isize) as usize;
            self.row_in.fill(0.0);
            for (i, &v) in kernel.row(j).iter().enumerate() {
                let gx = (i as isize - hx).rem_euclid(self.nx as isize) as usize;
                self.row_in[gx] += v;
            }
            self.r2c
                .process_with_scratch(&mut self.row_in, &mut row, &mut self.row_scratch)
                .expect("row fft sizes");
            for (u, &c) in row.iter().enumerate() {
                out[u * ny + gy] = c;
            }
        }
        self.cfwd.process_with_scratch(out, &mut self.col_scratch);
    }

    /// Inverse transform; `spec` is destroyed. Writes the lower-left `w` × `h` pixels of
    /// the result, multiplied by `scale` (pass `1 / (nx ny)` for a true inverse), into
    /// `out` through `sink(index, value)`.
    pub fn inverse_with(
        &mut self,
        spec: &mut [Complex32],
        w: usize,
        h: usize,
        mut sink: impl FnMut(usize, &[f32]),
    ) {
        assert_eq!(spec.len(), self.spectrum_len());
        self.cinv.process_with_scratch(spec, &mut self.col_scratch);
        let nxc = self.nxc;
        let ny = self.ny;
        let mut y0 = 0;
        while y0 < h {
            let nb = ROW_BLOCK.min(h - y0);
            gather_block(spec, nb, nxc, ny, y0, &mut self.block);
            for r in 0..nb {
                let src = &mut self.block[r * nxc..(r + 1) * nxc];
                src[0].im = 0.0;
                if self.nx.is_multiple_of(2) {
                    src[nxc - 1].im = 0.0;
                }
                self.c2r
                    .process_with_scratch(src, &mut self.row_in, &mut self.row_scratch)
                    .expect("row ifft sizes");
                sink((y0 + r) * w, &self.row_in[..w]);
            }
            y0 += nb;
        }
    }

    /// Inverse transform into an image of `w` × `h`, scaled by `scale`.
    pub fn inverse_image(
        &mut self,
        spec: &mut [Complex32],
        w: usize,
        h: usize,
        scale: f32,
    ) -> Image<f32> {
        let mut out = vec![0.0f32; w * h];
        self.inverse_with(spec, w, h, |i, row| {
            for (o, &v) in out[i..i + row.len()].iter_mut().zip(row) {
                *o = v * scale;
            }
        });
        Image::from_vec(w, h, out)
    }
}

/// Columns per tile of the blocked transposes.
const U_TILE: usize = 16;

fn scatter_block(
    block: &[Complex32],
    nb: usize,
    nxc: usize,
    ny: usize,
    y0: usize,
    out: &mut [Complex32],
) {
    let mut u0 = 0;
    while u0 < nxc {
        let nu = U_TILE.min(nxc - u0);
        // Column-major inner loop: each column's run of `nb` values is written
        // contiguously into the (large, memory-resident) spectrum; the strided reads come
        // from the block, which is in cache.
        for k in 0..nu {
            let dst = &mut out[(u0 + k) * ny + y0..(u0 + k) * ny + y0 + nb];
            for (r, d) in dst.iter_mut().enumerate() {
                *d = block[r * nxc + u0 + k];
            }
        }
        u0 += nu;
    }
}

fn gather_block(
    spec: &[Complex32],
    nb: usize,
    nxc: usize,
    ny: usize,
    y0: usize,
    block: &mut [Complex32],
) {
    let mut u0 = 0;
    while u0 < nxc {
        let nu = U_TILE.min(nxc - u0);
        // Contiguous reads of each column's run from the spectrum, strided writes into
        // the cached block.
        for k in 0..nu {
            let src = &spec[(u0 + k) * ny + y0..(u0 + k) * ny + y0 + nb];
            for (r, &v) in src.iter().enumerate() {
                block[r * nxc + u0 + k] = v;
            }
        }
        u0 += nu;
    }
}

/// Direct convolution of `img` with the separable kernel `kx(i) ky(j)` (both odd
/// length, centred): `C(x, y) = Σ kx(a) ky(b) I(x − a, y − b)`, zero outside the image.
pub fn convolve_separable(img: &Image<f32>, kx: &[f32], ky: &[f32]) -> Image<f32> {
    let (w, h) = img.dims();
    let hx = kx.len() / 2;
    let hy = ky.len() / 2;
    // Horizontal pass into a padded row buffer so the inner loop has no branches.
    let mut tmp = vec![0.0f32; w * h];
    let mut padded = vec![0.0f32; w + 2 * hx];
    for y in 0..h {
        padded[hx..hx + w].copy_from_slice(img.row(y));
        let dst = &mut tmp[y * w..(y + 1) * w];
        // C(x) = Σ_a kx[a] I(x − (a − hx)) = Σ_a kx[a] padded[x + 2hx − a].
        for (a, &k) in kx.iter().enumerate() {
            let off = 2 * hx - a;
            for (d, &p) in dst.iter_mut().zip(&padded[off..off + w]) {
                *d += k * p;
            }
        }
    }
    let mut out = vec![0.0f32; w * h];
    for y in 0..h {
        let dst = &mut out[y * w..(y + 1) * w];
        for (b, &k) in ky.iter().enumerate() {
            let sy = y as isize - (b as isize - hy as isize);
            if sy < 0 || sy as usize >= h {
                continue;
            }
            let src = &tmp[sy as usize * w..(sy as usize + 1) * w];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += k * s;
            }
        }
    }
    Image::from_vec(w, h, out)
}

/// Dilates the mask bits `bits` of `mask` by a square of half-width `r` (the result has
/// only those bits set, OR-ed over the square). Cost is proportional to the number of
/// set pixels times `r`, so sparse masks are cheap.
pub fn dilate_bits(mask: &Image<u32>, bits: u32, r: usize) -> Image<u32> {
    let (w, h) = mask.dims();
    let mut horiz = vec![0u32; w * h];
    for y in 0..h {
        let src = mask.row(y);
        let dst = &mut horiz[y * w..(y + 1) * w];
        for (x, &m) in src.iter().enumerate() {
            let b = m & bits;
            if b != 0 {
                let lo = x.saturating_sub(r);
                let hi = (x + r + 1).min(w);
                dst[lo..hi].iter_mut().for_each(|d| *d |= b);
            }
        }
    }
    let mut out = vec![0u32; w * h];
    for y in 0..h {
        let lo = y.saturating_sub(r);
        let hi = (y + r + 1).min(h);
        for x in 0..w {
            let b = horiz[y * w + x];
            if b != 0 {
                for yy in lo..hi {
                    out[yy * w + x] |= b;
                }
            }
        }
    }
    Image::from_vec(w, h, out)
}

/// Direct 2-D convolution of two small images (full output of size `a + b − 1`); for
/// PSF and kernel stamps.
pub fn convolve_full(a: &Image<f32>, b: &Image<f32>) -> Image<f32> {
    let (aw, ah) = a.dims();
    let (bw, bh) = b.dims();
    let (w, h) = (aw + bw - 1, ah + bh - 1);
    let mut out = vec![0.0f64; w * h];
    for j in 0..ah {
        for i in 0..aw {
            let av = a.get(i, j) as f64;
            if av == 0.0 {
                continue;
            }
            for jj in 0..bh {
                let o = (j + jj) * w + i;
                for (ii, &bv) in b.row(jj).iter().enumerate() {
                    out[o + ii] += av * bv as f64;
                }
            }
        }
    }
    Image::from_vec(w, h, out.into_iter().map(|v| v as f32).collect())
}

/// The centred `size` × `size` crop of an odd-sized image (zero-padded if larger).
pub fn crop_centre(img: &Image<f32>, size: usize) -> Image<f32> {
    let (w, h) = img.dims();
    let x0 = (w / 2) as isize - (size / 2) as isize;
    let y0 = (h / 2) as isize - (size / 2) as isize;
    img.cutout(x0, y0, size, size, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(img: &Image<f32>, k: &Image<f32>) -> Image<f32> {
        let (w, h) = img.dims();
        let hk = (k.width() / 2) as isize;
        let mut out = Image::new(w, h);
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut s = 0.0f64;
                for b in -hk..=hk {
                    for a in -hk..=hk {
                        if let Some(v) = img.get_checked(x - a, y - b) {
                            s += v as f64 * k.get((a + hk) as usize, (b + hk) as usize) as f64;
                        }
                    }
                }
                out.set(x as usize, y as usize, s as f32);
            }
        }
        out
    }

    #[test]
    fn fft_convolution_matches_direct_away_from_the_edges() {
        let (w, h) = (70, 50);
        let img = Image::from_vec(
            w,
            h,
            (0..w * h)
                .map(|i| ((i * 7919) % 101) as f32 - 50.0)
                .collect(),
        );
        // An asymmetric kernel checks orientation.
        let k = Image::from_vec(
            5,
            5,
            (0..25).map(|i| (i as f32 * 0.37).sin() + 0.2).collect(),
        );
        let mut fft = RealFft2d::new(next_fast_len(w), next_fast_len(h));
        let mut a = fft.new_spectrum();
        fft.forward_image(&img, |_, v| v, &mut a);
        let mut kk = fft.new_spectrum();
        fft.forward_kernel(&k, &mut kk);
        for (x, y) in a.iter().zip(&mut kk) {
            *y *= *x;
        }
        let n = (fft.nx() * fft.ny()) as f32;
        let c = fft.inverse_image(&mut kk, w, h, 1.0 / n);
        let d = direct(&img, &k);
        for y in 2..h - 2 {
            for x in 2..w - 2 {
                assert!((c.get(x, y) - d.get(x, y)).abs() < 1e-3, "{x} {y}");
            }
        }
        // Separable path, with a rank-1 kernel.
        let kx = [0.1f32, 0.5, 0.3];
        let ky = [0.2f32, 0.7, 0.05];
        let k1 = Image::from_vec(3, 3, (0..9).map(|i| ky[i / 3] * kx[i % 3]).collect());
        let s = convolve_separable(&img, &kx, &ky);
        let d1 = direct(&img, &k1);
        for y in 0..h {
            for x in 0..w {
                assert!((s.get(x, y) - d1.get(x, y)).abs() < 1e-3, "{x} {y}");
            }
        }
    }

    #[test]
    fn dilation_covers_the_square() {
        let mut m = Image::new(20, 10);
        m.set(5, 5, 3);
        m.set(0, 0, 4);
        let d = dilate_bits(&m, 1, 2);
        assert_eq!(d.get(3, 3), 1);
        assert_eq!(d.get(7, 7), 1);
        assert_eq!(d.get(8, 5), 0);
        assert_eq!(d.get(1, 1), 0);
        assert_eq!(next_fast_len(4097), 4116);
    }
}
