//! Sky geometry: unit vectors, angular separations, the gnomonic (TAN) projection,
//! convex sky polygons (detector footprints) and the HEALPix cells that cover them.
//!
//! Angles are in radians unless a name says `_deg` or `_arcsec`. Right ascension and
//! declination are ICRS. HEALPix indices are in the NESTED scheme (Górski et al. 2005),
//! computed by the `cdshealpix` crate (Reinecke & Hivon 2015; Calabretta & Roukema 2007).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Radians per arcsecond.
pub const ARCSEC: f64 = std::f64::consts::PI / (180.0 * 3600.0);

/// A point on the unit sphere.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitVector {
    /// x (towards RA 0, Dec 0).
    pub x: f64,
    /// y (towards RA 90°, Dec 0).
    pub y: f64,
    /// z (towards the north celestial pole).
    pub z: f64,
}

impl UnitVector {
    /// From right ascension and declination in radians.
    pub fn from_radec(ra: f64, dec: f64) -> Self {
        let (sd, cd) = dec.sin_cos();
        let (sr, cr) = ra.sin_cos();
        Self {
            x: cd * cr,
            y: cd * sr,
            z: sd,
        }
    }

    /// From right ascension and declination in degrees.
    pub fn from_radec_deg(ra_deg: f64, dec_deg: f64) -> Self {
        Self::from_radec(ra_deg.to_radians(), dec_deg.to_radians())
    }

    /// Normalises any non-zero vector.
    pub fn normalized(x: f64, y: f64, z: f64) -> Self {
        let n = (x * x + y * y + z * z).sqrt();
        Self {
            x: x / n,
            y: y / n,
            z: z / n,
        }
    }

    /// Right ascension in [0, 2π) and declination in [−π/2, π/2], radians.
    pub fn to_radec(self) -> (f64, f64) {
        let ra = self.y.atan2(self.x).rem_euclid(std::f64::consts::TAU);
        let dec = self.z.atan2((self.x * self.x + self.y * self.y).sqrt());
        (ra, dec)
    }

    /// Right ascension and declination in degrees.
    pub fn to_radec_deg(self) -> (f64, f64) {
        let (ra, dec) = self.to_radec();
        (ra.to_degrees(), dec.to_degrees())
    }

    /// Dot product.
    pub fn dot(self, o: Self) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }

    /// Cross product (not normalised).
    pub fn cross(self, o: Self) -> [f64; 3] {
        [
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        ]
    }

    /// Angular separation in radians, accurate at all separations (atan2 of |a×b| and a·b).
    pub fn separation(self, o: Self) -> f64 {
        let c = self.cross(o);
        let s = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        s.atan2(self.dot(o))
    }
}

/// Angular separation in radians of two (ra, dec) positions in degrees.
pub fn separation_deg(ra1: f64, dec1: f64, ra2: f64, dec2: f64) -> f64 {
    UnitVector::from_radec_deg(ra1, dec1).separation(UnitVector::from_radec_deg(ra2, dec2))
}

/// A tangent plane at `center`: the gnomonic (TAN) projection of FITS WCS Paper II
/// (Calabretta & Greisen 2002). Standard coordinates (ξ, η) are in radians, ξ towards
/// east (increasing RA) and η towards north.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TangentPlane {
    center: UnitVector,
    east: [f64; 3],
    north: [f64; 3],
}

impl TangentPlane {
    /// The tangent plane at (ra, dec) radians.
    pub fn new(ra: f64, dec: f64) -> Self {
        let (sd, cd) = dec.sin_cos();
        let (sr, cr) = ra.sin_cos();
        Self {
            center: UnitVector::from_radec(ra, dec),
            east: [-sr, cr, 0.0],
            north: [-sd * cr, -sd * sr, cd],
        }
    }

    /// The tangent point.
    pub fn center(&self) -> UnitVector {
        self.center
    }

    /// Projects a point; `None` for points 90° or more from the tangent point.
    pub fn project(&self, p: UnitVector) -> Option<(f64, f64)> {
        let d = p.dot(self.center);
        if d <= 1e-12 {
            return None;
        }
        let xi = (p.x * self.east[0] + p.y * self.east[1] + p.z * self.east[2]) / d;
        let eta = (p.x * self.north[0] + p.y * self.north[1] + p.z * self.north[2]) / d;
        Some((xi, eta))
    }

    /// The sky point at standard coordinates (ξ, η), radians.
    pub fn deproject(&self, xi: f64, eta: f64) -> UnitVector {
        let c = self.center;
        UnitVector::normalized(
            c.x + xi * self.east[0] + eta * self.north[0],
            c.y + xi * self.east[1] + eta * self.north[1],
            c.z + xi * self.east[2] + eta * self.north[2],
        )
    }
}

/// Errors building sky polygons.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum GeomError {
    /// Fewer than three vertices.
    #[error("a sky polygon needs at least 3 vertices, got {0}")]
    TooFewVertices(usize),
    /// Vertices do not turn the same way.
    #[error("sky polygon is not convex at vertex {0}")]
    NotConvex(usize),
}

/// A convex polygon on the sky with great-circle edges, vertices counter-clockwise as
/// seen from inside the sphere (east of north), such as a detector footprint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkyPolygon {
    vertices: Vec<UnitVector>,
}

impl SkyPolygon {
    /// Builds a convex polygon from its vertices in either winding order.
    pub fn new(mut vertices: Vec<UnitVector>) -> Result<Self, GeomError> {
        let n = vertices.len();
        if n < 3 {
            return Err(GeomError::TooFewVertices(n));
        }
        let centroid = {
            let (mut x, mut y, mut z) = (0.0, 0.0, 0.0);
            for v in &vertices {
                x += v.x;
                y += v.y;
                z += v.z;
            }
            UnitVector::normalized(x, y, z)
        };
        let side = |vs: &[UnitVector], i: usize| {
            let e = vs[i].cross(vs[(i + 1) % vs.len()]);
            e[0] * centroid.x + e[1] * centroid.y + e[2] * centroid.z
        };
        if side(&vertices, 0) < 0.0 {
            vertices.reverse();
        }
        for i in 0..n {
            if side(&vertices, i) <= 0.0 {
                return Err(GeomError::NotConvex(i));
            }
        }
        Ok(Self { vertices })
    }

    /// The rectangle `[x0, x1] × [y0, y1]` of standard coordinates (radians) on `plane`.
    pub fn from_tangent_rect(plane: &TangentPlane, x0: f64, x1: f64, y0: f64, y1: f64) -> Self {
        let v = vec![
            plane.deproject(x0, y0),
            plane.deproject(x1, y0),
            plane.deproject(x1, y1),
            plane.deproject(x0, y1),
        ];
        Self::new(v).expect("a non-degenerate tangent-plane rectangle is convex")
    }

    /// The vertices, counter-clockwise.
    pub fn vertices(&self) -> &[UnitVector] {
        &self.vertices
    }

    /// Whether `p` is inside (or on an edge).
    pub fn contains(&self, p: UnitVector) -> bool {
        let n = self.vertices.len();
        (0..n).all(|i| {
            let e = self.vertices[i].cross(self.vertices[(i + 1) % n]);
            e[0] * p.x + e[1] * p.y + e[2] * p.z >= 0.0
        })
    }

    /// Whether `p` is inside or within `margin` radians of the polygon.
    pub fn contains_with_margin(&self, p: UnitVector, margin: f64) -> bool {
        if self.contains(p) {
            return true;
        }
        let n = self.vertices.len();
        (0..n).any(|i| arc_distance(self.vertices[i], self.vertices[(i + 1) % n], p) <= margin)
    }

    /// The centre (normalised mean of the vertices).
    pub fn center(&self) -> UnitVector {
        let (mut x, mut y, mut z) = (0.0, 0.0, 0.0);
        for v in &self.vertices {
            x += v.x;
            y += v.y;
            z += v.z;
        }
        UnitVector::normalized(x, y, z)
    }

    /// The radius of the smallest cone about [`Self::center`] holding every vertex.
    pub fn bounding_radius(&self) -> f64 {
        let c = self.center();
        self.vertices
            .iter()
            .map(|v| v.separation(c))
            .fold(0.0, f64::max)
    }

    /// NESTED HEALPix cells at `depth` that overlap the polygon, as sorted, merged
    /// ranges of cell indices at that depth. Cells that merely touch may be included
    /// (the coverage is conservative), never missed.
    pub fn healpix_ranges(&self, depth: u8) -> Vec<Range<u64>> {
        let lonlat: Vec<(f64, f64)> = self.vertices.iter().map(|v| v.to_radec()).collect();
        let bmoc = cdshealpix::nested::polygon_coverage(depth, &lonlat, true);
        let mut cells: Vec<u64> = bmoc.flat_iter().collect();
        cells.sort_unstable();
        merge_cells(&cells)
    }
}

/// NESTED HEALPix cells at `depth` within `radius` radians of `center` (conservative).
pub fn healpix_cone_ranges(center: UnitVector, radius: f64, depth: u8) -> Vec<Range<u64>> {
    let (ra, dec) = center.to_radec();
    let bmoc = cdshealpix::nested::cone_coverage_approx(depth, ra, dec, radius);
    let mut cells: Vec<u64> = bmoc.flat_iter().collect();
    cells.sort_unstable();
    merge_cells(&cells)
}

/// The NESTED HEALPix cell at `depth` that holds `p`.
pub fn healpix_cell(p: UnitVector, depth: u8) -> u64 {
    let (ra, dec) = p.to_radec();
    cdshealpix::nested::hash(depth, ra, dec)
}

fn merge_cells(sorted: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &c in sorted {
        match out.last_mut() {
            Some(r) if r.end == c => r.end = c + 1,
            _ => out.push(c..c + 1),
        }
    }
    out
}

/// Angular distance in radians from `p` to the great-circle arc from `a` to `b` (shorter arc).
pub fn arc_distance(a: UnitVector, b: UnitVector, p: UnitVector) -> f64 {
    let n = a.cross(b);
    let nn = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if nn < 1e-15 {
        return a.separation(p);
    }
    let n = [n[0] / nn, n[1] / nn, n[2] / nn];
    // Projection of p onto the great circle through a and b.
    let d = n[0] * p.x + n[1] * p.y + n[2] * p.z;
    let proj = UnitVector::normalized(p.x - d * n[0], p.y - d * n[1], p.z - d * n[2]);
    // Is the projection between a and b on the arc?
    let ab = a.separation(b);
    if (a.separation(proj) + proj.separation(b) - ab).abs() < 1e-12 {
        d.abs().asin()
    } else {
        a.separation(p).min(b.separation(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn separation_of_known_points() {
        let a = UnitVector::from_radec_deg(10.0, 0.0);
        let b = UnitVector::from_radec_deg(11.0, 0.0);
        assert!((a.separation(b).to_degrees() - 1.0).abs() < 1e-12);
        let pole = UnitVector::from_radec_deg(0.0, 90.0);
        assert!((a.separation(pole).to_degrees() - 90.0).abs() < 1e-12);
        // tiny separations stay accurate
        let c = UnitVector::from_radec_deg(10.0, 1e-3 / 3600.0);
        assert!((a.separation(c) / ARCSEC - 1e-3).abs() < 1e-9);
    }

    #[test]
    fn radec_round_trip_and_wrap() {
        let (ra, dec) = UnitVector::from_radec_deg(359.5, -30.0).to_radec_deg();
        assert!((ra - 359.5).abs() < 1e-10 && (dec + 30.0).abs() < 1e-10);
    }

    #[test]
    fn tangent_plane_round_trip() {
        let tp = TangentPlane::new(1.0, -0.5);
        let p = tp.deproject(0.01, -0.02);
        let (xi, eta) = tp.project(p).unwrap();
        assert!((xi - 0.01).abs() < 1e-14 && (eta + 0.02).abs() < 1e-14);
        // east is increasing RA
        let (ra, _) = tp.deproject(1e-4, 0.0).to_radec();
        assert!(ra > 1.0);
    }

    #[test]
    fn polygon_rejects_bad_input() {
        let a = UnitVector::from_radec_deg(0.0, 0.0);
        assert_eq!(
            SkyPolygon::new(vec![a, a]),
            Err(GeomError::TooFewVertices(2))
        );
        let bowtie = vec![
            UnitVector::from_radec_deg(0.0, 0.0),
            UnitVector::from_radec_deg(1.0, 1.0),
            UnitVector::from_radec_deg(1.0, 0.0),
            UnitVector::from_radec_deg(0.0, 1.0),
        ];
        assert!(matches!(
            SkyPolygon::new(bowtie),
            Err(GeomError::NotConvex(_))
        ));
    }

    #[test]
    fn healpix_ranges_cover_every_inside_point() {
        let tp = TangentPlane::new(0.7, -0.4);
        let half = 0.12f64.to_radians();
        let poly = SkyPolygon::from_tangent_rect(&tp, -half, half, -half, half);
        let depth = 10;
        let ranges = poly.healpix_ranges(depth);
        assert!(!ranges.is_empty());
        for i in 0..20 {
            for j in 0..20 {
                let p = tp.deproject(
                    -half + 2.0 * half * i as f64 / 19.0,
                    -half + 2.0 * half * j as f64 / 19.0,
                );
                let c = healpix_cell(p, depth);
                assert!(
                    ranges.iter().any(|r| r.contains(&c)),
                    "cell {c} of an inside point not covered"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn polygon_contains_matches_tangent_plane(ra in 0.0f64..std::f64::consts::TAU, dec in -1.4f64..1.4, x in -0.01f64..0.01, y in -0.01f64..0.01) {
            let tp = TangentPlane::new(ra, dec);
            let h = 0.005;
            let poly = SkyPolygon::from_tangent_rect(&tp, -h, h, -h, h);
            let p = tp.deproject(x, y);
            // great-circle edges are straight lines in the gnomonic projection
            let inside = x.abs() <= h && y.abs() <= h;
            prop_assume!((x.abs() - h).abs() > 1e-9 && (y.abs() - h).abs() > 1e-9);
            prop_assert_eq!(poly.contains(p), inside);
        }

        #[test]
        fn margin_grows_the_polygon(ra in 0.0f64..std::f64::consts::TAU, dec in -1.3f64..1.3, y in -0.004f64..0.004) {
            let tp = TangentPlane::new(ra, dec);
            let h = 0.005;
            let poly = SkyPolygon::from_tangent_rect(&tp, -h, h, -h, h);
            let outside = tp.deproject(h + 2e-5, y);
            prop_assert!(!poly.contains(outside));
            prop_assert!(poly.contains_with_margin(outside, 3e-5));
            prop_assert!(!poly.contains_with_margin(outside, 1e-5));
        }
    }
}
