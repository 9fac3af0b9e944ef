//! Simulates a whole night into a directory with a progress bar:
//!
//! ```text
//! cargo run --release -p apflow-sim --example simulate -- OUT_DIR [VISITS] [DETECTORS] [SIZE] [SEED]
//! ```

use std::path::PathBuf;

use apflow_sim::{NightSpec, ProgressStage, simulate_night};
use indicatif::{ProgressBar, ProgressStyle};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .ok_or("usage: simulate OUT_DIR [VISITS] [DETECTORS] [SIZE] [SEED]")?,
    );
    let num = |i: usize, d: u64| -> Result<u64, std::num::ParseIntError> {
        args.get(i)
            .map(|s| s.parse())
            .transpose()
            .map(|v| v.unwrap_or(d))
    };
    let spec = NightSpec {
        visits: num(1, 5)? as u32,
        detectors: num(2, 4)? as u16,
        detector_size: num(3, 2048)? as u32,
        seed: num(4, 1)?,
        ..NightSpec::default()
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>13} [{bar:40}] {pos}/{len} {elapsed_precise}")?
            .progress_chars("=> "),
    );
    let summary = simulate_night(&spec, &out, |p| {
        let msg = match p.stage {
            ProgressStage::Calibrations => "calibrations",
            ProgressStage::Templates => "templates",
            ProgressStage::Refcat => "refcat",
            ProgressStage::Exposures => "exposures",
        };
        bar.set_message(msg);
        bar.set_length(p.total);
        bar.set_position(p.done);
    })?;
    bar.finish();
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
