//! The service REST API over real sockets: registry, twins with ETags and limits, queries with
//! paging, authentication and policy permissions, error format, body limits, throttling, HTTPS.

use crate::common::now;
use casement_hub::{HubConfig, Operation, Rate, ThrottleConfig};
use casement_iothub::sas;
use casement_tests::rest::{Call, Rest};
use serde_json::{Value, json};

#[tokio::test]
async fn registry_crud() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);

    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // 32 bytes
    let created = api
        .put(
            "/devices/d1",
            &json!({"deviceId": "d1", "status": "enabled",
                    "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key}}}),
        )
        .await;
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(
        created.json()["authentication"]["symmetricKey"]["primaryKey"],
        key
    );
    assert!(
        created.json()["authentication"]["symmetricKey"]["secondaryKey"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    assert_eq!(created.json()["connectionState"], "Disconnected");
    let etag = created.json()["etag"].as_str().expect("etag").to_owned();

    // Duplicate create: 409.
    api.put("/devices/d1", &json!({"deviceId": "d1"}))
        .await
        .expect_error(409, "DeviceAlreadyExists");
    // Bad id, mismatched id, bad key, unsupported auth type: 400.
    api.put("/devices/bad%20id", &json!({}))
        .await
        .expect_error(400, "ArgumentInvalid");
    api.put("/devices/d2", &json!({"deviceId": "d3"}))
        .await
        .expect_error(400, "ArgumentInvalid");
    api.put(
        "/devices/d2",
        &json!({"deviceId": "d2", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "c2hvcnQ="}}}),
    )
    .await
    .expect_error(400, "ArgumentInvalid");
    api.put(
        "/devices/d2",
        &json!({"deviceId": "d2", "authentication": {"type": "selfSigned"}}),
    )
    .await
    .expect_error(400, "ArgumentInvalid");

    // Update with If-Match: stale 412, current and * work; keys stay unless given.
    let update = json!({"deviceId": "d1", "status": "disabled", "statusReason": "maintenance"});
    let r = api
        .answer(
            Call::put("/devices/d1")
                .json(&update)
                .header("If-Match", "\"bm9wZQ==\""),
        )
        .await;
    r.expect_error(412, "PreconditionFailed");
    let quoted = format!("\"{etag}\"");
    let r = api
        .answer(
            Call::put("/devices/d1")
                .json(&update)
                .header("If-Match", &quoted),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "disabled");
    assert_eq!(
        r.json()["authentication"]["symmetricKey"]["primaryKey"],
        key
    );
    assert_ne!(r.json()["etag"], etag.as_str());
    // Update of an unknown device: 404.
    api.answer(
        Call::put("/devices/nope")
            .json(&json!({}))
            .header("If-Match", "*"),
    )
    .await
    .expect_error(404, "DeviceNotFound");

    // Get and list.
    assert_eq!(
        api.get("/devices/d1").await.json()["statusReason"],
        "maintenance"
    );
    for i in 0..3 {
        hub.create_device(&format!("x{i}"), Value::Null)
            .await
            .expect("create");
    }
    let list = api.get("/devices?top=2").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json().as_array().map(Vec::len), Some(2));
    assert_eq!(
        api.get("/devices").await.json().as_array().map(Vec::len),
        Some(4)
    );

    // Delete: stale If-Match 412, then 204, then 404.
    let r = api
        .answer(Call::delete("/devices/d1").header("If-Match", "\"stale\""))
        .await;
    r.expect_error(412, "PreconditionFailed");
    let r = api
        .answer(Call::delete("/devices/d1").header("If-Match", "\"*\""))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    api.get("/devices/d1")
        .await
        .expect_error(404, "DeviceNotFound");
    api.delete("/devices/d1")
        .await
        .expect_error(404, "DeviceNotFound");
    hub.shutdown().await;
}

#[tokio::test]
async fn authentication_and_policy_permissions() {
    let hub = crate::common::start().await;
    let cs = hub.create_device("d1", Value::Null).await.expect("d1");
    hub.create_device("d2", Value::Null).await.expect("d2");
    let with = |token: String| Rest::of(&hub).with_token(token);

    // No or broken credentials: 401 IotHubUnauthorizedAccess.
    with(String::new())
        .get("/twins/d1")
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");
    with("SharedAccessSignature sr=x".into())
        .get("/twins/d1")
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");
    let owner_cs = hub.service_connection_string();
    let owner_key = owner_cs.split("SharedAccessKey=").nth(1).expect("key");
    let expired =
        sas::service_token("localhost", "iothubowner", owner_key, now() - 600).expect("sign");
    with(expired)
        .get("/twins/d1")
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");
    let other_hub = sas::service_token(
        "elsewhere.azure-devices.net",
        "iothubowner",
        owner_key,
        now() + 600,
    )
    .expect("sign");
    with(other_hub)
        .get("/twins/d1")
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");
    let service_key = hub
        .policy_connection_string("service")
        .expect("service")
        .split("SharedAccessKey=")
        .nth(1)
        .expect("key")
        .to_owned();
    let forged =
        sas::service_token("localhost", "iothubowner", &service_key, now() + 600).expect("sign");
    with(forged)
        .get("/twins/d1")
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");
    // The host may carry a port; the raw (unescaped) form Node's service SDK signs works too.
    let raw =
        sas::service_token("localhost:443", "iothubowner", owner_key, now() + 600).expect("sign");
    assert_eq!(with(raw).get("/twins/d1").await.status, 200);

    // Policy permissions, per endpoint.
    let registry_read = Rest::for_policy(&hub, "registryRead");
    assert_eq!(registry_read.get("/devices/d1").await.status, 200);
    assert_eq!(registry_read.get("/devices").await.status, 200);
    registry_read
        .put("/devices/d9", &json!({"deviceId": "d9"}))
        .await
        .expect_error(401, "IotHubUnauthorized");
    registry_read
        .patch("/twins/d1", &json!({"tags": {"a": 1}}))
        .await
        .expect_error(401, "IotHubUnauthorized");
    registry_read
        .invoke("d1", &json!({"methodName": "m"}))
        .await
        .expect_error(401, "IotHubUnauthorized");

    let registry_rw = Rest::for_policy(&hub, "registryReadWrite");
    assert_eq!(
        registry_rw
            .put("/devices/d9", &json!({"deviceId": "d9"}))
            .await
            .status,
        200
    );
    assert_eq!(registry_rw.delete("/devices/d9").await.status, 204);
    registry_rw
        .patch("/twins/d1", &json!({"tags": {"a": 1}}))
        .await
        .expect_error(401, "IotHubUnauthorized");

    let service = Rest::for_policy(&hub, "service");
    assert_eq!(
        service
            .patch("/twins/d1", &json!({"tags": {"a": 1}}))
            .await
            .status,
        200
    );
    assert_eq!(
        service
            .query("SELECT * FROM devices", None, None)
            .await
            .status,
        200
    );
    service
        .put("/devices/d9", &json!({"deviceId": "d9"}))
        .await
        .expect_error(401, "IotHubUnauthorized");
    service
        .get("/devices/d1")
        .await
        .expect_error(401, "IotHubUnauthorized");

    let device_policy = Rest::for_policy(&hub, "device");
    device_policy
        .get("/twins/d1")
        .await
        .expect_error(401, "IotHubUnauthorized");
    device_policy
        .get("/devices/d1")
        .await
        .expect_error(401, "IotHubUnauthorized");

    // A device's own key never reaches the service API, for itself or another device.
    let device = with(crate::common::device_token(&cs, now() + 600));
    device
        .get("/twins/d1")
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");
    device
        .get("/twins/d2")
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");
    device
        .invoke("d2", &json!({"methodName": "m"}))
        .await
        .expect_error(401, "IotHubUnauthorizedAccess");

    // A policy token scoped to one device reaches only that device.
    let scoped = sas::sign(
        "localhost/devices/d1",
        owner_key,
        Some("iothubowner"),
        now() + 600,
    )
    .expect("sign");
    let scoped = with(scoped);
    assert_eq!(scoped.get("/twins/d1").await.status, 200);
    scoped
        .get("/twins/d2")
        .await
        .expect_error(401, "IotHubUnauthorized");
    scoped
        .query("SELECT * FROM devices", None, None)
        .await
        .expect_error(401, "IotHubUnauthorized");
    hub.shutdown().await;
}

#[tokio::test]
async fn twins_etags_tags_versions_and_metadata() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("d1", json!({"env": "prod"}))
        .await
        .expect("d1");

    let twin = api.get("/twins/d1").await;
    assert_eq!(twin.status, 200);
    assert_eq!(twin.json()["tags"], json!({"env": "prod"}));
    assert_eq!(twin.json()["properties"]["desired"]["$version"], 1);
    let etag = twin.json()["etag"].as_str().expect("etag").to_owned();
    let version = twin.json()["version"].as_u64().expect("version");

    // Stale ETag: 412; current ETag, quoted or not, and * succeed.
    let patch = json!({"tags": {"floor": 3}, "properties": {"desired": {"fw": "2.0", "cfg": {"a": 1, "b": 2}}}});
    api.answer(
        Call::patch("/twins/d1")
            .json(&patch)
            .header("If-Match", "\"AAAAAAAAAAA=\""),
    )
    .await
    .expect_error(412, "PreconditionFailed");
    let r = api
        .answer(
            Call::patch("/twins/d1")
                .json(&patch)
                .header("If-Match", &etag),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tags"], json!({"env": "prod", "floor": 3}));
    assert_eq!(r.json()["properties"]["desired"]["$version"], 2);
    assert_eq!(r.json()["version"].as_u64(), Some(version + 1));
    assert_ne!(r.json()["etag"], etag.as_str());
    let desired_meta = &r.json()["properties"]["desired"]["$metadata"];
    assert_eq!(desired_meta["$lastUpdatedVersion"], 2);
    assert!(desired_meta["cfg"]["a"]["$lastUpdated"].is_string());
    let etag2 = format!("\"{}\"", r.json()["etag"].as_str().expect("etag"));

    // Merge semantics: null deletes.
    let r = api
        .answer(
            Call::patch("/twins/d1")
                .json(&json!({"properties": {"desired": {"cfg": {"a": null}}}}))
                .header("If-Match", &etag2),
        )
        .await;
    assert_eq!(r.json()["properties"]["desired"]["cfg"], json!({"b": 2}));

    // PUT replaces tags and desired (reported and system keys sent back are ignored).
    let mut whole = r.json().clone();
    whole["tags"] = json!({"only": true});
    whole["properties"]["desired"] = json!({"x": 1, "$version": 99, "$metadata": {}});
    let r = api
        .answer(Call::put("/twins/d1").json(&whole).header("If-Match", "*"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tags"], json!({"only": true}));
    assert_eq!(r.json()["properties"]["desired"]["x"], 1);
    assert!(r.json()["properties"]["desired"].get("fw").is_none());
    assert_eq!(r.json()["properties"]["desired"]["$version"], 4);

    // The service cannot write reported properties; unknown device 404.
    api.patch("/twins/d1", &json!({"properties": {"reported": {"x": 1}}}))
        .await
        .expect_error(400, "ArgumentInvalid");
    api.patch("/twins/nosuch", &json!({"tags": {}}))
        .await
        .expect_error(404, "DeviceNotFound");
    hub.shutdown().await;
}

#[tokio::test]
async fn twin_limits_use_iot_hub_error_codes_and_apply_nothing() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("d1", Value::Null).await.expect("d1");
    let mut deep = json!("leaf");
    // The desired section is level 0; this nests objects 11 levels below it.
    for _ in 0..12 {
        deep = json!({ "n": deep });
    }
    let big_desired: serde_json::Map<String, Value> = (0..9)
        .map(|i| (format!("k{i}"), json!("v".repeat(4000))))
        .collect();
    let big_tags: serde_json::Map<String, Value> = (0..3)
        .map(|i| (format!("t{i}"), json!("v".repeat(3000))))
        .collect();
    for (what, body) in [
        ("depth", json!({"properties": {"desired": deep}})),
        (
            "key with a dot",
            json!({"properties": {"desired": {"a.b": 1}}}),
        ),
        ("key with a space", json!({"tags": {"a b": 1}})),
        ("$ key", json!({"properties": {"desired": {"$x": 1}}})),
        (
            "string > 4 KB",
            json!({"properties": {"desired": {"s": "x".repeat(4097)}}}),
        ),
        (
            "integer out of range",
            json!({"properties": {"desired": {"n": 9_007_199_254_740_993_u64}}}),
        ),
        (
            "desired > 32 KB",
            json!({"properties": {"desired": big_desired}}),
        ),
        ("tags > 8 KB", json!({"tags": big_tags})),
        ("not an object", json!({"properties": {"desired": [1, 2]}})),
    ] {
        let r = api.patch("/twins/d1", &body).await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert_eq!(
            r.header("iothub-errorcode"),
            Some("ArgumentInvalid"),
            "{what}"
        );
    }
    let twin = api.get("/twins/d1").await;
    assert_eq!(twin.json()["properties"]["desired"]["$version"], 1);
    assert_eq!(twin.json()["tags"], json!({}));
    hub.shutdown().await;
}

#[tokio::test]
async fn queries_page_with_continuation_tokens() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    for i in 0..7 {
        let env = if i % 2 == 0 { "prod" } else { "test" };
        hub.create_device(&format!("dev{i}"), json!({"env": env}))
            .await
            .expect("create");
    }
    let sql = "SELECT * FROM devices";
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let r = api.query(sql, Some(3), token.as_deref()).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-ms-item-type"), Some("twin"));
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
        );
        pages += 1;
        for item in r.json().as_array().expect("array") {
            seen.push(item["deviceId"].as_str().expect("id").to_owned());
        }
        match r.header("x-ms-continuation") {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..7).map(|i| format!("dev{i}")).collect::<Vec<_>>());

    // An exact multiple of the page size: no continuation on the last page.
    let r = api
        .query(
            "SELECT * FROM devices WHERE tags.env = 'test'",
            Some(3),
            None,
        )
        .await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(3));
    assert_eq!(r.header("x-ms-continuation"), None);

    // Aggregates come back raw.
    let r = api
        .query(
            "SELECT tags.env AS env, COUNT() AS n FROM devices GROUP BY tags.env",
            None,
            None,
        )
        .await;
    assert_eq!(r.header("x-ms-item-type"), Some("raw"));
    assert_eq!(
        r.json(),
        json!([{"env": "prod", "n": 4}, {"env": "test", "n": 3}])
    );

    // Errors: bad query, bad page size, a token from another query, garbage token.
    api.query("SELECT FROM", None, None)
        .await
        .expect_error(400, "ArgumentInvalid");
    api.query(sql, Some(0), None)
        .await
        .expect_error(400, "ArgumentInvalid");
    let first = api.query(sql, Some(3), None).await;
    let foreign = first.header("x-ms-continuation").expect("token").to_owned();
    api.query("SELECT deviceId FROM devices", Some(3), Some(&foreign))
        .await
        .expect_error(400, "ArgumentInvalid");
    api.query(sql, Some(3), Some("%%%"))
        .await
        .expect_error(400, "ArgumentInvalid");
    hub.shutdown().await;
}

/// Every page of `sql` at `page` items a page, as device ids (or the items' text when they
/// have none), and how many pages there were.
async fn page_through(api: &Rest, sql: &str, page: usize) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let r = api.query(sql, Some(page), token.as_deref()).await;
        assert_eq!(r.status, 200, "{r:?}");
        pages += 1;
        for item in r.json().as_array().expect("array") {
            seen.push(
                item["deviceId"]
                    .as_str()
                    .map_or_else(|| item.to_string(), str::to_owned),
            );
        }
        match r.header("x-ms-continuation") {
            Some(next) => token = Some(next.to_owned()),
            None => return (seen, pages),
        }
    }
}

#[tokio::test]
async fn paging_resumes_after_the_last_device_while_the_fleet_changes() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    for i in 0..7 {
        hub.create_device(&format!("dev{i}"), json!({"n": i}))
            .await
            .expect("create");
    }
    let sql = "SELECT deviceId FROM devices";
    let first = api.query(sql, Some(3), None).await;
    assert_eq!(
        first.json(),
        json!([{"deviceId": "dev0"}, {"deviceId": "dev1"}, {"deviceId": "dev2"}])
    );
    assert_eq!(first.header("x-ms-item-type"), Some("raw"));
    let token = first.header("x-ms-continuation").expect("more").to_owned();

    // Between pages: a device already returned goes, two sorting before the cursor and one
    // after it arrive. Paging by offset would now repeat dev2; paging by key neither repeats
    // nor skips an unchanged device.
    assert_eq!(api.delete("/devices/dev1").await.status, 204);
    hub.create_device("dev00", json!({})).await.expect("dev00");
    hub.create_device("dev01", json!({})).await.expect("dev01");
    hub.create_device("dev9", json!({})).await.expect("dev9");
    let mut seen = Vec::new();
    let mut next = Some(token);
    while let Some(token) = next {
        let r = api.query(sql, Some(3), Some(&token)).await;
        assert_eq!(r.status, 200, "{r:?}");
        seen.extend(
            r.json()
                .as_array()
                .expect("array")
                .iter()
                .map(|i| i["deviceId"].as_str().expect("id").to_owned()),
        );
        next = r.header("x-ms-continuation").map(str::to_owned);
    }
    assert_eq!(seen, ["dev3", "dev4", "dev5", "dev6", "dev9"]);

    // A condition that skips most twins; a page ends exactly on the last match.
    let (ids, pages) = page_through(&api, "SELECT * FROM devices WHERE tags.n >= 3", 2).await;
    assert_eq!(ids, ["dev3", "dev4", "dev5", "dev6"]);
    assert_eq!(pages, 2, "no empty third page");

    // TOP counts across pages.
    let (ids, pages) = page_through(&api, "SELECT TOP 5 * FROM devices", 2).await;
    assert_eq!(ids, ["dev0", "dev00", "dev01", "dev2", "dev3"]);
    assert_eq!(pages, 3);
    let (ids, _) = page_through(&api, "SELECT TOP 4 deviceId FROM devices", 2).await;
    assert_eq!(ids.len(), 4);

    // Aggregates page by offset over their (small) result.
    let (groups, pages) = page_through(
        &api,
        "SELECT tags.n AS n, COUNT() AS c FROM devices WHERE tags.n < 3 GROUP BY tags.n",
        1,
    )
    .await;
    assert_eq!(groups, [r#"{"n":0,"c":1}"#, r#"{"n":2,"c":1}"#]);
    assert_eq!(pages, 2);
    hub.shutdown().await;
}

#[tokio::test]
async fn malformed_oversized_and_versionless_requests() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("d1", Value::Null).await.expect("d1");

    // Malformed JSON: 400 IotHubFormatError.
    let r = api.answer(Call::patch("/twins/d1").bytes("{nope")).await;
    r.expect_error(400, "IotHubFormatError");

    // A body over the limit: 413 MessageTooLarge, and the hub keeps serving.
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let r = api.answer(Call::patch("/twins/d1").bytes(huge)).await;
    r.expect_error(413, "MessageTooLarge");
    assert_eq!(api.get("/twins/d1").await.status, 200);

    // No api-version: 400.
    let r = api
        .answer(Call::get("/twins/d1").without_api_version())
        .await;
    r.expect_error(400, "ArgumentInvalid");

    // Unknown endpoint: 404 with a JSON body; module twins are not supported.
    let r = api.get("/nowhere").await;
    assert_eq!(r.status, 404);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    api.get("/twins/d1/modules/m1")
        .await
        .expect_error(404, "ModuleNotFound");
    hub.shutdown().await;
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after() {
    let config = HubConfig {
        throttle: ThrottleConfig::none()
            .with(Operation::Registry, Rate::per_minute(2.0))
            .with(Operation::TwinReads, Rate::per_second(1.0)),
        ..HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    let api = Rest::of(&hub);
    assert_eq!(api.put("/devices/a", &json!({})).await.status, 200);
    assert_eq!(api.put("/devices/b", &json!({})).await.status, 200);
    let r = api.put("/devices/c", &json!({})).await;
    r.expect_error(429, "ThrottlingException");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(api.get("/twins/a").await.status, 200);
    api.get("/twins/a")
        .await
        .expect_error(429, "ThrottlingException");
    // Other classes are not throttled.
    assert_eq!(
        api.query("SELECT * FROM devices", None, None).await.status,
        200
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn https_with_the_generated_ca() {
    let hub = crate::common::start().await;
    let ca = reqwest::Certificate::from_pem(hub.ca_pem().expect("ca").as_bytes()).expect("pem");
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("client");
    let url = format!(
        "{}/devices?api-version=2021-04-12",
        hub.https_url().expect("https")
    );
    let r = client
        .get(&url)
        .header(
            "Authorization",
            Rest::of(&hub).service_token().expect("token"),
        )
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    // The service connection string names the non-default HTTPS port (Python honours it).
    let port = hub.https_addr().expect("https").port();
    assert!(
        hub.service_connection_string()
            .starts_with(&format!("HostName=localhost:{port};"))
    );
    // An untrusting client fails the handshake.
    let strict = reqwest::Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .expect("client");
    assert!(strict.get(&url).send().await.is_err());
    hub.shutdown().await;
}

#[tokio::test]
async fn a_user_supplied_certificate_is_served() {
    casement_tests::init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["hub.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let config = HubConfig {
        hostname: "hub.test".into(),
        tls: casement_hub::TlsSource::Files {
            cert: cert_path.clone(),
            key: key_path,
        },
        ..HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    assert!(
        hub.ca_pem().is_none(),
        "no generated CA with a supplied certificate"
    );
    assert_eq!(hub.cert_path(), Some(cert_path.as_path()));
    let trusted = reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("pem");
    let addr = hub.https_addr().expect("https");
    let client = reqwest::Client::builder()
        .tls_certs_only([trusted])
        .resolve("hub.test", addr)
        .build()
        .expect("client");
    let r = client
        .get(format!(
            "https://hub.test:{}/devices?api-version=2021-04-12",
            addr.port()
        ))
        .header(
            "Authorization",
            Rest::for_policy(&hub, "registryRead")
                .service_token()
                .expect("token"),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    // SAS tokens name the configured host.
    assert!(
        hub.service_connection_string()
            .starts_with(&format!("HostName=hub.test:{};", addr.port()))
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_is_a_clear_start_up_error() {
    casement_tests::init_tracing();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let config = HubConfig {
        http: Some(taken.local_addr().expect("addr")),
        ..HubConfig::for_tests()
    };
    let err = casement_hub::Hub::start(config)
        .await
        .expect_err("port in use");
    let msg = err.to_string();
    assert!(
        msg.contains("already in use") && msg.contains("--http-addr") && msg.contains("--no-http"),
        "{msg}"
    );
}
