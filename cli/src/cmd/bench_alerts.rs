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
    /// The runs for each compression setting, in order: `apflow` (apflow's alert
    /// producer) and `baseline` (a bare rdkafka loop on the same bytes: how long the
    /// broker needs to accept them). The broker's storage grows with every run, which
    /// favours the first; for a fair comparison run each alone on a fresh broker.
    #[arg(long, value_delimiter = ',', default_value = "apflow,baseline")]
    pub runs: Vec<ProduceRun>,
    /// What is sent: `synthetic` (alert-shaped noise of `--size` bytes) or `packets`
    /// (real ~92 KB alert packets, 30 px FITS cutouts, 10 previous DiaSources, 20
    /// forced sources, cycled from 256 fixed-seed inputs; needed by `end-to-end`).
    #[arg(long, value_enum, default_value = "synthetic")]
    pub payload: Payload,
}

/// What `bench alerts-produce` sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    /// Alert-shaped noise of `--size` bytes.
    Synthetic,
    /// Real alert packets.
    Packets,
}

/// One run of `bench alerts-produce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProduceRun {
    /// apflow's alert producer (189 detectors at once, ledger, headers, metrics).
    Apflow,
    /// A bare rdkafka loop with the same client settings.
    Baseline,
    /// apflow end to end: each detector's packets encoded from their inputs by
    /// apflow's producer, each as it is handed to the client (`--payload packets`).
    EndToEnd,
}

#[cfg(not(feature = "kafka"))]
pub async fn run(_: AlertsProduceArgs, _: &crate::config::AppConfig) -> anyhow::Result<()> {
    anyhow::bail!("bench alerts-produce needs a build with the `kafka` feature")
}

#[cfg(feature = "kafka")]
pub async fn run(args: AlertsProduceArgs, config: &crate::config::AppConfig) -> anyhow::Result<()> {
    use apflow_alert_dist::bench::{
        ProduceFigures, baseline_produce, packet_alerts, produce_all, synthetic_alerts,
    };
    use apflow_alert_dist::producer::{Compression, ProducerConfig};
    use clap::ValueEnum as _;

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
    let inputs = match args.payload {
        Payload::Packets => apflow_alert_dist::synth::alert_inputs(42, 256),
        Payload::Synthetic if args.runs.contains(&ProduceRun::EndToEnd) => {
            anyhow::bail!("--runs end-to-end needs --payload packets (real packets to encode)")
        }
        Payload::Synthetic => Vec::new(),
    };
    let detectors = match args.payload {
        Payload::Synthetic => synthetic_alerts(args.messages, args.size, args.detectors, 256, 2026),
        Payload::Packets => packet_alerts(&inputs, args.messages, args.detectors)?,
    };
    let total_mb = detectors
        .iter()
        .flat_map(|d| &d.1)
        .map(|a| a.framed.len())
        .sum::<usize>() as f64
        / 1e6;
    println!(
        "alerts produce — {} alerts, {total_mb:.0} MB ({:?} payload), {} detectors, {} partitions, broker {brokers}",
        args.messages, args.payload, args.detectors, args.partitions
    );
    println!(
        "  {:<8} {:<9} {:>9} {:>10} {:>9} {:>13}",
        "compr.", "run", "seconds", "alerts/s", "MB/s", "client CPU s"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos()
        % 1_000_000_000;
    let cpu_now = apflow_core::time::process_cpu_seconds;
    let run_name = |run: ProduceRun| {
        run.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned())
    };
    for c in compressions {
        let pc = ProducerConfig {
            topic_template: format!("bench-alerts-{nanos}-{}-v{{major}}", c.as_str()),
            partitions: args.partitions,
            compression: c,
            ..config.producer.clone()
        };
        let mut done: Vec<(ProduceRun, ProduceFigures)> = Vec::new();
        for &run in &args.runs {
            // Each run has its own topic, named after it (…-v11-apflow, …-v11-baseline).
            let name = run_name(run);
            let topic_pc = ProducerConfig {
                topic_template: format!("{}-{name}", pc.topic_template),
                ..pc.clone()
            };
            let cpu0 = cpu_now();
            let f = match run {
                ProduceRun::Apflow => {
                    produce_all(&brokers, &config.bus.kafka, &topic_pc, &detectors, None).await?
                }
                ProduceRun::EndToEnd => {
                    produce_all(
                        &brokers,
                        &config.bus.kafka,
                        &topic_pc,
                        &detectors,
                        Some(&inputs),
                    )
                    .await?
                }
                ProduceRun::Baseline => {
                    let topic = topic_pc.topic(11);
                    baseline_produce(&brokers, &config.bus.kafka, &pc, &topic, &detectors).await?
                }
            };
            let cpu = cpu0.zip(cpu_now()).map_or(f64::NAN, |(a, b)| b - a);
            println!(
                "  {:<8} {name:<9} {:>9.2} {:>10.0} {:>9.1} {cpu:>13.2}",
                c.as_str(),
                f.seconds,
                f.alerts_per_s(),
                f.mb_per_s()
            );
            done.push((run, f));
        }
        if let Some((_, b)) = done.iter().find(|(r, _)| *r == ProduceRun::Baseline) {
            for (run, f) in done.iter().filter(|(r, _)| *r != ProduceRun::Baseline) {
                println!(
                    "  {:<8} {} / baseline: {:.2}",
                    c.as_str(),
                    run_name(*run),
                    f.seconds / b.seconds
                );
            }
        }
    }
    Ok(())
}
