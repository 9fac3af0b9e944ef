//! FITS files written by the simulator read back to the same inputs as the in-memory
//! path (raw snaps, master calibrations, template tiles and their index).

mod common;

use apflow_core::ids::DetectorId;
use apflow_prompt_proc::io::{
    read_master_calibs, read_raw, read_template_index, read_template_tile,
};
use apflow_prompt_proc::isr::{IsrConfig, run};
use apflow_sim::{Night, NightSpec, write_raw_fits};

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
}

#[test]
fn fits_files_read_back_like_the_in_memory_inputs() {
    let night = Night::new(&NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 512,
        snaps: 2,
        template_tile_size: 400,
        seed: 31,
        ..NightSpec::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Raw.
    let mut from_files = Vec::new();
    let mut in_memory = Vec::new();
    for snap in 0..2 {
        let raw = night.render_raw(0, DetectorId(0), snap).unwrap();
        let path = dir.path().join(format!("raw-{snap}.fits"));
        write_raw_fits(&raw, &path).unwrap();
        let a = read_raw(&path).unwrap();
        let b = common::raw_from_sim(&raw);
        assert_eq!(a.amps, b.amps, "amplifier data and headers");
        let (ma, mb) = (&a.meta, &b.meta);
        assert_eq!(
            (ma.visit, ma.snap, ma.detector, &ma.band, ma.detector_size),
            (mb.visit, mb.snap, mb.detector, &mb.band, mb.detector_size)
        );
        for (x, y) in [
            (ma.mjd_obs, mb.mjd_obs),
            (ma.mjd_end, mb.mjd_end),
            (ma.exptime_s, mb.exptime_s),
            (ma.darktime_s, mb.darktime_s),
            (ma.saturate_adu, mb.saturate_adu),
            (ma.full_well_e.unwrap(), mb.full_well_e.unwrap()),
            (ma.seeing_arcsec.unwrap(), mb.seeing_arcsec.unwrap()),
        ] {
            assert!(close(x, y, 1e-13), "{x} vs {y}");
        }
        for (x, y) in [(10.0, 20.0), (500.0, 300.0)] {
            let (ra1, de1) = ma.wcs.pixel_to_sky(x, y);
            let (ra2, de2) = mb.wcs.pixel_to_sky(x, y);
            assert!((ra1 - ra2).abs() < 1e-10 && (de1 - de2).abs() < 1e-10);
        }
        from_files.push(a);
        in_memory.push(b);
    }
    // Calibrations.
    night.write_calibrations(&dir.path().join("calib")).unwrap();
    let ca = read_master_calibs(&dir.path().join("calib"), 0).unwrap();
    let cb = common::calibs_from_sim(&night, 0);
    assert_eq!(
        (&ca.bias, &ca.dark, &ca.flat),
        (&cb.bias, &cb.dark, &cb.flat)
    );
    // ISR gives the same image either way.
    let cfg = IsrConfig::default();
    let ia = run(&from_files, &ca, &cfg).unwrap();
    let ib = run(&in_memory, &cb, &cfg).unwrap();
    assert_eq!(ia.image.mask, ib.image.mask);
    let worst = ia
        .image
        .image
        .data()
        .iter()
        .zip(ib.image.image.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "{worst}");
    // Templates.
    let tdir = dir.path().join("templates");
    let tiles = night.write_templates(&tdir).unwrap();
    let index = read_template_index(&tdir).unwrap();
    assert_eq!(index.len(), tiles.len());
    for (info, sim) in index.iter().zip(&tiles) {
        assert_eq!(
            info,
            &common::tile_info(sim).with_path(tdir.join(&sim.file))
        );
    }
    let first = &index[0];
    let a = read_template_tile(&first.path).unwrap();
    let b = common::tile_from_sim(&night, &tiles[0]);
    assert_eq!((&a.id, &a.band), (&b.id, &b.band));
    assert_eq!(a.image, b.image);
    assert_eq!(a.variance, b.variance);
    assert_eq!(a.psf, b.psf);
    for (x, y) in [(0.0, 0.0), (300.0, 500.0)] {
        let (ra1, de1) = a.wcs.pixel_to_sky(x, y);
        let (ra2, de2) = b.wcs.pixel_to_sky(x, y);
        assert!((ra1 - ra2).abs() < 1e-10 && (de1 - de2).abs() < 1e-10);
    }
}
