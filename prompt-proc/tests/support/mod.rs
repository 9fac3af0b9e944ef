//! Shared test support.
pub mod sim_image;
