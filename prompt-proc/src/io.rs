//! Reading the pipeline's inputs: raw exposures, master calibrations and template
//! tiles, from the FITS files the camera (here the simulator, `docs/CAMERA.md`) writes,
//! or built in memory with the `from_parts` constructors.
//!
//! Units: raw pixels in ADU (as stored, `i32` or `f32`); bias in ADU (after per-row
//! overscan subtraction), dark in e⁻/s, flat as the relative response; template tiles in
//! nJy per pixel with variance in nJy². Sections (`DATASEC`, `BIASSEC`, `DETSEC`) follow
//! IRAF notation, 1-based and inclusive; a reversed range is a flip.
//!
//! Every failure (missing file, missing key, wrong size, unparsable section) is a
//! [`ScienceError::BadInput`] naming the path and the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use apflow_core::wcs::{CardValue, TanSipWcs};
use fitsio::FitsFile;
use fitsio::hdu::{FitsHdu, HduInfo};
use serde::Deserialize;

use crate::error::ScienceError;
use crate::image::Image;
use crate::psf::ImagePsf;

/// An IRAF image section `[x1:x2,y1:y2]` (1-based, inclusive; `x1 > x2` is a flip).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// First column as written (1-based).
    pub x1: usize,
    /// Last column as written (1-based).
    pub x2: usize,
    /// First row as written (1-based).
    pub y1: usize,
    /// Last row as written (1-based).
    pub y2: usize,
}

impl Section {
    /// Parses `[x1:x2,y1:y2]`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let inner = s.strip_prefix('[')?.strip_suffix(']')?;
        let (xs, ys) = inner.split_once(',')?;
        let range = |r: &str| -> Option<(usize, usize)> {
            let (a, b) = r.split_once(':')?;
            let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a >= 1 && b >= 1).then_some((a, b))
        };
        let (x1, x2) = range(xs)?;
        let (y1, y2) = range(ys)?;
        Some(Self { x1, x2, y1, y2 })
    }

    /// A section from 0-based inclusive corners (written in this order, so reversed
    /// ranges are flips).
    pub fn from_zero_based(x1: usize, x2: usize, y1: usize, y2: usize) -> Self {
        Self {
            x1: x1 + 1,
            x2: x2 + 1,
            y1: y1 + 1,
            y2: y2 + 1,
        }
    }

    /// Columns covered.
    pub fn width(&self) -> usize {
        self.x1.abs_diff(self.x2) + 1
    }

    /// Rows covered.
    pub fn height(&self) -> usize {
        self.y1.abs_diff(self.y2) + 1
    }

    /// Smallest 0-based column.
    pub fn x_min(&self) -> usize {
        self.x1.min(self.x2) - 1
    }

    /// Smallest 0-based row.
    pub fn y_min(&self) -> usize {
        self.y1.min(self.y2) - 1
    }

    /// The section runs right to left.
    pub fn flip_x(&self) -> bool {
        self.x1 > self.x2
    }

    /// The section runs top to bottom.
    pub fn flip_y(&self) -> bool {
        self.y1 > self.y2
    }

    /// 0-based column of the `i`-th column of the section (in its written order).
    #[inline]
    pub fn x_at(&self, i: usize) -> usize {
        if self.flip_x() {
            self.x1 - 1 - i
        } else {
            self.x1 - 1 + i
        }
    }

    /// 0-based row of the `j`-th row of the section (in its written order).
    #[inline]
    pub fn y_at(&self, j: usize) -> usize {
        if self.flip_y() {
            self.y1 - 1 - j
        } else {
            self.y1 - 1 + j
        }
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}:{},{}:{}]", self.x1, self.x2, self.y1, self.y2)
    }
}

/// Raw pixel values as stored: 32-bit integers or 32-bit floats, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum RawPixels {
    /// `BITPIX = 32`.
    I32(Vec<i32>),
    /// `BITPIX = -32` (may hold NaN).
    F32(Vec<f32>),
}

impl RawPixels {
    /// Number of pixels.
    pub fn len(&self) -> usize {
        match self {
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
        }
    }

    /// No pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixel `k` (row-major) as `f32`.
    #[inline]
    pub fn get(&self, k: usize) -> f32 {
        match self {
            Self::I32(v) => v[k] as f32,
            Self::F32(v) => v[k],
        }
    }
}

/// One amplifier of a raw exposure.
#[derive(Clone, Debug, PartialEq)]
pub struct RawAmp {
    /// `EXTNAME` / `AMPNAME`.
    pub name: String,
    /// Raw array columns (prescan + data + overscan).
    pub width: usize,
    /// Raw array rows.
    pub height: usize,
    /// Pixels, row-major `height × width`, ADU.
    pub data: RawPixels,
    /// `GAIN`, e⁻ per ADU.
    pub gain: f64,
    /// `RDNOISE`, e⁻.
    pub read_noise_e: f64,
    /// `SATURATE`, ADU.
    pub saturate_adu: f64,
    /// `DATASEC` in the raw array.
    pub datasec: Section,
    /// `BIASSEC` (serial overscan) in the raw array.
    pub biassec: Section,
    /// `DETSEC`: where `DATASEC` lands in the detector (reversed ranges are flips).
    pub detsec: Section,
}

/// Primary-header metadata of a raw exposure.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMeta {
    /// `VISIT`.
    pub visit: u64,
    /// `SNAP`.
    pub snap: u8,
    /// `DETECTOR`.
    pub detector: u16,
    /// `BAND`.
    pub band: String,
    /// `MJD-OBS`: shutter open, MJD TAI.
    pub mjd_obs: f64,
    /// `MJD-END`: shutter close, MJD TAI.
    pub mjd_end: f64,
    /// `EXPTIME`, seconds.
    pub exptime_s: f64,
    /// `DARKTIME`, seconds (time over which dark current accrued).
    pub darktime_s: f64,
    /// `SATURATE`, ADU.
    pub saturate_adu: f64,
    /// `FULLWELL`, e⁻, when given.
    pub full_well_e: Option<f64>,
    /// `SEEING`, arcsec FWHM at the boresight, when given.
    pub seeing_arcsec: Option<f64>,
    /// `DETSIZE`: assembled (width, height).
    pub detector_size: (usize, usize),
    /// The header TAN-SIP WCS of the assembled detector.
    pub wcs: TanSipWcs,
}

/// A raw exposure (one snap of one detector).
#[derive(Clone, Debug, PartialEq)]
pub struct RawSnap {
    /// Primary header.
    pub meta: RawMeta,
    /// The amplifiers.
    pub amps: Vec<RawAmp>,
}

impl RawSnap {
    /// Checks that every amplifier's sections fit its array and the detector, and
    /// that the amplifiers tile the detector exactly once.
    pub fn validate(&self) -> Result<(), ScienceError> {
        let (w, h) = self.meta.detector_size;
        if w == 0 || h == 0 || self.amps.is_empty() {
            return Err(ScienceError::BadInput(format!(
                "raw snap {} of visit {} detector {}: empty detector or no amplifiers",
                self.meta.snap, self.meta.visit, self.meta.detector
            )));
        }
        let mut covered = 0usize;
        for a in &self.amps {
            let bad = |why: String| {
                ScienceError::BadInput(format!(
                    "raw visit {} snap {} detector {} {}: {why}",
                    self.meta.visit, self.meta.snap, self.meta.detector, a.name
                ))
            };
            if a.data.len() != a.width * a.height {
                return Err(bad(format!(
                    "{} pixels for a {}x{} array",
                    a.data.len(),
                    a.width,
                    a.height
                )));
            }
            let fits = |s: &Section, w: usize, h: usize| {
                s.x_min() + s.width() <= w && s.y_min() + s.height() <= h
            };
            if !fits(&a.datasec, a.width, a.height) || !fits(&a.biassec, a.width, a.height) {
                return Err(bad(format!(
                    "DATASEC {} or BIASSEC {} outside the {}x{} array",
                    a.datasec, a.biassec, a.width, a.height
                )));
            }
            if a.datasec.flip_x() || a.datasec.flip_y() {
                return Err(bad(format!("reversed DATASEC {}", a.datasec)));
            }
            if !fits(&a.detsec, w, h) {
                return Err(bad(format!("DETSEC {} outside the detector", a.detsec)));
            }
            if a.detsec.width() != a.datasec.width() || a.detsec.height() != a.datasec.height() {
                return Err(bad(format!(
                    "DETSEC {} and DATASEC {} differ in size",
                    a.detsec, a.datasec
                )));
            }
            if a.biassec.height() < a.datasec.height() {
                return Err(bad(format!("BIASSEC {} shorter than the data", a.biassec)));
            }
            if !(a.gain.is_finite() && a.gain > 0.0 && a.read_noise_e.is_finite()) {
                return Err(bad(format!(
                    "GAIN {} / RDNOISE {} unusable",
                    a.gain, a.read_noise_e
                )));
            }
            covered += a.detsec.width() * a.detsec.height();
        }
        if covered != w * h {
            return Err(ScienceError::BadInput(format!(
                "raw visit {} detector {}: amplifiers cover {covered} of {} pixels",
                self.meta.visit,
                self.meta.detector,
                w * h
            )));
        }
        Ok(())
    }
}

/// Master calibrations of one detector, assembled frames.
#[derive(Clone, Debug, PartialEq)]
pub struct MasterCalibs {
    /// Bias residual, ADU, after per-row overscan subtraction.
    pub bias: Image<f32>,
    /// Dark current, e⁻/s.
    pub dark: Image<f32>,
    /// Flat field (relative response; 1.0 is the nominal response).
    pub flat: Image<f32>,
    /// `1 / flat`, 0 where the flat is not positive and finite (precomputed once per
    /// detector so ISR multiplies).
    pub inv_flat: Image<f32>,
    /// Typical (median) dark current, e⁻/s, for the variance of normal pixels.
    pub dark_level: f32,
    defects: std::sync::OnceLock<(f32, f32, Vec<usize>)>,
}

impl MasterCalibs {
    /// Bundles the three frames (all the same size) and precomputes `1 / flat`.
    pub fn from_parts(
        bias: Image<f32>,
        dark: Image<f32>,
        flat: Image<f32>,
    ) -> Result<Self, ScienceError> {
        if bias.dims() != dark.dims() || bias.dims() != flat.dims() || bias.data().is_empty() {
            return Err(ScienceError::BadInput(format!(
                "master calibrations differ in size: bias {:?}, dark {:?}, flat {:?}",
                bias.dims(),
                dark.dims(),
                flat.dims()
            )));
        }
        let inv_flat = flat.map(|f| {
            if f.is_finite() && f > 0.0 {
                1.0 / f
            } else {
                0.0
            }
        });
        let mut sample: Vec<f32> = dark.data().iter().step_by(97).copied().collect();
        let dark_level = crate::image::median_and_iqr_sigma(&mut sample)
            .map(|(m, _)| m.max(0.0))
            .unwrap_or(0.0);
        Ok(Self {
            bias,
            dark,
            flat,
            inv_flat,
            dark_level,
            defects: std::sync::OnceLock::new(),
        })
    }

    /// Row-major indices of defective pixels: dark above `hot_e_per_s`, flat below
    /// `dead_flat` or not finite and positive, or a non-finite bias or dark. Computed
    /// once per thresholds and cached (the calibrations serve a whole night).
    pub fn defects(&self, hot_e_per_s: f32, dead_flat: f32) -> std::borrow::Cow<'_, [usize]> {
        let compute = || -> Vec<usize> {
            let (b, d, f) = (self.bias.data(), self.dark.data(), self.flat.data());
            (0..b.len())
                .filter(|&i| {
                    let ok = d[i] <= hot_e_per_s && f[i] >= dead_flat && b[i].is_finite();
                    !ok
                })
                .collect()
        };
        let c = self
            .defects
            .get_or_init(|| (hot_e_per_s, dead_flat, compute()));
        if c.0 == hot_e_per_s && c.1 == dead_flat {
            std::borrow::Cow::Borrowed(&c.2)
        } else {
            std::borrow::Cow::Owned(compute())
        }
    }

    /// `(width, height)`.
    pub fn dims(&self) -> (usize, usize) {
        self.bias.dims()
    }
}

/// One entry of `templates/tiles.json`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TemplateTileInfo {
    /// Tile id, `"<dec_index>-<ra_index>"`.
    pub id: String,
    /// Band letter.
    pub band: String,
    /// File relative to the templates directory.
    pub file: String,
    /// Centre (RA, Dec), degrees.
    pub centre_deg: [f64; 2],
    /// Image side, pixels.
    pub size_px: u32,
    /// Image corners on the sky (RA, Dec), degrees.
    pub corners_deg: Vec<[f64; 2]>,
    /// FWHM of the coadd PSF, arcsec.
    pub psf_fwhm_arcsec: f64,
    /// 5σ point-source depth, AB mag.
    pub depth_5sigma_mag: f64,
    /// Absolute path of the tile file (filled by [`read_template_index`]).
    #[serde(skip)]
    pub path: PathBuf,
}

impl TemplateTileInfo {
    /// The same entry with [`Self::path`] set.
    pub fn with_path(mut self, path: PathBuf) -> Self {
        self.path = path;
        self
    }
}

/// A template tile: image in nJy per pixel, variance in nJy², its PSF and TAN WCS.
#[derive(Clone, Debug)]
pub struct TemplateTile {
    /// Tile id.
    pub id: String,
    /// Band letter.
    pub band: String,
    /// Image, nJy per pixel (sky-subtracted).
    pub image: Image<f32>,
    /// Variance, nJy².
    pub variance: Image<f32>,
    /// Mask: NO_DATA where the image or variance was not finite (those pixels are 0).
    pub mask: Image<u32>,
    /// The coadd's PSF (in tile pixels).
    pub psf: ImagePsf,
    /// The tile's WCS.
    pub wcs: TanSipWcs,
}

impl TemplateTile {
    /// Builds a tile from its parts (for example the simulator's `render_template`
    /// output: image, variance, PSF kernel of side `psf_size`).
    pub fn from_parts(
        id: impl Into<String>,
        band: impl Into<String>,
        mut image: Image<f32>,
        mut variance: Image<f32>,
        psf: Image<f32>,
        wcs: TanSipWcs,
    ) -> Result<Self, ScienceError> {
        let id = id.into();
        if image.dims() != variance.dims() || image.data().is_empty() {
            return Err(ScienceError::BadInput(format!(
                "template tile {id}: image {:?} and variance {:?} differ",
                image.dims(),
                variance.dims()
            )));
        }
        if psf.width().is_multiple_of(2) || psf.width() != psf.height() {
            return Err(ScienceError::BadInput(format!(
                "template tile {id}: PSF {:?} is not odd and square",
                psf.dims()
            )));
        }
        let sum: f64 = psf.data().iter().map(|&v| f64::from(v)).sum();
        if !(sum.is_finite() && sum > 0.0) {
            return Err(ScienceError::BadInput(format!(
                "template tile {id}: PSF sums to {sum}"
            )));
        }
        let mut mask = Image::new(image.width(), image.height());
        for ((v, s), m) in image
            .data_mut()
            .iter_mut()
            .zip(variance.data_mut())
            .zip(mask.data_mut())
        {
            if !(v.is_finite() && s.is_finite()) {
                *v = 0.0;
                *s = 0.0;
                *m = crate::image::mask::NO_DATA;
            }
        }
        Ok(Self {
            id,
            band: band.into(),
            image,
            variance,
            mask,
            psf: ImagePsf::new(psf),
            wcs,
        })
    }
}

pub(crate) fn bad(path: &Path, why: impl std::fmt::Display) -> ScienceError {
    ScienceError::BadInput(format!("{}: {why}", path.display()))
}

/// Header of one HDU as strings (cfitsio returns numeric values as text).
struct Header<'a> {
    path: &'a Path,
    what: String,
    cards: HashMap<String, String>,
}

impl Header<'_> {
    fn read<'a>(
        f: &mut FitsFile,
        hdu: &FitsHdu,
        path: &'a Path,
        what: &str,
        keys: &[&str],
    ) -> Header<'a> {
        let mut cards = HashMap::new();
        for k in keys {
            if let Ok(v) = hdu.read_key::<String>(f, k) {
                cards.insert((*k).to_string(), v.trim().to_string());
            }
        }
        Header {
            path,
            what: what.to_string(),
            cards,
        }
    }
    fn missing(&self, key: &str) -> ScienceError {
        bad(self.path, format!("{}: key {key} missing", self.what))
    }
    fn str(&self, key: &str) -> Result<String, ScienceError> {
        self.cards
            .get(key)
            .cloned()
            .ok_or_else(|| self.missing(key))
    }
    fn f64(&self, key: &str) -> Result<f64, ScienceError> {
        let s = self.str(key)?;
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                bad(
                    self.path,
                    format!("{}: {key} = {s:?} is not a number", self.what),
                )
            })
    }
    fn opt_f64(&self, key: &str) -> Option<f64> {
        self.cards
            .get(key)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    }
    fn int(&self, key: &str) -> Result<i64, ScienceError> {
        let v = self.f64(key)?;
        if v.fract() != 0.0 {
            return Err(bad(
                self.path,
                format!("{}: {key} = {v} is not an integer", self.what),
            ));
        }
        Ok(v as i64)
    }
    fn section(&self, key: &str) -> Result<Section, ScienceError> {
        let s = self.str(key)?;
        Section::parse(&s).ok_or_else(|| {
            bad(
                self.path,
                format!("{}: {key} = {s:?} is not an IRAF section", self.what),
            )
        })
    }
    fn wcs(&self) -> Result<TanSipWcs, ScienceError> {
        TanSipWcs::from_header(|k| self.cards.get(k).map(|s| CardValue::Str(s.clone())))
            .map_err(|e| bad(self.path, format!("{}: {e}", self.what)))
    }
}

/// The TAN-SIP WCS in one HDU's header; `what` names the HDU in errors.
pub fn read_wcs(
    f: &mut FitsFile,
    hdu: &FitsHdu,
    path: &Path,
    what: &str,
) -> Result<TanSipWcs, ScienceError> {
    let keys = TanSipWcs::header_keys();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    Header::read(f, hdu, path, what, &key_refs).wcs()
}

pub(crate) fn open(path: &Path) -> Result<FitsFile, ScienceError> {
    if !path.is_file() {
        return Err(bad(path, "no such file"));
    }
    FitsFile::open(path).map_err(|e| bad(path, format!("not a readable FITS file: {e}")))
}

/// `(width, height)` of a non-empty 2-D image HDU.
pub(crate) fn image_shape(hdu: &FitsHdu) -> Option<(usize, usize)> {
    match &hdu.info {
        HduInfo::ImageInfo { shape, .. } if shape.len() == 2 && shape[0] > 0 && shape[1] > 0 => {
            Some((shape[1], shape[0]))
        }
        _ => None,
    }
}

/// Reads a raw exposure: the primary header (VISIT, SNAP, DETECTOR, BAND, MJD-OBS,
/// MJD-END, EXPTIME, DARKTIME, SATURATE, DETSIZE, the TAN-SIP WCS; FULLWELL and SEEING
/// when present) and every amplifier HDU (`NAMPS` of them, or all image extensions).
pub fn read_raw(path: &Path) -> Result<RawSnap, ScienceError> {
    let mut f = open(path)?;
    let primary = f.primary_hdu().map_err(|e| bad(path, e))?;
    let mut keys: Vec<String> = [
        "VISIT", "SNAP", "DETECTOR", "BAND", "MJD-OBS", "MJD-END", "EXPTIME", "DARKTIME",
        "SATURATE", "FULLWELL", "SEEING", "DETSIZE", "NAMPS",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.extend(TanSipWcs::header_keys());
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let h = Header::read(&mut f, &primary, path, "primary header", &key_refs);
    let detsize = h.section("DETSIZE")?;
    let exptime_s = h.f64("EXPTIME")?;
    let meta = RawMeta {
        visit: u64::try_from(h.int("VISIT")?).map_err(|_| bad(path, "negative VISIT"))?,
        snap: u8::try_from(h.int("SNAP")?).map_err(|_| bad(path, "SNAP out of range"))?,
        detector: u16::try_from(h.int("DETECTOR")?)
            .map_err(|_| bad(path, "DETECTOR out of range"))?,
        band: h.str("BAND")?,
        mjd_obs: h.f64("MJD-OBS")?,
        mjd_end: h.f64("MJD-END")?,
        exptime_s,
        darktime_s: h.opt_f64("DARKTIME").unwrap_or(exptime_s),
        saturate_adu: h.f64("SATURATE")?,
        full_well_e: h.opt_f64("FULLWELL"),
        seeing_arcsec: h.opt_f64("SEEING"),
        detector_size: (detsize.width(), detsize.height()),
        wcs: h.wcs()?,
    };
    let namps = h.opt_f64("NAMPS").map(|v| v as usize);
    let amp_keys = [
        "EXTNAME", "GAIN", "RDNOISE", "DATASEC", "BIASSEC", "DETSEC", "SATURATE",
    ];
    let mut amps = Vec::new();
    let mut index = 1;
    loop {
        if namps.is_some_and(|n| amps.len() >= n) {
            break;
        }
        let hdu = match f.hdu(index) {
            Ok(h) => h,
            Err(_) if namps.is_none() && index > 1 => break,
            Err(e) => {
                return Err(bad(
                    path,
                    format!(
                        "amplifier HDU {index} of {} unreadable: {e}",
                        namps.unwrap_or(0)
                    ),
                ));
            }
        };
        let what = format!("HDU {index}");
        let ah = Header::read(&mut f, &hdu, path, &what, &amp_keys);
        let (width, height) =
            image_shape(&hdu).ok_or_else(|| bad(path, format!("{what} is not a 2-D image")))?;
        let data = match &hdu.info {
            HduInfo::ImageInfo {
                image_type: fitsio::images::ImageType::Float | fitsio::images::ImageType::Double,
                ..
            } => RawPixels::F32(
                hdu.read_image::<Vec<f32>>(&mut f)
                    .map_err(|e| bad(path, format!("{what}: {e}")))?,
            ),
            _ => RawPixels::I32(
                hdu.read_image::<Vec<i32>>(&mut f)
                    .map_err(|e| bad(path, format!("{what}: {e}")))?,
            ),
        };
        amps.push(RawAmp {
            name: ah
                .str("EXTNAME")
                .unwrap_or_else(|_| format!("AMP{:02}", index - 1)),
            width,
            height,
            data,
            gain: ah.f64("GAIN")?,
            read_noise_e: ah.f64("RDNOISE")?,
            saturate_adu: ah.opt_f64("SATURATE").unwrap_or(meta.saturate_adu),
            datasec: ah.section("DATASEC")?,
            biassec: ah.section("BIASSEC")?,
            detsec: ah.section("DETSEC")?,
        });
        index += 1;
    }
    let snap = RawSnap { meta, amps };
    snap.validate()
        .map_err(|e| bad(path, format!("inconsistent raw file: {e}")))?;
    Ok(snap)
}

fn read_f32_hdu(
    f: &mut FitsFile,
    path: &Path,
    hdu: &FitsHdu,
    what: &str,
) -> Result<Image<f32>, ScienceError> {
    let (w, h) = image_shape(hdu).ok_or_else(|| bad(path, format!("{what} is not a 2-D image")))?;
    let data = hdu
        .read_image::<Vec<f32>>(f)
        .map_err(|e| bad(path, format!("{what}: {e}")))?;
    if data.len() != w * h {
        return Err(bad(
            path,
            format!("{what}: {} pixels for {w}x{h}", data.len()),
        ));
    }
    Ok(Image::from_vec(w, h, data))
}

fn read_primary_image(path: &Path) -> Result<Image<f32>, ScienceError> {
    let mut f = open(path)?;
    let hdu = f.primary_hdu().map_err(|e| bad(path, e))?;
    read_f32_hdu(&mut f, path, &hdu, "primary HDU")
}

/// Reads `calib_dir/{bias,dark,flat}-det<NNN>.fits` (float32 assembled frames).
pub fn read_master_calibs(calib_dir: &Path, detector: u16) -> Result<MasterCalibs, ScienceError> {
    let p = |kind: &str| calib_dir.join(format!("{kind}-det{detector:03}.fits"));
    let bias = read_primary_image(&p("bias"))?;
    let dark = read_primary_image(&p("dark"))?;
    let flat = read_primary_image(&p("flat"))?;
    MasterCalibs::from_parts(bias, dark, flat).map_err(|e| bad(calib_dir, e))
}

/// Reads `templates_dir/tiles.json`; each entry's [`TemplateTileInfo::path`] is set to
/// `templates_dir/<file>`.
pub fn read_template_index(templates_dir: &Path) -> Result<Vec<TemplateTileInfo>, ScienceError> {
    let path = templates_dir.join("tiles.json");
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e))?;
    let mut tiles: Vec<TemplateTileInfo> =
        serde_json::from_str(&text).map_err(|e| bad(&path, format!("bad tile index: {e}")))?;
    for t in &mut tiles {
        t.path = templates_dir.join(&t.file);
    }
    Ok(tiles)
}

/// Reads a template tile: primary image (nJy), `VARIANCE` and `PSF` extensions, TAN WCS
/// and `TILEID` / `BAND` from the primary header.
pub fn read_template_tile(path: &Path) -> Result<TemplateTile, ScienceError> {
    let mut f = open(path)?;
    let primary = f.primary_hdu().map_err(|e| bad(path, e))?;
    let mut keys = TanSipWcs::header_keys();
    keys.push("TILEID".into());
    keys.push("BAND".into());
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let h = Header::read(&mut f, &primary, path, "primary header", &key_refs);
    let wcs = h.wcs()?;
    let image = read_f32_hdu(&mut f, path, &primary, "primary HDU")?;
    let vh = f
        .hdu("VARIANCE")
        .map_err(|e| bad(path, format!("no VARIANCE HDU: {e}")))?;
    let variance = read_f32_hdu(&mut f, path, &vh, "VARIANCE")?;
    let ph = f
        .hdu("PSF")
        .map_err(|e| bad(path, format!("no PSF HDU: {e}")))?;
    let psf = read_f32_hdu(&mut f, path, &ph, "PSF")?;
    let id = h.str("TILEID").unwrap_or_else(|_| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let band = h.str("BAND").unwrap_or_default();
    TemplateTile::from_parts(id, band, image, variance, psf, wcs).map_err(|e| bad(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_parse_with_flips() {
        let s = Section::parse("[512:1,4096:2049]").unwrap();
        assert!(s.flip_x() && s.flip_y());
        assert_eq!((s.width(), s.height()), (512, 2048));
        assert_eq!((s.x_min(), s.y_min()), (0, 2048));
        assert_eq!((s.x_at(0), s.y_at(0)), (511, 4095));
        assert_eq!((s.x_at(511), s.y_at(2047)), (0, 2048));
        let d = Section::parse(" [4:515,1:2048]").unwrap();
        assert!(!d.flip_x() && !d.flip_y());
        assert_eq!((d.x_at(0), d.y_at(0)), (3, 0));
        assert_eq!(d.to_string(), "[4:515,1:2048]");
        assert!(Section::parse("[0:3,1:2]").is_none());
        assert!(Section::parse("4:5,1:2").is_none());
        assert!(Section::parse("[a:5,1:2]").is_none());
    }

    #[test]
    fn missing_files_are_bad_input_naming_the_path() {
        let e = read_raw(Path::new("/nonexistent/raw.fits")).unwrap_err();
        assert!(
            matches!(&e, ScienceError::BadInput(m) if m.contains("/nonexistent/raw.fits")),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = read_master_calibs(dir.path(), 3).unwrap_err();
        assert!(
            matches!(&e, ScienceError::BadInput(m) if m.contains("bias-det003")),
            "{e}"
        );
        let e = read_template_index(dir.path()).unwrap_err();
        assert!(
            matches!(&e, ScienceError::BadInput(m) if m.contains("tiles.json")),
            "{e}"
        );
        std::fs::write(dir.path().join("junk.fits"), b"not fits").unwrap();
        let e = read_template_tile(&dir.path().join("junk.fits")).unwrap_err();
        assert!(
            matches!(&e, ScienceError::BadInput(m) if m.contains("junk.fits")),
            "{e}"
        );
    }
}
