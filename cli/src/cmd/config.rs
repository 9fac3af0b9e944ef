//! `apflow config show | check`.

use clap::Subcommand;

use crate::config::AppConfig;

/// Configuration commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML (secrets masked).
    Show,
    /// Validate the configuration and exit (every error is reported).
    Check,
}

/// Runs a configuration command. Loading already validated the configuration.
pub fn run(cmd: ConfigCommand, config: &AppConfig) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Show => print!("{}", apflow_core::config::to_toml(config)),
        ConfigCommand::Check => println!("configuration is valid"),
    }
    Ok(())
}
