//! Simulated nights for apflow: a schedule of visits, a camera with realistic
//! instrument signatures, a sky with stars, galaxies, variables, transients and moving
//! objects, and the calibration products, templates, reference catalogue and truth
//! tables a pipeline needs to be tested and scored against.
//!
//! Everything is deterministic from [`NightSpec::seed`]: every random stream is a
//! ChaCha8 generator seeded by a hash of (seed, purpose, visit, detector, snap), so a
//! detector renders identically whatever the order or the number of threads.
//!
//! Units: fluxes in nJy (AB magnitude 31.4 = 1 nJy), angles in degrees unless a name
//! says `_arcsec` or `_rad`, pixel coordinates 0-based in the assembled detector frame
//! (FITS pixel = ours + 1), charges in electrons (e⁻), raw pixel values in ADU, times
//! as MJD in the TAI scale. See `docs/CAMERA.md` for the camera, file layout and
//! models.
//!
//! References: galaxy profiles as Gaussian mixtures follow Hogg & Lang (2013, PASP 125,
//! 719); the TAN-SIP WCS follows Calabretta & Greisen (2002) and Shupe et al. (2005).

pub mod camera;
mod error;
mod fitsout;
pub mod night;
pub mod psf;
pub mod render;
mod rng;
pub mod schedule;
pub mod sky;
pub mod spec;
pub mod truth;
pub mod wcs;

pub use camera::{AmpLayout, AmpParams, DetectorModel};
pub use error::SimError;
pub use fitsout::write_raw_fits;
pub use night::{Night, NightSummary, Progress, ProgressStage, simulate_night};
pub use render::{AmpImage, RawExposure, RawHeader};
pub use schedule::{Band, SnapTimes, VisitPlan};
pub use spec::{NightSpec, Profile};
pub use truth::{TruthKind, TruthRow, write_truth_csv};
pub use wcs::TanSipWcs;
