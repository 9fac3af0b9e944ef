//! `apflow filter …`: filter files (see `apflow_alert_dist::filter`).

use std::path::PathBuf;

use apflow_alert_dist::filter::{CostModel, Filter, FilterSet};
use clap::Subcommand;

/// Filter commands.
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Parse, type-check and cost each filter file; print OK with the cost, or the
    /// error at its line and column with a caret; then check that the files' names and
    /// topics are unique. Exits non-zero if any file is bad.
    Check {
        /// Filter files (TOML: owner, name, expression, quota, topic).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Largest accepted cost.
        #[arg(long, default_value_t = apflow_alert_dist::filter::DEFAULT_MAX_COST)]
        max_cost: u64,
    },
}

/// Runs a filter command; `Ok(false)` when a file is bad.
pub fn run(cmd: FilterCommand) -> anyhow::Result<bool> {
    match cmd {
        FilterCommand::Check { files, max_cost } => {
            let model = CostModel {
                limit: max_cost,
                ..CostModel::default()
            };
            let mut ok = true;
            let mut loaded = Vec::new();
            for path in files {
                match Filter::load(&path, &model) {
                    Ok(f) => {
                        println!(
                            "{}: OK  {} (owner {}, quota {}/visit, topic {}, cost {} of {})",
                            path.display(),
                            f.name,
                            f.owner,
                            f.quota,
                            f.topic,
                            f.condition.cost(),
                            model.limit
                        );
                        loaded.push(f);
                    }
                    Err(e) => {
                        ok = false;
                        eprintln!("{e}");
                    }
                }
            }
            // Together, as a filter directory is loaded: names and topics unique.
            if ok && let Err(e) = FilterSet::new(loaded) {
                ok = false;
                eprintln!("{e}");
            }
            Ok(ok)
        }
    }
}
