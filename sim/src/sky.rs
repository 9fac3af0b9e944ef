//! The simulated sky: stars, galaxies, variable stars, transients and solar-system
//! objects.
//!
//! Static sources live in sky cells (bands of 0.05° in declination, split into equal
//! RA cells), each generated on demand from its own random stream, so any part of
//! the sky is reproduced identically without generating the rest. Solar-system
//! objects move, so they are generated once per night over the whole field.
//!
//! Magnitudes are AB; fluxes are nJy (`f = 10^(-0.4 (m − 31.4))`).

use apflow_core::geom::{TangentPlane, UnitVector};
use rand::Rng;
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use crate::rng;
use crate::schedule::Band;
use crate::spec::Profile;

/// Height of a sky cell in declination, degrees.
pub const CELL_DEG: f64 = 0.05;
/// Epoch of catalogue positions (Gaia DR3-like, 2016.0), MJD TAI.
pub const CATALOG_EPOCH_MJD: f64 = 57_388.0;
/// Days per Julian year.
pub const DAYS_PER_YEAR: f64 = 365.25;

/// nJy of an AB magnitude.
pub fn mag_to_njy(mag: f64) -> f64 {
    10f64.powf(-0.4 * (mag - 31.4))
}

/// AB magnitude of a flux in nJy (`+∞` for non-positive fluxes).
pub fn njy_to_mag(njy: f64) -> f64 {
    if njy > 0.0 {
        31.4 - 2.5 * njy.log10()
    } else {
        f64::INFINITY
    }
}

/// A sky cell: declination band and RA index within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    /// Band index: `floor((dec + 90) / CELL_DEG)`.
    pub dec_index: u32,
    /// RA index within the band.
    pub ra_index: u32,
}

fn bands_count() -> u32 {
    (180.0 / CELL_DEG).round() as u32
}

fn dec_edges(dec_index: u32) -> (f64, f64) {
    let lo = -90.0 + f64::from(dec_index) * CELL_DEG;
    (lo, lo + CELL_DEG)
}

fn ra_cells(dec_index: u32) -> u32 {
    let (lo, hi) = dec_edges(dec_index);
    let c = lo.abs().min(hi.abs());
    let c = if lo < 0.0 && hi > 0.0 { 0.0 } else { c };
    ((360.0 * c.to_radians().cos() / CELL_DEG).floor() as u32).max(1)
}

impl Cell {
    /// RA range (degrees) and Dec range (degrees) of the cell.
    pub fn bounds(self) -> ((f64, f64), (f64, f64)) {
        let n = ra_cells(self.dec_index);
        let w = 360.0 / f64::from(n);
        (
            (
                f64::from(self.ra_index) * w,
                f64::from(self.ra_index + 1) * w,
            ),
            dec_edges(self.dec_index),
        )
    }
    /// Area, deg².
    pub fn area_deg2(self) -> f64 {
        let ((r0, r1), (d0, d1)) = self.bounds();
        (r1 - r0).to_radians()
            * (d1.to_radians().sin() - d0.to_radians().sin())
            * (180.0 / std::f64::consts::PI).powi(2)
    }
    fn centre(self) -> UnitVector {
        let ((r0, r1), (d0, d1)) = self.bounds();
        UnitVector::from_radec_deg(0.5 * (r0 + r1), 0.5 * (d0 + d1))
    }
    fn key(self) -> u64 {
        (u64::from(self.dec_index) << 16) | u64::from(self.ra_index)
    }
    /// Cells overlapping the cone of `radius_deg` around `centre`.
    pub fn covering(centre: UnitVector, radius_deg: f64) -> Vec<Cell> {
        let (ra, dec) = centre.to_radec_deg();
        let diag = CELL_DEG * 1.5;
        let lo = (((dec - radius_deg - diag) + 90.0) / CELL_DEG)
            .floor()
            .max(0.0) as u32;
        let hi =
            ((((dec + radius_deg + diag) + 90.0) / CELL_DEG).floor() as u32).min(bands_count() - 1);
        let mut out = Vec::new();
        for dec_index in lo..=hi {
            let n = ra_cells(dec_index);
            let w = 360.0 / f64::from(n);
            let (d0, d1) = dec_edges(dec_index);
            let cos_min = d0.abs().max(d1.abs()).min(89.9).to_radians().cos();
            let half = (radius_deg + w) / cos_min + w;
            let indices: Vec<u32> = if half >= 180.0 {
                (0..n).collect()
            } else {
                let a = ((ra - half) / w).floor() as i64;
                let b = ((ra + half) / w).floor() as i64;
                (a..=b).map(|i| i.rem_euclid(i64::from(n)) as u32).collect()
            };
            for ra_index in indices {
                let cell = Cell {
                    dec_index,
                    ra_index,
                };
                // Cell half-diagonal on the sky bounds how far its contents reach.
                let reach =
                    (w * 0.5 * d0.abs().min(d1.abs()).to_radians().cos()).hypot(CELL_DEG * 0.5);
                if cell.centre().separation(centre).to_degrees() <= radius_deg + reach * 1.01
                    && !out.contains(&cell)
                {
                    out.push(cell);
                }
            }
        }
        out
    }
}

/// How a variable star's brightness changes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum VariableShape {
    /// Sinusoid (ellipsoidal, rotational variables).
    Sine,
    /// Fast rise, slow linear decline (RR Lyrae–like pulsators).
    Sawtooth,
}

/// Periodic variability of a star.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variability {
    /// Period, days.
    pub period_d: f64,
    /// Peak-to-peak amplitude, magnitudes.
    pub amplitude_mag: f64,
    /// Phase at MJD 0, cycles.
    pub phase: f64,
    /// Light-curve shape.
    pub shape: VariableShape,
}

impl Variability {
    /// Magnitude offset from the mean at `mjd`, in [−A/2, A/2].
    pub fn delta_mag(&self, mjd: f64) -> f64 {
        let ph = (mjd / self.period_d + self.phase).rem_euclid(1.0);
        let s = match self.shape {
            VariableShape::Sine => 0.5 * (std::f64::consts::TAU * ph).sin(),
            // Brightest (most negative offset) after a rise lasting 15% of the period.
            VariableShape::Sawtooth => {
                if ph < 0.15 {
                    0.5 - ph / 0.15
                } else {
                    -0.5 + (ph - 0.15) / 0.85
                }
            }
        };
        self.amplitude_mag * s
    }
}

/// A star.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Star {
    /// Unique id.
    pub id: u64,
    /// RA at [`CATALOG_EPOCH_MJD`], degrees.
    pub ra_deg: f64,
    /// Dec at [`CATALOG_EPOCH_MJD`], degrees.
    pub dec_deg: f64,
    /// Proper motion in RA (μα cos δ), mas/yr.
    pub pm_ra_masyr: f64,
    /// Proper motion in Dec, mas/yr.
    pub pm_dec_masyr: f64,
    /// Mean AB magnitudes u..y.
    pub mags: [f64; 6],
    /// Variability, for variable stars.
    pub variability: Option<Variability>,
}

impl Star {
    /// Position at `mjd` (proper motion applied on the tangent plane), unit vector.
    pub fn position(&self, mjd: f64) -> UnitVector {
        let years = (mjd - CATALOG_EPOCH_MJD) / DAYS_PER_YEAR;
        let plane = TangentPlane::new(self.ra_deg.to_radians(), self.dec_deg.to_radians());
        let mas = std::f64::consts::PI / (180.0 * 3600.0 * 1000.0);
        plane.deproject(
            self.pm_ra_masyr * years * mas,
            self.pm_dec_masyr * years * mas,
        )
    }
    /// Flux in `band` at `mjd`, nJy.
    pub fn flux_njy(&self, band: Band, mjd: f64) -> f64 {
        let dm = self.variability.map_or(0.0, |v| v.delta_mag(mjd));
        mag_to_njy(self.mags[band.index()] + dm)
    }
}

/// A galaxy: an exponential disk plus a de Vaucouleurs bulge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Galaxy {
    /// Unique id.
    pub id: u64,
    /// RA, degrees.
    pub ra_deg: f64,
    /// Dec, degrees.
    pub dec_deg: f64,
    /// Total AB magnitudes u..y.
    pub mags: [f64; 6],
    /// Disk half-light radius, arcsec.
    pub disk_re_arcsec: f64,
    /// Bulge half-light radius, arcsec.
    pub bulge_re_arcsec: f64,
    /// Fraction of the flux in the bulge.
    pub bulge_fraction: f64,
    /// Disk axis ratio b/a.
    pub axis_ratio: f64,
    /// Position angle of the major axis, degrees east of north.
    pub pa_deg: f64,
}

/// Kind of transient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransientKind {
    /// Supernova-like: rises over ~2–3 weeks, declines over months.
    Supernova,
    /// Fast: rises in minutes to an hour, fades over hours (flares, kilonova-like).
    Fast,
    /// A point source injected to measure completeness: constant flux from the start of
    /// the night, absent from the templates (`NightSpec::injected_density_deg2`).
    Injected,
}

/// A transient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transient {
    /// Unique id.
    pub id: u64,
    /// Kind.
    pub kind: TransientKind,
    /// RA, degrees.
    pub ra_deg: f64,
    /// Dec, degrees.
    pub dec_deg: f64,
    /// Host galaxy, if any.
    pub host: Option<u64>,
    /// Explosion time, MJD TAI.
    pub t0_mjd: f64,
    /// Time from explosion to peak, days.
    pub rise_d: f64,
    /// Decline after peak: magnitudes per day (supernova) or e-folding days (fast).
    pub decline: f64,
    /// Peak AB magnitudes u..y.
    pub peak_mags: [f64; 6],
}

impl Transient {
    /// Flux in `band` at `mjd`, nJy (zero before explosion).
    pub fn flux_njy(&self, band: Band, mjd: f64) -> f64 {
        let t = mjd - self.t0_mjd;
        if t <= 0.0 {
            return 0.0;
        }
        let peak = mag_to_njy(self.peak_mags[band.index()]);
        if t < self.rise_d {
            let x = t / self.rise_d;
            return peak * x * x;
        }
        let after = t - self.rise_d;
        match self.kind {
            TransientKind::Injected => peak,
            TransientKind::Supernova => {
                // Redder bands decline more slowly.
                let rate = self.decline * (1.3 - 0.1 * band.index() as f64);
                peak * 10f64.powf(-0.4 * rate * after)
            }
            TransientKind::Fast => peak * (-after / self.decline).exp(),
        }
    }
}

/// A solar-system object moving on a great circle at constant rate during the night.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolarSystemObject {
    /// Unique id.
    pub id: u64,
    /// RA at `t_ref_mjd`, degrees.
    pub ra_deg: f64,
    /// Dec at `t_ref_mjd`, degrees.
    pub dec_deg: f64,
    /// Reference time, MJD TAI.
    pub t_ref_mjd: f64,
    /// Rate towards east (dRA·cos Dec), degrees per day.
    pub rate_ra_deg_per_day: f64,
    /// Rate towards north, degrees per day.
    pub rate_dec_deg_per_day: f64,
    /// AB magnitudes u..y.
    pub mags: [f64; 6],
}

impl SolarSystemObject {
    /// Position at `mjd`.
    pub fn position(&self, mjd: f64) -> UnitVector {
        let plane = TangentPlane::new(self.ra_deg.to_radians(), self.dec_deg.to_radians());
        let dt = mjd - self.t_ref_mjd;
        plane.deproject(
            (self.rate_ra_deg_per_day * dt).to_radians(),
            (self.rate_dec_deg_per_day * dt).to_radians(),
        )
    }
    /// Rate of motion, arcsec per second.
    pub fn rate_arcsec_per_s(&self) -> f64 {
        self.rate_ra_deg_per_day.hypot(self.rate_dec_deg_per_day) * 3600.0 / 86_400.0
    }
}

/// The static sources of one sky cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CellCatalog {
    /// Stars (some variable).
    pub stars: Vec<Star>,
    /// Galaxies.
    pub galaxies: Vec<Galaxy>,
    /// Transients.
    pub transients: Vec<Transient>,
}

fn power_law_mag<R: Rng>(r: &mut R, lo: f64, hi: f64, slope: f64) -> f64 {
    let span = 10f64.powf(slope * (hi - lo)) - 1.0;
    lo + (1.0 + r.random::<f64>() * span).log10() / slope
}

fn uniform_in_cell<R: Rng>(r: &mut R, cell: Cell) -> (f64, f64) {
    let ((r0, r1), (d0, d1)) = cell.bounds();
    let ra = r.random_range(r0..r1);
    let (s0, s1) = (d0.to_radians().sin(), d1.to_radians().sin());
    let dec = r.random_range(s0..s1).asin().to_degrees();
    (ra, dec)
}

/// Star colours from g − r along a main-sequence-like locus: mags u..y given r.
fn star_mags(r_mag: f64, g_r: f64) -> [f64; 6] {
    let u_g = 0.9 + 1.1 * g_r;
    let r_i = -0.05 + 0.45 * g_r;
    let i_z = -0.02 + 0.25 * g_r;
    let z_y = 0.0 + 0.12 * g_r;
    let g = r_mag + g_r;
    let i = r_mag - r_i;
    let z = i - i_z;
    [g + u_g, g, r_mag, i, z, z - z_y]
}

fn galaxy_mags(r_mag: f64, g_r: f64) -> [f64; 6] {
    let g = r_mag + g_r;
    let i = r_mag - 0.4 * g_r;
    let z = i - 0.25 * g_r;
    [g + 0.6 + 1.2 * g_r, g, r_mag, i, z, z - 0.1 * g_r]
}

/// Cutoffs of the catalogues (r-band AB magnitudes).
pub const STAR_MAG_RANGE: (f64, f64) = (14.0, 25.5);
/// Magnitude range of injected point sources (AB, every band): from bright to below a
/// typical visit's 5σ depth.
pub const INJECTED_MAG_RANGE: (f64, f64) = (20.5, 25.0);
/// Galaxy magnitude range.
pub const GALAXY_MAG_RANGE: (f64, f64) = (17.0, 25.0);

/// Generates the static sources of `cell` for `seed`, `profile` and the night centred
/// on `night_mjd` (transients explode around it).
///
/// `injected_density_deg2` adds that many constant point sources per deg² (r between
/// [`INJECTED_MAG_RANGE`], flat spectrum, no host), drawn from their own random stream
/// so the natural sky is the same with or without them.
pub fn generate_cell(
    seed: u64,
    profile: Profile,
    cell: Cell,
    night_mjd: f64,
    injected_density_deg2: f64,
) -> CellCatalog {
    let mut r = rng::stream(seed, "cell", cell.key(), 0, 0);
    let area = cell.area_deg2();
    let count = |r: &mut rand_chacha::ChaCha8Rng, mean: f64| -> usize {
        if mean <= 0.0 {
            0
        } else {
            Poisson::new(mean)
                .map(|p| p.sample(r) as usize)
                .unwrap_or(0)
        }
    };
    let base = cell.key() << 24;
    let n_stars = count(&mut r, profile.star_density_deg2() * area);
    let mut stars = Vec::with_capacity(n_stars);
    for k in 0..n_stars {
        let (ra, dec) = uniform_in_cell(&mut r, cell);
        let rmag = power_law_mag(
            &mut r,
            STAR_MAG_RANGE.0,
            STAR_MAG_RANGE.1,
            profile.star_count_slope(),
        );
        let g_r = r.random_range(0.15..1.5);
        // Fainter stars are on average more distant: smaller proper motions.
        let pm_scale = 15.0 * 10f64.powf(-0.1 * (rmag - 16.0));
        let variability = (r.random::<f64>() < 0.03).then(|| Variability {
            period_d: 10f64.powf(r.random_range(-1.3..1.3)),
            amplitude_mag: r.random_range(0.05..1.0),
            phase: r.random(),
            shape: if r.random_bool(0.5) {
                VariableShape::Sine
            } else {
                VariableShape::Sawtooth
            },
        });
        stars.push(Star {
            id: base | (1 << 20) | k as u64,
            ra_deg: ra,
            dec_deg: dec,
            pm_ra_masyr: pm_scale * crate::rng::unit(r.random()).mul_add(2.0, -1.0),
            pm_dec_masyr: pm_scale * crate::rng::unit(r.random()).mul_add(2.0, -1.0),
            mags: star_mags(rmag, g_r),
            variability,
        });
    }
    let n_gal = count(&mut r, profile.galaxy_density_deg2() * area);
    let mut galaxies = Vec::with_capacity(n_gal);
    for k in 0..n_gal {
        let (ra, dec) = uniform_in_cell(&mut r, cell);
        let rmag = power_law_mag(&mut r, GALAXY_MAG_RANGE.0, GALAXY_MAG_RANGE.1, 0.33);
        let disk_re = (1.0 * 10f64.powf(-0.12 * (rmag - 20.0)) * r.random_range(0.6..1.6f64))
            .clamp(0.15, 8.0);
        let bt: f64 = r.random::<f64>().powi(2);
        galaxies.push(Galaxy {
            id: base | (2 << 20) | k as u64,
            ra_deg: ra,
            dec_deg: dec,
            mags: galaxy_mags(rmag, r.random_range(0.3..1.2)),
            disk_re_arcsec: disk_re,
            bulge_re_arcsec: disk_re * r.random_range(0.2..0.5),
            bulge_fraction: bt,
            axis_ratio: r.random_range(0.25..1.0),
            pa_deg: r.random_range(0.0..180.0),
        });
    }
    let n_tr = count(&mut r, profile.transient_density_deg2() * area);
    let mut transients = Vec::with_capacity(n_tr);
    for k in 0..n_tr {
        let fast = r.random::<f64>() < 0.3;
        let (mut ra, mut dec) = uniform_in_cell(&mut r, cell);
        let mut host = None;
        if !galaxies.is_empty() && r.random::<f64>() < 0.5 {
            let g = &galaxies[r.random_range(0..galaxies.len())];
            // Offset within about one half-light radius of the host.
            let off = g.disk_re_arcsec * r.random::<f64>().sqrt() / 3600.0;
            let ang: f64 = r.random_range(0.0..std::f64::consts::TAU);
            let plane = TangentPlane::new(g.ra_deg.to_radians(), g.dec_deg.to_radians());
            let p = plane.deproject(
                (off * ang.cos()).to_radians(),
                (off * ang.sin()).to_radians(),
            );
            (ra, dec) = p.to_radec_deg();
            host = Some(g.id);
        }
        let (kind, t0, rise, decline, peak) = if fast {
            (
                TransientKind::Fast,
                night_mjd + r.random_range(-0.25..0.3),
                r.random_range(0.005..0.05),
                r.random_range(0.05..0.5),
                r.random_range(18.5..23.0),
            )
        } else {
            (
                TransientKind::Supernova,
                night_mjd - r.random_range(-1.0..80.0),
                r.random_range(14.0..22.0),
                r.random_range(0.02..0.08),
                r.random_range(19.0..23.5),
            )
        };
        let g_r = r.random_range(-0.3..0.6);
        transients.push(Transient {
            id: base | (3 << 20) | k as u64,
            kind,
            ra_deg: ra,
            dec_deg: dec,
            host,
            t0_mjd: t0,
            rise_d: rise,
            decline,
            peak_mags: galaxy_mags(peak, g_r),
        });
    }
    let mut ri = rng::stream(seed, "inject", cell.key(), 0, 0);
    let n_inj = count(&mut ri, injected_density_deg2 * area);
    for k in 0..n_inj {
        let (ra, dec) = uniform_in_cell(&mut ri, cell);
        let mag = ri.random_range(INJECTED_MAG_RANGE.0..INJECTED_MAG_RANGE.1);
        transients.push(Transient {
            id: base | (4 << 20) | k as u64,
            kind: TransientKind::Injected,
            ra_deg: ra,
            dec_deg: dec,
            host: None,
            t0_mjd: night_mjd - 1.0,
            rise_d: 1e-9,
            decline: 0.0,
            peak_mags: [mag; 6],
        });
    }
    CellCatalog {
        stars,
        galaxies,
        transients,
    }
}

/// Generates the solar-system objects crossing the cone (`radius_deg` around
/// `centre`) during a night whose middle is `t_ref_mjd`: 80% main-belt asteroids
/// (0.1–0.4 °/day), 20% near-Earth objects (1–15 °/day, trailed in a 30 s exposure),
/// moving mostly westward.
pub fn generate_ssos(
    seed: u64,
    profile: Profile,
    centre: UnitVector,
    radius_deg: f64,
    t_ref_mjd: f64,
) -> Vec<SolarSystemObject> {
    let mut r = rng::stream(seed, "sso", 0, 0, 0);
    let area = std::f64::consts::TAU
        * (1.0 - radius_deg.to_radians().cos())
        * (180.0 / std::f64::consts::PI).powi(2);
    let n = Poisson::new(profile.sso_density_deg2() * area)
        .map(|p| p.sample(&mut r) as usize)
        .unwrap_or(0);
    let (ra0, dec0) = centre.to_radec();
    let plane = TangentPlane::new(ra0, dec0);
    (0..n)
        .map(|k| {
            let rr = radius_deg.to_radians() * r.random::<f64>().sqrt();
            let th: f64 = r.random_range(0.0..std::f64::consts::TAU);
            let (ra, dec) = plane.deproject(rr * th.cos(), rr * th.sin()).to_radec_deg();
            let neo = r.random::<f64>() < 0.2;
            let rate = if neo {
                10f64.powf(r.random_range(0.0..1.18))
            } else {
                r.random_range(0.1..0.4)
            };
            // Westward (position angle 270°) ± 35°.
            let pa = (270.0 + r.random_range(-35.0..35.0f64)).to_radians();
            let v = r.random_range(19.0..23.5);
            SolarSystemObject {
                id: (1 << 62) | k as u64,
                ra_deg: ra,
                dec_deg: dec,
                t_ref_mjd,
                rate_ra_deg_per_day: rate * pa.sin(),
                rate_dec_deg_per_day: rate * pa.cos(),
                mags: galaxy_mags(v, 0.55),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_tile_the_sphere_and_cover_cones() {
        let total: f64 = (0..bands_count())
            .map(|d| {
                f64::from(ra_cells(d))
                    * Cell {
                        dec_index: d,
                        ra_index: 0,
                    }
                    .area_deg2()
            })
            .sum();
        assert!((total - 41_252.96).abs() < 0.1, "{total}");
        // Every point of a cone is in a covering cell.
        let centre = UnitVector::from_radec_deg(359.98, -20.0);
        let cells = Cell::covering(centre, 0.2);
        let plane = TangentPlane::new(centre.to_radec().0, centre.to_radec().1);
        let mut rr = rng::stream(3, "t", 0, 0, 0);
        for _ in 0..2000 {
            let a: f64 = rr.random_range(0.0..std::f64::consts::TAU);
            let d = 0.2f64.to_radians() * rr.random::<f64>().sqrt();
            let (ra, dec) = plane.deproject(d * a.cos(), d * a.sin()).to_radec_deg();
            assert!(
                cells.iter().any(|c| {
                    let ((r0, r1), (d0, d1)) = c.bounds();
                    ra >= r0 && ra < r1 && dec >= d0 && dec < d1
                }),
                "{ra} {dec} not covered"
            );
        }
    }

    #[test]
    fn cell_catalogues_are_deterministic_and_follow_the_profile() {
        let cell = Cell {
            dec_index: 1400,
            ra_index: 100,
        };
        let a = generate_cell(9, Profile::Typical, cell, 61_000.0, 0.0);
        assert_eq!(a, generate_cell(9, Profile::Typical, cell, 61_000.0, 0.0));
        assert_ne!(
            a.stars,
            generate_cell(10, Profile::Typical, cell, 61_000.0, 0.0).stars
        );
        let crowded = generate_cell(9, Profile::Crowded, cell, 61_000.0, 0.0);
        assert!(crowded.stars.len() > 10 * a.stars.len());
        let expected = Profile::Typical.star_density_deg2() * cell.area_deg2();
        assert!(
            (a.stars.len() as f64 - expected).abs() < 5.0 * expected.sqrt(),
            "{} vs {expected}",
            a.stars.len()
        );
        // Counts rise towards faint magnitudes.
        let faint = a.stars.iter().filter(|s| s.mags[2] > 24.0).count();
        let bright = a.stars.iter().filter(|s| s.mags[2] < 18.0).count();
        assert!(faint > 3 * bright);
        let ((r0, r1), (d0, d1)) = cell.bounds();
        for s in &a.stars {
            assert!(s.ra_deg >= r0 && s.ra_deg < r1 && s.dec_deg >= d0 && s.dec_deg < d1);
        }
    }

    #[test]
    fn light_curves_behave() {
        let sn = Transient {
            id: 1,
            kind: TransientKind::Supernova,
            ra_deg: 0.0,
            dec_deg: 0.0,
            host: None,
            t0_mjd: 100.0,
            rise_d: 20.0,
            decline: 0.05,
            peak_mags: [20.0; 6],
        };
        assert_eq!(sn.flux_njy(Band::R, 99.0), 0.0);
        let peak = sn.flux_njy(Band::R, 120.0);
        assert!((peak - mag_to_njy(20.0)).abs() < 1e-6 * peak);
        assert!(sn.flux_njy(Band::R, 110.0) < peak && sn.flux_njy(Band::R, 150.0) < peak);
        let v = Variability {
            period_d: 0.5,
            amplitude_mag: 0.8,
            phase: 0.0,
            shape: VariableShape::Sawtooth,
        };
        let dms: Vec<f64> = (0..1000).map(|i| v.delta_mag(i as f64 * 0.0011)).collect();
        let (lo, hi) = dms
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!((hi - lo - 0.8).abs() < 0.02);
    }

    #[test]
    fn proper_motion_moves_stars() {
        let s = Star {
            id: 1,
            ra_deg: 10.0,
            dec_deg: 60.0,
            pm_ra_masyr: 100.0,
            pm_dec_masyr: 0.0,
            mags: [20.0; 6],
            variability: None,
        };
        let p = s.position(CATALOG_EPOCH_MJD + 10.0 * DAYS_PER_YEAR);
        let d = p
            .separation(UnitVector::from_radec_deg(10.0, 60.0))
            .to_degrees()
            * 3.6e6;
        assert!((d - 1000.0).abs() < 0.01, "{d} mas");
        let (ra, _) = p.to_radec_deg();
        assert!(ra > 10.0);
    }
}
