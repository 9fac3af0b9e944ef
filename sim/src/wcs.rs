//! The TAN-SIP WCS lives in [`apflow_core::wcs`], shared with the pipeline; re-exported
//! here so the simulator's paths stay as they were.

pub use apflow_core::wcs::*;
