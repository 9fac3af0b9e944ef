//! The typed failures of the science core. The `process` service turns each into a
//! dead-letter record with [`ScienceError::reason`] and counts it; none crashes it.

use apflow_core::events::ErrorClass;

/// Why a detector could not be processed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScienceError {
    /// The input image has too many non-finite pixels.
    #[error("{fraction:.1}% of the pixels are NaN or infinite")]
    NanImage {
        /// Fraction of bad pixels, percent.
        fraction: f64,
    },
    /// The input image is (almost) fully saturated.
    #[error("{fraction:.1}% of the pixels are saturated")]
    Saturated {
        /// Fraction of saturated pixels, percent.
        fraction: f64,
    },
    /// Too few bright isolated stars to model the PSF.
    #[error("too few PSF stars: {found} found, {needed} needed")]
    TooFewPsfStars {
        /// Stars that passed the selection.
        found: usize,
        /// Minimum required.
        needed: usize,
    },
    /// The astrometric fit failed.
    #[error("WCS fit failed: {0}")]
    WcsFit(String),
    /// The photometric calibration failed.
    #[error("photometric calibration failed: {0}")]
    PhotoCalib(String),
    /// The templates do not cover enough of the detector.
    #[error("template covers {covered:.1}% of the detector, {needed:.1}% needed")]
    NoTemplateCoverage {
        /// Covered fraction, percent.
        covered: f64,
        /// Minimum required, percent.
        needed: f64,
    },
    /// Too few stars to fit the PSF-matching kernel.
    #[error("too few kernel stars: {found} usable, {needed} needed")]
    TooFewKernelStars {
        /// Stamps that survived outlier rejection.
        found: usize,
        /// Minimum required.
        needed: usize,
    },
    /// Inputs that do not fit together (sizes, missing calibrations, bad headers).
    #[error("bad input: {0}")]
    BadInput(String),
    /// A numerical step failed (singular system and the like).
    #[error("numerical failure in {stage}: {message}")]
    Numerical {
        /// The stage.
        stage: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl ScienceError {
    /// A short, bounded label for metrics and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NanImage { .. } => "nan_image",
            Self::Saturated { .. } => "saturated_image",
            Self::TooFewPsfStars { .. } => "too_few_psf_stars",
            Self::WcsFit(_) => "wcs_fit_failed",
            Self::PhotoCalib(_) => "photocalib_failed",
            Self::NoTemplateCoverage { .. } => "no_template_coverage",
            Self::TooFewKernelStars { .. } => "too_few_kernel_stars",
            Self::BadInput(_) => "bad_input",
            Self::Numerical { .. } => "numerical_failure",
        }
    }

    /// Every failure of the science core is a property of its input: dead-letter and go on.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::BadInput
    }
}
