//! Conversions from the simulator's in-memory products to the pipeline's input types
//! (the same values the FITS readers give).
#![allow(dead_code)]

use apflow_core::ids::DetectorId;
use apflow_core::wcs::TanSipWcs;
use apflow_prompt_proc::image::Image;
use apflow_prompt_proc::io::{
    MasterCalibs, RawAmp, RawMeta, RawPixels, RawSnap, Section, TemplateTile, TemplateTileInfo,
};
use apflow_sim::night::TEMPLATE_OVERLAP_PX;
use apflow_sim::{Night, RawExposure};

/// A raw exposure as `read_raw` would give it.
pub fn raw_from_sim(raw: &RawExposure) -> RawSnap {
    let h = &raw.header;
    let meta = RawMeta {
        visit: h.visit,
        snap: h.snap,
        detector: h.detector,
        band: h.band.as_str().to_string(),
        mjd_obs: h.mjd_obs,
        mjd_end: h.mjd_end,
        exptime_s: h.exptime_s,
        darktime_s: h.exptime_s + apflow_sim::schedule::READOUT_S,
        saturate_adu: f64::from(apflow_sim::camera::ADC_MAX),
        full_well_e: Some(apflow_sim::camera::FULL_WELL_E),
        seeing_arcsec: Some(h.seeing_arcsec),
        detector_size: (h.detector_size as usize, h.detector_size as usize),
        wcs: h.wcs.clone(),
    };
    let amps = raw
        .amps
        .iter()
        .map(|a| {
            let l = &a.layout;
            RawAmp {
                name: l.name.clone(),
                width: l.raw_width() as usize,
                height: l.raw_height() as usize,
                data: RawPixels::I32(a.data.clone()),
                gain: a.params.gain,
                read_noise_e: a.params.read_noise_e,
                saturate_adu: f64::from(apflow_sim::camera::ADC_MAX),
                datasec: Section::parse(&l.datasec()).unwrap(),
                biassec: Section::parse(&l.biassec()).unwrap(),
                detsec: Section::parse(&l.detsec()).unwrap(),
            }
        })
        .collect();
    RawSnap { meta, amps }
}

/// The master calibrations of detector `d`.
pub fn calibs_from_sim(night: &Night, d: u16) -> MasterCalibs {
    let [bias, dark, flat] = night.master_calibrations(DetectorId(d)).unwrap();
    let n = night.spec().detector_size as usize;
    MasterCalibs::from_parts(
        Image::from_vec(n, n, bias),
        Image::from_vec(n, n, dark),
        Image::from_vec(n, n, flat),
    )
    .unwrap()
}

/// The WCS of a simulator template tile (north-up TAN centred on the tile).
pub fn tile_wcs(night: &Night, tile: &apflow_sim::night::TemplateTile) -> TanSipWcs {
    let c = 0.5 * f64::from(tile.size_px) + 0.5;
    let _ = TEMPLATE_OVERLAP_PX;
    TanSipWcs::tan(
        tile.centre_deg,
        [c, c],
        night.spec().pixel_scale_arcsec,
        0.0,
    )
}

/// A rendered template tile.
pub fn tile_from_sim(night: &Night, tile: &apflow_sim::night::TemplateTile) -> TemplateTile {
    let (img, var, kernel, k) = night.render_template(tile);
    let n = tile.size_px as usize;
    TemplateTile::from_parts(
        tile.id.clone(),
        tile.band.as_str(),
        Image::from_vec(n, n, img),
        Image::from_vec(n, n, var),
        Image::from_vec(k, k, kernel),
        tile_wcs(night, tile),
    )
    .unwrap()
}

/// The tile index entry, through the same JSON as `tiles.json`.
pub fn tile_info(tile: &apflow_sim::night::TemplateTile) -> TemplateTileInfo {
    serde_json::from_str(&serde_json::to_string(tile).unwrap()).unwrap()
}
