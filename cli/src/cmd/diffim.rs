//! `apflow diffim --science S.fits --template T.fits [--out DIR] [--refcat CSV]`: the
//! science core's steps 2–10 on any pair of calibrated images with a WCS, the way
//! people use HOTPANTS. Inputs follow `apflow_prompt_proc::fitsimage` (image, optional
//! `VARIANCE`, `MASK` and `PSF` extensions); the template need not be on the science
//! grid — it is warped (Lanczos-3) first.
//!
//! Writes `DIR/difference.fits` (image, `VARIANCE`, `MASK`, `PSF`, in nJy when the
//! photometry is calibrated) and `DIR/diasources.csv` (columns in
//! `apflow_prompt_proc::catalog`).

use std::path::PathBuf;

use anyhow::Context;
use apflow_core::wcs::CardValue;
use apflow_prompt_proc::calibrate::read_refcat_csv;
use apflow_prompt_proc::fitsimage::{read_calibrated_image, write_masked_image};
use apflow_prompt_proc::io::TemplateTile;
use apflow_prompt_proc::pipeline::{CalibratedScience, process_calibrated};
use clap::Args;

use crate::config::AppConfig;

/// `apflow diffim` options.
#[derive(Debug, Args)]
pub struct DiffimArgs {
    /// The calibrated science image.
    #[arg(long)]
    pub science: PathBuf,
    /// The template (any WCS; it is warped onto the science grid).
    #[arg(long)]
    pub template: PathBuf,
    /// Output directory.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Reference catalogue (the simulator's refcat.csv format): refines the science
    /// WCS and fits the zero point; without it the header WCS is used and the science
    /// image is scaled to the template's unit on bright stars.
    #[arg(long)]
    pub refcat: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: DiffimArgs, config: &AppConfig) -> anyhow::Result<()> {
    let sci = read_calibrated_image(&args.science)?;
    let tmpl = read_calibrated_image(&args.template)?;
    let refcat = args
        .refcat
        .as_deref()
        .map(read_refcat_csv)
        .transpose()
        .context("reading the reference catalogue")?;
    let tmpl_psf = tmpl.psf.clone().with_context(|| {
        format!(
            "{} has no PSF extension; the template's PSF is needed to match it",
            args.template.display()
        )
    })?;
    let template = TemplateTile {
        id: args.template.display().to_string(),
        band: tmpl.band.clone().unwrap_or_default(),
        image: tmpl.masked.image,
        variance: tmpl.masked.variance,
        mask: tmpl.masked.mask,
        psf: tmpl_psf,
        wcs: tmpl.wcs,
    };
    let science = CalibratedScience {
        in_njy: sci.unit.eq_ignore_ascii_case("nJy"),
        masked: sci.masked,
        wcs: sci.wcs,
        band: sci.band.clone(),
        mjd: sci.mjd_obs,
    };
    let unit = if science.in_njy || refcat.is_some() {
        "nJy".to_string()
    } else {
        tmpl.unit.clone()
    };
    let result = process_calibrated(science, &[&template], refcat.as_deref(), &config.science)?;

    std::fs::create_dir_all(&args.out)?;
    let diff_path = args.out.join("difference.fits");
    let cards = vec![
        (
            "ORIGIN".to_string(),
            CardValue::Str("apflow diffim".into()),
            "Alard-Lupton difference, decorrelated".to_string(),
        ),
        (
            "KSUM".to_string(),
            CardValue::Float(result.subtraction.kernel_sum),
            "PSF-matching kernel sum at the centre".to_string(),
        ),
        (
            "RESIDBKG".to_string(),
            CardValue::Float(result.subtraction.residual_background),
            "refitted residual background at the centre".to_string(),
        ),
        (
            "CONVOLV".to_string(),
            CardValue::Str(result.subtraction.convolved.into()),
            "image convolved by the matching kernel".to_string(),
        ),
        (
            "PHOTSCAL".to_string(),
            CardValue::Float(result.calibration.scale_to_njy),
            "science input unit to output unit".to_string(),
        ),
    ];
    write_masked_image(
        &diff_path,
        &result.difference,
        &result.wcs,
        &unit,
        &cards,
        Some(&result.difference_psf_centre),
    )?;
    let csv_path = args.out.join("diasources.csv");
    apflow_prompt_proc::catalog::write_csv(&csv_path, &result.sources)?;

    println!(
        "difference: {} ({}×{}, {} convolved, kernel sum {:.4}, residual background {:.3}, {} stamps)",
        diff_path.display(),
        result.difference.width(),
        result.difference.height(),
        result.subtraction.convolved,
        result.subtraction.kernel_sum,
        result.subtraction.residual_background,
        result.subtraction.n_stamps_used
    );
    println!(
        "diasources: {} ({} sources, {} at or above reliability {:.2})",
        csv_path.display(),
        result.sources.len(),
        result.reliable().count(),
        config.science.reliability_threshold
    );
    match result.calibration.astrometric_rms_arcsec {
        Some(rms) => println!(
            "calibration: {} stars matched, astrometric rms {:.3}″, {} ({:.5} per input unit)",
            result.calibration.n_matched, rms, unit, result.calibration.scale_to_njy
        ),
        None => println!(
            "calibration: {} (scale {:.5} ± {:.5} to the template's unit)",
            result.calibration.method,
            result.calibration.scale_to_njy,
            result.calibration.scale_err
        ),
    }
    let timings: Vec<String> = result
        .timings
        .iter()
        .map(|t| format!("{} {:.0} ms", t.stage, t.seconds * 1e3))
        .collect();
    println!(
        "time: {} (total {:.2} s)",
        timings.join(", "),
        result.total_seconds()
    );
    Ok(())
}
