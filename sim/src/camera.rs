//! The simulated camera: detectors on a square grid around the boresight, each split
//! into 16 amplifiers (2 rows × 8 columns) with their own gain, read noise and bias,
//! plus dark current, a flat field (vignetting, per-amplifier QE and pixel-to-pixel
//! response), bad columns and hot pixels. See `docs/CAMERA.md`.

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::rng;

/// Amplifier columns per detector.
pub const AMP_COLUMNS: u32 = 8;
/// Amplifier rows per detector.
pub const AMP_ROWS: u32 = 2;
/// Serial prescan columns read before the data of every row.
pub const PRESCAN: u32 = 3;
/// Serial overscan columns read after the data of every row.
pub const SERIAL_OVERSCAN: u32 = 32;
/// Parallel overscan rows read after the data rows.
pub const PARALLEL_OVERSCAN: u32 = 16;
/// Full-well capacity, electrons: charge above it bleeds along the column.
pub const FULL_WELL_E: f64 = 100_000.0;
/// Largest value of the 18-bit ADC, ADU.
pub const ADC_MAX: i32 = 262_143;
/// Dark current of a normal pixel, e⁻/s.
pub const DARK_CURRENT_E_PER_S: f64 = 0.02;
/// Gap between neighbouring detectors on the focal plane, pixels.
pub const DETECTOR_GAP_PX: f64 = 150.0;
/// Radial distortion coefficient k of `Δr = k r³` (r in pixels from the boresight):
/// 2.5e-13 moves a pixel 20,000 px from the boresight by 2 px.
pub const RADIAL_DISTORTION_K: f64 = 2.5e-13;
/// Focal-plane radius at which vignetting reaches [`VIGNETTING_AT_EDGE`], pixels.
pub const VIGNETTING_RADIUS_PX: f64 = 25_000.0;
/// Fractional light loss at [`VIGNETTING_RADIUS_PX`] (quadratic in radius).
pub const VIGNETTING_AT_EDGE: f64 = 0.12;
/// RMS pixel-to-pixel response variation (uniform distribution).
pub const PIXEL_RESPONSE_RMS: f64 = 0.01;

/// Where an amplifier's pixels land in the assembled detector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmpLayout {
    /// Amplifier number 0–15: 0–7 along the bottom row (left to right), 8–15 the top row.
    pub index: u32,
    /// `AMPnn`.
    pub name: String,
    /// First data column in the assembled detector (0-based).
    pub x0: u32,
    /// First data row in the assembled detector (0-based).
    pub y0: u32,
    /// Data columns.
    pub width: u32,
    /// Data rows.
    pub height: u32,
    /// Raw columns run right-to-left across the detector (top-row amplifiers).
    pub flip_x: bool,
    /// Raw rows run top-to-bottom across the detector (top-row amplifiers).
    pub flip_y: bool,
}

impl AmpLayout {
    /// The 16 amplifiers of a `size × size` detector.
    pub fn all(size: u32) -> Vec<AmpLayout> {
        let (w, h) = (size / AMP_COLUMNS, size / AMP_ROWS);
        (0..AMP_COLUMNS * AMP_ROWS)
            .map(|index| {
                let (col, row) = (index % AMP_COLUMNS, index / AMP_COLUMNS);
                AmpLayout {
                    index,
                    name: format!("AMP{index:02}"),
                    x0: col * w,
                    y0: row * h,
                    width: w,
                    height: h,
                    flip_x: row == 1,
                    flip_y: row == 1,
                }
            })
            .collect()
    }
    /// Raw array columns (prescan + data + serial overscan).
    pub fn raw_width(&self) -> u32 {
        PRESCAN + self.width + SERIAL_OVERSCAN
    }
    /// Raw array rows (data + parallel overscan).
    pub fn raw_height(&self) -> u32 {
        self.height + PARALLEL_OVERSCAN
    }
    /// `DATASEC`: the data region of the raw array, IRAF notation (1-based, inclusive).
    pub fn datasec(&self) -> String {
        format!(
            "[{}:{},1:{}]",
            PRESCAN + 1,
            PRESCAN + self.width,
            self.height
        )
    }
    /// `BIASSEC`: the serial overscan of the raw array.
    pub fn biassec(&self) -> String {
        format!(
            "[{}:{},1:{}]",
            PRESCAN + self.width + 1,
            PRESCAN + self.width + SERIAL_OVERSCAN,
            self.height
        )
    }
    /// `DETSEC`: where `DATASEC` lands in the detector; a reversed range is a flip.
    pub fn detsec(&self) -> String {
        let (xa, xb) = (self.x0 + 1, self.x0 + self.width);
        let (ya, yb) = (self.y0 + 1, self.y0 + self.height);
        let (x1, x2) = if self.flip_x { (xb, xa) } else { (xa, xb) };
        let (y1, y2) = if self.flip_y { (yb, ya) } else { (ya, yb) };
        format!("[{x1}:{x2},{y1}:{y2}]")
    }
    /// Detector pixel (0-based) of raw data pixel (i, j) counted from the first data
    /// column and row.
    pub fn detector_pixel(&self, i: u32, j: u32) -> (u32, u32) {
        let x = if self.flip_x {
            self.x0 + self.width - 1 - i
        } else {
            self.x0 + i
        };
        let y = if self.flip_y {
            self.y0 + self.height - 1 - j
        } else {
            self.y0 + j
        };
        (x, y)
    }
}

/// Electrical properties of one amplifier.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AmpParams {
    /// Gain, e⁻ per ADU.
    pub gain: f64,
    /// Read noise, e⁻ RMS.
    pub read_noise_e: f64,
    /// Bias level, ADU.
    pub bias_adu: f64,
    /// Relative quantum efficiency of the amplifier's segment (flat-field factor).
    pub qe: f64,
}

/// A bad column of a detector.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BadColumn {
    /// Column in the assembled detector, 0-based.
    pub x: u32,
    /// First affected row.
    pub y0: u32,
    /// Last affected row (inclusive).
    pub y1: u32,
    /// `true`: hot (extra dark current [`Self::hot_e_per_s`]); `false`: dead (response 3%).
    pub hot: bool,
    /// Extra dark current of a hot column, e⁻/s.
    pub hot_e_per_s: f64,
}

/// One detector of the camera.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorModel {
    /// Detector number.
    pub id: u16,
    /// Side, pixels.
    pub size: u32,
    /// Focal-plane position of the detector's pixel (0, 0) relative to the boresight,
    /// pixels in the camera frame.
    pub origin_px: [f64; 2],
    /// Amplifier geometry.
    pub amps: Vec<AmpLayout>,
    /// Amplifier electronics, same order as `amps`.
    pub amp_params: Vec<AmpParams>,
    /// Bad columns.
    pub bad_columns: Vec<BadColumn>,
    /// Hot pixels: (column, row, extra dark current e⁻/s).
    pub hot_pixels: Vec<(u32, u32, f64)>,
    seed: u64,
}

impl DetectorModel {
    /// Detector `id` of a camera of `n` detectors of `size` pixels, with per-amplifier
    /// electronics and defects drawn from `seed`.
    pub fn new(seed: u64, id: u16, n: u16, size: u32) -> Self {
        let grid = (f64::from(n)).sqrt().ceil() as u32;
        let (col, row) = (u32::from(id) % grid, u32::from(id) / grid);
        let pitch = f64::from(size) + DETECTOR_GAP_PX;
        let centre = |i: u32| (f64::from(i) - 0.5 * f64::from(grid - 1)) * pitch;
        let origin_px = [
            centre(col) - 0.5 * f64::from(size),
            centre(row) - 0.5 * f64::from(size),
        ];
        let mut r = rng::stream(seed, "detector", u64::from(id), 0, 0);
        let amps = AmpLayout::all(size);
        let amp_params = amps
            .iter()
            .map(|_| AmpParams {
                // Rounded like a measured value, so the header carries it exactly.
                gain: (r.random_range(1.4..1.9f64) * 1e4).round() / 1e4,
                read_noise_e: (r.random_range(4.5..8.0f64) * 1e3).round() / 1e3,
                bias_adu: r.random_range(15_000.0..25_000.0f64).round(),
                qe: r.random_range(0.97..1.03),
            })
            .collect();
        let n_bad = r.random_range(1..=4);
        let bad_columns = (0..n_bad)
            .map(|_| {
                let y0 = if r.random_bool(0.5) {
                    0
                } else {
                    r.random_range(0..size)
                };
                BadColumn {
                    x: r.random_range(0..size),
                    y0,
                    y1: r.random_range(y0..size),
                    hot: r.random_bool(0.5),
                    hot_e_per_s: r.random_range(5.0..50.0),
                }
            })
            .collect();
        let n_hot = (f64::from(size) * f64::from(size) * 2e-5) as usize;
        let hot_pixels = (0..n_hot)
            .map(|_| {
                (
                    r.random_range(0..size),
                    r.random_range(0..size),
                    10f64.powf(r.random_range(0.0..2.5)),
                )
            })
            .collect();
        Self {
            id,
            size,
            origin_px,
            amps,
            amp_params,
            bad_columns,
            hot_pixels,
            seed,
        }
    }

    /// Focal-plane position (pixels from the boresight) of detector pixel (x, y).
    pub fn focal_plane(&self, x: f64, y: f64) -> (f64, f64) {
        (self.origin_px[0] + x, self.origin_px[1] + y)
    }

    /// The amplifier holding detector pixel (x, y).
    pub fn amp_of(&self, x: u32, y: u32) -> usize {
        let w = self.size / AMP_COLUMNS;
        let h = self.size / AMP_ROWS;
        ((y / h) * AMP_COLUMNS + x / w) as usize
    }

    /// The true flat field: relative response of every pixel (row-major,
    /// `size × size`), the product of vignetting, amplifier QE, pixel-to-pixel response
    /// and dead columns. Deterministic and the same for every visit.
    pub fn flat(&self) -> Vec<f32> {
        let n = self.size as usize;
        let mut out = vec![0f32; n * n];
        let half_width = PIXEL_RESPONSE_RMS * 3f64.sqrt();
        let key = rng::key(self.seed, "flat", u64::from(self.id), 0, 0);
        for y in 0..n {
            let fy = self.origin_px[1] + y as f64;
            for x in 0..n {
                let fx = self.origin_px[0] + x as f64;
                let r2 = (fx * fx + fy * fy) / (VIGNETTING_RADIUS_PX * VIGNETTING_RADIUS_PX);
                let vig = 1.0 - VIGNETTING_AT_EDGE * r2;
                let amp = self.amp_params[self.amp_of(x as u32, y as u32)].qe;
                let h = rng::mix64(key ^ (y * n + x) as u64);
                let p2p = 1.0 + half_width * (2.0 * rng::unit(h) - 1.0);
                out[y * n + x] = (vig * amp * p2p) as f32;
            }
        }
        for c in self.bad_columns.iter().filter(|c| !c.hot) {
            for y in c.y0..=c.y1 {
                out[y as usize * n + c.x as usize] *= 0.03;
            }
        }
        out
    }

    /// Dark current of every pixel, e⁻/s (row-major), including hot columns and pixels.
    pub fn dark(&self) -> Vec<f32> {
        let n = self.size as usize;
        let mut out = vec![DARK_CURRENT_E_PER_S as f32; n * n];
        for c in self.bad_columns.iter().filter(|c| c.hot) {
            for y in c.y0..=c.y1 {
                out[y as usize * n + c.x as usize] += c.hot_e_per_s as f32;
            }
        }
        for &(x, y, rate) in &self.hot_pixels {
            out[y as usize * n + x as usize] += rate as f32;
        }
        out
    }

    /// Fixed bias pattern of amplifier `amp`: an offset in ADU for every raw column
    /// (prescan, data and overscan), the same in every exposure: a decaying ramp at the
    /// start of the serial register plus column-to-column offsets (σ 0.8 ADU). The
    /// serial overscan carries only the ramp's tail, so overscan subtraction removes
    /// the level but not the data-column structure (that is the master bias's job).
    pub fn bias_pattern(&self, amp: usize) -> Vec<f32> {
        let layout = &self.amps[amp];
        let mut r = rng::stream(self.seed, "bias-pattern", u64::from(self.id), amp as u64, 0);
        let normal = Normal::new(0.0, 0.8).expect("valid normal");
        (0..layout.raw_width())
            .map(|i| {
                let ramp = 12.0 * (-f64::from(i) / 4.0).exp();
                let col = if i >= PRESCAN && i < PRESCAN + layout.width {
                    normal.sample(&mut r)
                } else {
                    0.0
                };
                (ramp + col) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplifiers_tile_the_detector_exactly_once() {
        let size = 512;
        let amps = AmpLayout::all(size);
        assert_eq!(amps.len(), 16);
        let mut hits = vec![0u8; (size * size) as usize];
        for a in &amps {
            for j in 0..a.height {
                for i in 0..a.width {
                    let (x, y) = a.detector_pixel(i, j);
                    hits[(y * size + x) as usize] += 1;
                }
            }
        }
        assert!(hits.iter().all(|&h| h == 1));
    }

    #[test]
    fn iraf_sections_describe_the_layout() {
        let amps = AmpLayout::all(4096);
        assert_eq!(amps[0].datasec(), "[4:515,1:2048]");
        assert_eq!(amps[0].biassec(), "[516:547,1:2048]");
        assert_eq!(amps[0].detsec(), "[1:512,1:2048]");
        assert_eq!(amps[1].detsec(), "[513:1024,1:2048]");
        assert_eq!(amps[8].detsec(), "[512:1,4096:2049]");
        assert_eq!(amps[15].detsec(), "[4096:3585,4096:2049]");
        assert_eq!(amps[15].detector_pixel(0, 0), (4095, 4095));
        assert_eq!((amps[0].raw_width(), amps[0].raw_height()), (547, 2064));
    }

    #[test]
    fn detectors_are_on_a_grid_around_the_boresight() {
        let d0 = DetectorModel::new(1, 0, 4, 2048);
        let d3 = DetectorModel::new(1, 3, 4, 2048);
        let c0 = d0.focal_plane(1024.0, 1024.0);
        let c3 = d3.focal_plane(1024.0, 1024.0);
        assert!((c0.0 + c3.0).abs() < 1e-9 && (c0.1 + c3.1).abs() < 1e-9);
        assert!((c3.0 - c0.0 - (2048.0 + DETECTOR_GAP_PX)).abs() < 1e-9);
        let single = DetectorModel::new(1, 0, 1, 4096);
        assert_eq!(single.focal_plane(2048.0, 2048.0), (0.0, 0.0));
    }

    #[test]
    fn flat_and_dark_are_deterministic_with_defects() {
        let d = DetectorModel::new(7, 2, 9, 256);
        assert_eq!(d.flat(), DetectorModel::new(7, 2, 9, 256).flat());
        let flat = d.flat();
        let mean: f64 = flat.iter().map(|&v| f64::from(v)).sum::<f64>() / flat.len() as f64;
        assert!(mean > 0.85 && mean < 1.03, "mean flat {mean}");
        let dark = d.dark();
        let hot = d.hot_pixels[0];
        assert!(f64::from(dark[(hot.1 * 256 + hot.0) as usize]) >= hot.2);
        for c in &d.bad_columns {
            let v = flat[(c.y0 * 256 + c.x) as usize];
            if c.hot {
                assert!(f64::from(dark[(c.y0 * 256 + c.x) as usize]) >= c.hot_e_per_s);
            } else {
                assert!(v < 0.05, "dead column response {v}");
            }
        }
    }
}
