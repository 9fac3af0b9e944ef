//! The application's configuration: every component's section, composed.

use std::path::Path;

use apflow_core::bus::BusConfig;
use apflow_core::config::{self, ConfigErrors};
use apflow_core::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("../default.toml");

/// Everything apflow can be configured with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// `[bus]`.
    pub bus: BusConfig,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
    /// `[simulate]`: the simulated night of `apflow run` and `apflow simulate`.
    pub simulate: apflow_sim::NightSpec,
    /// `[run]`.
    pub run: crate::cmd::run::RunConfig,
    /// `[apdb]`.
    pub apdb: crate::cmd::apdb::ApdbSection,
    /// `[science]`: every stage of the science core (ISR to cutouts).
    pub science: apflow_prompt_proc::pipeline::PipelineConfig,
    /// `[association]`: matching radii and the forced-photometry rule.
    pub association: apflow_prompt_proc::association::AssociationConfig,
    /// `[alerts]`: packet assembly (size limit, cutout shrinking, history window).
    pub alerts: apflow_alert_dist::packet::AssembleConfig,
    /// `[producer]`: the Kafka alert stream (used when `[bus] url` is `kafka://…`).
    pub producer: apflow_alert_dist::producer::ProducerConfig,
    /// `[filters]`: the filtering service (`apflow distribute`, and inside `apflow run`
    /// when `dir` is set).
    pub filters: apflow_alert_dist::filter::FilterServiceConfig,
}

impl AppConfig {
    /// Defaults, then `file`, then `APFLOW__…` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigErrors> {
        config::load(DEFAULTS, file, std::env::vars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_equal_the_code_defaults() {
        let c: AppConfig = config::load(DEFAULTS, None, Vec::new()).unwrap();
        assert_eq!(c, AppConfig::default());
    }

    #[test]
    fn shipped_example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                config::load::<AppConfig>(DEFAULTS, Some(&path), Vec::new())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "expected example configs in {}", dir.display());
    }
}
