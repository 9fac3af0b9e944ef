//! The filtering service inside `apflow run` (in-process bus), checked against the
//! run's alert archive with the reference decoder and interpreter.

mod common;
use common::apflow;

use std::collections::{BTreeMap, BTreeSet};

use apflow_alert_dist::archive::Archive;
use apflow_alert_dist::filter::service::FilterMatch;
use apflow_alert_dist::filter::{AlertView, CostModel, Filter};
use apflow_alert_dist::packet::decode_framed;

fn ids_in(dir: &std::path::Path, out: &mut Vec<i64>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            ids_in(&p, out);
        } else if let Some(id) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".avro.gz"))
        {
            out.push(id.parse().unwrap());
        }
    }
}

#[test]
fn run_with_filters_forwards_each_match_once_within_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_config(dir.path());
    let filters = dir.path().join("filters");
    std::fs::create_dir(&filters).unwrap();
    let reliable = "diaSource.reliability >= 0.5";
    std::fs::write(
        filters.join("all.toml"),
        "owner = \"t\"\nname = \"all\"\nquota = 3\nexpression = 'TRUE'\n",
    )
    .unwrap();
    std::fs::write(
        filters.join("reliable.toml"),
        format!("owner = \"t\"\nname = \"reliable\"\nquota = 100000\nexpression = '{reliable}'\n"),
    )
    .unwrap();
    let out = dir.path().join("night");
    let o = apflow()
        .args(["run", "--visits", "2", "--detectors", "2", "--size", "1024"])
        .arg("--config")
        .arg(&config)
        .args(["--metrics-listen", "", "--filters"])
        .arg(&filters)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("  filters         2 filters: "))
        .unwrap_or_else(|| panic!("no filters line: {stdout}"));

    // What the archive holds, judged independently.
    let archive = Archive::open(out.join("archive")).unwrap();
    let mut ids = Vec::new();
    ids_in(&out.join("archive").join("alerts"), &mut ids);
    assert!(ids.len() > 3, "{stdout}");
    let f = Filter::new("t", "reliable", reliable, 1, None, &CostModel::default()).unwrap();
    let mut per_visit: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reliable_ids = BTreeSet::new();
    for &id in &ids {
        let framed = archive.get_alert(id).unwrap();
        let view = AlertView::from_avro(&decode_framed(&framed).unwrap().value).unwrap();
        let visit = match view.get_path("diaSource.visit") {
            Some(apflow_alert_dist::filter::view::Val::Int(v)) => *v as u64,
            other => panic!("{other:?}"),
        };
        *per_visit.entry(visit).or_default() += 1;
        if f.condition.interpret(&view, &mut 0) == Some(true) {
            reliable_ids.insert(id);
        }
    }
    assert_eq!(per_visit.len(), 2);

    let text = std::fs::read_to_string(out.join("filter-matches.jsonl")).unwrap();
    let matches: Vec<FilterMatch> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of =
        |name: &str| -> Vec<&FilterMatch> { matches.iter().filter(|m| m.filter == name).collect() };
    // `reliable` never reaches its quota: exactly the reliable alerts, once each.
    let got: Vec<i64> = of("reliable").iter().map(|m| m.dia_source_id).collect();
    assert_eq!(got.len(), reliable_ids.len(), "no repeats");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), reliable_ids);
    assert!(
        of("reliable")
            .iter()
            .all(|m| m.topic == "alerts.filter.reliable")
    );
    // `all` passes the first 3 of each visit.
    let mut all: BTreeMap<u64, u64> = BTreeMap::new();
    for m in of("all") {
        *all.entry(m.visit).or_default() += 1;
        assert!(ids.contains(&m.dia_source_id));
    }
    let expected: BTreeMap<u64, u64> = per_visit.iter().map(|(v, n)| (*v, (*n).min(3))).collect();
    assert_eq!(all, expected);
    // The summary line: alerts consumed, matched = all + reliable, passed = the lines.
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(
        n[..5],
        [
            2,
            ids.len() as u64,
            (ids.len() + reliable_ids.len()) as u64,
            matches.len() as u64,
            (ids.len() as u64 - expected.values().sum::<u64>())
        ],
        "{line}"
    );
}

/// `apflow distribute` as the Python end-to-end check calls it, on a real broker
/// (feature `kafka`, `APFLOW_TEST_KAFKA_BROKERS`; skipped, saying so, without it).
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_on_kafka_reads_from_the_earliest_offset_and_exits_when_idle() {
    use apflow_alert_dist::filter::bench::realistic_visit;
    use apflow_alert_dist::packet::{AlertEncoder, AssembleConfig, inputs};
    use apflow_core::bus::{Bus, BusConfig, KafkaConfig, Record, TopicSpec};
    use std::time::Duration;

    let Ok(brokers) = std::env::var("APFLOW_TEST_KAFKA_BROKERS") else {
        eprintln!("APFLOW_TEST_KAFKA_BROKERS not set: Kafka scenario skipped");
        return;
    };
    let bus = Bus::from_config(&BusConfig {
        url: format!("kafka://{brokers}"),
        kafka: KafkaConfig {
            fetch_wait_max: Duration::from_millis(10),
            ..KafkaConfig::default()
        },
        ..BusConfig::default()
    })
    .unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let topic = format!("t{}-alerts-{nanos}", std::process::id());
    let out_topic = format!("t{}-all-{nanos}", std::process::id());
    bus.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 2,
    }])
    .await
    .unwrap();
    // 30 alerts of one visit, published before the service starts.
    let v = realistic_visit(41, 30, 8);
    let (mut ins, _) = inputs(&v.sources(), &v.context, &AssembleConfig::default());
    let mut enc = AlertEncoder::new();
    for a in &mut ins {
        a.dia_source.visit = apflow_core::ids::VisitId(2_026_112_200_200);
        bus.publish(Record {
            topic: topic.clone(),
            key: Some(a.dia_source.dia_source_id.0.to_string()),
            payload: enc.to_framed(a).unwrap(),
            headers: Vec::new(),
        })
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("all.toml"),
        format!("owner = \"t\"\nname = \"all\"\nquota = 7\ntopic = \"{out_topic}\"\nexpression = 'TRUE'\n"),
    )
    .unwrap();
    let o = tokio::task::spawn_blocking({
        let (dir, topic, brokers) = (dir.path().to_owned(), topic.clone(), brokers.clone());
        move || {
            apflow()
                .env("APFLOW__BUS__URL", format!("kafka://{brokers}"))
                .args(["distribute", "--filters"])
                .arg(&dir)
                .args(["--topic", &topic, "--group", &format!("{topic}-g")])
                .args(["--idle-exit", "10s", "--metrics-listen", ""])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains(
            "filters: 30 consumed, 0 not alerts, 1 filters, 30 matched, 7 passed, 23 dropped"
        ),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .rfind(|l| l.trim_start().starts_with("all "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.ends_with(&out_topic), "{row}");
    // The filter topic holds exactly 7 of them.
    let mut sub = bus
        .subscribe(
            std::slice::from_ref(&out_topic),
            &format!("{out_topic}-check"),
        )
        .await
        .unwrap();
    let mut got = std::collections::BTreeSet::new();
    let mut n = 0;
    while let Some(d) = sub.next_timeout(Duration::from_secs(10)).await.unwrap() {
        n += 1;
        got.insert(d.message.key.clone().unwrap());
        d.ack();
        if got.len() == 7 {
            // Anything more would arrive within a few seconds.
            if let Some(extra) = sub.next_timeout(Duration::from_secs(3)).await.unwrap() {
                panic!("an 8th message: {:?}", extra.message.key);
            }
            break;
        }
    }
    sub.close(Duration::from_secs(5)).await;
    assert_eq!((got.len(), n), (7, 7));
}
