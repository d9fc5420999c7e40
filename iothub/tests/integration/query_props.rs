//! Property tests for the query language: printing a tree and parsing the text gives the same
//! tree; no input makes the parser panic; no twin makes the evaluator panic.

use casement_iothub::query::{
    self, Aggregate, ArithOp, Call, Collection, CompareOp, Condition, Expr, Function, Literal,
    Path, Projection, Query, Select, SelectItem, ast,
};
use proptest::prelude::*;
use serde_json::Value;

// The generators cover the whole language, the local superset included (functions other than
// IS_DEFINED, reserved words as bare property names), so these properties parse the extended
// dialect. Printing escapes reserved words, so the printed text is valid in both.
fn parse(input: &str) -> Result<Query, query::QueryError> {
    query::parse_with(input, query::Dialect::Extended)
}

fn parse_condition(input: &str) -> Result<Condition, query::QueryError> {
    query::parse_condition_with(input, query::Dialect::Extended)
}

/// Twin system properties as the service spells them (the parser stores them this way).
const SYSTEM: [&str; 8] = [
    "deviceId",
    "status",
    "connectionState",
    "lastActivityTime",
    "tags",
    "properties",
    "version",
    "etag",
];

fn ident() -> impl Strategy<Value = String> {
    "[a-zA-Z_$][a-zA-Z0-9_$]{0,7}"
}

/// Any string: quotes, backslashes, controls, non-ASCII, empty.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ident(),
        proptest::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
        "[ '\"\\\\a-z]{0,6}",
    ]
}

/// A path: a system property or a name that is not one (so its case is kept), then any keys.
fn path_from(
    first: BoxedStrategy<String>,
    rest: BoxedStrategy<String>,
) -> impl Strategy<Value = Path> {
    (first, proptest::collection::vec(rest, 0..4)).prop_map(|(first, rest)| {
        let mut segments = vec![first];
        segments.extend(rest);
        Path { segments }
    })
}

fn path() -> BoxedStrategy<Path> {
    let first = prop_oneof![
        proptest::sample::select(SYSTEM.to_vec()).prop_map(str::to_owned),
        "[a-z][a-z0-9_]{0,5}".prop_map(|s| format!("u_{s}")),
    ];
    path_from(first.boxed(), any_text().boxed()).boxed()
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<i32>().prop_map(f64::from),
        -1.0e6..1.0e6f64,
        any::<f64>().prop_filter("finite", |n| n.is_finite()),
    ]
}

/// A constant that may sit in an array (anything but `undefined`).
fn constant() -> impl Strategy<Value = Literal> {
    let leaf = prop_oneof![
        Just(Literal::Null),
        any::<bool>().prop_map(Literal::Bool),
        number().prop_map(Literal::Number),
        any_text().prop_map(Literal::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        proptest::collection::vec(inner, 0..4).prop_map(Literal::Array)
    })
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![1 => Just(Literal::Undefined), 9 => constant()]
}

fn arith_op() -> impl Strategy<Value = ArithOp> {
    proptest::sample::select(vec![
        ArithOp::Add,
        ArithOp::Sub,
        ArithOp::Mul,
        ArithOp::Div,
        ArithOp::Rem,
    ])
}

fn compare_op() -> impl Strategy<Value = CompareOp> {
    proptest::sample::select(vec![
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
    ])
}

fn call_of(functions: Vec<Function>, arg: BoxedStrategy<Expr>) -> impl Strategy<Value = Call> {
    proptest::sample::select(functions).prop_flat_map(move |function| {
        proptest::collection::vec(arg.clone(), function.arity())
            .prop_map(move |args| Call { function, args })
    })
}

fn expr_from(path: BoxedStrategy<Path>) -> BoxedStrategy<Expr> {
    let leaf = prop_oneof![literal().prop_map(Expr::Literal), path.prop_map(Expr::Path),];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), arith_op(), inner.clone()).prop_map(|(l, op, r)| Expr::Binary(
                Box::new(l),
                op,
                Box::new(r)
            )),
            inner.clone().prop_map(|e| Expr::Negate(Box::new(e))),
            call_of(Function::ALL.to_vec(), inner.boxed()).prop_map(Expr::Call),
        ]
    })
    .boxed()
}

fn condition_from(path: BoxedStrategy<Path>) -> BoxedStrategy<Condition> {
    let expr = expr_from(path);
    let boolean: Vec<Function> = Function::ALL
        .into_iter()
        .filter(|f| f.is_boolean())
        .collect();
    let leaf = prop_oneof![
        (expr.clone(), compare_op(), expr.clone())
            .prop_map(|(l, op, r)| Condition::Compare(l, op, r)),
        (
            expr.clone(),
            any::<bool>(),
            proptest::collection::vec(constant(), 0..4)
        )
            .prop_map(|(expr, negated, list)| Condition::In {
                expr,
                negated,
                list
            }),
        call_of(boolean, expr).prop_map(Condition::Call),
        any::<bool>().prop_map(Condition::Bool),
    ];
    leaf.prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 2..4).prop_map(Condition::And),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(Condition::Or),
            inner.prop_map(|c| Condition::Not(Box::new(c))),
        ]
    })
    .boxed()
}

fn alias() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(ident().prop_filter("not reserved", |a| !ast::is_keyword(a)))
}

fn aggregate(path: BoxedStrategy<Path>) -> impl Strategy<Value = Aggregate> {
    prop_oneof![
        Just(Aggregate::Count),
        path.clone().prop_map(Aggregate::Avg),
        path.clone().prop_map(Aggregate::Sum),
        path.clone().prop_map(Aggregate::Min),
        path.prop_map(Aggregate::Max),
    ]
}

/// The output names the service would give (alias, else last segment, else `$n`): the parser
/// rejects duplicates, so generated select lists avoid them.
fn unique_names(items: &[SelectItem]) -> bool {
    let mut unnamed = 0;
    let mut names = Vec::new();
    for item in items {
        let name = match (&item.alias, &item.value) {
            (Some(a), _) => a.clone(),
            (None, Projection::Expr(Expr::Path(p))) => p.last().to_owned(),
            _ => {
                unnamed += 1;
                format!("${unnamed}")
            }
        };
        if names.contains(&name) {
            return false;
        }
        names.push(name);
    }
    true
}

/// A valid select list and GROUP BY: plain projections; aggregates only; or grouping attributes
/// and aggregates.
fn select_and_group(path: BoxedStrategy<Path>) -> impl Strategy<Value = (Select, Vec<Path>)> {
    let plain = proptest::collection::vec(
        (expr_from(path.clone()), alias()).prop_map(|(e, alias)| SelectItem {
            value: Projection::Expr(e),
            alias,
        }),
        1..4,
    )
    .prop_map(|items| (Select::Items(items), vec![]));
    let aggregates = proptest::collection::vec(
        (aggregate(path.clone()), alias()).prop_map(|(a, alias)| SelectItem {
            value: Projection::Aggregate(a),
            alias,
        }),
        1..4,
    )
    .prop_map(|items| (Select::Items(items), vec![]));
    let grouped = proptest::collection::vec(path.clone(), 1..3).prop_flat_map(move |group_by| {
        let item = prop_oneof![
            (proptest::sample::select(group_by.clone()), alias()).prop_map(|(p, alias)| {
                SelectItem {
                    value: Projection::Expr(Expr::Path(p)),
                    alias,
                }
            }),
            (aggregate(path.clone()), alias()).prop_map(|(a, alias)| SelectItem {
                value: Projection::Aggregate(a),
                alias
            }),
        ];
        proptest::collection::vec(item, 1..4)
            .prop_map(move |items| (Select::Items(items), group_by.clone()))
    });
    prop_oneof![Just((Select::All, vec![])), plain, aggregates, grouped,].prop_filter(
        "unique output names",
        |(select, _)| match select {
            Select::All => true,
            Select::Items(items) => unique_names(items),
        },
    )
}

fn query_from(path: BoxedStrategy<Path>) -> impl Strategy<Value = Query> {
    (
        proptest::option::of(prop_oneof![0..1000u64, Just(1u64 << 53)]),
        select_and_group(path.clone()),
        proptest::option::of(condition_from(path)),
    )
        .prop_map(|(top, (select, group_by), condition)| Query {
            top,
            select,
            from: Collection::Devices,
            condition,
            group_by,
        })
}

/// Fragments that make token soup reach deep into the parser.
const FRAGMENTS: [&str; 40] = [
    "SELECT",
    "TOP",
    "*",
    "FROM",
    "devices",
    "devices.jobs",
    "WHERE",
    "GROUP",
    "BY",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "NIN",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    "=",
    "!=",
    "<>",
    "<=",
    ">",
    "-",
    "+",
    "%",
    "/",
    "tags.x",
    "deviceId",
    "'s'",
    "\"d\\\"q\"",
    "0x1F",
    "1.5e3",
    "IS_DEFINED",
    "COUNT()",
    "null",
    "'\\u00e9",
];

/// Small key vocabulary, so that generated twins and generated paths meet.
const KEYS: [&str; 7] = [
    "tags",
    "properties",
    "reported",
    "a",
    "b",
    "deviceId",
    "$version",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z']{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS.to_vec()), inner), 0..5)
                .prop_map(|entries| Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                )),
        ]
    })
}

fn small_path() -> BoxedStrategy<Path> {
    let key = || proptest::sample::select(KEYS.to_vec()).prop_map(str::to_owned);
    path_from(key().boxed(), key().boxed()).boxed()
}

/// The properties.
mod properties {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn condition_prints_and_parses_back(c in condition_from(path())) {
            let text = c.to_string();
            let parsed = parse_condition(&text)
                .map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
            prop_assert_eq!(parsed, c, "{}", text);
        }

        #[test]
        fn query_prints_and_parses_back(q in query_from(path())) {
            let text = q.to_string();
            let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
            prop_assert_eq!(parsed, q, "{}", text);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = parse(&s);
            let _ = parse_condition(&s);
        }

        #[test]
        fn token_soup_never_panics(parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS.to_vec()), 0..24)) {
            let s = parts.join(" ");
            if let Ok(q) = parse(&s) {
                prop_assert_eq!(parse(&q.to_string()).ok(), Some(q));
            }
            if let Ok(c) = parse_condition(&s) {
                prop_assert_eq!(parse_condition(&c.to_string()).ok(), Some(c));
            }
            // Glued together too, where words run into each other.
            let glued = parts.concat();
            let _ = parse(&glued);
            let _ = parse_condition(&glued);
        }

        #[test]
        fn errors_point_inside_the_input(s in "[ -~]{0,40}") {
            if let Err(e) = parse_condition(&s) {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{} for {:?}", e, s);
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn evaluation_never_panics(twins in proptest::collection::vec(json_value(), 0..6),
                                   q in query_from(small_path()),
                                   c in condition_from(small_path())) {
            let out = q.execute(&twins).expect("execution does not fail");
            if let Some(top) = q.top {
                prop_assert!(out.items.len() as u64 <= top);
            }
            // Every item serialises (no NaN or infinity sneaks in).
            prop_assert!(serde_json::to_string(&out.items).is_ok());
            for twin in &twins {
                let m = c.matches(twin);
                prop_assert_eq!(Condition::Not(Box::new(c.clone())).matches(twin), !m);
            }
            // The printed query means the same as the tree.
            let reparsed = parse(&q.to_string()).expect("round trip");
            prop_assert_eq!(reparsed.execute(&twins).expect("runs").items, out.items);
        }

        #[test]
        fn where_filters_exactly_the_matching_twins(twins in proptest::collection::vec(json_value(), 0..8),
                                                    c in condition_from(small_path())) {
            let q = Query { top: None, select: Select::All, from: Collection::Devices, condition: Some(c.clone()), group_by: vec![] };
            let out = q.execute(&twins).expect("runs");
            let expected: Vec<Value> = twins.iter().filter(|t| c.matches(t)).cloned().collect();
            prop_assert_eq!(out.items, expected);
        }
    }
}
