//! Prompt processing stages of apflow: each stage is a function over images and
//! catalogues (no I/O except [`calibrate::read_refcat_csv`]), composed per detector by
//! the pipeline.
//!
//! Shared types: [`image`] (images, mask planes, masked images), [`psf`] (the PSF
//! interface), [`error`] (typed failures). Stages: [`association`] of DiaSources with
//! DiaObjects and predicted solar-system positions, DiaObject summary statistics, and
//! the choice of forced-photometry targets; [`detect`]ion, [`measure`]ment,
//! [`reliability`] scoring and [`cutout`]s on the difference image; [`synth`]etic
//! scenes for tests and benchmarks.
//! interface), [`error`] (typed failures). Stages: image characterisation —
//! [`background`] (sky mesh), [`stars`] (bright-source detection and measurement),
//! [`psf_model`] (spatially varying pixel PSF, PSF photometry) — and [`calibrate`]
//! (reference catalogue, astrometric and photometric calibration); [`association`] of
//! DiaSources with DiaObjects and predicted solar-system positions, DiaObject summary
//! statistics, and the choice of forced-photometry targets.

pub mod association;
pub mod background;
pub mod calibrate;
pub mod catalog;
pub mod convolve;
pub mod cutout;
pub mod decorrelate;
pub mod detect;
pub mod error;
pub mod fitsimage;
pub mod image;
pub mod io;
pub mod isr;
pub mod measure;
pub mod pipeline;
pub mod psf;
pub mod psf_cache;
pub mod psf_model;
pub mod reliability;
pub mod service;
pub mod stars;
pub mod subtract;
pub mod synth;
pub mod warp;

pub use error::ScienceError;
pub use image::{Image, MaskedImage};
pub use psf::Psf;
