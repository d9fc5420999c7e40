//! The syntax tree of a query and its canonical printing.
//!
//! [`Display`](std::fmt::Display) prints a tree in canonical form: keywords and function names in
//! upper case, strings single-quoted, only the parentheses precedence needs. Printing a tree the
//! parser produced and parsing the text again gives the same tree.

use std::fmt;

/// A whole query: `SELECT [TOP n] … FROM devices [WHERE …] [GROUP BY …]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `TOP n`: at most this many items are returned.
    pub top: Option<u64>,
    /// What each result item holds.
    pub select: Select,
    /// The collection queried.
    pub from: Collection,
    /// The `WHERE` condition, if any.
    pub condition: Option<Condition>,
    /// The `GROUP BY` attributes, in order; empty without `GROUP BY`.
    pub group_by: Vec<Path>,
}

/// The collection a query reads (`FROM …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Collection {
    /// `FROM devices`: device twins.
    Devices,
}

/// The `SELECT` list.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `SELECT *`: whole twins.
    All,
    /// A projection: one output key per item.
    Items(Vec<SelectItem>),
}

/// One element of a projection: `expr [AS alias]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectItem {
    /// The projected value.
    pub value: Projection,
    /// The output key given with `AS`.
    pub alias: Option<String>,
}

/// The value of a [`SelectItem`].
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// A value computed from each twin (or, with `GROUP BY`, a grouping attribute).
    Expr(Expr),
    /// An aggregate over the twins of a group.
    Aggregate(Aggregate),
}

/// An aggregate function of the `SELECT` list.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// `COUNT()`: the number of twins.
    Count,
    /// `AVG(attr)`: the mean of the numeric values.
    Avg(Path),
    /// `SUM(attr)`: the sum of the numeric values.
    Sum(Path),
    /// `MIN(attr)`: the least primitive value.
    Min(Path),
    /// `MAX(attr)`: the greatest primitive value.
    Max(Path),
}

/// A condition: `WHERE` clauses and policy targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `c1 OR c2 OR …`: at least two operands. A chain written without parentheses is one
    /// node; `(a OR b) OR c` nests one in another.
    Or(Vec<Condition>),
    /// `c1 AND c2 AND …`: at least two operands, as for [`Condition::Or`].
    And(Vec<Condition>),
    /// `NOT condition`.
    Not(Box<Condition>),
    /// `left op right`.
    Compare(Expr, CompareOp, Expr),
    /// `expr IN [..]`, or `expr NIN [..]` when `negated`.
    In {
        /// The tested value.
        expr: Expr,
        /// `NIN` rather than `IN`.
        negated: bool,
        /// The array constant.
        list: Vec<Literal>,
    },
    /// A call to a Boolean function, such as `IS_DEFINED(tags.env)`.
    Call(Call),
    /// The constant `true` or `false`.
    Bool(bool),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=` (also written `<>`)
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

/// An expression: a value computed from a twin.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Literal(Literal),
    /// An attribute of the twin.
    Path(Path),
    /// A function call.
    Call(Call),
    /// `left op right`.
    Binary(Box<Expr>, ArithOp, Box<Expr>),
    /// `-expr`. (A minus sign before a number literal is part of the literal.)
    Negate(Box<Expr>),
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `undefined`: the value of a missing attribute.
    Undefined,
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A decimal or `0x` hexadecimal number; always finite.
    Number(f64),
    /// A string.
    String(String),
    /// An array constant `[c, …]` (never holding `undefined`).
    Array(Vec<Literal>),
}

/// A function call: `NAME(args…)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The function.
    pub function: Function,
    /// The arguments, as many as [`Function::arity`] says.
    pub args: Vec<Expr>,
}

/// A built-in function. IoT Hub documents only `IS_DEFINED` for twin queries; the others are the
/// routing-query functions, accepted here as a superset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// `IS_DEFINED(x)`: the attribute has a value (including `null`).
    IsDefined,
    /// `IS_NULL(x)`
    IsNull,
    /// `IS_BOOL(x)`
    IsBool,
    /// `IS_NUMBER(x)`
    IsNumber,
    /// `IS_STRING(x)`
    IsString,
    /// `IS_OBJECT(x)`
    IsObject,
    /// `IS_ARRAY(x)`
    IsArray,
    /// `IS_PRIMITIVE(x)`: string, number, Boolean or `null`.
    IsPrimitive,
    /// `STARTS_WITH(s, prefix)`
    StartsWith,
    /// `ENDS_WITH(s, suffix)`
    EndsWith,
    /// `CONTAINS(s, fragment)`
    Contains,
    /// `LOWER(s)`
    Lower,
    /// `UPPER(s)`
    Upper,
    /// `LENGTH(s)`: the number of characters.
    Length,
}

impl Function {
    /// Every function, in the order of the documentation.
    pub const ALL: [Function; 14] = [
        Function::IsDefined,
        Function::IsNull,
        Function::IsBool,
        Function::IsNumber,
        Function::IsString,
        Function::IsObject,
        Function::IsArray,
        Function::IsPrimitive,
        Function::StartsWith,
        Function::EndsWith,
        Function::Contains,
        Function::Lower,
        Function::Upper,
        Function::Length,
    ];

    /// The canonical (upper-case) name.
    pub fn name(self) -> &'static str {
        match self {
            Function::IsDefined => "IS_DEFINED",
            Function::IsNull => "IS_NULL",
            Function::IsBool => "IS_BOOL",
            Function::IsNumber => "IS_NUMBER",
            Function::IsString => "IS_STRING",
            Function::IsObject => "IS_OBJECT",
            Function::IsArray => "IS_ARRAY",
            Function::IsPrimitive => "IS_PRIMITIVE",
            Function::StartsWith => "STARTS_WITH",
            Function::EndsWith => "ENDS_WITH",
            Function::Contains => "CONTAINS",
            Function::Lower => "LOWER",
            Function::Upper => "UPPER",
            Function::Length => "LENGTH",
        }
    }

    /// Looks a function up by name, ignoring case.
    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// How many arguments the function takes.
    pub fn arity(self) -> usize {
        match self {
            Function::StartsWith | Function::EndsWith | Function::Contains => 2,
            _ => 1,
        }
    }

    /// Whether the function returns a Boolean, and so can stand alone as a condition.
    pub fn is_boolean(self) -> bool {
        !matches!(self, Function::Lower | Function::Upper | Function::Length)
    }
}

/// An attribute path such as `properties.reported.telemetryConfig.status`.
///
/// The first segment, when it names a twin system property (`deviceId`, `status`, `tags`,
/// `properties`, …), is stored in the service's camel case whatever case the query used; every
/// other segment is stored, and matched, exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// The segments, outermost first; never empty.
    pub segments: Vec<String>,
}

impl Path {
    /// The output key of an unaliased projection of this path: its last segment.
    pub fn last(&self) -> &str {
        self.segments.last().map_or("", String::as_str)
    }
}

/// The reserved words of the language (compared ignoring case). They cannot be aliases or the
/// first segment of a path; a later segment is one only escaped, `tags.[[select]]` (Azure IoT
/// Hub's dialect), or also bare, `tags.select`, in the extended dialect.
pub const KEYWORDS: [&str; 16] = [
    "SELECT",
    "TOP",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "NIN",
    "TRUE",
    "FALSE",
    "NULL",
    "UNDEFINED",
];

/// Whether `word` is a reserved word.
pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// Whether `text` can be written bare, as an identifier (else a path segment is printed as
/// `['text']`).
pub fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT ")?;
        if let Some(n) = self.top {
            write!(f, "TOP {n} ")?;
        }
        write!(f, "{} FROM {}", self.select, self.from)?;
        if let Some(condition) = &self.condition {
            write!(f, " WHERE {condition}")?;
        }
        if !self.group_by.is_empty() {
            f.write_str(" GROUP BY ")?;
            write_list(f, &self.group_by)?;
        }
        Ok(())
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Collection::Devices => f.write_str("devices"),
        }
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Select::All => f.write_str("*"),
            Select::Items(items) => write_list(f, items),
        }
    }
}

impl fmt::Display for SelectItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Projection::Expr(expr) => write!(f, "{expr}")?,
            Projection::Aggregate(aggregate) => write!(f, "{aggregate}")?,
        }
        if let Some(alias) = &self.alias {
            write!(f, " AS {alias}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregate::Count => f.write_str("COUNT()"),
            Aggregate::Avg(path) => write!(f, "AVG({path})"),
            Aggregate::Sum(path) => write!(f, "SUM({path})"),
            Aggregate::Min(path) => write!(f, "MIN({path})"),
            Aggregate::Max(path) => write!(f, "MAX({path})"),
        }
    }
}

impl Condition {
    /// Binding strength: OR 1, AND 2, NOT 3, atoms 4.
    fn precedence(&self) -> u8 {
        match self {
            Condition::Or(..) => 1,
            Condition::And(..) => 2,
            Condition::Not(_) => 3,
            _ => 4,
        }
    }
}

/// Writes `c`, parenthesised when it binds less tightly than `min`.
fn write_condition(f: &mut fmt::Formatter<'_>, c: &Condition, min: u8) -> fmt::Result {
    if c.precedence() < min {
        write!(f, "({c})")
    } else {
        write!(f, "{c}")
    }
}

fn write_chain(
    f: &mut fmt::Formatter<'_>,
    operands: &[Condition],
    separator: &str,
    min: u8,
) -> fmt::Result {
    for (i, c) in operands.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write_condition(f, c, min)?;
    }
    Ok(())
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // An operand of the same kind is parenthesised, or it would read back flattened.
            Condition::Or(operands) => write_chain(f, operands, " OR ", 2),
            Condition::And(operands) => write_chain(f, operands, " AND ", 3),
            Condition::Not(c) => {
                f.write_str("NOT ")?;
                write_condition(f, c, 3)
            }
            Condition::Compare(l, op, r) => write!(f, "{l} {op} {r}"),
            Condition::In {
                expr,
                negated,
                list,
            } => {
                write!(f, "{expr} {} [", if *negated { "NIN" } else { "IN" })?;
                write_list(f, list)?;
                f.write_str("]")
            }
            Condition::Call(call) => write!(f, "{call}"),
            Condition::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        })
    }
}

impl ArithOp {
    /// Binding strength: `+ -` 1, `* / %` 2.
    pub(crate) fn precedence(self) -> u8 {
        match self {
            ArithOp::Add | ArithOp::Sub => 1,
            ArithOp::Mul | ArithOp::Div | ArithOp::Rem => 2,
        }
    }
}

impl fmt::Display for ArithOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        })
    }
}

impl Expr {
    /// Binding strength: binary operators 1–2, everything else 3.
    fn precedence(&self) -> u8 {
        match self {
            Expr::Binary(_, op, _) => op.precedence(),
            _ => 3,
        }
    }
}

/// Writes `e`, parenthesised when it binds less tightly than `min`.
fn write_expr(f: &mut fmt::Formatter<'_>, e: &Expr, min: u8) -> fmt::Result {
    if e.precedence() < min {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(literal) => write!(f, "{literal}"),
            Expr::Path(path) => write!(f, "{path}"),
            Expr::Call(call) => write!(f, "{call}"),
            Expr::Binary(l, op, r) => {
                let p = op.precedence();
                write_expr(f, l, p)?;
                write!(f, " {op} ")?;
                write_expr(f, r, p + 1)
            }
            // Always parenthesised, so `-(5)` does not read back as the literal `-5`.
            Expr::Negate(e) => write!(f, "-({e})"),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.function.name())?;
        write_list(f, &self.args)?;
        f.write_str(")")
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Undefined => f.write_str("undefined"),
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            // Rust prints the shortest text that reads back as the same f64, never exponents.
            Literal::Number(n) => write!(f, "{n}"),
            Literal::String(s) => write_string(f, s),
            Literal::Array(items) => {
                f.write_str("[")?;
                write_list(f, items)?;
                f.write_str("]")
            }
        }
    }
}

/// A string as a single-quoted literal of the query language, with the escapes the lexer reads
/// back: `it's` → `'it\'s'`. Every query Casement builds quotes its constants with this.
///
/// ```
/// use casement_iothub::query::quote_literal;
/// assert_eq!(quote_literal("it's"), r"'it\'s'");
/// let sql = format!("SELECT * FROM devices WHERE tags.site = {}", quote_literal("o'hare"));
/// assert!(casement_iothub::query::parse(&sql).is_ok());
/// ```
pub fn quote_literal(text: &str) -> String {
    struct Quoted<'a>(&'a str);
    impl fmt::Display for Quoted<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_string(f, self.0)
        }
    }
    Quoted(text).to_string()
}

/// Writes a single-quoted string literal with the escapes the lexer reads back.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("'")?;
    for c in s.chars() {
        match c {
            '\'' => f.write_str("\\'")?,
            '\\' => f.write_str("\\\\")?,
            c if c.is_control() => write!(f, "\\u{:04X}", u32::from(c))?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("'")
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            if is_identifier(segment) && !is_keyword(segment) {
                if i > 0 {
                    f.write_str(".")?;
                }
                f.write_str(segment)?;
            } else if i > 0 && is_identifier(segment) {
                // A reserved word, escaped as Azure IoT Hub requires.
                write!(f, ".[[{segment}]]")?;
            } else {
                f.write_str("[")?;
                write_string(f, segment)?;
                f.write_str("]")?;
            }
        }
        Ok(())
    }
}
