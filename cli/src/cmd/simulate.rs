//! `apflow simulate`: writes a simulated night (raw images, truth, calibrations,
//! templates, reference catalogue) to a directory.

use std::path::PathBuf;

use apflow_sim::{NightSpec, Profile, ProgressStage, simulate_night};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// Options that override the `[simulate]` configuration section.
#[derive(Debug, Args, Clone, Default)]
pub struct NightArgs {
    /// Visits in the night.
    #[arg(long)]
    pub visits: Option<u32>,
    /// Detectors per visit.
    #[arg(long)]
    pub detectors: Option<u16>,
    /// Detector size in pixels (square; a multiple of 16).
    #[arg(long)]
    pub size: Option<u32>,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sky density: sparse, typical or crowded.
    #[arg(long, value_parser = parse_profile)]
    pub profile: Option<Profile>,
    /// Snaps per visit: 1 (one 30 s exposure) or 2 (two 15 s snaps).
    #[arg(long)]
    pub snaps: Option<u8>,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    match s {
        "sparse" => Ok(Profile::Sparse),
        "typical" => Ok(Profile::Typical),
        "crowded" => Ok(Profile::Crowded),
        other => Err(format!(
            "unknown profile `{other}` (sparse, typical, crowded)"
        )),
    }
}

impl NightArgs {
    /// The configured night with these overrides applied.
    pub fn apply(&self, base: &NightSpec) -> NightSpec {
        let mut s = base.clone();
        if let Some(v) = self.visits {
            s.visits = v;
        }
        if let Some(v) = self.detectors {
            s.detectors = v;
        }
        if let Some(v) = self.size {
            s.detector_size = v;
        }
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if let Some(v) = self.profile {
            s.profile = v;
        }
        if let Some(v) = self.snaps {
            s.snaps = v;
        }
        s
    }
}

/// `apflow simulate` options.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The night.
    #[command(flatten)]
    pub night: NightArgs,
    /// Output directory (layout in docs/CAMERA.md).
    #[arg(long, default_value = "night")]
    pub out: PathBuf,
}

/// A progress bar for the simulator's steps.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>13} [{bar:40}] {pos}/{len} {per_sec} {elapsed_precise}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// The step's name for the progress bar.
pub fn stage_name(s: ProgressStage) -> &'static str {
    match s {
        ProgressStage::Calibrations => "calibrations",
        ProgressStage::Templates => "templates",
        ProgressStage::Refcat => "refcat",
        ProgressStage::Exposures => "exposures",
    }
}

/// Runs `apflow simulate`.
pub fn run(args: SimulateArgs, base: &NightSpec) -> anyhow::Result<()> {
    let spec = args.night.apply(base);
    spec.validate()?;
    let bar = progress_bar();
    let summary = simulate_night(&spec, &args.out, |p| {
        bar.set_message(stage_name(p.stage));
        bar.set_length(p.total);
        bar.set_position(p.done);
    })?;
    bar.finish_and_clear();
    println!(
        "simulated {} visits × {} detectors ({} px, seed {}) into {}",
        spec.visits,
        spec.detectors,
        spec.detector_size,
        spec.seed,
        args.out.display()
    );
    println!(
        "  raw files {}, truth rows {}, template tiles {}, reference stars {}",
        summary.raw_files, summary.truth_rows, summary.template_tiles, summary.refcat_rows
    );
    Ok(())
}
