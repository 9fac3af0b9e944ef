//! The night's schedule: visits with pointing, band, conditions and shutter times.
//!
//! Bandpass constants are approximations of the LSST system (SMTN-002): the AB
//! magnitude giving 1 e⁻/s at airmass 1, the atmospheric extinction per airmass and the
//! dark-sky surface brightness.

use apflow_core::events::Pointing;
use apflow_core::ids::{ExposureId, VisitId};
use apflow_core::time::MjdTai;
use serde::{Deserialize, Serialize};

use crate::psf::PsfField;

/// Readout time of one snap, seconds.
pub const READOUT_S: f64 = 2.0;
/// Latitude of the simulated site (Cerro Pachón), degrees.
pub const SITE_LATITUDE_DEG: f64 = -30.2446;
/// Median zenith seeing in r, arcsec FWHM.
pub const MEDIAN_SEEING_ARCSEC: f64 = 0.75;

/// A filter band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Band {
    U,
    G,
    R,
    I,
    Z,
    Y,
}

impl Band {
    /// All bands, blue to red.
    pub const ALL: [Band; 6] = [Band::U, Band::G, Band::R, Band::I, Band::Z, Band::Y];

    /// Index 0–5 (u..y).
    pub fn index(self) -> usize {
        self as usize
    }
    /// The band's letter.
    pub fn as_str(self) -> &'static str {
        ["u", "g", "r", "i", "z", "y"][self.index()]
    }
    /// AB magnitude giving 1 e⁻/s at airmass 1.
    pub fn zp1_mag(self) -> f64 {
        [26.52, 28.51, 28.36, 28.17, 27.78, 26.82][self.index()]
    }
    /// Atmospheric extinction, magnitudes per airmass.
    pub fn extinction(self) -> f64 {
        [0.47, 0.21, 0.13, 0.10, 0.08, 0.17][self.index()]
    }
    /// Dark-sky surface brightness at zenith, AB mag per arcsec².
    pub fn dark_sky_mag(self) -> f64 {
        [22.96, 22.26, 21.20, 20.48, 19.60, 18.61][self.index()]
    }
    /// Effective wavelength, nm.
    pub fn wavelength_nm(self) -> f64 {
        [367.0, 482.0, 622.0, 755.0, 869.0, 971.0][self.index()]
    }
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Electrons per second from a source of `flux_njy` nJy, for a zero point `zp_mag` (the
/// AB magnitude giving 1 e⁻/s).
pub fn electrons_per_s(flux_njy: f64, zp_mag: f64) -> f64 {
    flux_njy * 10f64.powf(-0.4 * (31.4 - zp_mag))
}

/// Times of one snap (exposure) of a visit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapTimes {
    /// Snap number within the visit (0 or 1).
    pub snap: u8,
    /// Exposure id.
    pub exposure: ExposureId,
    /// Shutter open, MJD TAI.
    pub shutter_open: MjdTai,
    /// Shutter close, MJD TAI.
    pub shutter_close: MjdTai,
    /// End of readout, MJD TAI.
    pub readout_end: MjdTai,
    /// Open-shutter time, seconds.
    pub exptime_s: f64,
}

impl SnapTimes {
    /// Mid-exposure, MJD TAI.
    pub fn mid(&self) -> MjdTai {
        MjdTai(0.5 * (self.shutter_open.0 + self.shutter_close.0))
    }
}

/// A satellite streak crossing the focal plane during a visit: the line through
/// focal-plane point `(x, y)` (pixels from the boresight) at `angle_deg` from the +x axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SatelliteTrail {
    /// A point on the trail, focal-plane pixels.
    pub point_px: [f64; 2],
    /// Direction from the camera +x axis towards +y, degrees.
    pub angle_deg: f64,
    /// Gaussian σ of the trail's cross-section, pixels.
    pub sigma_px: f64,
    /// Charge along the trail, e⁻ per pixel of length per snap.
    pub electrons_per_px: f64,
}

/// One planned visit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisitPlan {
    /// Position in the night, from 0.
    pub index: u32,
    /// Visit id.
    pub visit: VisitId,
    /// Scheduler group name.
    pub group: String,
    /// Boresight and rotation.
    pub pointing: Pointing,
    /// Filter.
    pub band: Band,
    /// Seeing at the boresight, arcsec FWHM.
    pub seeing_arcsec: f64,
    /// Airmass at mid-visit.
    pub airmass: f64,
    /// Sky surface brightness, AB mag per arcsec².
    pub sky_mag_arcsec2: f64,
    /// Photometric zero point including extinction and clouds: the AB magnitude giving
    /// 1 e⁻/s on this visit.
    pub zp_mag: f64,
    /// Sky level, e⁻ per second per pixel (before the flat field).
    pub sky_e_per_s: f64,
    /// Fractional sky gradient per 10,000 focal-plane pixels, (x, y).
    pub sky_gradient: [f64; 2],
    /// The PSF across the focal plane.
    pub psf: PsfField,
    /// True offset of the sky from the header WCS (Δξ, Δη), arcsec: the true tangent
    /// point is the header's moved by this. Truth, not known to a pipeline.
    pub wcs_offset_arcsec: [f64; 2],
    /// Satellite streak, if one crosses the focal plane.
    pub satellite: Option<SatelliteTrail>,
    /// The snaps.
    pub snaps: Vec<SnapTimes>,
}

impl VisitPlan {
    /// Shutter open of the first snap, MJD TAI.
    pub fn start(&self) -> MjdTai {
        self.snaps[0].shutter_open
    }
    /// Shutter close of the last snap, MJD TAI.
    pub fn shutter_close(&self) -> MjdTai {
        self.snaps[self.snaps.len() - 1].shutter_close
    }
    /// End of readout of the last snap, MJD TAI.
    pub fn readout_end(&self) -> MjdTai {
        self.snaps[self.snaps.len() - 1].readout_end
    }
    /// Mid-visit (between first open and last close), MJD TAI: the epoch of truth fluxes.
    pub fn mid(&self) -> MjdTai {
        MjdTai(0.5 * (self.start().0 + self.shutter_close().0))
    }
    /// Total open-shutter time, seconds.
    pub fn exposure_time_s(&self) -> f64 {
        self.snaps.iter().map(|s| s.exptime_s).sum()
    }
}

/// Airmass of a field at declination `dec_deg` and hour angle `ha_hours` from the
/// simulated site (Hardie's 1962 polynomial in sec z − 1; capped at 3.5).
pub fn airmass(dec_deg: f64, ha_hours: f64) -> f64 {
    let (phi, dec, h) = (
        SITE_LATITUDE_DEG.to_radians(),
        dec_deg.to_radians(),
        (ha_hours * 15.0).to_radians(),
    );
    let sin_alt = phi.sin() * dec.sin() + phi.cos() * dec.cos() * h.cos();
    if sin_alt < 0.3 {
        return 3.5;
    }
    let s = 1.0 / sin_alt - 1.0;
    (1.0 + s - 0.001_816_7 * s - 0.002_875 * s * s - 0.000_808_3 * s * s * s).min(3.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn airmass_is_one_at_zenith_and_grows_away_from_it() {
        assert!((airmass(SITE_LATITUDE_DEG, 0.0) - 1.0).abs() < 1e-9);
        let a1 = airmass(0.0, 0.0);
        let a2 = airmass(0.0, 2.0);
        assert!(a1 > 1.1 && a2 > a1, "{a1} {a2}");
        assert_eq!(airmass(80.0, 0.0), 3.5);
    }

    #[test]
    fn zero_point_converts_flux_to_electrons() {
        // A 24th magnitude source (10^(0.4·7.4) nJy) in r gives 10^(-0.4·(24-28.36)) e/s.
        let f = 10f64.powf(0.4 * (31.4 - 24.0));
        let e = electrons_per_s(f, Band::R.zp1_mag());
        assert!((e - 10f64.powf(0.4 * (28.36 - 24.0))).abs() < 1e-9 * e);
    }
}
