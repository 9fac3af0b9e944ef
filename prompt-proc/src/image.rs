//! Images, mask planes and masked images shared by every science stage.
//!
//! Pixel `(x, y)` is column `x`, row `y`, 0-based, stored row-major (`y * width + x`);
//! the centre of the first pixel is (0, 0), as in the simulator and the WCS.

/// A 2-D array of pixels, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Image<T> {
    width: usize,
    height: usize,
    data: Vec<T>,
}

impl<T: Copy + Default> Image<T> {
    /// A `width` × `height` image filled with `T::default()`.
    pub fn new(width: usize, height: usize) -> Self {
        Self::filled(width, height, T::default())
    }
}

impl<T: Copy> Image<T> {
    /// A `width` × `height` image filled with `value`.
    pub fn filled(width: usize, height: usize, value: T) -> Self {
        Self {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    /// Wraps row-major pixels; panics if `data.len() != width * height`.
    pub fn from_vec(width: usize, height: usize, data: Vec<T>) -> Self {
        assert_eq!(data.len(), width * height, "image data length");
        Self {
            width,
            height,
            data,
        }
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// `(width, height)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Pixel `(x, y)`.
    #[inline]
    pub fn get(&self, x: usize, y: usize) -> T {
        self.data[y * self.width + x]
    }

    /// Pixel `(x, y)`, or `None` outside the image (signed coordinates).
    #[inline]
    pub fn get_checked(&self, x: isize, y: isize) -> Option<T> {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            None
        } else {
            Some(self.data[y as usize * self.width + x as usize])
        }
    }

    /// Sets pixel `(x, y)`.
    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: T) {
        self.data[y * self.width + x] = v;
    }

    /// Mutable reference to pixel `(x, y)`.
    #[inline]
    pub fn at_mut(&mut self, x: usize, y: usize) -> &mut T {
        &mut self.data[y * self.width + x]
    }

    /// Row `y`.
    #[inline]
    pub fn row(&self, y: usize) -> &[T] {
        &self.data[y * self.width..(y + 1) * self.width]
    }

    /// Row `y`, mutable.
    #[inline]
    pub fn row_mut(&mut self, y: usize) -> &mut [T] {
        &mut self.data[y * self.width..(y + 1) * self.width]
    }

    /// All pixels, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// All pixels, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The pixels, consuming the image.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// A copy of the `w` × `h` box whose lower-left pixel is `(x0, y0)`; pixels outside
    /// the image are `fill`.
    pub fn cutout(&self, x0: isize, y0: isize, w: usize, h: usize, fill: T) -> Image<T> {
        let mut out = Image::filled(w, h, fill);
        for j in 0..h {
            let y = y0 + j as isize;
            if y < 0 || y as usize >= self.height {
                continue;
            }
            for i in 0..w {
                let x = x0 + i as isize;
                if x >= 0 && (x as usize) < self.width {
                    out.data[j * w + i] = self.data[y as usize * self.width + x as usize];
                }
            }
        }
        out
    }

    /// Applies `f` to every pixel, giving a new image.
    pub fn map<U: Copy>(&self, f: impl Fn(T) -> U) -> Image<U> {
        Image {
            width: self.width,
            height: self.height,
            data: self.data.iter().map(|&v| f(v)).collect(),
        }
    }
}

/// Mask planes: one bit each, OR-ed together in a `u32` per pixel.
pub mod mask {
    /// Bad pixel: dead or hot in the calibrations, or otherwise unusable.
    pub const BAD: u32 = 1 << 0;
    /// At or above the saturation level (including bleed trails).
    pub const SAT: u32 = 1 << 1;
    /// Hit by a cosmic ray.
    pub const CR: u32 = 1 << 2;
    /// Within a kernel half-width of the image edge, or of missing data, so a
    /// convolution there is incomplete.
    pub const EDGE: u32 = 1 << 3;
    /// Value interpolated from neighbours (bad, saturated or cosmic-ray pixels).
    pub const INTRP: u32 = 1 << 4;
    /// No data: for example no template coverage.
    pub const NO_DATA: u32 = 1 << 5;
    /// Inside a positive detection footprint.
    pub const DETECTED: u32 = 1 << 6;
    /// Inside a negative detection footprint.
    pub const DETECTED_NEGATIVE: u32 = 1 << 7;
    /// Suspect: for example near the non-linear regime.
    pub const SUSPECT: u32 = 1 << 8;
    /// Satellite or other streak.
    pub const STREAK: u32 = 1 << 9;

    /// Planes that make a pixel unusable for fitting or measurement.
    pub const UNUSABLE: u32 = BAD | SAT | CR | NO_DATA | EDGE;

    /// `(name, bit)` of every plane, for FITS headers (`MP_<name>` cards) and docs.
    pub const PLANES: [(&str, u32); 10] = [
        ("BAD", BAD),
        ("SAT", SAT),
        ("CR", CR),
        ("EDGE", EDGE),
        ("INTRP", INTRP),
        ("NO_DATA", NO_DATA),
        ("DETECTED", DETECTED),
        ("DETECTED_NEGATIVE", DETECTED_NEGATIVE),
        ("SUSPECT", SUSPECT),
        ("STREAK", STREAK),
    ];
}

/// An image with its per-pixel variance and mask.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedImage {
    /// Pixel values (electrons after ISR; nJy per pixel after photometric calibration).
    pub image: Image<f32>,
    /// Variance of each pixel, in the image's unit squared.
    pub variance: Image<f32>,
    /// Mask planes, see [`mask`].
    pub mask: Image<u32>,
}

impl MaskedImage {
    /// A zero image with zero variance and no mask bits.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            image: Image::new(width, height),
            variance: Image::new(width, height),
            mask: Image::new(width, height),
        }
    }

    /// Bundles the three planes; panics if their sizes differ.
    pub fn from_parts(image: Image<f32>, variance: Image<f32>, mask: Image<u32>) -> Self {
        assert_eq!(image.dims(), variance.dims(), "variance plane size");
        assert_eq!(image.dims(), mask.dims(), "mask plane size");
        Self {
            image,
            variance,
            mask,
        }
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.image.width()
    }

    /// Number of rows.
    pub fn height(&self) -> usize {
        self.image.height()
    }

    /// `(width, height)`.
    pub fn dims(&self) -> (usize, usize) {
        self.image.dims()
    }

    /// Multiplies the image by `k` and the variance by `k²` (a change of unit).
    pub fn scale(&mut self, k: f32) {
        self.image.data_mut().iter_mut().for_each(|v| *v *= k);
        let k2 = k * k;
        self.variance.data_mut().iter_mut().for_each(|v| *v *= k2);
    }

    /// A copy of the `w` × `h` box at `(x0, y0)`; outside pixels are 0 with mask
    /// [`mask::NO_DATA`].
    pub fn cutout(&self, x0: isize, y0: isize, w: usize, h: usize) -> MaskedImage {
        MaskedImage {
            image: self.image.cutout(x0, y0, w, h, 0.0),
            variance: self.variance.cutout(x0, y0, w, h, 0.0),
            mask: self.mask.cutout(x0, y0, w, h, mask::NO_DATA),
        }
    }
}

/// Robust statistics of a set of values: median and σ from the interquartile range
/// (σ = IQR / 1.349), ignoring non-finite values. `None` when fewer than 3 values.
pub fn median_and_iqr_sigma(values: &mut Vec<f32>) -> Option<(f32, f32)> {
    values.retain(|v| v.is_finite());
    let n = values.len();
    if n < 3 {
        return None;
    }
    let q = |values: &mut Vec<f32>, f: f64| -> f32 {
        let k = ((n - 1) as f64 * f).round() as usize;
        *values
            .select_nth_unstable_by(k, |a, b| a.partial_cmp(b).expect("finite"))
            .1
    };
    let med = q(values, 0.5);
    let q1 = q(values, 0.25);
    let q3 = q(values, 0.75);
    Some((med, (q3 - q1) / 1.349))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutout_pads_outside_pixels() {
        let img = Image::from_vec(3, 2, vec![1, 2, 3, 4, 5, 6]);
        let c = img.cutout(-1, 0, 3, 3, 0);
        assert_eq!(c.data(), &[0, 1, 2, 0, 4, 5, 0, 0, 0]);
        assert_eq!(img.get(2, 1), 6);
        assert_eq!(img.get_checked(3, 0), None);
    }

    #[test]
    fn scale_changes_variance_by_the_square() {
        let mut m = MaskedImage::new(2, 2);
        m.image.data_mut().fill(2.0);
        m.variance.data_mut().fill(3.0);
        m.scale(10.0);
        assert_eq!(m.image.get(1, 1), 20.0);
        assert_eq!(m.variance.get(0, 1), 300.0);
    }

    #[test]
    fn robust_statistics_ignore_outliers_and_nan() {
        let mut v: Vec<f32> = (0..1001).map(|i| (i % 11) as f32).collect();
        v.push(f32::NAN);
        v.push(1e9);
        let (med, sig) = median_and_iqr_sigma(&mut v).unwrap();
        assert_eq!(med, 5.0);
        assert!(sig > 2.0 && sig < 5.0, "{sig}");
        assert!(median_and_iqr_sigma(&mut vec![1.0, f32::NAN]).is_none());
    }
}
