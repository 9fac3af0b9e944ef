//! Ecliptic and Galactic coordinates of an ICRS position, for the alert's `ssSource`
//! record (`eclLambda`, `eclBeta`, `galLon`, `galLat`).
//!
//! * Ecliptic: the mean ecliptic and equinox of J2000, a rotation about the x axis by
//!   the IAU 2006 obliquity ε₀ = 84381.406″ (Hilton et al. 2006). The frame bias
//!   between ICRS and the J2000 dynamical frame (≈ 23 mas) is neglected.
//! * Galactic: the ICRS → Galactic rotation matrix of the Hipparcos catalogue (ESA 1997,
//!   vol. 1, eq. 1.5.11).
//!
//! All angles in degrees; longitudes in [0, 360), latitudes in [−90, 90].

use apflow_core::geom::UnitVector;

/// IAU 2006 obliquity of the ecliptic at J2000, degrees.
pub const OBLIQUITY_J2000_DEG: f64 = 84381.406 / 3600.0;

/// ICRS → Galactic (Hipparcos, ESA 1997), digits as published.
#[allow(clippy::excessive_precision)]
const ICRS_TO_GAL: [[f64; 3]; 3] = [
    [
        -0.054_875_560_416_215_4,
        -0.873_437_090_234_885,
        -0.483_835_015_548_713_2,
    ],
    [
        0.494_109_427_875_583_7,
        -0.444_829_629_960_011_2,
        0.746_982_244_497_218_9,
    ],
    [
        -0.867_666_149_019_004_7,
        -0.198_076_373_431_201_5,
        0.455_983_776_175_066_9,
    ],
];

/// Ecliptic (λ, β) of ICRS (ra, dec), degrees.
pub fn ecliptic_j2000(ra_deg: f64, dec_deg: f64) -> (f64, f64) {
    let UnitVector { x, y, z } = UnitVector::from_radec_deg(ra_deg, dec_deg);
    let (se, ce) = OBLIQUITY_J2000_DEG.to_radians().sin_cos();
    UnitVector {
        x,
        y: ce * y + se * z,
        z: -se * y + ce * z,
    }
    .to_radec_deg()
}

/// Galactic (l, b) of ICRS (ra, dec), degrees.
pub fn galactic(ra_deg: f64, dec_deg: f64) -> (f64, f64) {
    let v = UnitVector::from_radec_deg(ra_deg, dec_deg);
    let m = &ICRS_TO_GAL;
    let r = |i: usize| m[i][0] * v.x + m[i][1] * v.y + m[i][2] * v.z;
    UnitVector::normalized(r(0), r(1), r(2)).to_radec_deg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poles_and_centres_land_where_they_should() {
        // North Galactic pole and Galactic centre (ICRS, Hipparcos definition).
        let (_, b) = galactic(192.859_508, 27.128_336);
        assert!((b - 90.0).abs() < 1e-4, "{b}");
        let (l, b) = galactic(266.404_988, -28.936_175);
        assert!((l.min(360.0 - l)).abs() < 1e-3 && b.abs() < 1e-3, "{l} {b}");
        // North ecliptic pole: RA 18h, Dec 90° − ε.
        let (_, beta) = ecliptic_j2000(270.0, 90.0 - OBLIQUITY_J2000_DEG);
        assert!((beta - 90.0).abs() < 1e-9, "{beta}");
        // The vernal equinox is on both the equator and the ecliptic.
        let (lam, beta) = ecliptic_j2000(0.0, 0.0);
        assert!(lam.abs() < 1e-12 && beta.abs() < 1e-12);
        // Summer solstice: λ = 90°, β = 0 at RA 6h, Dec +ε.
        let (lam, beta) = ecliptic_j2000(90.0, OBLIQUITY_J2000_DEG);
        assert!(
            (lam - 90.0).abs() < 1e-9 && beta.abs() < 1e-9,
            "{lam} {beta}"
        );
    }
}
