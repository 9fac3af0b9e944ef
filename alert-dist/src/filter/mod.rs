//! The filter language: safe, bounded-cost conditions over alerts, for the filtered
//! streams of the alert distribution (issue 7; Rubin's mini-broker requirements
//! DMS-REQ-0342/0343/0348: 100 users × 20 full alerts per visit).
//!
//! A filter is one boolean expression, parsed ([`syntax`]) to a tree with spans,
//! type-checked against the alert schema ([`check`]; the fields of
//! [`crate::schema::alert_schema`], nullable fields typed nullable), refused when its
//! static cost is over a limit, and compiled ([`compile`]) to closures over field slots
//! of an [`AlertView`] ([`view`]). No user code runs: the language has no loops, no
//! recursion, no user functions, and every construct has a fixed cost. A plain
//! tree-walking interpreter ([`interp`]) is kept as the reference the compiled form is
//! tested against. Filter files, the set of active filters and the per-visit quota are
//! in [`file`] and [`quota`]; the service that consumes the full stream once and
//! forwards each filter's matches to its topic is [`service`]; [`bench`] makes the realistic visit and the 100 filters
//! of `apflow bench filters`.
//!
//! # The language
//!
//! ```text
//! diaSource.reliability > 0.9 AND diaSource.snr >= 10
//!   AND n_previous() = 0 AND diaSource.band IN ('g', 'r', 'i')
//!   AND NOT cone(150.1, 2.2, 0.05) AND abs(galactic_latitude()) > 20
//! ```
//!
//! * **Literals**: integers (64-bit), decimals (`0.5`, `1e3`), strings in `'…'` or
//!   `"…"` (a doubled quote is a quote), `TRUE`, `FALSE`, `NULL`.
//! * **Fields**: paths as in the `lsst.v11_0` alert schema: the top-level
//!   `diaSourceId`, `observation_reason`, `target_name`, and `diaSource.<field>`,
//!   `diaObject.<field>`, `ssSource.<field>` for every field of those records
//!   (`diaSource.psfFlux`, `diaSource.reliability`, `diaSource.band`,
//!   `diaObject.nDiaSources`, `ssSource.designation`, …). Avro `int`/`long` are
//!   integers, `float`/`double` are floats, `boolean`, `string`. `diaObject.*` is NULL
//!   for a solar-system source, `ssSource.*` for any other.
//! * **Operators**, loosest first: `OR`; `AND`; `NOT`; `=` (`==`), `!=` (`<>`), `<`,
//!   `<=`, `>`, `>=`, `x [NOT] IN (c1, c2, …)` (constants), `x [NOT] BETWEEN a AND b`
//!   (inclusive), `x IS [NOT] NULL`; `+ -`; `* / %`; unary `-`. Integers and floats
//!   mix (integer op integer stays an integer, except `/`, which is always a float
//!   division); strings compare with each other (byte order), booleans only with `=`
//!   and `!=`. Keywords are case-insensitive; `--` comments to the end of the line.
//! * **Functions** (names case-insensitive). Fluxes are nJy; magnitudes AB,
//!   `m = 31.4 − 2.5 log10(flux / nJy)` ([`AB_ZERO_POINT_NJY`]); "the history" is the
//!   alert's `prvDiaSources` (oldest first; the latest [`view::MAX_HISTORY`] kept) and
//!   "latest" means last in that order:
//!   - `n_previous()` — integer: number of previous detections (0 without history);
//!   - `days_since_first()` — float: `diaSource.midpointMjdTai` minus the earliest
//!     `midpointMjdTai` of the current and previous detections (0 for a first
//!     detection);
//!   - `flux_change()` — float, nJy: `diaSource.psfFlux` minus the `psfFlux` of the
//!     latest previous detection in the same band (positive: brighter);
//!   - `mag_change()` — float, mag: the same as a magnitude difference, current minus
//!     previous (negative: brighter); NULL when either flux is not positive;
//!   - `colour('g', 'r')` (or `color`) — float, mag: `m_g − m_r`, each from the latest
//!     detection in that band (the current DiaSource if it is in that band, else the
//!     latest previous one); bands are constants among `u g r i z y`;
//!   - `cone(ra, dec, radius)` — boolean: the DiaSource position (`diaSource.ra`,
//!     `diaSource.dec`, ICRS degrees) within `radius` degrees of (ra, dec);
//!   - `polygon(ra1, dec1, ra2, dec2, ra3, dec3, …)` — boolean: the position inside the
//!     convex polygon with great-circle edges through those vertices (either winding;
//!     [`apflow_core::geom::SkyPolygon`]); on an edge counts as inside;
//!   - `galactic_latitude()` — float, degrees: Galactic latitude `b` of the position
//!     ([`crate::coords::galactic`]);
//!   - `abs(x)`; `mag(flux)` — AB magnitude of a flux in nJy (NULL unless positive).
//!
//!   Region arguments are numeric constants and are checked when the filter is
//!   compiled (declination in range, polygon convex).
//!
//! # NULL: three-valued logic, as SQL
//!
//! A missing value is NULL. Arithmetic and comparisons with a NULL operand are NULL;
//! so are integer overflow, division by zero and any non-finite float result.
//! `AND` is FALSE if either side is FALSE, else NULL if either is NULL, else TRUE;
//! `OR` is TRUE if either side is TRUE, else NULL if either is NULL, else FALSE;
//! `NOT NULL` is NULL. `x IN (…)` is TRUE when an item equals `x`, else NULL when `x`
//! or an item is NULL, else FALSE (`NOT IN` negates that). `BETWEEN a AND b` is
//! `x >= a AND x <= b`. `IS [NOT] NULL` is never NULL. **A filter passes an alert only
//! when its value is TRUE**: NULL rejects, so `diaSource.reliability > 0.9` rejects an
//! alert without a reliability, and so does `NOT (diaSource.reliability > 0.9)`.
//!
//! # Cost
//!
//! The static cost ([`check::TExpr::cost`]) is one per node, plus one per IN-list item
//! and polygon vertex, plus [`view::MAX_HISTORY`] per history function (the most
//! entries one may scan). Filters over the limit ([`check::DEFAULT_MAX_COST`] = 10,000
//! by default, configurable through [`check::CostModel`]) are refused. The
//! interpreter counts its steps in the same units, and a property test checks that
//! accepted expressions never take more steps than their cost. Nesting is limited to
//! [`syntax::MAX_DEPTH`] and the text to [`syntax::MAX_SOURCE_LEN`] bytes.

pub mod bench;
pub mod check;
pub mod compile;
pub mod file;
pub mod interp;
pub mod quota;
pub mod service;
pub mod syntax;
pub mod view;

#[cfg(test)]
mod tests;

pub use check::{CostModel, DEFAULT_MAX_COST};
pub use file::{DEFAULT_QUOTA, Filter, FilterFileError, FilterSet, FilterSetError, FilterSpec};
pub use quota::{QuotaDecision, QuotaEngine, VisitCounts};
pub use service::{
    FilterMatch, FilterService, FilterServiceConfig, FilterServiceError, FilterServiceOptions,
    FilterSummary, read_matches_log,
};
pub use syntax::{ErrorKind, ExprError};
pub use view::{AlertView, ViewError};

/// AB magnitude of 1 nJy: `m = 31.4 − 2.5 log10(flux / nJy)` (3631 Jy zero point), the
/// science core's photometric zero point.
pub use apflow_prompt_proc::calibrate::AB_NJY_ZERO_POINT as AB_ZERO_POINT_NJY;

/// The AB magnitude of a flux in nJy (`None` for a missing or non-positive flux).
pub(crate) fn mag(f: Option<f64>) -> Option<f64> {
    f.filter(|f| *f > 0.0)
        .map(|f| AB_ZERO_POINT_NJY - 2.5 * f.log10())
}

/// SQL three-valued AND (`None` is NULL).
pub(crate) fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// SQL three-valued OR (`None` is NULL).
pub(crate) fn or3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// `b`, negated when `negated` (NULL stays NULL).
pub(crate) fn not3(b: Option<bool>, negated: bool) -> Option<bool> {
    if negated { b.map(|b| !b) } else { b }
}

/// A parsed, checked and compiled filter expression.
#[derive(Debug)]
pub struct CompiledFilter {
    typed: check::TExpr,
    compiled: compile::Compiled,
    cost: u64,
}

impl CompiledFilter {
    /// Compiles `src` with the default cost model.
    ///
    /// # Errors
    /// The first [`ExprError`] (syntax, unknown field or function, type, arity, bad
    /// constant argument, or cost over the limit), at its line and column.
    pub fn new(src: &str) -> Result<Self, ExprError> {
        Self::with_cost_model(src, &CostModel::default())
    }

    /// Compiles `src`, refusing a cost over `model.limit`.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_cost_model(src: &str, model: &CostModel) -> Result<Self, ExprError> {
        let ast = syntax::parse(src)?;
        let typed = check::check(&ast, src)?;
        let cost = typed.cost(model);
        if cost > model.limit {
            return Err(ExprError::new(
                ErrorKind::TooCostly,
                format!(
                    "the filter costs {cost}, over the limit of {} (each history function costs {})",
                    model.limit, model.history
                ),
                typed.span,
                src,
            ));
        }
        let compiled = compile::compile(&typed);
        Ok(Self {
            typed,
            compiled,
            cost,
        })
    }

    /// Whether the alert passes (the expression is TRUE).
    #[inline]
    pub fn matches(&self, v: &AlertView) -> bool {
        self.compiled.eval(v) == Some(true)
    }

    /// The expression's three-valued value (`None`: NULL), compiled evaluator.
    #[inline]
    pub fn eval(&self, v: &AlertView) -> Option<bool> {
        self.compiled.eval(v)
    }

    /// The same value from the tree-walking interpreter, adding its steps to `steps`.
    pub fn interpret(&self, v: &AlertView, steps: &mut u64) -> Option<bool> {
        match interp::eval(&self.typed, v, steps) {
            view::Val::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The static cost.
    pub fn cost(&self) -> u64 {
        self.cost
    }
}
