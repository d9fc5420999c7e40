//! Evaluation over twin JSON: expressions, conditions, projections, grouping and aggregates.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ast::{
    Aggregate, ArithOp, Call, CompareOp, Condition, Expr, Function, Literal, Path, Projection,
    Query, Select, SelectItem,
};
use super::{ItemType, QueryOutput};

/// A value, or `None` for `undefined`.
type Eval<'a> = Option<Cow<'a, Value>>;

/// The output key of each select item: its alias, else a path's last segment, else `$1`, `$2`,
/// … numbered among the items that have neither.
pub(crate) fn output_names(items: &[SelectItem]) -> Vec<String> {
    let mut unnamed = 0;
    items
        .iter()
        .map(|item| match (&item.alias, &item.value) {
            (Some(alias), _) => alias.clone(),
            (None, Projection::Expr(Expr::Path(path))) => path.last().to_owned(),
            (None, _) => {
                unnamed += 1;
                format!("${unnamed}")
            }
        })
        .collect()
}

/// Whether the query computes its items from each twin alone (no `GROUP BY`, no aggregate).
pub(crate) fn is_per_twin(query: &Query) -> bool {
    match &query.select {
        Select::All => true,
        Select::Items(items) => {
            query.group_by.is_empty()
                && !items
                    .iter()
                    .any(|i| matches!(i.value, Projection::Aggregate(_)))
        }
    }
}

/// The item a per-twin query yields for `twin`: `None` when the twin does not match.
/// `names` are [`output_names`] of a projection (unused for `SELECT *`).
fn row(query: &Query, names: &[String], twin: &Value) -> Option<Value> {
    if !query.condition.as_ref().is_none_or(|c| matches(c, twin)) {
        return None;
    }
    let items = match &query.select {
        Select::All => return Some(twin.clone()),
        Select::Items(items) => items,
    };
    let mut out = Map::new();
    for (item, name) in items.iter().zip(names) {
        if let Projection::Expr(expr) = &item.value
            && let Some(value) = eval(expr, twin)
        {
            out.insert(name.clone(), value.into_owned());
        }
    }
    Some(Value::Object(out))
}

/// A per-twin query (no `GROUP BY`, no aggregate) prepared to run one twin at a time, so a caller
/// can page through a large fleet without evaluating all of it for every page. Made by
/// [`Query::rows`](super::Query::rows).
#[derive(Debug)]
pub struct Rows<'q> {
    query: &'q Query,
    names: Vec<String>,
}

impl<'q> Rows<'q> {
    pub(crate) fn new(query: &'q Query) -> Self {
        let names = match &query.select {
            Select::All => Vec::new(),
            Select::Items(items) => output_names(items),
        };
        Rows { query, names }
    }

    /// The item the query yields for `twin` (service REST twin JSON), or `None` when the twin
    /// does not satisfy the `WHERE` condition. `TOP` is the caller's to apply.
    pub fn item(&self, twin: &Value) -> Option<Value> {
        row(self.query, &self.names, twin)
    }
}

pub(crate) fn item_type(query: &Query) -> ItemType {
    match query.select {
        Select::All => ItemType::Twin,
        Select::Items(_) => ItemType::Raw,
    }
}

pub(crate) fn execute<'a>(
    query: &Query,
    twins: impl IntoIterator<Item = &'a Value>,
) -> QueryOutput {
    let top = query
        .top
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let item_type = item_type(query);
    let items = match &query.select {
        Select::Items(items) if !is_per_twin(query) => {
            let names = output_names(items);
            let selected = twins
                .into_iter()
                .filter(|twin| query.condition.as_ref().is_none_or(|c| matches(c, twin)));
            group(selected, &query.group_by)
                .iter()
                .take(top)
                .map(|group| aggregate_row(items, &names, &query.group_by, group))
                .collect()
        }
        _ => {
            let rows = Rows::new(query);
            twins
                .into_iter()
                .filter_map(|twin| rows.item(twin))
                .take(top)
                .collect()
        }
    };
    QueryOutput { item_type, items }
}

/// Twins sharing the values of the GROUP BY attributes.
struct Group<'a> {
    key: Vec<Option<&'a Value>>,
    twins: Vec<&'a Value>,
}

/// Splits `twins` into groups in order of first appearance; without GROUP BY, one group of all
/// (possibly none) of them.
fn group<'a>(twins: impl Iterator<Item = &'a Value>, by: &[Path]) -> Vec<Group<'a>> {
    if by.is_empty() {
        return vec![Group {
            key: Vec::new(),
            twins: twins.collect(),
        }];
    }
    let mut groups: Vec<Group<'a>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for twin in twins {
        let key: Vec<Option<&Value>> = by.iter().map(|path| resolve(path, twin)).collect();
        // Serialised JSON identifies a value; `undefined` gets a marker no JSON text starts with.
        let id: Vec<String> = key
            .iter()
            .map(|v| v.map_or_else(|| "~".to_owned(), Value::to_string))
            .collect();
        let id = id.join("\u{0}");
        let slot = *index.entry(id).or_insert_with(|| {
            groups.push(Group {
                key,
                twins: Vec::new(),
            });
            groups.len() - 1
        });
        groups[slot].twins.push(twin);
    }
    groups
}

fn aggregate_row(items: &[SelectItem], names: &[String], by: &[Path], group: &Group<'_>) -> Value {
    let mut row = Map::new();
    for (item, name) in items.iter().zip(names) {
        let value = match &item.value {
            // The parser admits only GROUP BY attributes here.
            Projection::Expr(Expr::Path(path)) => by
                .iter()
                .position(|p| p == path)
                .and_then(|i| group.key.get(i).copied().flatten())
                .cloned(),
            Projection::Expr(_) => None,
            Projection::Aggregate(aggregate) => compute(aggregate, &group.twins),
        };
        if let Some(value) = value {
            row.insert(name.clone(), value);
        }
    }
    Value::Object(row)
}

fn compute(aggregate: &Aggregate, twins: &[&Value]) -> Option<Value> {
    fn values<'t>(path: &'t Path, twins: &'t [&Value]) -> impl Iterator<Item = &'t Value> {
        twins.iter().filter_map(move |t| resolve(path, t))
    }
    let numbers = |path| values(path, twins).filter_map(Value::as_f64);
    match aggregate {
        Aggregate::Count => Some(Value::from(twins.len())),
        Aggregate::Sum(path) => number(numbers(path).sum()),
        Aggregate::Avg(path) => {
            let (sum, count) = numbers(path).fold((0.0, 0u64), |(s, c), n| (s + n, c + 1));
            if count == 0 {
                None
            } else {
                number(sum / count as f64)
            }
        }
        Aggregate::Min(path) => values(path, twins)
            .filter(|v| rank(v).is_some())
            .min_by(|a, b| order(a, b))
            .cloned(),
        Aggregate::Max(path) => values(path, twins)
            .filter(|v| rank(v).is_some())
            .max_by(|a, b| order(a, b))
            .cloned(),
    }
}

/// The type rank of a primitive for MIN/MAX: null < Boolean < number < string.
fn rank(v: &Value) -> Option<u8> {
    match v {
        Value::Null => Some(0),
        Value::Bool(_) => Some(1),
        Value::Number(_) => Some(2),
        Value::String(_) => Some(3),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The MIN/MAX order of two primitives.
fn order(a: &Value, b: &Value) -> Ordering {
    rank(a)
        .cmp(&rank(b))
        .then_with(|| same_type_order(a, b).unwrap_or(Ordering::Equal))
}

/// The order of two primitives of one type; `None` for different types or non-primitives.
fn same_type_order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// A JSON number for `n`: an integer when it is a whole number within 2^53, `None` when it is
/// not finite.
fn number(n: f64) -> Option<Value> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        // Exact: a whole number within the range f64 represents exactly.
        Some(Value::from(n as i64))
    } else {
        serde_json::Number::from_f64(n).map(Value::Number)
    }
}

/// Whether `twin` satisfies `condition`.
pub(crate) fn matches(condition: &Condition, twin: &Value) -> bool {
    match condition {
        Condition::Or(operands) => operands.iter().any(|c| matches(c, twin)),
        Condition::And(operands) => operands.iter().all(|c| matches(c, twin)),
        Condition::Not(c) => !matches(c, twin),
        Condition::Compare(l, op, r) => match (eval(l, twin), eval(r, twin)) {
            (Some(a), Some(b)) => compare(&a, *op, &b),
            _ => false,
        },
        Condition::In {
            expr,
            negated,
            list,
        } => {
            let Some(value) = eval(expr, twin) else {
                return false;
            };
            if rank(&value).is_none() {
                return false;
            }
            let found = list.iter().any(|item| {
                literal_value(item).is_some_and(|item| compare(&value, CompareOp::Eq, &item))
            });
            found != *negated
        }
        Condition::Call(call) => {
            matches!(call_value(call, twin).as_deref(), Some(Value::Bool(true)))
        }
        Condition::Bool(b) => *b,
    }
}

/// `a op b`: true only between primitives of one type.
fn compare(a: &Value, op: CompareOp, b: &Value) -> bool {
    let Some(ordering) = same_type_order(a, b) else {
        return false;
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
    }
}

/// The value at `path` in `twin`, or `None` when any segment is missing.
fn resolve<'a>(path: &Path, twin: &'a Value) -> Option<&'a Value> {
    path.segments
        .iter()
        .try_fold(twin, |value, segment| value.as_object()?.get(segment))
}

/// A literal as JSON; `None` for `undefined`.
fn literal_value(literal: &Literal) -> Option<Value> {
    match literal {
        Literal::Undefined => None,
        Literal::Null => Some(Value::Null),
        Literal::Bool(b) => Some(Value::Bool(*b)),
        Literal::Number(n) => number(*n),
        Literal::String(s) => Some(Value::String(s.clone())),
        Literal::Array(items) => Some(Value::Array(
            items.iter().filter_map(literal_value).collect(),
        )),
    }
}

/// Evaluates an expression over a twin.
fn eval<'a>(expr: &Expr, twin: &'a Value) -> Eval<'a> {
    match expr {
        Expr::Literal(literal) => literal_value(literal).map(Cow::Owned),
        Expr::Path(path) => resolve(path, twin).map(Cow::Borrowed),
        Expr::Call(call) => call_value(call, twin),
        Expr::Binary(l, op, r) => {
            let a = eval(l, twin)?.as_f64()?;
            let b = eval(r, twin)?.as_f64()?;
            let n = match op {
                ArithOp::Add => a + b,
                ArithOp::Sub => a - b,
                ArithOp::Mul => a * b,
                ArithOp::Div if b == 0.0 => return None,
                ArithOp::Div => a / b,
                ArithOp::Rem if b == 0.0 => return None,
                ArithOp::Rem => a % b,
            };
            number(n).map(Cow::Owned)
        }
        Expr::Negate(e) => number(-eval(e, twin)?.as_f64()?).map(Cow::Owned),
    }
}

fn call_value<'a>(call: &Call, twin: &'a Value) -> Eval<'a> {
    let arg = |i: usize| call.args.get(i).and_then(|e| eval(e, twin));
    let text = |i: usize| arg(i).and_then(|v| v.as_str().map(str::to_owned));
    let test = |f: fn(&Value) -> bool| Some(Cow::Owned(Value::Bool(arg(0).is_some_and(|v| f(&v)))));
    let strings = |f: fn(&str, &str) -> bool| {
        let (a, b) = (text(0)?, text(1)?);
        Some(Cow::Owned(Value::Bool(f(&a, &b))))
    };
    match call.function {
        Function::IsDefined => Some(Cow::Owned(Value::Bool(arg(0).is_some()))),
        Function::IsNull => test(Value::is_null),
        Function::IsBool => test(Value::is_boolean),
        Function::IsNumber => test(Value::is_number),
        Function::IsString => test(Value::is_string),
        Function::IsObject => test(Value::is_object),
        Function::IsArray => test(Value::is_array),
        Function::IsPrimitive => test(|v| rank(v).is_some()),
        Function::StartsWith => strings(|a, b| a.starts_with(b)),
        Function::EndsWith => strings(|a, b| a.ends_with(b)),
        Function::Contains => strings(|a, b| a.contains(b)),
        Function::Lower => Some(Cow::Owned(Value::String(text(0)?.to_lowercase()))),
        Function::Upper => Some(Cow::Owned(Value::String(text(0)?.to_uppercase()))),
        Function::Length => Some(Cow::Owned(Value::from(text(0)?.chars().count()))),
    }
}
