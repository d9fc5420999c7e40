//! The IoT Hub query language: parser, canonical printer and evaluator over twin JSON.
//!
//! ```
//! use casement_iothub::query;
//! use serde_json::json;
//!
//! let q = query::parse("SELECT deviceId FROM devices WHERE tags.env = 'prod'").unwrap();
//! let twins = [json!({"deviceId": "d1", "tags": {"env": "prod"}}),
//!              json!({"deviceId": "d2", "tags": {"env": "test"}})];
//! let out = q.execute(&twins).unwrap();
//! assert_eq!(out.items, [json!({"deviceId": "d1"})]);
//!
//! let target = query::parse_condition("tags.env IN ['prod', 'staging']").unwrap();
//! assert!(target.matches(&twins[0]));
//! ```
//!
//! # Language
//!
//! ```text
//! SELECT [TOP n] * | item {, item}          item: expr [AS alias] | COUNT() | AVG|SUM|MIN|MAX(path)
//! FROM devices
//! [WHERE condition]
//! [GROUP BY path {, path}]
//! condition: condition OR condition | condition AND condition | NOT condition | (condition)
//!          | expr (= | != | <> | < | <= | > | >=) expr | expr IN [c, …] | expr NIN [c, …]
//!          | boolean-function(…) | true | false
//! expr:      literal | path | function(…) | expr (+ | - | * | / | %) expr | -expr | (expr)
//! literal:   'str' | "str" (escapes \' \" \\ \/ \b \f \n \r \t \uXXXX) | 12 | 1.5e3 | 0x1F
//!          | true | false | null | undefined | [c, …]
//! path:      name {.name | ['any key']}
//! ```
//!
//! Precedence, loosest first: `OR`, `AND`, `NOT`, comparisons, `+ -`, `* / %`, unary `-`.
//! Keywords and function names ignore case, and so does the first segment of a path when it is a
//! twin system property (`DeviceId` is `deviceId`); every other path segment — keys under `tags`
//! and `properties` — is case-sensitive, as in IoT Hub.
//!
//! Functions: `IS_DEFINED` (the only one IoT Hub documents for twin queries) and, as a superset
//! taken from IoT Hub's routing queries, `IS_NULL`, `IS_BOOL`, `IS_NUMBER`, `IS_STRING`,
//! `IS_OBJECT`, `IS_ARRAY`, `IS_PRIMITIVE`, `STARTS_WITH`, `ENDS_WITH`, `CONTAINS`, `LOWER`,
//! `UPPER` and `LENGTH`.
//!
//! # Dialects
//!
//! [`parse`] and [`parse_condition`] accept only what Azure IoT Hub accepts in twin and job
//! queries ([`Dialect::Azure`]): of the functions only `IS_DEFINED`, and no reserved word
//! ([`KEYWORDS`](ast::KEYWORDS)) as a bare property name (`tags.group` is refused on Azure, as
//! MicrosoftDocs/azure-docs#17106 reports); such a name is written escaped, `tags.[[group]]`, as
//! Azure writes configuration ids (`configurations.[[cfg-1]].status`). The superset above is
//! [`Dialect::Extended`], for local tools that opt in ([`parse_with`], [`parse_condition_with`]);
//! a query that uses it fails with 400 on Azure.
//!
//! # Semantics
//!
//! - A missing attribute is `undefined`. A comparison is true only between two primitives of
//!   the same type — numbers, strings (by code point, so ISO-8601 UTC timestamps compare
//!   chronologically), Booleans (`false < true`), or `null` (equal to itself); anything else — a
//!   string against a number, an `undefined` operand, an object or array — is false, for `!=` too.
//! - Conditions are two-valued: a false (or undefined) comparison is false, and `NOT` of it is
//!   true. `x NIN [..]` holds only when `x` is a defined primitive equal to none of the list.
//! - Arithmetic applies to numbers only; anything else, or a division by zero, is `undefined`.
//! - `SELECT *` returns whole twins ([`ItemType::Twin`]); a projection returns objects
//!   ([`ItemType::Raw`]) keyed by alias, else by the path's last segment, else `$1`, `$2`, …;
//!   `undefined` values are left out of the object. Aggregates without `GROUP BY` give one item;
//!   with it, one per group, in order of first appearance. `TOP n` applies last.
//! - `AVG` and `SUM` use the numeric values (`SUM` of none is 0, `AVG` of none is undefined);
//!   `MIN` and `MAX` order primitives as `null < false < true < numbers < strings`.
//!
//! Paging is the caller's business: [`QueryOutput::items`] holds every result. A query whose
//! items each come from one twin ([`Query::rows`]) can instead be run a twin at a time, so a
//! pager can resume after the last twin it read instead of re-running the query per page.
//!
//! # Layout
//! - [`ast`]: the syntax tree and its canonical printing.
//! - `lexer`: characters to tokens, with columns.
//! - `parser`: tokens to a tree, with checks that need the whole query (GROUP BY, output names).
//! - `eval`: conditions and expressions over twin JSON, and query execution.

pub mod ast;
mod eval;
mod lexer;
mod parser;

pub use eval::Rows;

pub use ast::{
    Aggregate, ArithOp, Call, Collection, CompareOp, Condition, Expr, Function, Literal, Path,
    Projection, Query, Select, SelectItem, quote_literal,
};

/// Which query language the parser accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// What Azure IoT Hub accepts in twin and job queries: `IS_DEFINED` is the only function,
    /// and a reserved word is a property name only when escaped (`tags.[[group]]`). The default.
    #[default]
    Azure,
    /// The local superset: the routing-query functions (`STARTS_WITH`, `LOWER`, …) and reserved
    /// words as bare property names after a dot (`tags.group`). Queries that use it fail on Azure.
    Extended,
}

impl Dialect {
    /// The name used on command lines and in messages: `azure` or `extended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Azure => "azure",
            Dialect::Extended => "extended",
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "azure" => Ok(Dialect::Azure),
            "extended" => Ok(Dialect::Extended),
            _ => Err(format!(
                "unknown query dialect '{s}': expected 'azure' (what Azure IoT Hub accepts) or 'extended' (the local superset)"
            )),
        }
    }
}

/// The longest query IoT Hub accepts, in characters.
pub const MAX_QUERY_CHARS: usize = 8192;

/// The deepest nesting of parentheses, `NOT`s and unary minus signs accepted.
pub const MAX_NESTING: usize = 64;

/// A query that cannot be parsed: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct QueryError {
    /// The 1-based column, in characters, of the offending token (one past the end when the
    /// query ended too early).
    pub column: usize,
    /// What is wrong, and what would have been right.
    pub message: String,
}

impl QueryError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Self {
        QueryError {
            column,
            message: message.into(),
        }
    }
}

/// What a query's items are, as the service's `x-ms-item-type` response header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemType {
    /// Whole twins (`SELECT *`).
    Twin,
    /// Projections and aggregates.
    Raw,
}

impl ItemType {
    /// The `x-ms-item-type` header value: `twin` or `raw`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Twin => "twin",
            ItemType::Raw => "raw",
        }
    }
}

/// The result of [`Query::execute`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutput {
    /// Whether the items are twins or projections.
    pub item_type: ItemType,
    /// Every result item, `TOP` applied; the caller pages them.
    pub items: Vec<serde_json::Value>,
}

/// Parses a whole query, `SELECT … FROM devices …`, in Azure IoT Hub's dialect.
///
/// # Errors
/// A [`QueryError`] with the column of the offending token when the query is longer than
/// [`MAX_QUERY_CHARS`], malformed, asks for something not supported (`FROM devices.jobs`), or
/// uses what Azure refuses (a function other than `IS_DEFINED`, a bare reserved word as a
/// property name).
pub fn parse(input: &str) -> Result<Query, QueryError> {
    parse_with(input, Dialect::Azure)
}

/// Parses a whole query in `dialect`.
///
/// # Errors
/// As [`parse`]; [`Dialect::Extended`] accepts the superset.
pub fn parse_with(input: &str, dialect: Dialect) -> Result<Query, QueryError> {
    parser::parse_query(input, dialect)
}

/// Parses only a condition, as written after `WHERE` (a policy's `target`, a job's
/// `queryCondition`), in Azure IoT Hub's dialect.
///
/// # Errors
/// As [`parse`].
pub fn parse_condition(input: &str) -> Result<Condition, QueryError> {
    parse_condition_with(input, Dialect::Azure)
}

/// Parses only a condition in `dialect`.
///
/// # Errors
/// As [`parse_with`].
pub fn parse_condition_with(input: &str, dialect: Dialect) -> Result<Condition, QueryError> {
    parser::parse_condition(input, dialect)
}

impl Query {
    /// Runs the query over `twins` (service REST twin JSON, as in `GET /twins/{id}`), in the
    /// order given.
    ///
    /// # Errors
    /// None at present: every check happens in [`parse`]. The `Result` leaves room for
    /// execution limits.
    pub fn execute<'a>(
        &self,
        twins: impl IntoIterator<Item = &'a serde_json::Value>,
    ) -> Result<QueryOutput, QueryError> {
        Ok(eval::execute(self, twins))
    }

    /// What the items are: whole twins for `SELECT *`, else projections.
    pub fn item_type(&self) -> ItemType {
        eval::item_type(self)
    }

    /// The query prepared to run one twin at a time, when each item comes from one twin alone
    /// (no `GROUP BY`, no aggregate); `None` for an aggregating query, which needs all of them.
    ///
    /// ```
    /// use casement_iothub::query;
    /// use serde_json::json;
    ///
    /// let q = query::parse("SELECT deviceId FROM devices WHERE tags.env = 'prod'").unwrap();
    /// let rows = q.rows().unwrap();
    /// assert_eq!(rows.item(&json!({"deviceId": "d1", "tags": {"env": "prod"}})),
    ///            Some(json!({"deviceId": "d1"})));
    /// assert_eq!(rows.item(&json!({"deviceId": "d2", "tags": {"env": "test"}})), None);
    /// assert!(query::parse("SELECT COUNT() FROM devices").unwrap().rows().is_none());
    /// ```
    pub fn rows(&self) -> Option<Rows<'_>> {
        eval::is_per_twin(self).then(|| Rows::new(self))
    }
}

impl Condition {
    /// Whether `twin` satisfies the condition.
    pub fn matches(&self, twin: &serde_json::Value) -> bool {
        eval::matches(self, twin)
    }
}
