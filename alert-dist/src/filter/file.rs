//! Filter files and the set of active filters.
//!
//! One TOML file per filter (`deploy/filters/*.toml` are the shipped ones):
//!
//! ```toml
//! owner = "transients@example.org"   # who to ask about it
//! name = "bright_new_transients"     # [A-Za-z0-9._-], unique in the set
//! expression = '''
//! diaSource.reliability > 0.9 AND n_previous() = 0
//! '''
//! quota = 20                         # alerts per visit, default 20 (DMS-REQ-0343)
//! topic = "alerts.filter.bright_new_transients"  # default: alerts.filter.<name>
//! ```
//!
//! Unknown keys are errors. Every error names the file and a line and column in it:
//! for an expression error, the position of the offending text inside the file when
//! the expression is a literal string (`'…'`, `'''…'''`) or a basic string without
//! escapes, else the position of the string with the expression's own line and
//! column in the message.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::CompiledFilter;
use super::check::CostModel;
use super::quota::QuotaEngine;
use super::syntax::ExprError;
use super::view::AlertView;

/// Default per-visit quota of a filter: Rubin's 20 full alerts per visit per user
/// (DMS-REQ-0343).
pub const DEFAULT_QUOTA: u32 = 20;
/// Prefix of the default output topic: `alerts.filter.<name>`.
pub const TOPIC_PREFIX: &str = "alerts.filter.";

/// A filter file as written (serde only).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Who owns the filter (an e-mail address or a team).
    pub owner: String,
    /// Unique name, `[A-Za-z0-9._-]+` (with its place in the file, for errors).
    pub name: toml::Spanned<String>,
    /// The condition.
    pub expression: toml::Spanned<String>,
    /// Alerts per visit (default [`DEFAULT_QUOTA`]).
    #[serde(default = "default_quota")]
    pub quota: u32,
    /// Output topic (default `alerts.filter.<name>`).
    #[serde(default)]
    pub topic: Option<toml::Spanned<String>>,
}

fn default_quota() -> u32 {
    DEFAULT_QUOTA
}

/// A loaded, compiled filter.
#[derive(Debug)]
pub struct Filter {
    /// Owner.
    pub owner: String,
    /// Name.
    pub name: String,
    /// Alerts per visit.
    pub quota: u32,
    /// Output topic.
    pub topic: String,
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    /// The compiled condition.
    pub condition: CompiledFilter,
}

/// An error in one filter file, at a line and column of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterFileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line in the file (0 when the file could not be read).
    pub line: usize,
    /// 1-based column in the file.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The expression error, for its caret display.
    pub expr: Option<Box<ExprError>>,
}

impl fmt::Display for FilterFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(e) = &self.expr {
            let mut lines = e
                .to_string()
                .lines()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>();
            lines.insert(0, String::new());
            f.write_str(&lines.join("\n"))?;
        }
        Ok(())
    }
}

impl std::error::Error for FilterFileError {}

/// The filter files of a directory: its `*.toml` files (symbolic links followed, as
/// a mounted Kubernetes ConfigMap has them), sorted by path.
pub(crate) fn filter_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

/// Every error of a filter directory.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterSetError {
    /// The errors, file by file.
    pub errors: Vec<FilterFileError>,
}

impl fmt::Display for FilterSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FilterSetError {}

/// Where the expression's text starts in the file, when the file holds it verbatim.
fn verbatim_start(text: &str, span: std::ops::Range<usize>, value: &str) -> Option<usize> {
    let raw = text.get(span.clone())?;
    let mut start = span.start;
    let quote = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
        3
    } else {
        1
    };
    start += quote;
    if quote == 3 {
        if text[start..].starts_with("\r\n") {
            start += 2;
        } else if text[start..].starts_with('\n') {
            start += 1;
        }
    }
    (text.get(start..start + value.len()) == Some(value)).then_some(start)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Filter {
    /// A filter from its parts (no file); `topic` defaults to `alerts.filter.<name>`.
    ///
    /// # Errors
    /// The expression's [`ExprError`].
    pub fn new(
        owner: &str,
        name: &str,
        expression: &str,
        quota: u32,
        topic: Option<String>,
        model: &CostModel,
    ) -> Result<Self, ExprError> {
        Ok(Self {
            owner: owner.to_string(),
            name: name.to_string(),
            quota,
            topic: topic.unwrap_or_else(|| format!("{TOPIC_PREFIX}{name}")),
            path: None,
            condition: CompiledFilter::with_cost_model(expression, model)?,
        })
    }

    /// Reads and compiles one filter file.
    ///
    /// # Errors
    /// A [`FilterFileError`] naming the file, line and column.
    pub fn load(path: &Path, model: &CostModel) -> Result<Self, FilterFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FilterFileError {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
            expr: None,
        })?;
        Self::from_toml(&text, path, model)
    }

    /// Compiles a filter from the text of a filter file (`path` names it in errors).
    ///
    /// # Errors
    /// A [`FilterFileError`] naming the file, line and column.
    pub fn from_toml(text: &str, path: &Path, model: &CostModel) -> Result<Self, FilterFileError> {
        let err = |offset: usize, message: String, expr: Option<Box<ExprError>>| {
            let (line, column) = super::syntax::line_col(text, offset);
            FilterFileError {
                path: path.to_path_buf(),
                line,
                column,
                message,
                expr,
            }
        };
        let spec: FilterSpec = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            err(at, e.message().trim().to_string(), None)
        })?;
        let name = spec.name.get_ref();
        if !valid_name(name) {
            return Err(err(
                spec.name.span().start,
                format!("filter name {name:?} must be 1-200 characters of [A-Za-z0-9._-]"),
                None,
            ));
        }
        let topic = match &spec.topic {
            Some(t) if !valid_name(t.get_ref()) => {
                return Err(err(
                    t.span().start,
                    format!(
                        "topic {:?} must be 1-200 characters of [A-Za-z0-9._-]",
                        t.get_ref()
                    ),
                    None,
                ));
            }
            Some(t) => t.get_ref().clone(),
            None => format!("{TOPIC_PREFIX}{name}"),
        };
        let expr = spec.expression.get_ref();
        let condition = CompiledFilter::with_cost_model(expr, model).map_err(|e| {
            let span = spec.expression.span();
            match verbatim_start(text, span.clone(), expr) {
                Some(start) => err(start + e.span.start, e.message.clone(), Some(Box::new(e))),
                None => err(
                    span.start,
                    format!(
                        "expression line {}, column {}: {}",
                        e.line, e.column, e.message
                    ),
                    Some(Box::new(e)),
                ),
            }
        })?;
        Ok(Self {
            owner: spec.owner,
            name: spec.name.into_inner(),
            quota: spec.quota,
            topic,
            path: Some(path.to_path_buf()),
            condition,
        })
    }
}

/// The active filters, evaluated together on each alert.
#[derive(Debug, Default)]
pub struct FilterSet {
    filters: Vec<Filter>,
}

impl FilterSet {
    /// A set of filters; names and topics must be unique.
    ///
    /// # Errors
    /// One [`FilterFileError`] per duplicate.
    pub fn new(filters: Vec<Filter>) -> Result<Self, FilterSetError> {
        let mut errors = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            for g in &filters[..i] {
                let what = if g.name == f.name {
                    Some(format!("filter name {} is also used by", f.name))
                } else if g.topic == f.topic {
                    Some(format!("topic {} is also used by", f.topic))
                } else {
                    None
                };
                if let Some(what) = what {
                    errors.push(FilterFileError {
                        path: f.path.clone().unwrap_or_default(),
                        line: 1,
                        column: 1,
                        message: format!(
                            "{what} {}",
                            g.path.as_deref().unwrap_or(Path::new("?")).display()
                        ),
                        expr: None,
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(Self { filters })
        } else {
            Err(FilterSetError { errors })
        }
    }

    /// Loads every `*.toml` of `dir` (sorted by file name) with the default cost model.
    ///
    /// # Errors
    /// Every file's error, not just the first.
    pub fn load_dir(dir: &Path) -> Result<Self, FilterSetError> {
        Self::load_dir_with(dir, &CostModel::default())
    }

    /// Loads every `*.toml` of `dir` with a cost model.
    ///
    /// # Errors
    /// Every file's error, not just the first.
    pub fn load_dir_with(dir: &Path, model: &CostModel) -> Result<Self, FilterSetError> {
        let dir_err = |e: std::io::Error| FilterSetError {
            errors: vec![FilterFileError {
                path: dir.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read filter directory: {e}"),
                expr: None,
            }],
        };
        let paths = filter_files(dir).map_err(dir_err)?;
        let mut filters = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            match Filter::load(&p, model) {
                Ok(f) => filters.push(f),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(FilterSetError { errors });
        }
        Self::new(filters)
    }

    /// The filters, in load order; a filter's index is its id in [`QuotaEngine`].
    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    /// Number of filters.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Appends to `out` the index of every filter the alert passes.
    pub fn matching(&self, view: &AlertView, out: &mut Vec<usize>) {
        for (i, f) in self.filters.iter().enumerate() {
            if f.condition.matches(view) {
                out.push(i);
            }
        }
    }

    /// A quota engine with these filters' quotas.
    pub fn quota_engine(&self) -> QuotaEngine {
        QuotaEngine::new(self.filters.iter().map(|f| f.quota).collect())
    }
}
