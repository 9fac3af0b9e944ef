//! A simulated night: the schedule, the camera, the sky, and rendering of any
//! detector of any visit on demand; writers for the whole night's products.

use std::path::{Path, PathBuf};

use apflow_core::events::{DetectorFootprint, NextVisit, Pointing};
use apflow_core::geom::{TangentPlane, UnitVector};
use apflow_core::ids::{DetectorId, ExposureId, VisitId};
use apflow_core::time::MjdTai;
use rand::Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use rayon::prelude::*;
use serde::Serialize;

use crate::camera::{DetectorModel, RADIAL_DISTORTION_K};
use crate::fitsout::{card, write_f32_image};
use crate::psf::{Gauss, PsfField};
use crate::render::{self, Canvas, Epoch, RawExposure, RawHeader};
use crate::schedule::{self, Band, SatelliteTrail, SnapTimes, VisitPlan, electrons_per_s};
use crate::sky::{self, Cell, CellCatalog, SolarSystemObject};
use crate::truth::{TruthKind, TruthRow, write_truth_csv};
use crate::wcs::{CardValue, TanSipWcs};
use crate::{NightSpec, SimError, rng};

/// Border added around each template tile, pixels.
pub const TEMPLATE_OVERLAP_PX: u32 = 100;
/// Exposure time of each template epoch, seconds.
pub const TEMPLATE_EPOCH_EXPTIME_S: f64 = 30.0;
/// Brightest and faintest r magnitudes in the reference catalogue.
pub const REFCAT_MAG_RANGE: (f64, f64) = (14.0, 22.0);

/// A simulated night.
#[derive(Debug)]
pub struct Night {
    spec: NightSpec,
    visits: Vec<VisitPlan>,
    detectors: Vec<DetectorModel>,
    ssos: Vec<SolarSystemObject>,
    field_centre: UnitVector,
    field_radius_deg: f64,
    night_mjd: f64,
    template_epochs: Vec<f64>,
    template_fwhm_arcsec: f64,
}

/// A template tile: a square TAN image on a fixed sky grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TemplateTile {
    /// `"<dec_index>-<ra_index>"`.
    pub id: String,
    /// Band.
    pub band: Band,
    /// File path relative to the templates directory.
    pub file: String,
    /// Centre (RA, Dec), degrees.
    pub centre_deg: [f64; 2],
    /// Image side (tile plus overlap on both sides), pixels.
    pub size_px: u32,
    /// Corners of the image on the sky (RA, Dec), degrees.
    pub corners_deg: Vec<[f64; 2]>,
    /// FWHM of the coadd's PSF, arcsec.
    pub psf_fwhm_arcsec: f64,
    /// 5σ point-source depth, AB mag.
    pub depth_5sigma_mag: f64,
}

/// A reference-catalogue entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefcatRow {
    /// Star id (as in the truth).
    pub id: u64,
    /// Measured RA at the catalogue epoch, degrees.
    pub ra_deg: f64,
    /// Measured Dec at the catalogue epoch, degrees.
    pub dec_deg: f64,
    /// Position error, mas (each coordinate).
    pub pos_err_mas: f64,
    /// Proper motion μα cos δ, mas/yr.
    pub pm_ra_masyr: f64,
    /// Proper motion μδ, mas/yr.
    pub pm_dec_masyr: f64,
    /// Catalogue epoch, MJD TAI.
    pub epoch_mjd: f64,
    /// Measured fluxes u..y, nJy.
    pub flux_njy: [f64; 6],
    /// Flux errors u..y, nJy.
    pub flux_err_njy: [f64; 6],
}

/// Which step of [`simulate_night`] is reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProgressStage {
    /// Master calibrations.
    Calibrations,
    /// Template tiles.
    Templates,
    /// Reference catalogue.
    Refcat,
    /// Raw exposures and truth, one step per detector of a visit.
    Exposures,
}

/// A progress report of [`simulate_night`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Current step.
    pub stage: ProgressStage,
    /// Units done in this step.
    pub done: u64,
    /// Units in this step.
    pub total: u64,
}

/// What [`simulate_night`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NightSummary {
    /// Raw FITS files.
    pub raw_files: usize,
    /// Truth rows over all visits and detectors.
    pub truth_rows: usize,
    /// Template tiles (all bands).
    pub template_tiles: usize,
    /// Reference catalogue rows.
    pub refcat_rows: usize,
}

fn night_start(day_obs: u32) -> Result<MjdTai, SimError> {
    let (y, m, d) = (day_obs / 10_000, (day_obs / 100) % 100, day_obs % 100);
    let date = chrono::NaiveDate::from_ymd_opt(y as i32, m, d)
        .ok_or_else(|| SimError::InvalidSpec(format!("day_obs {day_obs} is not a date")))?;
    let start = (date + chrono::Days::new(1))
        .and_hms_opt(0, 30, 0)
        .ok_or_else(|| SimError::InvalidSpec("bad start time".into()))?
        .and_utc();
    MjdTai::from_utc(start).map_err(|e| SimError::InvalidSpec(e.to_string()))
}

impl Night {
    /// Plans the night: visits, camera and moving objects. Static sky sources are
    /// generated on demand per sky cell, so this is cheap for any night.
    pub fn new(spec: &NightSpec) -> Result<Self, SimError> {
        spec.validate()?;
        let seed = spec.seed;
        let detectors: Vec<DetectorModel> = (0..spec.detectors)
            .map(|id| DetectorModel::new(seed, id, spec.detectors, spec.detector_size))
            .collect();
        let start = night_start(spec.day_obs)?;
        let field_plane = TangentPlane::new(spec.ra_deg.to_radians(), spec.dec_deg.to_radians());
        let field_centre = field_plane.center();
        // Largest focal-plane radius of any detector corner, pixels.
        let fp_radius_px = detectors
            .iter()
            .flat_map(|d| {
                let s = f64::from(d.size);
                [(0.0, 0.0), (s, 0.0), (0.0, s), (s, s)].map(|(x, y)| {
                    let (fx, fy) = d.focal_plane(x, y);
                    fx.hypot(fy)
                })
            })
            .fold(0.0, f64::max);
        let field_radius_deg =
            fp_radius_px * spec.pixel_scale_arcsec / 3600.0 + spec.dither_deg + 30.0 / 3600.0;

        let snap_t = spec.snap_exposure_s();
        let mut visits = Vec::with_capacity(spec.visits as usize);
        for i in 0..spec.visits {
            let mut r = rng::stream(seed, "visit", u64::from(i), 0, 0);
            let visit = VisitId::new(spec.day_obs, i + 1)?;
            let band = spec.bands[((i / spec.visits_per_band) as usize) % spec.bands.len()];
            let dr = spec.dither_deg.to_radians() * r.random::<f64>().sqrt();
            let da: f64 = r.random_range(0.0..std::f64::consts::TAU);
            let (ra, dec) = field_plane
                .deproject(dr * da.cos(), dr * da.sin())
                .to_radec_deg();
            let rotation_deg = r.random_range(0.0..360.0f64);
            let t0 = start.plus_seconds(f64::from(i) * spec.visit_interval_s);
            let mut snaps = Vec::new();
            let mut t = t0;
            for s in 0..spec.snaps {
                let close = t.plus_seconds(snap_t);
                let readout_end = close.plus_seconds(schedule::READOUT_S);
                snaps.push(SnapTimes {
                    snap: s,
                    exposure: ExposureId::new(visit, s),
                    shutter_open: t,
                    shutter_close: close,
                    readout_end,
                    exptime_s: snap_t,
                });
                t = readout_end;
            }
            let elapsed_h =
                (f64::from(i) * spec.visit_interval_s + 0.5 * spec.exposure_time_s) / 3600.0;
            // The field is 1 h east of the meridian when the night starts.
            let airmass = schedule::airmass(dec, -1.0 + elapsed_h * 1.002_737_9);
            let z: f64 = StandardNormal.sample(&mut r);
            let seeing = (schedule::MEDIAN_SEEING_ARCSEC
                * (0.2 * z).exp()
                * airmass.powf(0.6)
                * (band.wavelength_nm() / 622.0).powf(-0.2))
            .clamp(0.4, 2.5);
            let sky_z: f64 = StandardNormal.sample(&mut r);
            let sky_mag = band.dark_sky_mag() - 0.3 * (airmass - 1.0) + 0.15 * sky_z;
            let clouds = (0.03 * r.sample::<f64, _>(StandardNormal)).abs();
            let zp_mag = band.zp1_mag() - band.extinction() * (airmass - 1.0) - clouds;
            let sky_njy_px = sky::mag_to_njy(sky_mag) * spec.pixel_scale_arcsec.powi(2);
            let sky_e_per_s = electrons_per_s(sky_njy_px, band.zp1_mag());
            let n01 = Normal::new(0.0, 0.03).expect("valid normal");
            let psf = PsfField {
                fwhm_arcsec: seeing,
                size: [
                    n01.sample(&mut r),
                    n01.sample(&mut r),
                    0.02 + n01.sample(&mut r).abs(),
                ],
                e1: [n01.sample(&mut r), n01.sample(&mut r), n01.sample(&mut r)],
                e2: [n01.sample(&mut r), n01.sample(&mut r), n01.sample(&mut r)],
            };
            let off = r.random_range(0.1..0.3);
            let off_a: f64 = r.random_range(0.0..std::f64::consts::TAU);
            let satellite = (r.random::<f64>() < 0.1).then(|| {
                let pr = fp_radius_px * r.random::<f64>().sqrt();
                let pa: f64 = r.random_range(0.0..std::f64::consts::TAU);
                SatelliteTrail {
                    point_px: [pr * pa.cos(), pr * pa.sin()],
                    angle_deg: r.random_range(0.0..180.0),
                    sigma_px: r.random_range(1.0..3.0),
                    electrons_per_px: 10f64.powf(r.random_range(2.5..4.3)),
                }
            });
            visits.push(VisitPlan {
                index: i,
                visit,
                group: format!("{}-{:05}", spec.day_obs, i + 1),
                pointing: Pointing {
                    ra_deg: ra,
                    dec_deg: dec,
                    rotation_deg,
                },
                band,
                seeing_arcsec: seeing,
                airmass,
                sky_mag_arcsec2: sky_mag,
                zp_mag,
                sky_e_per_s,
                sky_gradient: [n01.sample(&mut r) * 0.5, n01.sample(&mut r) * 0.5],
                psf,
                wcs_offset_arcsec: [off * off_a.cos(), off * off_a.sin()],
                satellite,
                snaps,
            });
        }
        let night_mjd = start.0;
        let t_mid = start
            .plus_seconds(0.5 * f64::from(spec.visits) * spec.visit_interval_s)
            .0;
        let ssos = sky::generate_ssos(seed, spec.profile, field_centre, field_radius_deg, t_mid);
        let mut tr = rng::stream(seed, "template-epochs", 0, 0, 0);
        let template_epochs: Vec<f64> = (0..spec.template_epochs)
            .map(|k| night_mjd - 365.0 + 3.0 * f64::from(k) + tr.random_range(0.0..0.3))
            .collect();
        let mean_sq = (0..spec.template_epochs)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut tr);
                (schedule::MEDIAN_SEEING_ARCSEC * (0.2 * z).exp() * 1.1).powi(2)
            })
            .sum::<f64>()
            / f64::from(spec.template_epochs);
        Ok(Self {
            spec: spec.clone(),
            visits,
            detectors,
            ssos,
            field_centre,
            field_radius_deg,
            night_mjd,
            template_epochs,
            template_fwhm_arcsec: mean_sq.sqrt(),
        })
    }

    /// The specification.
    pub fn spec(&self) -> &NightSpec {
        &self.spec
    }
    /// The planned visits, in order.
    pub fn visits(&self) -> &[VisitPlan] {
        &self.visits
    }
    /// The camera's detectors.
    pub fn detectors(&self) -> &[DetectorModel] {
        &self.detectors
    }
    /// The solar-system objects of the night.
    pub fn solar_system_objects(&self) -> &[SolarSystemObject] {
        &self.ssos
    }
    /// Times (MJD TAI) of the earlier epochs coadded into the templates.
    pub fn template_epochs(&self) -> &[f64] {
        &self.template_epochs
    }
    /// FWHM of the templates' PSF, arcsec.
    pub fn template_fwhm_arcsec(&self) -> f64 {
        self.template_fwhm_arcsec
    }

    fn visit(&self, i: usize) -> Result<&VisitPlan, SimError> {
        self.visits.get(i).ok_or(SimError::NoSuchVisit {
            index: i,
            visits: self.visits.len(),
        })
    }

    fn detector(&self, d: DetectorId) -> Result<&DetectorModel, SimError> {
        self.detectors
            .get(usize::from(d.0))
            .ok_or(SimError::NoSuchDetector {
                detector: d.0,
                detectors: self.spec.detectors,
            })
    }

    /// The WCS written in the raw header of detector `d` in visit `i`: TAN at the
    /// boresight with the camera's radial distortion as SIP terms.
    pub fn header_wcs(&self, i: usize, d: DetectorId) -> Result<TanSipWcs, SimError> {
        let v = self.visit(i)?;
        let det = self.detector(d)?;
        Ok(TanSipWcs::tan(
            [v.pointing.ra_deg, v.pointing.dec_deg],
            [1.0 - det.origin_px[0], 1.0 - det.origin_px[1]],
            self.spec.pixel_scale_arcsec,
            v.pointing.rotation_deg,
        )
        .with_radial_distortion(RADIAL_DISTORTION_K))
    }

    /// The true sky-to-pixel mapping: the header WCS with its tangent point moved by
    /// the visit's [`VisitPlan::wcs_offset_arcsec`].
    pub fn true_wcs(&self, i: usize, d: DetectorId) -> Result<TanSipWcs, SimError> {
        let off = self.visit(i)?.wcs_offset_arcsec;
        Ok(self.header_wcs(i, d)?.shifted_arcsec(off[0], off[1]))
    }

    /// The `NextVisit` event the scheduler publishes before visit `i`, with every
    /// detector's predicted footprint (from the header WCS).
    pub fn next_visit(&self, i: usize) -> Result<NextVisit, SimError> {
        let v = self.visit(i)?;
        let mut footprint = Vec::with_capacity(self.detectors.len());
        for det in &self.detectors {
            let wcs = self.header_wcs(i, DetectorId(det.id))?;
            let size = f64::from(det.size);
            let polygon = wcs
                .footprint(size, size)
                .map_err(|e| SimError::InvalidSpec(format!("detector footprint: {e}")))?;
            footprint.push(DetectorFootprint {
                detector: DetectorId(det.id),
                polygon,
            });
        }
        Ok(NextVisit {
            visit: v.visit,
            group: v.group.clone(),
            pointing: v.pointing,
            band: v.band.as_str().to_string(),
            exposure_time_s: v.exposure_time_s(),
            n_snaps: self.spec.snaps,
            predicted_start: v.start(),
            footprint,
            scheduler_reason: Some("simulated survey".to_string()),
            target_name: Some("apflow-sim field".to_string()),
        })
    }

    /// Static sky catalogues of the cells within `radius_deg` of `centre`.
    fn catalogs(&self, centre: UnitVector, radius_deg: f64) -> Vec<CellCatalog> {
        Cell::covering(centre, radius_deg)
            .into_iter()
            .map(|c| {
                sky::generate_cell(
                    self.spec.seed,
                    self.spec.profile,
                    c,
                    self.night_mjd,
                    self.spec.injected_density_deg2,
                )
            })
            .collect()
    }

    fn detector_cone(&self, wcs: &TanSipWcs, size: u32) -> (UnitVector, f64) {
        let h = f64::from(size) / 2.0;
        let centre = wcs.pixel_to_unit(h, h);
        let radius =
            h * std::f64::consts::SQRT_2 * self.spec.pixel_scale_arcsec / 3600.0 + 40.0 / 3600.0;
        (centre, radius)
    }

    /// Renders snap `snap` of detector `d` in visit `i`: the raw exposure as the camera
    /// would write it. Needs nothing but the [`Night`]: any detector renders on its own.
    pub fn render_raw(&self, i: usize, d: DetectorId, snap: u8) -> Result<RawExposure, SimError> {
        let v = self.visit(i)?;
        let det = self.detector(d)?;
        let st = v.snaps.get(usize::from(snap)).ok_or(SimError::NoSuchSnap {
            snap,
            snaps: self.spec.snaps,
        })?;
        let header_wcs = self.header_wcs(i, d)?;
        let wcs = self.true_wcs(i, d)?;
        let n = det.size as usize;
        let scale = self.spec.pixel_scale_arcsec;
        let t = st.exptime_s;
        let e_per_njy = electrons_per_s(1.0, v.zp_mag) * t;
        let psf_field = &v.psf;
        let psf = |x: f64, y: f64| -> [Gauss; 3] {
            let (fx, fy) = det.focal_plane(x, y);
            psf_field.at(fx, fy, scale)
        };
        let canvas = Canvas {
            width: n,
            height: n,
            wcs: &wcs,
            plane: wcs.tangent_plane(),
            psf: &psf,
            units_per_njy: e_per_njy,
            floor: 0.02,
            margin_px: 60.0,
        };
        let mut img = vec![0f32; n * n];
        let (centre, radius) = self.detector_cone(&wcs, det.size);
        let cats = self.catalogs(centre, radius);
        let mid = st.mid().0;
        canvas.paint_static(&mut img, &cats, v.band, Epoch::Instant(mid), true);
        for o in &self.ssos {
            if o.position(mid).separation(centre).to_degrees() > radius + 0.5 {
                continue;
            }
            let flux = sky::mag_to_njy(o.mags[v.band.index()]);
            canvas.trail(
                &mut img,
                o.position(st.shutter_open.0),
                o.position(st.shutter_close.0),
                flux,
            );
        }
        if let Some(trail) = &v.satellite {
            let scaled = SatelliteTrail {
                electrons_per_px: trail.electrons_per_px * t / 30.0,
                ..trail.clone()
            };
            render::paint_satellite(&mut img, det, &scaled);
        }
        let flat = det.flat();
        let dark = det.dark();
        let key = (
            self.spec.seed,
            v.visit.0,
            u64::from(d.0) * 4 + u64::from(snap),
        );
        let sky_rate = v.sky_e_per_s * t;
        let grad = v.sky_gradient;
        let sky_e =
            move |fx: f64, fy: f64| sky_rate * (1.0 + grad[0] * fx / 1e4 + grad[1] * fy / 1e4);
        render::expose(
            &mut img,
            det,
            &flat,
            &dark,
            t + schedule::READOUT_S,
            &sky_e,
            key,
        );
        let mut cr_rng = rng::stream(key.0, "cosmic-rays", key.1, key.2, 0);
        render::add_cosmic_rays(&mut img, n, t + schedule::READOUT_S, &mut cr_rng);
        render::bleed(&mut img, n);
        let amps = render::read_out(&img, det, key);
        Ok(RawExposure {
            header: RawHeader {
                telescope: "APFLOW-SIM".to_string(),
                instrument: "SIMCAM".to_string(),
                visit: v.visit.0,
                exposure: st.exposure.0,
                snap,
                detector: d.0,
                band: v.band,
                day_obs: self.spec.day_obs,
                seq_num: v.visit.seq(),
                group: v.group.clone(),
                mjd_obs: st.shutter_open.0,
                mjd_end: st.shutter_close.0,
                mjd_readout_end: st.readout_end.0,
                exptime_s: t,
                ra_deg: v.pointing.ra_deg,
                dec_deg: v.pointing.dec_deg,
                rotpa_deg: v.pointing.rotation_deg,
                airmass: v.airmass,
                seeing_arcsec: v.seeing_arcsec,
                detector_size: det.size,
                wcs: header_wcs,
            },
            amps,
        })
    }

    /// The truth of detector `d` in visit `i`: every transient active at mid-visit,
    /// every variable star and every solar-system object whose true position falls on
    /// the detector, sorted by kind and id.
    pub fn truth(&self, i: usize, d: DetectorId) -> Result<Vec<TruthRow>, SimError> {
        let v = self.visit(i)?;
        let det = self.detector(d)?;
        let wcs = self.true_wcs(i, d)?;
        let plane = wcs.tangent_plane();
        let size = f64::from(det.size);
        let mid = v.mid().0;
        let band = v.band;
        let on_chip = |p: UnitVector| -> Option<(f64, f64)> {
            let (x, y) = wcs.unit_to_pixel(&plane, p)?;
            (x >= -0.5 && y >= -0.5 && x < size - 0.5 && y < size - 0.5).then_some((x, y))
        };
        let tmpl = Epoch::Mean(&self.template_epochs);
        let mut rows = Vec::new();
        let mut push = |id: u64,
                        kind,
                        p: UnitVector,
                        xy: (f64, f64),
                        flux: f64,
                        tflux: f64,
                        host,
                        trail: (f64, f64)| {
            let (ra, dec) = p.to_radec_deg();
            rows.push(TruthRow {
                visit: v.visit.0,
                detector: d.0,
                id,
                kind,
                ra_deg: ra,
                dec_deg: dec,
                x: xy.0,
                y: xy.1,
                flux_njy: flux,
                template_flux_njy: tflux,
                diff_flux_njy: flux - tflux,
                mag: sky::njy_to_mag(flux),
                host_id: host,
                trail_length_px: trail.0,
                trail_angle_deg: trail.1,
            });
        };
        let (centre, radius) = self.detector_cone(&wcs, det.size);
        for cat in self.catalogs(centre, radius) {
            for s in cat.stars.iter().filter(|s| s.variability.is_some()) {
                let p = s.position(mid);
                if let Some(xy) = on_chip(p) {
                    let f = s.flux_njy(band, mid);
                    let tf = tmpl.flux(|t| s.flux_njy(band, t));
                    push(
                        s.id,
                        TruthKind::VariableStar,
                        p,
                        xy,
                        f,
                        tf,
                        None,
                        (0.0, 0.0),
                    );
                }
            }
            for t in &cat.transients {
                let f = t.flux_njy(band, mid);
                if f <= 0.0 {
                    continue;
                }
                let p = UnitVector::from_radec_deg(t.ra_deg, t.dec_deg);
                if let Some(xy) = on_chip(p) {
                    let tf = tmpl.flux(|m| t.flux_njy(band, m));
                    let kind = match t.kind {
                        sky::TransientKind::Supernova => TruthKind::Supernova,
                        sky::TransientKind::Fast => TruthKind::FastTransient,
                        sky::TransientKind::Injected => TruthKind::Injected,
                    };
                    push(t.id, kind, p, xy, f, tf, t.host, (0.0, 0.0));
                }
            }
        }
        for o in &self.ssos {
            let p = o.position(mid);
            if let Some(xy) = on_chip(p) {
                let a = wcs.unit_to_pixel(&plane, o.position(v.start().0));
                let b = wcs.unit_to_pixel(&plane, o.position(v.shutter_close().0));
                let trail = match (a, b) {
                    (Some(a), Some(b)) => (
                        (b.0 - a.0).hypot(b.1 - a.1),
                        (b.1 - a.1).atan2(b.0 - a.0).to_degrees(),
                    ),
                    _ => (0.0, 0.0),
                };
                let f = sky::mag_to_njy(o.mags[band.index()]);
                push(o.id, TruthKind::SolarSystem, p, xy, f, 0.0, None, trail);
            }
        }
        rows.sort_by_key(|r| (r.kind, r.id));
        Ok(rows)
    }

    /// Template tiles of `band` overlapping the night's field.
    pub fn template_tiles(&self, band: Band) -> Vec<TemplateTile> {
        let scale = self.spec.pixel_scale_arcsec;
        let tile_deg = f64::from(self.spec.template_tile_size) * scale / 3600.0;
        let size_px = self.spec.template_tile_size + 2 * TEMPLATE_OVERLAP_PX;
        let n_bands = (180.0 / tile_deg).floor() as i64;
        let band_h = 180.0 / n_bands as f64;
        let (_, dec0) = self.field_centre.to_radec_deg();
        let reach = self.field_radius_deg + tile_deg;
        let lo = (((dec0 - reach) + 90.0) / band_h).floor().max(0.0) as i64;
        let hi = ((((dec0 + reach) + 90.0) / band_h).floor() as i64).min(n_bands - 1);
        let mut tiles = Vec::new();
        let depth = self.template_depth_mag(band);
        for di in lo..=hi {
            let dec_c = -90.0 + (di as f64 + 0.5) * band_h;
            let n_ra = ((360.0 * dec_c.to_radians().cos() / band_h).floor() as i64).max(1);
            let w = 360.0 / n_ra as f64;
            for ri in 0..n_ra {
                let ra_c = (ri as f64 + 0.5) * w;
                let c = UnitVector::from_radec_deg(ra_c, dec_c);
                if c.separation(self.field_centre).to_degrees() > self.field_radius_deg + tile_deg {
                    continue;
                }
                let wcs = self.tile_wcs(ra_c, dec_c);
                let s = f64::from(size_px) - 0.5;
                let corners = [(-0.5, -0.5), (s, -0.5), (s, s), (-0.5, s)]
                    .map(|(x, y)| {
                        let (ra, dec) = wcs.pixel_to_sky(x, y);
                        [ra, dec]
                    })
                    .to_vec();
                let id = format!("{di}-{ri}");
                tiles.push(TemplateTile {
                    file: format!("{}/tile-{id}.fits", band.as_str()),
                    id,
                    band,
                    centre_deg: [ra_c, dec_c],
                    size_px,
                    corners_deg: corners,
                    psf_fwhm_arcsec: self.template_fwhm_arcsec,
                    depth_5sigma_mag: depth,
                });
            }
        }
        tiles
    }

    fn tile_wcs(&self, ra: f64, dec: f64) -> TanSipWcs {
        let size_px = self.spec.template_tile_size + 2 * TEMPLATE_OVERLAP_PX;
        let c = 0.5 * f64::from(size_px) + 0.5;
        TanSipWcs::tan([ra, dec], [c, c], self.spec.pixel_scale_arcsec, 0.0)
    }

    /// Per-epoch e⁻ per nJy, and the coadd's per-pixel sky noise in nJy, for `band`.
    fn template_noise(&self, band: Band) -> (f64, f64) {
        let scale = self.spec.pixel_scale_arcsec;
        let c = electrons_per_s(1.0, band.zp1_mag() - 0.1 * band.extinction())
            * TEMPLATE_EPOCH_EXPTIME_S;
        let sky_e = electrons_per_s(
            sky::mag_to_njy(band.dark_sky_mag()) * scale * scale,
            band.zp1_mag(),
        ) * TEMPLATE_EPOCH_EXPTIME_S;
        let sigma_epoch_njy = (sky_e + 36.0).sqrt() / c;
        (
            c,
            sigma_epoch_njy / f64::from(self.spec.template_epochs).sqrt(),
        )
    }

    /// 5σ point-source depth of the template in `band`, AB mag.
    pub fn template_depth_mag(&self, band: Band) -> f64 {
        let (_, sigma) = self.template_noise(band);
        let fwhm_px = self.template_fwhm_arcsec / self.spec.pixel_scale_arcsec;
        // Noise-equivalent area of a Gaussian PSF: 4π σ² = 2.266 FWHM².
        let nea = 2.266 * fwhm_px * fwhm_px;
        sky::njy_to_mag(5.0 * sigma * nea.sqrt())
    }

    /// Renders a template tile: image (nJy per pixel, sky-subtracted), variance
    /// (nJy²) and its PSF kernel, from the mean flux of the sky over the template epochs.
    pub fn render_template(&self, tile: &TemplateTile) -> (Vec<f32>, Vec<f32>, Vec<f32>, usize) {
        let n = tile.size_px as usize;
        let wcs = self.tile_wcs(tile.centre_deg[0], tile.centre_deg[1]);
        let field = PsfField::constant(self.template_fwhm_arcsec);
        let scale = self.spec.pixel_scale_arcsec;
        let psf = move |_x: f64, _y: f64| field.at(0.0, 0.0, scale);
        let (c, sigma_sky) = self.template_noise(tile.band);
        let canvas = Canvas {
            width: n,
            height: n,
            wcs: &wcs,
            plane: wcs.tangent_plane(),
            psf: &psf,
            units_per_njy: 1.0,
            floor: 0.01 * sigma_sky,
            margin_px: 60.0,
        };
        let mut img = vec![0f32; n * n];
        let centre = wcs.pixel_to_unit(0.5 * n as f64, 0.5 * n as f64);
        let radius = 0.5 * n as f64 * std::f64::consts::SQRT_2 * scale / 3600.0 + 40.0 / 3600.0;
        let cats = self.catalogs(centre, radius);
        canvas.paint_static(
            &mut img,
            &cats,
            tile.band,
            Epoch::Mean(&self.template_epochs),
            false,
        );
        let epochs = f64::from(self.spec.template_epochs);
        let mut r = rng::stream(
            self.spec.seed,
            "template-noise",
            tile.band.index() as u64,
            rng::key(0, &tile.id, 0, 0, 0),
            0,
        );
        let mut var = vec![0f32; n * n];
        for (p, v) in img.iter_mut().zip(var.iter_mut()) {
            // Source photon noise adds to the sky's: σ² = σ_sky² + f / (c · N) in nJy².
            let s2 = sigma_sky * sigma_sky + f64::from(p.max(0.0)) / (c * epochs);
            let z: f64 = StandardNormal.sample(&mut r);
            *p += (s2.sqrt() * z) as f32;
            *v = s2 as f32;
        }
        // PSF kernel image, odd side covering ±4 FWHM, normalised to unit sum.
        let half = ((4.0 * self.template_fwhm_arcsec / scale).ceil() as usize).max(7);
        let k = 2 * half + 1;
        let mut kernel = vec![0f32; k * k];
        crate::psf::add_mixture(
            &mut kernel,
            k,
            k,
            half as f64,
            half as f64,
            1.0,
            &psf(0.0, 0.0),
            1e-9,
        );
        let sum: f32 = kernel.iter().sum();
        kernel.iter_mut().for_each(|v| *v /= sum);
        (img, var, kernel, k)
    }

    /// Writes every template tile of every band used in the night under `dir`
    /// (`<band>/tile-<id>.fits`) and an index `dir/tiles.json`; returns the tiles.
    pub fn write_templates(&self, dir: &Path) -> Result<Vec<TemplateTile>, SimError> {
        self.write_templates_with(dir, &|_, _| {})
    }

    fn write_templates_with(
        &self,
        dir: &Path,
        tick: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Vec<TemplateTile>, SimError> {
        let mut bands: Vec<Band> = self.visits.iter().map(|v| v.band).collect();
        bands.sort();
        bands.dedup();
        let tiles: Vec<TemplateTile> = bands.iter().flat_map(|&b| self.template_tiles(b)).collect();
        for b in &bands {
            let p = dir.join(b.as_str());
            std::fs::create_dir_all(&p).map_err(|e| SimError::io(&p, e))?;
        }
        let done = std::sync::atomic::AtomicU64::new(0);
        let total = tiles.len() as u64;
        tiles
            .par_iter()
            .try_for_each(|tile| -> Result<(), SimError> {
                let (img, var, kernel, k) = self.render_template(tile);
                let wcs = self.tile_wcs(tile.centre_deg[0], tile.centre_deg[1]);
                let mut cards = vec![
                    card("TILEID", CardValue::Str(tile.id.clone()), "template tile"),
                    card(
                        "BAND",
                        CardValue::Str(tile.band.as_str().into()),
                        "filter band",
                    ),
                    card("BUNIT", CardValue::Str("nJy".into()), "flux per pixel"),
                    card(
                        "NEPOCHS",
                        CardValue::Int(i64::from(self.spec.template_epochs)),
                        "epochs coadded",
                    ),
                    card(
                        "PSFFWHM",
                        CardValue::Float(tile.psf_fwhm_arcsec),
                        "[arcsec] coadd PSF FWHM",
                    ),
                    card(
                        "DEPTH5",
                        CardValue::Float(tile.depth_5sigma_mag),
                        "[mag] 5-sigma point-source depth",
                    ),
                    card(
                        "OVERLAP",
                        CardValue::Int(i64::from(TEMPLATE_OVERLAP_PX)),
                        "[pix] border shared with neighbours",
                    ),
                    card(
                        "MJD-OBS",
                        CardValue::Float(self.template_epochs[0]),
                        "[d] first epoch, MJD TAI",
                    ),
                    card("TIMESYS", CardValue::Str("TAI".into()), "time scale"),
                ];
                cards.extend(wcs.cards());
                let n = tile.size_px as usize;
                let path = dir.join(&tile.file);
                write_f32_image(
                    &path,
                    n,
                    n,
                    &img,
                    &cards,
                    &[
                        (
                            "VARIANCE",
                            n,
                            n,
                            &var,
                            vec![card("BUNIT", CardValue::Str("nJy2".into()), "variance")],
                        ),
                        (
                            "PSF",
                            k,
                            k,
                            &kernel,
                            vec![card(
                                "PSFFWHM",
                                CardValue::Float(tile.psf_fwhm_arcsec),
                                "[arcsec]",
                            )],
                        ),
                    ],
                )?;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                tick(d, total);
                Ok(())
            })?;
        let index = dir.join("tiles.json");
        let text = serde_json::to_string_pretty(&tiles).map_err(|e| SimError::Json {
            what: "tile index",
            source: e,
        })?;
        std::fs::write(&index, text).map_err(|e| SimError::io(&index, e))?;
        Ok(tiles)
    }

    /// Master bias (ADU, after overscan subtraction), dark (e⁻/s) and flat (relative
    /// response) of detector `d`, each assembled `size × size`, with the noise of a
    /// stack of 20 biases, 10 × 300 s darks and 10 flats of 50,000 e⁻.
    pub fn master_calibrations(&self, d: DetectorId) -> Result<[Vec<f32>; 3], SimError> {
        let det = self.detector(d)?;
        let n = det.size as usize;
        let mut r = rng::stream(self.spec.seed, "calibrations", u64::from(d.0), 0, 0);
        let mut bias = vec![0f32; n * n];
        for (a, layout) in det.amps.iter().enumerate() {
            let p = det.amp_params[a];
            let pattern = det.bias_pattern(a);
            let w = layout.width as usize;
            let os = &pattern[(crate::camera::PRESCAN as usize + w)..];
            let os_mean = os.iter().map(|&v| f64::from(v)).sum::<f64>() / os.len() as f64;
            let sigma = p.read_noise_e / p.gain / 20f64.sqrt();
            for j in 0..layout.height {
                for i in 0..layout.width {
                    let (x, y) = layout.detector_pixel(i, j);
                    let z: f64 = StandardNormal.sample(&mut r);
                    let v = f64::from(pattern[(crate::camera::PRESCAN + i) as usize]) - os_mean
                        + sigma * z;
                    bias[y as usize * n + x as usize] = v as f32;
                }
            }
        }
        let mut dark = det.dark();
        for (k, v) in dark.iter_mut().enumerate() {
            let rn = det.amp_params[det.amp_of((k % n) as u32, (k / n) as u32)].read_noise_e;
            let e = f64::from(*v) * 300.0;
            let z: f64 = StandardNormal.sample(&mut r);
            *v = ((e + (e + rn * rn).sqrt() * z / 10f64.sqrt()) / 300.0) as f32;
        }
        let mut flat = det.flat();
        for v in flat.iter_mut() {
            let e = f64::from(*v) * 50_000.0;
            let z: f64 = StandardNormal.sample(&mut r);
            *v = ((e + (e.max(1.0) / 10.0).sqrt() * z) / 50_000.0) as f32;
        }
        Ok([bias, dark, flat])
    }

    /// Writes `bias-detNNN.fits`, `dark-detNNN.fits` and `flat-detNNN.fits` for every
    /// detector, and `camera.json` (amplifier electronics, positions, defects), in `dir`.
    pub fn write_calibrations(&self, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
        self.write_calibrations_with(dir, &|_, _| {})
    }

    fn write_calibrations_with(
        &self,
        dir: &Path,
        tick: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Vec<PathBuf>, SimError> {
        std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
        let done = std::sync::atomic::AtomicU64::new(0);
        let total = self.detectors.len() as u64;
        let paths: Vec<Vec<PathBuf>> = self
            .detectors
            .par_iter()
            .map(|det| -> Result<Vec<PathBuf>, SimError> {
                let d = DetectorId(det.id);
                let [bias, dark, flat] = self.master_calibrations(d)?;
                let n = det.size as usize;
                let mut out = Vec::new();
                for (kind, data, unit, ncomb) in [
                    ("bias", &bias, "adu", 20),
                    ("dark", &dark, "electron/s", 10),
                    ("flat", &flat, "", 10),
                ] {
                    let path = dir.join(format!("{kind}-det{:03}.fits", det.id));
                    let cards = vec![
                        card(
                            "CALIBTYP",
                            CardValue::Str(kind.to_uppercase()),
                            "master calibration",
                        ),
                        card(
                            "DETECTOR",
                            CardValue::Int(i64::from(det.id)),
                            "detector number",
                        ),
                        card("BUNIT", CardValue::Str(unit.into()), "pixel unit"),
                        card("NCOMBINE", CardValue::Int(ncomb), "frames combined"),
                    ];
                    write_f32_image(&path, n, n, data, &cards, &[])?;
                    out.push(path);
                }
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                tick(k, total);
                Ok(out)
            })
            .collect::<Result<_, _>>()?;
        let cam = dir.join("camera.json");
        let text = serde_json::to_string_pretty(&self.detectors).map_err(|e| SimError::Json {
            what: "camera",
            source: e,
        })?;
        std::fs::write(&cam, text).map_err(|e| SimError::io(&cam, e))?;
        Ok(paths.into_iter().flatten().collect())
    }

    /// The reference catalogue: stars with REFCAT_MAG_RANGE in r over the whole field,
    /// positions at [`sky::CATALOG_EPOCH_MJD`] with proper motions, and measured fluxes,
    /// both with realistic (Gaia-like) errors, sorted by id.
    pub fn refcat(&self) -> Vec<RefcatRow> {
        let mut rows = Vec::new();
        for cat in self.catalogs(self.field_centre, self.field_radius_deg) {
            for s in &cat.stars {
                let r_mag = s.mags[2];
                if r_mag < REFCAT_MAG_RANGE.0 || r_mag > REFCAT_MAG_RANGE.1 {
                    continue;
                }
                let mut r = rng::stream(self.spec.seed, "refcat", s.id, 0, 0);
                let pos_err_mas = 0.05 * 10f64.powf(0.2 * (r_mag - 15.0)).max(1.0);
                let plane = TangentPlane::new(s.ra_deg.to_radians(), s.dec_deg.to_radians());
                let mas = std::f64::consts::PI / (180.0 * 3600.0 * 1000.0);
                let zx: f64 = StandardNormal.sample(&mut r);
                let zy: f64 = StandardNormal.sample(&mut r);
                let (ra, dec) = plane
                    .deproject(zx * pos_err_mas * mas, zy * pos_err_mas * mas)
                    .to_radec_deg();
                let mut flux = [0.0; 6];
                let mut err = [0.0; 6];
                for b in Band::ALL {
                    let f = sky::mag_to_njy(s.mags[b.index()]);
                    let e = f * (0.005 + 0.02 * 10f64.powf(0.4 * (s.mags[b.index()] - 22.0)));
                    let z: f64 = StandardNormal.sample(&mut r);
                    flux[b.index()] = f + e * z;
                    err[b.index()] = e;
                }
                rows.push(RefcatRow {
                    id: s.id,
                    ra_deg: ra,
                    dec_deg: dec,
                    pos_err_mas,
                    pm_ra_masyr: s.pm_ra_masyr,
                    pm_dec_masyr: s.pm_dec_masyr,
                    epoch_mjd: sky::CATALOG_EPOCH_MJD,
                    flux_njy: flux,
                    flux_err_njy: err,
                });
            }
        }
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// Writes the reference catalogue as CSV; returns the number of rows.
    pub fn write_refcat(&self, path: &Path) -> Result<usize, SimError> {
        let rows = self.refcat();
        let mut text =
            String::from("id,ra_deg,dec_deg,pos_err_mas,pm_ra_masyr,pm_dec_masyr,epoch_mjd");
        for b in Band::ALL {
            text.push_str(&format!(",{b}_flux_njy,{b}_flux_err_njy"));
        }
        text.push('\n');
        for r in &rows {
            text.push_str(&format!(
                "{},{:.10},{:.10},{:.4},{:.4},{:.4},{:.1}",
                r.id,
                r.ra_deg,
                r.dec_deg,
                r.pos_err_mas,
                r.pm_ra_masyr,
                r.pm_dec_masyr,
                r.epoch_mjd
            ));
            for b in 0..6 {
                text.push_str(&format!(",{:.4},{:.4}", r.flux_njy[b], r.flux_err_njy[b]));
            }
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| SimError::io(path, e))?;
        Ok(rows.len())
    }

    /// The night's schedule as a JSON document: spec, visit plans and NextVisit events.
    pub fn schedule_json(&self) -> Result<String, SimError> {
        #[derive(Serialize)]
        struct Doc<'a> {
            spec: &'a NightSpec,
            visits: &'a [VisitPlan],
            next_visit: Vec<NextVisit>,
            template_epochs_mjd: &'a [f64],
            template_psf_fwhm_arcsec: f64,
        }
        let next_visit = (0..self.visits.len())
            .map(|i| self.next_visit(i))
            .collect::<Result<_, _>>()?;
        serde_json::to_string_pretty(&Doc {
            spec: &self.spec,
            visits: &self.visits,
            next_visit,
            template_epochs_mjd: &self.template_epochs,
            template_psf_fwhm_arcsec: self.template_fwhm_arcsec,
        })
        .map_err(|e| SimError::Json {
            what: "night schedule",
            source: e,
        })
    }
}

/// Path of a raw file under `out`: `raw/<visit>/<visit>-<snap>-det<NNN>.fits`.
pub fn raw_path(out: &Path, visit: VisitId, snap: u8, detector: DetectorId) -> PathBuf {
    out.join("raw")
        .join(visit.to_string())
        .join(format!("{visit}-{snap}-det{:03}.fits", detector.0))
}

/// Path of a truth table under `out`: `truth/<visit>/det<NNN>.csv`.
pub fn truth_path(out: &Path, visit: VisitId, detector: DetectorId) -> PathBuf {
    out.join("truth")
        .join(visit.to_string())
        .join(format!("det{:03}.csv", detector.0))
}

impl Night {
    /// Writes what processing the night needs besides the raw exposures into `out`
    /// (layout in `docs/CAMERA.md`): `night.json`, `calib/`, `templates/`, `refcat.csv`.
    /// Returns the template tiles and the number of reference-catalogue rows.
    pub fn write_inputs(
        &self,
        out: &Path,
        progress: impl Fn(Progress) + Sync,
    ) -> Result<(Vec<TemplateTile>, usize), SimError> {
        std::fs::create_dir_all(out).map_err(|e| SimError::io(out, e))?;
        let nj = out.join("night.json");
        std::fs::write(&nj, self.schedule_json()?).map_err(|e| SimError::io(&nj, e))?;
        let progress = &progress;
        let report = |stage| move |done, total| progress(Progress { stage, done, total });
        self.write_calibrations_with(&out.join("calib"), &report(ProgressStage::Calibrations))?;
        let tiles =
            self.write_templates_with(&out.join("templates"), &report(ProgressStage::Templates))?;
        let refcat_rows = self.write_refcat(&out.join("refcat.csv"))?;
        progress(Progress {
            stage: ProgressStage::Refcat,
            done: 1,
            total: 1,
        });
        Ok((tiles, refcat_rows))
    }
}

/// Simulates a whole night into `out` (layout in `docs/CAMERA.md`): `night.json`,
/// `calib/`, `templates/`, `refcat.csv`, then every raw exposure and truth table,
/// detectors in parallel (the output does not depend on the number of threads).
/// `progress` is called after each unit of work.
pub fn simulate_night(
    spec: &NightSpec,
    out: &Path,
    progress: impl Fn(Progress) + Sync,
) -> Result<NightSummary, SimError> {
    let night = Night::new(spec)?;
    let progress = &progress;
    let (tiles, refcat_rows) = night.write_inputs(out, progress)?;
    let report = |stage| move |done, total| progress(Progress { stage, done, total });
    let jobs: Vec<(usize, u16)> = (0..night.visits.len())
        .flat_map(|i| (0..spec.detectors).map(move |d| (i, d)))
        .collect();
    for v in &night.visits {
        for dir in [
            out.join("raw").join(v.visit.to_string()),
            out.join("truth").join(v.visit.to_string()),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| SimError::io(&dir, e))?;
        }
    }
    let done = std::sync::atomic::AtomicU64::new(0);
    let total = jobs.len() as u64;
    let tick = report(ProgressStage::Exposures);
    let counts: Vec<usize> = jobs
        .par_iter()
        .map(|&(i, d)| -> Result<usize, SimError> {
            let det = DetectorId(d);
            let visit = night.visits[i].visit;
            for snap in 0..spec.snaps {
                let raw = night.render_raw(i, det, snap)?;
                crate::write_raw_fits(&raw, &raw_path(out, visit, snap, det))?;
            }
            let rows = night.truth(i, det)?;
            write_truth_csv(&rows, &truth_path(out, visit, det))?;
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            tick(k, total);
            Ok(rows.len())
        })
        .collect::<Result<_, _>>()?;
    Ok(NightSummary {
        raw_files: jobs.len() * usize::from(spec.snaps),
        truth_rows: counts.iter().sum(),
        template_tiles: tiles.len(),
        refcat_rows,
    })
}
