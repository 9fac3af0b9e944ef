//! The type checker: a parsed [`Expr`] to a typed tree ([`TExpr`]) with fields
//! resolved to slots, functions resolved, constant arguments validated, and the static
//! cost computed.

use apflow_core::geom::{SkyPolygon, UnitVector};

use super::syntax::{ArithOp, CmpOp, ErrorKind, Expr, ExprError, ExprKind, Lit, Span};
use super::view::{MAX_HISTORY, Type, Val, band_index, field_table};

/// The cost model and its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostModel {
    /// Cost of one history function: the most entries it may scan
    /// (default [`MAX_HISTORY`]).
    pub history: u64,
    /// Largest accepted cost (default [`DEFAULT_MAX_COST`]).
    pub limit: u64,
}

/// Default cost limit: room for about ten history functions and a few hundred other
/// nodes, list items or polygon vertices.
pub const DEFAULT_MAX_COST: u64 = 10_000;

impl Default for CostModel {
    fn default() -> Self {
        Self {
            history: MAX_HISTORY as u64,
            limit: DEFAULT_MAX_COST,
        }
    }
}

/// Functions over the history of the DiaObject (definitions in [`super`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HistFn {
    /// `n_previous()`.
    NPrevious,
    /// `days_since_first()`.
    DaysSinceFirst,
    /// `flux_change()`.
    FluxChange,
    /// `mag_change()`.
    MagChange,
    /// `colour(b1, b2)`: band indices.
    Colour(u8, u8),
}

/// Numeric functions of one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumFn {
    /// `abs(x)`.
    Abs,
    /// `mag(flux_nJy)`: AB magnitude.
    Mag,
}

/// A sky region with precomputed geometry.
#[derive(Clone, Debug, PartialEq)]
pub enum Region {
    /// `cone(ra, dec, radius)`: centre and cosine of the radius.
    Cone {
        /// Centre.
        center: UnitVector,
        /// cos(radius).
        cos_radius: f64,
    },
    /// `polygon(ra1, dec1, …)`.
    Polygon(SkyPolygon),
}

impl Region {
    /// Whether a position is inside (on the edge counts).
    #[inline]
    pub fn contains(&self, p: UnitVector) -> bool {
        match self {
            Self::Cone { center, cos_radius } => center.dot(p) >= *cos_radius,
            Self::Polygon(poly) => poly.contains(p),
        }
    }
    /// Vertices (0 for a cone).
    pub fn vertices(&self) -> usize {
        match self {
            Self::Cone { .. } => 0,
            Self::Polygon(p) => p.vertices().len(),
        }
    }
}

/// A type-checked node.
#[derive(Clone, Debug, PartialEq)]
pub struct TExpr {
    /// What it is.
    pub kind: TKind,
    /// Its static type.
    pub ty: Type,
    /// Where it came from.
    pub span: Span,
}

/// Typed nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum TKind {
    /// A constant.
    Lit(Val),
    /// A field by slot (and path, for the interpreter).
    Field {
        /// Slot in [`super::view::field_table`].
        slot: usize,
        /// Path.
        path: String,
    },
    /// Unary minus.
    Neg(Box<TExpr>),
    /// Arithmetic.
    Arith(ArithOp, Box<TExpr>, Box<TExpr>),
    /// Comparison.
    Cmp(CmpOp, Box<TExpr>, Box<TExpr>),
    /// Three-valued AND.
    And(Box<TExpr>, Box<TExpr>),
    /// Three-valued OR.
    Or(Box<TExpr>, Box<TExpr>),
    /// Three-valued NOT.
    Not(Box<TExpr>),
    /// `[NOT] IN (constants)`.
    In(Box<TExpr>, Vec<Val>, bool),
    /// `[NOT] BETWEEN`.
    Between(Box<TExpr>, Box<TExpr>, Box<TExpr>, bool),
    /// `IS [NOT] NULL`.
    IsNull(Box<TExpr>, bool),
    /// A numeric function.
    Num(NumFn, Box<TExpr>),
    /// A history function.
    Hist(HistFn),
    /// Sky membership of the DiaSource position.
    Region(Box<Region>),
    /// `galactic_latitude()`.
    GalLat,
}

impl TExpr {
    /// The static cost: one per node, plus list items, polygon vertices and, for each
    /// history function, `model.history`.
    pub fn cost(&self, model: &CostModel) -> u64 {
        let c = |e: &TExpr| e.cost(model);
        1 + match &self.kind {
            TKind::Lit(_) | TKind::Field { .. } | TKind::GalLat => 0,
            TKind::Neg(a) | TKind::Not(a) | TKind::IsNull(a, _) | TKind::Num(_, a) => c(a),
            TKind::Arith(_, a, b) | TKind::Cmp(_, a, b) | TKind::And(a, b) | TKind::Or(a, b) => {
                c(a).saturating_add(c(b))
            }
            TKind::In(a, l, _) => c(a).saturating_add(l.len() as u64),
            TKind::Between(a, b, d, _) => c(a).saturating_add(c(b)).saturating_add(c(d)),
            TKind::Hist(_) => model.history,
            TKind::Region(r) => r.vertices() as u64,
        }
    }
}

struct Checker<'a> {
    src: &'a str,
}

fn lit_val(l: &Lit) -> (Val, Type) {
    match l {
        Lit::Null => (Val::Null, Type::Null),
        Lit::Bool(b) => (Val::Bool(*b), Type::Bool),
        Lit::Int(i) => (Val::Int(*i), Type::Int),
        Lit::Float(x) => (Val::Float(*x), Type::Float),
        Lit::Str(s) => (Val::Str(s.as_str().into()), Type::Str),
    }
}

/// Whether values of types `a` and `b` can be compared with `op`.
fn comparable(a: Type, b: Type, op: Option<CmpOp>) -> bool {
    if a == Type::Null || b == Type::Null {
        return true;
    }
    if a.is_numeric() && b.is_numeric() {
        return true;
    }
    match (a, b) {
        (Type::Str, Type::Str) => true,
        (Type::Bool, Type::Bool) => matches!(op, None | Some(CmpOp::Eq) | Some(CmpOp::Ne)),
        _ => false,
    }
}

impl Checker<'_> {
    fn err(&self, kind: ErrorKind, span: Span, m: impl Into<String>) -> ExprError {
        ExprError::new(kind, m, span, self.src)
    }
    fn want_bool(&self, e: &TExpr, what: &str) -> Result<(), ExprError> {
        if matches!(e.ty, Type::Bool | Type::Null) {
            Ok(())
        } else {
            Err(self.err(
                ErrorKind::Type,
                e.span,
                format!("{what} needs a boolean, found {}", e.ty),
            ))
        }
    }
    fn want_num(&self, e: &TExpr, what: &str) -> Result<(), ExprError> {
        if e.ty.is_numeric() {
            Ok(())
        } else {
            Err(self.err(
                ErrorKind::Type,
                e.span,
                format!("{what} needs a number, found {}", e.ty),
            ))
        }
    }
    fn constant(&self, e: &Expr) -> Result<f64, ExprError> {
        match &e.kind {
            ExprKind::Lit(Lit::Int(i)) => Ok(*i as f64),
            ExprKind::Lit(Lit::Float(x)) => Ok(*x),
            _ => Err(self.err(
                ErrorKind::BadArgument,
                e.span,
                "a sky region's coordinates must be numeric constants (degrees)",
            )),
        }
    }
    fn band(&self, e: &Expr) -> Result<u8, ExprError> {
        match &e.kind {
            ExprKind::Lit(Lit::Str(s)) => band_index(s).ok_or_else(|| {
                self.err(
                    ErrorKind::BadArgument,
                    e.span,
                    format!("band {s:?} is not one of u, g, r, i, z, y"),
                )
            }),
            _ => Err(self.err(
                ErrorKind::BadArgument,
                e.span,
                "a band must be a string constant such as 'g'",
            )),
        }
    }

    fn check(&self, e: &Expr) -> Result<TExpr, ExprError> {
        let span = e.span;
        let mk = |kind, ty| TExpr { kind, ty, span };
        Ok(match &e.kind {
            ExprKind::Lit(l) => {
                let (v, t) = lit_val(l);
                mk(TKind::Lit(v), t)
            }
            ExprKind::Field(path) => {
                let t = field_table();
                let slot = t.slot(path).ok_or_else(|| {
                    let hint = if path.starts_with("prvDia") {
                        " (the history is read through n_previous(), days_since_first(), flux_change(), mag_change(), colour())"
                    } else {
                        ""
                    };
                    self.err(
                        ErrorKind::UnknownField,
                        span,
                        format!("unknown field {path}{hint}"),
                    )
                })?;
                mk(
                    TKind::Field {
                        slot,
                        path: path.clone(),
                    },
                    t.fields[slot].ty,
                )
            }
            ExprKind::Neg(a) => {
                let a = self.check(a)?;
                self.want_num(&a, "unary '-'")?;
                let ty = a.ty;
                mk(TKind::Neg(Box::new(a)), ty)
            }
            ExprKind::Arith(op, a, b) => {
                let (a, b) = (self.check(a)?, self.check(b)?);
                self.want_num(&a, "arithmetic")?;
                self.want_num(&b, "arithmetic")?;
                let ty = match (op, a.ty, b.ty) {
                    (_, Type::Null, Type::Null) => Type::Null,
                    (ArithOp::Div, _, _) => Type::Float,
                    (_, Type::Float, _) | (_, _, Type::Float) => Type::Float,
                    _ => Type::Int,
                };
                mk(TKind::Arith(*op, Box::new(a), Box::new(b)), ty)
            }
            ExprKind::Cmp(op, a, b) => {
                let (a, b) = (self.check(a)?, self.check(b)?);
                if !comparable(a.ty, b.ty, Some(*op)) {
                    return Err(self.err(
                        ErrorKind::Type,
                        span,
                        format!("cannot compare {} with {} using {op:?}", a.ty, b.ty),
                    ));
                }
                mk(TKind::Cmp(*op, Box::new(a), Box::new(b)), Type::Bool)
            }
            ExprKind::And(a, b) | ExprKind::Or(a, b) => {
                let (a, b) = (self.check(a)?, self.check(b)?);
                let and = matches!(e.kind, ExprKind::And(..));
                let what = if and { "AND" } else { "OR" };
                self.want_bool(&a, what)?;
                self.want_bool(&b, what)?;
                let k = if and {
                    TKind::And(Box::new(a), Box::new(b))
                } else {
                    TKind::Or(Box::new(a), Box::new(b))
                };
                mk(k, Type::Bool)
            }
            ExprKind::Not(a) => {
                let a = self.check(a)?;
                self.want_bool(&a, "NOT")?;
                mk(TKind::Not(Box::new(a)), Type::Bool)
            }
            ExprKind::In {
                expr,
                list,
                negated,
            } => {
                let a = self.check(expr)?;
                let mut vals = Vec::with_capacity(list.len());
                for item in list {
                    let ExprKind::Lit(l) = &item.kind else {
                        return Err(self.err(
                            ErrorKind::Type,
                            item.span,
                            "IN lists hold constants only",
                        ));
                    };
                    let (v, t) = lit_val(l);
                    if !comparable(a.ty, t, None) {
                        return Err(self.err(
                            ErrorKind::Type,
                            item.span,
                            format!("a {} in an IN list for a {}", t, a.ty),
                        ));
                    }
                    vals.push(v);
                }
                mk(TKind::In(Box::new(a), vals, *negated), Type::Bool)
            }
            ExprKind::Between {
                expr,
                lo,
                hi,
                negated,
            } => {
                let (a, l, h) = (self.check(expr)?, self.check(lo)?, self.check(hi)?);
                for (x, y) in [(&a, &l), (&a, &h)] {
                    if !comparable(x.ty, y.ty, Some(CmpOp::Le)) {
                        return Err(self.err(
                            ErrorKind::Type,
                            y.span,
                            format!("BETWEEN bound of type {} for a {}", y.ty, x.ty),
                        ));
                    }
                }
                mk(
                    TKind::Between(Box::new(a), Box::new(l), Box::new(h), *negated),
                    Type::Bool,
                )
            }
            ExprKind::IsNull { expr, negated } => {
                let a = self.check(expr)?;
                mk(TKind::IsNull(Box::new(a), *negated), Type::Bool)
            }
            ExprKind::Call {
                name,
                name_span,
                args,
            } => self.call(name, *name_span, args, span)?,
        })
    }

    fn call(
        &self,
        name: &str,
        name_span: Span,
        args: &[Expr],
        span: Span,
    ) -> Result<TExpr, ExprError> {
        let lname = name.to_ascii_lowercase();
        let arity = |n: usize| -> Result<(), ExprError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(self.err(
                    ErrorKind::Arity,
                    span,
                    format!("{name}() takes {n} argument(s), found {}", args.len()),
                ))
            }
        };
        let mk = |kind, ty| TExpr { kind, ty, span };
        Ok(match lname.as_str() {
            "n_previous" => {
                arity(0)?;
                mk(TKind::Hist(HistFn::NPrevious), Type::Int)
            }
            "days_since_first" => {
                arity(0)?;
                mk(TKind::Hist(HistFn::DaysSinceFirst), Type::Float)
            }
            "flux_change" => {
                arity(0)?;
                mk(TKind::Hist(HistFn::FluxChange), Type::Float)
            }
            "mag_change" => {
                arity(0)?;
                mk(TKind::Hist(HistFn::MagChange), Type::Float)
            }
            "colour" | "color" => {
                arity(2)?;
                let (a, b) = (self.band(&args[0])?, self.band(&args[1])?);
                mk(TKind::Hist(HistFn::Colour(a, b)), Type::Float)
            }
            "galactic_latitude" => {
                arity(0)?;
                mk(TKind::GalLat, Type::Float)
            }
            "abs" | "mag" => {
                arity(1)?;
                let a = self.check(&args[0])?;
                self.want_num(&a, &format!("{lname}()"))?;
                let (f, ty) = if lname == "abs" {
                    (
                        NumFn::Abs,
                        if a.ty == Type::Int {
                            Type::Int
                        } else {
                            Type::Float
                        },
                    )
                } else {
                    (NumFn::Mag, Type::Float)
                };
                mk(TKind::Num(f, Box::new(a)), ty)
            }
            "cone" => {
                arity(3)?;
                let (ra, dec, r) = (
                    self.constant(&args[0])?,
                    self.constant(&args[1])?,
                    self.constant(&args[2])?,
                );
                if !(-90.0..=90.0).contains(&dec) {
                    return Err(self.err(
                        ErrorKind::BadArgument,
                        args[1].span,
                        "declination outside [-90, 90] degrees",
                    ));
                }
                if !(0.0..=180.0).contains(&r) {
                    return Err(self.err(
                        ErrorKind::BadArgument,
                        args[2].span,
                        "cone radius outside [0, 180] degrees",
                    ));
                }
                mk(
                    TKind::Region(Box::new(Region::Cone {
                        center: UnitVector::from_radec_deg(ra, dec),
                        cos_radius: r.to_radians().cos(),
                    })),
                    Type::Bool,
                )
            }
            "polygon" => {
                if args.len() < 6 || !args.len().is_multiple_of(2) {
                    return Err(self.err(
                        ErrorKind::Arity,
                        span,
                        format!(
                            "polygon() takes an even number (at least 6) of arguments: ra1, dec1, ra2, dec2, …; found {}",
                            args.len()
                        ),
                    ));
                }
                let mut vs = Vec::with_capacity(args.len() / 2);
                for p in args.chunks(2) {
                    let (ra, dec) = (self.constant(&p[0])?, self.constant(&p[1])?);
                    if !(-90.0..=90.0).contains(&dec) {
                        return Err(self.err(
                            ErrorKind::BadArgument,
                            p[1].span,
                            "declination outside [-90, 90] degrees",
                        ));
                    }
                    vs.push(UnitVector::from_radec_deg(ra, dec));
                }
                let poly = SkyPolygon::new(vs).map_err(|e| {
                    self.err(
                        ErrorKind::BadArgument,
                        span,
                        format!("polygon: {e} (vertices must make a convex polygon)"),
                    )
                })?;
                mk(TKind::Region(Box::new(Region::Polygon(poly))), Type::Bool)
            }
            _ => {
                return Err(self.err(
                    ErrorKind::UnknownFunction,
                    name_span,
                    format!(
                        "unknown function {name}(); functions are n_previous, days_since_first, flux_change, mag_change, colour, cone, polygon, galactic_latitude, abs, mag"
                    ),
                ));
            }
        })
    }
}

/// Type-checks `e` (parsed from `src`) against the alert schema. The result must be
/// boolean (or the literal NULL).
///
/// # Errors
/// An [`ExprError`] at the first offending node.
pub fn check(e: &Expr, src: &str) -> Result<TExpr, ExprError> {
    let c = Checker { src };
    let t = c.check(e)?;
    if !matches!(t.ty, Type::Bool | Type::Null) {
        return Err(c.err(
            ErrorKind::Type,
            t.span,
            format!("a filter must be a condition (boolean), this is a {}", t.ty),
        ));
    }
    Ok(t)
}
