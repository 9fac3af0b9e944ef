//! Image characterisation and calibration on simulated detectors: background, bright
//! stars, PSF model, PSF photometry, astrometric and photometric calibration, checked
//! against the simulator's truth.

mod support;

use std::sync::OnceLock;

use apflow_prompt_proc::background::{self, BackgroundConfig};
use apflow_prompt_proc::psf::Psf;
use apflow_prompt_proc::psf_model::{self, PsfConfig};
use apflow_prompt_proc::stars::{self, Star, StarConfig};
use support::sim_image::{self, SimDetector};

struct Characterised {
    sd: SimDetector,
    img: apflow_prompt_proc::MaskedImage,
    stars: Vec<Star>,
    psf: psf_model::PsfFit,
}

fn characterised() -> &'static Characterised {
    static CELL: OnceLock<Characterised> = OnceLock::new();
    CELL.get_or_init(|| {
        let sd = sim_image::simulate(&sim_image::spec(2048, 42), 0);
        let mut img = sd.image.clone();
        let bg = background::estimate(&img, &BackgroundConfig::default()).unwrap();
        bg.subtract_from(&mut img);
        let mut stars = stars::detect_stars(&img, &StarConfig::default());
        let psf = psf_model::fit_psf(&img, &stars, &PsfConfig::default()).unwrap();
        psf_model::measure_psf_flux(&img, &psf.model, &mut stars);
        Characterised {
            sd,
            img,
            stars,
            psf,
        }
    })
}

/// Nearest true star within `r` px.
fn truth_of<'a>(sd: &'a SimDetector, s: &Star, r: f64) -> Option<&'a sim_image::TrueStar> {
    sd.stars
        .iter()
        .filter(|t| (t.x - s.x).hypot(t.y - s.y) < r)
        .min_by(|a, b| {
            (a.x - s.x)
                .hypot(a.y - s.y)
                .total_cmp(&(b.x - s.x).hypot(b.y - s.y))
        })
}

#[test]
fn explore() {
    let c = characterised();
    let n = c.stars.len();
    let clean = c.stars.iter().filter(|s| s.is_clean()).count();
    eprintln!("stars {n} clean {clean} psf used {} rms {}", c.psf.used.len(), c.psf.residual_rms);
    let seeing = c.sd.night.visits()[0].seeing_arcsec;
    eprintln!("seeing {seeing} -> {} px", seeing / 0.2);
    for &(x, y) in &[(100.0, 100.0), (1024.0, 1024.0), (1900.0, 300.0)] {
        let t = sim_image::true_psf_image(&c.sd, x, y, c.psf.model.size());
        eprintln!(
            "fwhm model {} truth {}",
            c.psf.model.fwhm_at(x, y),
            psf_model::fwhm_of_image(&t)
        );
    }
    let mut ratios = Vec::new();
    for &i in &c.psf.used {
        let s = &c.stars[i];
        if let Some(t) = truth_of(&c.sd, s, 1.0) {
            ratios.push(s.psf_flux / t.electrons);
        }
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!("psf/true median {} n {}", ratios[ratios.len() / 2], ratios.len());
}
