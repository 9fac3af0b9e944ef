//! Fresh ids: re-encoded packets decode, exactly the id fields change (to
//! `DiaSourceId::fresh`), nothing else does, and no fresh id is an id of the night.

use std::collections::{BTreeSet, HashSet};

use apache_avro::types::Value;
use apflow_alert_dist::packet::decode_framed;
use apflow_core::ids::DiaSourceId;
use apflow_replay::fresh::{FreshIdError, FreshIds};

use crate::fixture;

/// Paths (`a.b[].c`) whose values differ between two decodings of the same schema.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Record(fa), Value::Record(fb)) => {
            assert_eq!(fa.len(), fb.len(), "{path}");
            for ((na, va), (nb, vb)) in fa.iter().zip(fb) {
                assert_eq!(na, nb);
                let p = if path.is_empty() {
                    na.clone()
                } else {
                    format!("{path}.{na}")
                };
                diff(va, vb, &p, out);
            }
        }
        (Value::Union(ia, va), Value::Union(ib, vb)) => {
            assert_eq!(ia, ib, "{path}: union branch changed");
            diff(va, vb, path, out);
        }
        (Value::Array(xa), Value::Array(xb)) => {
            assert_eq!(xa.len(), xb.len(), "{path}");
            for (x, y) in xa.iter().zip(xb) {
                diff(x, y, &format!("{path}[]"), out);
            }
        }
        (x, y) if x != y => out.push((path.to_string(), x.clone(), y.clone())),
        _ => {}
    }
}

const ID_PATHS: [&str; 11] = [
    "diaSourceId",
    "diaSource.diaSourceId",
    "diaSource.diaObjectId",
    "diaSource.parentDiaSourceId",
    "prvDiaSources[].diaSourceId",
    "prvDiaSources[].diaObjectId",
    "prvDiaSources[].parentDiaSourceId",
    "prvDiaForcedSources[].diaForcedSourceId",
    "prvDiaForcedSources[].diaObjectId",
    "diaObject.diaObjectId",
    "ssSource.diaSourceId",
];

/// Every value of an id field (module docs of `fresh`), and `ssObjectId`s separately.
fn ids(v: &Value, path: &str, out: &mut HashSet<i64>, ss: &mut HashSet<i64>) {
    match v {
        Value::Record(f) => {
            for (n, x) in f {
                let p = if path.is_empty() {
                    n.clone()
                } else {
                    format!("{path}.{n}")
                };
                ids(x, &p, out, ss);
            }
        }
        Value::Union(_, x) => ids(x, path, out, ss),
        Value::Array(xs) => xs
            .iter()
            .for_each(|x| ids(x, &format!("{path}[]"), out, ss)),
        Value::Long(x) if ID_PATHS.contains(&path) => {
            out.insert(*x);
        }
        Value::Long(x) if path.ends_with("ssObjectId") => {
            ss.insert(*x);
        }
        _ => {}
    }
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    let v = match v {
        Value::Union(_, b) => b.as_ref(),
        v => v,
    };
    let Value::Record(f) = v else {
        panic!("not a record")
    };
    let x = &f.iter().find(|(n, _)| n == name).unwrap().1;
    match x {
        Value::Union(_, b) => b.as_ref(),
        x => x,
    }
}

#[test]
fn fresh_ids_change_exactly_the_ids_and_never_collide_with_the_night() {
    let night = fixture::alerts(&[0.0, 30.0, 60.0], 2, 6, 7);
    let fresh = FreshIds::new(1).unwrap();
    let mut original_ids = HashSet::new();
    let mut original_ss = HashSet::new();
    let mut fresh_ids = HashSet::new();
    let mut fresh_ss = HashSet::new();
    let mut changed_paths = BTreeSet::new();
    let mut fresh_alert_ids = HashSet::new();
    let mut remapped = Vec::new();
    for a in &night {
        let out = fresh.remap_framed(&a.framed).unwrap();
        // Deterministic: the same input gives the same bytes.
        assert_eq!(out, fresh.remap_framed(&a.framed).unwrap());
        let before = decode_framed(&a.framed).unwrap();
        let after = decode_framed(&out.framed).expect("the re-encoded packet decodes");
        assert_eq!(after.schema_id, before.schema_id);
        assert_eq!(
            out.dia_source_id,
            DiaSourceId(a.dia_source_id).fresh(1).unwrap().0
        );
        let mut d = Vec::new();
        diff(&before.value, &after.value, "", &mut d);
        for (path, old, new) in d {
            match (old, new) {
                (Value::Long(o), Value::Long(n)) => {
                    assert!(ID_PATHS.contains(&path.as_str()), "{path} changed");
                    assert_eq!(n, DiaSourceId(o).fresh(1).unwrap().0, "{path}");
                }
                (Value::Bytes(o), Value::Bytes(n)) => {
                    assert!(path.starts_with("cutout"), "{path} changed");
                    assert_eq!(o.len(), n.len());
                    // Only the DIASRCID card's value changed, to the fresh id.
                    let at: Vec<usize> = (0..o.len()).filter(|&i| o[i] != n[i]).collect();
                    let card = at[0] / 80 * 80;
                    assert!(
                        at.iter().all(|&i| i >= card + 10 && i < card + 30),
                        "{path}"
                    );
                    assert_eq!(&n[card..card + 10], b"DIASRCID= ");
                    let v: i64 = std::str::from_utf8(&n[card + 10..card + 30])
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    assert_eq!(v, out.dia_source_id);
                }
                (o, n) => panic!("{path}: {o:?} -> {n:?}"),
            }
            changed_paths.insert(path);
        }
        ids(&before.value, "", &mut original_ids, &mut original_ss);
        ids(&after.value, "", &mut fresh_ids, &mut fresh_ss);
        fresh_alert_ids.insert(out.dia_source_id);
        remapped.push(after);
    }
    // Every kind of id in the fixture was remapped.
    for p in ID_PATHS {
        assert!(changed_paths.contains(p), "{p} never changed");
    }
    assert!(changed_paths.contains("cutoutDifference"));
    // No collision, and ssObjectIds are untouched.
    assert!(original_ids.is_disjoint(&fresh_ids));
    assert_eq!(original_ss, fresh_ss);
    assert!(!original_ss.is_empty());
    // Consistent inside the replay: histories point at replayed alerts and objects.
    for a in &remapped {
        let src = field(&a.value, "diaSource");
        if let Value::Long(oid) = field(src, "diaObjectId") {
            assert_eq!(
                field(field(&a.value, "diaObject"), "diaObjectId"),
                &Value::Long(*oid)
            );
            if let Value::Array(prv) = field(&a.value, "prvDiaSources") {
                for p in prv {
                    let Value::Long(pid) = field(p, "diaSourceId") else {
                        panic!()
                    };
                    assert!(
                        fresh_alert_ids.contains(pid),
                        "history points outside the replay"
                    );
                    assert_eq!(field(p, "diaObjectId"), &Value::Long(*oid));
                }
            }
        }
    }
}

#[test]
fn an_alert_already_in_the_generation_is_refused_and_garbage_is_an_error() {
    let night = fixture::alerts(&[0.0], 1, 2, 3);
    let g1 = FreshIds::new(1).unwrap();
    let once = g1.remap_framed(&night[0].framed).unwrap();
    assert!(matches!(
        g1.remap_framed(&once.framed),
        Err(FreshIdError::SameGeneration { generation: 1, .. })
    ));
    let twice = FreshIds::new(2)
        .unwrap()
        .remap_framed(&once.framed)
        .unwrap();
    assert_ne!(twice.dia_source_id, once.dia_source_id);
    assert_ne!(twice.dia_source_id, night[0].dia_source_id);
    assert!(matches!(
        g1.remap_framed(b"\0\0\0\x04\x4c\x01"),
        Err(FreshIdError::Decode(_))
    ));
    assert!(matches!(
        g1.remap_framed(b"xy"),
        Err(FreshIdError::Decode(_))
    ));
}
