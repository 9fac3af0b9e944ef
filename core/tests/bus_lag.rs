//! Consumer lag per consumer group (issue #8): the same scenario on the in-process bus
//! and, with feature `kafka` and `APFLOW_TEST_KAFKA_BROKERS=host:port` set, on a real
//! Kafka-protocol broker (`source scripts/broker.sh; start_broker` starts one).
//!
//! A group named like a community broker's (`fink-test-…`) reads part of a fresh
//! two-partition topic and commits; an apflow-like group reads all of it. The lag read
//! from the broker side must be exact for both, and the monitor must export it.

use std::collections::BTreeSet;
use std::time::Duration;

use apflow_core::bus::{
    Bus, BusConfig, GroupLag, Record, Subscription, TopicSpec, spawn_lag_monitor,
};
use apflow_core::telemetry::metrics;

const WAIT: Duration = Duration::from_secs(30);
const CLOSE: Duration = Duration::from_secs(5);
/// Messages produced.
const N: usize = 20;
/// Messages the community-broker group reads and commits.
const K: usize = 7;

/// The buses available to this test run.
fn buses() -> Vec<(&'static str, BusConfig)> {
    let mut out = vec![(
        "memory",
        BusConfig {
            url: "memory://".into(),
            ..BusConfig::default()
        },
    )];
    match std::env::var("APFLOW_TEST_KAFKA_BROKERS") {
        Ok(brokers) if cfg!(feature = "kafka") => {
            let mut c = BusConfig {
                url: format!("kafka://{brokers}"),
                ..BusConfig::default()
            };
            c.kafka.fetch_wait_max = Duration::from_millis(10);
            c.kafka.linger = Duration::from_millis(1);
            c.kafka.compression = "none".into();
            out.push(("kafka", c));
        }
        Ok(_) => eprintln!(
            "APFLOW_TEST_KAFKA_BROKERS is set but the `kafka` feature is off: Kafka scenarios skipped"
        ),
        Err(_) => eprintln!("APFLOW_TEST_KAFKA_BROKERS not set: Kafka scenarios skipped"),
    }
    out
}

/// A fresh name per test and backend: the test broker cannot delete topics.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Publishes `n` keyed messages (spread over the partitions) to `topic`.
async fn publish(bus: &Bus, topic: &str, n: usize) {
    let records = (0..n)
        .map(|i| Record {
            topic: topic.to_owned(),
            key: Some(format!("k{i}")),
            payload: vec![i as u8; 16],
            headers: vec![],
        })
        .collect();
    bus.publish_all(records).await.expect("published");
}

/// Joins `group` on `topic`.
async fn join(bus: &Bus, topic: &str, group: &str) -> Subscription {
    bus.subscribe(&[topic.to_owned()], group)
        .await
        .expect("subscribed")
}

/// Reads `k` messages, acknowledges and commits them, leaves the group; returns the
/// partitions read from.
async fn read_and_commit(mut sub: Subscription, k: usize) -> BTreeSet<i32> {
    let mut partitions = BTreeSet::new();
    for i in 0..k {
        let d = sub
            .next_timeout(WAIT)
            .await
            .expect("consumed")
            .unwrap_or_else(|| panic!("message {i} of {k} did not arrive"));
        partitions.insert(d.message.partition);
        d.ack();
    }
    sub.commit().await.expect("committed");
    sub.close(CLOSE).await;
    partitions
}

/// The exported value of `apflow_bus_consumer_lag_messages{topic,group}`, if any.
fn gauge(topic: &str, group: &str) -> Option<i64> {
    let (t, g) = (format!("topic=\"{topic}\""), format!("group=\"{group}\""));
    metrics::render().lines().find_map(|l| {
        let rest = l.strip_prefix("apflow_bus_consumer_lag_messages{")?;
        let (labels, value) = rest.split_once("} ")?;
        let labels: Vec<&str> = labels.split(',').collect();
        (labels.contains(&t.as_str()) && labels.contains(&g.as_str()))
            .then(|| value.parse().expect("an integer gauge"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_per_group_is_exact_and_a_group_that_committed_everything_has_none() {
    for (name, config) in buses() {
        eprintln!("bus: {name}");
        let topic = unique("lag-alerts");
        let fink = unique("fink-test");
        let apflow = unique("apflow-filter");
        // tansu 0.6 cannot list groups: name ours (a broker that lists them reads both
        // anyway, and this is the configuration such a broker needs), and one that never
        // committed anything, which must not appear.
        let mut config = config;
        config.kafka.lag_groups = vec![fink.clone(), apflow.clone(), unique("never-joined")];
        let bus = Bus::from_config(&config).expect("bus opens");
        bus.ensure_topics(&[TopicSpec {
            name: topic.clone(),
            partitions: 2,
        }])
        .await
        .expect("topic created");
        // Both groups join before anything is published: on the in-process bus, what
        // every group has committed is dropped, and a group that joins later starts at
        // what is left.
        let fink_sub = join(&bus, &topic, &fink).await;
        let apflow_sub = join(&bus, &topic, &apflow).await;
        publish(&bus, &topic, N).await;
        let fink_partitions = read_and_commit(fink_sub, K).await;
        let apflow_partitions = read_and_commit(apflow_sub, N).await;
        assert_eq!(
            apflow_partitions.len(),
            2,
            "{N} keyed messages use both partitions"
        );

        // A topic that does not exist is skipped, not an error.
        let missing = unique("lag-no-such-topic");
        let lags: Vec<GroupLag> = bus
            .consumer_lag(&[missing, topic.clone()])
            .await
            .expect("lag read")
            .into_iter()
            .filter(|l| l.topic == topic)
            .collect();
        // The memory bus holds a group's place on every partition from its first
        // subscription; Kafka has committed offsets only where the group read something.
        let fink_expected = if name == "memory" {
            2
        } else {
            fink_partitions.len() as u32
        };
        assert_eq!(
            lags,
            vec![
                GroupLag {
                    topic: topic.clone(),
                    group: apflow.clone(),
                    lag: 0,
                    partitions: 2,
                },
                GroupLag {
                    topic: topic.clone(),
                    group: fink.clone(),
                    lag: (N - K) as i64,
                    partitions: fink_expected,
                },
            ],
            "{name}: lag per group, sorted by group"
        );

        // The monitor exports the same figures.
        let monitor =
            spawn_lag_monitor(bus.clone(), vec![topic.clone()], Duration::from_millis(50));
        let deadline = tokio::time::Instant::now() + WAIT;
        while (gauge(&topic, &fink), gauge(&topic, &apflow)) != (Some((N - K) as i64), Some(0))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        monitor.abort();
        assert_eq!(
            gauge(&topic, &fink),
            Some((N - K) as i64),
            "{name}: gauge of {fink}"
        );
        assert_eq!(gauge(&topic, &apflow), Some(0), "{name}: gauge of {apflow}");
    }
}

#[tokio::test]
async fn the_memory_bus_counts_each_group_from_its_own_position() {
    let bus = Bus::memory();
    let topic = unique("lag-memory");
    bus.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 3,
    }])
    .await
    .unwrap();
    // A group that joined before anything was published and read nothing: all is lag.
    let idle = join(&bus, &topic, "idle").await;
    publish(&bus, &topic, 30).await;
    // Joining after the publishes: the idle group holds every message for them.
    read_and_commit(join(&bus, &topic, "half").await, 15).await;
    read_and_commit(join(&bus, &topic, "all").await, 30).await;
    let lags = bus
        .consumer_lag(&[topic.clone(), topic.clone()])
        .await
        .unwrap();
    let got: Vec<(&str, i64, u32)> = lags
        .iter()
        .map(|l| (l.group.as_str(), l.lag, l.partitions))
        .collect();
    assert_eq!(
        got,
        vec![("all", 0, 3), ("half", 15, 3), ("idle", 30, 3)],
        "one row per group even when the topic is asked for twice"
    );
    drop(idle);
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_counts_failures_and_keeps_going() {
    // Nothing listens on port 1: every round fails after `lag_timeout`.
    let mut config = BusConfig {
        url: "kafka://127.0.0.1:1".into(),
        ..BusConfig::default()
    };
    config.kafka.lag_timeout = Duration::from_millis(200);
    let bus = Bus::from_config(&config).unwrap();
    let errors = || {
        metrics::BUS_ERRORS_TOTAL
            .with_label_values(&["kafka", "consumer_lag"])
            .get()
    };
    let before = errors();
    let monitor = spawn_lag_monitor(
        bus,
        vec![unique("lag-unreachable")],
        Duration::from_millis(10),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while errors() < before + 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        errors() >= before + 3,
        "three failed rounds counted in apflow_bus_errors_total (got {})",
        errors() - before
    );
    assert!(!monitor.is_finished(), "the monitor goes on after errors");
    monitor.abort();
}
