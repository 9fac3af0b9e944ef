//! Cutout FITS bytes read back with cfitsio (the `fitsio` crate): pixels, variance,
//! mask, PSF and WCS are the ones written.

use std::path::Path;

use apflow_alert_dist::fits::{self, cutout_fits};
use apflow_alert_dist::synth;
use apflow_core::wcs::CardValue;
use apflow_prompt_proc::io::read_wcs;
use fitsio::FitsFile;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn open(bytes: &[u8], dir: &Path) -> FitsFile {
    let p = dir.join("cutout.fits");
    std::fs::write(&p, bytes).unwrap();
    FitsFile::open(&p).unwrap()
}

#[test]
fn cfitsio_reads_back_every_plane_and_the_wcs() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let wcs = synth::detector_wcs(201.5, -43.0);
    let c = synth::cutout(&mut rng, 37, &wcs, 1500, 2200, 4000.0);
    let extra = [(
        "DIASRCID".to_string(),
        CardValue::Int(12345),
        "id".to_string(),
    )];
    let bytes = cutout_fits(&c, &extra).unwrap();
    assert_eq!(bytes.len() % fits::BLOCK, 0);
    let dir = tempfile::tempdir().unwrap();
    let mut f = open(&bytes, dir.path());

    let primary = f.primary_hdu().unwrap();
    let img: Vec<f32> = primary.read_image(&mut f).unwrap();
    assert_eq!(img, c.masked.image.data());
    assert_eq!(primary.read_key::<String>(&mut f, "BUNIT").unwrap(), "nJy");
    assert_eq!(primary.read_key::<i64>(&mut f, "CUTMINX").unwrap(), 1500);
    assert_eq!(primary.read_key::<i64>(&mut f, "DIASRCID").unwrap(), 12345);
    let back = read_wcs(&mut f, &primary, Path::new("cutout.fits"), "primary HDU").unwrap();
    // Shortest round-trip formatting: the WCS comes back bit for bit.
    assert_eq!(back, c.wcs);
    // And it is the detector WCS moved to the cutout's grid.
    let (a, b) = (
        back.pixel_to_sky(3.0, 4.0),
        wcs.pixel_to_sky(1503.0, 2204.0),
    );
    assert!((a.0 - b.0).abs() < 1e-10 && (a.1 - b.1).abs() < 1e-10);

    let m = f.hdu("MASK").unwrap();
    let mask: Vec<i32> = m.read_image(&mut f).unwrap();
    let want: Vec<i32> = c.masked.mask.data().iter().map(|&b| b as i32).collect();
    assert_eq!(mask, want);
    assert!(mask.iter().any(|&b| b != 0));
    assert_eq!(m.read_key::<i64>(&mut f, "MP_CR").unwrap(), 2);

    let u = f.hdu("UNCERT").unwrap();
    let var: Vec<f32> = u.read_image(&mut f).unwrap();
    assert_eq!(var, c.masked.variance.data());
    assert_eq!(
        u.read_key::<String>(&mut f, "UTYPE").unwrap(),
        "VarianceUncertainty"
    );

    let p = f.hdu("PSFIMAGE").unwrap();
    let psf: Vec<f32> = p.read_image(&mut f).unwrap();
    assert_eq!(psf, c.psf.data());
    let s: f32 = psf.iter().sum();
    assert!((s - 1.0).abs() < 1e-4);

    // Our own reader agrees with cfitsio.
    let ours = fits::read_image(&bytes, None).unwrap();
    assert_eq!((ours.width, ours.height), (37, 37));
    assert_eq!(ours.data, img);
    assert_eq!(ours.wcs().unwrap(), c.wcs);
    assert_eq!(
        fits::read_image(&bytes, Some("PSFIMAGE")).unwrap().data,
        psf
    );
    assert!(matches!(
        fits::read_image(&bytes, Some("NOPE")),
        Err(fits::FitsError::NoSuchHdu(_))
    ));
}

#[test]
fn cropping_keeps_the_source_at_the_centre_and_the_wcs_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let wcs = synth::detector_wcs(10.0, 20.0);
    let c = synth::cutout(&mut rng, 61, &wcs, 100, 200, 4000.0);
    let small = fits::crop_centre(&c, 31).unwrap();
    assert_eq!(small.masked.dims(), (31, 31));
    assert_eq!(small.masked.image.get(15, 15), c.masked.image.get(30, 30));
    assert_eq!(small.x0, 115);
    let (a, b) = (
        small.wcs.pixel_to_sky(15.0, 15.0),
        c.wcs.pixel_to_sky(30.0, 30.0),
    );
    assert!((a.0 - b.0).abs() < 1e-12 && (a.1 - b.1).abs() < 1e-12);
    assert!(fits::crop_centre(&c, 61).is_none());
    assert!(fits::crop_centre(&c, 0).is_none());
}
