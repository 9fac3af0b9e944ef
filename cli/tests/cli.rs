//! The `apflow` binary, run as a user would.

mod common;
use common::apflow;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn run_prints_its_summary_and_serves_metrics_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_config(dir.path());
    let mut child = apflow()
        .args([
            "run",
            "--visits",
            "3",
            "--detectors",
            "2",
            "--size",
            "1024",
            "--cadence",
            "1500ms",
        ])
        .arg("--config")
        .arg(&config)
        .args(["--metrics-listen", "127.0.0.1:0", "--out"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("metrics: http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap()
        .to_owned();

    // Scrape while the night runs (visits are 1.5 s apart).
    let started = Instant::now();
    let mut scraped = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(body) = http_get(&addr, "/metrics")
            && (body.contains("apflow_run_visits_total 1")
                || body.contains("apflow_run_visits_total 2"))
        {
            scraped = body;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        scraped.starts_with("HTTP/1.0 200") || scraped.starts_with("HTTP/1.1 200"),
        "{scraped}"
    );
    for series in [
        "apflow_build_info{",
        "apflow_bus_messages_published_total{",
        "apflow_run_visits_total ",
    ] {
        assert!(
            scraped.contains(series),
            "{series} missing from a scrape during the run:\n{scraped}"
        );
    }
    assert!(http_get(&addr, "/healthz").unwrap().ends_with("ok\n"));

    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    let out = rest.join("\n");
    assert!(status.success(), "{out}");
    assert!(out.contains("summary"), "{out}");
    assert!(
        out.contains("6 read out, 6 ingested, 0 dead-lettered"),
        "{out}"
    );
    assert!(out.contains("100.0% within 60 s"), "{out}");
    // Every latency line, the alerts' included, is within the 60 s budget.
    let latency_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  latency "))
        .collect();
    assert_eq!(latency_lines.len(), 3, "{out}");
    for l in &latency_lines {
        assert!(l.ends_with("100.0% within 60 s"), "{l}");
    }
    assert!(latency_lines[2].contains("alerts archived"), "{out}");
    // Every detector went through the science core and the association stage, and
    // every DiaSource was associated exactly one way.
    let numbers = |prefix: &str| common::numbers(&out, prefix);
    let processed = numbers("processed");
    assert_eq!(processed[..2], [6, 0], "{out}");
    let dia_sources = processed[2];
    assert!(dia_sources > 0, "{out}");
    let associated = numbers("associated");
    assert_eq!(
        associated[0] + associated[1] + associated[2],
        dia_sources,
        "matched + new + solar-system = DiaSources: {out}"
    );
    // The visits are dithered pointings of one field: later visits find earlier
    // DiaObjects.
    assert!(
        associated[0] > 0,
        "nothing matched an earlier DiaObject: {out}"
    );
    // The APDB holds them.
    let stats = apflow()
        .args(["apdb", "stats", "--url"])
        .arg(format!(
            "sqlite://{}",
            dir.path().join("apdb.sqlite").display()
        ))
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    let stored = stats
        .lines()
        .find_map(|l| l.strip_prefix("DiaSource "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no DiaSource count: {stats}"));
    assert_eq!(stored, dia_sources, "{stats}");
    // One alert per DiaSource (or a dead letter saying why not), in the archive.
    let alerts = numbers("alerts");
    assert_eq!(alerts[1], 0, "nothing was archived before: {out}");
    assert_eq!(alerts[0] + alerts[2], dia_sources, "{out}");
    let archived = walk(&dir.path().join("archive").join("alerts"));
    assert_eq!(archived.len(), alerts[0], "{archived:?}");
    // Every visit ended with a VisitComplete counting its alerts.
    assert_eq!(numbers("visits complete")[..3], [3, 3, alerts[0]], "{out}");
    let shown = apflow()
        .args(["alert", "show"])
        .arg(&archived[0])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&shown.stderr)));
    let id = archived[0]
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".avro.gz"))
        .unwrap();
    assert_eq!(json["diaSource"]["diaSourceId"].to_string(), id, "{json}");
    // The same alert by id, from the archive.
    let by_id = apflow()
        .args(["alert", "show", id, "--archive"])
        .arg(dir.path().join("archive"))
        .output()
        .unwrap();
    assert!(
        by_id.status.success(),
        "{}",
        String::from_utf8_lossy(&by_id.stderr)
    );
    assert_eq!(by_id.stdout, shown.stdout);
    // The night report from the run's records and archive: every detector's latency,
    // every alert.
    let rep = dir.path().join("report");
    let o = apflow()
        .args(["report", "--records"])
        .arg(dir.path().join("records.jsonl"))
        .arg("--archive")
        .arg(dir.path().join("archive"))
        .arg("--out")
        .arg(&rep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rep.join("summary.json")).unwrap()).unwrap();
    assert_eq!(j["alerts"], alerts[0], "{j}");
    assert_eq!(j["latency"]["detectors"], 6, "{j}");
    assert_eq!(j["latency"]["within_budget"], 1.0, "{j}");
    assert!(rep.join("latency.png").is_file());
    // The camera wrote real raw files that the ingest stage validated.
    let raws = walk(&dir.path().join("raw"));
    assert_eq!(raws.len(), 6, "{raws:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_bad_config_file_gets_every_error_with_its_path_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apflow.toml");
    std::fs::write(&path, "[bus]\nurl = \"memory://\"\npartitions = \"four\"\ncolour = \"blue\"\n[telemetry]\nlog_format = \"xml\"\n").unwrap();
    let out = apflow()
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("3 configuration error(s)"), "{err}");
    for path in ["`bus.partitions`", "`bus.colour`", "`telemetry.log_format`"] {
        assert!(err.contains(path), "{path} missing in:\n{err}");
    }
}

#[test]
fn filter_check_prints_the_cost_or_the_error_with_a_caret() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = repo.join("deploy/filters/new_transients.toml");
    let out = apflow()
        .args(["filter", "check"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(": OK  new_transients"), "{text}");
    assert!(text.contains("cost 1026 of 10000"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "owner = \"me\"\nname = \"bad\"\nexpression = '''\ndiaSource.snr > 5\n  AND diaSource.psfFlx > 0\n'''\n",
    )
    .unwrap();
    let out = apflow()
        .args(["filter", "check"])
        .arg(&shipped)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.toml:5:7: unknown field diaSource.psfFlx"),
        "{err}"
    );
    assert!(err.contains("\n        ^^^^^^^^^^^^^^^^"), "{err}");

    // Files that load alone but not together (one name twice) are refused too.
    let out = apflow()
        .args(["filter", "check"])
        .arg(&shipped)
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("new_transients"), "{err}");
}

#[test]
fn config_show_masks_secrets_and_applies_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apflow.toml");
    std::fs::write(
        &path,
        "[bus.kafka.security]\nprotocol = \"sasl_ssl\"\nusername = \"u\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let out = apflow()
        .args(["config", "show", "--config"])
        .arg(&path)
        .env("APFLOW__BUS__TOPIC_PREFIX", "night42.")
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("****"));
    assert!(shown.contains("topic_prefix = \"night42.\""), "{shown}");
}

#[test]
fn simulate_writes_a_night_and_bad_options_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = apflow()
        .args([
            "simulate",
            "--visits",
            "1",
            "--detectors",
            "1",
            "--size",
            "256",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("night.json").exists());
    assert_eq!(walk(&dir.path().join("raw")).len(), 1);
    let bad = apflow()
        .args(["simulate", "--size", "1000", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("detector_size"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn apdb_create_info_and_stats_work_on_the_embedded_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db/apdb.sqlite").display());
    let out = apflow()
        .args(["apdb", "create", "--url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = apflow()
        .args(["apdb", "create", "--url", &url])
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "creating over an existing database must be refused"
    );
    let info = apflow()
        .args(["apdb", "info", "--url", &url])
        .output()
        .unwrap();
    assert!(info.status.success());
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("1.0"),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
    let stats = apflow()
        .args(["apdb", "stats", "--url", &url])
        .output()
        .unwrap();
    assert!(stats.status.success());
    assert!(
        String::from_utf8_lossy(&stats.stdout).contains("DiaSource"),
        "{}",
        String::from_utf8_lossy(&stats.stdout)
    );
    let scylla = apflow()
        .args(["apdb", "info", "--url", "scylla://127.0.0.1:1/ks"])
        .output()
        .unwrap();
    // No server answers there; without the feature, the error names the feature.
    let err = String::from_utf8_lossy(&scylla.stderr);
    assert!(!scylla.status.success(), "{err}");
    if !cfg!(feature = "scylla") {
        assert!(err.contains("--features scylla"), "{err}");
    }
}
