//! `apflow replay`: a night of the alert archive sent again, paced, to a directory or
//! a Kafka topic; and `apflow report`: the night report. The work is in
//! `apflow_replay`; this parses arguments and prints.
//!
//! Fresh ids are on by default when the sink is Kafka (a replay on a broker must never
//! be taken for, or deduplicated against, the original alerts: brokers' complaint
//! about Rubin's rehearsals) and off for a directory (a faithful copy of the night,
//! byte for byte); `--fresh-ids` / `--original-ids` override either default.

use std::path::PathBuf;

use anyhow::Context;
use apflow_replay::clock::RealClock;
use apflow_replay::fresh::FreshIds;
use apflow_replay::night::{load_night, pick_night};
use apflow_replay::player::{ReplaySummary, replay};
use apflow_replay::report::night_report;
use apflow_replay::schedule::{Pacing, Schedule, ScheduleOptions, parse_duration, parse_time};
use apflow_replay::sink::{AnySink, DirSink};
use clap::Args;

use crate::config::AppConfig;

/// `apflow replay` arguments.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The alert archive to read (its `nights/<day_obs>/alerts-<id>.avro` files). To
    /// replay a night of raw images through the whole pipeline instead, at the same
    /// pacing: `apflow run --raw DIR`.
    #[arg(long, env = "APFLOW_ARCHIVE_DIR")]
    pub archive: PathBuf,
    /// The night, YYYYMMDD (default: the archive's only night).
    #[arg(long)]
    pub night: Option<u32>,
    /// Speed factor over the original visit spacing (1, 10, x10, 0.5) or `max`.
    #[arg(long, default_value = "1", conflicts_with = "cadence")]
    pub speed: String,
    /// Visit-cadence mode: one visit every DURATION (e.g. 37s), whatever the original
    /// times.
    #[arg(long, value_name = "DURATION")]
    pub cadence: Option<String>,
    /// Spread a visit's detector bursts over DURATION (default: all at once).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub detector_spread: String,
    /// Only visits at or after this time (MJD TAI, or ISO 8601 UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Only visits before this time (MJD TAI, or ISO 8601 UTC).
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many visits.
    #[arg(long)]
    pub limit_visits: Option<usize>,
    /// Give every alert fresh ids (default for a Kafka sink).
    #[arg(long, conflicts_with = "original_ids")]
    pub fresh_ids: bool,
    /// Keep the original ids (default for a directory sink).
    #[arg(long)]
    pub original_ids: bool,
    /// Replay generation of fresh ids (1-7), the top bits of every fresh id.
    #[arg(long, default_value_t = 1)]
    pub generation: u8,
    /// Write an archive-like directory.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "brokers",
        required_unless_present = "brokers"
    )]
    pub to_dir: Option<PathBuf>,
    /// Produce to Kafka (`host:port[,…]`; needs the `kafka` feature).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic to produce to (default: the alert producer's, `[producer] topic_template`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the topic when it is created (default: `[producer] partitions`).
    #[arg(long)]
    pub partitions: Option<i32>,
}

/// `apflow report` arguments.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The alert archive (alerts per visit and detector).
    #[arg(long, env = "APFLOW_ARCHIVE_DIR")]
    pub archive: Option<PathBuf>,
    /// The night, YYYYMMDD (default: the archive's only night).
    #[arg(long)]
    pub night: Option<u32>,
    /// JSON Lines file of per-detector records (latency and stage times).
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// The filtering service's matches log (`<out>/filter-matches.jsonl` of `apflow
    /// run --filters`, `apflow distribute --matches-log`): matches per filter.
    #[arg(long)]
    pub filter_matches: Option<PathBuf>,
    /// Directory for summary.json, latency.png and alerts_per_visit.png.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

fn options(args: &ReplayArgs) -> anyhow::Result<ScheduleOptions> {
    let pacing = match &args.cadence {
        Some(c) => Pacing::cadence(c)?,
        None => Pacing::speed(&args.speed)?,
    };
    let spread = parse_duration(&args.detector_spread)
        .with_context(|| format!("--detector-spread {:?}", args.detector_spread))?;
    Ok(ScheduleOptions {
        pacing,
        detector_spread: spread,
        from: args.from.as_deref().map(parse_time).transpose()?,
        to: args.to.as_deref().map(parse_time).transpose()?,
        limit_visits: args.limit_visits,
    })
}

/// Runs `apflow replay`.
pub async fn run(args: ReplayArgs, config: &AppConfig) -> anyhow::Result<()> {
    let opts = options(&args)?;
    let day_obs = pick_night(&args.archive, args.night)?;
    let night = tokio::task::block_in_place(|| load_night(&args.archive, day_obs))?;
    let schedule = Schedule::new(&night.visits, &opts)?;
    let kafka_sink = args.brokers.is_some();
    let fresh_ids = args.fresh_ids || (kafka_sink && !args.original_ids);
    let fresh = fresh_ids
        .then(|| FreshIds::new(args.generation))
        .transpose()?;
    let generation = fresh.as_ref().map_or(0, FreshIds::generation);
    let mut sink = match (&args.to_dir, &args.brokers) {
        (Some(dir), _) => {
            let mut schemas = night.schemas.clone();
            if fresh.is_some() {
                // Fresh-id alerts are re-encoded with apflow's writer schema.
                schemas.insert(
                    apflow_alert_dist::schema::SCHEMA_ID,
                    apflow_alert_dist::schema::alert_schema().json.clone(),
                );
            }
            AnySink::Dir(Box::new(DirSink::open(dir, &schemas)?))
        }
        (None, Some(brokers)) => kafka_sink_for(brokers, &args, generation, config).await?,
        (None, None) => anyhow::bail!("give --to-dir DIR or --brokers HOST:PORT"),
    };
    let total = schedule.alert_count(&night.visits);
    println!(
        "replaying night {day_obs}: {} of {} visits, {total} alerts, {}, {}",
        schedule.visits.len(),
        night.visits.len(),
        describe(&opts.pacing),
        match &fresh {
            Some(f) => format!("fresh ids (generation {})", f.generation()),
            None => "original ids".into(),
        }
    );
    let bar = crate::cmd::simulate::progress_bar();
    bar.set_length(total as u64);
    bar.set_message("alerts");
    let clock = RealClock::start();
    let summary = replay(&night, &schedule, &mut sink, &clock, fresh.as_ref(), |p| {
        bar.set_position(p.alerts_sent);
        bar.set_message(format!("visit {}/{}", p.visits_sent, p.visits_total));
    })
    .await?;
    bar.finish_and_clear();
    print_summary(&summary);
    Ok(())
}

/// The pacing in words, for banners and summaries.
pub fn describe(p: &Pacing) -> String {
    match p {
        Pacing::Original { speed } => format!("original spacing ×{speed}"),
        Pacing::Max => "as fast as possible".into(),
        Pacing::Cadence { every } => {
            format!("one visit every {}", humantime::format_duration(*every))
        }
    }
}

fn print_summary(s: &ReplaySummary) {
    println!(
        "sent {} alerts ({:.1} MB) of {} visits in {} bursts in {:.2} s: {:.0} alerts/s, {:.1} MB/s",
        s.alerts,
        s.bytes as f64 / 1e6,
        s.visits,
        s.bursts,
        s.elapsed_s,
        s.alerts_per_s,
        s.bytes as f64 / 1e6 / s.elapsed_s.max(1e-9),
    );
    println!(
        "  visit spacing vs schedule: mean |error| {:.4} s, max |error| {:.4} s, max relative {:.2}%; latest burst {:.3} s late",
        s.spacing_mean_abs_error_s,
        s.spacing_max_abs_error_s,
        100.0 * s.spacing_max_rel_error,
        s.max_lateness_s
    );
}

#[cfg(not(feature = "kafka"))]
async fn kafka_sink_for(_: &str, _: &ReplayArgs, _: u8, _: &AppConfig) -> anyhow::Result<AnySink> {
    Err(apflow_replay::sink::SinkError::NotBuilt("kafka").into())
}

#[cfg(feature = "kafka")]
async fn kafka_sink_for(
    brokers: &str,
    args: &ReplayArgs,
    generation: u8,
    config: &AppConfig,
) -> anyhow::Result<AnySink> {
    use apflow_alert_dist::schema::SCHEMA_ID;
    use apflow_replay::sink::KafkaSink;
    // The alert producer's settings ([producer]): compression, batching, overrides.
    let producer = &config.producer;
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| producer.topic(SCHEMA_ID / 100));
    let partitions = args.partitions.unwrap_or(producer.partitions);
    KafkaSink::ensure_topic(brokers, &config.bus.kafka, &topic, partitions).await?;
    let sink = KafkaSink::new(brokers, &config.bus.kafka, producer, &topic, generation)?;
    tokio::task::block_in_place(|| sink.connect(std::time::Duration::from_secs(30)))?;
    Ok(AnySink::Kafka(sink))
}

/// Runs `apflow report`.
pub fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let (r, files) = night_report(
        args.archive.as_deref(),
        args.night,
        args.records.as_deref(),
        args.filter_matches.as_deref(),
        &args.out,
    )?;
    match r.day_obs {
        Some(n) => println!(
            "night {n}: {} alerts in {} visits",
            r.alerts,
            r.visits.len()
        ),
        None => println!(
            "{} alerts in {} visits (from the records)",
            r.alerts,
            r.visits.len()
        ),
    }
    if let Some(d) = &r.alerts_per_visit {
        println!(
            "  alerts per visit: min {:.0}, median {:.0}, mean {:.1}, max {:.0}; {} detectors with alerts",
            d.min,
            d.p50,
            d.mean,
            d.max,
            r.detectors.len()
        );
    }
    if let Some(l) = &r.latency {
        println!(
            "  latency of {} detector-visits: p50 {:.2} s, p90 {:.2} s, p98 {:.2} s, p99 {:.2} s, max {:.2} s; {:.1}% within {:.0} s ({} over)",
            l.detectors,
            l.p50_s,
            l.p90_s,
            l.p98_s,
            l.p99_s,
            l.max_s,
            100.0 * l.within_budget,
            l.budget_s,
            l.over_budget
        );
        let stages: Vec<String> = l
            .stage_medians_s
            .iter()
            .map(|(n, s)| format!("{n} {s:.3} s"))
            .collect();
        if !stages.is_empty() {
            println!("  stage medians: {}", stages.join(", "));
        }
    }
    for f in &r.filters {
        println!(
            "  filter {}: {} alerts forwarded to {} in {} visits, at most {} in one visit",
            f.filter, f.forwarded, f.topic, f.visits, f.max_per_visit
        );
    }
    println!("  wrote {}", files.summary.display());
    for p in [&files.latency_png, &files.alerts_png]
        .into_iter()
        .flatten()
    {
        println!("  wrote {}", p.display());
    }
    Ok(())
}
