//! `apflow apdb create | info | stats`: operating the Alert Production Database.

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::config::AppConfig;

/// `[apdb]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApdbSection {
    /// `sqlite://path` (embedded default) or `scylla://host[:port][,host…]/keyspace`
    /// (feature `scylla`).
    pub url: String,
    /// Settings written into a new database.
    #[serde(flatten)]
    pub config: apflow_apdb::ApdbConfig,
}

impl Default for ApdbSection {
    fn default() -> Self {
        Self {
            url: "sqlite://night/apdb.sqlite".into(),
            config: apflow_apdb::ApdbConfig::default(),
        }
    }
}

/// APDB commands (the URL comes from `[apdb] url` unless `--url` is given).
#[derive(Debug, Subcommand)]
pub enum ApdbCommand {
    /// Create the tables (and the keyspace on Scylla); refuses an existing database.
    Create {
        /// Database URL.
        #[arg(long)]
        url: Option<String>,
    },
    /// Schema version, partitioning and configuration of a database.
    Info {
        /// Database URL.
        #[arg(long)]
        url: Option<String>,
    },
    /// Row counts per table.
    Stats {
        /// Database URL.
        #[arg(long)]
        url: Option<String>,
    },
}

/// Runs an APDB command.
pub async fn run(cmd: ApdbCommand, config: &AppConfig) -> anyhow::Result<()> {
    let pick = |u: Option<String>| u.unwrap_or_else(|| config.apdb.url.clone());
    match cmd {
        ApdbCommand::Create { url } => {
            let url = pick(url);
            let parent = url
                .strip_prefix("sqlite://")
                .and_then(|p| std::path::Path::new(p).parent())
                .filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = parent {
                std::fs::create_dir_all(dir)?;
            }
            println!("{}", apflow_apdb::create(&url, &config.apdb.config).await?);
        }
        ApdbCommand::Info { url } => println!("{}", apflow_apdb::info(&pick(url)).await?),
        ApdbCommand::Stats { url } => println!("{}", apflow_apdb::stats(&pick(url)).await?),
    }
    Ok(())
}
