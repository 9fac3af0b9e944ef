//! Prompt processing of apflow: each stage is a function over images and catalogues
//! (no I/O), composed per detector by [`pipeline`]; [`service`] and [`io`] do the file
//! side.
//!
//! Shared types: [`image`] (images, mask planes, masked images), [`psf`] (the PSF
//! interface), [`error`] (typed failures). Stages in order: [`isr`]; characterisation —
//! [`background`], [`stars`], [`psf_model`]; [`calibrate`] (reference catalogue,
//! astrometry, photometry); [`warp`] of the template; [`subtract`] (Alard–Lupton, with
//! [`decorrelate`] and [`convolve`]); [`detect`]; [`measure`]; [`reliability`];
//! [`cutout`]s. Besides: [`association`] of DiaSources with DiaObjects and predicted
//! solar-system positions, [`fitsimage`] and [`catalog`] for `apflow diffim`.

pub mod apdb_stage;
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
/// Synthetic scenes for tests and benches (feature `synth`).
#[cfg(any(test, feature = "synth"))]
pub mod synth;
pub mod warp;

pub use error::ScienceError;
pub use image::{Image, MaskedImage};
pub use psf::Psf;
