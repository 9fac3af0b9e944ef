//! Calibration of a science image against a reference catalogue: the reference
//! catalogue ([`refcat`]), the astrometric fit refining the header WCS
//! ([`astrometry`]) and the photometric zero point ([`photometry`]).

pub mod astrometry;
pub mod photometry;
pub mod refcat;

pub use astrometry::{AstroMatch, AstrometricFit, AstrometryConfig, fit_astrometry};
pub use photometry::{AB_NJY_ZERO_POINT, PhotoCalib, PhotometryConfig, fit_photometry};
pub use refcat::{BANDS, RefStar, read_refcat_csv, refcat_in_detector};
