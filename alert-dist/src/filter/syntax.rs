//! Lexer and recursive-descent parser of the filter language: source text to an
//! [`Expr`] tree whose every node carries its byte [`Span`].
//!
//! Precedence, loosest first (as SQL): `OR`; `AND`; `NOT`; comparisons (`=`, `==`, `!=`,
//! `<>`, `<`, `<=`, `>`, `>=`, `[NOT] IN (…)`, `[NOT] BETWEEN a AND b`, `IS [NOT] NULL`),
//! which do not chain; `+ -`; `* / %`; unary `-`; literals, field paths, calls and
//! parentheses. Keywords are case-insensitive; `--` starts a comment to the end of the line.

use std::fmt;

/// A byte range of the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    fn to(self, other: Span) -> Span {
        Span {
            start: self.start,
            end: other.end.max(self.start),
        }
    }
}

/// What kind of mistake an [`ExprError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not an expression of the language.
    Syntax,
    /// A field path that the alert schema does not have.
    UnknownField,
    /// A function the language does not have.
    UnknownFunction,
    /// Operand or argument types that do not fit the operator or function.
    Type,
    /// A function called with the wrong number of arguments.
    Arity,
    /// An argument that must be a constant (a band, a cone, a polygon) is not valid.
    BadArgument,
    /// The expression's static cost is over the limit.
    TooCostly,
}

/// An error in a filter expression, at a line and column (both 1-based, columns in
/// characters). `Display` shows the message, the line of text and a caret under the span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// What kind of mistake.
    pub kind: ErrorKind,
    /// What is wrong, for people.
    pub message: String,
    /// Where, in bytes of the expression.
    pub span: Span,
    /// 1-based line of the span's start.
    pub line: usize,
    /// 1-based column (characters) of the span's start.
    pub column: usize,
    /// The text of that line.
    pub line_text: String,
    /// Carets under the span (as many as its characters on that line, at least one).
    pub width: usize,
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

impl ExprError {
    /// An error of `kind` at `span` of `src`.
    pub fn new(kind: ErrorKind, message: impl Into<String>, span: Span, src: &str) -> Self {
        let start = span.start.min(src.len());
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        let (line, column) = line_col(src, start);
        let end = span.end.clamp(start, line_end);
        let width = src[start..end].chars().count().max(1);
        Self {
            kind,
            message: message.into(),
            span,
            line,
            column,
            line_text: src[line_start..line_end].to_string(),
            width,
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pad: String = self
            .line_text
            .chars()
            .take(self.column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(
            f,
            "line {}, column {}: {}\n  {}\n  {}{}",
            self.line,
            self.column,
            self.message,
            self.line_text,
            pad,
            "^".repeat(self.width)
        )
    }
}

impl std::error::Error for ExprError {}

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    /// `NULL`.
    Null,
    /// `TRUE` / `FALSE`.
    Bool(bool),
    /// An integer (64-bit).
    Int(i64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A string in single or double quotes (a doubled quote inside stands for one).
    Str(String),
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (always a floating-point division)
    Div,
    /// `%` (remainder, sign of the dividend)
    Rem,
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=` or `==`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// An expression node with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What the node is.
    pub kind: ExprKind,
    /// Where it is in the source.
    pub span: Span,
}

/// The nodes of the language.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A literal.
    Lit(Lit),
    /// A field path such as `diaSource.psfFlux` or `diaSourceId`.
    Field(String),
    /// Unary minus.
    Neg(Box<Expr>),
    /// `a op b`, arithmetic.
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    /// `a op b`, comparison.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `a AND b`.
    And(Box<Expr>, Box<Expr>),
    /// `a OR b`.
    Or(Box<Expr>, Box<Expr>),
    /// `NOT a`.
    Not(Box<Expr>),
    /// `a [NOT] IN (l1, l2, …)`.
    In {
        /// The tested value.
        expr: Box<Expr>,
        /// The list.
        list: Vec<Expr>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `a [NOT] BETWEEN lo AND hi`.
    Between {
        /// The tested value.
        expr: Box<Expr>,
        /// Lower bound (inclusive).
        lo: Box<Expr>,
        /// Upper bound (inclusive).
        hi: Box<Expr>,
        /// `NOT BETWEEN`.
        negated: bool,
    },
    /// `a IS [NOT] NULL`.
    IsNull {
        /// The tested value.
        expr: Box<Expr>,
        /// `IS NOT NULL`.
        negated: bool,
    },
    /// `name(args…)`.
    Call {
        /// The function's name as written.
        name: String,
        /// Span of the name.
        name_span: Span,
        /// The arguments.
        args: Vec<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// An unsigned integer literal (the sign is an operator; `-9223372036854775808` is
    /// folded in `unary`).
    Int(u64),
    Float(f64),
    Str(String),
    Ident(String),
    Kw(Kw),
    Op(&'static str),
    Eof,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kw {
    And,
    Or,
    Not,
    In,
    Between,
    Is,
    Null,
    True,
    False,
}

fn keyword(s: &str) -> Option<Kw> {
    Some(match s.to_ascii_uppercase().as_str() {
        "AND" => Kw::And,
        "OR" => Kw::Or,
        "NOT" => Kw::Not,
        "IN" => Kw::In,
        "BETWEEN" => Kw::Between,
        "IS" => Kw::Is,
        "NULL" => Kw::Null,
        "TRUE" => Kw::True,
        "FALSE" => Kw::False,
        _ => return None,
    })
}

/// Longest expression text accepted, bytes.
pub const MAX_SOURCE_LEN: usize = 64 * 1024;
/// Deepest nesting accepted (parentheses, operators): keeps the recursive parser and
/// evaluators off the end of the stack.
pub const MAX_DEPTH: usize = 256;

fn lex(src: &str) -> Result<Vec<(Tok, Span)>, ExprError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |m: String, s: usize, e: usize| {
        ExprError::new(ErrorKind::Syntax, m, Span { start: s, end: e }, src)
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let mut float = false;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' {
                float = true;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let save = i;
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                if i < b.len() && b[i].is_ascii_digit() {
                    float = true;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                } else {
                    i = save;
                }
            }
            if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
                return Err(err("malformed number".into(), start, i + 1));
            }
            let text = &src[start..i];
            let tok = if float {
                match text.parse::<f64>() {
                    Ok(x) if x.is_finite() => Tok::Float(x),
                    _ => return Err(err(format!("number {text} is out of range"), start, i)),
                }
            } else {
                match text.parse::<u64>() {
                    Ok(x) if x <= 1 << 63 => Tok::Int(x),
                    _ => {
                        return Err(err(
                            format!("integer {text} does not fit in 64 bits"),
                            start,
                            i,
                        ));
                    }
                }
            };
            out.push((tok, Span { start, end: i }));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let text = &src[start..i];
            let tok = keyword(text).map_or_else(|| Tok::Ident(text.to_string()), Tok::Kw);
            out.push((tok, Span { start, end: i }));
            continue;
        }
        if c == b'\'' || c == b'"' {
            let mut s = String::new();
            i += 1;
            loop {
                match src[i..].chars().next() {
                    None => return Err(err("unterminated string".into(), start, i)),
                    Some(ch) if ch as u32 == c as u32 => {
                        if b.get(i + 1) == Some(&c) {
                            s.push(ch);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some('\n') => return Err(err("unterminated string".into(), start, i)),
                    Some(ch) => {
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((Tok::Str(s), Span { start, end: i }));
            continue;
        }
        let two = src.get(i..i + 2).unwrap_or("");
        let op: &'static str = match two {
            "<=" => "<=",
            ">=" => ">=",
            "<>" => "<>",
            "!=" => "!=",
            "==" => "==",
            _ => match c {
                b'<' => "<",
                b'>' => ">",
                b'=' => "=",
                b'+' => "+",
                b'-' => "-",
                b'*' => "*",
                b'/' => "/",
                b'%' => "%",
                b'(' => "(",
                b')' => ")",
                b',' => ",",
                b'.' => ".",
                _ => {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(err(
                        format!("unexpected character {ch:?}"),
                        start,
                        start + ch.len_utf8(),
                    ));
                }
            },
        };
        i += op.len();
        out.push((Tok::Op(op), Span { start, end: i }));
    }
    out.push((
        Tok::Eof,
        Span {
            start: b.len(),
            end: b.len(),
        },
    ));
    Ok(out)
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, Span)>,
    pos: usize,
    depth: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(x) => format!("number {x}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Ident(s) => format!("name {s}"),
        Tok::Kw(k) => format!("keyword {}", format!("{k:?}").to_uppercase()),
        Tok::Op(o) => format!("'{o}'"),
        Tok::Eof => "end of expression".into(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn span(&self) -> Span {
        self.toks[self.pos].1
    }
    fn prev_span(&self) -> Span {
        self.toks[self.pos.saturating_sub(1)].1
    }
    fn bump(&mut self) -> (Tok, Span) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn err(&self, msg: String) -> ExprError {
        ExprError::new(ErrorKind::Syntax, msg, self.span(), self.src)
    }
    fn expected(&self, what: &str) -> ExprError {
        self.err(format!("expected {what}, found {}", describe(self.peek())))
    }
    fn eat_kw(&mut self, k: Kw) -> bool {
        if *self.peek() == Tok::Kw(k) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn eat_op(&mut self, o: &str) -> bool {
        if matches!(self.peek(), Tok::Op(x) if *x == o) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn expect_op(&mut self, o: &str) -> Result<(), ExprError> {
        if self.eat_op(o) {
            Ok(())
        } else {
            Err(self.expected(&format!("'{o}'")))
        }
    }
    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("expression nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        self.enter()?;
        let mut l = self.and()?;
        while self.eat_kw(Kw::Or) {
            let r = self.and()?;
            let span = l.span.to(r.span);
            l = Expr {
                kind: ExprKind::Or(Box::new(l), Box::new(r)),
                span,
            };
        }
        self.depth -= 1;
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.not()?;
        while self.eat_kw(Kw::And) {
            let r = self.not()?;
            let span = l.span.to(r.span);
            l = Expr {
                kind: ExprKind::And(Box::new(l), Box::new(r)),
                span,
            };
        }
        Ok(l)
    }
    fn not(&mut self) -> Result<Expr, ExprError> {
        let start = self.span();
        if self.eat_kw(Kw::Not) {
            self.enter()?;
            let e = self.not()?;
            self.depth -= 1;
            let span = start.to(e.span);
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(e)),
                span,
            });
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let l = self.add()?;
        let op = match self.peek() {
            Tok::Op("=") | Tok::Op("==") => Some(CmpOp::Eq),
            Tok::Op("!=") | Tok::Op("<>") => Some(CmpOp::Ne),
            Tok::Op("<") => Some(CmpOp::Lt),
            Tok::Op("<=") => Some(CmpOp::Le),
            Tok::Op(">") => Some(CmpOp::Gt),
            Tok::Op(">=") => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let r = self.add()?;
            let span = l.span.to(r.span);
            return Ok(Expr {
                kind: ExprKind::Cmp(op, Box::new(l), Box::new(r)),
                span,
            });
        }
        if self.eat_kw(Kw::Is) {
            let negated = self.eat_kw(Kw::Not);
            if !self.eat_kw(Kw::Null) {
                return Err(self.expected("NULL"));
            }
            let span = l.span.to(self.prev_span());
            return Ok(Expr {
                kind: ExprKind::IsNull {
                    expr: Box::new(l),
                    negated,
                },
                span,
            });
        }
        let save = self.pos;
        let negated = self.eat_kw(Kw::Not);
        if self.eat_kw(Kw::In) {
            self.expect_op("(")?;
            let mut list = Vec::new();
            if !self.eat_op(")") {
                loop {
                    list.push(self.add()?);
                    if self.eat_op(")") {
                        break;
                    }
                    self.expect_op(",")?;
                }
            }
            let span = l.span.to(self.prev_span());
            return Ok(Expr {
                kind: ExprKind::In {
                    expr: Box::new(l),
                    list,
                    negated,
                },
                span,
            });
        }
        if self.eat_kw(Kw::Between) {
            let lo = self.add()?;
            if !self.eat_kw(Kw::And) {
                return Err(self.expected("AND of BETWEEN"));
            }
            let hi = self.add()?;
            let span = l.span.to(hi.span);
            return Ok(Expr {
                kind: ExprKind::Between {
                    expr: Box::new(l),
                    lo: Box::new(lo),
                    hi: Box::new(hi),
                    negated,
                },
                span,
            });
        }
        if negated {
            self.pos = save;
            return Err(self.expected("IN or BETWEEN after NOT"));
        }
        Ok(l)
    }
    fn add(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.mul()?;
        loop {
            let op = match self.peek() {
                Tok::Op("+") => ArithOp::Add,
                Tok::Op("-") => ArithOp::Sub,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.mul()?;
            let span = l.span.to(r.span);
            l = Expr {
                kind: ExprKind::Arith(op, Box::new(l), Box::new(r)),
                span,
            };
        }
    }
    fn mul(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Op("*") => ArithOp::Mul,
                Tok::Op("/") => ArithOp::Div,
                Tok::Op("%") => ArithOp::Rem,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            let span = l.span.to(r.span);
            l = Expr {
                kind: ExprKind::Arith(op, Box::new(l), Box::new(r)),
                span,
            };
        }
    }
    fn unary(&mut self) -> Result<Expr, ExprError> {
        let start = self.span();
        if self.eat_op("-") {
            if *self.peek() == Tok::Int(1 << 63) {
                let (_, end) = self.bump();
                return Ok(Expr {
                    kind: ExprKind::Lit(Lit::Int(i64::MIN)),
                    span: start.to(end),
                });
            }
            self.enter()?;
            let e = self.unary()?;
            self.depth -= 1;
            let span = start.to(e.span);
            // Fold `-literal` so that i64::MIN and negative constants are literals.
            let kind = match e.kind {
                ExprKind::Lit(Lit::Int(i)) if i != i64::MIN => ExprKind::Lit(Lit::Int(-i)),
                ExprKind::Lit(Lit::Float(x)) => ExprKind::Lit(Lit::Float(-x)),
                k => ExprKind::Neg(Box::new(Expr {
                    kind: k,
                    span: e.span,
                })),
            };
            return Ok(Expr { kind, span });
        }
        self.primary()
    }
    fn primary(&mut self) -> Result<Expr, ExprError> {
        let (tok, span) = self.bump();
        let lit = |l| {
            Ok(Expr {
                kind: ExprKind::Lit(l),
                span,
            })
        };
        match tok {
            Tok::Int(i) => match i64::try_from(i) {
                Ok(i) => lit(Lit::Int(i)),
                Err(_) => Err(ExprError::new(
                    ErrorKind::Syntax,
                    format!("integer {i} does not fit in 64 bits"),
                    span,
                    self.src,
                )),
            },
            Tok::Float(x) => lit(Lit::Float(x)),
            Tok::Str(s) => lit(Lit::Str(s)),
            Tok::Kw(Kw::Null) => lit(Lit::Null),
            Tok::Kw(Kw::True) => lit(Lit::Bool(true)),
            Tok::Kw(Kw::False) => lit(Lit::Bool(false)),
            Tok::Op("(") => {
                self.enter()?;
                let e = self.or()?;
                self.depth -= 1;
                self.expect_op(")")?;
                Ok(Expr {
                    kind: e.kind,
                    span: span.to(self.prev_span()),
                })
            }
            Tok::Ident(name) => {
                if self.eat_op("(") {
                    self.enter()?;
                    let mut args = Vec::new();
                    if !self.eat_op(")") {
                        loop {
                            args.push(self.or()?);
                            if self.eat_op(")") {
                                break;
                            }
                            self.expect_op(",")?;
                        }
                    }
                    self.depth -= 1;
                    return Ok(Expr {
                        kind: ExprKind::Call {
                            name,
                            name_span: span,
                            args,
                        },
                        span: span.to(self.prev_span()),
                    });
                }
                let mut path = name;
                let mut end = span;
                while self.eat_op(".") {
                    match self.bump() {
                        (Tok::Ident(n), s) => {
                            path.push('.');
                            path.push_str(&n);
                            end = s;
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.expected("a field name after '.'"));
                        }
                    }
                }
                Ok(Expr {
                    kind: ExprKind::Field(path),
                    span: span.to(end),
                })
            }
            t => {
                self.pos = self.pos.saturating_sub(1);
                if t == Tok::Eof {
                    self.pos = self.toks.len() - 1;
                }
                Err(self.err(format!("expected a value, found {}", describe(&t))))
            }
        }
    }
}

/// Parses an expression.
///
/// # Errors
/// [`ErrorKind::Syntax`] at the offending token.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    if src.len() > MAX_SOURCE_LEN {
        return Err(ExprError::new(
            ErrorKind::Syntax,
            format!("expression longer than {MAX_SOURCE_LEN} bytes"),
            Span::default(),
            src,
        ));
    }
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.or()?;
    if *p.peek() != Tok::Eof {
        return Err(p.expected("an operator or the end of the expression"));
    }
    if let Some(span) = too_deep(&e, 0) {
        return Err(ExprError::new(
            ErrorKind::Syntax,
            format!("expression nested deeper than {MAX_DEPTH} (use IN for long lists)"),
            span,
            src,
        ));
    }
    Ok(e)
}

/// The children of a node, in source order.
fn children(e: &Expr) -> Vec<&Expr> {
    match &e.kind {
        ExprKind::Lit(_) | ExprKind::Field(_) => vec![],
        ExprKind::Neg(a) | ExprKind::Not(a) => vec![a],
        ExprKind::IsNull { expr, .. } => vec![expr],
        ExprKind::Arith(_, a, b)
        | ExprKind::Cmp(_, a, b)
        | ExprKind::And(a, b)
        | ExprKind::Or(a, b) => vec![a, b],
        ExprKind::In { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
        ExprKind::Between { expr, lo, hi, .. } => vec![expr, lo, hi],
        ExprKind::Call { args, .. } => args.iter().collect(),
    }
}

/// The span of a node deeper than [`MAX_DEPTH`] (chains of binary operators parse
/// iteratively but nest in the tree), if any; recursion stops at the limit.
fn too_deep(e: &Expr, d: usize) -> Option<Span> {
    if d > MAX_DEPTH {
        return Some(e.span);
    }
    children(e).into_iter().find_map(|c| too_deep(c, d + 1))
}
