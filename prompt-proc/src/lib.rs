//! Prompt processing stages of apflow: each stage is a function over images and
//! catalogues (no I/O except [`calibrate::read_refcat_csv`]), composed per detector by
//! the pipeline.
//!
//! Shared types: [`image`] (images, mask planes, masked images), [`psf`] (the PSF
//! interface), [`error`] (typed failures). Stages: image characterisation —
//! [`background`] (sky mesh), [`stars`] (bright-source detection and measurement),
//! [`psf_model`] (spatially varying pixel PSF, PSF photometry) — and [`calibrate`]
//! (reference catalogue, astrometric and photometric calibration); [`association`] of
//! DiaSources with DiaObjects and predicted solar-system positions, DiaObject summary
//! statistics, and the choice of forced-photometry targets.

pub mod association;
pub mod background;
pub mod calibrate;
pub mod error;
pub mod image;
pub mod psf;
pub mod psf_model;
pub mod stars;

pub use error::ScienceError;
pub use image::{Image, MaskedImage};
pub use psf::Psf;
