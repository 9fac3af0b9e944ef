//! Characterisation and calibration of one simulated 4096² detector (typical profile):
//! background, bright stars, PSF fit + PSF photometry, astrometric and photometric
//! calibration, each stage and all together, on one core.
//!
//! `cargo bench -p apflow-prompt-proc --bench characterize`

#[path = "../tests/support/sim_image.rs"]
mod sim_image;

use std::hint::black_box;

use apflow_prompt_proc::background::{self, BackgroundConfig};
use apflow_prompt_proc::calibrate::{self, AstrometryConfig, PhotometryConfig, RefStar};
use apflow_prompt_proc::psf_model::{self, PsfConfig};
use apflow_prompt_proc::stars::{self, StarConfig};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let sd = sim_image::simulate(&sim_image::spec(4096, 42), 0);
    let all: Vec<RefStar> = sd
        .night
        .refcat()
        .iter()
        .map(|r| RefStar {
            id: r.id,
            ra_deg: r.ra_deg,
            dec_deg: r.dec_deg,
            pm_ra_masyr: r.pm_ra_masyr,
            pm_dec_masyr: r.pm_dec_masyr,
            epoch_mjd: r.epoch_mjd,
            flux_njy: r.flux_njy,
            flux_err_njy: r.flux_err_njy,
        })
        .collect();
    let (w, h) = sd.image.dims();
    let refcat = calibrate::refcat_in_detector(&all, &sd.header_wcs, w, h, 50.0, sd.mjd);

    let bcfg = BackgroundConfig::default();
    let scfg = StarConfig::default();
    let pcfg = PsfConfig::default();
    let acfg = AstrometryConfig::default();
    let phcfg = PhotometryConfig::default();

    let mut sub = sd.image.clone();
    let bg = background::estimate(&sub, &bcfg).unwrap();
    bg.subtract_from(&mut sub);
    let mut found = stars::detect_stars(&sub, &scfg);
    let fit = psf_model::fit_psf(&sub, &found, &pcfg).unwrap();
    psf_model::measure_psf_flux(&sub, &fit.model, &mut found);
    let astro = calibrate::fit_astrometry(&found, &sd.header_wcs, &refcat, sd.mjd, &acfg).unwrap();
    let pc =
        calibrate::fit_photometry(&found, &refcat, &astro.matches, sd.band_index, &phcfg).unwrap();
    eprintln!(
        "4096²: {} stars, {} PSF stars (order {}, stamp {}), {} refs, {} matched, rms {:.4}\", calib {:.4} nJy/e- from {} stars",
        found.len(),
        fit.used.len(),
        fit.model.spatial_order(),
        fit.model.size(),
        refcat.len(),
        astro.n_matched,
        astro.rms_arcsec,
        pc.njy_per_electron,
        pc.n_stars
    );

    let mut g = c.benchmark_group("characterize");
    g.sample_size(10);
    g.bench_function("background_estimate_subtract", |b| {
        b.iter_batched_ref(
            || sd.image.clone(),
            |img| {
                let bg = background::estimate(img, &bcfg).unwrap();
                bg.subtract_from(img);
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("detect_stars", |b| {
        b.iter(|| black_box(stars::detect_stars(&sub, &scfg)))
    });
    g.bench_function("psf_fit_and_psf_flux", |b| {
        b.iter_batched_ref(
            || found.clone(),
            |st| {
                let fit = psf_model::fit_psf(&sub, st, &pcfg).unwrap();
                psf_model::measure_psf_flux(&sub, &fit.model, st);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("astrometry", |b| {
        b.iter(|| {
            black_box(
                calibrate::fit_astrometry(&found, &sd.header_wcs, &refcat, sd.mjd, &acfg).unwrap(),
            )
        })
    });
    g.bench_function("photometry", |b| {
        b.iter(|| {
            black_box(
                calibrate::fit_photometry(&found, &refcat, &astro.matches, sd.band_index, &phcfg)
                    .unwrap(),
            )
        })
    });
    g.bench_function("all", |b| {
        b.iter_batched_ref(
            || sd.image.clone(),
            |img| {
                let bg = background::estimate(img, &bcfg).unwrap();
                bg.subtract_from(img);
                let mut st = stars::detect_stars(img, &scfg);
                let fit = psf_model::fit_psf(img, &st, &pcfg).unwrap();
                psf_model::measure_psf_flux(img, &fit.model, &mut st);
                let a =
                    calibrate::fit_astrometry(&st, &sd.header_wcs, &refcat, sd.mjd, &acfg).unwrap();
                black_box(
                    calibrate::fit_photometry(&st, &refcat, &a.matches, sd.band_index, &phcfg)
                        .unwrap(),
                );
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
