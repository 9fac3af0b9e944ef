//! Operations checks against a running apflow (issue 8):
//!
//! - every PromQL expression in `deploy/grafana/dashboards/` and `deploy/prometheus/rules/`
//!   parses, and uses only metrics, labels and label values apflow exports;
//! - `docs/METRICS.md` lists exactly the metrics apflow exports, with types and labels;
//! - a real Prometheus server scrapes a simulated night and evaluates our rules to the
//!   expected values (skipped, saying so, only when no `prometheus` binary runs and
//!   `APFLOW_REQUIRE_PROMETHEUS` is unset; `scripts/test` sets it).
//!
//! "What apflow exports" is the union of three scrapes, each in the Prometheus text
//! format served on `/metrics`: `apflow run` on a small night (scraped after the night,
//! held open with `--linger`); `apflow ingest` handed one corrupt file (dead letters,
//! rejected images); and this test process's registry after an APDB round trip and a
//! failed bus subscription, rendered by the function `/metrics` serves — `apflow run`
//! does not reach the APDB or a bus error yet.

mod common;
use common::apflow;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ is in the workspace")
        .to_owned()
}

/// A child process killed when dropped, so a failed assertion leaves no server behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on loopback")
        .port()
}

/// `GET path` over HTTP/1.0: (status, body).
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !ok() {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Reads a child's stdout up to and including the first line containing `marker`.
fn read_until(child: &mut Child, marker: &str) -> String {
    let mut out = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("utf-8 output");
        out.push_str(&line);
        out.push('\n');
        if line.contains(marker) {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// What apflow exports.

/// One or more scrapes: family name → type, sample name → label → values seen.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Scrape {
    /// Parses the Prometheus text exposition format (version 0.0.4).
    fn parse(text: &str) -> Self {
        let mut s = Self::default();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    s.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels) = match line.find('{') {
                Some(i) => (&line[..i], parse_labels(&line[i + 1..])),
                None => (line.split_whitespace().next().unwrap_or(line), Vec::new()),
            };
            let entry = s.samples.entry(name.to_owned()).or_default();
            for (k, v) in labels {
                entry.entry(k).or_default().insert(v);
            }
        }
        s
    }

    fn merge(&mut self, other: Scrape) {
        self.types.extend(other.types);
        for (name, labels) in other.samples {
            let entry = self.samples.entry(name).or_default();
            for (k, v) in labels {
                entry.entry(k).or_default().extend(v);
            }
        }
    }

    /// The family a sample belongs to (`x_bucket`, `x_sum`, `x_count` → histogram `x`).
    fn family_of<'a>(&self, sample: &'a str) -> Option<&'a str> {
        if self.types.contains_key(sample) {
            return Some(sample);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let f = sample.strip_suffix(suffix)?;
            matches!(
                self.types.get(f).map(String::as_str),
                Some("histogram" | "summary")
            )
            .then_some(f)
        })
    }
}

/// `a="x",b="y\"z"}` (everything after the opening brace) → pairs.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',' | ' ')) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == '}' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name, value));
    }
    out
}

/// `apflow run` on a small night, scraped after the night.
fn scrape_run() -> Scrape {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Killed(
        apflow()
            .args(["run", "--visits", "2", "--detectors", "2", "--size", "256"])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--linger",
                "120s",
                "--out",
            ])
            .arg(dir.path())
            // The shipped filters: the filtering service's per-filter series.
            .arg("--filters")
            .arg(repo().join("deploy/filters"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = read_until(&mut child.0, "still served");
    let addr = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("metrics: http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in:\n{out}"))
        .to_owned();
    assert!(out.contains("4 read out, 4 ingested"), "{out}");
    let (status, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

/// The ingest service given one corrupt file: it dead-letters it.
fn scrape_ingest_of_a_corrupt_file() -> Scrape {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("corrupt.fits"),
        b"SIMPLE  = not a FITS file",
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _child = Killed(
        apflow()
            .args(["ingest", "--interval", "100ms", "--watch"])
            .arg(dir.path())
            .env("APFLOW__TELEMETRY__METRICS_LISTEN", &addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut scraped = None;
    let done = wait_until(Duration::from_secs(60), || {
        if let Ok((200, body)) = http_get(&addr, "/metrics")
            && body.contains("apflow_dead_letters_total{")
        {
            scraped = Some(body);
            return true;
        }
        false
    });
    assert!(
        done,
        "apflow ingest did not dead-letter a corrupt file in 60 s"
    );
    Scrape::parse(&scraped.unwrap())
}

/// This process's registry after an APDB round trip (a read, a store, a refused store)
/// and a failed bus subscription.
fn scrape_apdb_and_bus_in_process() -> Scrape {
    use apflow_apdb::{AnyApdb, Apdb, ApdbConfig, DiaSource, StoreBatch};
    use apflow_core::ids::{DetectorId, VisitId};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("apdb.sqlite").display());
        let apdb = AnyApdb::create(&url, &ApdbConfig::default()).await.unwrap();
        assert!(!apdb.is_stored(VisitId(1), DetectorId(1)).await.unwrap());
        apdb.store(&StoreBatch::default()).await.unwrap();
        // A DiaSource with neither a DiaObject nor an SSObject is refused (bad input).
        let unassociated = StoreBatch {
            sources: vec![DiaSource::default()],
            ..StoreBatch::default()
        };
        assert!(apdb.store(&unassociated).await.is_err());
        let bus = apflow_core::bus::Bus::memory();
        let topics = ["apflow.no-such-topic".to_owned()];
        assert!(bus.subscribe(&topics, "ops-test").await.is_err());
    });
    Scrape::parse(&apflow_core::telemetry::metrics::render())
}

static EXPORTED: LazyLock<Scrape> = LazyLock::new(|| {
    let mut all = scrape_run();
    all.merge(scrape_ingest_of_a_corrupt_file());
    all.merge(scrape_apdb_and_bus_in_process());
    all
});

// ---------------------------------------------------------------------------------
// The PromQL we ship.

/// Every PromQL expression in the rules and dashboards: (where, expression).
fn shipped_expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules_dir = repo().join("deploy/prometheus/rules");
    for path in files(&rules_dir, "yml") {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
        for group in doc["groups"].as_array().expect("groups") {
            for rule in group["rules"].as_array().expect("rules") {
                let name = rule["record"].as_str().or(rule["alert"].as_str()).unwrap();
                let expr = rule["expr"].as_str().expect("expr").to_owned();
                out.push((format!("{}: {name}", path.display()), expr));
            }
        }
    }
    for path in files(&repo().join("deploy/grafana/dashboards"), "json") {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut panels: Vec<&serde_json::Value> = Vec::new();
        for p in doc["panels"].as_array().into_iter().flatten() {
            panels.push(p);
            panels.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let title = p["title"].as_str().unwrap_or("?");
                    out.push((
                        format!("{}: panel {title:?}", path.display()),
                        expr.to_owned(),
                    ));
                }
            }
        }
    }
    out
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Grafana's interval variables, replaced by durations so the expression parses.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

/// A label matcher: label, whether it is an equality, value.
type Matcher = (String, bool, String);

/// What one expression uses: selectors (metric name, label matchers) and the labels it
/// groups or matches on.
#[derive(Debug, Default)]
struct Uses {
    selectors: Vec<(String, Vec<Matcher>)>,
    grouping: BTreeSet<String>,
}

impl Uses {
    fn of(expr: &Expr) -> Self {
        let mut uses = Self::default();
        walk_expr(&mut uses, expr).expect("the visitor cannot fail");
        uses
    }

    fn selector(&mut self, vs: &VectorSelector) {
        let all = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        let name = vs.name.clone().or_else(|| {
            all.clone()
                .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
                .map(|m| m.value.clone())
        });
        let matchers = all
            .filter(|m| m.name != "__name__")
            .map(|m| {
                let equal = matches!(m.op, MatchOp::Equal);
                (m.name.clone(), equal, m.value.clone())
            })
            .collect();
        self.selectors
            .push((name.unwrap_or_else(|| "<no name>".into()), matchers));
    }
}

impl ExprVisitor for Uses {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        match expr {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            Expr::Aggregate(a) => {
                if let Some(m) = &a.modifier {
                    self.grouping.extend(m.labels().labels.iter().cloned());
                }
            }
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier {
                    if let Some(on) = &m.matching {
                        self.grouping.extend(on.labels().labels.iter().cloned());
                    }
                    if let Some(extra) = m.card.labels() {
                        self.grouping.extend(extra.labels.iter().cloned());
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Recording rules and the labels their series carry (what they aggregate by, less `le`).
fn recording_rules(exprs: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    exprs
        .iter()
        .filter_map(|(at, expr)| {
            let name = at.rsplit_once(": ")?.1;
            if !name.contains(':') {
                return None;
            }
            let uses = Uses::of(&parser::parse(expr).ok()?);
            let labels = uses.grouping.into_iter().filter(|l| l != "le").collect();
            Some((name.to_owned(), labels))
        })
        .collect()
}

/// Problems with `exprs` against what apflow exports; empty when all is well.
fn check_expressions(exprs: &[(String, String)], exported: &Scrape) -> Vec<String> {
    let recorded = recording_rules(exprs);
    // Series Prometheus itself makes: labels only.
    let synthetic = |name: &str| -> Option<BTreeSet<String>> {
        let labels: &[&str] = match name {
            "up" => &["job", "instance"],
            "ALERTS" => &["alertname", "alertstate", "severity"],
            _ => return None,
        };
        Some(labels.iter().map(|l| l.to_string()).collect())
    };
    let mut problems = Vec::new();
    for (at, expr) in exprs {
        let text = without_grafana_variables(expr);
        if text.contains('$') {
            problems.push(format!(
                "{at}: a Grafana variable the check does not know: {expr}"
            ));
            continue;
        }
        let ast = match parser::parse(&text) {
            Ok(ast) => ast,
            Err(e) => {
                problems.push(format!("{at}: does not parse ({e}): {expr}"));
                continue;
            }
        };
        let uses = Uses::of(&ast);
        let mut labels_here = BTreeSet::new();
        for (name, matchers) in &uses.selectors {
            // label → values exported (an empty set: values not known).
            let known: BTreeMap<String, BTreeSet<String>> = if let Some(labels) =
                exported.samples.get(name)
            {
                labels.clone()
            } else if let Some(labels) = recorded.get(name).cloned().or_else(|| synthetic(name)) {
                labels.into_iter().map(|l| (l, BTreeSet::new())).collect()
            } else {
                problems.push(format!("{at}: apflow exports no metric {name}"));
                continue;
            };
            labels_here.extend(known.keys().cloned());
            for (label, equal, value) in matchers {
                match known.get(label) {
                    None => problems.push(format!("{at}: {name} has no label {label}")),
                    Some(values)
                        if *equal
                            && !value.is_empty()
                            && !values.is_empty()
                            && !values.contains(value) =>
                    {
                        problems.push(format!(
                            "{at}: {name}{{{label}=\"{value}\"}} matches nothing apflow exports (it has {values:?})"
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for label in &uses.grouping {
            if !labels_here.contains(label) {
                problems.push(format!(
                    "{at}: uses label {label}, which none of its metrics has"
                ));
            }
        }
    }
    problems
}

#[test]
fn dashboards_and_rules_use_only_metrics_and_labels_apflow_exports() {
    let exprs = shipped_expressions();
    let from_rules = exprs.iter().filter(|(at, _)| at.contains("rules")).count();
    assert!(from_rules >= 10, "only {from_rules} rule expressions found");
    assert!(
        exprs.len() - from_rules >= 20,
        "only {} dashboard expressions found",
        exprs.len() - from_rules
    );
    let problems = check_expressions(&exprs, &EXPORTED);
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\nexported: {:#?}",
        problems.len(),
        problems.join("\n"),
        EXPORTED.samples
    );
}

#[test]
fn the_promql_check_catches_unknown_metrics_labels_and_values() {
    let bad = [
        "rate(apflow_no_such_metric_total[5m])",
        "sum by (stgae) (rate(apflow_dead_letters_total[5m]))",
        r#"apflow_ingest_images_total{statsu="ok"}"#,
        r#"apflow_ingest_images_total{status="okay"}"#,
        "sum(rate(apflow_ingest_images_total[$__rate_intervl]))",
        "sum(rate(apflow_ingest_images_total[5m])",
    ];
    let exprs: Vec<(String, String)> = bad
        .iter()
        .map(|e| ("test".to_owned(), e.to_string()))
        .collect();
    let problems = check_expressions(&exprs, &EXPORTED);
    assert_eq!(problems.len(), bad.len(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------
// docs/METRICS.md.

#[test]
fn metrics_doc_lists_exactly_the_metrics_apflow_exports() {
    type Catalogue = BTreeMap<String, (String, BTreeSet<String>)>;
    let doc = std::fs::read_to_string(repo().join("docs/METRICS.md")).unwrap();
    let mut documented = Catalogue::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let Some(name) = cells
            .first()
            .and_then(|c| c.strip_prefix("`apflow_"))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        assert_eq!(
            cells.len(),
            4,
            "docs/METRICS.md: row of {name} has not 4 cells"
        );
        let labels = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`'))
            .filter(|l| !l.is_empty() && *l != "—")
            .map(str::to_owned)
            .collect();
        documented.insert(format!("apflow_{name}"), (cells[1].to_owned(), labels));
    }

    let mut exported = Catalogue::new();
    for (sample, labels) in &EXPORTED.samples {
        let family = EXPORTED
            .family_of(sample)
            .unwrap_or_else(|| panic!("sample {sample} has no # TYPE"));
        let entry = exported
            .entry(family.to_owned())
            .or_insert_with(|| (EXPORTED.types[family].clone(), BTreeSet::new()));
        entry.1.extend(
            labels
                .keys()
                .filter(|l| *l != "le" && *l != "quantile")
                .cloned(),
        );
    }
    assert_eq!(
        documented, exported,
        "docs/METRICS.md (left) and the metrics apflow exports (right) differ: fix the catalogue"
    );
}

// ---------------------------------------------------------------------------------
// A real Prometheus.

fn prometheus_binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("APFLOW_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "prometheus".into());
    let runs = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if runs {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("APFLOW_REQUIRE_PROMETHEUS").is_none(),
        "APFLOW_REQUIRE_PROMETHEUS is set but {candidate:?} does not run: install Debian's \
         prometheus package (scripts/install-deps)"
    );
    eprintln!(
        "SKIPPED a_real_prometheus_scrapes_a_night_and_evaluates_the_rules: no prometheus \
         binary ({candidate:?}); install Debian's prometheus package or set APFLOW_PROMETHEUS"
    );
    None
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An instant query: (labels, value) per series.
fn query(addr: &str, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let (status, body) = http_get(addr, &format!("/api/v1/query?query={}", percent_encode(q)))
        .expect("Prometheus answers");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"));
    assert!(status == 200 && v["status"] == "success", "{q}: {body}");
    v["data"]["result"]
        .as_array()
        .expect("an instant vector")
        .iter()
        .map(|r| {
            let labels: BTreeMap<String, String> = r["metric"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value: f64 = r["value"][1]
                .as_str()
                .expect("a value")
                .parse()
                .expect("a number");
            (labels, value)
        })
        .collect()
}

fn single(addr: &str, q: &str) -> Option<f64> {
    match query(addr, q).as_slice() {
        [(_, v)] => Some(*v),
        _ => None,
    }
}

#[test]
fn a_real_prometheus_scrapes_a_night_and_evaluates_the_rules() {
    let Some(prometheus) = prometheus_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let apflow_addr = format!("127.0.0.1:{}", free_port());
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let rules = repo().join("deploy/prometheus/rules/apflow.rules.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: apflow\n    static_configs:\n      - targets: [\"{apflow_addr}\"]\n"
        ),
    )
    .unwrap();
    let log_path = dir.path().join("prometheus.log");
    let _prometheus = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("prometheus starts"),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || matches!(
            http_get(&prom_addr, "/-/ready"),
            Ok((200, _))
        )),
        "Prometheus did not become ready; its log:\n{}",
        log()
    );

    // A night paced so that Prometheus scrapes it while it runs: 4 visits × 2 detectors.
    let mut night = Killed(
        apflow()
            .args(["run", "--visits", "4", "--detectors", "2", "--size", "256"])
            .args([
                "--cadence",
                "2s",
                "--linger",
                "120s",
                "--metrics-listen",
                &apflow_addr,
            ])
            .arg("--out")
            .arg(dir.path().join("night"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = read_until(&mut night.0, "still served");
    assert!(
        out.contains("8 read out, 8 ingested, 0 dead-lettered"),
        "{out}"
    );

    // Raw series: what the night did.
    let images = r#"sum(apflow_ingest_images_total{job="apflow",status="ok"})"#;
    assert!(
        wait_until(Duration::from_secs(30), || single(&prom_addr, images)
            == Some(8.0)),
        "Prometheus never saw the 8 ingested images: {:?}; its log:\n{}",
        query(&prom_addr, images),
        log()
    );
    assert_eq!(single(&prom_addr, "apflow_run_visits_total"), Some(4.0));
    assert_eq!(single(&prom_addr, r#"up{job="apflow"}"#), Some(1.0));

    // Recording rules, evaluated every second: every image within the 60 s budget.
    let ratio =
        r#"stage:apflow_latency_since_readout_seconds:over_budget_ratio_10m{stage="ingest"}"#;
    // The rule is NaN (0/0) while its window holds no increment of the counters — an
    // evaluation between two scrapes that saw the same count — so wait for a number.
    assert!(
        wait_until(Duration::from_secs(30), || single(&prom_addr, ratio)
            .is_some_and(|v| !v.is_nan())),
        "the recording rules produced no number: {:?}; its log:\n{}",
        single(&prom_addr, ratio),
        log()
    );
    assert_eq!(single(&prom_addr, ratio), Some(0.0));
    let p98 = single(
        &prom_addr,
        r#"stage:apflow_latency_since_readout_seconds:p98_5m{stage="ingest"}"#,
    )
    .expect("a p98 latency for ingest");
    assert!(p98 > 0.0 && p98 <= 60.0, "p98 {p98}");

    // Every rule loaded and evaluates without error; no alert fires on a healthy night.
    let rule_health = || -> (usize, Vec<String>, String) {
        let (_, body) = http_get(&prom_addr, "/api/v1/rules").expect("Prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let unhealthy = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| r.to_string())
            .collect();
        (rules.len(), unhealthy, body)
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (n, unhealthy, _) = rule_health();
            n >= 10 && unhealthy.is_empty()
        }),
        "rules not loaded or not healthy: {:?}",
        rule_health()
    );
    // Every expression of the rules and dashboards evaluates on a real Prometheus (the
    // parser cannot see execution errors such as many-to-many matches).
    for (at, expr) in shipped_expressions() {
        let q = percent_encode(&without_grafana_variables(&expr));
        let (status, body) = http_get(&prom_addr, &format!("/api/v1/query?query={q}")).unwrap();
        assert!(
            status == 200 && body.contains(r#""status":"success""#),
            "{at}: {expr}: {body}"
        );
    }
    let firing = query(&prom_addr, r#"ALERTS{alertstate="firing"}"#);
    assert!(
        firing.is_empty(),
        "alerts fire on a healthy night: {firing:?}"
    );
}
