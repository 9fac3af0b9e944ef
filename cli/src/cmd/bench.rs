//! `apflow bench …`: throughput measurements run from the command line.

use std::time::{Duration, Instant};

use apflow_core::bus::{Bus, Record, TopicSpec};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::AppConfig;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish and consume N messages of a given size through the configured bus
    /// (`memory://` by default; set APFLOW__BUS__URL=kafka://… for a broker).
    Bus {
        /// Messages to send.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Bytes per message (an alert with cutouts is ~80 KB).
        #[arg(long, default_value_t = 81_920)]
        size: usize,
        /// Publishes in flight at once.
        #[arg(long, default_value_t = 1_000)]
        window: usize,
    },
    /// Fill an embedded APDB with a year of LSST-like history and time per-detector
    /// reads and writes at 10 %–100 % of it.
    Apdb {
        /// Visits per field per year.
        #[arg(long)]
        visits_per_year: Option<usize>,
        /// Timed visits per history fraction.
        #[arg(long)]
        repeats: Option<usize>,
        /// Directory for the database (a temporary one by default).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

fn bar(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>9} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .expect("valid template"),
    );
    pb
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand, config: &AppConfig) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Bus {
            messages,
            size,
            window,
        } => bench_bus(config, messages, size, window.max(1)).await,
        BenchCommand::Apdb {
            visits_per_year,
            repeats,
            dir,
        } => {
            let mut c = apflow_apdb::bench::BenchConfig::default();
            if let Some(v) = visits_per_year {
                c.visits_per_year = v;
            }
            if let Some(r) = repeats {
                c.repeats = r;
            }
            // A given directory is kept; otherwise a temporary one is removed afterwards.
            let tmp = tempfile::tempdir()?;
            let dir = dir.unwrap_or_else(|| tmp.path().to_owned());
            std::fs::create_dir_all(&dir)?;
            println!("{}", apflow_apdb::bench::run_sqlite(&c, &dir).await?);
            Ok(())
        }
    }
}

async fn bench_bus(
    config: &AppConfig,
    messages: usize,
    size: usize,
    window: usize,
) -> anyhow::Result<()> {
    let bus = Bus::from_config(&config.bus)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let topic = format!(
        "{}bench-{}",
        config.bus.topic_prefix,
        nanos % 1_000_000_000_000
    );
    bus.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: config.bus.partitions,
    }])
    .await?;
    let mut sub = bus
        .subscribe(std::slice::from_ref(&topic), &format!("{topic}-reader"))
        .await?;
    // Deterministic, incompressible-ish payload.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let payload: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();

    let consumer = tokio::spawn(async move {
        let pb = bar(messages, "consume");
        let started = Instant::now();
        for _ in 0..messages {
            match sub.next_timeout(Duration::from_secs(60)).await {
                Ok(Some(d)) => d.ack(),
                Ok(None) => {
                    anyhow::bail!("no message for 60 s after {} of {messages}", pb.position())
                }
                Err(e) => return Err(e.into()),
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        let elapsed = started.elapsed();
        sub.close(Duration::from_secs(5)).await;
        Ok(elapsed)
    });

    let pb = bar(messages, "publish");
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = window.min(messages - sent);
        let batch = (0..n).map(|i| {
            bus.publish(Record {
                topic: topic.clone(),
                key: Some(((sent + i) % 189).to_string()),
                payload: payload.clone(),
                headers: vec![],
            })
        });
        for r in futures::future::join_all(batch).await {
            r?;
        }
        sent += n;
        pb.set_position(sent as u64);
    }
    let publish = started.elapsed();
    pb.finish_and_clear();
    let consume = consumer.await??;
    let mb = (messages * size) as f64 / 1e6;
    println!(
        "bus {} — {messages} messages × {size} B ({mb:.0} MB)",
        bus.backend()
    );
    println!(
        "  publish: {:>8.2} s  {:>10.0} msg/s  {:>8.1} MB/s",
        publish.as_secs_f64(),
        messages as f64 / publish.as_secs_f64(),
        mb / publish.as_secs_f64()
    );
    println!(
        "  consume: {:>8.2} s  {:>10.0} msg/s  {:>8.1} MB/s (from subscription start)",
        consume.as_secs_f64(),
        messages as f64 / consume.as_secs_f64(),
        mb / consume.as_secs_f64()
    );
    Ok(())
}
