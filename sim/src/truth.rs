//! Truth tables: every injected transient, variable star and solar-system object
//! in a detector of a visit, with its true position and true difference flux, so
//! completeness, purity and flux and position accuracy can be scored.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SimError;

/// What a truth row describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruthKind {
    /// Supernova-like transient.
    Supernova,
    /// Fast transient.
    FastTransient,
    /// Periodic variable star.
    VariableStar,
    /// Moving solar-system object.
    SolarSystem,
    /// Injected constant point source (completeness tests).
    Injected,
}

impl TruthKind {
    /// Name used in the CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Supernova => "supernova",
            Self::FastTransient => "fast_transient",
            Self::VariableStar => "variable_star",
            Self::SolarSystem => "solar_system",
            Self::Injected => "injected",
        }
    }
}

/// One injected source in one detector of one visit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TruthRow {
    /// Visit id.
    pub visit: u64,
    /// Detector.
    pub detector: u16,
    /// Source id (unique in the night).
    pub id: u64,
    /// What it is.
    pub kind: TruthKind,
    /// True RA at mid-visit, degrees.
    pub ra_deg: f64,
    /// True Dec at mid-visit, degrees.
    pub dec_deg: f64,
    /// True column in the assembled detector at mid-visit, 0-based pixels.
    pub x: f64,
    /// True row, 0-based pixels.
    pub y: f64,
    /// Flux at mid-visit, nJy (the mean over the exposure for trailed objects).
    pub flux_njy: f64,
    /// Flux in the template, nJy (mean over the template epochs).
    pub template_flux_njy: f64,
    /// True difference flux (science − template), nJy.
    pub diff_flux_njy: f64,
    /// AB magnitude of `flux_njy`.
    pub mag: f64,
    /// Host galaxy id, for hosted transients.
    pub host_id: Option<u64>,
    /// Trail length during the visit (first open to last close), pixels.
    pub trail_length_px: f64,
    /// Trail direction from +x towards +y, degrees.
    pub trail_angle_deg: f64,
}

/// The CSV header line of truth tables.
pub const TRUTH_CSV_HEADER: &str = "visit,detector,id,kind,ra_deg,dec_deg,x,y,flux_njy,template_flux_njy,diff_flux_njy,mag,host_id,trail_length_px,trail_angle_deg";

impl TruthRow {
    /// The row as a CSV line (no newline); empty `host_id` when there is none.
    pub fn csv_line(&self) -> String {
        format!(
            "{},{},{},{},{:.9},{:.9},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{:.3},{:.3}",
            self.visit,
            self.detector,
            self.id,
            self.kind.as_str(),
            self.ra_deg,
            self.dec_deg,
            self.x,
            self.y,
            self.flux_njy,
            self.template_flux_njy,
            self.diff_flux_njy,
            self.mag,
            self.host_id.map(|h| h.to_string()).unwrap_or_default(),
            self.trail_length_px,
            self.trail_angle_deg
        )
    }
}

/// Writes a truth table as CSV.
pub fn write_truth_csv(rows: &[TruthRow], path: &Path) -> Result<(), SimError> {
    let mut text = String::with_capacity(64 + rows.len() * 160);
    text.push_str(TRUTH_CSV_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&r.csv_line());
        text.push('\n');
    }
    let mut f = std::fs::File::create(path).map_err(|e| SimError::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| SimError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_one_field_per_header_column() {
        let row = TruthRow {
            visit: 2026031500001,
            detector: 3,
            id: 42,
            kind: TruthKind::FastTransient,
            ra_deg: 150.1,
            dec_deg: -20.2,
            x: 10.5,
            y: 20.25,
            flux_njy: 1000.0,
            template_flux_njy: 0.0,
            diff_flux_njy: 1000.0,
            mag: 23.9,
            host_id: None,
            trail_length_px: 0.0,
            trail_angle_deg: 0.0,
        };
        let line = row.csv_line();
        assert_eq!(line.split(',').count(), TRUTH_CSV_HEADER.split(',').count());
        assert!(line.contains(",fast_transient,"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        write_truth_csv(&[row], &p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
