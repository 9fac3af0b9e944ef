//! Prompt processing stages of apflow that take plain values and return plain values.
//!
//! So far: [`association`] of DiaSources with DiaObjects and predicted solar-system
//! positions, DiaObject summary statistics, and the choice of forced-photometry targets.
//! The science core (ISR, subtraction, detection, measurement, forced PSF photometry on
//! pixels) will live beside it.

pub mod association;
