use std::path::PathBuf;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The night specification is inconsistent; the message names the field to fix.
    #[error("invalid night spec: {0}")]
    InvalidSpec(String),
    /// A visit index beyond the night.
    #[error("visit index {index} is out of range (the night has {visits} visits)")]
    NoSuchVisit {
        /// Requested index.
        index: usize,
        /// Visits in the night.
        visits: usize,
    },
    /// A detector that is not part of the simulated camera.
    #[error("detector {detector} is not simulated (the camera has detectors 0..{detectors})")]
    NoSuchDetector {
        /// Requested detector.
        detector: u16,
        /// Detectors in the camera.
        detectors: u16,
    },
    /// A snap beyond the visit's snaps.
    #[error("snap {snap} does not exist (the visit has {snaps} snaps)")]
    NoSuchSnap {
        /// Requested snap.
        snap: u8,
        /// Snaps per visit.
        snaps: u8,
    },
    /// An identifier could not be formed.
    #[error("identifier: {0}")]
    Id(#[from] apflow_core::ids::IdError),
    /// A file could not be written: check the path and free space.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// cfitsio refused to write a FITS file.
    #[error("cannot write FITS file {path}: {message}")]
    Fits {
        /// The file.
        path: PathBuf,
        /// cfitsio's message.
        message: String,
    },
    /// A JSON document could not be written.
    #[error("cannot serialise {what}: {source}")]
    Json {
        /// What was serialised.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

impl SimError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
