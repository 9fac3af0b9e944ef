//! `apflow archive …`: read the alert archive.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use apflow_alert_dist::archive::Archive;
use clap::Subcommand;

/// Alert archive commands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Write an archived alert — its exact wire bytes (Confluent-framed Avro) — to
    /// standard output or a file.
    Get {
        /// The alert's diaSourceId.
        id: i64,
        /// The archive directory.
        #[arg(long, env = "APFLOW_ARCHIVE_DIR")]
        dir: PathBuf,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print a writer schema stored in the archive, by schema id.
    Schema {
        /// The schema id (e.g. 1100).
        id: u32,
        /// The archive directory.
        #[arg(long, env = "APFLOW_ARCHIVE_DIR")]
        dir: PathBuf,
    },
}

/// Runs an archive command.
pub fn run(cmd: ArchiveCommand) -> anyhow::Result<()> {
    match cmd {
        ArchiveCommand::Get { id, dir, out } => {
            let bytes = open(&dir)?.get_alert(id)?;
            match out {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
        }
        ArchiveCommand::Schema { id, dir } => println!("{}", open(&dir)?.get_schema(id)?),
    }
    Ok(())
}

/// Opens an existing archive directory.
pub(crate) fn open(dir: &std::path::Path) -> anyhow::Result<Archive> {
    anyhow::ensure!(
        dir.join("alerts").is_dir(),
        "{} is not an alert archive (no alerts/ directory)",
        dir.display()
    );
    Ok(Archive::open(dir)?)
}
