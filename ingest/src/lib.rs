//! Ingest: the first stage. A raw detector image lands (written by the camera, or by
//! the simulator's camera in `apflow run`); ingest checks that it is a complete FITS
//! file carrying the header keys the pipeline needs, computes its checksum, and
//! announces it with a [`RawImageReady`] event. A file that fails any check is never
//! dropped silently: it becomes a [`DeadLetter`] referencing the file, with the reason.
//!
//! Header contract (primary HDU; see `docs/CAMERA.md`): `VISIT`, `EXPOSURE`, `SNAP`,
//! `DETECTOR` (integers), `BAND` (one of u g r i z y), `MJD-OBS` and `MJD-END`
//! (shutter open and close, MJD TAI), `EXPTIME` (seconds). Every image extension must
//! be readable in full (a truncated file fails here, not in ISR).

pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use apflow_core::events::{DeadLetter, ErrorClass, Original, RawImageReady};
use apflow_core::ids::{DetectorId, ExposureId, VisitId};
use apflow_core::time::MjdTai;
use chrono::{DateTime, Utc};
use fitsio::FitsFile;
use fitsio::hdu::HduInfo;
use prometheus::{IntCounter, IntCounterVec, register_int_counter, register_int_counter_vec};
use sha2::{Digest, Sha256};

/// Bands the camera has.
pub const BANDS: [&str; 6] = ["u", "g", "r", "i", "z", "y"];

static IMAGES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "apflow_ingest_images_total",
        "Raw images ingested or rejected.",
        &["status"]
    )
    .expect("unique metric")
});
static BYTES_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("apflow_ingest_bytes_total", "Bytes of raw images ingested.")
        .expect("unique metric")
});

/// Why a file was not ingested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The file could not be read (permissions, disk): retry.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a FITS file cfitsio can open.
    #[error("{path} is not a readable FITS file: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// cfitsio's message.
        message: String,
    },
    /// An HDU's data is missing or short.
    #[error("{path} is truncated or corrupt in HDU {hdu}: {message}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// 0-based HDU index.
        hdu: usize,
        /// cfitsio's message.
        message: String,
    },
    /// A required header key is absent.
    #[error("{path} has no {key} header key (required; see docs/CAMERA.md)")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
    },
    /// A header key has an unusable value.
    #[error("{path}: header key {key} is invalid: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl IngestError {
    /// A short, bounded label for metrics and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io_error",
            Self::Unreadable { .. } => "unreadable_fits",
            Self::Truncated { .. } => "truncated_fits",
            Self::MissingKey { .. } => "missing_header_key",
            Self::BadKey { .. } => "bad_header_key",
        }
    }

    /// What to do with it.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Io { .. } => ErrorClass::Retryable,
            _ => ErrorClass::BadInput,
        }
    }
}

/// The header values ingest needs.
#[derive(Clone, Debug, PartialEq)]
pub struct RawHeader {
    /// The visit.
    pub visit: VisitId,
    /// The exposure.
    pub exposure: ExposureId,
    /// The snap within the visit.
    pub snap: u8,
    /// The detector.
    pub detector: DetectorId,
    /// The band.
    pub band: String,
    /// Shutter open, MJD TAI.
    pub mjd_obs: MjdTai,
    /// Shutter close, MJD TAI.
    pub mjd_end: MjdTai,
    /// Exposure time, seconds.
    pub exptime: f64,
}

/// When the shutter closed and the readout ended, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadoutTimes {
    /// Shutter close.
    pub shutter_close: DateTime<Utc>,
    /// End of readout: the start of the alert budget.
    pub readout_end: DateTime<Utc>,
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> IngestError {
    IngestError::Unreadable {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn key_i64(f: &mut FitsFile, path: &Path, key: &'static str) -> Result<i64, IngestError> {
    let hdu = f.primary_hdu().map_err(|e| unreadable(path, e))?;
    match hdu.read_key::<i64>(f, key) {
        Ok(v) => Ok(v),
        Err(e) => Err(classify_key_error(f, path, key, e)),
    }
}

fn key_f64(f: &mut FitsFile, path: &Path, key: &'static str) -> Result<f64, IngestError> {
    let hdu = f.primary_hdu().map_err(|e| unreadable(path, e))?;
    match hdu.read_key::<f64>(f, key) {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(IngestError::BadKey {
            path: path.to_owned(),
            key,
            message: format!("{v} is not finite"),
        }),
        Err(e) => Err(classify_key_error(f, path, key, e)),
    }
}

fn key_string(f: &mut FitsFile, path: &Path, key: &'static str) -> Result<String, IngestError> {
    let hdu = f.primary_hdu().map_err(|e| unreadable(path, e))?;
    hdu.read_key::<String>(f, key)
        .map_err(|e| classify_key_error(f, path, key, e))
}

/// Missing key, or present with a value of the wrong type?
fn classify_key_error(
    f: &mut FitsFile,
    path: &Path,
    key: &'static str,
    e: fitsio::errors::Error,
) -> IngestError {
    let present = f
        .primary_hdu()
        .ok()
        .and_then(|h| h.read_key::<String>(f, key).ok())
        .is_some();
    if present {
        IngestError::BadKey {
            path: path.to_owned(),
            key,
            message: e.to_string(),
        }
    } else {
        IngestError::MissingKey {
            path: path.to_owned(),
            key,
        }
    }
}

/// Opens a raw file, reads the header contract and reads every image HDU in full.
pub fn inspect(path: &Path) -> Result<RawHeader, IngestError> {
    let mut f = FitsFile::open(path).map_err(|e| unreadable(path, e))?;
    let visit = key_i64(&mut f, path, "VISIT")?;
    let exposure = key_i64(&mut f, path, "EXPOSURE")?;
    let snap = key_i64(&mut f, path, "SNAP")?;
    let detector = key_i64(&mut f, path, "DETECTOR")?;
    let band = key_string(&mut f, path, "BAND")?;
    let mjd_obs = key_f64(&mut f, path, "MJD-OBS")?;
    let mjd_end = key_f64(&mut f, path, "MJD-END")?;
    let exptime = key_f64(&mut f, path, "EXPTIME")?;

    let bad = |key: &'static str, message: String| IngestError::BadKey {
        path: path.to_owned(),
        key,
        message,
    };
    let visit = u64::try_from(visit).map_err(|_| bad("VISIT", format!("{visit} is negative")))?;
    let visit = VisitId(visit);
    VisitId::new(visit.day_obs(), visit.seq()).map_err(|e| bad("VISIT", e.to_string()))?;
    let snap = u8::try_from(snap)
        .ok()
        .filter(|s| *s < 10)
        .ok_or_else(|| bad("SNAP", format!("{snap} is not 0-9")))?;
    let exposure = ExposureId(
        u64::try_from(exposure).map_err(|_| bad("EXPOSURE", format!("{exposure} is negative")))?,
    );
    if exposure.visit() != visit || exposure.snap() != snap {
        return Err(bad(
            "EXPOSURE",
            format!("{exposure} is not snap {snap} of visit {visit}"),
        ));
    }
    let detector = u16::try_from(detector)
        .ok()
        .filter(|d| *d <= DetectorId::MAX)
        .ok_or_else(|| {
            bad(
                "DETECTOR",
                format!("{detector} is not 0-{}", DetectorId::MAX),
            )
        })?;
    let band = band.trim().to_owned();
    if !BANDS.contains(&band.as_str()) {
        return Err(bad("BAND", format!("`{band}` is not one of u g r i z y")));
    }
    if mjd_end < mjd_obs {
        return Err(bad(
            "MJD-END",
            format!("{mjd_end} is before MJD-OBS {mjd_obs}"),
        ));
    }
    if exptime < 0.0 {
        return Err(bad("EXPTIME", format!("{exptime} is negative")));
    }

    // Every image HDU must be readable in full.
    let mut index = 0;
    loop {
        let hdu = match f.hdu(index) {
            Ok(h) => h,
            // cfitsio's END_OF_FILE: moved past the last HDU, the normal end.
            Err(fitsio::errors::Error::Fits(e)) if index > 0 && e.status == 107 => break,
            Err(e) if index > 0 => {
                return Err(IngestError::Truncated {
                    path: path.to_owned(),
                    hdu: index,
                    message: e.to_string(),
                });
            }
            Err(e) => return Err(unreadable(path, e)),
        };
        if let HduInfo::ImageInfo { shape, .. } = &hdu.info
            && !shape.is_empty()
            && shape.iter().all(|n| *n > 0)
        {
            hdu.read_image::<Vec<f32>>(&mut f)
                .map_err(|e| IngestError::Truncated {
                    path: path.to_owned(),
                    hdu: index,
                    message: e.to_string(),
                })?;
        }
        index += 1;
    }
    Ok(RawHeader {
        visit,
        exposure,
        snap,
        detector: DetectorId(detector),
        band,
        mjd_obs: MjdTai(mjd_obs),
        mjd_end: MjdTai(mjd_end),
        exptime,
    })
}

/// Checksum of a file's bytes, `sha256:<hex>`, and its size.
pub fn checksum(path: &Path) -> Result<(String, u64), IngestError> {
    let bytes = std::fs::read(path).map_err(|source| IngestError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok((
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        bytes.len() as u64,
    ))
}

/// Ingests one raw file: validates it and returns the event announcing it.
///
/// `times` are the camera's shutter-close and end-of-readout instants; without them
/// the shutter close is the header's `MJD-END` and the end of readout is the file's
/// modification time (when the file finished landing).
pub fn ingest_file(path: &Path, times: Option<ReadoutTimes>) -> Result<RawImageReady, IngestError> {
    let result = ingest_inner(path, times);
    match &result {
        Ok(e) => {
            IMAGES_TOTAL.with_label_values(&["ok"]).inc();
            BYTES_TOTAL.inc_by(e.size_bytes);
        }
        Err(_) => IMAGES_TOTAL.with_label_values(&["rejected"]).inc(),
    }
    result
}

fn ingest_inner(path: &Path, times: Option<ReadoutTimes>) -> Result<RawImageReady, IngestError> {
    let header = inspect(path)?;
    let (checksum, size_bytes) = checksum(path)?;
    let times = match times {
        Some(t) => t,
        None => {
            let shutter_close = header.mjd_end.to_utc().map_err(|e| IngestError::BadKey {
                path: path.to_owned(),
                key: "MJD-END",
                message: e.to_string(),
            })?;
            let modified =
                std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(|source| IngestError::Io {
                        path: path.to_owned(),
                        source,
                    })?;
            ReadoutTimes {
                shutter_close,
                readout_end: DateTime::<Utc>::from(modified),
            }
        }
    };
    let uri = format!(
        "file://{}",
        std::path::absolute(path)
            .unwrap_or_else(|_| path.to_owned())
            .display()
    );
    Ok(RawImageReady {
        visit: header.visit,
        exposure: header.exposure,
        detector: header.detector,
        image_uri: uri,
        shutter_close: times.shutter_close,
        readout_end: times.readout_end,
        checksum,
        size_bytes,
    })
}

/// The dead-letter record for a file that failed ingest.
pub fn dead_letter(path: &Path, error: &IngestError) -> DeadLetter {
    let uri = format!(
        "file://{}",
        std::path::absolute(path)
            .unwrap_or_else(|_| path.to_owned())
            .display()
    );
    DeadLetter {
        original: Original::Reference { uri },
        source_topic: None,
        stage: "ingest".into(),
        reason: error.reason().into(),
        detail: error.to_string(),
        class: error.class(),
        visit: None,
        detector: None,
        at: Utc::now(),
    }
}

#[cfg(test)]
mod tests;
