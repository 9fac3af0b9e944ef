//! Helpers shared by the CLI's integration tests (each test file is its own crate and
//! takes what it uses; `mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `apflow` binary under test, without the caller's configuration or archive.
pub fn apflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apflow"));
    c.env_remove("APFLOW_CONFIG")
        .env_remove("APFLOW_ARCHIVE_DIR")
        .env("RUST_LOG", "warn");
    c
}

/// Science settings for 1024² detectors, which hold fewer stars than the defaults (set
/// for 4096²) ask for.
pub const SMALL_DETECTORS: &str = "[science.psf]\nmin_stars = 4\nmin_stars_per_term = 4\n\
     [science.astrometry]\nmin_matches = 4\n\
     [science.photometry]\nmin_stars = 3\n\
     [science.subtract]\nmin_stamps = 8\n";

/// Writes [`SMALL_DETECTORS`] to `<dir>/small.toml` and returns its path.
pub fn small_config(dir: &Path) -> PathBuf {
    let path = dir.join("small.toml");
    std::fs::write(&path, SMALL_DETECTORS).unwrap();
    path
}

/// The numbers on the summary line starting with `prefix` (summary lines are indented
/// by two spaces, per-stage lines by four).
pub fn numbers(out: &str, prefix: &str) -> Vec<usize> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("  {prefix} ")))
        .unwrap_or_else(|| panic!("no {prefix} line: {out}"));
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect()
}
