//! A TAN-SIP world coordinate system (Calabretta & Greisen 2002, gnomonic projection;
//! Shupe et al. 2005, Simple Imaging Polynomial distortion) for one detector or one
//! template tile.
//!
//! Pixel coordinates here are 0-based (the centre of the first pixel is (0, 0));
//! FITS pixel coordinates are ours + 1 and `CRPIX` is written 1-based.

use crate::geom::{GeomError, SkyPolygon, TangentPlane, UnitVector};

/// Highest SIP order supported.
pub const SIP_MAX_ORDER: usize = 3;

/// A TAN-SIP WCS.
///
/// Forward: `u = x + 1 − CRPIX1`, `v = y + 1 − CRPIX2` (pixels), then
/// `u' = u + Σ A_p_q u^p v^q`, `v' = v + Σ B_p_q u^p v^q`, then
/// `(ξ, η) = CD · (u', v')` degrees on the tangent plane at `CRVAL`.
#[derive(Clone, Debug, PartialEq)]
pub struct TanSipWcs {
    /// Tangent point (RA, Dec), degrees.
    pub crval_deg: [f64; 2],
    /// Reference pixel, 1-based FITS convention.
    pub crpix: [f64; 2],
    /// Linear transformation, degrees per pixel: `[[CD1_1, CD1_2], [CD2_1, CD2_2]]`.
    pub cd: [[f64; 2]; 2],
    /// SIP order (0 for a plain TAN WCS).
    pub sip_order: usize,
    /// SIP coefficients `A[p][q]` of `u^p v^q` (pixels), `p + q ≤ sip_order`.
    pub a: [[f64; SIP_MAX_ORDER + 1]; SIP_MAX_ORDER + 1],
    /// SIP coefficients `B[p][q]`.
    pub b: [[f64; SIP_MAX_ORDER + 1]; SIP_MAX_ORDER + 1],
}

/// A FITS header value.
#[derive(Clone, Debug, PartialEq)]
pub enum CardValue {
    /// A string.
    Str(String),
    /// A floating-point number.
    Float(f64),
    /// An integer.
    Int(i64),
}

/// Why a header does not describe a usable WCS.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WcsError {
    /// A required key is absent.
    #[error("WCS key {0} is missing")]
    Missing(String),
    /// A key holds a value of the wrong kind.
    #[error("WCS key {0} has an unusable value {1:?}")]
    BadValue(String, String),
    /// A projection other than TAN / TAN-SIP, or a SIP order above 3.
    #[error("unsupported WCS: {0}")]
    Unsupported(String),
    /// The CD matrix cannot be inverted.
    #[error("the CD matrix is singular")]
    Singular,
}

/// A header card: key, value, comment.
pub type Card = (String, CardValue, String);

impl TanSipWcs {
    /// A TAN WCS (no distortion) with pixel scale `scale_arcsec` and the camera's
    /// rotation: `rotation_deg` is the position angle of the +y axis east of north, and
    /// the parity is the sky's (east is to the left when north is up).
    pub fn tan(crval_deg: [f64; 2], crpix: [f64; 2], scale_arcsec: f64, rotation_deg: f64) -> Self {
        let s = scale_arcsec / 3600.0;
        let (st, ct) = rotation_deg.to_radians().sin_cos();
        Self {
            crval_deg,
            crpix,
            cd: [[-s * ct, s * st], [s * st, s * ct]],
            sip_order: 0,
            a: Default::default(),
            b: Default::default(),
        }
    }

    /// Adds a radial (barrel or pincushion) distortion `Δr = k r³` about `CRPIX`, where
    /// `r` is in pixels: exactly the SIP terms `A_3_0 = A_1_2 = B_2_1 = B_0_3 = k`.
    pub fn with_radial_distortion(mut self, k: f64) -> Self {
        self.sip_order = 3;
        self.a = Default::default();
        self.b = Default::default();
        self.a[3][0] = k;
        self.a[1][2] = k;
        self.b[2][1] = k;
        self.b[0][3] = k;
        self
    }

    /// The same WCS with its tangent point moved by (Δξ, Δη) arcsec on the sky: the
    /// image of every pixel moves by that amount (to first order), which is how the
    /// simulator makes the true mapping differ from the header's.
    pub fn shifted_arcsec(&self, dxi_arcsec: f64, deta_arcsec: f64) -> Self {
        let plane = self.plane();
        let c = plane.deproject(
            (dxi_arcsec / 3600.0).to_radians(),
            (deta_arcsec / 3600.0).to_radians(),
        );
        let (ra, dec) = c.to_radec_deg();
        Self {
            crval_deg: [ra, dec],
            ..self.clone()
        }
    }

    fn plane(&self) -> TangentPlane {
        TangentPlane::new(
            self.crval_deg[0].to_radians(),
            self.crval_deg[1].to_radians(),
        )
    }

    fn sip(&self, u: f64, v: f64) -> (f64, f64) {
        if self.sip_order == 0 {
            return (0.0, 0.0);
        }
        let (mut du, mut dv) = (0.0, 0.0);
        let mut up = 1.0;
        for p in 0..=self.sip_order {
            let mut vq = 1.0;
            for q in 0..=(self.sip_order - p) {
                du += self.a[p][q] * up * vq;
                dv += self.b[p][q] * up * vq;
                vq *= v;
            }
            up *= u;
        }
        (du, dv)
    }

    /// Sky position (RA in [0, 360), Dec), degrees, of the 0-based pixel (x, y).
    pub fn pixel_to_sky(&self, x: f64, y: f64) -> (f64, f64) {
        self.pixel_to_unit(x, y).to_radec_deg()
    }

    /// Intermediate pixel coordinates of the 0-based pixel (x, y): offsets from
    /// `CRPIX` with the SIP distortion applied, before `CD` (pixels).
    pub fn pixel_to_intermediate(&self, x: f64, y: f64) -> (f64, f64) {
        let u = x + 1.0 - self.crpix[0];
        let v = y + 1.0 - self.crpix[1];
        let (du, dv) = self.sip(u, v);
        (u + du, v + dv)
    }

    /// The outline on the sky of a `width × height` pixel grid (its pixel-edge corners).
    pub fn footprint(&self, width: f64, height: f64) -> Result<SkyPolygon, GeomError> {
        let (w, h) = (width - 0.5, height - 0.5);
        let corners = [(-0.5, -0.5), (w, -0.5), (w, h), (-0.5, h)]
            .map(|(x, y)| self.pixel_to_unit(x, y))
            .to_vec();
        SkyPolygon::new(corners)
    }

    /// Sky direction of the 0-based pixel (x, y).
    pub fn pixel_to_unit(&self, x: f64, y: f64) -> UnitVector {
        let (u, v) = self.pixel_to_intermediate(x, y);
        let xi = self.cd[0][0] * u + self.cd[0][1] * v;
        let eta = self.cd[1][0] * u + self.cd[1][1] * v;
        self.plane().deproject(xi.to_radians(), eta.to_radians())
    }

    /// The 0-based pixel of a sky position (degrees); `None` for points 90° or more
    /// from the tangent point. The SIP polynomial is inverted by fixed-point iteration
    /// (it converges for the small distortions used here, to < 1e-9 px).
    pub fn sky_to_pixel(&self, ra_deg: f64, dec_deg: f64) -> Option<(f64, f64)> {
        self.unit_to_pixel(&self.plane(), UnitVector::from_radec_deg(ra_deg, dec_deg))
    }

    /// As [`Self::sky_to_pixel`] for a unit vector, with the tangent plane precomputed
    /// by [`Self::tangent_plane`] (for speed in loops).
    pub fn unit_to_pixel(&self, plane: &TangentPlane, p: UnitVector) -> Option<(f64, f64)> {
        let (xi, eta) = plane.project(p)?;
        let (xi, eta) = (xi.to_degrees(), eta.to_degrees());
        let [[a, b], [c, d]] = self.cd;
        let det = a * d - b * c;
        let up = (d * xi - b * eta) / det;
        let vp = (-c * xi + a * eta) / det;
        let (mut u, mut v) = (up, vp);
        if self.sip_order > 0 {
            for _ in 0..20 {
                let (du, dv) = self.sip(u, v);
                let (nu, nv) = (up - du, vp - dv);
                let done = (nu - u).abs() + (nv - v).abs() < 1e-10;
                u = nu;
                v = nv;
                if done {
                    break;
                }
            }
        }
        Some((u + self.crpix[0] - 1.0, v + self.crpix[1] - 1.0))
    }

    /// The tangent plane at `CRVAL`.
    pub fn tangent_plane(&self) -> TangentPlane {
        self.plane()
    }

    /// Pixel scale, arcsec per pixel (square root of |det CD|).
    pub fn pixel_scale_arcsec(&self) -> f64 {
        let [[a, b], [c, d]] = self.cd;
        (a * d - b * c).abs().sqrt() * 3600.0
    }

    /// Every header key [`Self::from_header`] may ask for.
    pub fn header_keys() -> Vec<String> {
        let mut keys: Vec<String> = [
            "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1",
            "CD2_2", "A_ORDER", "B_ORDER",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in 0..=SIP_MAX_ORDER {
            for q in 0..=(SIP_MAX_ORDER - p) {
                keys.push(format!("A_{p}_{q}"));
                keys.push(format!("B_{p}_{q}"));
            }
        }
        keys
    }

    /// Reads a TAN or TAN-SIP WCS from header values: `get(key)` returns the card's
    /// value (numbers as `Float` or `Int`, strings as `Str`) or `None` when absent.
    /// Needs `CTYPE1/2` (`RA---TAN[-SIP]`, `DEC--TAN[-SIP]`), `CRVAL1/2`, `CRPIX1/2` and
    /// `CD1_1 … CD2_2`; `A_ORDER`/`B_ORDER` and the `A_p_q`/`B_p_q` terms when SIP.
    pub fn from_header(get: impl Fn(&str) -> Option<CardValue>) -> Result<Self, WcsError> {
        let num = |k: &str| -> Result<f64, WcsError> {
            match get(k) {
                Some(CardValue::Float(v)) => Ok(v),
                Some(CardValue::Int(v)) => Ok(v as f64),
                Some(CardValue::Str(s)) => s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| WcsError::BadValue(k.to_string(), s)),
                None => Err(WcsError::Missing(k.to_string())),
            }
        };
        let ctype = |k: &str| -> Result<String, WcsError> {
            match get(k) {
                Some(CardValue::Str(s)) => Ok(s.trim().to_string()),
                Some(other) => Err(WcsError::BadValue(k.to_string(), format!("{other:?}"))),
                None => Err(WcsError::Missing(k.to_string())),
            }
        };
        let (c1, c2) = (ctype("CTYPE1")?, ctype("CTYPE2")?);
        let sip = match (c1.as_str(), c2.as_str()) {
            ("RA---TAN", "DEC--TAN") => false,
            ("RA---TAN-SIP", "DEC--TAN-SIP") => true,
            _ => return Err(WcsError::Unsupported(format!("{c1} / {c2}"))),
        };
        let mut w = Self {
            crval_deg: [num("CRVAL1")?, num("CRVAL2")?],
            crpix: [num("CRPIX1")?, num("CRPIX2")?],
            cd: [
                [num("CD1_1")?, num("CD1_2")?],
                [num("CD2_1")?, num("CD2_2")?],
            ],
            sip_order: 0,
            a: Default::default(),
            b: Default::default(),
        };
        let [[a, b], [c, d]] = w.cd;
        if !(a * d - b * c).is_normal() {
            return Err(WcsError::Singular);
        }
        if sip {
            let order = num("A_ORDER")?.max(num("B_ORDER")?) as usize;
            if order > SIP_MAX_ORDER {
                return Err(WcsError::Unsupported(format!("SIP order {order}")));
            }
            w.sip_order = order;
            for p in 0..=order {
                for q in 0..=(order - p) {
                    if let Ok(v) = num(&format!("A_{p}_{q}")) {
                        w.a[p][q] = v;
                    }
                    if let Ok(v) = num(&format!("B_{p}_{q}")) {
                        w.b[p][q] = v;
                    }
                }
            }
        }
        Ok(w)
    }

    /// The local affine approximation at pixel (x, y): the Jacobian
    /// `d(ξ, η)/d(x, y)` in arcsec per pixel, by central differences.
    pub fn local_jacobian_arcsec(&self, x: f64, y: f64) -> [[f64; 2]; 2] {
        let plane = self.plane();
        let at = |x: f64, y: f64| {
            let (xi, eta) = plane
                .project(self.pixel_to_unit(x, y))
                .expect("pixel maps near the tangent point");
            (xi.to_degrees() * 3600.0, eta.to_degrees() * 3600.0)
        };
        let h = 0.5;
        let (xp, yp) = (at(x + h, y), at(x, y + h));
        let (xm, ym) = (at(x - h, y), at(x, y - h));
        [
            [(xp.0 - xm.0) / (2.0 * h), (yp.0 - ym.0) / (2.0 * h)],
            [(xp.1 - xm.1) / (2.0 * h), (yp.1 - ym.1) / (2.0 * h)],
        ]
    }

    /// The FITS header cards describing this WCS.
    pub fn cards(&self) -> Vec<Card> {
        let sip = self.sip_order > 0;
        let c = |k: &str, v: CardValue, comment: &str| (k.to_string(), v, comment.to_string());
        let mut cards = vec![
            c("WCSAXES", CardValue::Int(2), "number of WCS axes"),
            c(
                "CTYPE1",
                CardValue::Str(if sip { "RA---TAN-SIP" } else { "RA---TAN" }.into()),
                "gnomonic projection",
            ),
            c(
                "CTYPE2",
                CardValue::Str(if sip { "DEC--TAN-SIP" } else { "DEC--TAN" }.into()),
                "gnomonic projection",
            ),
            c(
                "CUNIT1",
                CardValue::Str("deg".into()),
                "unit of CRVAL1 and CD1_*",
            ),
            c(
                "CUNIT2",
                CardValue::Str("deg".into()),
                "unit of CRVAL2 and CD2_*",
            ),
            c("RADESYS", CardValue::Str("ICRS".into()), "reference frame"),
            c(
                "CRVAL1",
                CardValue::Float(self.crval_deg[0]),
                "[deg] RA of tangent point",
            ),
            c(
                "CRVAL2",
                CardValue::Float(self.crval_deg[1]),
                "[deg] Dec of tangent point",
            ),
            c(
                "CRPIX1",
                CardValue::Float(self.crpix[0]),
                "[pix] reference pixel x (1-based)",
            ),
            c(
                "CRPIX2",
                CardValue::Float(self.crpix[1]),
                "[pix] reference pixel y (1-based)",
            ),
            c("CD1_1", CardValue::Float(self.cd[0][0]), "[deg/pix] dxi/dx"),
            c("CD1_2", CardValue::Float(self.cd[0][1]), "[deg/pix] dxi/dy"),
            c(
                "CD2_1",
                CardValue::Float(self.cd[1][0]),
                "[deg/pix] deta/dx",
            ),
            c(
                "CD2_2",
                CardValue::Float(self.cd[1][1]),
                "[deg/pix] deta/dy",
            ),
        ];
        if sip {
            cards.push(c(
                "A_ORDER",
                CardValue::Int(self.sip_order as i64),
                "SIP order, x",
            ));
            cards.push(c(
                "B_ORDER",
                CardValue::Int(self.sip_order as i64),
                "SIP order, y",
            ));
            for (name, coeffs) in [("A", &self.a), ("B", &self.b)] {
                for (p, row) in coeffs.iter().enumerate().take(self.sip_order + 1) {
                    for (q, &coef) in row.iter().enumerate().take(self.sip_order + 1 - p) {
                        if coef != 0.0 {
                            cards.push(c(
                                &format!("{name}_{p}_{q}"),
                                CardValue::Float(coef),
                                "SIP distortion coefficient",
                            ));
                        }
                    }
                }
            }
        }
        cards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geom::separation_deg;

    fn wcs() -> TanSipWcs {
        TanSipWcs::tan([150.0, -20.0], [-5000.0, 3000.0], 0.2, 33.0).with_radial_distortion(2.5e-13)
    }

    #[test]
    fn pixel_sky_round_trip_with_distortion() {
        let w = wcs();
        for &(x, y) in &[(0.0, 0.0), (4095.0, 0.0), (2047.5, 2047.5), (17.3, 4000.9)] {
            let (ra, dec) = w.pixel_to_sky(x, y);
            let (x2, y2) = w.sky_to_pixel(ra, dec).unwrap();
            assert!(
                (x - x2).abs() < 1e-6 && (y - y2).abs() < 1e-6,
                "{x},{y} -> {x2},{y2}"
            );
        }
    }

    #[test]
    fn scale_rotation_and_parity() {
        let w = TanSipWcs::tan([10.0, 0.0], [1.0, 1.0], 0.2, 0.0);
        assert!((w.pixel_scale_arcsec() - 0.2).abs() < 1e-12);
        // +y is north, +x is west (RA decreases) at rotation 0.
        let (ra0, dec0) = w.pixel_to_sky(0.0, 0.0);
        let (_, dec1) = w.pixel_to_sky(0.0, 100.0);
        let (ra2, _) = w.pixel_to_sky(100.0, 0.0);
        assert!(dec1 > dec0 && ra2 < ra0);
        assert!((separation_deg(ra0, dec0, ra2, dec0).to_degrees() * 3600.0 - 20.0).abs() < 1e-6);
        // Rotation 90: +y points east.
        let w = TanSipWcs::tan([10.0, 0.0], [1.0, 1.0], 0.2, 90.0);
        let (ra3, _) = w.pixel_to_sky(0.0, 100.0);
        assert!(ra3 > ra0);
    }

    #[test]
    fn distortion_moves_far_pixels_by_the_radial_law() {
        let plain = TanSipWcs::tan([150.0, -20.0], [1.0, 1.0], 0.2, 0.0);
        let k = 2.5e-13;
        let dist = plain.clone().with_radial_distortion(k);
        let r = 20_000.0;
        let (ra1, dec1) = plain.pixel_to_sky(r, 0.0);
        let (ra2, dec2) = dist.pixel_to_sky(r, 0.0);
        let moved_arcsec = separation_deg(ra1, dec1, ra2, dec2).to_degrees() * 3600.0;
        let expected = k * r * r * r * 0.2;
        assert!(
            (moved_arcsec - expected).abs() < 1e-3 * expected,
            "{moved_arcsec} vs {expected}"
        );
    }

    #[test]
    fn shift_moves_every_pixel_by_the_offset() {
        let w = wcs();
        let s = w.shifted_arcsec(0.15, -0.1);
        let (ra1, dec1) = w.pixel_to_sky(1000.0, 1000.0);
        let (ra2, dec2) = s.pixel_to_sky(1000.0, 1000.0);
        let d = separation_deg(ra1, dec1, ra2, dec2).to_degrees() * 3600.0;
        assert!((d - (0.15f64.hypot(0.1))).abs() < 0.01, "{d}");
    }

    #[test]
    fn header_round_trip() {
        let w = wcs();
        let cards = w.cards();
        let get = |k: &str| cards.iter().find(|c| c.0 == k).map(|c| c.1.clone());
        let back = TanSipWcs::from_header(get).unwrap();
        assert_eq!(back, w);
        let no_cd = |k: &str| if k == "CD1_1" { None } else { get(k) };
        assert_eq!(
            TanSipWcs::from_header(no_cd),
            Err(WcsError::Missing("CD1_1".into()))
        );
    }

    #[test]
    fn cards_name_the_sip_terms() {
        let cards = wcs().cards();
        let keys: Vec<&str> = cards.iter().map(|c| c.0.as_str()).collect();
        for k in [
            "CTYPE1", "CRVAL1", "CD2_2", "A_ORDER", "A_3_0", "A_1_2", "B_2_1", "B_0_3",
        ] {
            assert!(keys.contains(&k), "{k} missing");
        }
        assert!(!keys.contains(&"A_2_1"));
    }
}
