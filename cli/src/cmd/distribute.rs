//! `apflow distribute --filters DIR`: the filtering service on its own
//! ([`apflow_alert_dist::filter::service`]): consumes the full alert topic once in a
//! consumer group, forwards each filter's matches (within its per-visit quota) to the
//! filter's topic on the same bus, reloads the filter directory when it changes, and
//! prints a per-filter summary when it stops (SIGINT, SIGTERM or `--idle-exit`).

use std::path::PathBuf;
use std::time::Duration;

use apflow_alert_dist::filter::FilterSet;
use apflow_alert_dist::filter::service::{FilterService, FilterServiceOptions, FilterSummary};
use apflow_core::bus::{Bus, EventPublisher, Topics};
use apflow_core::telemetry::http;
use clap::Args;

use crate::config::AppConfig;

/// `apflow distribute` options (each overrides `[filters]`).
#[derive(Debug, Args)]
pub struct DistributeArgs {
    /// Directory of filter files (`*.toml`, see `apflow filter check`).
    #[arg(long, value_name = "DIR")]
    pub filters: PathBuf,
    /// The full alert topic (default: the alert producer's, `[producer] topic_template`
    /// for the current schema's major version).
    #[arg(long)]
    pub topic: Option<String>,
    /// Consumer group on the alert topic (default `[filters] group`); a new group
    /// starts at the earliest retained alert.
    #[arg(long)]
    pub group: Option<String>,
    /// Exit after this long without a message (batch mode), e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_exit: Option<Duration>,
    /// How often the filter directory is checked for changes (`0s` disables hot
    /// reload; default `[filters] reload_interval`).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub reload_interval: Option<Duration>,
    /// Address for /metrics and /healthz (port 0 picks one; empty disables; default
    /// `[telemetry] metrics_listen`).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Also append one JSON line per forwarded alert to this file (filter, topic,
    /// visit, detector, diaSourceId).
    #[arg(long, value_name = "FILE")]
    pub matches_log: Option<PathBuf>,
}

/// The per-filter table: matched, passed, dropped, topic.
pub(crate) fn print_summary(s: &FilterSummary) {
    let (m, p, d) = s.totals();
    println!(
        "filters: {} consumed, {} not alerts, {} filters, {m} matched, {p} passed, {d} dropped; {} reloads, {} refused",
        s.consumed,
        s.bad,
        s.filters.len(),
        s.reloads,
        s.reloads_refused
    );
    let w = s
        .filters
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "  {:<w$} {:>9} {:>9} {:>9} {:>6}  topic",
        "filter", "matched", "passed", "dropped", "quota"
    );
    for f in &s.filters {
        println!(
            "  {:<w$} {:>9} {:>9} {:>9} {:>6}  {}",
            f.name,
            f.matched,
            f.passed,
            f.dropped(),
            f.quota,
            f.topic
        );
    }
}

/// Runs the filtering service until a signal or `--idle-exit`.
pub async fn run(args: DistributeArgs, config: &AppConfig) -> anyhow::Result<()> {
    let set = FilterSet::load_dir(&args.filters)?;
    // A metrics address in use must not stop the service: it runs without /metrics.
    let server = super::serve_http(args.metrics_listen.as_deref(), config, http::router())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "No /metrics: the address cannot be served.");
            eprintln!("warning: /metrics not served: {e}");
            None
        });
    if let Some(s) = &server {
        println!("metrics: http://{}/metrics", s.addr);
    }
    let bus = Bus::from_config(&config.bus)?;
    // The input (left as it is when it exists) and the dead-letter topic.
    let topic = super::ensure_alert_input(&bus, config, args.topic.as_deref()).await?;
    let topics = Topics::new(config.bus.topic_prefix.clone());
    let mut options = FilterServiceOptions::new(&topic, &config.filters);
    if let Some(g) = &args.group {
        options.group.clone_from(g);
    }
    options.dir = Some(args.filters.clone());
    if let Some(i) = args.reload_interval {
        options.reload_interval = (!i.is_zero()).then_some(i);
    }
    options.idle_exit = args.idle_exit;
    options.matches_log = args.matches_log.clone();
    options.dead_letters = Some(EventPublisher::new(bus.clone(), topics));
    println!(
        "distribute: {} filters from {} on {} topic {} (group {}{})",
        set.len(),
        args.filters.display(),
        bus.backend(),
        topic,
        options.group,
        options
            .reload_interval
            .map(|d| format!(", reload every {}", humantime::format_duration(d)))
            .unwrap_or_default()
    );
    for f in set.filters() {
        println!("  {} → {} (quota {}/visit)", f.name, f.topic, f.quota);
    }
    let service = FilterService::start(&bus, set, bus.clone(), options).await?;
    let summary = service.run(super::stop_signal()).await?;
    print_summary(&summary);
    if let Some(s) = server {
        s.task.abort();
    }
    Ok(())
}
