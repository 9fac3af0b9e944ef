//! The plain tree-walking interpreter: dynamic [`Val`]ues, fields looked up by path,
//! history functions recomputed from the history on every call, no short-circuits. It
//! is the reference the compiled evaluator is tested against (and the step counter
//! of the cost bound), not the fast path.

use std::cmp::Ordering;

use apflow_core::geom::UnitVector;

use super::check::{HistFn, NumFn, TExpr, TKind};
use super::syntax::{ArithOp, CmpOp};
use super::view::{AlertView, Val, band_index};
use super::{and3, mag, not3, or3};
use crate::coords::galactic;

fn b3(v: &Val) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(*b),
        _ => None,
    }
}

fn from3(b: Option<bool>) -> Val {
    b.map_or(Val::Null, Val::Bool)
}

fn finite(x: f64) -> Val {
    if x.is_finite() {
        Val::Float(x)
    } else {
        Val::Null
    }
}

fn compare(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn cmp(op: CmpOp, a: &Val, b: &Val) -> Val {
    let Some(o) = compare(a, b) else {
        return Val::Null;
    };
    Val::Bool(match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Ne => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Le => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
    })
}

fn arith(op: ArithOp, a: &Val, b: &Val) -> Val {
    if let (Val::Int(x), Val::Int(y)) = (a, b)
        && op != ArithOp::Div
    {
        let r = match op {
            ArithOp::Add => x.checked_add(*y),
            ArithOp::Sub => x.checked_sub(*y),
            ArithOp::Mul => x.checked_mul(*y),
            _ => x.checked_rem(*y),
        };
        return r.map_or(Val::Null, Val::Int);
    }
    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
        return Val::Null;
    };
    finite(match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div => x / y,
        ArithOp::Rem => x % y,
    })
}

fn field(view: &AlertView, path: &str) -> Val {
    view.get_path(path).cloned().unwrap_or(Val::Null)
}

fn hist(f: HistFn, view: &AlertView, steps: &mut u64) -> Val {
    let h = view.history();
    *steps += h.len() as u64;
    let cur_mjd = field(view, "diaSource.midpointMjdTai").as_f64();
    let cur_band = match field(view, "diaSource.band") {
        Val::Str(s) => band_index(&s),
        _ => None,
    };
    let cur_flux = field(view, "diaSource.psfFlux").as_f64();
    let last_in = |b: u8| h.iter().rev().find(|d| d.band == Some(b));
    let flux_of = |b: u8| {
        if cur_band == Some(b) {
            cur_flux
        } else {
            last_in(b).and_then(|d| d.psf_flux)
        }
    };
    match f {
        HistFn::NPrevious => Val::Int(h.len() as i64),
        HistFn::DaysSinceFirst => match cur_mjd {
            None => Val::Null,
            Some(t) => {
                let first = h.iter().filter_map(|d| d.mjd).fold(t, f64::min);
                finite(t - first)
            }
        },
        HistFn::FluxChange | HistFn::MagChange => {
            let Some(prev) = cur_band.and_then(last_in) else {
                return Val::Null;
            };
            if f == HistFn::FluxChange {
                match (cur_flux, prev.psf_flux) {
                    (Some(a), Some(b)) => finite(a - b),
                    _ => Val::Null,
                }
            } else {
                match (mag(cur_flux), mag(prev.psf_flux)) {
                    (Some(a), Some(b)) => finite(a - b),
                    _ => Val::Null,
                }
            }
        }
        HistFn::Colour(a, b) => match (mag(flux_of(a)), mag(flux_of(b))) {
            (Some(x), Some(y)) => finite(x - y),
            _ => Val::Null,
        },
    }
}

/// Evaluates `e` on `view`, adding the steps taken to `steps` (one per node visited,
/// one per IN-list item, polygon vertex and history entry scanned).
pub fn eval(e: &TExpr, view: &AlertView, steps: &mut u64) -> Val {
    *steps += 1;
    let mut ev = |x: &TExpr| eval(x, view, steps);
    match &e.kind {
        TKind::Lit(v) => v.clone(),
        TKind::Field { path, .. } => field(view, path),
        TKind::Neg(a) => match ev(a) {
            Val::Int(i) => i.checked_neg().map_or(Val::Null, Val::Int),
            Val::Float(x) => Val::Float(-x),
            _ => Val::Null,
        },
        TKind::Arith(op, a, b) => {
            let (x, y) = (ev(a), ev(b));
            arith(*op, &x, &y)
        }
        TKind::Cmp(op, a, b) => {
            let (x, y) = (ev(a), ev(b));
            cmp(*op, &x, &y)
        }
        TKind::And(a, b) => {
            let (x, y) = (ev(a), ev(b));
            from3(and3(b3(&x), b3(&y)))
        }
        TKind::Or(a, b) => {
            let (x, y) = (ev(a), ev(b));
            from3(or3(b3(&x), b3(&y)))
        }
        TKind::Not(a) => from3(b3(&ev(a)).map(|b| !b)),
        TKind::In(a, list, negated) => {
            let x = ev(a);
            *steps += list.len() as u64;
            let r = if x == Val::Null {
                None
            } else if list.iter().any(|y| compare(&x, y) == Some(Ordering::Equal)) {
                Some(true)
            } else if list.contains(&Val::Null) {
                None
            } else {
                Some(false)
            };
            from3(not3(r, *negated))
        }
        TKind::Between(a, lo, hi, negated) => {
            let (x, l, h) = (ev(a), ev(lo), ev(hi));
            let r = and3(b3(&cmp(CmpOp::Ge, &x, &l)), b3(&cmp(CmpOp::Le, &x, &h)));
            from3(not3(r, *negated))
        }
        TKind::IsNull(a, negated) => Val::Bool((ev(a) == Val::Null) != *negated),
        TKind::Num(f, a) => match (f, ev(a)) {
            (NumFn::Abs, Val::Int(i)) => i.checked_abs().map_or(Val::Null, Val::Int),
            (NumFn::Abs, Val::Float(x)) => Val::Float(x.abs()),
            (NumFn::Mag, v) => mag(v.as_f64()).map_or(Val::Null, finite),
            _ => Val::Null,
        },
        TKind::Hist(f) => hist(*f, view, steps),
        TKind::Region(r) => {
            *steps += r.vertices() as u64;
            match (
                field(view, "diaSource.ra").as_f64(),
                field(view, "diaSource.dec").as_f64(),
            ) {
                (Some(ra), Some(dec)) => Val::Bool(r.contains(UnitVector::from_radec_deg(ra, dec))),
                _ => Val::Null,
            }
        }
        TKind::GalLat => match (
            field(view, "diaSource.ra").as_f64(),
            field(view, "diaSource.dec").as_f64(),
        ) {
            (Some(ra), Some(dec)) => finite(galactic(ra, dec).1),
            _ => Val::Null,
        },
    }
}
