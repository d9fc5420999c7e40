//! Automatic device management configurations, the bulk registry call and the statistics,
//! end to end over HTTP against an in-process hub (docs/iothub-contract.md).

use std::sync::Arc;
use std::time::Duration;

use casement_client::ServiceClient;
use casement_hub::{HubConfig, ManualClock, Operation, Rate, ThrottleConfig};
use casement_iothub::rest::TwinPatch;
use casement_tests::hub::service_client;
use casement_tests::mqtt::{Device, WAIT};
use casement_tests::rest::{Call, Rest};
use chrono::{DateTime, Utc};
use rumqttc::mqttbytes::QoS;
use serde_json::{Value, json};

fn config(target: &str, priority: i64, window: &str) -> Value {
    json!({
        "id": "",
        "schemaVersion": "1.0",
        "labels": {"team": "ops"},
        "content": {"deviceContent": {"properties.desired.maintenance": {"window": window}}},
        "targetCondition": target,
        "priority": priority,
        "metrics": {"queries": {}},
    })
}

async fn create(api: &Rest, id: &str, body: &Value) -> Value {
    let r = api.put(&format!("/configurations/{id}"), body).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.json()
}

async fn put_if_match(
    api: &Rest,
    id: &str,
    body: &Value,
    etag: &str,
) -> casement_tests::rest::Answer {
    api.answer(
        Call::put(format!("/configurations/{id}"))
            .json(body)
            .header("If-Match", &format!("\"{etag}\"")),
    )
    .await
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("time")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn create_get_list_update_and_delete() {
    let clock = Arc::new(ManualClock::new(at("2026-03-01T10:00:00Z")));
    let hub = crate::common::start_with(HubConfig {
        clock: clock.clone(),
        ..HubConfig::for_tests()
    })
    .await;
    let api = Rest::of(&hub);

    let mut body = config("tags.env = 'prod'", 10, "sun-02");
    body["metrics"]["queries"]["applied"] =
        json!("SELECT deviceId FROM devices WHERE configurations.[[maint]].status = 'Applied'");
    let created = create(&api, "maint", &body).await;
    assert_eq!(created["id"], "maint");
    assert_eq!(created["schemaVersion"], "1.0");
    assert_eq!(created["labels"], json!({"team": "ops"}));
    assert_eq!(created["priority"], 10);
    assert_eq!(created["createdTimeUtc"], "2026-03-01T10:00:00.000Z");
    assert_eq!(created["lastUpdatedTimeUtc"], "2026-03-01T10:00:00.000Z");
    assert_eq!(
        created["systemMetrics"]["queries"]["targetedCount"],
        "SELECT deviceId FROM devices WHERE tags.env = 'prod'"
    );
    assert_eq!(
        created["systemMetrics"]["queries"]["appliedCount"],
        "SELECT deviceId FROM devices WHERE configurations.[[maint]].status = 'Applied'"
    );
    assert_eq!(
        created["systemMetrics"]["results"],
        json!({"targetedCount": 0, "appliedCount": 0})
    );
    let etag = created["etag"].as_str().expect("etag").to_owned();

    // Creating again without If-Match is a conflict.
    api.put("/configurations/maint", &body)
        .await
        .expect_error(409, "ConfigurationAlreadyExists");
    create(&api, "other", &config("tags.env = 'test'", 1, "sat-01")).await;

    let got = api.get("/configurations/maint").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), created);
    let list = api.get("/configurations").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json().as_array().map(Vec::len), Some(2));
    let top = api.get("/configurations?top=1").await;
    assert_eq!(top.json().as_array().map(Vec::len), Some(1));

    // Priority, target, labels and metrics may change; content may not.
    clock.set(at("2026-03-01T11:00:00Z"));
    let mut update = created.clone();
    update["priority"] = json!(20);
    update["targetCondition"] = json!("tags.env = 'staging'");
    update["labels"] = json!({"team": "fleet"});
    let r = put_if_match(&api, "maint", &update, &etag).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["priority"], 20);
    assert_eq!(r.json()["targetCondition"], "tags.env = 'staging'");
    assert_eq!(r.json()["labels"], json!({"team": "fleet"}));
    assert_eq!(r.json()["createdTimeUtc"], "2026-03-01T10:00:00.000Z");
    assert_eq!(r.json()["lastUpdatedTimeUtc"], "2026-03-01T11:00:00.000Z");
    assert_eq!(
        r.json()["systemMetrics"]["queries"]["targetedCount"],
        "SELECT deviceId FROM devices WHERE tags.env = 'staging'"
    );
    let new_etag = r.json()["etag"].as_str().expect("etag").to_owned();
    assert_ne!(new_etag, etag);

    // The old ETag no longer matches.
    put_if_match(&api, "maint", &update, &etag)
        .await
        .expect_error(412, "PreconditionFailed");
    let mut changed = r.json().clone();
    changed["content"]["deviceContent"]["properties.desired.maintenance"] =
        json!({"window": "mon-03"});
    let refused = put_if_match(&api, "maint", &changed, &new_etag).await;
    refused.expect_error(400, "InvalidOperation");
    assert!(
        refused.text().contains("cannot change"),
        "{}",
        refused.text()
    );
    // An update of a configuration that does not exist.
    let mut missing = update.clone();
    missing["id"] = json!("nosuch");
    put_if_match(&api, "nosuch", &missing, "*")
        .await
        .expect_error(404, "ConfigurationNotFound");

    // Delete: a stale ETag is refused, the current one (or *) deletes.
    api.answer(Call::delete("/configurations/maint").header("If-Match", "\"bm9wZQ==\""))
        .await
        .expect_error(412, "PreconditionFailed");
    let r = api
        .answer(Call::delete("/configurations/maint").header("If-Match", "*"))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    api.get("/configurations/maint")
        .await
        .expect_error(404, "ConfigurationNotFound");
    api.delete("/configurations/maint")
        .await
        .expect_error(404, "ConfigurationNotFound");
    hub.shutdown().await;
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_the_reason() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let bad_id = api
        .put("/configurations/Upper", &config("tags.a = 1", 0, "x"))
        .await;
    bad_id.expect_error(400, "ArgumentInvalid");
    assert!(bad_id.text().contains("lowercase"), "{}", bad_id.text());

    let mut bad_path = config("tags.a = 1", 0, "x");
    bad_path["content"]["deviceContent"] = json!({"tags.env": "prod"});
    let r = api.put("/configurations/c1", &bad_path).await;
    r.expect_error(400, "ArgumentInvalid");
    assert!(r.text().contains("properties.desired."), "{}", r.text());

    let r = api
        .put("/configurations/c1", &config("tags.a = = 1", 0, "x"))
        .await;
    r.expect_error(400, "ArgumentInvalid");
    assert!(r.text().contains("targetCondition"), "{}", r.text());

    let r = api
        .put("/configurations/c1", &config("tags.a = 1", -1, "x"))
        .await;
    r.expect_error(400, "ArgumentInvalid");

    let mut bad_metric = config("tags.a = 1", 0, "x");
    bad_metric["metrics"]["queries"]["m"] = json!("SELECT FROM");
    api.put("/configurations/c1", &bad_metric)
        .await
        .expect_error(400, "ArgumentInvalid");

    // Azure allows up to five custom metrics.
    let mut six = config("tags.a = 1", 0, "x");
    for i in 0..6 {
        six["metrics"]["queries"][format!("m{i}")] = json!("SELECT deviceId FROM devices");
    }
    let r = api.put("/configurations/c1", &six).await;
    r.expect_error(400, "ArgumentInvalid");
    assert!(r.text().contains("at most 5"), "{}", r.text());

    let mut modules = config("tags.a = 1", 0, "x");
    modules["content"]["modulesContent"] = json!({"$edgeAgent": {}});
    api.put("/configurations/c1", &modules)
        .await
        .expect_error(400, "ArgumentInvalid");

    // More than 32 KB of content (the desired-properties limit).
    let mut big = config("tags.a = 1", 0, "x");
    big["content"]["deviceContent"]["properties.desired.blob"] = json!("x".repeat(4000));
    for i in 0..9 {
        big["content"]["deviceContent"][format!("properties.desired.b{i}")] =
            json!("y".repeat(4000));
    }
    api.put("/configurations/c1", &big)
        .await
        .expect_error(400, "ArgumentInvalid");

    assert_eq!(api.get("/configurations").await.json(), json!([]));
    hub.shutdown().await;
}

#[tokio::test]
async fn test_queries_reports_each_broken_query() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let ok = api
        .post(
            "/configurations/testQueries",
            &json!({
                "targetCondition": "tags.env = 'prod'",
                "customMetricQueries": {
                    "applied": "SELECT deviceId FROM devices WHERE configurations.[[c]].status = 'Applied'"
                }
            }),
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        ok.json(),
        json!({"targetConditionError": "", "customMetricQueryErrors": {}})
    );
    let bad = api
        .post(
            "/configurations/testQueries",
            &json!({
                "targetCondition": "tags.env = ",
                "customMetricQueries": {"good": "SELECT deviceId FROM devices", "bad": "SELECT deviceId FROM"}
            }),
        )
        .await;
    assert_eq!(bad.status, 200);
    assert!(
        bad.json()["targetConditionError"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{bad:?}"
    );
    let errors = bad.json()["customMetricQueryErrors"]
        .as_object()
        .expect("map")
        .clone();
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["bad"]);
    hub.shutdown().await;
}

async fn tag(client: &ServiceClient, device: &str, tags: Value) {
    client
        .patch(device, &TwinPatch::tags(tags), None)
        .await
        .unwrap_or_else(|e| panic!("cannot tag {device}: {e}"));
}

async fn twin(api: &Rest, device: &str) -> Value {
    let r = api.get(&format!("/twins/{device}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[tokio::test]
async fn evaluation_applies_the_highest_priority_and_counts() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let client = service_client(&hub);
    hub.create_device("d1", json!({"env": "prod"}))
        .await
        .expect("d1");
    hub.create_device("d2", json!({"env": "prod", "ring": "canary"}))
        .await
        .expect("d2");
    hub.create_device("d3", Value::Null).await.expect("d3");

    let mut base = config("tags.env = 'prod'", 1, "base");
    base["metrics"]["queries"]["lost"] =
        json!("SELECT deviceId FROM devices WHERE configurations.[[base]].status = 'Targeted'");
    create(&api, "base", &base).await;
    create(&api, "canary", &config("tags.ring = 'canary'", 5, "canary")).await;

    // d1 listens for desired patches over MQTT.
    let mut d1 = Device::create_and_connect(&hub, "d1").await;
    d1.mqtt
        .subscribe(&[("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)])
        .await;

    // Nothing happens before an evaluation.
    assert!(
        twin(&api, "d1").await["properties"]["desired"]
            .get("maintenance")
            .is_none()
    );

    let first = hub.evaluate_configurations().await.expect("evaluate");
    assert_eq!(first.configurations, 2);
    assert_eq!(first.desired_writes, 2, "{first:?}");

    let t1 = twin(&api, "d1").await;
    assert_eq!(
        t1["properties"]["desired"]["maintenance"],
        json!({"window": "base"})
    );
    assert_eq!(t1["configurations"], json!({"base": {"status": "Applied"}}));
    let t2 = twin(&api, "d2").await;
    assert_eq!(
        t2["properties"]["desired"]["maintenance"],
        json!({"window": "canary"})
    );
    assert_eq!(
        t2["configurations"],
        json!({"base": {"status": "Targeted"}, "canary": {"status": "Applied"}})
    );
    let t3 = twin(&api, "d3").await;
    assert!(t3["properties"]["desired"].get("maintenance").is_none());
    assert!(t3.get("configurations").is_none(), "{t3}");

    // The connected device was notified with the new $version.
    let p = tokio::time::timeout(WAIT, d1.mqtt.next_publish())
        .await
        .expect("desired patch");
    let patch: Value = serde_json::from_slice(&p.payload).expect("json");
    assert_eq!(patch["maintenance"], json!({"window": "base"}));
    assert_eq!(
        patch["$version"], t1["properties"]["desired"]["$version"],
        "{patch}"
    );

    let base = api.get("/configurations/base").await.json();
    assert_eq!(
        base["systemMetrics"]["results"],
        json!({"targetedCount": 2, "appliedCount": 1})
    );
    assert_eq!(base["metrics"]["results"], json!({"lost": 1}));
    let canary = api.get("/configurations/canary").await.json();
    assert_eq!(
        canary["systemMetrics"]["results"],
        json!({"targetedCount": 1, "appliedCount": 1})
    );

    // Idempotent: a second evaluation writes nothing, and the desired $version stays.
    let version = t1["properties"]["desired"]["$version"].clone();
    let second = hub.evaluate_configurations().await.expect("evaluate");
    assert_eq!(second.desired_writes, 0, "{second:?}");
    assert_eq!(second.status_writes, 0, "{second:?}");
    assert_eq!(
        twin(&api, "d1").await["properties"]["desired"]["$version"],
        version
    );

    // A device tagged later gets the content at the next evaluation.
    tag(&client, "d3", json!({"env": "prod"})).await;
    assert!(
        twin(&api, "d3").await["properties"]["desired"]
            .get("maintenance")
            .is_none()
    );
    let third = hub.evaluate_configurations().await.expect("evaluate");
    assert_eq!(third.desired_writes, 1, "{third:?}");
    assert_eq!(
        twin(&api, "d3").await["properties"]["desired"]["maintenance"],
        json!({"window": "base"})
    );
    assert_eq!(
        api.get("/configurations/base").await.json()["systemMetrics"]["results"],
        json!({"targetedCount": 3, "appliedCount": 2})
    );

    // A device leaving the target keeps the desired properties but loses the status.
    tag(&client, "d1", json!({"env": "test"})).await;
    hub.evaluate_configurations().await.expect("evaluate");
    let t1 = twin(&api, "d1").await;
    assert_eq!(
        t1["properties"]["desired"]["maintenance"],
        json!({"window": "base"})
    );
    assert!(t1.get("configurations").is_none(), "{t1}");

    // Deleting the winner: its content stays until another configuration applies.
    assert_eq!(api.delete("/configurations/canary").await.status, 204);
    hub.evaluate_configurations().await.expect("evaluate");
    let t2 = twin(&api, "d2").await;
    assert_eq!(t2["configurations"], json!({"base": {"status": "Applied"}}));
    assert_eq!(
        t2["properties"]["desired"]["maintenance"],
        json!({"window": "base"})
    );
    assert_eq!(api.delete("/configurations/base").await.status, 204);
    hub.evaluate_configurations().await.expect("evaluate");
    let t2 = twin(&api, "d2").await;
    assert!(t2.get("configurations").is_none(), "{t2}");
    assert_eq!(
        t2["properties"]["desired"]["maintenance"],
        json!({"window": "base"}),
        "deleting a configuration leaves what it wrote"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn on_equal_priority_the_newest_configuration_wins_and_content_replaces_the_key() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("d1", json!({"env": "prod"}))
        .await
        .expect("d1");
    // What was there before is replaced as a whole (not merged).
    let r = api
        .patch(
            "/twins/d1",
            &json!({"properties": {"desired": {"maintenance": {"window": "old", "extra": 1}, "other": true}}}),
        )
        .await;
    assert_eq!(r.status, 200);
    // "a-older" sorts first by id but was created first.
    create(&api, "b-older", &config("tags.env = 'prod'", 3, "older")).await;
    create(&api, "a-newer", &config("tags.env = 'prod'", 3, "newer")).await;
    hub.evaluate_configurations().await.expect("evaluate");
    let t = twin(&api, "d1").await;
    assert_eq!(
        t["properties"]["desired"]["maintenance"],
        json!({"window": "newer"})
    );
    assert_eq!(t["properties"]["desired"]["other"], true);
    assert_eq!(t["configurations"]["a-newer"]["status"], "Applied");
    assert_eq!(t["configurations"]["b-older"]["status"], "Targeted");
    hub.shutdown().await;
}

#[tokio::test]
async fn the_background_evaluation_runs_on_its_interval() {
    let hub = crate::common::start_with(HubConfig {
        configuration_interval: Some(Duration::from_millis(50)),
        ..HubConfig::for_tests()
    })
    .await;
    let api = Rest::of(&hub);
    hub.create_device("d1", json!({"env": "prod"}))
        .await
        .expect("d1");
    create(&api, "c", &config("tags.env = 'prod'", 0, "auto")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = twin(&api, "d1").await;
        if t["properties"]["desired"]["maintenance"] == json!({"window": "auto"}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no background evaluation within {WAIT:?}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn configurations_and_their_results_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let hub = crate::common::start_with(HubConfig::for_tests_in(dir.path())).await;
    let api = Rest::of(&hub);
    hub.create_device("d1", json!({"env": "prod"}))
        .await
        .expect("d1");
    create(&api, "keep", &config("tags.env = 'prod'", 2, "kept")).await;
    hub.evaluate_configurations().await.expect("evaluate");
    let before = api.get("/configurations/keep").await.json();
    hub.shutdown().await;

    let hub = crate::common::start_with(HubConfig::for_tests_in(dir.path())).await;
    let api = Rest::of(&hub);
    let after = api.get("/configurations/keep").await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.json(), before);
    assert_eq!(
        after.json()["systemMetrics"]["results"],
        json!({"targetedCount": 1, "appliedCount": 1})
    );
    let t = twin(&api, "d1").await;
    assert_eq!(t["configurations"], json!({"keep": {"status": "Applied"}}));
    // Nothing to redo after the restart.
    let again = hub.evaluate_configurations().await.expect("evaluate");
    assert_eq!(again.desired_writes + again.status_writes, 0, "{again:?}");
    hub.shutdown().await;
}

#[tokio::test]
async fn at_most_one_hundred_configurations() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    for i in 0..100 {
        create(
            &api,
            &format!("c{i:03}"),
            &config("tags.env = 'prod'", 0, "w"),
        )
        .await;
    }
    let r = api
        .put("/configurations/c100", &config("tags.env = 'prod'", 0, "w"))
        .await;
    r.expect_error(403, "IotHubQuotaExceeded");
    assert!(r.text().contains("100"), "{}", r.text());
    assert_eq!(
        api.get("/configurations")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(100)
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn configuration_calls_have_their_own_quota() {
    let hub = crate::common::start_with(HubConfig {
        throttle: ThrottleConfig::none().with(Operation::Configurations, Rate::per_minute(2.0)),
        ..HubConfig::for_tests()
    })
    .await;
    let api = Rest::of(&hub);
    create(&api, "c1", &config("tags.env = 'prod'", 0, "w")).await;
    assert_eq!(api.get("/configurations/c1").await.status, 200);
    api.get("/configurations")
        .await
        .expect_error(429, "ThrottlingException");
    // The registry's own quota is not spent by configuration calls.
    assert_eq!(api.get("/devices").await.status, 200);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_registry_read_token_cannot_write_configurations() {
    let hub = crate::common::start().await;
    let reader = Rest::for_policy(&hub, "registryRead");
    reader
        .put("/configurations/c1", &config("tags.env = 'prod'", 0, "w"))
        .await
        .expect_error(401, "IotHubUnauthorized");
    assert_eq!(reader.get("/configurations").await.status, 200);
    hub.shutdown().await;
}

#[tokio::test]
async fn bulk_registry_creates_updates_and_deletes() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let r = api
        .post(
            "/devices",
            &json!([
                {"id": "b1", "importMode": "create", "tags": {"env": "prod"}},
                {"id": "b2", "importMode": "create", "status": "disabled"},
                {"id": "b3", "importMode": "create", "properties": {"desired": {"fw": "1.0"}}},
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"isSuccessful": true, "errors": [], "warnings": []})
    );
    assert_eq!(twin(&api, "b1").await["tags"], json!({"env": "prod"}));
    assert_eq!(api.get("/devices/b2").await.json()["status"], "disabled");
    assert_eq!(twin(&api, "b3").await["properties"]["desired"]["fw"], "1.0");

    // Partial failure: the good entries apply, the bad ones are listed; 400.
    let r = api
        .post(
            "/devices",
            &json!([
                {"id": "b1", "importMode": "create"},
                {"id": "b4", "importMode": "Create"},
                {"id": "b2", "importMode": "Update", "status": "enabled"},
                {"id": "b3", "importMode": "Delete"},
                {"id": "b5", "importMode": "teleport"},
            ]),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["isSuccessful"], false);
    let errors = r.json()["errors"].as_array().expect("errors").clone();
    assert_eq!(errors.len(), 2, "{r:?}");
    assert_eq!(errors[0]["deviceId"], "b1");
    assert_eq!(errors[0]["errorCode"], "DeviceAlreadyExists");
    assert_eq!(errors[1]["deviceId"], "b5");
    assert!(
        errors[1]["errorStatus"]
            .as_str()
            .is_some_and(|s| s.contains("importMode")),
        "{r:?}"
    );
    assert_eq!(api.get("/devices/b4").await.status, 200);
    assert_eq!(api.get("/devices/b2").await.json()["status"], "enabled");
    api.get("/devices/b3")
        .await
        .expect_error(404, "DeviceNotFound");

    // ETag-guarded modes.
    let r = api
        .post(
            "/devices",
            &json!([{"id": "b4", "importMode": "deleteIfMatchETag", "eTag": "stale"}]),
        )
        .await;
    assert_eq!(
        r.json()["errors"][0]["errorCode"],
        "PreconditionFailed",
        "{r:?}"
    );
    let twin_etag = twin(&api, "b4").await["etag"].clone();
    let r = api
        .post(
            "/devices",
            &json!([{"id": "b4", "importMode": "updateTwinIfMatchETag", "twinETag": twin_etag, "tags": {"x": 1}}]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(twin(&api, "b4").await["tags"], json!({"x": 1}));
    hub.shutdown().await;
}

#[tokio::test]
async fn bulk_registry_limits() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"id": format!("m{i}"), "importMode": "create"}))
        .collect();
    api.post("/devices", &Value::Array(many.clone()))
        .await
        .expect_error(413, "TooManyDevices");
    let r = api
        .post("/devices/", &Value::Array(many[..100].to_vec()))
        .await;
    assert_eq!(r.status, 200, "{r:?}: 100 is allowed");
    api.post(
        "/devices",
        &json!([{"id": "x", "importMode": "create"}, {"id": "x", "importMode": "delete"}]),
    )
    .await
    .expect_error(400, "DeviceDefinedMultipleTimes");
    api.post("/devices", &json!({"id": "x"}))
        .await
        .expect_error(400, "IotHubFormatError");
    api.post("/devices", &json!([]))
        .await
        .expect_error(400, "ArgumentInvalid");
    hub.shutdown().await;
}

#[tokio::test]
async fn statistics_and_the_trailing_slash_list() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("s1", Value::Null).await.expect("s1");
    hub.create_device("s2", Value::Null).await.expect("s2");
    let r = api.put("/devices/s3", &json!({"status": "disabled"})).await;
    assert_eq!(r.status, 200);
    let _online = Device::create_and_connect(&hub, "s1").await;

    let r = api.get("/statistics/devices").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"totalDeviceCount": 3, "enabledDeviceCount": 2, "disabledDeviceCount": 1})
    );
    let r = api.get("/statistics/service").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"connectedDeviceCount": 1}));

    let slash = api.get("/devices/").await;
    assert_eq!(slash.status, 200, "{slash:?}");
    assert_eq!(slash.json().as_array().map(Vec::len), Some(3));
    hub.shutdown().await;
}
