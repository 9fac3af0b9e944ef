//! The `apflow` command: parses arguments, loads configuration and wires services.
//! Everything else lives in the libraries.

mod cmd;
mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::AppConfig;

/// mimalloc keeps freed image-sized blocks (a 4096² plane is 64 MB) mapped for the next
/// stage instead of returning them to the kernel, so the science core does not pay a
/// page fault per 4 KB on every fresh image (see `docs/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// apflow — prompt processing and alert distribution for wide-field time-domain surveys.
///
/// Configuration comes from embedded defaults, then `--config FILE`, then
/// `APFLOW__SECTION__KEY` environment variables (for example
/// `APFLOW__BUS__URL=kafka://127.0.0.1:9092`). `apflow config show` prints the result.
#[derive(Debug, Parser)]
#[command(name = "apflow", version, propagate_version = true)]
struct Cli {
    /// TOML configuration file (overrides the embedded defaults).
    #[arg(long, short, global = true, env = "APFLOW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The filtering service: consume the full alert topic once, forward each filter's
    /// matches (at most its quota per visit) to the filter's topic, reload the filter
    /// directory when it changes; print a per-filter summary at the end.
    Distribute(cmd::distribute::DistributeArgs),
    /// Run a simulated night — or, with `--raw DIR`, a night directory of raw images
    /// replayed at its original pacing, faster or at a cadence — through every available
    /// stage in one process, on the embedded backends, and print a summary (alerts,
    /// latency).
    Run(cmd::run::RunArgs),
    /// Write a simulated night (raw images, truth, calibrations, templates, reference
    /// catalogue) to a directory.
    Simulate(cmd::simulate::SimulateArgs),
    /// The prompt-processing worker service on a Kafka bus: each detector's snaps from
    /// the raw-image topic through the science core, association and the APDB, its
    /// alerts to Kafka, then DetectorProcessed (or a dead letter).
    Process(cmd::process::ProcessArgs),
    /// Alert distribution on a Kafka bus: VisitComplete per visit from the workers'
    /// DetectorProcessed, the read-only schema registry, and the consumer lag of every
    /// group on the alert topics (community brokers' included) as metrics.
    AlertDist(cmd::alert_dist::AlertDistArgs),
    /// Watch a landing directory and announce each complete raw image (RawImageReady),
    /// dead-lettering bad files with the reason.
    Ingest(cmd::ingest::IngestArgs),
    /// Difference a calibrated science image against a template (steps 2–10 of the
    /// science core): writes the difference image (FITS) and the DiaSource catalogue
    /// (CSV).
    Diffim(cmd::diffim::DiffimArgs),
    /// Create and inspect the Alert Production Database.
    #[command(subcommand)]
    Apdb(cmd::apdb::ApdbCommand),
    /// Inspect and validate the configuration.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Inspect alert packets.
    #[command(subcommand)]
    Alert(cmd::alert::AlertCommand),
    /// Check filter files of the filtered alert streams.
    #[command(subcommand)]
    Filter(cmd::filter::FilterCommand),
    /// Read the alert archive.
    #[command(subcommand)]
    Archive(cmd::archive::ArchiveCommand),
    /// Send a night of the alert archive again — paced like the original, faster, or
    /// at a fixed visit cadence — to a directory or a Kafka topic, with fresh ids. (Raw
    /// images through the whole pipeline: `apflow run --raw DIR`.)
    Replay(cmd::replay::ReplayArgs),
    /// The night report: alerts per visit and detector, latency against the 60 s
    /// budget, stage times; PNG plots and a JSON summary.
    Report(cmd::replay::ReportArgs),
    /// Measure throughput (figures go to docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match AppConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    apflow_core::telemetry::init_logging(config.telemetry.log_format, &config.telemetry.log_level);
    apflow_core::telemetry::metrics::register_shared(env!("CARGO_PKG_VERSION"), features());
    apflow_alert_dist::metrics::register();
    let result = match cli.command {
        Command::Run(a) => runtime().and_then(|rt| rt.block_on(cmd::run::run(a, &config))),
        Command::Distribute(a) => {
            runtime().and_then(|rt| rt.block_on(cmd::distribute::run(a, &config)))
        }
        Command::Process(a) => runtime().and_then(|rt| rt.block_on(cmd::process::run(a, &config))),
        Command::AlertDist(a) => {
            runtime().and_then(|rt| rt.block_on(cmd::alert_dist::run(a, &config)))
        }
        Command::Simulate(a) => cmd::simulate::run(a, &config.simulate),
        Command::Ingest(a) => runtime().and_then(|rt| rt.block_on(cmd::ingest::run(a, &config))),
        Command::Apdb(c) => runtime().and_then(|rt| rt.block_on(cmd::apdb::run(c, &config))),
        Command::Config(c) => cmd::config::run(c, &config),
        Command::Diffim(a) => cmd::diffim::run(a, &config),
        Command::Alert(c) => cmd::alert::run(c),
        Command::Archive(c) => cmd::archive::run(c, &config),
        Command::Replay(a) => runtime().and_then(|rt| rt.block_on(cmd::replay::run(a, &config))),
        Command::Report(a) => cmd::replay::run_report(a),
        Command::Filter(c) => match cmd::filter::run(c) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Bench(b) => runtime().and_then(|rt| rt.block_on(cmd::bench::run(b, &config))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The cargo features this binary was built with.
fn features() -> &'static str {
    match (cfg!(feature = "kafka"), cfg!(feature = "scylla")) {
        (true, true) => "kafka,scylla",
        (true, false) => "kafka",
        (false, true) => "scylla",
        (false, false) => "",
    }
}
