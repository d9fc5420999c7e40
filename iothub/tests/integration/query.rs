//! The query language end to end: every documented example (reference §5, MicrosoftDocs
//! `query-twins.md` and `iot-hub-devguide-query-language.md`) with its documented output, and the
//! semantics the service has (case rules, typed comparisons, undefined, aggregates, TOP).

use casement_iothub::query::{self, Dialect, ItemType, QueryError};
use serde_json::{Value, json};

/// Six twins shaped as the service returns them, modelled on the documentation's sample twin.
fn fleet() -> Vec<Value> {
    let twin = |id: &str,
                status: &str,
                state: &str,
                region: &str,
                freq: u64,
                cfg: &str,
                conn: Value| {
        let mut reported = json!({
            "telemetryConfig": {"configId": "db00ebf5", "sendFrequencyInSecs": freq, "status": cfg},
            "$metadata": {"$lastUpdated": "2021-05-07T00:50:38.054Z"},
            "$version": 7
        });
        if !conn.is_null() {
            reported["connectivity"] = conn;
        }
        json!({
            "deviceId": id, "moduleId": null, "etag": "AAAAAAAAAAc=", "version": 2,
            "status": status, "statusReason": null, "statusUpdateTime": "0001-01-01T00:00:00Z",
            "connectionState": state, "lastActivityTime": format!("2021-05-0{}T00:50:38.0543092Z", id.len() % 10),
            "cloudToDeviceMessageCount": 0, "authenticationType": "sas",
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
            "modelId": "", "capabilities": {"iotEdge": false},
            "tags": {"location": {"region": region, "plant": "Redmond43"}},
            "properties": {
                "desired": {"telemetryConfig": {"sendFrequencyInSecs": freq}, "$metadata": {}, "$version": 4},
                "reported": reported
            }
        })
    };
    let mut az = twin(
        "AZ3166Device",
        "enabled",
        "Disconnected",
        "US",
        300,
        "Success",
        json!("wifi"),
    );
    az["lastActivityTime"] = json!("2021-05-07T00:50:38.0543092Z");
    vec![
        az,
        twin(
            "gw-2",
            "enabled",
            "Connected",
            "US",
            30,
            "Success",
            json!("wired"),
        ),
        twin(
            "gw-3",
            "disabled",
            "Disconnected",
            "EU",
            120,
            "Success",
            json!({"type": "cellular"}),
        ),
        twin(
            "gw-4",
            "enabled",
            "Connected",
            "US",
            60,
            "Pending",
            json!("cellular"),
        ),
        twin(
            "gw-5",
            "enabled",
            "Connected",
            "EU",
            60,
            "Pending",
            Value::Null,
        ),
        twin(
            "gw-6",
            "enabled",
            "Connected",
            "US",
            90,
            "Error",
            Value::Null,
        ),
    ]
}

// These tests cover the whole language, the local superset included, so they parse the extended
// dialect; `dialect.rs` tests what the Azure dialect refuses.
fn run(q: &str, twins: &[Value]) -> (ItemType, Vec<Value>) {
    let query = query::parse_with(q, Dialect::Extended).unwrap_or_else(|e| panic!("{q}: {e}"));
    let out = query.execute(twins).unwrap();
    (out.item_type, out.items)
}

fn ids(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|t| t["deviceId"].as_str().unwrap_or("?"))
        .collect()
}

fn target(condition: &str, twins: &[Value]) -> Vec<String> {
    let c = query::parse_condition_with(condition, Dialect::Extended)
        .unwrap_or_else(|e| panic!("{condition}: {e}"));
    twins
        .iter()
        .filter(|t| c.matches(t))
        .map(|t| t["deviceId"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Every documented example, with its documented output.
mod query_docs {
    use super::*;

    #[test]
    fn doc_select_all() {
        let (kind, items) = run("SELECT * FROM devices", &fleet());
        assert_eq!(kind, ItemType::Twin);
        assert_eq!(items, fleet(), "whole twins, unchanged");
    }

    #[test]
    fn doc_count_all_devices() {
        let (kind, items) = run(
            "SELECT COUNT() as totalNumberOfDevices FROM devices",
            &fleet(),
        );
        assert_eq!(kind, ItemType::Raw);
        assert_eq!(items, [json!({"totalNumberOfDevices": 6})]);
    }

    #[test]
    fn doc_where_region() {
        let (_, items) = run(
            "SELECT * FROM devices WHERE tags.location.region = 'US'",
            &fleet(),
        );
        assert_eq!(ids(&items), ["AZ3166Device", "gw-2", "gw-4", "gw-6"]);
    }

    #[test]
    fn doc_region_and_frequency() {
        let (_, items) = run(
            "SELECT * FROM devices\n  WHERE tags.location.region = 'US'\n    AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60",
            &fleet(),
        );
        assert_eq!(ids(&items), ["AZ3166Device", "gw-4", "gw-6"]);
    }

    #[test]
    fn doc_connectivity_in() {
        // gw-3 reports connectivity as an object: comparisons are between primitives only.
        let (_, items) = run(
            "SELECT * FROM devices WHERE properties.reported.connectivity IN ['wired', 'wifi']",
            &fleet(),
        );
        assert_eq!(ids(&items), ["AZ3166Device", "gw-2"]);
    }

    #[test]
    fn doc_is_defined() {
        let (_, items) = run(
            "SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)",
            &fleet(),
        );
        assert_eq!(ids(&items), ["AZ3166Device", "gw-2", "gw-3", "gw-4"]);
    }

    #[test]
    fn doc_group_by_status() {
        let (kind, items) = run(
            "SELECT properties.reported.telemetryConfig.status AS status,\n    COUNT() AS numberOfDevices\n  FROM devices\n  GROUP BY properties.reported.telemetryConfig.status",
            &fleet(),
        );
        assert_eq!(kind, ItemType::Raw);
        assert_eq!(
            items,
            [
                json!({"numberOfDevices": 3, "status": "Success"}),
                json!({"numberOfDevices": 2, "status": "Pending"}),
                json!({"numberOfDevices": 1, "status": "Error"}),
            ]
        );
    }

    #[test]
    fn doc_projection_is_camel_cased() {
        let (kind, items) = run(
            "SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected'",
            &fleet(),
        );
        assert_eq!(kind, ItemType::Raw);
        assert_eq!(
            items,
            [
                json!({"deviceId": "AZ3166Device", "lastActivityTime": "2021-05-07T00:50:38.0543092Z"})
            ]
        );
        // Key order follows the select list.
        let keys: Vec<&String> = items[0].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["deviceId", "lastActivityTime"]);
    }

    #[test]
    fn doc_job_condition() {
        assert_eq!(target("deviceId IN ['gw-4']", &fleet()), ["gw-4"]);
    }

    #[test]
    fn doc_module_and_job_queries_are_refused_clearly() {
        for q in [
            "SELECT * FROM devices.modules WHERE properties.reported.status = 'scanning'",
            "SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'myDeviceId'",
        ] {
            let e = query::parse(q).unwrap_err();
            assert_eq!(e.column, 15, "{e}");
            assert!(e.message.contains("not supported"), "{e}");
        }
    }

    #[test]
    fn compliance_queries() {
        let mut twins = fleet();
        twins[1]["properties"]["reported"]["iothubDM"] =
            json!({"reboot": {"lastReboot": "2025-03-02T02:04:10.000Z", "status": "completed"}});
        twins[3]["properties"]["reported"]["iothubDM"] =
            json!({"reboot": {"lastReboot": "2024-12-31T23:59:59.999Z"}});
        let (_, items) = run(
            "SELECT COUNT() AS n FROM devices WHERE IS_DEFINED(properties.reported.iothubDM.reboot.lastReboot)",
            &twins,
        );
        assert_eq!(items, [json!({"n": 2})]);
        let (_, items) = run(
            "SELECT deviceId FROM devices WHERE properties.reported.iothubDM.reboot.lastReboot >= '2025-01-01T00:00:00.000Z'",
            &twins,
        );
        assert_eq!(items, [json!({"deviceId": "gw-2"})]);
    }

    #[test]
    fn policy_target_from_design() {
        let twins = [
            json!({"deviceId": "a", "tags": {"role": "gateway", "env": "prod"}}),
            json!({"deviceId": "b", "tags": {"role": "gateway", "env": "test"}}),
            json!({"deviceId": "c", "tags": {"role": "sensor", "env": "prod"}}),
            json!({"deviceId": "d"}),
        ];
        assert_eq!(
            target("tags.role = 'gateway' AND tags.env = 'prod'", &twins),
            ["a"]
        );
    }
}

/// Which names ignore case.
mod query_case_rules {
    use super::*;

    #[test]
    fn keywords_functions_and_system_names_ignore_case_but_user_keys_do_not() {
        let twins = fleet();
        assert_eq!(target("DEVICEID = 'gw-2'", &twins), ["gw-2"]);
        assert_eq!(
            target(
                "ConnectionState = 'Disconnected' and STATUS = 'disabled'",
                &twins
            ),
            ["gw-3"]
        );
        assert_eq!(
            target("Tags.location.region = 'EU'", &twins),
            ["gw-3", "gw-5"]
        );
        assert!(target("tags.Location.region = 'EU'", &twins).is_empty());
        assert!(
            target(
                "properties.reported.TelemetryConfig.status = 'Error'",
                &twins
            )
            .is_empty()
        );
        assert!(
            target(
                "properties.Reported.telemetryConfig.status = 'Error'",
                &twins
            )
            .is_empty()
        );
        // Values compare case-sensitively.
        assert!(target("status = 'Enabled'", &twins).is_empty());
        let (_, items) = run(
            "select top 1 deviceid as Id from DEVICES where Is_Defined(tags)",
            &twins,
        );
        assert_eq!(items, [json!({"Id": "AZ3166Device"})]);
    }
}

/// Comparisons, undefined, IN/NIN, precedence, arithmetic, functions.
mod query_semantics {
    use super::*;

    fn typed() -> Vec<Value> {
        vec![
            json!({"deviceId": "num", "tags": {"v": 1, "f": 1.5}}),
            json!({"deviceId": "str", "tags": {"v": "1"}}),
            json!({"deviceId": "bool", "tags": {"v": true}}),
            json!({"deviceId": "null", "tags": {"v": null}}),
            json!({"deviceId": "obj", "tags": {"v": {"a": 1}}}),
            json!({"deviceId": "arr", "tags": {"v": [1]}}),
            json!({"deviceId": "none", "tags": {}}),
        ]
    }

    #[test]
    fn comparisons_hold_only_between_primitives_of_one_type() {
        let t = typed();
        assert_eq!(target("tags.v = 1", &t), ["num"]);
        assert_eq!(target("tags.v = 1.0", &t), ["num"]);
        assert_eq!(target("tags.v = '1'", &t), ["str"]);
        assert_eq!(target("tags.v = true", &t), ["bool"]);
        assert_eq!(target("tags.v = null", &t), ["null"]);
        // `!=` is false across types and for undefined, too.
        assert!(target("tags.v != 1", &t).is_empty());
        assert_eq!(target("tags.v != 2", &t), ["num"]);
        assert_eq!(target("tags.v != 'x'", &t), ["str"]);
        assert!(
            target("tags.v = tags.v", &t)
                .iter()
                .all(|d| d != "obj" && d != "arr" && d != "none")
        );
        assert!(target("tags.v < 'a'", &t) == ["str"]);
        assert_eq!(target("tags.v > 0", &t), ["num"]);
        assert_eq!(target("tags.v <= 1 AND tags.v >= 1", &t), ["num"]);
        assert_eq!(target("tags.v > false", &t), ["bool"]);
        assert!(target("tags.v = undefined", &t).is_empty());
    }

    #[test]
    fn undefined_comparisons_are_false_and_not_inverts_them() {
        let t = typed();
        assert!(target("tags.missing = 1", &t).is_empty());
        assert!(target("tags.missing != 1", &t).is_empty());
        assert_eq!(target("NOT tags.missing = 1", &t).len(), t.len());
        assert_eq!(target("NOT tags.v = 1", &t).len(), t.len() - 1);
        // A path through a non-object is undefined, not an error.
        assert!(target("tags.v.deeper = 1", &t).is_empty());
        assert!(target("deviceId.x = 1", &t).is_empty());
    }

    #[test]
    fn strings_compare_by_code_point_so_iso_timestamps_order_in_time() {
        let t = [
            json!({"deviceId": "a", "tags": {"t": "2026-11-29T01:04:10.000Z"}}),
            json!({"deviceId": "b", "tags": {"t": "2026-11-28T23:59:59.999Z"}}),
            json!({"deviceId": "c", "tags": {"t": "2026-11-29T01:00:00.000Z"}}),
        ];
        assert_eq!(
            target("tags.t >= '2026-11-29T01:00:00.000Z'", &t),
            ["a", "c"]
        );
        assert_eq!(target("tags.t < '2026-11-29'", &t), ["b"]);
    }

    #[test]
    fn in_and_nin() {
        let t = typed();
        assert_eq!(target("tags.v IN [1, 'x']", &t), ["num"]);
        assert_eq!(
            target("tags.v IN ['1', true, null]", &t),
            ["str", "bool", "null"]
        );
        // NIN needs a defined primitive: objects, arrays and undefined are in neither.
        assert_eq!(target("tags.v NIN [1, 'x']", &t), ["str", "bool", "null"]);
        assert!(target("tags.v IN []", &t).is_empty());
        assert_eq!(target("tags.v NIN []", &t), ["num", "str", "bool", "null"]);
        assert_eq!(target("NOT tags.v IN [1]", &t).len(), t.len() - 1);
    }

    #[test]
    fn boolean_precedence_changes_results() {
        let t = [
            json!({"deviceId": "a", "tags": {"x": 1, "y": 0, "z": 0}}),
            json!({"deviceId": "b", "tags": {"x": 0, "y": 1, "z": 0}}),
            json!({"deviceId": "c", "tags": {"x": 0, "y": 1, "z": 1}}),
        ];
        // AND binds tighter than OR.
        assert_eq!(
            target("tags.x = 1 OR tags.y = 1 AND tags.z = 1", &t),
            ["a", "c"]
        );
        assert_eq!(
            target("(tags.x = 1 OR tags.y = 1) AND tags.z = 1", &t),
            ["c"]
        );
        // NOT binds tighter than AND.
        assert_eq!(target("NOT tags.x = 1 AND tags.z = 0", &t), ["b"]);
        assert_eq!(target("NOT (tags.x = 1 AND tags.z = 0)", &t), ["b", "c"]);
        assert_eq!(target("true", &t).len(), 3);
        assert!(target("false OR NOT true", &t).is_empty());
    }

    #[test]
    fn arithmetic() {
        let t = [
            json!({"deviceId": "a", "tags": {"n": 7, "s": "7"}}),
            json!({"deviceId": "b", "tags": {"n": 2.5}}),
        ];
        assert_eq!(target("tags.n * 2 + 1 = 15", &t), ["a"]);
        assert_eq!(target("tags.n % 4 = 3", &t), ["a"]);
        assert_eq!(target("(tags.n - 0.5) / 2 = 1", &t), ["b"]);
        assert_eq!(target("-tags.n = -7", &t), ["a"]);
        assert_eq!(target("tags.n = 0x7", &t), ["a"]);
        // Arithmetic on a non-number, or a division by zero, is undefined.
        assert!(target("tags.s + 1 = 8", &t).is_empty());
        assert!(target("IS_DEFINED(tags.n / 0)", &t).is_empty());
        assert!(target("IS_DEFINED(tags.n % 0)", &t).is_empty());
    }

    #[test]
    fn superset_functions() {
        let t = typed();
        assert_eq!(target("IS_NULL(tags.v)", &t), ["null"]);
        assert_eq!(target("IS_NUMBER(tags.v)", &t), ["num"]);
        assert_eq!(target("IS_STRING(tags.v)", &t), ["str"]);
        assert_eq!(target("IS_BOOL(tags.v)", &t), ["bool"]);
        assert_eq!(target("IS_OBJECT(tags.v)", &t), ["obj"]);
        assert_eq!(target("IS_ARRAY(tags.v)", &t), ["arr"]);
        assert_eq!(
            target("IS_PRIMITIVE(tags.v)", &t),
            ["num", "str", "bool", "null"]
        );
        assert_eq!(
            target("IS_DEFINED(tags.v)", &t).len(),
            6,
            "null counts as defined"
        );
        let f = fleet();
        assert_eq!(target("STARTS_WITH(deviceId, 'gw-')", &f).len(), 5);
        assert_eq!(
            target("ENDS_WITH(deviceId, 'Device')", &f),
            ["AZ3166Device"]
        );
        assert_eq!(target("CONTAINS(deviceId, '316')", &f), ["AZ3166Device"]);
        assert_eq!(
            target("LOWER(deviceId) = 'az3166device'", &f),
            ["AZ3166Device"]
        );
        assert_eq!(
            target("UPPER(tags.location.region) = 'EU'", &f),
            ["gw-3", "gw-5"]
        );
        assert_eq!(
            target("LENGTH(deviceId) = 4 AND deviceId < 'gw-3'", &f),
            ["gw-2"]
        );
        assert!(target("STARTS_WITH(tags.location, 'U')", &f).is_empty());
        assert_eq!(target("IS_DEFINED(tags.location) = true", &f).len(), 6);
    }

    #[test]
    fn string_literal_escapes_reach_the_comparison() {
        let t = [json!({"deviceId": "a", "tags": {"s": "it's \"q\" \\ é"}})];
        assert_eq!(target(r#"tags.s = 'it\'s "q" \\ \u00e9'"#, &t), ["a"]);
        assert_eq!(target(r#"tags.s = "it's \"q\" \\ \u00E9""#, &t), ["a"]);
    }

    #[test]
    fn bracketed_keys() {
        let t = [json!({"deviceId": "a", "tags": {"my-key": {"two words": 1}}})];
        assert_eq!(target("tags['my-key']['two words'] = 1", &t), ["a"]);
    }
}

/// Projections, aggregates, GROUP BY and TOP.
mod query_output {
    use super::*;

    #[test]
    fn projections_name_keys_and_leave_out_undefined() {
        let t = [
            json!({"deviceId": "a", "tags": {"env": "prod", "n": 2}}),
            json!({"deviceId": "b", "tags": {}}),
        ];
        let (kind, items) = run(
            "SELECT deviceId, tags.env, tags.n * 10, tags.n AS count, 'x', tags FROM devices",
            &t,
        );
        assert_eq!(kind, ItemType::Raw);
        assert_eq!(
            items,
            [
                json!({"deviceId": "a", "env": "prod", "$1": 20, "count": 2, "$2": "x", "tags": {"env": "prod", "n": 2}}),
                json!({"deviceId": "b", "$2": "x", "tags": {}}),
            ]
        );
        let (_, items) = run("SELECT COUNT(), SUM(tags.n) FROM devices", &t);
        assert_eq!(items, [json!({"$1": 2, "$2": 2})]);
    }

    fn numbers() -> Vec<Value> {
        vec![
            json!({"deviceId": "a", "tags": {"g": "x", "h": 1, "n": 4}}),
            json!({"deviceId": "b", "tags": {"g": "y", "h": 1, "n": 1.5}}),
            json!({"deviceId": "c", "tags": {"g": "x", "h": 2, "n": "str"}}),
            json!({"deviceId": "d", "tags": {"g": "x", "h": 1, "n": 10}}),
            json!({"deviceId": "e", "tags": {"h": 1}}),
        ]
    }

    #[test]
    fn aggregates_without_group_by() {
        let (_, items) = run(
            "SELECT COUNT() AS c, SUM(tags.n) AS s, AVG(tags.n) AS a, MIN(tags.n) AS lo, MAX(tags.n) AS hi FROM devices",
            &numbers(),
        );
        // SUM and AVG use the numbers; MIN/MAX order numbers before strings.
        assert_eq!(
            items,
            [json!({"c": 5, "s": 15.5, "a": 15.5 / 3.0, "lo": 1.5, "hi": "str"})]
        );
        let (_, items) = run(
            "SELECT MAX(deviceId) AS last, MIN(tags.g) AS first FROM devices",
            &numbers(),
        );
        assert_eq!(items, [json!({"last": "e", "first": "x"})]);
    }

    #[test]
    fn aggregates_over_nothing() {
        let (_, items) = run(
            "SELECT COUNT() AS c, SUM(tags.n) AS s, AVG(tags.n) AS a, MIN(tags.n) AS lo FROM devices WHERE false",
            &numbers(),
        );
        assert_eq!(items, [json!({"c": 0, "s": 0})]);
        let (_, items) = run(
            "SELECT tags.g, COUNT() AS c FROM devices WHERE false GROUP BY tags.g",
            &numbers(),
        );
        assert!(items.is_empty());
    }

    #[test]
    fn group_by_one_and_several_attributes() {
        let (_, items) = run(
            "SELECT tags.g AS g, COUNT() AS c, SUM(tags.n) AS s FROM devices GROUP BY tags.g",
            &numbers(),
        );
        // Twins without the attribute form their own group, whose key is left out.
        assert_eq!(
            items,
            [
                json!({"g": "x", "c": 3, "s": 14}),
                json!({"g": "y", "c": 1, "s": 1.5}),
                json!({"c": 1, "s": 0})
            ]
        );
        let (_, items) = run(
            "SELECT tags.g, tags.h, COUNT() AS c FROM devices WHERE IS_DEFINED(tags.g) GROUP BY tags.g, tags.h",
            &numbers(),
        );
        assert_eq!(
            items,
            [
                json!({"g": "x", "h": 1, "c": 2}),
                json!({"g": "y", "h": 1, "c": 1}),
                json!({"g": "x", "h": 2, "c": 1})
            ]
        );
        // GROUP BY without aggregates gives the distinct values.
        let (_, items) = run("SELECT tags.h FROM devices GROUP BY tags.h", &numbers());
        assert_eq!(items, [json!({"h": 1}), json!({"h": 2})]);
    }

    #[test]
    fn top_applies_to_twins_projections_and_groups() {
        let f = fleet();
        let (_, items) = run("SELECT TOP 2 * FROM devices WHERE status = 'enabled'", &f);
        assert_eq!(ids(&items), ["AZ3166Device", "gw-2"]);
        let (_, items) = run(
            "SELECT TOP 1 deviceId FROM devices WHERE connectionState = 'Connected'",
            &f,
        );
        assert_eq!(items, [json!({"deviceId": "gw-2"})]);
        let (_, items) = run(
            "SELECT TOP 2 tags.location.region AS r, COUNT() AS n FROM devices GROUP BY tags.location.region",
            &f,
        );
        assert_eq!(items.len(), 2);
        let (_, items) = run("SELECT TOP 0 * FROM devices", &f);
        assert!(items.is_empty());
        let (_, items) = run("SELECT TOP 100 * FROM devices", &f);
        assert_eq!(items.len(), 6);
    }

    #[test]
    fn execute_takes_any_iterator_of_references() {
        let f = fleet();
        let q = query::parse("SELECT COUNT() AS n FROM devices").unwrap();
        assert_eq!(
            q.execute(f.iter().skip(2)).unwrap().items,
            [json!({"n": 4})]
        );
        assert_eq!(
            q.execute(std::iter::empty()).unwrap().items,
            [json!({"n": 0})]
        );
        assert_eq!(ItemType::Twin.as_str(), "twin");
        assert_eq!(ItemType::Raw.as_str(), "raw");
    }
}

/// Canonical printing, error columns and messages, the length limit.
mod query_printing_and_errors {
    use super::*;

    #[test]
    fn canonical_printing() {
        let cases = [
            (
                "select top 3 DeviceId as id, count() from devices where not (tags.a = 1 or tags.b <> \"x\") and tags.c in [1, 'y'] group by deviceid",
                "SELECT TOP 3 deviceId AS id, COUNT() FROM devices WHERE NOT (tags.a = 1 OR tags.b != 'x') AND tags.c IN [1, 'y'] GROUP BY deviceId",
            ),
            (
                "select * from devices where (tags.a = 1 or tags.b <> \"x\") and not tags.c nin [1,'y',[true,null]]",
                "SELECT * FROM devices WHERE (tags.a = 1 OR tags.b != 'x') AND NOT tags.c NIN [1, 'y', [true, null]]",
            ),
            (
                "SELECT * FROM devices WHERE ((tags.n + 1) * 2) - -3 % 0x10 >= -(tags.m) AND is_defined(tags['a b'])",
                "SELECT * FROM devices WHERE (tags.n + 1) * 2 - -3 % 16 >= -(tags.m) AND IS_DEFINED(tags['a b'])",
            ),
        ];
        for (input, expected) in cases {
            let q = query::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(q.to_string(), expected);
            assert_eq!(query::parse(&q.to_string()).unwrap(), q);
        }
        let c = query::parse_condition("tags.s = 'it''s'");
        assert!(c.is_err(), "SQL-style doubled quotes are not an escape");
        let c = query::parse_condition(r"tags.s = 'it\'s' and tags.t = 'tab	\u0001'").unwrap();
        assert_eq!(
            c.to_string(),
            r"tags.s = 'it\'s' AND tags.t = 'tab\u0009\u0001'"
        );
        assert_eq!(query::parse_condition(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let e = query::parse("SELECT * FROM devices WHERE tags.env prod").unwrap_err();
        assert_eq!(e.column, 38);
        assert_eq!(
            e.to_string(),
            "column 38: expected a comparison operator (=, !=, <>, <, <=, >, >=), IN or NIN after 'tags.env', found 'prod'"
        );
        let e = query::parse_condition("tags.env = 'prod' AND").unwrap_err();
        assert_eq!(e.column, 22);
        assert!(e.message.ends_with("found end of input"), "{e}");
        let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
        assert_eq!(boxed.to_string(), e.to_string());
        let e = query::parse_condition("tags.x = 'abc").unwrap_err();
        assert_eq!((e.column, e.message.contains("unterminated")), (10, true));
    }

    #[test]
    fn query_length_limit_is_8192_characters() {
        let base = "SELECT * FROM devices WHERE tags.x = ''";
        let fill = |n: usize| base.replace("''", &format!("'{}'", "a".repeat(n)));
        assert!(query::parse(&fill(query::MAX_QUERY_CHARS - base.len())).is_ok());
        let e: QueryError =
            query::parse(&fill(query::MAX_QUERY_CHARS - base.len() + 1)).unwrap_err();
        assert_eq!(e.column, 8193);
        assert_eq!(
            e.message,
            "the query is 8193 characters long; IoT Hub accepts at most 8192"
        );
        assert!(query::parse_condition(&"a".repeat(8193)).is_err());
    }
}
