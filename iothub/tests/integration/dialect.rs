//! The query dialects: Azure IoT Hub's (the default) refuses what Azure refuses in twin and job
//! queries — functions other than `IS_DEFINED`, reserved words as bare property names — with the
//! column of the offending token; the extended dialect is the local superset.

use casement_iothub::query::{self, Dialect, Function};
use serde_json::json;

#[test]
fn the_default_dialect_is_azure() {
    assert_eq!(Dialect::default(), Dialect::Azure);
    assert_eq!("azure".parse::<Dialect>(), Ok(Dialect::Azure));
    assert_eq!("Extended".parse::<Dialect>(), Ok(Dialect::Extended));
    let e = "routing".parse::<Dialect>().unwrap_err();
    assert!(e.contains("'azure'") && e.contains("'extended'"), "{e}");
    assert_eq!(Dialect::Extended.to_string(), "extended");
}

#[test]
fn azure_refuses_routing_functions_at_their_column() {
    let e = query::parse_condition("STARTS_WITH(deviceId, 'store-')").unwrap_err();
    assert_eq!(e.column, 1, "{e}");
    assert!(e.message.contains("STARTS_WITH"), "{e}");
    assert!(e.message.contains("only IS_DEFINED"), "{e}");
    assert!(e.message.contains("--query-dialect extended"), "{e}");

    let q = "SELECT * FROM devices WHERE tags.env = 'prod' AND lower(tags.site) = 'ams'";
    let e = query::parse(q).unwrap_err();
    assert_eq!(e.column, q.find("lower").unwrap() + 1, "{e}");
    assert!(e.message.contains("LOWER"), "{e}");

    // In the select list too.
    let q = "SELECT LENGTH(deviceId) AS n FROM devices";
    assert_eq!(query::parse(q).unwrap_err().column, 8);

    for f in Function::ALL {
        let args = vec!["tags.x"; f.arity()].join(", ");
        let condition = if f.is_boolean() {
            format!("{}({args})", f.name())
        } else {
            format!("{}({args}) = 'a'", f.name())
        };
        let azure = query::parse_condition(&condition);
        if f == Function::IsDefined {
            assert!(azure.is_ok(), "{condition}: {azure:?}");
        } else {
            assert_eq!(azure.unwrap_err().column, 1, "{condition}");
        }
        query::parse_condition_with(&condition, Dialect::Extended)
            .unwrap_or_else(|e| panic!("{condition}: {e}"));
    }
}

#[test]
fn is_defined_is_accepted_in_any_case() {
    let c = query::parse_condition("is_defined(properties.reported.maintenance)").unwrap();
    assert!(c.matches(&json!({"properties": {"reported": {"maintenance": {}}}})));
}

#[test]
fn azure_refuses_reserved_words_as_bare_property_names() {
    for (condition, word) in [
        ("tags.group = 'US'", "group"),
        ("tags.group.region = 'US'", "group"),
        ("properties.desired.group.region = 'US'", "group"),
        ("tags.location.select = 1", "select"),
        ("tags.a.BY = 1 AND tags.b = 2", "BY"),
        ("properties.reported.top IN ['a']", "top"),
        ("IS_DEFINED(tags.from)", "from"),
        ("tags.null = 1", "null"),
    ] {
        let e = query::parse_condition(condition).unwrap_err();
        assert_eq!(
            e.column,
            condition.find(word).unwrap() + 1,
            "{condition}: {e}"
        );
        assert!(
            e.message.contains(&format!("[[{word}]]")),
            "names the escape: {e}"
        );
        query::parse_condition_with(condition, Dialect::Extended)
            .unwrap_or_else(|e| panic!("{condition}: {e}"));
    }
    // In a projection and in GROUP BY as well.
    let q = "SELECT tags.group AS g, COUNT() AS n FROM devices GROUP BY tags.group";
    assert_eq!(query::parse(q).unwrap_err().column, 13);
    query::parse_with(q, Dialect::Extended).unwrap();
    // Words that are not reserved stay bare.
    query::parse_condition("tags.groups = 1 AND tags.order = 2 AND tags.window.open = true")
        .unwrap();
}

#[test]
fn a_reserved_word_is_a_property_name_when_escaped() {
    let c = query::parse_condition("tags.[[group]].region = 'US'").unwrap();
    assert!(c.matches(&json!({"tags": {"group": {"region": "US"}}})));
    assert!(!c.matches(&json!({"tags": {"group": {"region": "EU"}}})));
    // As Azure writes configuration ids.
    let c = query::parse_condition("configurations.[[cfg-1.v2]].status = 'Applied'").unwrap();
    assert!(c.matches(&json!({"configurations": {"cfg-1.v2": {"status": "Applied"}}})));
    // `[[` opens an escaped name only after a dot; elsewhere it is an array in an array.
    let c = query::parse_condition("tags.x IN [['a'], 'b']").unwrap();
    assert!(c.matches(&json!({"tags": {"x": "b"}})));

    let e = query::parse_condition("tags.[[group = 'US'").unwrap_err();
    assert_eq!(e.column, 6, "{e}");
    assert!(e.message.contains("']]'"), "{e}");
    let e = query::parse_condition("tags.[[]] = 1").unwrap_err();
    assert_eq!(e.column, 6, "{e}");
}

#[test]
fn printing_escapes_reserved_words_so_the_text_is_valid_on_azure() {
    let c = query::parse_condition_with("tags.group.by = 'x'", Dialect::Extended).unwrap();
    let text = c.to_string();
    assert_eq!(text, "tags.[[group]].[[by]] = 'x'");
    assert_eq!(query::parse_condition(&text).unwrap(), c);
}
