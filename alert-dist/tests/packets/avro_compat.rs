//! Our hand-written Avro encoder against apache-avro: the bytes decode into exactly
//! the values put in, equal apache-avro's own encoding, and resolve with Rubin's
//! `lsst.v11_0` alert schema as reader.

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value as A;
use apache_avro::writer::datum::GenericDatumWriter;
use apflow_alert_dist::packet::{AlertEncoder, AlertInput, ss_source_values};
use apflow_alert_dist::schema::{
    SCHEMA_ID, parsed_writer_schema, rubin_reader_schema, ss_source_columns,
};
use apflow_alert_dist::{synth, wire};
use apflow_apdb::schema::{Column, DiaForcedSource, DiaObject, DiaSource, Record, Value};

/// The record schema called `name`, searched through the tree.
fn find_record<'a>(s: &'a Schema, name: &str) -> Option<&'a RecordSchema> {
    match s {
        Schema::Record(r) if r.name.name() == name => Some(r),
        Schema::Record(r) => r.fields.iter().find_map(|f| find_record(&f.schema, name)),
        Schema::Union(u) => u.variants().iter().find_map(|v| find_record(v, name)),
        Schema::Array(a) => find_record(&a.items, name),
        _ => None,
    }
}

fn conv(v: &Value) -> Option<A> {
    Some(match v {
        Value::Null => return None,
        Value::Long(x) => A::Long(*x),
        Value::Int(x) => A::Int(*x),
        Value::Double(x) => A::Double(*x),
        Value::Float(x) => A::Float(*x),
        Value::Boolean(x) => A::Boolean(*x),
        Value::String(x) => A::String(x.clone()),
        other => panic!("unexpected {other:?}"),
    })
}

/// The datum a record should decode to, built from the parsed writer schema and the
/// APDB columns by name (independently of the encoder's field plans).
fn expected_record(rs: &RecordSchema, cols: &[Column], values: &[Value]) -> A {
    A::Record(
        rs.fields
            .iter()
            .map(|f| {
                let v = cols
                    .iter()
                    .position(|c| c.avro && c.name == f.name)
                    .and_then(|i| conv(&values[i]));
                let val = match (&f.schema, v) {
                    (Schema::Union(_), None) => A::Union(0, Box::new(A::Null)),
                    (Schema::Union(_), Some(x)) => A::Union(1, Box::new(x)),
                    (_, Some(x)) => x,
                    (_, None) => panic!("{} is required but has no value", f.name),
                };
                (f.name.clone(), val)
            })
            .collect(),
    )
}

fn some(v: A) -> A {
    A::Union(1, Box::new(v))
}

fn none() -> A {
    A::Union(0, Box::new(A::Null))
}

fn expected_alert(w: &Schema, a: &AlertInput) -> A {
    let src = find_record(w, "diaSource").unwrap();
    let obj = find_record(w, "diaObject").unwrap();
    let fs = find_record(w, "diaForcedSource").unwrap();
    let ss = find_record(w, "ssSource").unwrap();
    let (sc, oc, fc) = (
        DiaSource::columns(),
        DiaObject::columns(),
        DiaForcedSource::columns(),
    );
    let opt_s = |s: &Option<String>| s.clone().map_or(none(), |s| some(A::String(s)));
    let arr = |items: Option<A>| items.map_or(none(), some);
    let bytes = |b: Option<&Vec<u8>>| b.map_or(none(), |b| some(A::Bytes(b.clone())));
    A::Record(vec![
        ("diaSourceId".into(), A::Long(a.dia_source.dia_source_id.0)),
        (
            "observation_reason".into(),
            opt_s(&a.context.observation_reason),
        ),
        ("target_name".into(), opt_s(&a.context.target_name)),
        (
            "diaSource".into(),
            expected_record(src, &sc, &a.dia_source.to_values()),
        ),
        (
            "prvDiaSources".into(),
            arr(a.prv_dia_sources.as_ref().map(|v| {
                A::Array(
                    v.iter()
                        .map(|s| expected_record(src, &sc, &s.to_values()))
                        .collect(),
                )
            })),
        ),
        (
            "prvDiaForcedSources".into(),
            arr(a.prv_dia_forced_sources.as_ref().map(|v| {
                A::Array(
                    v.iter()
                        .map(|s| expected_record(fs, &fc, &s.to_values()))
                        .collect(),
                )
            })),
        ),
        (
            "diaObject".into(),
            a.dia_object
                .as_ref()
                .map_or(none(), |o| some(expected_record(obj, &oc, &o.to_values()))),
        ),
        (
            "ssSource".into(),
            ss_source_values(&a.dia_source, a.ss_object.as_ref()).map_or(none(), |v| {
                some(expected_record(ss, &ss_source_columns(), &v))
            }),
        ),
        ("mpc_orbits".into(), none()),
        (
            "cutoutDifference".into(),
            bytes(a.cutouts.as_ref().map(|c| &c.difference)),
        ),
        (
            "cutoutScience".into(),
            bytes(a.cutouts.as_ref().map(|c| &c.science)),
        ),
        (
            "cutoutTemplate".into(),
            bytes(a.cutouts.as_ref().map(|c| &c.template)),
        ),
    ])
}

/// A sample covering every branch: DiaObject sources with history, a solar-system
/// source (no history, ssSource), one without cutouts or scheduler fields, one with
/// empty history and nulls in nullable columns.
fn sample() -> Vec<AlertInput> {
    let mut v = synth::alert_inputs(7, 10);
    assert!(v.iter().any(|a| a.dia_source.ss_object_id.is_some()));
    let mut bare = v[0].clone();
    bare.cutouts = None;
    bare.context = Default::default();
    bare.prv_dia_sources = Some(Vec::new());
    bare.dia_source.psf_flux = None;
    bare.dia_source.is_dipole = None;
    bare.dia_object.as_mut().unwrap().bands.0[2].psf_flux_mean = None;
    v.push(bare);
    v
}

#[test]
fn our_bytes_decode_to_the_values_put_in_and_equal_apache_avro_encoding() {
    let w = parsed_writer_schema().unwrap();
    let mut enc = AlertEncoder::new();
    for a in sample() {
        let framed = enc.to_framed(&a).unwrap();
        let (id, body) = wire::unframe(&framed).unwrap();
        assert_eq!(id, SCHEMA_ID);
        let expected = expected_alert(&w, &a);
        let mut r = body;
        let decoded = GenericDatumReader::builder(&w)
            .build()
            .unwrap()
            .read_value(&mut r)
            .unwrap();
        assert!(r.is_empty(), "{} bytes left over", r.len());
        assert!(
            decoded == expected,
            "decoded datum differs for {:?}",
            a.dia_source.dia_source_id
        );
        let theirs = GenericDatumWriter::builder(&w)
            .build()
            .unwrap()
            .write_value_to_vec(expected)
            .unwrap();
        assert_eq!(theirs.as_slice(), body, "apache-avro encodes differently");
    }
}

fn field<'a>(v: &'a A, name: &str) -> &'a A {
    let A::Record(fs) = v else {
        panic!("not a record: {v:?}")
    };
    let v = &fs
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1;
    match v {
        A::Union(_, b) => b,
        v => v,
    }
}

#[test]
fn rubin_lsst_v11_0_reads_our_packets() {
    let w = parsed_writer_schema().unwrap();
    let (reader, named) = rubin_reader_schema().unwrap();
    let named: Vec<&Schema> = named.iter().collect();
    let mut enc = AlertEncoder::new();
    for a in sample() {
        let framed = enc.to_framed(&a).unwrap();
        let mut body = &framed[5..];
        let v = GenericDatumReader::builder(&w)
            .reader_schema(&reader)
            .reader_schemata(named.clone())
            .and_then(|b| b.build())
            .and_then(|r| r.read_value(&mut body))
            .unwrap_or_else(|e| panic!("lsst.v11_0 cannot read our alert: {e}"));
        let ds = &a.dia_source;
        assert_eq!(field(&v, "diaSourceId"), &A::Long(ds.dia_source_id.0));
        let src = field(&v, "diaSource");
        assert_eq!(field(src, "ra"), &A::Double(ds.ra));
        assert_eq!(field(src, "visit"), &A::Long(ds.visit.0 as i64));
        assert_eq!(field(src, "detector"), &A::Int(i32::from(ds.detector.0)));
        assert_eq!(
            field(src, "psfFlux"),
            &ds.psf_flux.map_or(A::Null, A::Float)
        );
        assert_eq!(field(src, "band"), &A::String(ds.band.clone()));
        match &a.cutouts {
            Some(c) => assert_eq!(
                field(&v, "cutoutDifference"),
                &A::Bytes(c.difference.clone())
            ),
            None => assert_eq!(field(&v, "cutoutDifference"), &A::Null),
        }
        match ds.ss_object_id {
            Some(id) => {
                let ss = field(&v, "ssSource");
                assert_eq!(field(ss, "ssObjectId"), &A::Long(id));
                assert!(matches!(field(ss, "eclLambda"), A::Double(x) if (0.0..360.0).contains(x)));
                assert_eq!(field(&v, "diaObject"), &A::Null);
                assert_eq!(field(&v, "prvDiaSources"), &A::Null);
            }
            None => {
                let o = field(&v, "diaObject");
                let obj = a.dia_object.as_ref().unwrap();
                assert_eq!(field(o, "diaObjectId"), &A::Long(obj.dia_object_id.0));
                assert_eq!(field(o, "nDiaSources"), &A::Int(obj.n_dia_sources));
                let A::Array(prv) = field(&v, "prvDiaSources") else {
                    panic!()
                };
                assert_eq!(prv.len(), a.prv_dia_sources.as_ref().unwrap().len());
                let A::Array(f) = field(&v, "prvDiaForcedSources") else {
                    panic!()
                };
                assert_eq!(f.len(), a.prv_dia_forced_sources.as_ref().unwrap().len());
            }
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut enc = AlertEncoder::new();
    let mut out = vec![1, 2, 3];
    // A DiaSource whose designation-free ssSource is fine, but a framed message with
    // another schema id is refused, and garbage does not decode.
    let a = &synth::alert_inputs(3, 1)[0];
    enc.encode_framed(a, &mut out).unwrap();
    assert_eq!(&out[..3], &[1, 2, 3]);
    let framed = out.split_off(3);
    let mut other = framed.clone();
    other[4] = 0x4d; // id 1101
    assert!(matches!(
        apflow_alert_dist::packet::decode_framed(&other),
        Err(apflow_alert_dist::packet::PacketError::UnknownSchema(1101))
    ));
    assert!(apflow_alert_dist::packet::decode_framed(&framed[..framed.len() / 2]).is_err());
    assert!(apflow_alert_dist::packet::decode_framed(&[0, 0]).is_err());
    let d = apflow_alert_dist::packet::decode_framed(&framed).unwrap();
    let j = apflow_alert_dist::packet::to_json(&d);
    assert_eq!(j["diaSourceId"], a.dia_source.dia_source_id.0);
    assert_eq!(j["cutoutScience"]["width"], 30);
    assert_eq!(j["_schema_id"], 1100);
}

mod random_records {
    //! Property test (fixed seed): alerts built from random records — every column
    //! random or null where nullable, extreme integers, NaN and infinite floats, Unicode
    //! strings, empty and filled arrays, with and without DiaObject, ssSource and
    //! cutouts — encode to exactly apache-avro's bytes for the same datum, and
    //! apache-avro reads every byte back.

    use super::*;
    use apflow_alert_dist::fits::CutoutBytes;
    use apflow_alert_dist::packet::VisitContext;
    use apflow_apdb::schema::{ColumnType, SsObject};
    use proptest::prelude::*;
    use proptest::strategy::BoxedStrategy;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    fn typed(ty: ColumnType) -> BoxedStrategy<Value> {
        match ty {
            ColumnType::Long => any::<i64>().prop_map(Value::Long).boxed(),
            ColumnType::Int => any::<i32>().prop_map(Value::Int).boxed(),
            ColumnType::Double => any::<f64>().prop_map(Value::Double).boxed(),
            ColumnType::Float => any::<f32>().prop_map(Value::Float).boxed(),
            ColumnType::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
            _ => "\\PC{0,12}".prop_map(Value::String).boxed(),
        }
    }

    /// A value for `c`: random of its type, or (nullable columns, one in four) null.
    fn column_value(c: &Column) -> BoxedStrategy<Value> {
        if c.nullable {
            prop_oneof![1 => Just(Value::Null), 3 => typed(c.ty)].boxed()
        } else {
            typed(c.ty)
        }
    }

    /// A record of random values; a value its field cannot hold (a negative visit, a
    /// detector over 65,535) is replaced by zero of the column's type.
    fn record<R: Record + std::fmt::Debug + 'static>() -> BoxedStrategy<R> {
        let cols = R::columns();
        let strategies: Vec<BoxedStrategy<Value>> = cols.iter().map(column_value).collect();
        strategies
            .prop_map(move |mut v| {
                loop {
                    match R::from_values(v.clone()) {
                        Ok(r) => break r,
                        Err(e) => {
                            let i = cols.iter().position(|c| c.name == e.column).unwrap();
                            v[i] = match cols[i].ty {
                                ColumnType::Int => Value::Int(0),
                                _ => Value::Long(0),
                            };
                        }
                    }
                }
            })
            .boxed()
    }

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        prop::option::of("\\PC{0,24}")
    }

    fn alert() -> impl Strategy<Value = AlertInput> {
        let history = (
            prop::option::of(prop::collection::vec(record::<DiaSource>(), 0..4)),
            prop::option::of(prop::collection::vec(record::<DiaForcedSource>(), 0..4)),
        );
        let ss = prop::option::of((any::<i64>(), opt_string()));
        let cutouts = prop::option::of(prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..300),
            3,
        ));
        (
            record::<DiaSource>(),
            prop::option::of(record::<DiaObject>()),
            history,
            ss,
            (opt_string(), opt_string()),
            cutouts,
        )
            .prop_map(|(mut ds, obj, (prv, forced), ss, (reason, target), cut)| {
                ds.ss_object_id = ss.as_ref().map(|s| s.0);
                AlertInput {
                    dia_object: obj,
                    ss_object: ss.map(|(id, designation)| SsObject {
                        ss_object_id: id,
                        designation,
                        ..Default::default()
                    }),
                    prv_dia_sources: prv,
                    prv_dia_forced_sources: forced,
                    context: VisitContext {
                        observation_reason: reason,
                        target_name: target,
                    },
                    cutouts: cut.map(|mut c| CutoutBytes {
                        template: c.pop().unwrap_or_default(),
                        science: c.pop().unwrap_or_default(),
                        difference: c.pop().unwrap_or_default(),
                    }),
                    dia_source: ds,
                }
            })
    }

    #[test]
    fn random_records_encode_to_apache_avro_bytes() {
        let w = parsed_writer_schema().unwrap();
        let writer = GenericDatumWriter::builder(&w).build().unwrap();
        let reader = GenericDatumReader::builder(&w).build().unwrap();
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 96,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        let enc = std::cell::RefCell::new(AlertEncoder::new());
        let counts = std::cell::Cell::new((0, 0, 0));
        let result = runner.run(&alert(), |a| {
            let (s, o, c) = counts.get();
            counts.set((
                s + usize::from(a.dia_source.ss_object_id.is_some()),
                o + usize::from(a.dia_object.is_some()),
                c + usize::from(a.cutouts.is_some()),
            ));
            let mut body = Vec::new();
            enc.borrow_mut().encode_body(&a, &mut body).unwrap();
            let theirs = writer.write_value_to_vec(expected_alert(&w, &a)).unwrap();
            prop_assert!(theirs == body, "bytes differ from apache-avro's");
            let mut r = body.as_slice();
            let back = reader.read_value(&mut r).unwrap();
            prop_assert!(r.is_empty(), "{} bytes left over", r.len());
            // Bit-exact round trip (NaN included): re-encoding the decoded datum gives
            // our bytes again.
            prop_assert!(writer.write_value_to_vec(back).unwrap() == body);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let (with_ss, with_obj, with_cut) = counts.get();
        // Every branch ran.
        for (what, n) in [
            ("ssSource", with_ss),
            ("diaObject", with_obj),
            ("cutouts", with_cut),
        ] {
            assert!(n > 10 && n < 86, "{what} in {n} of 96 alerts");
        }
    }
}
