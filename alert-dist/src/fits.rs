//! Alert cutouts as in-memory FITS files (FITS Standard 4.0, Pence et al. 2010).
//!
//! Layout, the one Rubin's alerts use (astropy `CCDData` written with its defaults,
//! which is what `CCDData.read` and brokers expect):
//!
//! | HDU | EXTNAME | BITPIX | content |
//! |-----|---------|--------|---------|
//! | 0 (primary) | — | −32 | flux, `BUNIT = 'nJy'`, the cutout's TAN(-SIP) WCS, `CUTMINX`/`CUTMINY` |
//! | 1 | `MASK` | 16 | mask bits, one `MP_<PLANE>` card per plane (bit number) |
//! | 2 | `UNCERT` | −32 | variance (nJy²), `UTYPE = 'VarianceUncertainty'` |
//! | 3 | `PSFIMAGE` | −32 | the PSF image at the source, odd-sized, centred, sum 1 |
//!
//! The WCS cards come from [`TanSipWcs::cards`] (CRPIX relative to the cutout's pixel
//! grid, see `apflow_prompt_proc::cutout`), in the primary header only (as astropy
//! writes it). The mask is 16-bit (apflow's planes use bits 0–9): a 30 × 30 cutout is
//! then 11 blocks, 31,680 bytes.
//!
//! The writer is hand-written: cfitsio writes only to files or its own memory driver
//! through a global lock, and an alert needs three small files at tens of thousands per
//! second. A FITS file here is 2880-byte blocks of 80-character ASCII cards followed by
//! big-endian data padded with zeros to a block. [`read_image`] reads back what this
//! module writes (any HDU with BITPIX −32, 32 or 16), for `apflow alert show`; the tests
//! read the bytes with cfitsio (the `fitsio` crate).

use apflow_core::wcs::{Card, CardValue, TanSipWcs};
use apflow_prompt_proc::cutout::{Cutout, CutoutSet, shifted_wcs};
use apflow_prompt_proc::image::{MaskedImage, mask};
use thiserror::Error;

/// FITS block size, bytes.
pub const BLOCK: usize = 2880;
/// FITS card size, bytes.
pub const CARD: usize = 80;

/// Why a FITS file could not be written or read.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum FitsError {
    /// A header value cannot be written (non-finite number, key too long, string too
    /// long).
    #[error("FITS card {key}: {why}")]
    BadCard {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The bytes are not a FITS file this reader understands.
    #[error("not a readable FITS image: {0}")]
    Malformed(String),
    /// No HDU with that EXTNAME.
    #[error("no HDU named {0}")]
    NoSuchHdu(String),
}

/// The three cutouts of an alert as FITS bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CutoutBytes {
    /// Difference image.
    pub difference: Vec<u8>,
    /// Science image.
    pub science: Vec<u8>,
    /// Template.
    pub template: Vec<u8>,
}

impl CutoutBytes {
    /// Total bytes of the three.
    pub fn len(&self) -> usize {
        self.difference.len() + self.science.len() + self.template.len()
    }
    /// Whether all three are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends one header card.
fn card(out: &mut Vec<u8>, key: &str, value: &CardValue, comment: &str) -> Result<(), FitsError> {
    let bad = |why: &str| FitsError::BadCard {
        key: key.into(),
        why: why.into(),
    };
    if key.is_empty()
        || key.len() > 32
        || !key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(bad("key must be 1–32 characters of A-Z 0-9 _ -"));
    }
    // Keys over 8 characters (the mask planes' `MP_NO_DATA` …) use the HIERARCH
    // convention, as cfitsio and LSST's afw write them.
    let mut s = if key.len() > 8 {
        format!("HIERARCH {key} = ")
    } else {
        format!("{key:<8}= ")
    };
    let hierarch = key.len() > 8;
    let number = |t: String| if hierarch { t } else { format!("{t:>20}") };
    match value {
        CardValue::Int(i) => s.push_str(&number(i.to_string())),
        CardValue::Float(x) => {
            if !x.is_finite() {
                return Err(bad("non-finite number"));
            }
            // Shortest representation that reads back to the same f64.
            let mut t = format!("{x:E}");
            if !t.contains('.') {
                // "1E0" → "1.0E0": FITS readers want a decimal point in a real.
                if let Some(p) = t.find('E') {
                    t.insert_str(p, ".0");
                }
            }
            s.push_str(&number(t));
        }
        CardValue::Str(v) => {
            if !v.is_ascii() || v.len() > 68 {
                return Err(bad("string values must be ASCII, ≤ 68 characters"));
            }
            let q = v.replace('\'', "''");
            s.push_str(&format!("'{q:<8}'"));
        }
    }
    push_comment(out, s, comment);
    Ok(())
}

fn logical(out: &mut Vec<u8>, key: &str, v: bool, comment: &str) {
    let s = format!("{key:<8}= {:>20}", if v { "T" } else { "F" });
    push_comment(out, s, comment);
}

fn push_comment(out: &mut Vec<u8>, mut s: String, comment: &str) {
    if !comment.is_empty() && s.len() < CARD - 3 {
        s.push_str(" / ");
        let room = CARD - s.len();
        s.extend(
            comment
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .take(room),
        );
    }
    s.truncate(CARD);
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (CARD - s.len()), b' ');
}

fn end_header(out: &mut Vec<u8>) {
    out.extend_from_slice(b"END");
    out.resize(out.len() + CARD - 3, b' ');
    let pad = (BLOCK - out.len() % BLOCK) % BLOCK;
    out.resize(out.len() + pad, b' ');
}

fn pad_data(out: &mut Vec<u8>) {
    let pad = (BLOCK - out.len() % BLOCK) % BLOCK;
    out.resize(out.len() + pad, 0);
}

/// Pixel data of one HDU.
enum Data<'a> {
    F32(&'a [f32]),
    I16(&'a [u32]),
}

/// Appends one image HDU: `primary` or an IMAGE extension named `extname`.
fn hdu(
    out: &mut Vec<u8>,
    extname: Option<&str>,
    (w, h): (usize, usize),
    data: Data<'_>,
    cards: &[Card],
) -> Result<(), FitsError> {
    use CardValue::{Int, Str};
    let bitpix = match data {
        Data::F32(_) => -32,
        Data::I16(_) => 16,
    };
    match extname {
        None => logical(out, "SIMPLE", true, "conforms to FITS standard"),
        Some(_) => card(out, "XTENSION", &Str("IMAGE".into()), "image extension")?,
    }
    card(out, "BITPIX", &Int(bitpix), "bits per data value")?;
    card(out, "NAXIS", &Int(2), "number of data axes")?;
    card(out, "NAXIS1", &Int(w as i64), "columns")?;
    card(out, "NAXIS2", &Int(h as i64), "rows")?;
    match extname {
        None => logical(out, "EXTEND", true, "extensions may follow"),
        Some(name) => {
            card(out, "PCOUNT", &Int(0), "no parameters")?;
            card(out, "GCOUNT", &Int(1), "one group")?;
            card(out, "EXTNAME", &Str(name.into()), "extension name")?;
        }
    }
    for (k, v, c) in cards {
        card(out, k, v, c)?;
    }
    end_header(out);
    out.reserve(w * h * 4 + BLOCK);
    match data {
        Data::F32(d) => {
            for v in d {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        Data::I16(d) => {
            for v in d {
                // Checked by the caller: every bit below 15.
                out.extend_from_slice(&(*v as i16).to_be_bytes());
            }
        }
    }
    pad_data(out);
    Ok(())
}

/// Extra primary-header cards for a cutout (e.g. the DiaSource id), appended after
/// the WCS.
pub type ExtraCards = [Card];

/// One cutout as a FITS file (layout in the module docs).
pub fn cutout_fits(c: &Cutout, extra: &ExtraCards) -> Result<Vec<u8>, FitsError> {
    use CardValue::{Int, Str};
    let (w, h) = c.masked.dims();
    let wcs = c.wcs.cards();
    let mut out = Vec::with_capacity(4 * BLOCK + 3 * (w * h * 4 + BLOCK) + c.psf.data().len() * 4);
    let mut primary = vec![
        (
            "BUNIT".to_string(),
            Str("nJy".into()),
            "pixel unit".to_string(),
        ),
        (
            "CUTMINX".to_string(),
            Int(c.x0),
            "detector column of pixel (0, 0)".to_string(),
        ),
        (
            "CUTMINY".to_string(),
            Int(c.y0),
            "detector row of pixel (0, 0)".to_string(),
        ),
    ];
    primary.extend(wcs.iter().cloned());
    primary.extend(extra.iter().cloned());
    hdu(
        &mut out,
        None,
        (w, h),
        Data::F32(c.masked.image.data()),
        &primary,
    )?;

    let mcards: Vec<Card> = mask::PLANES
        .iter()
        .map(|(name, bit)| {
            (
                format!("MP_{name}"),
                Int(i64::from(bit.trailing_zeros())),
                "mask plane bit number".to_string(),
            )
        })
        .collect();
    let all_bits = c.masked.mask.data().iter().fold(0u32, |a, &b| a | b);
    if all_bits >= 1 << 15 {
        return Err(FitsError::BadCard {
            key: "MASK".into(),
            why: format!("mask bits {all_bits:#x} do not fit the 16-bit MASK HDU"),
        });
    }
    hdu(
        &mut out,
        Some("MASK"),
        (w, h),
        Data::I16(c.masked.mask.data()),
        &mcards,
    )?;

    let ucards = vec![(
        "UTYPE".to_string(),
        Str("VarianceUncertainty".into()),
        "variance of the flux, nJy**2".to_string(),
    )];
    hdu(
        &mut out,
        Some("UNCERT"),
        (w, h),
        Data::F32(c.masked.variance.data()),
        &ucards,
    )?;

    hdu(
        &mut out,
        Some("PSFIMAGE"),
        c.psf.dims(),
        Data::F32(c.psf.data()),
        &[],
    )?;
    Ok(out)
}

/// The three cutouts of a set as FITS files, each with `extra` cards.
pub fn cutout_set_fits(set: &CutoutSet, extra: &ExtraCards) -> Result<CutoutBytes, FitsError> {
    Ok(CutoutBytes {
        difference: cutout_fits(&set.difference, extra)?,
        science: cutout_fits(&set.science, extra)?,
        template: cutout_fits(&set.template, extra)?,
    })
}

/// The central `size` × `size` pixels of a cutout (the source stays at the centre
/// pixel), with its WCS moved accordingly; `None` when `size` is 0 or not smaller.
pub fn crop_centre(c: &Cutout, size: usize) -> Option<Cutout> {
    let (w, h) = c.masked.dims();
    if size == 0 || size >= w.max(h) {
        return None;
    }
    let ox = (w / 2) as i64 - (size / 2) as i64;
    let oy = (h / 2) as i64 - (size / 2) as i64;
    let masked: MaskedImage = c.masked.cutout(ox as isize, oy as isize, size, size);
    Some(Cutout {
        masked,
        x0: c.x0 + ox,
        y0: c.y0 + oy,
        wcs: shifted_wcs(&c.wcs, ox, oy),
        psf: c.psf.clone(),
    })
}

/// [`crop_centre`] for the three cutouts of a set.
pub fn crop_set(set: &CutoutSet, size: usize) -> Option<CutoutSet> {
    Some(CutoutSet {
        science: crop_centre(&set.science, size)?,
        template: crop_centre(&set.template, size)?,
        difference: crop_centre(&set.difference, size)?,
    })
}

/// An image HDU read back by [`read_image`].
#[derive(Clone, Debug, PartialEq)]
pub struct FitsImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Pixels, row-major from the first (bottom) row, as f32 (integers converted).
    pub data: Vec<f32>,
    /// Header cards: key and the raw value text (strings without quotes).
    pub cards: Vec<(String, String)>,
}

impl FitsImage {
    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.cards
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// The WCS from the cards.
    pub fn wcs(&self) -> Result<TanSipWcs, apflow_core::wcs::WcsError> {
        TanSipWcs::from_header(|k| {
            self.get(k).map(|v| match v.parse::<f64>() {
                Ok(x) if !k.starts_with("CTYPE") => CardValue::Float(x),
                _ => CardValue::Str(v.to_string()),
            })
        })
    }
}

fn parse_header(bytes: &[u8], at: usize) -> Result<(Vec<(String, String)>, usize), FitsError> {
    let mut cards = Vec::new();
    let mut pos = at;
    loop {
        let c = bytes
            .get(pos..pos + CARD)
            .ok_or_else(|| FitsError::Malformed("header without END".into()))?;
        pos += CARD;
        let text =
            std::str::from_utf8(c).map_err(|_| FitsError::Malformed("non-ASCII header".into()))?;
        let (key, rest) = if let Some(h) = text.strip_prefix("HIERARCH ") {
            match h.split_once('=') {
                Some((k, r)) => (k.trim().to_string(), r.trim_start()),
                None => continue,
            }
        } else {
            let key = text[..8].trim_end().to_string();
            if key == "END" {
                break;
            }
            if &text[8..10] != "= " {
                continue;
            }
            (key, text[10..].trim_start())
        };
        let value = if let Some(s) = rest.strip_prefix('\'') {
            let mut v = String::new();
            let mut chars = s.chars().peekable();
            while let Some(ch) = chars.next() {
                if ch == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                        v.push('\'');
                    } else {
                        break;
                    }
                } else {
                    v.push(ch);
                }
            }
            v.trim_end().to_string()
        } else {
            rest.split('/')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        cards.push((key, value));
    }
    let end = pos.div_ceil(BLOCK) * BLOCK;
    Ok((cards, end))
}

/// Reads the image HDU named `extname` (`None`: the primary HDU) of a FITS file with
/// BITPIX −32, 32 or 16 images, as this module writes them.
pub fn read_image(bytes: &[u8], extname: Option<&str>) -> Result<FitsImage, FitsError> {
    let mut at = 0;
    let mut first = true;
    while at < bytes.len() {
        let (cards, data_at) = parse_header(bytes, at)?;
        let get = |k: &str| cards.iter().find(|(c, _)| c == k).map(|(_, v)| v.as_str());
        let int = |k: &str| -> Result<i64, FitsError> {
            get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| FitsError::Malformed(format!("{k} missing or not an integer")))
        };
        let bitpix = int("BITPIX")?;
        let naxis = int("NAXIS")?;
        let (w, h) = if naxis == 0 {
            (0, 0)
        } else if naxis == 2 {
            (int("NAXIS1")? as usize, int("NAXIS2")? as usize)
        } else {
            return Err(FitsError::Malformed(format!("NAXIS = {naxis}")));
        };
        let n = w * h;
        let nbytes = n * (bitpix.unsigned_abs() as usize / 8);
        let wanted = match extname {
            None => first,
            Some(name) => get("EXTNAME") == Some(name),
        };
        if wanted {
            let raw = bytes
                .get(data_at..data_at + nbytes)
                .ok_or_else(|| FitsError::Malformed("data shorter than NAXIS1 × NAXIS2".into()))?;
            let data = match bitpix {
                -32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                32 => raw
                    .chunks_exact(4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f32)
                    .collect(),
                16 => raw
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_be_bytes([b[0], b[1]])))
                    .collect(),
                other => return Err(FitsError::Malformed(format!("BITPIX {other}"))),
            };
            return Ok(FitsImage {
                width: w,
                height: h,
                data,
                cards,
            });
        }
        first = false;
        at = data_at + nbytes.div_ceil(BLOCK) * BLOCK;
    }
    Err(FitsError::NoSuchHdu(extname.unwrap_or("PRIMARY").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_80_characters_and_blocks_2880_bytes() {
        let mut out = Vec::new();
        card(&mut out, "CRVAL1", &CardValue::Float(1.0), "x").unwrap();
        card(&mut out, "NAME", &CardValue::Str("it's".into()), "").unwrap();
        assert_eq!(out.len(), 160);
        let s = std::str::from_utf8(&out).unwrap();
        assert_eq!(&s[..30], "CRVAL1  =                1.0E0");
        assert_eq!(&s[80..100], "NAME    = 'it''s   '");
        assert!(card(&mut out, "lower", &CardValue::Int(1), "").is_err());
        let mut h = Vec::new();
        card(&mut h, "MP_NO_DATA", &CardValue::Int(5), "bit").unwrap();
        assert!(
            std::str::from_utf8(&h)
                .unwrap()
                .starts_with("HIERARCH MP_NO_DATA = 5 / bit")
        );
        assert!(card(&mut out, "NAN", &CardValue::Float(f64::NAN), "").is_err());
        end_header(&mut out);
        assert_eq!(out.len(), BLOCK);
    }

    #[test]
    fn reader_refuses_truncated_files() {
        assert!(matches!(
            read_image(b"SIMPLE", None),
            Err(FitsError::Malformed(_))
        ));
        assert!(read_image(&[], Some("MASK")).is_err());
    }
}
