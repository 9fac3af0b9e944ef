//! `apflow bench alerts-produce`: the produce part of the alert benchmark — 40,000
//! pre-serialised ~80 KB alerts to a Kafka-protocol broker with each compression
//! setting, through apflow's alert producer and through a bare rdkafka loop on the
//! same bytes (how long the broker needs to accept them).

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct AlertsProduceArgs {
    /// Alerts per run (Rubin's peak visit: 40,000).
    #[arg(long, default_value_t = 40_000)]
    pub messages: usize,
    /// Bytes per alert (~80 KB with cutouts).
    #[arg(long, default_value_t = 81_920)]
    pub size: usize,
    /// Detectors the alerts are spread over (sent concurrently).
    #[arg(long, default_value_t = 189)]
    pub detectors: u16,
    /// Compression settings to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "none,lz4,zstd,snappy")]
    pub compression: Vec<String>,
    /// Partitions of each benchmark topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Broker (`host:port`); default: the bus URL when it is kafka://.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Skip the bare-rdkafka baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Run the baseline before apflow's producer for each setting (the broker's
    /// storage grows with each run, so the order can favour the first).
    #[arg(long, conflicts_with = "no_baseline")]
    pub baseline_first: bool,
}

#[cfg(not(feature = "kafka"))]
pub async fn run(_: AlertsProduceArgs, _: &crate::config::AppConfig) -> anyhow::Result<()> {
    anyhow::bail!("bench alerts-produce needs a build with the `kafka` feature")
}

#[cfg(feature = "kafka")]
pub async fn run(args: AlertsProduceArgs, config: &crate::config::AppConfig) -> anyhow::Result<()> {
    use apflow_alert_dist::bench::{baseline_produce, produce_all, synthetic_alerts};
    use apflow_alert_dist::producer::{Compression, ProducerConfig};

    let brokers = match args.brokers {
        Some(b) => b,
        None => config
            .bus
            .kafka_brokers()
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow::anyhow!("no broker: pass --brokers or set APFLOW__BUS__URL=kafka://…")
            })?,
    };
    let compressions = args
        .compression
        .iter()
        .map(|c| c.parse::<Compression>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let detectors = synthetic_alerts(args.messages, args.size, args.detectors, 256, 2026);
    let total_mb = detectors
        .iter()
        .flat_map(|d| &d.1)
        .map(|a| a.framed.len())
        .sum::<usize>() as f64
        / 1e6;
    println!(
        "alerts produce — {} pre-serialised alerts × {} B ({total_mb:.0} MB), {} detectors, {} partitions, broker {brokers}",
        args.messages, args.size, args.detectors, args.partitions
    );
    println!(
        "  {:<8} {:>9} {:>10} {:>9}   {:>13} {:>10} {:>9}  {:>6}",
        "compr.", "apflow s", "alerts/s", "MB/s", "bare rdkafka s", "alerts/s", "MB/s", "ratio"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos()
        % 1_000_000_000;
    for c in compressions {
        let pc = ProducerConfig {
            topic_template: format!("bench-alerts-{nanos}-{}-v{{major}}", c.as_str()),
            partitions: args.partitions,
            compression: c,
            ..config.producer.clone()
        };
        // Each run has its own topic: apflow's `…-v11`, the baseline's `…-v11-bare`.
        let bare_topic = format!("{}-bare", pc.topic(11));
        let baseline =
            || baseline_produce(&brokers, &config.bus.kafka, &pc, &bare_topic, &detectors);
        let (ours, base) = if args.no_baseline {
            (
                produce_all(&brokers, &config.bus.kafka, &pc, &detectors).await?,
                None,
            )
        } else if args.baseline_first {
            let base = baseline().await?;
            (
                produce_all(&brokers, &config.bus.kafka, &pc, &detectors).await?,
                Some(base),
            )
        } else {
            let ours = produce_all(&brokers, &config.bus.kafka, &pc, &detectors).await?;
            (ours, Some(baseline().await?))
        };
        match base {
            Some(b) => println!(
                "  {:<8} {:>9.2} {:>10.0} {:>9.1}   {:>13.2} {:>10.0} {:>9.1}  {:>6.2}",
                c.as_str(),
                ours.seconds,
                ours.alerts_per_s(),
                ours.mb_per_s(),
                b.seconds,
                b.alerts_per_s(),
                b.mb_per_s(),
                ours.seconds / b.seconds
            ),
            None => println!(
                "  {:<8} {:>9.2} {:>10.0} {:>9.1}",
                c.as_str(),
                ours.seconds,
                ours.alerts_per_s(),
                ours.mb_per_s()
            ),
        }
    }
    Ok(())
}
