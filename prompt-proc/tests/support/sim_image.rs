//! Test-only helpers: a calibrated science image (electrons) built from the simulator's
//! raw exposure with a crude ISR, and the true stars on it.
//!
//! Crude ISR per amplifier: subtract the mean of the serial overscan (skipping its first
//! 5 columns) and the master bias (ADU), × gain, assemble through the amplifier layout
//! (DETSEC), subtract the master dark × (EXPTIME + readout), ÷ master flat. Variance is
//! (charge + read noise²) / flat²; saturated pixels are masked `SAT`, dead or hot pixels
//! `BAD`. Cosmic rays are left in (the stages must be robust to them).

#![allow(dead_code)]

use apflow_core::geom::UnitVector;
use apflow_core::ids::DetectorId;
use apflow_core::wcs::TanSipWcs;
use apflow_prompt_proc::image::{Image, MaskedImage, mask};
use apflow_sim::camera::{ADC_MAX, FULL_WELL_E, PRESCAN};
use apflow_sim::schedule::{READOUT_S, electrons_per_s};
use apflow_sim::{Night, NightSpec, Profile, sky};

/// A star of the simulated sky on the detector.
#[derive(Clone, Debug)]
pub struct TrueStar {
    /// Sim id.
    pub id: u64,
    /// True pixel position (mid-exposure).
    pub x: f64,
    /// True pixel position.
    pub y: f64,
    /// True flux, electrons in the exposure.
    pub electrons: f64,
    /// True flux, nJy.
    pub njy: f64,
}

/// Everything a test needs about one simulated detector.
pub struct SimDetector {
    pub night: Night,
    pub visit: usize,
    pub det: DetectorId,
    /// Calibrated image, electrons, sky not subtracted.
    pub image: MaskedImage,
    pub header_wcs: TanSipWcs,
    pub true_wcs: TanSipWcs,
    /// Electrons per nJy of this exposure (flat = 1).
    pub e_per_njy: f64,
    /// Mid-exposure MJD TAI.
    pub mjd: f64,
    pub band_index: usize,
    pub stars: Vec<TrueStar>,
}

/// A night spec with one detector of side `size`, typical profile, fixed seed.
pub fn spec(size: u32, seed: u64) -> NightSpec {
    NightSpec {
        visits: 2,
        detectors: 1,
        detector_size: size,
        seed,
        profile: Profile::Typical,
        ..NightSpec::default()
    }
}

/// Renders visit `visit`, detector 0, and runs the crude ISR.
pub fn simulate(spec: &NightSpec, visit: usize) -> SimDetector {
    let night = Night::new(spec).expect("night");
    let det = DetectorId(0);
    let raw = night.render_raw(visit, det, 0).expect("raw");
    let [bias, dark, flat] = night.master_calibrations(det).expect("calibs");
    let model = &night.detectors()[0];
    let n = model.size as usize;
    let v = &night.visits()[visit];
    let t = v.snaps[0].exptime_s;
    let mut img = vec![0f32; n * n];
    let mut var = vec![0f32; n * n];
    let mut msk = vec![0u32; n * n];
    for amp in &raw.amps {
        let l = &amp.layout;
        let rw = l.raw_width() as usize;
        let w = l.width as usize;
        let os0 = PRESCAN as usize + w + 5;
        let (mut s, mut c) = (0.0f64, 0usize);
        for j in 0..l.height as usize {
            for i in os0..rw {
                s += f64::from(amp.data[j * rw + i]);
                c += 1;
            }
        }
        let os = s / c as f64;
        let gain = amp.params.gain;
        let rn2 = amp.params.read_noise_e.powi(2);
        for j in 0..l.height {
            for i in 0..l.width {
                let r = amp.data[j as usize * rw + (PRESCAN + i) as usize];
                let (x, y) = l.detector_pixel(i, j);
                let k = y as usize * n + x as usize;
                let e = (f64::from(r) - os - f64::from(bias[k])) * gain;
                let fl = f64::from(flat[k]).max(1e-3);
                let d = f64::from(dark[k]) * (t + READOUT_S);
                img[k] = ((e - d) / fl) as f32;
                var[k] = ((e.max(0.0) + rn2) / (fl * fl)) as f32;
                let mut m = 0;
                if r >= ADC_MAX || e >= 0.98 * FULL_WELL_E {
                    m |= mask::SAT;
                }
                if flat[k] < 0.5 || dark[k] > 1.0 {
                    m |= mask::BAD;
                }
                msk[k] = m;
            }
        }
    }
    let image = MaskedImage::from_parts(
        Image::from_vec(n, n, img),
        Image::from_vec(n, n, var),
        Image::from_vec(n, n, msk),
    );
    let header_wcs = night.header_wcs(visit, det).unwrap();
    let true_wcs = night.true_wcs(visit, det).unwrap();
    let e_per_njy = electrons_per_s(1.0, v.zp_mag) * t;
    let mjd = v.snaps[0].mid().0;
    let night_mjd = night.visits()[0].snaps[0].shutter_open.0;
    let centre = true_wcs.pixel_to_unit(n as f64 / 2.0, n as f64 / 2.0);
    let radius = n as f64 * 0.75 * spec.pixel_scale_arcsec / 3600.0 + 0.01;
    let plane = true_wcs.tangent_plane();
    let mut stars = Vec::new();
    for cell in sky::Cell::covering(centre, radius) {
        let cat = sky::generate_cell(
            spec.seed,
            spec.profile,
            cell,
            night_mjd,
            spec.injected_density_deg2,
        );
        for s in &cat.stars {
            let p: UnitVector = s.position(mjd);
            if let Some((x, y)) = true_wcs.unit_to_pixel(&plane, p)
                && x > -0.5
                && y > -0.5
                && x < n as f64 - 0.5
                && y < n as f64 - 0.5
            {
                let njy = s.flux_njy(v.band, mjd);
                stars.push(TrueStar {
                    id: s.id,
                    x,
                    y,
                    electrons: njy * e_per_njy,
                    njy,
                });
            }
        }
    }
    SimDetector {
        band_index: v.band.index(),
        night,
        visit,
        det,
        image,
        header_wcs,
        true_wcs,
        e_per_njy,
        mjd,
        stars,
    }
}

/// The true PSF image (size `size`, star at the centre pixel) at detector pixel (x, y).
pub fn true_psf_image(sd: &SimDetector, x: f64, y: f64, size: usize) -> Image<f32> {
    let model = &sd.night.detectors()[0];
    let (fx, fy) = model.focal_plane(x, y);
    let g = sd.night.visits()[sd.visit]
        .psf
        .at(fx, fy, sd.night.spec().pixel_scale_arcsec);
    let mut k = vec![0f32; size * size];
    let c = (size / 2) as f64;
    apflow_sim::psf::add_mixture(&mut k, size, size, c, c, 1.0, &g, 1e-12);
    Image::from_vec(size, size, k)
}
