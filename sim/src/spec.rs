//! The plain-value description of a simulated night (the `[simulate]` section of
//! apflow's configuration).

use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::schedule::Band;

/// How dense the simulated sky is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// High Galactic latitude: ~2,000 stars per deg² brighter than r = 25.5.
    Sparse,
    /// Intermediate latitude: ~20,000 stars per deg².
    #[default]
    Typical,
    /// Galactic plane / bulge: ~600,000 stars per deg², heavily blended.
    Crowded,
}

impl Profile {
    /// Stars per deg² with 14 < r < 25.5.
    pub fn star_density_deg2(self) -> f64 {
        match self {
            Self::Sparse => 2.0e3,
            Self::Typical => 2.0e4,
            Self::Crowded => 6.0e5,
        }
    }
    /// Slope α of the differential star counts dN/dm ∝ 10^(α m).
    pub fn star_count_slope(self) -> f64 {
        match self {
            Self::Sparse => 0.2,
            Self::Typical => 0.25,
            Self::Crowded => 0.3,
        }
    }
    /// Galaxies per deg² with 17 < r < 25 (fewer through the Galactic plane's dust).
    pub fn galaxy_density_deg2(self) -> f64 {
        match self {
            Self::Sparse | Self::Typical => 4.0e4,
            Self::Crowded => 1.0e4,
        }
    }
    /// Injected transients per deg² (a synthetic rate, far above the real one, so a
    /// few detectors hold enough of them to score completeness).
    pub fn transient_density_deg2(self) -> f64 {
        match self {
            Self::Sparse => 300.0,
            Self::Typical => 600.0,
            Self::Crowded => 600.0,
        }
    }
    /// Solar-system objects per deg² (a near-ecliptic main-belt rate).
    pub fn sso_density_deg2(self) -> f64 {
        match self {
            Self::Sparse => 60.0,
            Self::Typical => 150.0,
            Self::Crowded => 150.0,
        }
    }
}

/// A simulated night, as plain values. `Default` is a small night suitable for a
/// laptop demo: 5 visits of 4 detectors of 2048 × 2048 pixels, typical density.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NightSpec {
    /// Number of visits (1–99,999).
    pub visits: u32,
    /// Number of detectors per visit (1–256), laid out on a square grid around the boresight.
    pub detectors: u16,
    /// Detector side in pixels; square, a multiple of 16 so it divides into the 2 × 8
    /// amplifier layout (4096 for an LSST-like detector), at least 256.
    pub detector_size: u32,
    /// The seed every random stream derives from.
    pub seed: u64,
    /// Sky density.
    pub profile: Profile,
    /// Snaps per visit: 1 (one 30 s exposure) or 2 (two 15 s snaps).
    pub snaps: u8,
    /// The observing night, `YYYYMMDD` (Rubin `day_obs`); observing starts at 00:30 UTC
    /// the next calendar day.
    pub day_obs: u32,
    /// Right ascension of the field centre, degrees.
    pub ra_deg: f64,
    /// Declination of the field centre, degrees (within ±85°).
    pub dec_deg: f64,
    /// Bands cycled through the night, from `u g r i z y`.
    pub bands: Vec<Band>,
    /// Consecutive visits in the same band before the filter changes.
    pub visits_per_band: u32,
    /// Time between visit starts, seconds.
    pub visit_interval_s: f64,
    /// Total open-shutter time per visit, seconds (split equally between snaps).
    pub exposure_time_s: f64,
    /// Pixel scale, arcsec per pixel.
    pub pixel_scale_arcsec: f64,
    /// Largest dither of a pointing from the field centre, degrees.
    pub dither_deg: f64,
    /// Earlier epochs coadded into each template.
    pub template_epochs: u32,
    /// Side of a template tile (without its overlap border), pixels.
    pub template_tile_size: u32,
    /// Injected constant point sources per deg² (absent from the templates), to
    /// measure detection completeness; 0 (the default) injects none.
    pub injected_density_deg2: f64,
}

impl Default for NightSpec {
    fn default() -> Self {
        Self {
            visits: 5,
            detectors: 4,
            detector_size: 2048,
            seed: 1,
            profile: Profile::Typical,
            snaps: 1,
            day_obs: 20260315,
            ra_deg: 150.0,
            dec_deg: -20.0,
            bands: vec![Band::R, Band::G, Band::I],
            visits_per_band: 2,
            visit_interval_s: 37.0,
            exposure_time_s: 30.0,
            pixel_scale_arcsec: 0.2,
            dither_deg: 0.05,
            template_epochs: 8,
            template_tile_size: 2000,
            injected_density_deg2: 0.0,
        }
    }
}

impl NightSpec {
    /// Checks every field, reporting all problems at once.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut problems = Vec::new();
        if self.visits == 0 || self.visits > apflow_core::ids::MAX_VISIT_SEQ {
            problems.push(format!("visits must be 1..=99999, got {}", self.visits));
        }
        if self.detectors == 0 || self.detectors > 256 {
            problems.push(format!("detectors must be 1..=256, got {}", self.detectors));
        }
        if self.detector_size < 256 || !self.detector_size.is_multiple_of(16) {
            problems.push(format!(
                "detector_size must be a multiple of 16 (2 x 8 amplifiers) and at least 256, got {}",
                self.detector_size
            ));
        }
        if !(self.snaps == 1 || self.snaps == 2) {
            problems.push(format!("snaps must be 1 or 2, got {}", self.snaps));
        }
        if apflow_core::ids::VisitId::new(self.day_obs, 0).is_err() {
            problems.push(format!(
                "day_obs {} is not a valid YYYYMMDD night",
                self.day_obs
            ));
        }
        if self.dec_deg.abs() > 85.0 || self.dec_deg.is_nan() {
            problems.push(format!("dec_deg must be within ±85, got {}", self.dec_deg));
        }
        if !self.ra_deg.is_finite() {
            problems.push("ra_deg must be finite".to_string());
        }
        if self.bands.is_empty() {
            problems.push("bands must name at least one band".to_string());
        }
        if self.visits_per_band == 0 {
            problems.push("visits_per_band must be at least 1".to_string());
        }
        if !(self.exposure_time_s > 0.0 && self.exposure_time_s <= 300.0) {
            problems.push(format!(
                "exposure_time_s must be in (0, 300], got {}",
                self.exposure_time_s
            ));
        }
        let readouts = f64::from(self.snaps) * crate::schedule::READOUT_S;
        if self.visit_interval_s.is_nan() || self.visit_interval_s < self.exposure_time_s + readouts
        {
            problems.push(format!(
                "visit_interval_s ({}) must hold the exposure and {} s of readout",
                self.visit_interval_s, readouts
            ));
        }
        if !(self.pixel_scale_arcsec > 0.01 && self.pixel_scale_arcsec < 5.0) {
            problems.push(format!(
                "pixel_scale_arcsec must be in (0.01, 5), got {}",
                self.pixel_scale_arcsec
            ));
        }
        if !(self.dither_deg >= 0.0 && self.dither_deg <= 2.0) {
            problems.push(format!(
                "dither_deg must be in [0, 2], got {}",
                self.dither_deg
            ));
        }
        if self.template_epochs == 0 {
            problems.push("template_epochs must be at least 1".to_string());
        }
        if !(self.injected_density_deg2 >= 0.0 && self.injected_density_deg2 <= 1.0e6) {
            problems.push(format!(
                "injected_density_deg2 must be in 0–1e6, got {}",
                self.injected_density_deg2
            ));
        }
        if self.template_tile_size < 256 {
            problems.push(format!(
                "template_tile_size must be at least 256, got {}",
                self.template_tile_size
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SimError::InvalidSpec(problems.join("; ")))
        }
    }

    /// Exposure time of one snap, seconds.
    pub fn snap_exposure_s(&self) -> f64 {
        self.exposure_time_s / f64::from(self.snaps.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips_through_json() {
        let spec = NightSpec::default();
        spec.validate().unwrap();
        let text = serde_json::to_string(&spec).unwrap();
        let back: NightSpec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn partial_documents_take_defaults_and_unknown_fields_are_refused() {
        let spec: NightSpec =
            serde_json::from_str(r#"{"visits": 12, "profile": "crowded", "bands": ["u", "y"]}"#)
                .unwrap();
        assert_eq!(spec.visits, 12);
        assert_eq!(spec.profile, Profile::Crowded);
        assert_eq!(spec.bands, vec![Band::U, Band::Y]);
        assert_eq!(spec.detector_size, NightSpec::default().detector_size);
        assert!(serde_json::from_str::<NightSpec>(r#"{"visit": 3}"#).is_err());
        assert!(serde_json::from_str::<NightSpec>(r#"{"bands": ["v"]}"#).is_err());
    }

    #[test]
    fn validation_reports_every_problem() {
        let spec = NightSpec {
            detector_size: 1000,
            snaps: 3,
            visit_interval_s: 10.0,
            ..NightSpec::default()
        };
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("detector_size"), "{err}");
        assert!(err.contains("snaps"), "{err}");
        assert!(err.contains("visit_interval_s"), "{err}");
    }
}
