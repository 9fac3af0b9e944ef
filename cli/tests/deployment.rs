//! The deployment's services as separate processes on a real Kafka-protocol broker
//! (feature `kafka`, `APFLOW_TEST_KAFKA_BROKERS`; skipped, saying so, without it):
//! `apflow ingest` on a landing directory, two `apflow process` workers in one
//! consumer group, `apflow alert-dist` and `apflow archive run`. The test plays the
//! scheduler (NextVisit) and the camera (raw files landing) for a simulated night of
//! 2 visits × 2 detectors, then checks what the services made of it.
#![cfg(feature = "kafka")]

mod common;
use common::apflow;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use apflow_core::bus::{Bus, BusConfig, EventPublisher, KafkaConfig, Topics};
use apflow_core::events::{DetectorProcessed, DetectorStatus, NextVisit, VisitComplete};
use apflow_sim::{Night, NightSpec};

/// A service process whose output goes to a file; killed if the test ends first.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(name: &'static str, dir: &Path, config: &Path, args: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = apflow()
            .env("APFLOW_CONFIG", config)
            .args(args)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self { name, child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the service to exit on its own (`--idle-exit`), at most `limit`.
    fn wait(&mut self, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = self.output();
                assert!(status.success(), "{} failed: {out}", self.name);
                return out;
            }
            assert!(
                Instant::now() < until,
                "{} did not exit: {}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` from `addr` (HTTP/1.0): the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, base, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_process_a_night_across_two_workers_without_loss_or_duplicates() {
    let Ok(brokers) = std::env::var("APFLOW_TEST_KAFKA_BROKERS") else {
        eprintln!("APFLOW_TEST_KAFKA_BROKERS not set: deployment scenario skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let prefix = format!("t{}-{nanos}.", std::process::id());
    // lag_groups: the test broker (tansu) cannot list consumer groups.
    let config = d.join("apflow.toml");
    std::fs::write(
        &config,
        format!(
            "[bus]\nurl = \"kafka://{brokers}\"\ntopic_prefix = \"{prefix}\"\npartitions = 2\n\
             [bus.kafka]\nfetch_wait_max = \"10ms\"\n\
             lag_groups = [\"apflow-archive\"]\n\
             [producer]\ntopic_template = \"{prefix}alerts-v{{major}}\"\npartitions = 2\n\
             [telemetry]\nmetrics_listen = \"\"\n\
             [apdb]\nurl = \"sqlite://{}\"\n{}",
            d.join("apdb.sqlite").display(),
            common::SMALL_DETECTORS
        ),
    )
    .unwrap();

    // The night: raw files, calibrations, templates, reference catalogue, night.json.
    let night_dir = d.join("night");
    let o = apflow()
        .args([
            "simulate",
            "--visits",
            "2",
            "--detectors",
            "2",
            "--size",
            "1024",
        ])
        .arg("--out")
        .arg(&night_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(night_dir.join("night.json")).unwrap())
            .unwrap();
    let spec: NightSpec = serde_json::from_value(doc["spec"].clone()).unwrap();
    let night = Night::new(&spec).unwrap();

    let landing = d.join("landing");
    let staging = d.join("staging");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    let archive = d.join("archive");
    let night_arg = night_dir.to_str().unwrap();
    let (cfg, idle) = (config.as_path(), "45s");
    let _ingest = Service::start(
        "ingest",
        d,
        cfg,
        &[
            "ingest",
            "--watch",
            landing.to_str().unwrap(),
            "--interval",
            "200ms",
        ],
    );
    let mut workers: Vec<Service> = (0..2)
        .map(|i| {
            let ledger = d.join(format!("ledger-{i}.sqlite"));
            Service::start(
                if i == 0 { "process-0" } else { "process-1" },
                d,
                cfg,
                &[
                    "process",
                    "--night",
                    night_arg,
                    "--ledger",
                    ledger.to_str().unwrap(),
                    "--idle-exit",
                    idle,
                ],
            )
        })
        .collect();
    let mut dist = Service::start(
        "alert-dist",
        d,
        cfg,
        &[
            "alert-dist",
            "--listen",
            "127.0.0.1:0",
            "--lag-interval",
            "1s",
            "--idle-exit",
            idle,
        ],
    );
    let mut archiver = Service::start(
        "archive",
        d,
        cfg,
        &[
            "archive",
            "run",
            "--dir",
            archive.to_str().unwrap(),
            "--idle-exit",
            idle,
        ],
    );

    // The scheduler and the camera: each visit announced, then its raw files landed
    // (copied next to the landing directory, then renamed into it: whole files only).
    let bus = Bus::from_config(&BusConfig {
        url: format!("kafka://{brokers}"),
        kafka: KafkaConfig {
            fetch_wait_max: Duration::from_millis(10),
            ..KafkaConfig::default()
        },
        ..BusConfig::default()
    })
    .unwrap();
    let publisher = EventPublisher::new(bus.clone(), Topics::new(prefix.clone()));
    // Give the services time to create the topics and join their groups.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut raw = Vec::new();
    files(&night_dir.join("raw"), &night_dir.join("raw"), &mut raw);
    assert_eq!(raw.len(), 4 * usize::from(spec.snaps), "{raw:?}");
    let mut announced = Vec::new();
    for i in 0..night.visits().len() {
        let nv: NextVisit = night.next_visit(i).unwrap();
        publisher.publish(&nv).await.unwrap();
        for det in night.detectors() {
            for snap in 0..spec.snaps {
                let path = apflow_sim::night::raw_path(
                    Path::new(""),
                    nv.visit,
                    snap,
                    apflow_core::ids::DetectorId(det.id),
                );
                let rel = path.strip_prefix("raw").unwrap();
                assert!(raw.iter().any(|r| r == rel), "{rel:?} not simulated");
                let (tmp, dst) = (staging.join(rel), landing.join(rel));
                std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(night_dir.join("raw").join(rel), &tmp).unwrap();
                std::fs::rename(&tmp, &dst).unwrap();
            }
        }
        announced.push(nv.visit);
    }
    assert_eq!(announced.len(), 2);

    // Every visit completes: VisitComplete from alert-dist.
    let topics = Topics::new(prefix.clone());
    let mut complete = bus
        .subscribe(
            &[topics.of::<VisitComplete>()],
            &format!("{prefix}check-vc"),
        )
        .await
        .unwrap();
    let mut visits: BTreeMap<u64, VisitComplete> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(600);
    while visits.len() < 2 {
        assert!(
            Instant::now() < until,
            "visits complete: {visits:?}\n{}\n{}\n{}",
            workers[0].output(),
            workers[1].output(),
            dist.output()
        );
        if let Some(m) = complete.next_timeout(Duration::from_secs(5)).await.unwrap() {
            let e: VisitComplete = apflow_core::events::decode(&m.message.payload).unwrap();
            assert!(
                visits.insert(e.visit.0, e).is_none(),
                "a second VisitComplete for a visit"
            );
            m.ack();
        }
    }
    complete.close(Duration::from_secs(5)).await;
    for v in &announced {
        let e = &visits[&v.0];
        assert_eq!(e.detectors_expected, 2, "{e:?}");
        assert_eq!(e.detectors_done, 2, "{e:?}");
        assert!(e.detectors_failed.is_empty(), "{e:?}");
        assert!(e.n_alerts > 0, "{e:?}");
        let l = e.latency.as_ref().expect("a latency summary");
        assert_eq!(l.count, e.n_alerts, "{e:?}");
    }
    let n_alerts: u64 = visits.values().map(|e| e.n_alerts).sum();

    // alert-dist: the registry and the consumer lag of the groups on the alert topic.
    let dist_out = dist.output();
    let addr = dist_out
        .lines()
        .find_map(|l| l.strip_prefix("alert-dist: schema registry http://"))
        .and_then(|l| l.split('/').next())
        .unwrap_or_else(|| panic!("{dist_out}"))
        .to_owned();
    let subjects = http_get(&addr, "/subjects");
    assert!(
        subjects.contains(&format!("{prefix}alerts-v11-value")),
        "{subjects}"
    );
    let alert_topic = format!("{prefix}alerts-v11");
    let lag_line = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("apflow_bus_consumer_lag_messages{")
                    && l.contains("group=\"apflow-archive\"")
                    && l.contains(&format!("topic=\"{alert_topic}\""))
            })
            .map(str::to_owned)
    };
    let until = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let metrics = http_get(&addr, "/metrics");
        match lag_line(&metrics) {
            Some(l) if l.ends_with(" 0") => break l,
            other => {
                assert!(Instant::now() < until, "archive lag: {other:?}\n{metrics}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    assert!(line.ends_with(" 0"), "{line}");

    // The services stop on their own once idle.
    let archive_out = archiver.wait(Duration::from_secs(180));
    let dist_out = dist.wait(Duration::from_secs(180));
    let worker_out: Vec<String> = workers
        .iter_mut()
        .map(|w| w.wait(Duration::from_secs(180)))
        .collect();
    assert!(
        dist_out.contains("alert-dist: 2 visits complete"),
        "{dist_out}"
    );

    // Each detector processed exactly once, by one worker or the other.
    let processed: Vec<usize> = worker_out
        .iter()
        .map(|o| {
            let line = o
                .lines()
                .find(|l| l.starts_with("process: ") && l.contains(" detector(s) processed"))
                .unwrap_or_else(|| panic!("{o}"));
            line["process: ".len()..]
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(processed.iter().sum::<usize>(), 4, "{worker_out:?}");
    let mut outcomes = bus
        .subscribe(
            &[topics.of::<DetectorProcessed>()],
            &format!("{prefix}check-dp"),
        )
        .await
        .unwrap();
    let mut per_detector: BTreeMap<(u64, u16), usize> = BTreeMap::new();
    while let Some(m) = outcomes
        .next_timeout(Duration::from_secs(10))
        .await
        .unwrap()
    {
        let e: DetectorProcessed = apflow_core::events::decode(&m.message.payload).unwrap();
        assert_eq!(e.status, DetectorStatus::Ok, "{e:?}");
        *per_detector.entry((e.visit.0, e.detector.0)).or_default() += 1;
        m.ack();
        if per_detector.len() == 4 {
            break;
        }
    }
    outcomes.close(Duration::from_secs(5)).await;
    assert_eq!(per_detector.len(), 4, "{per_detector:?}");
    assert!(per_detector.values().all(|&n| n == 1), "{per_detector:?}");

    // The alert topic holds each alert once, and the archive kept every one.
    let mut alerts = bus
        .subscribe(
            std::slice::from_ref(&alert_topic),
            &format!("{prefix}check-alerts"),
        )
        .await
        .unwrap();
    let mut keys = BTreeSet::new();
    let mut n = 0u64;
    while let Some(m) = alerts.next_timeout(Duration::from_secs(10)).await.unwrap() {
        n += 1;
        keys.insert(String::from_utf8(m.message.key.clone().unwrap()).unwrap());
        m.ack();
        if n == n_alerts {
            break;
        }
    }
    alerts.close(Duration::from_secs(5)).await;
    assert_eq!((n, keys.len() as u64), (n_alerts, n_alerts));
    assert!(
        archive_out.contains(&format!(
            "archive: {n_alerts} alerts written, 0 already archived, 0 messages refused"
        )),
        "{archive_out}"
    );
    let store = apflow_alert_dist::archive::Archive::open(&archive).unwrap();
    for k in &keys {
        let framed = store.get_alert(k.parse().unwrap()).unwrap();
        assert_eq!(framed[0], 0, "Confluent magic byte");
    }
}
