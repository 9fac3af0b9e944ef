//! The compiler: a typed tree to nested closures, one per node, each typed by the
//! node's static type (`Option<bool>`, `Option<i64>`, `Option<f64>`, `Option<&str>`;
//! `None` is NULL). Fields are read by slot, history functions from the per-alert
//! [`super::view::Summary`], sky regions against the precomputed position, constants
//! folded into the closures. Nothing allocates during evaluation.

use super::check::{HistFn, NumFn, TExpr, TKind};
use super::syntax::{ArithOp, CmpOp};
use super::view::{AlertView, Type, Val};
use super::{and3, mag, not3, or3};

type BoolFn = Box<dyn Fn(&AlertView) -> Option<bool> + Send + Sync>;
type IntFn = Box<dyn Fn(&AlertView) -> Option<i64> + Send + Sync>;
type FloatFn = Box<dyn Fn(&AlertView) -> Option<f64> + Send + Sync>;

/// A compiled condition.
pub struct Compiled(BoolFn);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled(..)")
    }
}

impl Compiled {
    /// The condition's three-valued result (`None`: NULL).
    #[inline]
    pub fn eval(&self, v: &AlertView) -> Option<bool> {
        (self.0)(v)
    }
}

/// Compiles a checked boolean expression.
pub fn compile(e: &TExpr) -> Compiled {
    Compiled(bool_fn(e))
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn ord<T: PartialOrd + ?Sized>(op: CmpOp) -> fn(&T, &T) -> bool {
    match op {
        CmpOp::Eq => |a, b| a == b,
        CmpOp::Ne => |a, b| a != b,
        CmpOp::Lt => |a, b| a < b,
        CmpOp::Le => |a, b| a <= b,
        CmpOp::Gt => |a, b| a > b,
        CmpOp::Ge => |a, b| a >= b,
    }
}

fn cmp_fn(op: CmpOp, a: &TExpr, b: &TExpr) -> BoolFn {
    match (a.ty, b.ty) {
        (Type::Null, _) | (_, Type::Null) => Box::new(|_| None),
        (Type::Int, Type::Int) => {
            let (x, y, f) = (int_fn(a), int_fn(b), ord::<i64>(op));
            if let TKind::Lit(Val::Int(c)) = b.kind {
                return Box::new(move |v| Some(f(&x(v)?, &c)));
            }
            Box::new(move |v| Some(f(&x(v)?, &y(v)?)))
        }
        (Type::Str, _) => {
            let (x, y, f) = (str_fn(a), str_fn(b), ord::<str>(op));
            Box::new(move |v| Some(f(x.get(v)?, y.get(v)?)))
        }
        (Type::Bool, _) => {
            let (x, y, f) = (bool_fn(a), bool_fn(b), ord::<bool>(op));
            Box::new(move |v| Some(f(&x(v)?, &y(v)?)))
        }
        _ => {
            let f = ord::<f64>(op);
            // The common shape `field op constant`.
            if let (TKind::Field { slot, .. }, Some(c)) = (&a.kind, lit_f64(b)) {
                let slot = *slot;
                return Box::new(move |v| Some(f(&v.get(slot).as_f64()?, &c)));
            }
            let (x, y) = (float_fn(a), float_fn(b));
            Box::new(move |v| Some(f(&x(v)?, &y(v)?)))
        }
    }
}

fn lit_f64(e: &TExpr) -> Option<f64> {
    match e.kind {
        TKind::Lit(Val::Int(i)) => Some(i as f64),
        TKind::Lit(Val::Float(x)) => Some(x),
        _ => None,
    }
}

fn null_fn(e: &TExpr) -> Box<dyn Fn(&AlertView) -> bool + Send + Sync> {
    match e.ty {
        Type::Null => Box::new(|_| true),
        Type::Bool => {
            let f = bool_fn(e);
            Box::new(move |v| f(v).is_none())
        }
        Type::Int => {
            let f = int_fn(e);
            Box::new(move |v| f(v).is_none())
        }
        Type::Float => {
            let f = float_fn(e);
            Box::new(move |v| f(v).is_none())
        }
        Type::Str => {
            let f = str_fn(e);
            Box::new(move |v| f.get(v).is_none())
        }
    }
}

fn bool_fn(e: &TExpr) -> BoolFn {
    match &e.kind {
        TKind::Lit(Val::Bool(b)) => {
            let b = *b;
            Box::new(move |_| Some(b))
        }
        TKind::Lit(_) => Box::new(|_| None),
        TKind::Field { slot, .. } => {
            let slot = *slot;
            Box::new(move |v| match v.get(slot) {
                Val::Bool(b) => Some(*b),
                _ => None,
            })
        }
        TKind::Cmp(op, a, b) => cmp_fn(*op, a, b),
        TKind::And(a, b) => {
            let (x, y) = (bool_fn(a), bool_fn(b));
            // Short-circuits on FALSE.
            Box::new(move |v| match x(v) {
                Some(false) => Some(false),
                l => and3(l, y(v)),
            })
        }
        TKind::Or(a, b) => {
            let (x, y) = (bool_fn(a), bool_fn(b));
            // Short-circuits on TRUE.
            Box::new(move |v| match x(v) {
                Some(true) => Some(true),
                l => or3(l, y(v)),
            })
        }
        TKind::Not(a) => {
            let x = bool_fn(a);
            Box::new(move |v| x(v).map(|b| !b))
        }
        TKind::IsNull(a, negated) => {
            let (x, n) = (null_fn(a), *negated);
            Box::new(move |v| Some(x(v) != n))
        }
        TKind::Between(a, lo, hi, negated) => {
            let (ge, le, n) = (cmp_fn(CmpOp::Ge, a, lo), cmp_fn(CmpOp::Le, a, hi), *negated);
            Box::new(move |v| {
                let r = match ge(v) {
                    Some(false) => Some(false),
                    l => and3(l, le(v)),
                };
                not3(r, n)
            })
        }
        TKind::In(a, list, negated) => {
            let has_null = list.contains(&Val::Null);
            let n = *negated;
            let tail = move |found: bool| {
                not3(
                    if found {
                        Some(true)
                    } else if has_null {
                        None
                    } else {
                        Some(false)
                    },
                    n,
                )
            };
            match a.ty {
                Type::Null => Box::new(|_| None),
                Type::Str => {
                    let x = str_fn(a);
                    let items: Vec<Box<str>> = list
                        .iter()
                        .filter_map(|i| match i {
                            Val::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect();
                    Box::new(move |v| {
                        let s = x.get(v)?;
                        tail(items.iter().any(|i| **i == *s))
                    })
                }
                Type::Bool => {
                    let x = bool_fn(a);
                    let items: Vec<bool> = list
                        .iter()
                        .filter_map(|i| match i {
                            Val::Bool(b) => Some(*b),
                            _ => None,
                        })
                        .collect();
                    Box::new(move |v| {
                        let b = x(v)?;
                        tail(items.contains(&b))
                    })
                }
                Type::Int => {
                    let x = int_fn(a);
                    let ints: Vec<i64> = list
                        .iter()
                        .filter_map(|i| match i {
                            Val::Int(j) => Some(*j),
                            _ => None,
                        })
                        .collect();
                    let floats: Vec<f64> = list
                        .iter()
                        .filter_map(|i| match i {
                            Val::Float(y) => Some(*y),
                            _ => None,
                        })
                        .collect();
                    Box::new(move |v| {
                        let i = x(v)?;
                        tail(ints.contains(&i) || floats.contains(&(i as f64)))
                    })
                }
                Type::Float => {
                    let x = float_fn(a);
                    let items: Vec<f64> = list.iter().filter_map(Val::as_f64).collect();
                    Box::new(move |v| {
                        let f = x(v)?;
                        tail(items.contains(&f))
                    })
                }
            }
        }
        TKind::Region(r) => {
            let r = (**r).clone();
            Box::new(move |v| Some(r.contains(v.summary().position?)))
        }
        _ => Box::new(|_| None),
    }
}

fn int_fn(e: &TExpr) -> IntFn {
    match &e.kind {
        TKind::Lit(Val::Int(i)) => {
            let i = *i;
            Box::new(move |_| Some(i))
        }
        TKind::Field { slot, .. } => {
            let slot = *slot;
            Box::new(move |v| match v.get(slot) {
                Val::Int(i) => Some(*i),
                _ => None,
            })
        }
        TKind::Neg(a) => {
            let x = int_fn(a);
            Box::new(move |v| x(v)?.checked_neg())
        }
        TKind::Arith(op, a, b) => {
            let (x, y) = (int_fn(a), int_fn(b));
            match op {
                ArithOp::Add => Box::new(move |v| x(v)?.checked_add(y(v)?)),
                ArithOp::Sub => Box::new(move |v| x(v)?.checked_sub(y(v)?)),
                ArithOp::Mul => Box::new(move |v| x(v)?.checked_mul(y(v)?)),
                _ => Box::new(move |v| x(v)?.checked_rem(y(v)?)),
            }
        }
        TKind::Num(NumFn::Abs, a) => {
            let x = int_fn(a);
            Box::new(move |v| x(v)?.checked_abs())
        }
        TKind::Hist(HistFn::NPrevious) => Box::new(|v| Some(v.summary().n_prev)),
        _ => Box::new(|_| None),
    }
}

fn float_fn(e: &TExpr) -> FloatFn {
    if e.ty == Type::Int {
        let x = int_fn(e);
        return Box::new(move |v| x(v).map(|i| i as f64));
    }
    match &e.kind {
        TKind::Lit(Val::Float(c)) => {
            let c = *c;
            Box::new(move |_| Some(c))
        }
        TKind::Field { slot, .. } => {
            let slot = *slot;
            Box::new(move |v| v.get(slot).as_f64())
        }
        TKind::Neg(a) => {
            let x = float_fn(a);
            Box::new(move |v| Some(-x(v)?))
        }
        TKind::Arith(op, a, b) => {
            let (x, y) = (float_fn(a), float_fn(b));
            match op {
                ArithOp::Add => Box::new(move |v| finite(x(v)? + y(v)?)),
                ArithOp::Sub => Box::new(move |v| finite(x(v)? - y(v)?)),
                ArithOp::Mul => Box::new(move |v| finite(x(v)? * y(v)?)),
                ArithOp::Div => Box::new(move |v| finite(x(v)? / y(v)?)),
                ArithOp::Rem => Box::new(move |v| finite(x(v)? % y(v)?)),
            }
        }
        TKind::Num(NumFn::Abs, a) => {
            let x = float_fn(a);
            Box::new(move |v| Some(x(v)?.abs()))
        }
        TKind::Num(NumFn::Mag, a) => {
            let x = float_fn(a);
            Box::new(move |v| mag(x(v)).and_then(finite))
        }
        TKind::Hist(h) => match *h {
            HistFn::NPrevious => Box::new(|v| Some(v.summary().n_prev as f64)),
            HistFn::DaysSinceFirst => {
                let mjd = super::view::field_table().mjd;
                Box::new(move |v| finite(v.get(mjd).as_f64()? - v.summary().first_mjd?))
            }
            HistFn::FluxChange | HistFn::MagChange => {
                let flux = super::view::field_table().psf_flux;
                if *h == HistFn::FluxChange {
                    Box::new(move |v| {
                        finite(v.get(flux).as_f64()? - v.summary().prev_flux_same_band?)
                    })
                } else {
                    Box::new(move |v| {
                        finite(mag(v.get(flux).as_f64())? - mag(v.summary().prev_flux_same_band)?)
                    })
                }
            }
            HistFn::Colour(a, b) => {
                let (a, b) = (a as usize, b as usize);
                Box::new(move |v| {
                    let f = &v.summary().band_flux;
                    finite(mag(f[a])? - mag(f[b])?)
                })
            }
        },
        TKind::GalLat => Box::new(|v| v.summary().gal_lat.and_then(finite)),
        _ => Box::new(|_| None),
    }
}

/// Where a string comes from: strings are only constants and fields.
enum StrSrc {
    Const(Box<str>),
    Slot(usize),
    Null,
}

impl StrSrc {
    #[inline]
    fn get<'a>(&'a self, v: &'a AlertView) -> Option<&'a str> {
        match self {
            Self::Const(s) => Some(s),
            Self::Slot(slot) => match v.get(*slot) {
                Val::Str(s) => Some(s),
                _ => None,
            },
            Self::Null => None,
        }
    }
}

fn str_fn(e: &TExpr) -> StrSrc {
    match &e.kind {
        TKind::Lit(Val::Str(s)) => StrSrc::Const(s.clone()),
        TKind::Field { slot, .. } => StrSrc::Slot(*slot),
        _ => StrSrc::Null,
    }
}
