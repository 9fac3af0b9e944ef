//! Calibrated images as FITS files: what `apflow diffim` reads and writes.
//!
//! Layout written (and preferred on reading): the primary HDU holds the image (`BITPIX =
//! -32`) with its WCS and `BUNIT`; extensions `VARIANCE` (float32, `BUNIT` squared),
//! `MASK` (int32, one bit per plane, named by `MP_<PLANE>` cards as in LSST's calexps)
//! and optionally `PSF` (float32, odd-sized, centred, sum 1). The simulator's template
//! tiles follow the same layout (without `MASK`), so they can be given to `diffim`
//! directly.
//!
//! On reading, the image is the primary HDU if it has data, else the first image
//! extension (`IMAGE` or `SCI`). Without `VARIANCE`, the variance is the square of the
//! image's robust noise (σ from the interquartile range), the same for every pixel;
//! without `MASK`, non-finite pixels are masked `NO_DATA` and set to 0.

use std::path::Path;

use apflow_core::wcs::{CardValue, TanSipWcs};
use fitsio::FitsFile;
use fitsio::hdu::FitsHdu;
use fitsio::images::{ImageDescription, ImageType};

use crate::error::ScienceError;
use crate::image::{Image, MaskedImage, mask, median_and_iqr_sigma};
use crate::io::{bad, image_shape, open, read_wcs};
use crate::psf::ImagePsf;

/// A calibrated image read from FITS.
#[derive(Debug, Clone)]
pub struct CalibratedImage {
    /// Pixels, variance and mask.
    pub masked: MaskedImage,
    /// Its WCS.
    pub wcs: TanSipWcs,
    /// The PSF image from a `PSF` extension, if there is one.
    pub psf: Option<ImagePsf>,
    /// `BUNIT` of the image (empty if absent).
    pub unit: String,
    /// `BAND` or `FILTER`, if present.
    pub band: Option<String>,
    /// `MJD-OBS`, if present.
    pub mjd_obs: Option<f64>,
    /// Whether the variance plane came from the file (else it was estimated).
    pub variance_from_file: bool,
}

/// Reads a calibrated image (see the module docs for the layout).
pub fn read_calibrated_image(path: &Path) -> Result<CalibratedImage, ScienceError> {
    let mut f = open(path)?;
    let primary = f.primary_hdu().map_err(|e| bad(path, e))?;
    let hdu = if image_shape(&primary).is_some() {
        primary
    } else {
        ["IMAGE", "SCI"]
            .iter()
            .find_map(|n| f.hdu(*n).ok())
            .or_else(|| f.hdu(1).ok())
            .ok_or_else(|| bad(path, "no image HDU"))?
    };
    let (w, h) = image_shape(&hdu).ok_or_else(|| bad(path, "the image HDU is not a 2-D image"))?;
    let data: Vec<f32> = hdu.read_image(&mut f).map_err(|e| bad(path, e))?;
    let primary = f.primary_hdu().map_err(|e| bad(path, e))?;
    let wcs = read_wcs(&mut f, &hdu, path, "image HDU")
        .or_else(|_| read_wcs(&mut f, &primary, path, "primary header"))?;
    let key_str = |f: &mut FitsFile, k: &str| {
        hdu.read_key::<String>(f, k)
            .ok()
            .or_else(|| primary.read_key::<String>(f, k).ok())
    };
    let unit = key_str(&mut f, "BUNIT").unwrap_or_default();
    let band = key_str(&mut f, "BAND").or_else(|| key_str(&mut f, "FILTER"));
    let mjd_obs = hdu
        .read_key::<f64>(&mut f, "MJD-OBS")
        .ok()
        .or_else(|| primary.read_key::<f64>(&mut f, "MJD-OBS").ok());

    let mut image = Image::from_vec(w, h, data);
    let mut mask_plane = match f.hdu("MASK") {
        Ok(m) => {
            if image_shape(&m) != Some((w, h)) {
                return Err(bad(path, "MASK has a different size from the image"));
            }
            let v: Vec<i32> = m.read_image(&mut f).map_err(|e| bad(path, e))?;
            Image::from_vec(w, h, v.into_iter().map(|x| x as u32).collect())
        }
        Err(_) => Image::new(w, h),
    };
    for (v, m) in image.data_mut().iter_mut().zip(mask_plane.data_mut()) {
        if !v.is_finite() {
            *v = 0.0;
            *m |= mask::NO_DATA;
        }
    }
    let (variance, variance_from_file) = match f.hdu("VARIANCE") {
        Ok(vh) => {
            if image_shape(&vh) != Some((w, h)) {
                return Err(bad(path, "VARIANCE has a different size from the image"));
            }
            let v: Vec<f32> = vh.read_image(&mut f).map_err(|e| bad(path, e))?;
            (Image::from_vec(w, h, v), true)
        }
        Err(_) => {
            let step = (w * h / 200_000).max(1);
            let mut sample: Vec<f32> = image
                .data()
                .iter()
                .zip(mask_plane.data())
                .step_by(step)
                .filter(|(_, m)| **m == 0)
                .map(|(v, _)| *v)
                .collect();
            let (_, sigma) = median_and_iqr_sigma(&mut sample)
                .ok_or_else(|| bad(path, "too few valid pixels to estimate the noise"))?;
            (Image::filled(w, h, sigma * sigma), false)
        }
    };
    let psf = match f.hdu("PSF") {
        Ok(ph) => match image_shape(&ph) {
            Some((pw, ph_h)) if pw == ph_h && pw % 2 == 1 => {
                let v: Vec<f32> = ph.read_image(&mut f).map_err(|e| bad(path, e))?;
                Some(ImagePsf::new(Image::from_vec(pw, pw, v)))
            }
            _ => return Err(bad(path, "PSF must be an odd-sized square image")),
        },
        Err(_) => None,
    };
    Ok(CalibratedImage {
        masked: MaskedImage::from_parts(image, variance, mask_plane),
        wcs,
        psf,
        unit,
        band,
        mjd_obs,
        variance_from_file,
    })
}

fn write_cards(
    f: &mut FitsFile,
    hdu: &FitsHdu,
    cards: &[(String, CardValue, String)],
    path: &Path,
) -> Result<(), ScienceError> {
    for (k, v, c) in cards {
        let r = match v {
            CardValue::Str(s) => hdu.write_key(f, k, (s.as_str(), c.as_str())),
            CardValue::Float(x) => hdu.write_key(f, k, (*x, c.as_str())),
            CardValue::Int(i) => hdu.write_key(f, k, (*i, c.as_str())),
        };
        r.map_err(|e| bad(path, e))?;
    }
    Ok(())
}

/// Writes a masked image: image (primary, with `wcs` and `cards`), `VARIANCE`, `MASK`
/// (with `MP_*` plane cards) and, when given, `PSF`. Replaces an existing file.
pub fn write_masked_image(
    path: &Path,
    masked: &MaskedImage,
    wcs: &TanSipWcs,
    unit: &str,
    cards: &[(String, CardValue, String)],
    psf: Option<&Image<f32>>,
) -> Result<(), ScienceError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| bad(path, e))?;
    }
    let (w, h) = masked.dims();
    let dims = [h, w];
    let float = ImageDescription {
        data_type: ImageType::Float,
        dimensions: &dims,
    };
    let mut f = FitsFile::create(path)
        .with_custom_primary(&float)
        .open()
        .map_err(|e| bad(path, e))?;
    let primary = f.primary_hdu().map_err(|e| bad(path, e))?;
    primary
        .write_image(&mut f, masked.image.data())
        .map_err(|e| bad(path, e))?;
    let mut all = vec![(
        "BUNIT".to_string(),
        CardValue::Str(unit.to_string()),
        "pixel unit".to_string(),
    )];
    all.extend(wcs.cards());
    all.extend_from_slice(cards);
    write_cards(&mut f, &primary, &all, path)?;

    let var = f
        .create_image("VARIANCE", &float)
        .map_err(|e| bad(path, e))?;
    var.write_image(&mut f, masked.variance.data())
        .map_err(|e| bad(path, e))?;
    let var_unit = if unit.is_empty() {
        String::new()
    } else {
        format!("({unit})**2")
    };
    let mut vcards = vec![(
        "BUNIT".to_string(),
        CardValue::Str(var_unit),
        "variance unit".to_string(),
    )];
    vcards.extend(wcs.cards());
    write_cards(&mut f, &var, &vcards, path)?;

    let int = ImageDescription {
        data_type: ImageType::Long,
        dimensions: &dims,
    };
    let m = f.create_image("MASK", &int).map_err(|e| bad(path, e))?;
    let bits: Vec<i32> = masked.mask.data().iter().map(|&b| b as i32).collect();
    m.write_image(&mut f, &bits).map_err(|e| bad(path, e))?;
    let mut mcards: Vec<(String, CardValue, String)> = mask::PLANES
        .iter()
        .map(|(name, bit)| {
            (
                format!("MP_{name}"),
                CardValue::Int(i64::from(bit.trailing_zeros())),
                "mask plane bit number".to_string(),
            )
        })
        .collect();
    mcards.extend(wcs.cards());
    write_cards(&mut f, &m, &mcards, path)?;

    if let Some(p) = psf {
        let pd = [p.height(), p.width()];
        let desc = ImageDescription {
            data_type: ImageType::Float,
            dimensions: &pd,
        };
        let ph = f.create_image("PSF", &desc).map_err(|e| bad(path, e))?;
        ph.write_image(&mut f, p.data()).map_err(|e| bad(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::psf::{GaussianPsf, Psf};

    #[test]
    fn write_then_read_round_trips_every_plane() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.fits");
        let (w, h) = (37, 23);
        let mut m = MaskedImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                m.image.set(x, y, (x * 3 + y) as f32 * 0.5);
                m.variance.set(x, y, 2.0 + x as f32);
                m.mask
                    .set(x, y, if x == y { mask::SAT | mask::CR } else { 0 });
            }
        }
        let wcs =
            TanSipWcs::tan([10.0, -30.0], [18.0, 12.0], 0.2, 17.0).with_radial_distortion(1e-12);
        let psf = GaussianPsf::from_fwhm(3.5).kernel(0.0, 0.0, 21);
        let cards = vec![("BAND".into(), CardValue::Str("r".into()), "band".into())];
        write_masked_image(&path, &m, &wcs, "nJy", &cards, Some(&psf)).unwrap();
        let back = read_calibrated_image(&path).unwrap();
        assert_eq!(back.masked, m);
        assert!(back.variance_from_file);
        assert_eq!(back.unit, "nJy");
        assert_eq!(back.band.as_deref(), Some("r"));
        let (ra0, dec0) = wcs.pixel_to_sky(3.0, 4.0);
        let (ra1, dec1) = back.wcs.pixel_to_sky(3.0, 4.0);
        assert!((ra0 - ra1).abs() < 1e-10 && (dec0 - dec1).abs() < 1e-10);
        let p = back.psf.unwrap();
        assert!((p.sigma_at(0.0, 0.0) - 3.5 / 2.3548).abs() < 0.02);
    }

    #[test]
    fn missing_variance_is_estimated_and_nan_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.fits");
        let (w, h) = (64usize, 64usize);
        let dims = [h, w];
        let desc = ImageDescription {
            data_type: ImageType::Float,
            dimensions: &dims,
        };
        // Gaussian noise with σ = 10, fixed seed.
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let normal = Normal::new(0.0f32, 10.0).unwrap();
        let mut data: Vec<f32> = (0..w * h).map(|_| normal.sample(&mut rng)).collect();
        data[5] = f32::NAN;
        let mut f = FitsFile::create(&path)
            .with_custom_primary(&desc)
            .open()
            .unwrap();
        let hdu = f.primary_hdu().unwrap();
        hdu.write_image(&mut f, &data).unwrap();
        let wcs = TanSipWcs::tan([10.0, -30.0], [1.0, 1.0], 0.2, 0.0);
        write_cards(&mut f, &hdu, &wcs.cards(), &path).unwrap();
        drop(f);
        let back = read_calibrated_image(&path).unwrap();
        assert!(!back.variance_from_file);
        let v = back.masked.variance.get(0, 0);
        assert!(v > 70.0 && v < 130.0, "{v}");
        assert_eq!(back.masked.mask.get(5, 0), mask::NO_DATA);
        assert_eq!(back.masked.image.get(5, 0), 0.0);
    }

    #[test]
    fn a_file_without_wcs_is_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nowcs.fits");
        let dims = [8usize, 8usize];
        let desc = ImageDescription {
            data_type: ImageType::Float,
            dimensions: &dims,
        };
        let mut f = FitsFile::create(&path)
            .with_custom_primary(&desc)
            .open()
            .unwrap();
        let hdu = f.primary_hdu().unwrap();
        hdu.write_image(&mut f, &[1.0f32; 64]).unwrap();
        drop(f);
        let e = read_calibrated_image(&path).unwrap_err();
        assert!(
            matches!(e, ScienceError::BadInput(ref m) if m.contains("CTYPE1")),
            "{e}"
        );
    }
}
