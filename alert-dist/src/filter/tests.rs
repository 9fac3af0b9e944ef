//! Unit and property tests of the filter language.

use std::path::Path;

use apflow_apdb::schema::BANDS;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::view::{Detection, Val, field_table};
use super::*;
use crate::coords::galactic;

fn slot(p: &str) -> usize {
    field_table()
        .slot(p)
        .unwrap_or_else(|| panic!("no field {p}"))
}

/// A view with the given fields set and a history.
fn view(fields: &[(&str, Val)], history: Vec<Detection>) -> AlertView {
    let mut values = vec![Val::Null; field_table().fields.len()];
    for (p, v) in fields {
        values[slot(p)] = v.clone();
    }
    AlertView::from_parts(values, history)
}

fn det(mjd: f64, band: &str, flux: f64) -> Detection {
    Detection {
        mjd: Some(mjd),
        band: view::band_index(band),
        psf_flux: Some(flux),
    }
}

/// Evaluates with both evaluators, asserting they agree.
fn both(src: &str, v: &AlertView) -> Option<bool> {
    let f = CompiledFilter::new(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let mut steps = 0;
    let i = f.interpret(v, &mut steps);
    assert_eq!(f.eval(v), i, "compiled and interpreted differ on {src}");
    assert!(
        steps <= f.cost(),
        "{src}: {steps} steps > cost {}",
        f.cost()
    );
    i
}

fn err(src: &str) -> ExprError {
    match CompiledFilter::new(src) {
        Ok(_) => panic!("{src} was accepted"),
        Err(e) => e,
    }
}

fn sample() -> AlertView {
    view(
        &[
            ("diaSourceId", Val::Int(9_007_199_254_740_993)),
            ("diaSource.midpointMjdTai", Val::Float(130.0)),
            ("diaSource.band", Val::Str("r".into())),
            ("diaSource.psfFlux", Val::Float(4000.0)),
            ("diaSource.ra", Val::Float(150.0)),
            ("diaSource.dec", Val::Float(2.2)),
            ("diaSource.reliability", Val::Float(0.95)),
            ("diaSource.isDipole", Val::Bool(false)),
            ("diaObject.nDiaSources", Val::Int(4)),
            ("observation_reason", Val::Str("it's".into())),
        ],
        vec![
            det(100.0, "g", 1000.0),
            det(110.0, "r", 2000.0),
            det(120.0, "g", 500.0),
        ],
    )
}

#[test]
fn history_functions_follow_their_definitions() {
    let v = sample();
    let close = |src: &str, want: f64| {
        for op in ["BETWEEN", "NOT BETWEEN"] {
            let e = format!("{src} {op} {} AND {}", want - 1e-9, want + 1e-9);
            assert_eq!(both(&e, &v), Some(op == "BETWEEN"), "{e}");
        }
    };
    close("n_previous()", 3.0);
    close("days_since_first()", 30.0);
    close("flux_change()", 2000.0);
    close("mag_change()", -2.5 * 2f64.log10());
    close("colour('g', 'r')", 2.5 * 8f64.log10());
    close("color('r', 'g')", -2.5 * 8f64.log10());
    close("mag(diaSource.psfFlux)", 31.4 - 2.5 * 4000f64.log10());
    close("galactic_latitude()", galactic(150.0, 2.2).1);
    close("abs(-2.5)", 2.5);
    // No previous detection in i: colour and change are NULL.
    assert_eq!(both("colour('i', 'r') IS NULL", &v), Some(true));
    let first = view(
        &[
            ("diaSource.midpointMjdTai", Val::Float(130.0)),
            ("diaSource.band", Val::Str("z".into())),
            ("diaSource.psfFlux", Val::Float(-50.0)),
        ],
        vec![],
    );
    assert_eq!(both("n_previous() = 0", &first), Some(true));
    assert_eq!(both("days_since_first() = 0", &first), Some(true));
    assert_eq!(both("flux_change() IS NULL", &first), Some(true));
    // A negative flux has no magnitude.
    assert_eq!(both("mag(diaSource.psfFlux) IS NULL", &first), Some(true));
}

#[test]
fn sky_regions_select_the_position() {
    let v = sample(); // (150, 2.2)
    assert_eq!(both("cone(150.1, 2.2, 0.11)", &v), Some(true));
    assert_eq!(both("cone(150.1, 2.2, 0.09)", &v), Some(false));
    assert_eq!(
        both(
            "polygon(149.9, 2.1, 150.1, 2.1, 150.1, 2.3, 149.9, 2.3)",
            &v
        ),
        Some(true)
    );
    // Either winding.
    assert_eq!(
        both(
            "polygon(149.9, 2.3, 150.1, 2.3, 150.1, 2.1, 149.9, 2.1)",
            &v
        ),
        Some(true)
    );
    assert_eq!(
        both("polygon(150.05, 2.1, 150.2, 2.1, 150.2, 2.3)", &v),
        Some(false)
    );
    let nowhere = view(&[], vec![]);
    assert_eq!(both("cone(150, 2, 1)", &nowhere), None);
}

#[test]
fn null_follows_three_valued_logic() {
    let v = sample(); // snr is NULL
    let cases = [
        ("diaSource.snr > 5", None),
        ("NOT (diaSource.snr > 5)", None),
        ("diaSource.snr > 5 AND FALSE", Some(false)),
        ("FALSE AND diaSource.snr > 5", Some(false)),
        ("diaSource.snr > 5 AND TRUE", None),
        ("diaSource.snr > 5 OR TRUE", Some(true)),
        ("diaSource.snr > 5 OR FALSE", None),
        ("diaSource.snr IS NULL", Some(true)),
        ("diaSource.snr IS NOT NULL", Some(false)),
        ("diaSource.snr + 1 IS NULL", Some(true)),
        ("diaSource.snr = NULL", None),
        ("diaSource.band IN ('g', 'r')", Some(true)),
        ("diaSource.band IN ('g', NULL)", None),
        ("diaSource.band NOT IN ('g', NULL)", None),
        ("diaSource.band NOT IN ('g', 'i')", Some(true)),
        ("diaSource.snr IN (1, 2)", None),
        ("diaSource.reliability BETWEEN 0.9 AND NULL", None),
        ("diaSource.reliability BETWEEN 0.96 AND NULL", Some(false)),
        (
            "diaSource.reliability NOT BETWEEN 0.96 AND NULL",
            Some(true),
        ),
        ("NULL", None),
        ("NOT NULL", None),
    ];
    for (src, want) in cases {
        assert_eq!(both(src, &v), want, "{src}");
    }
    // Only TRUE passes.
    let f = CompiledFilter::new("NOT (diaSource.snr > 5)").expect("valid");
    assert!(!f.matches(&v));
}

#[test]
fn arithmetic_and_comparisons() {
    let v = sample();
    let cases = [
        ("7 / 2 = 3.5", Some(true)),
        ("7 % 3 = 1", Some(true)),
        ("-7 % 3 = -1", Some(true)),
        ("2 + 3 * 4 = 14", Some(true)),
        ("(2 + 3) * 4 = 20", Some(true)),
        ("1 / 0 IS NULL", Some(true)),
        ("1 % 0 IS NULL", Some(true)),
        ("9223372036854775807 + 1 IS NULL", Some(true)),
        ("-9223372036854775808 - 1 IS NULL", Some(true)),
        ("-(-9223372036854775808) IS NULL", Some(true)),
        ("abs(-9223372036854775808) IS NULL", Some(true)),
        ("1 = 1.0", Some(true)),
        ("2 > 1.5", Some(true)),
        // Integers compare exactly (above 2^53).
        ("diaSourceId = 9007199254740993", Some(true)),
        ("diaSourceId = 9007199254740992", Some(false)),
        ("diaSource.band = 'r'", Some(true)),
        ("diaSource.band == \"r\"", Some(true)),
        ("diaSource.band <> 'r'", Some(false)),
        ("diaSource.band < 's'", Some(true)),
        ("observation_reason = 'it''s'", Some(true)),
        ("diaSource.isDipole = FALSE", Some(true)),
        ("diaSource.isDipole != TRUE", Some(true)),
        (
            "diaObject.nDiaSources >= 4 and diaObject.nDiaSources < 5",
            Some(true),
        ),
        ("diaSource.psfFlux / 1000 = 4", Some(true)),
        ("-diaSource.psfFlux < 0 -- a comment", Some(true)),
    ];
    for (src, want) in cases {
        assert_eq!(both(src, &v), want, "{src}");
    }
}

#[test]
fn errors_point_at_line_and_column() {
    let e = err("diaSource.snr > 5 AND\n  diaSource.psfFlx > 3");
    assert_eq!((e.kind, e.line, e.column), (ErrorKind::UnknownField, 2, 3));
    assert_eq!(
        e.to_string(),
        "line 2, column 3: unknown field diaSource.psfFlx\n    diaSource.psfFlx > 3\n    ^^^^^^^^^^^^^^^^"
    );
    let e = err("diaSource.snr > > 5");
    assert_eq!((e.kind, e.line, e.column), (ErrorKind::Syntax, 1, 17));
    let e = err("diaSource.band > 5");
    assert_eq!((e.kind, e.column), (ErrorKind::Type, 1));
    let e = err("TRUE AND\ndiaSource.snr");
    assert_eq!((e.kind, e.line, e.column), (ErrorKind::Type, 2, 1));
    let e = err("diaSource.snr + 1");
    assert_eq!(e.kind, ErrorKind::Type);
    let e = err("cone(1, 2)");
    assert_eq!(e.kind, ErrorKind::Arity);
    let e = err("n_previous(1) > 0");
    assert_eq!(e.kind, ErrorKind::Arity);
    let e = err("polygon(1, 2, 3, 4) ");
    assert_eq!(e.kind, ErrorKind::Arity);
    let e = err("colour('g', 'q') > 0");
    assert_eq!((e.kind, e.column), (ErrorKind::BadArgument, 13));
    let e = err("cone(10, 95, 1)");
    assert_eq!((e.kind, e.column), (ErrorKind::BadArgument, 10));
    let e = err("cone(diaSource.ra, 0, 1)");
    assert_eq!(e.kind, ErrorKind::BadArgument);
    let e = err("polygon(0, 0, 4, 0, 1, 1, 0, 4)");
    assert_eq!(e.kind, ErrorKind::BadArgument);
    let e = err("  frobnicate() > 1");
    assert_eq!((e.kind, e.column), (ErrorKind::UnknownFunction, 3));
    let e = err("diaSource.band IN ('g', 1)");
    assert_eq!((e.kind, e.column), (ErrorKind::Type, 25));
    let e = err("diaSource.band IN ('g', diaSource.band)");
    assert_eq!(e.kind, ErrorKind::Type);
    let e = err("'unterminated");
    assert_eq!((e.kind, e.column), (ErrorKind::Syntax, 1));
    let e = err("1 = 99999999999999999999");
    assert_eq!((e.kind, e.column), (ErrorKind::Syntax, 5));
    let e = err("diaSource.snr > 5 diaSource.snr");
    assert_eq!((e.kind, e.column), (ErrorKind::Syntax, 19));
    let e = err("prvDiaSources.psfFlux > 1");
    assert!(e.message.contains("n_previous()"), "{}", e.message);
    let e = err("a NOT LIKE 'x'");
    assert_eq!(e.kind, ErrorKind::Syntax);
    // Columns count characters, not bytes.
    let e = err("'é' = diaSource.bnd");
    assert_eq!(e.column, 7);
}

#[test]
fn cost_is_bounded() {
    let one = CompiledFilter::new("n_previous() > 0").expect("valid");
    assert_eq!(one.cost(), 3 + view::MAX_HISTORY as u64);
    let many = (0..11)
        .map(|_| "n_previous() > 0")
        .collect::<Vec<_>>()
        .join(" AND ");
    assert_eq!(err(&many).kind, ErrorKind::TooCostly);
    let model = CostModel {
        history: 10,
        limit: 200,
    };
    assert!(CompiledFilter::with_cost_model(&many, &model).is_ok());
    let list = (0..300)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let src = format!("diaSourceId IN ({list})");
    assert!(CompiledFilter::with_cost_model(&src, &model).is_err());
    assert_eq!(CompiledFilter::new(&src).expect("valid").cost(), 302);
    // Too deep for the evaluators' stacks, however written.
    let deep = format!("{}TRUE{}", "(".repeat(300), ")".repeat(300));
    assert_eq!(err(&deep).kind, ErrorKind::Syntax);
    let chain = vec!["1"; 400].join(" + ");
    assert_eq!(err(&format!("{chain} > 0")).kind, ErrorKind::Syntax);
}

#[test]
fn the_three_decoders_give_the_same_view() {
    let v = bench::realistic_visit(7, 40, 8);
    let (inputs, dead) = crate::packet::inputs(
        &v.sources(),
        &v.context,
        &crate::packet::AssembleConfig::default(),
    );
    assert!(dead.is_empty());
    let mut enc = crate::packet::AlertEncoder::new();
    let mut with_history = 0;
    for a in &inputs {
        let bytes = enc.to_framed(a).expect("encodes");
        let direct = AlertView::decode_framed(&bytes).expect("direct decode");
        let decoded = crate::packet::decode_framed(&bytes).expect("apache-avro decode");
        let avro = AlertView::from_avro(&decoded.value).expect("from avro");
        let input = AlertView::from_input(a);
        assert_eq!(direct, avro);
        assert_eq!(direct, input);
        assert_eq!(
            direct.get(slot("diaSourceId")),
            &Val::Int(a.dia_source.dia_source_id.0)
        );
        with_history += usize::from(!direct.history().is_empty());
        // A truncated message is an error, not a panic.
        for cut in [bytes.len() - 1, bytes.len() / 2, 6] {
            assert!(AlertView::decode_framed(&bytes[..cut]).is_err());
        }
    }
    assert!(with_history > 10, "{with_history}");
    assert!(matches!(
        AlertView::decode_framed(&[0, 0, 0, 0, 7, 1]),
        Err(ViewError::UnknownSchema(7))
    ));
}

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/filters")
}

#[test]
fn shipped_filters_load_and_select_a_sensible_subset() {
    let set = FilterSet::load_dir(&deploy_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.len(), bench::DEPLOY_FILTERS.len());
    let v = bench::realistic_visit(11, 2000, 4);
    let (inputs, _) = crate::packet::inputs(
        &v.sources(),
        &v.context,
        &crate::packet::AssembleConfig::default(),
    );
    let views: Vec<AlertView> = inputs.iter().map(AlertView::from_input).collect();
    let mut counts = vec![0usize; set.len()];
    let mut out = Vec::new();
    for (a, view) in inputs.iter().zip(&views) {
        out.clear();
        set.matching(view, &mut out);
        for &i in &out {
            counts[i] += 1;
            let f = &set.filters()[i];
            // Independent checks of what each shipped filter means.
            match f.name.as_str() {
                "solar_system" => assert!(a.dia_source.ss_object_id.is_some()),
                "new_transients" => {
                    assert!(a.prv_dia_sources.as_ref().is_none_or(Vec::is_empty));
                    assert!(a.dia_source.reliability.is_some_and(|r| r >= 0.9));
                }
                "brightening_variables" => {
                    assert!(a.prv_dia_sources.as_ref().is_some_and(|p| p.len() >= 3))
                }
                "extragalactic" => {
                    assert!(galactic(a.dia_source.ra, a.dia_source.dec).1.abs() > 20.0)
                }
                other => panic!("unexpected filter {other}"),
            }
        }
    }
    for (f, n) in set.filters().iter().zip(&counts) {
        assert!(
            *n > 0 && *n < views.len() / 2,
            "{} selects {n} of {}",
            f.name,
            views.len()
        );
        assert_eq!(f.quota, DEFAULT_QUOTA);
        assert_eq!(f.topic, format!("alerts.filter.{}", f.name));
    }
}

#[test]
fn filter_file_errors_name_the_file_line_and_column() {
    let p = Path::new("f.toml");
    let m = CostModel::default();
    let text = "owner = \"me\"\nname = \"x\"\nexpression = '''\ndiaSource.snr > 5\nAND diaSource.bnd = 'r'\n'''\n";
    let e = Filter::from_toml(text, p, &m).expect_err("unknown field");
    assert_eq!((e.line, e.column), (5, 5));
    let shown = e.to_string();
    assert!(
        shown.starts_with("f.toml:5:5: unknown field diaSource.bnd"),
        "{shown}"
    );
    assert!(shown.ends_with("\n      ^^^^^^^^^^^^^"), "{shown}");
    let text = "owner = \"me\"\nname = \"x\"\nexpression = \"diaSource.band = \\\"r\\\" AND 1\"\n";
    let e = Filter::from_toml(text, p, &m).expect_err("type");
    assert_eq!(e.line, 3);
    assert!(
        e.message.contains("expression line 1, column 26"),
        "{}",
        e.message
    );
    let e = Filter::from_toml(
        "owner = \"me\"\nname = \"x\"\nexpression = \"TRUE\"\nqota = 3\n",
        p,
        &m,
    )
    .expect_err("unknown key");
    assert_eq!(e.line, 4);
    let e = Filter::from_toml(
        "owner = \"me\"\nname = \"a b\"\nexpression = \"TRUE\"\n",
        p,
        &m,
    )
    .expect_err("bad name");
    assert_eq!(e.line, 2);
    // At the value itself, not at the first "name" in the text.
    let e = Filter::from_toml(
        "# this filter's name\nowner = \"me\"\nname = \"a b\"\nexpression = \"TRUE\"\n",
        p,
        &m,
    )
    .expect_err("bad name");
    assert_eq!((e.line, e.column), (3, 8));
    let e = Filter::from_toml(
        "owner = \"me\"\nname = \"x\"\nexpression = \"TRUE\"\n# no topic here\ntopic = \"a b\"\n",
        p,
        &m,
    )
    .expect_err("bad topic");
    assert_eq!((e.line, e.column), (5, 9));
    let ok = Filter::from_toml(
        "owner = \"me\"\nname = \"x\"\nexpression = \"TRUE\"\nquota = 3\ntopic = \"t.x\"\n",
        p,
        &m,
    )
    .expect("valid");
    assert_eq!((ok.quota, ok.topic.as_str()), (3, "t.x"));
    let dup = |name: &str| {
        Filter::from_toml(
            &format!("owner = \"me\"\nname = \"{name}\"\nexpression = \"TRUE\"\n"),
            p,
            &m,
        )
        .expect("valid")
    };
    assert_eq!(
        FilterSet::new(vec![dup("a"), dup("a")])
            .expect_err("dup")
            .errors
            .len(),
        1
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.toml"), "owner = 1\n").expect("write");
    std::fs::write(
        dir.path().join("b.toml"),
        "owner = \"me\"\nname = \"b\"\nexpression = \"n_previous( > 1\"\n",
    )
    .expect("write");
    let e = FilterSet::load_dir(dir.path()).expect_err("two bad files");
    assert_eq!(e.errors.len(), 2);
    assert!(e.errors[1].path.ends_with("b.toml"));
    assert_eq!((e.errors[1].line, e.errors[1].column), (3, 27));
    assert!(FilterSet::load_dir(&dir.path().join("missing")).is_err());
}

#[test]
fn quota_passes_the_first_matches_of_each_visit() {
    let mut q = QuotaEngine::with_open_visits(vec![2, 0], 2);
    let d: Vec<_> = (0..4).map(|_| q.offer(10, 0)).collect();
    assert_eq!(
        d,
        [
            QuotaDecision::Pass,
            QuotaDecision::Pass,
            QuotaDecision::Drop,
            QuotaDecision::Drop
        ]
    );
    assert_eq!(q.offer(10, 1), QuotaDecision::Drop); // quota 0
    assert_eq!(q.offer(11, 0), QuotaDecision::Pass); // another visit, its own count
    assert_eq!(q.offer(10, 0), QuotaDecision::Drop);
    let c = q.counts(10).expect("open");
    assert_eq!((c.matched[0], c.passed[0], c.dropped(0)), (5, 2, 3));
    assert_eq!((c.matched[1], c.dropped(1)), (1, 1));
    // A third visit closes the oldest; its late matches are dropped.
    assert_eq!(q.offer(12, 0), QuotaDecision::Pass);
    assert!(q.counts(10).is_none());
    assert_eq!(q.offer(10, 0), QuotaDecision::Drop);
    assert_eq!(q.offer(9, 0), QuotaDecision::Drop);
    assert_eq!(q.late_drops(), 2);
    let closed = q.close_through(11);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].0, 11);
    assert_eq!(q.offer(11, 0), QuotaDecision::Drop);
    assert_eq!(q.offer(12, 0), QuotaDecision::Pass);
    assert_eq!(q.offer(12, 0), QuotaDecision::Drop);
    assert_eq!(q.offer(12, 5), QuotaDecision::Drop); // unknown filter
    // Everything since the engine started, over all visits; then the tally restarts.
    let t = q.take_counts();
    assert_eq!((t.matched[0], t.passed[0]), (12, 5));
    assert_eq!((t.matched[1], t.passed[1]), (1, 0));
    assert_eq!(q.take_counts().matched, [0, 0]);
}

#[test]
fn filter_metrics_count_matches_and_quota_drops_per_filter() {
    let m = CostModel::default();
    let set = FilterSet::new(vec![
        Filter::new("me", "metrics_a", "TRUE", 1, None, &m).expect("valid"),
        Filter::new("me", "metrics_b", "TRUE", 5, None, &m).expect("valid"),
    ])
    .expect("unique");
    let mut q = set.quota_engine();
    for _ in 0..3 {
        q.offer(1, 0);
        q.offer(1, 1);
    }
    crate::metrics::record_filter_counts(&set, &q.take_counts());
    let get = |c: &prometheus::IntCounterVec, f: &str| c.with_label_values(&[f]).get();
    assert_eq!(get(&crate::metrics::FILTER_MATCHES_TOTAL, "metrics_a"), 3);
    assert_eq!(
        get(&crate::metrics::FILTER_QUOTA_DROPS_TOTAL, "metrics_a"),
        2
    );
    assert_eq!(get(&crate::metrics::FILTER_MATCHES_TOTAL, "metrics_b"), 3);
    assert_eq!(
        get(&crate::metrics::FILTER_QUOTA_DROPS_TOTAL, "metrics_b"),
        0
    );
}

// ---- property tests -------------------------------------------------------------

const INT_FIELDS: [&str; 4] = [
    "diaSourceId",
    "diaSource.psfNdata",
    "diaObject.nDiaSources",
    "ssSource.diaDistanceRank",
];
const FLOAT_FIELDS: [&str; 6] = [
    "diaSource.psfFlux",
    "diaSource.reliability",
    "diaSource.snr",
    "diaSource.ra",
    "diaObject.firstDiaSourceMjdTai",
    "ssSource.galLat",
];
const BOOL_FIELDS: [&str; 2] = ["diaSource.isDipole", "diaSource.pixelFlags_saturated"];
const STR_FIELDS: [&str; 3] = [
    "diaSource.band",
    "observation_reason",
    "ssSource.designation",
];

fn random_view(seed: u64) -> AlertView {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fields: Vec<(&str, Val)> = Vec::new();
    let null = |rng: &mut ChaCha8Rng| rng.random_bool(0.2);
    for f in INT_FIELDS {
        let v = [i64::MAX, i64::MIN, -3, 0, 1, 2, 5, 9_007_199_254_740_993][rng.random_range(0..8)];
        fields.push((
            f,
            if null(&mut rng) {
                Val::Null
            } else {
                Val::Int(v)
            },
        ));
    }
    for f in FLOAT_FIELDS {
        let v = [-1.5, 0.0, 0.5, 2.0, 1000.0, 150.0, 1e300][rng.random_range(0..7)];
        fields.push((
            f,
            if null(&mut rng) {
                Val::Null
            } else {
                Val::Float(v)
            },
        ));
    }
    for f in BOOL_FIELDS {
        fields.push((
            f,
            if null(&mut rng) {
                Val::Null
            } else {
                Val::Bool(rng.random())
            },
        ));
    }
    for f in STR_FIELDS {
        let s = ["g", "r", "wfd", ""][rng.random_range(0..4)];
        fields.push((
            f,
            if null(&mut rng) {
                Val::Null
            } else {
                Val::Str(s.into())
            },
        ));
    }
    fields.retain(|(f, _)| *f != "diaSource.ra");
    let band = BANDS[rng.random_range(0..6)];
    fields.push(("diaSource.band", Val::Str(band.into())));
    fields.push(("diaSource.ra", Val::Float(rng.random_range(149.0..151.0))));
    fields.push(("diaSource.dec", Val::Float(rng.random_range(1.0..3.0))));
    if !null(&mut rng) {
        fields.push((
            "diaSource.midpointMjdTai",
            Val::Float(rng.random_range(100.0..200.0)),
        ));
    }
    let history = (0..rng.random_range(0..6))
        .map(|_| Detection {
            mjd: rng.random_bool(0.9).then(|| rng.random_range(0.0..150.0)),
            band: rng.random_bool(0.9).then(|| rng.random_range(0..6u8)),
            psf_flux: rng
                .random_bool(0.9)
                .then(|| rng.random_range(-500.0..5000.0)),
        })
        .collect();
    view(&fields, history)
}

fn select(xs: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(xs).prop_map(String::from).boxed()
}

fn num_expr() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        select(&INT_FIELDS),
        select(&FLOAT_FIELDS),
        (-3i64..4).prop_map(|i| i.to_string()),
        select(&[
            "0.5",
            "2.0",
            "-1.5",
            "1000.0",
            "NULL",
            "9223372036854775807"
        ]),
        select(&[
            "n_previous()",
            "days_since_first()",
            "flux_change()",
            "mag_change()",
            "colour('g', 'r')",
            "colour('r', 'i')",
            "galactic_latitude()",
        ]),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                select(&["+", "-", "*", "/", "%"]),
                inner.clone()
            )
                .prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            inner.clone().prop_map(|a| format!("abs({a})")),
            inner.prop_map(|a| format!("mag({a})")),
        ]
    })
    .boxed()
}

fn bool_expr() -> BoxedStrategy<String> {
    let cmp = select(&["=", "<>", "<", "<=", ">", ">="]);
    let leaf = prop_oneof![
        select(&BOOL_FIELDS),
        select(&["TRUE", "FALSE", "NULL"]),
        (num_expr(), cmp.clone(), num_expr()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
        (
            select(&STR_FIELDS),
            cmp,
            select(&["'g'", "'r'", "'wfd'", "NULL", "diaSource.band"])
        )
            .prop_map(|(a, o, b)| format!("{a} {o} {b}")),
        (
            num_expr(),
            prop::collection::vec(select(&["1", "2", "0.5", "NULL", "-3"]), 1..4),
            any::<bool>()
        )
            .prop_map(|(a, l, n)| format!(
                "{a} {}IN ({})",
                if n { "NOT " } else { "" },
                l.join(", ")
            )),
        (
            select(&STR_FIELDS),
            prop::collection::vec(select(&["'g'", "'r'", "NULL"]), 1..3)
        )
            .prop_map(|(a, l)| format!("{a} IN ({})", l.join(", "))),
        (num_expr(), num_expr(), num_expr(), any::<bool>()).prop_map(|(a, l, h, n)| format!(
            "{a} {}BETWEEN {l} AND {h}",
            if n { "NOT " } else { "" }
        )),
        (
            prop_oneof![num_expr(), select(&STR_FIELDS), select(&BOOL_FIELDS)],
            any::<bool>()
        )
            .prop_map(|(a, n)| format!("{a} IS {}NULL", if n { "NOT " } else { "" })),
        (149.0..151.0f64, 1.0..3.0f64, 0.0..1.5f64)
            .prop_map(|(r, d, x)| format!("cone({r}, {d}, {x})")),
        (149.0..151.0f64, 1.0..3.0f64, 0.01..1.0f64).prop_map(|(r, d, h)| format!(
            "polygon({}, {}, {}, {}, {}, {})",
            r - h,
            d - h,
            r + h,
            d - h,
            r,
            d + h
        )),
    ];
    leaf.prop_recursive(3, 16, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) AND ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) OR ({b})")),
            inner.clone().prop_map(|a| format!("NOT ({a})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a}) = ({b})")),
        ]
    })
    .boxed()
}

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

#[test]
fn compiled_agrees_with_the_interpreter() {
    let model = CostModel {
        history: view::MAX_HISTORY as u64,
        limit: u64::MAX,
    };
    let hits = std::cell::RefCell::new([0usize; 3]);
    runner(400)
        .run(
            &(bool_expr(), prop::collection::vec(any::<u64>(), 8)),
            |(src, seeds)| {
                let f = CompiledFilter::with_cost_model(&src, &model)
                    .map_err(|e| TestCaseError::fail(format!("{src}: {e}")))?;
                for s in seeds {
                    let v = random_view(s);
                    let mut steps = 0;
                    let want = f.interpret(&v, &mut steps);
                    prop_assert_eq!(f.eval(&v), want, "{} on view {}", src, s);
                    prop_assert!(steps <= f.cost());
                    hits.borrow_mut()[match want {
                        None => 0,
                        Some(false) => 1,
                        Some(true) => 2,
                    }] += 1;
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // The generator reaches all three outcomes often.
    let hits = hits.into_inner();
    assert!(hits.iter().all(|h| *h > 200), "{hits:?}");
}

const ALPHABET: &[char] = &[
    '(', ')', ',', '.', '\'', '"', '-', '+', '*', '/', '%', '<', '>', '=', '!', ' ', '\n', '0',
    '1', '9', 'e', 'a', 'N', 'é', '\t', '_',
];

#[test]
fn parser_and_checker_never_panic_and_cost_bounds_steps() {
    let valid = bool_expr();
    let mutated = (
        valid,
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                any::<u8>(),
                prop::sample::select(ALPHABET),
            ),
            1..4,
        ),
    )
        .prop_map(|(src, edits)| {
            let mut chars: Vec<char> = src.chars().collect();
            for (i, op, c) in edits {
                let k = i.index(chars.len() + 1);
                match op % 3 {
                    0 if k < chars.len() => {
                        chars.remove(k);
                    }
                    1 => chars.insert(k, c),
                    _ if k < chars.len() => chars[k] = c,
                    _ => chars.push(c),
                }
            }
            chars.into_iter().collect::<String>()
        });
    let keywords = prop::collection::vec(
        select(&[
            "AND",
            "OR",
            "NOT",
            "IN",
            "BETWEEN",
            "IS",
            "NULL",
            "TRUE",
            "(",
            ")",
            ",",
            "1",
            "2.5",
            "'r'",
            "diaSource.snr",
            "diaSource.band",
            "cone",
            "polygon",
            "colour",
            "n_previous",
            "=",
            "<",
            "+",
            "-",
            "/",
            "mag",
            "diaSource",
            ".",
            "--",
        ]),
        0..20,
    )
    .prop_map(|w| w.join(" "));
    let strategy = prop_oneof![bool_expr(), mutated, keywords, ".{0,40}"];
    let accepted = std::cell::Cell::new(0);
    runner(1500)
        .run(&(strategy, any::<u64>()), |(src, seed)| {
            if let Ok(f) = CompiledFilter::new(&src) {
                accepted.set(accepted.get() + 1);
                let v = random_view(seed);
                let mut steps = 0;
                let want = f.interpret(&v, &mut steps);
                prop_assert!(steps <= f.cost(), "{}: {} > {}", src, steps, f.cost());
                prop_assert_eq!(f.eval(&v), want);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let accepted = accepted.get();
    assert!(accepted > 300, "{accepted}");
}
