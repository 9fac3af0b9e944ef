//! FITS output through cfitsio (the `fitsio` crate).
//!
//! Files are written deterministically: no key carries the wall-clock time, so the
//! same seed gives byte-identical files.

use std::path::Path;

use fitsio::FitsFile;
use fitsio::hdu::FitsHdu;
use fitsio::images::{ImageDescription, ImageType};

use crate::SimError;
use crate::camera::{ADC_MAX, FULL_WELL_E};
use crate::render::RawExposure;
use crate::wcs::{Card, CardValue};

fn fits_err(path: &Path) -> impl Fn(fitsio::errors::Error) -> SimError + '_ {
    move |e| SimError::Fits {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub(crate) fn card(key: &str, value: CardValue, comment: &str) -> Card {
    (key.to_string(), value, comment.to_string())
}

fn write_cards(
    f: &mut FitsFile,
    hdu: &FitsHdu,
    cards: &[Card],
    path: &Path,
) -> Result<(), SimError> {
    for (k, v, c) in cards {
        let r = match v {
            CardValue::Str(s) => hdu.write_key(f, k, (s.as_str(), c.as_str())),
            CardValue::Float(x) => hdu.write_key(f, k, (*x, c.as_str())),
            CardValue::Int(i) => hdu.write_key(f, k, (*i, c.as_str())),
        };
        r.map_err(fits_err(path))?;
    }
    Ok(())
}

/// ISO-8601 rendering of an MJD in its own time scale (no scale conversion), with
/// microseconds: `2026-03-16T00:30:00.000000`.
pub(crate) fn mjd_to_iso(mjd: f64) -> String {
    let micros = ((mjd - apflow_core::time::MJD_UNIX_EPOCH) * 86_400.0 * 1e6).round() as i64;
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000000".to_string())
}

/// The primary-header cards of a raw exposure.
pub(crate) fn raw_primary_cards(raw: &RawExposure) -> Vec<Card> {
    use CardValue::{Float, Int, Str};
    let h = &raw.header;
    let mut cards = vec![
        card("TELESCOP", Str(h.telescope.clone()), "telescope"),
        card("INSTRUME", Str(h.instrument.clone()), "instrument"),
        card(
            "ORIGIN",
            Str("apflow-sim".into()),
            "simulated by apflow-sim",
        ),
        card(
            "VISIT",
            Int(h.visit as i64),
            "visit id (day_obs * 100000 + seq)",
        ),
        card(
            "EXPOSURE",
            Int(h.exposure as i64),
            "exposure id (visit * 10 + snap)",
        ),
        card(
            "SNAP",
            Int(i64::from(h.snap)),
            "snap number within the visit",
        ),
        card("DETECTOR", Int(i64::from(h.detector)), "detector number"),
        card(
            "DAYOBS",
            Int(i64::from(h.day_obs)),
            "observing night YYYYMMDD",
        ),
        card(
            "SEQNUM",
            Int(i64::from(h.seq_num)),
            "visit sequence number in the night",
        ),
        card("GROUPID", Str(h.group.clone()), "scheduler group"),
        card("BAND", Str(h.band.as_str().into()), "filter band"),
        card("FILTER", Str(h.band.as_str().into()), "filter band"),
        card("TIMESYS", Str("TAI".into()), "time scale of all dates"),
        card("DATE-OBS", Str(mjd_to_iso(h.mjd_obs)), "shutter open (TAI)"),
        card(
            "DATE-END",
            Str(mjd_to_iso(h.mjd_end)),
            "shutter close (TAI)",
        ),
        card(
            "DATE",
            Str(mjd_to_iso(h.mjd_readout_end)),
            "end of readout (TAI), file date",
        ),
        card("MJD-OBS", Float(h.mjd_obs), "[d] shutter open, MJD TAI"),
        card("MJD-END", Float(h.mjd_end), "[d] shutter close, MJD TAI"),
        card(
            "MJD-RDO",
            Float(h.mjd_readout_end),
            "[d] end of readout, MJD TAI",
        ),
        card("EXPTIME", Float(h.exptime_s), "[s] open-shutter time"),
        card(
            "DARKTIME",
            Float(h.exptime_s + crate::schedule::READOUT_S),
            "[s] time charge accumulated dark current",
        ),
        card(
            "RA",
            Float(h.ra_deg),
            "[deg] boresight right ascension (ICRS)",
        ),
        card(
            "DEC",
            Float(h.dec_deg),
            "[deg] boresight declination (ICRS)",
        ),
        card(
            "ROTPA",
            Float(h.rotpa_deg),
            "[deg] PA of detector +y, east of north",
        ),
        card("AIRMASS", Float(h.airmass), "airmass at mid-visit"),
        card(
            "SEEING",
            Float(h.seeing_arcsec),
            "[arcsec] FWHM at the boresight",
        ),
        card(
            "DETSIZE",
            Str(format!("[1:{0},1:{0}]", h.detector_size)),
            "assembled detector size",
        ),
        card(
            "NAMPS",
            Int(raw.amps.len() as i64),
            "amplifier HDUs that follow",
        ),
        card("SATURATE", Int(i64::from(ADC_MAX)), "[adu] ADC maximum"),
        card("FULLWELL", Float(FULL_WELL_E), "[e-] full-well capacity"),
    ];
    cards.extend(h.wcs.cards());
    cards
}

/// Writes a raw exposure: an empty primary HDU with the exposure header and the WCS
/// of the assembled detector, then one 32-bit integer image HDU per amplifier
/// (`EXTNAME = 'AMPnn'`) with `GAIN`, `RDNOISE`, `DATASEC`, `BIASSEC`, `DETSEC`.
/// An existing file is replaced.
pub fn write_raw_fits(raw: &RawExposure, path: &Path) -> Result<(), SimError> {
    use CardValue::{Float, Int, Str};
    let err = fits_err(path);
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| SimError::io(path, e))?;
    }
    let mut f = FitsFile::create(path).open().map_err(&err)?;
    let primary = f.primary_hdu().map_err(&err)?;
    write_cards(&mut f, &primary, &raw_primary_cards(raw), path)?;
    for amp in &raw.amps {
        let l = &amp.layout;
        let desc = ImageDescription {
            data_type: ImageType::Long,
            dimensions: &[l.raw_height() as usize, l.raw_width() as usize],
        };
        let hdu = f.create_image(l.name.clone(), &desc).map_err(&err)?;
        let cards = vec![
            card("AMPNAME", Str(l.name.clone()), "amplifier"),
            card(
                "DETECTOR",
                Int(i64::from(raw.header.detector)),
                "detector number",
            ),
            card("BUNIT", Str("adu".into()), "raw counts"),
            card("GAIN", Float(amp.params.gain), "[e-/adu] gain"),
            card("RDNOISE", Float(amp.params.read_noise_e), "[e-] read noise"),
            card("DATASEC", Str(l.datasec()), "data section of this array"),
            card("BIASSEC", Str(l.biassec()), "serial overscan section"),
            card(
                "DETSEC",
                Str(l.detsec()),
                "where DATASEC lands in the detector",
            ),
            card(
                "DETSIZE",
                Str(format!("[1:{0},1:{0}]", raw.header.detector_size)),
                "assembled detector size",
            ),
            card("SATURATE", Int(i64::from(ADC_MAX)), "[adu] ADC maximum"),
        ];
        write_cards(&mut f, &hdu, &cards, path)?;
        hdu.write_image(&mut f, &amp.data).map_err(&err)?;
    }
    Ok(())
}

/// Writes a single float32 image (row-major, `height × width`) in the primary HDU
/// with `cards`, then optional extra named float32 image HDUs.
/// A named extra image HDU: name, width, height, pixels, header cards.
pub(crate) type Extension<'a> = (&'a str, usize, usize, &'a [f32], Vec<Card>);

pub(crate) fn write_f32_image(
    path: &Path,
    width: usize,
    height: usize,
    data: &[f32],
    cards: &[Card],
    extensions: &[Extension<'_>],
) -> Result<(), SimError> {
    let err = fits_err(path);
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| SimError::io(path, e))?;
    }
    let desc = ImageDescription {
        data_type: ImageType::Float,
        dimensions: &[height, width],
    };
    let mut f = FitsFile::create(path)
        .with_custom_primary(&desc)
        .open()
        .map_err(&err)?;
    let primary = f.primary_hdu().map_err(&err)?;
    write_cards(&mut f, &primary, cards, path)?;
    primary.write_image(&mut f, data).map_err(&err)?;
    for (name, w, h, d, c) in extensions {
        let desc = ImageDescription {
            data_type: ImageType::Float,
            dimensions: &[*h, *w],
        };
        let hdu = f.create_image(name.to_string(), &desc).map_err(&err)?;
        write_cards(&mut f, &hdu, c, path)?;
        hdu.write_image(&mut f, d).map_err(&err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_round_trip_mjd() {
        assert_eq!(mjd_to_iso(40_587.0), "1970-01-01T00:00:00.000000");
        assert_eq!(mjd_to_iso(61_115.5), "2026-03-16T12:00:00.000000");
    }
}
