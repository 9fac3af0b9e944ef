//! The DiaSource catalogue as CSV: what `apflow diffim` writes next to the difference
//! image.
//!
//! Columns (one row per DiaSource; lsst.v11 `DiaSource` names where one exists; NaN
//! where not measured):
//!
//! | column | unit | meaning |
//! |---|---|---|
//! | `id` | — | row number within this catalogue |
//! | `ra`, `dec` | deg | position (ICRS) from the refined WCS |
//! | `raErr`, `decErr` | deg | 1σ errors (`raErr` of ra·cos dec) |
//! | `x`, `y` | px | 0-based centroid on the science pixel grid |
//! | `xErr`, `yErr` | px | 1σ errors |
//! | `psfFlux`, `psfFluxErr` | nJy | PSF flux on the difference image |
//! | `apFlux`, `apFluxErr` | nJy | aperture flux on the difference image |
//! | `snr` | — | \|psfFlux\| / psfFluxErr |
//! | `scienceFlux`, `scienceFluxErr` | nJy | forced PSF flux on the science image |
//! | `templateFlux`, `templateFluxErr` | nJy | forced PSF flux on the warped template |
//! | `isNegative` | bool | a negative (fading) source |
//! | `isDipole` | bool | fitted as a dipole |
//! | `dipoleLength`, `dipoleAngle` | px, deg | lobe separation, pixel-frame angle |
//! | `trailLength`, `trailAngle` | px, deg | fitted trail (NaN if not trailed) |
//! | `ixx`, `iyy`, `ixy` | px² | adaptive second moments |
//! | `reliability` | [0, 1] | reliability score |
//! | `flags` | bits | OR of the mask planes in the footprint (`image::mask`) |
//! | `pixelFlags` | text | names of those planes, `|`-separated |

use std::io::Write;
use std::path::Path;

use crate::error::ScienceError;
use crate::image::mask;
use crate::pipeline::DiaSource;

/// The header row.
pub const COLUMNS: &str = "id,ra,dec,raErr,decErr,x,y,xErr,yErr,psfFlux,psfFluxErr,apFlux,apFluxErr,snr,scienceFlux,scienceFluxErr,templateFlux,templateFluxErr,isNegative,isDipole,dipoleLength,dipoleAngle,trailLength,trailAngle,ixx,iyy,ixy,reliability,flags,pixelFlags";

/// Names of the mask planes set in `bits`, `|`-separated.
pub fn plane_names(bits: u32) -> String {
    mask::PLANES
        .iter()
        .filter(|(_, b)| bits & b != 0)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// Writes the catalogue.
pub fn write_csv(path: &Path, sources: &[DiaSource]) -> Result<(), ScienceError> {
    let bad = |e: std::io::Error| ScienceError::BadInput(format!("{}: {e}", path.display()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(bad)?);
    writeln!(f, "{COLUMNS}").map_err(bad)?;
    for (i, s) in sources.iter().enumerate() {
        let m = &s.measurement;
        let flags = m.footprint_flags.bits;
        writeln!(
            f,
            "{i},{:.9},{:.9},{:.3e},{:.3e},{:.3},{:.3},{:.4},{:.4},{:.3},{:.3},{:.3},{:.3},{:.2},{:.3},{:.3},{:.3},{:.3},{},{},{:.3},{:.2},{:.3},{:.2},{:.4},{:.4},{:.4},{:.4},{flags},{}",
            m.ra,
            m.dec,
            m.ra_err,
            m.dec_err,
            m.x,
            m.y,
            m.x_err,
            m.y_err,
            m.psf_flux,
            m.psf_flux_err,
            m.ap_flux,
            m.ap_flux_err,
            m.snr,
            m.science_flux,
            m.science_flux_err,
            m.template_flux,
            m.template_flux_err,
            m.is_negative,
            m.is_dipole,
            m.dipole_length,
            m.dipole_angle,
            m.trail_length,
            m.trail_angle,
            m.ixx,
            m.iyy,
            m.ixy,
            s.reliability,
            plane_names(flags),
        )
        .map_err(bad)?;
    }
    f.flush().map_err(bad)
}
