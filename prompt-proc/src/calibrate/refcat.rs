//! The reference catalogue: Gaia-like astrometry (positions at a catalogue epoch with
//! proper motions) and fluxes in the six bands u g r i z y (nJy).
//!
//! File format: the simulator's `refcat.csv` (`docs/CAMERA.md`): a header line
//! `id,ra_deg,dec_deg,pos_err_mas,pm_ra_masyr,pm_dec_masyr,epoch_mjd,` then
//! `<band>_flux_njy,<band>_flux_err_njy` for u g r i z y. Columns are found by name.

use std::path::Path;

use apflow_core::geom::{TangentPlane, UnitVector};
use apflow_core::wcs::TanSipWcs;

use crate::error::ScienceError;

/// Band names in the order of [`RefStar::flux_njy`].
pub use apflow_apdb::schema::BANDS;

/// Days per Julian year (proper motions are per Julian year).
const DAYS_PER_YEAR: f64 = 365.25;

/// One reference star.
#[derive(Clone, Debug, PartialEq)]
pub struct RefStar {
    /// Catalogue id.
    pub id: u64,
    /// RA at `epoch_mjd`, degrees.
    pub ra_deg: f64,
    /// Dec at `epoch_mjd`, degrees.
    pub dec_deg: f64,
    /// Proper motion μα cos δ, mas/yr.
    pub pm_ra_masyr: f64,
    /// Proper motion μδ, mas/yr.
    pub pm_dec_masyr: f64,
    /// Epoch of the position, MJD TAI.
    pub epoch_mjd: f64,
    /// Fluxes u..y, nJy.
    pub flux_njy: [f64; 6],
    /// Flux errors u..y, nJy.
    pub flux_err_njy: [f64; 6],
}

impl RefStar {
    /// Position at `mjd` (RA, Dec degrees): the proper motion applied linearly on the
    /// tangent plane at the catalogue position.
    pub fn position_at(&self, mjd: f64) -> (f64, f64) {
        let years = (mjd - self.epoch_mjd) / DAYS_PER_YEAR;
        if years == 0.0 || (self.pm_ra_masyr == 0.0 && self.pm_dec_masyr == 0.0) {
            return (self.ra_deg, self.dec_deg);
        }
        let plane = TangentPlane::new(self.ra_deg.to_radians(), self.dec_deg.to_radians());
        let mas = std::f64::consts::PI / (180.0 * 3600.0 * 1000.0);
        plane
            .deproject(
                self.pm_ra_masyr * years * mas,
                self.pm_dec_masyr * years * mas,
            )
            .to_radec_deg()
    }

    /// This star moved to epoch `mjd`.
    pub fn at_epoch(&self, mjd: f64) -> RefStar {
        let (ra, dec) = self.position_at(mjd);
        RefStar {
            ra_deg: ra,
            dec_deg: dec,
            epoch_mjd: mjd,
            ..self.clone()
        }
    }
}

/// Reads a reference catalogue CSV (the simulator's `refcat.csv`).
///
/// Errors: [`ScienceError::BadInput`] when the file cannot be read, a required column
/// is missing or a value does not parse.
pub fn read_refcat_csv(path: &Path) -> Result<Vec<RefStar>, ScienceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ScienceError::BadInput(format!("refcat {}: {e}", path.display())))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| ScienceError::BadInput("refcat: empty file".into()))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| -> Result<usize, ScienceError> {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| ScienceError::BadInput(format!("refcat: no column {name}")))
    };
    let (c_id, c_ra, c_dec) = (col("id")?, col("ra_deg")?, col("dec_deg")?);
    let (c_pmra, c_pmdec, c_ep) = (col("pm_ra_masyr")?, col("pm_dec_masyr")?, col("epoch_mjd")?);
    let mut c_flux = [0usize; 6];
    let mut c_err = [0usize; 6];
    for (b, name) in BANDS.iter().enumerate() {
        c_flux[b] = col(&format!("{name}_flux_njy"))?;
        c_err[b] = col(&format!("{name}_flux_err_njy"))?;
    }
    let mut out = Vec::new();
    for (ln, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let num = |c: usize| -> Result<f64, ScienceError> {
            f.get(c)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .ok_or_else(|| {
                    ScienceError::BadInput(format!("refcat line {}: column {c}", ln + 2))
                })
        };
        let id = f
            .get(c_id)
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ScienceError::BadInput(format!("refcat line {}: id", ln + 2)))?;
        let mut flux = [0.0; 6];
        let mut err = [0.0; 6];
        for b in 0..6 {
            flux[b] = num(c_flux[b])?;
            err[b] = num(c_err[b])?;
        }
        out.push(RefStar {
            id,
            ra_deg: num(c_ra)?,
            dec_deg: num(c_dec)?,
            pm_ra_masyr: num(c_pmra)?,
            pm_dec_masyr: num(c_pmdec)?,
            epoch_mjd: num(c_ep)?,
            flux_njy: flux,
            flux_err_njy: err,
        });
    }
    Ok(out)
}

/// The reference stars that fall on a `width` × `height` detector (within `margin_px`)
/// according to `wcs`, moved to epoch `mjd`.
pub fn refcat_in_detector(
    refcat: &[RefStar],
    wcs: &TanSipWcs,
    width: usize,
    height: usize,
    margin_px: f64,
    mjd: f64,
) -> Vec<RefStar> {
    let plane = wcs.tangent_plane();
    let centre = wcs.pixel_to_unit(0.5 * width as f64, 0.5 * height as f64);
    let radius = (0.5 * (width.max(height) as f64) * std::f64::consts::SQRT_2 + margin_px)
        * wcs.pixel_scale_arcsec()
        / 3600.0;
    let cos_r = (radius + 0.01).to_radians().cos();
    refcat
        .iter()
        .filter_map(|r| {
            let p = UnitVector::from_radec_deg(r.ra_deg, r.dec_deg);
            if p.dot(centre) < cos_r {
                return None;
            }
            let moved = r.at_epoch(mjd);
            let (x, y) = wcs.unit_to_pixel(
                &plane,
                UnitVector::from_radec_deg(moved.ra_deg, moved.dec_deg),
            )?;
            (x >= -margin_px
                && y >= -margin_px
                && x <= width as f64 - 1.0 + margin_px
                && y <= height as f64 - 1.0 + margin_px)
                .then_some(moved)
        })
        .collect()
}
