//! Spatial and time partitioning, shared by every backend.
//!
//! Rows are partitioned by a spatial pixel — the NESTED HEALPix cell at
//! [`PIXEL_DEPTH`] (≈ 3.4′ across, about a sixteenth of an LSST detector) holding the
//! row's position — and by a 30-day time partition, `floor(MJD TAI / 30)`. A region
//! read touches only the pixels that cover the detector polygon plus margin, and a
//! history read only the time partitions inside its window, so the cost of a visit
//! does not depend on how much history lies outside them (DMTN-184 §4).

use std::ops::{Range, RangeInclusive};

use apflow_core::geom::{ARCSEC, SkyPolygon, TangentPlane, UnitVector, healpix_cell};
use apflow_core::time::MjdTai;
use serde::{Deserialize, Serialize};

/// HEALPix depth of the spatial partitioning (NESTED, nside = 2^10 = 1024,
/// cells ≈ 3.44′ on a side).
pub const PIXEL_DEPTH: u8 = 10;
/// Length of a time partition, days.
pub const TIME_PARTITION_DAYS: f64 = 30.0;
/// Default history window read before association: 12 months, days.
pub const HISTORY_DAYS: f64 = 365.25;
/// Default region margin around a detector polygon: 10″, in radians.
pub const DEFAULT_MARGIN: f64 = 10.0 * ARCSEC;

/// The spatial partition of a position in degrees.
pub fn pixel_of(ra_deg: f64, dec_deg: f64) -> i64 {
    healpix_cell(UnitVector::from_radec_deg(ra_deg, dec_deg), PIXEL_DEPTH) as i64
}

/// The time partition of a date: `floor(mjd / 30 d)`.
pub fn time_partition(mjd: f64) -> i32 {
    (mjd / TIME_PARTITION_DAYS).floor() as i32
}

/// A time window `[start, end)`, MJD TAI.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeWindow {
    /// Inclusive start.
    pub start: MjdTai,
    /// Exclusive end.
    pub end: MjdTai,
}

impl TimeWindow {
    /// The default history window of a visit at `visit_time`: the 12 months before it.
    pub fn history(visit_time: MjdTai) -> Self {
        Self::days_before(visit_time, HISTORY_DAYS)
    }
    /// The `days` before `visit_time`.
    pub fn days_before(visit_time: MjdTai, days: f64) -> Self {
        Self {
            start: MjdTai(visit_time.0 - days),
            end: visit_time,
        }
    }
    /// Whether `t` is inside.
    pub fn contains(&self, t: f64) -> bool {
        t >= self.start.0 && t < self.end.0
    }
    /// The time partitions the window overlaps.
    pub fn partitions(&self) -> RangeInclusive<i32> {
        time_partition(self.start.0)..=time_partition(self.end.0)
    }
}

/// A region of the sky to read: a convex polygon (a detector footprint) plus a margin.
#[derive(Clone, Debug)]
pub struct Region {
    polygon: SkyPolygon,
    margin: f64,
    ranges: Vec<Range<u64>>,
}

impl Region {
    /// `polygon` grown by `margin` radians (≥ 0, at most a few arcminutes).
    pub fn new(polygon: SkyPolygon, margin: f64) -> Self {
        let margin = margin.max(0.0);
        let ranges = if margin > 0.0 {
            grow(&polygon, margin * 1.05 + 1e-9).healpix_ranges(PIXEL_DEPTH)
        } else {
            polygon.healpix_ranges(PIXEL_DEPTH)
        };
        Self {
            polygon,
            margin,
            ranges,
        }
    }
    /// The polygon.
    pub fn polygon(&self) -> &SkyPolygon {
        &self.polygon
    }
    /// The margin, radians.
    pub fn margin(&self) -> f64 {
        self.margin
    }
    /// Whether a position in degrees is inside the polygon or within the margin of it.
    pub fn contains_deg(&self, ra_deg: f64, dec_deg: f64) -> bool {
        self.polygon
            .contains_with_margin(UnitVector::from_radec_deg(ra_deg, dec_deg), self.margin)
    }
    /// Sorted, merged ranges of the spatial partitions that may hold rows inside.
    pub fn pixel_ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }
    /// Whether spatial partition `pixel` is one of [`Region::pixel_ranges`].
    pub fn covers_pixel(&self, pixel: i64) -> bool {
        let Ok(p) = u64::try_from(pixel) else {
            return false;
        };
        // The first range that ends after `p` is the only one that can hold it.
        let i = self.ranges.partition_point(|r| r.end <= p);
        self.ranges.get(i).is_some_and(|r| r.contains(&p))
    }
    /// Every spatial partition that may hold rows inside.
    pub fn pixels(&self) -> impl Iterator<Item = i64> + '_ {
        self.ranges.iter().flat_map(|r| r.clone().map(|p| p as i64))
    }
}

/// The convex polygon whose edges are those of `p` pushed outwards by `d` radians, in
/// the gnomonic projection at its centre (where great circles are straight lines and
/// distances are never shorter than on the sky).
fn grow(p: &SkyPolygon, d: f64) -> SkyPolygon {
    let (ra, dec) = p.center().to_radec();
    let plane = TangentPlane::new(ra, dec);
    let pts: Vec<(f64, f64)> = p
        .vertices()
        .iter()
        .map(|v| plane.project(*v).expect("detector-sized polygon"))
        .collect();
    let n = pts.len();
    let area2: f64 = (0..n)
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    let sign = if area2 >= 0.0 { 1.0 } else { -1.0 };
    // Offset line of edge i: n_i · x = c_i, with n_i the outward unit normal.
    let lines: Vec<((f64, f64), f64)> = (0..n)
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            let (ex, ey) = (b.0 - a.0, b.1 - a.1);
            let len = (ex * ex + ey * ey).sqrt();
            let nrm = (sign * ey / len, -sign * ex / len);
            (nrm, nrm.0 * a.0 + nrm.1 * a.1 + d)
        })
        .collect();
    let vertices = (0..n)
        .map(|i| {
            let ((a1, b1), c1) = lines[(i + n - 1) % n];
            let ((a2, b2), c2) = lines[i];
            let det = a1 * b2 - a2 * b1;
            let x = (c1 * b2 - c2 * b1) / det;
            let y = (a1 * c2 - a2 * c1) / det;
            plane.deproject(x, y)
        })
        .collect();
    SkyPolygon::new(vertices).expect("a grown convex polygon is convex")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_pixels_cover_points_near_the_edge() {
        let plane = TangentPlane::new(1.2, -0.3);
        let h = 0.0019; // ~6.5′ half-width
        let poly = SkyPolygon::from_tangent_rect(&plane, -h, h, -h, h);
        let margin = 60.0 * ARCSEC;
        let region = Region::new(poly, margin);
        let covered = |p: UnitVector| {
            let c = healpix_cell(p, PIXEL_DEPTH);
            region.pixel_ranges().iter().any(|r| r.contains(&c))
        };
        for k in 0..400 {
            let t = k as f64 / 400.0 * std::f64::consts::TAU;
            // on a square of half-width h + 0.99 margin around the centre
            let s = h + 0.99 * margin;
            let (x, y) = (s * t.cos(), s * t.sin());
            let (x, y) = (x.clamp(-s, s), y.clamp(-s, s));
            let p = plane.deproject(x, y);
            if region.contains_deg(p.to_radec_deg().0, p.to_radec_deg().1) {
                assert!(
                    covered(p),
                    "point {k} inside the margin but its pixel is not read"
                );
            }
        }
        for p in region.pixels() {
            assert!(region.covers_pixel(p));
            assert!(region.covers_pixel(p - 1) == region.pixels().any(|q| q == p - 1));
            assert!(region.covers_pixel(p + 1) == region.pixels().any(|q| q == p + 1));
        }
        assert!(!region.covers_pixel(-1));
        assert!(
            region.pixels().count() < 60,
            "too many pixels: {}",
            region.pixels().count()
        );
    }

    #[test]
    fn time_window_partitions() {
        let w = TimeWindow::history(MjdTai(61000.0));
        assert_eq!(
            w.partitions(),
            time_partition(61000.0 - 365.25)..=time_partition(61000.0)
        );
        assert_eq!(w.partitions().count(), 13); // 2021 ..= 2033
        assert!(w.contains(60900.0) && !w.contains(61000.0) && !w.contains(60600.0));
    }
}
