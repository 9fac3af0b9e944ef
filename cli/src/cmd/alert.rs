//! `apflow alert …`: alerts for people.
//!
//! `apflow alert show <id|file>` renders an alert as JSON (cutouts summarised: size,
//! dimensions, WCS reference point) and, with `--png DIR`, writes the three cutouts as
//! PNG thumbnails (zscale limits, asinh stretch, north of the pixel grid up).
//! Loading goes through [`load`], which takes an [`AlertRef`]: a packet file, or a
//! `diaSourceId` looked up in the alert archive (`--archive DIR`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use apflow_alert_dist::archive::ArchiveLocation;
use apflow_alert_dist::fits::{self, FitsImage};
use apflow_alert_dist::packet::{cutouts_of, decode_framed, read_packet_bytes, to_json};
use apflow_alert_dist::thumb::{asinh_grey, zscale};
use clap::{Args, Subcommand};

/// Alert commands.
#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Render an alert as JSON: a framed packet file (`.avro`), a gzip-compressed one
    /// (`.avro.gz`, as archived), or a diaSourceId.
    Show(ShowArgs),
}

/// Arguments of `apflow alert show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A packet file, or a diaSourceId.
    pub target: String,
    /// Write the three cutouts as PNG thumbnails into this directory
    /// (`<diaSourceId>_<cutout>.png`).
    #[arg(long, value_name = "DIR")]
    pub png: Option<PathBuf>,
    /// The alert archive to look a diaSourceId up in: a directory, or
    /// `s3://bucket/prefix` (feature `s3`).
    #[arg(long, value_name = "DIR|URL", env = "APFLOW_ARCHIVE_DIR")]
    pub archive: Option<ArchiveLocation>,
}

/// What `alert show` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertRef {
    /// A packet file.
    File(PathBuf),
    /// A diaSourceId.
    Id(i64),
}

impl AlertRef {
    /// A path that exists is a file; otherwise an integer is an id; else a file (so a
    /// missing file is reported as such).
    pub fn parse(s: &str) -> Self {
        let p = Path::new(s);
        if p.exists() {
            return Self::File(p.to_owned());
        }
        match s.parse::<i64>() {
            Ok(id) => Self::Id(id),
            Err(_) => Self::File(p.to_owned()),
        }
    }
}

/// The framed bytes of an alert (gzip undone); an id is looked up in `archive`.
pub fn load(r: &AlertRef, archive: Option<&ArchiveLocation>) -> anyhow::Result<Vec<u8>> {
    match r {
        AlertRef::File(p) => {
            let raw = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(read_packet_bytes(raw).with_context(|| p.display().to_string())?)
        }
        AlertRef::Id(id) => match archive {
            Some(dir) => Ok(super::archive::open(dir)?.get_alert(*id)?),
            None => bail!(
                "alert {id}: looking up a diaSourceId needs the alert archive \
                 (--archive DIR or APFLOW_ARCHIVE_DIR); or give a packet file (.avro or .avro.gz)"
            ),
        },
    }
}

/// Runs an alert command.
pub fn run(cmd: AlertCommand) -> anyhow::Result<()> {
    match cmd {
        AlertCommand::Show(a) => show(&a),
    }
}

fn show(a: &ShowArgs) -> anyhow::Result<()> {
    let bytes = load(&AlertRef::parse(&a.target), a.archive.as_ref())?;
    let alert = decode_framed(&bytes).context("decoding the alert")?;
    let json = to_json(&alert);
    println!("{}", serde_json::to_string_pretty(&json)?);
    if let Some(dir) = &a.png {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let id = json["diaSourceId"].as_i64().unwrap_or_default();
        for (name, fits_bytes) in cutouts_of(&alert) {
            let img =
                fits::read_image(fits_bytes, None).with_context(|| format!("{name}: FITS"))?;
            let short = name.trim_start_matches("cutout").to_lowercase();
            let path = dir.join(format!("{id}_{short}.png"));
            write_png(&path, &img)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// Side of a thumbnail, pixels (cutouts are scaled up by an integer factor to at
/// least this).
const THUMB: usize = 256;

/// Writes a grey-scale PNG of `img` (zscale, asinh), first FITS row at the bottom.
pub fn write_png(path: &Path, img: &FitsImage) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 {
        bail!("{}: empty image", path.display());
    }
    let limits = zscale(&img.data, 600, 0.25).unwrap_or((0.0, 1.0));
    let grey = asinh_grey(&img.data, limits, 0.1);
    let k = THUMB.div_ceil(w.max(h)).max(1);
    let size = ((w * k) as u32, (h * k) as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    for y in 0..h {
        for x in 0..w {
            let g = grey[y * w + x];
            let colour = RGBColor(g, g, g);
            let top = (h - 1 - y) * k;
            root.draw(&Rectangle::new(
                [
                    ((x * k) as i32, top as i32),
                    (((x + 1) * k) as i32, (top + k) as i32),
                ],
                colour.filled(),
            ))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
    }
    root.present()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}
