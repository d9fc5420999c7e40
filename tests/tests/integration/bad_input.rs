//! Invalid input across the whole surface (DESIGN.md invariants 5 and 6): each case asserts the
//! documented error *and* that the system still works afterwards — a well-behaved client right
//! after it succeeds, and nothing was half-applied.
//!
//! Random inputs are seeded (`CASEMENT_SEED` to replay); the seed is printed, and printed again
//! with a replay command when a test fails. Every test also checks that nothing panicked
//! anywhere in the process (a hub task that panics is caught by tokio and would otherwise go
//! unnoticed).

use std::time::Duration;

use crate::common::{Fixture, GUARD, assert_no_panics, short};
use casement_tests::mqtt::{Credentials, RawMqtt, RawMqttError};
use casement_tests::rest::{Auth, Call};
use casement_tests::seed::Seed;
use rand::Rng;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Login, Packet, Publish};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// REST bodies, sizes and queries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_twin_patches_get_400_and_change_nothing() {
    let f = Fixture::start().await;
    let before = f.rest.twin("dev1").await.expect("twin").json();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated JSON",
            br#"{"properties": {"desired": {"a": 1"#.to_vec(),
        ),
        ("not JSON", b"desired=1".to_vec()),
        ("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}']),
        ("empty body", Vec::new()),
        (
            "desired is a number",
            br#"{"properties": {"desired": 5}}"#.to_vec(),
        ),
        ("tags is an array", br#"{"tags": [1, 2]}"#.to_vec()),
    ];
    for (what, body) in cases {
        let answer = f
            .rest
            .answer(
                Call::patch("/twins/dev1")
                    .bytes(body)
                    .header("content-type", "application/json")
                    .header("if-match", "*"),
            )
            .await;
        assert_eq!(answer.status, 400, "{what}: {}", short(&answer.text()));
        let code = answer.header("iothub-errorcode").unwrap_or_default();
        assert!(
            code == "IotHubFormatError" || code == "ArgumentInvalid",
            "{what}: error code {code:?}: {}",
            short(&answer.text())
        );
        assert!(
            answer.is_error(400, code),
            "{what}: {}",
            short(&answer.text())
        );
    }

    let limits: Vec<(&str, Value, &str)> = vec![
        (
            "a key with a dot",
            json!({"properties": {"desired": {"a.b": 1}}}),
            "a.b",
        ),
        (
            "a key with a dollar",
            json!({"properties": {"desired": {"$evil": 1}}}),
            "$evil",
        ),
        (
            "a key with a space",
            json!({"properties": {"desired": {"a b": 1}}}),
            "a b",
        ),
        (
            "nesting deeper than 10",
            json!({"properties": {"desired": nested(12)}}),
            "deeper than 10",
        ),
        (
            "a string over 4 KB",
            json!({"properties": {"desired": {"s": "x".repeat(5000)}}}),
            "s",
        ),
        (
            "desired over 32 KB",
            json!({"properties": {"desired": big_object(40)}}),
            "32",
        ),
        (
            "an integer out of range",
            json!({"properties": {"desired": {"n": 9_007_199_254_740_993u64}}}),
            "n",
        ),
    ];
    for (what, body, mention) in limits {
        let answer = f
            .rest
            .answer(
                Call::patch("/twins/dev1")
                    .json(&body)
                    .header("if-match", "*"),
            )
            .await;
        assert!(
            answer.is_error(400, "ArgumentInvalid"),
            "{what}: {}",
            short(&answer.text())
        );
        assert!(
            answer.message().contains(mention),
            "{what}: the message should name {mention:?}: {}",
            answer.message()
        );
    }

    // Nothing was half-applied: the twin is as it was, versions included.
    let after = f.rest.twin("dev1").await.expect("twin").json();
    assert_eq!(
        after["properties"]["desired"],
        before["properties"]["desired"]
    );
    assert_eq!(after["tags"], before["tags"]);
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["etag"], before["etag"]);

    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn json_arrays_are_not_accepted_for_objects() {
    // serde's derived structs also accept the positional array form; IoT Hub's bodies are
    // objects, so `[{"tags": …}]` must not be read as a patch of tags.
    let f = Fixture::start().await;
    let before = f.rest.twin("dev1").await.expect("twin").json();
    for (what, call) in [
        (
            "a twin patch",
            Call::patch("/twins/dev1")
                .json(&json!([{"x": 1}, {"desired": {"y": 2}}]))
                .header("if-match", "*"),
        ),
        (
            "a twin replacement",
            Call::put("/twins/dev1")
                .json(&json!([{"x": 1}]))
                .header("if-match", "*"),
        ),
        (
            "a query",
            Call::post("/devices/query").json(&json!(["SELECT * FROM devices"])),
        ),
        (
            "a method call",
            Call::post("/twins/dev1/methods").json(&json!(["reboot", null, 30])),
        ),
        (
            "a device",
            Call::put("/devices/dev3").json(&json!(["dev3"])),
        ),
    ] {
        let answer = f.rest.answer(call).await;
        assert_eq!(answer.status, 400, "{what}: {}", short(&answer.text()));
        assert!(answer.header("iothub-errorcode").is_some(), "{what}");
    }
    let after = f.rest.twin("dev1").await.expect("twin").json();
    assert_eq!(after["tags"], before["tags"]);
    assert_eq!(
        after["properties"]["desired"],
        before["properties"]["desired"]
    );
    let dev3 = f.rest.answer(Call::get("/devices/dev3")).await;
    assert_eq!(dev3.status, 404, "{}", short(&dev3.text()));
    f.assert_still_works().await;
    assert_no_panics();
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, i| json!({ format!("l{i}"): inner }))
}

fn big_object(kib: usize) -> Value {
    let mut map = serde_json::Map::new();
    for i in 0..kib {
        map.insert(format!("k{i}"), Value::String("v".repeat(1000)));
    }
    Value::Object(map)
}

#[tokio::test]
async fn huge_bodies_get_413_without_being_read_whole() {
    let f = Fixture::start().await;
    // Twice the hub's limit, on every endpoint that takes a body.
    let huge = vec![b' '; 1024 * 1024];
    for call in [
        Call::patch("/twins/dev1").header("if-match", "*"),
        Call::put("/twins/dev1").header("if-match", "*"),
        Call::post("/devices/query"),
        Call::post("/twins/dev1/methods"),
        Call::put("/devices/newdev"),
    ] {
        let answer = f
            .rest
            .answer(
                call.bytes(huge.clone())
                    .header("content-type", "application/json"),
            )
            .await;
        assert!(
            answer.is_error(413, "MessageTooLarge"),
            "{}",
            short(&answer.text())
        );
    }
    // The device the oversized PUT named was not created.
    let missing = f.rest.answer(Call::get("/devices/newdev")).await;
    assert!(
        missing.is_error(404, "DeviceNotFound"),
        "{}",
        missing.text()
    );
    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn bad_queries_get_400_with_the_column_at_fault() {
    let f = Fixture::start().await;
    let cases: &[(&str, usize)] = &[
        ("SELECT * FROM devices WHERE", 28),
        ("SELECT * FROM devices WHERE tags.x = ", 38),
        ("SELECT * FROM nowhere", 15),
        ("SELECT * FROM devices WHERE tags.x = 'unterminated", 38),
        ("SELECT * FROM devices WHERE tags.x IN [1, 2", 44),
        ("SELEC * FROM devices", 1),
        ("SELECT * FROM devices WHERE tags.x == 1", 37),
        ("SELECT TOP -1 * FROM devices", 12),
    ];
    for (query, column) in cases {
        let answer = f
            .rest
            .answer(Call::post("/devices/query").json(&json!({ "query": query })))
            .await;
        assert!(
            answer.is_error(400, "ArgumentInvalid"),
            "{query}: {}",
            short(&answer.text())
        );
        let message = answer.message();
        assert!(
            message.contains(&format!("column {column}")),
            "{query}: expected column {column} in {message:?}"
        );
    }

    // Not a query at all.
    for body in [
        json!({}),
        json!({"query": 5}),
        json!("SELECT * FROM devices"),
    ] {
        let answer = f
            .rest
            .answer(Call::post("/devices/query").json(&body))
            .await;
        assert_eq!(answer.status, 400, "{body}: {}", short(&answer.text()));
    }

    // Longer than IoT Hub's 8192 characters.
    let long = format!(
        "SELECT * FROM devices WHERE {}",
        vec!["tags.a = 1"; 1000].join(" OR ")
    );
    let answer = f
        .rest
        .answer(Call::post("/devices/query").json(&json!({ "query": long })))
        .await;
    assert!(
        answer.is_error(400, "ArgumentInvalid"),
        "{}",
        short(&answer.text())
    );
    assert!(answer.message().contains("8192"), "{}", answer.message());

    // Paging headers that make no sense.
    for (name, value) in [
        ("x-ms-max-item-count", "-1"),
        ("x-ms-max-item-count", "lots"),
        ("x-ms-continuation", "not-a-token"),
    ] {
        let answer = f
            .rest
            .answer(
                Call::post("/devices/query")
                    .json(&json!({"query": "SELECT * FROM devices"}))
                    .header(name, value),
            )
            .await;
        assert_eq!(
            answer.status,
            400,
            "{name}: {value}: {}",
            short(&answer.text())
        );
        assert!(
            answer.header("iothub-errorcode").is_some(),
            "{}",
            short(&answer.text())
        );
    }
    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn random_queries_never_crash_the_hub_and_errors_name_a_column() {
    let seed = Seed::from_env_or_random();
    let _replay = seed.replay_hint("integration", "random_queries_never_crash_the_hub");
    let mut rng = seed.rng("queries");
    let f = Fixture::start().await;
    const PIECES: &[&str] = &[
        "SELECT",
        "*",
        "FROM",
        "devices",
        "WHERE",
        "tags.x",
        "=",
        "'a'",
        "(",
        ")",
        "AND",
        "OR",
        "NOT",
        "IN",
        "[",
        "]",
        ",",
        "1",
        "0x1F",
        "-",
        "IS_DEFINED(",
        "GROUP BY",
        "COUNT()",
        "TOP",
        "AS",
        "\"",
        "'",
        ".",
        "properties.reported.a",
        "<>",
        ">=",
        "null",
        "\\u00e9",
        "devices.modules",
        "%",
        "/",
        "undefined",
    ];
    for _ in 0..200 {
        let n = rng.random_range(1..12);
        let mut query: Vec<&str> = Vec::with_capacity(n + 3);
        if rng.random_bool(0.7) {
            query.extend(["SELECT", "*", "FROM", "devices"]);
        }
        for _ in 0..n {
            query.push(PIECES[rng.random_range(0..PIECES.len())]);
        }
        let query = query.join(" ");
        let answer = f
            .rest
            .answer(Call::post("/devices/query").json(&json!({ "query": query })))
            .await;
        match answer.status {
            200 => assert!(
                answer.json().is_array(),
                "{query}: {}",
                short(&answer.text())
            ),
            400 => assert!(
                answer.message().contains("column "),
                "{query}: the error should name a column: {}",
                answer.message()
            ),
            other => panic!("{query}: unexpected {other}: {}", short(&answer.text())),
        }
    }
    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn bad_requests_elsewhere_get_documented_errors() {
    let f = Fixture::start().await;
    // No api-version.
    let answer = f
        .rest
        .answer(Call::get("/twins/dev1").without_api_version())
        .await;
    assert!(
        answer.is_error(400, "ArgumentInvalid"),
        "{}",
        short(&answer.text())
    );
    assert!(
        answer.message().contains("api-version"),
        "{}",
        answer.message()
    );

    // Device ids IoT Hub does not allow.
    for id in ["a%20b", &"x".repeat(129), "slash%2Fid", "%00"] {
        let answer = f
            .rest
            .answer(Call::put(format!("/devices/{id}")).json(&json!({"deviceId": id})))
            .await;
        assert_eq!(answer.status, 400, "{id}: {}", short(&answer.text()));
    }

    // Method invocations outside IoT Hub's limits.
    for body in [
        json!({"methodName": "reboot", "responseTimeoutInSeconds": 1}),
        json!({"methodName": "reboot", "responseTimeoutInSeconds": 301}),
        json!({"methodName": "reboot", "connectTimeoutInSeconds": 301}),
        json!({"methodName": ""}),
        json!({"payload": 1}),
    ] {
        let answer = f
            .rest
            .answer(Call::post("/twins/dev1/methods").json(&body))
            .await;
        assert_eq!(answer.status, 400, "{body}: {}", short(&answer.text()));
        assert!(answer.header("iothub-errorcode").is_some());
    }
    // A payload over IoT Hub's 128 KB.
    let answer = f
        .rest
        .answer(
            Call::post("/twins/dev1/methods")
                .json(&json!({"methodName": "reboot", "payload": "x".repeat(130 * 1024)})),
        )
        .await;
    assert!(
        answer.is_error(413, "MessageTooLarge"),
        "{}",
        short(&answer.text())
    );

    // Unknown endpoints and devices.
    let answer = f.rest.answer(Call::get("/nothing/here")).await;
    assert_eq!(answer.status, 404, "{}", short(&answer.text()));
    let answer = f.rest.twin("nosuch").await.expect("answer");
    assert!(
        answer.is_error(404, "DeviceNotFound"),
        "{}",
        short(&answer.text())
    );
    f.assert_still_works().await;
    assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// SAS tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expired_forged_and_misdirected_service_tokens_are_refused() {
    let f = Fixture::start().await;
    let owner = f.hub.owner().expect("owner");
    let now = crate::common::unix_now();
    let other_key = "c29tZS1vdGhlci1rZXktdGhhdC1pcy1ub3QtdGhlLWh1YnM=";
    let tokens: Vec<(&str, String)> = vec![
        (
            "expired an hour ago",
            owner.sas_token(now - 3600).expect("sign"),
        ),
        (
            "signed with another key",
            casement_iothub::sas::service_token("localhost", "iothubowner", other_key, now + 3600)
                .expect("sign"),
        ),
        ("expiry extended after signing", {
            let token = owner.sas_token(now + 60).expect("sign");
            token.replace(&format!("se={}", now + 60), &format!("se={}", now + 86_400))
        }),
        (
            "for another hub",
            casement_iothub::sas::service_token(
                "other.azure-devices.net",
                "iothubowner",
                &owner.shared_access_key,
                now + 3600,
            )
            .expect("sign"),
        ),
        (
            "naming a policy that does not exist",
            casement_iothub::sas::service_token(
                "localhost",
                "nosuchpolicy",
                &owner.shared_access_key,
                now + 3600,
            )
            .expect("sign"),
        ),
        ("garbage", "SharedAccessSignature sr=&sig=&se=".to_owned()),
        ("not a SAS at all", "Bearer abc.def.ghi".to_owned()),
    ];
    for (what, token) in tokens {
        for call in [
            Call::get("/twins/dev1"),
            Call::post("/devices/query").json(&json!({"query": "SELECT * FROM devices"})),
        ] {
            let answer = f.rest.answer(call.auth(Auth::Header(token.clone()))).await;
            assert!(
                answer.is_error(401, "IotHubUnauthorizedAccess"),
                "{what}: {}",
                short(&answer.text())
            );
            assert!(
                !short(&answer.text()).contains(&owner.shared_access_key),
                "an error must never echo a key"
            );
        }
    }
    let answer = f
        .rest
        .answer(Call::get("/twins/dev1").auth(Auth::None))
        .await;
    assert!(
        answer.is_error(401, "IotHubUnauthorizedAccess"),
        "{}",
        short(&answer.text())
    );

    // A policy without the permission: registryRead may not write twins.
    let read_only = f
        .hub
        .policy_connection("registryRead")
        .expect("registryRead");
    let token = read_only.sas_token(now + 3600).expect("sign");
    let answer = f
        .rest
        .answer(
            Call::patch("/twins/dev1")
                .json(&json!({"properties": {"desired": {"x": 1}}}))
                .header("if-match", "*")
                .auth(Auth::Header(token)),
        )
        .await;
    assert_eq!(answer.status, 401, "{}", short(&answer.text()));
    assert!(answer.header("iothub-errorcode").is_some());

    // A device's own key does not open the service API, not even for its own twin.
    let device_token = f.device_password("dev1", now + 3600);
    let answer = f
        .rest
        .answer(Call::get("/twins/dev1").auth(Auth::Header(device_token)))
        .await;
    assert_eq!(answer.status, 401, "{}", short(&answer.text()));

    let twin = f.rest.twin("dev1").await.expect("twin").json();
    assert!(
        twin["properties"]["desired"].get("x").is_none(),
        "nothing was written"
    );
    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn expired_forged_and_cross_device_tokens_cannot_connect_over_mqtt() {
    let f = Fixture::start().await;
    let now = crate::common::unix_now();
    let dev1 = f.device_cs("dev1");
    let dev2 = f.device_cs("dev2");

    let mut cases: Vec<(&str, Credentials)> = Vec::new();
    cases.push((
        "expired",
        Credentials::for_device(&dev1, now - 3600).expect("sign"),
    ));
    let mut forged = Credentials::for_device(&dev1, now + 3600).expect("sign");
    forged.password = casement_iothub::sas::device_token(
        "localhost",
        "dev1",
        None,
        "Zm9yZ2VkLWtleS1mb3JnZWQta2V5LWZvcmdlZC1rZXk=",
        now + 3600,
    )
    .expect("sign");
    cases.push(("signed with another key", forged));
    // dev1's genuine token, presented as dev2.
    let mut cross = Credentials::for_device(&dev2, now + 3600).expect("sign");
    cross.password = Credentials::for_device(&dev1, now + 3600)
        .expect("sign")
        .password;
    cases.push(("dev1's token for dev2", cross));
    // dev1's genuine credentials with dev2's client id.
    let mut other_id = Credentials::for_device(&dev1, now + 3600).expect("sign");
    other_id.client_id = "dev2".into();
    cases.push(("dev1's credentials under dev2's client id", other_id));
    let mut no_password = Credentials::for_device(&dev1, now + 3600).expect("sign");
    no_password.password = String::new();
    cases.push(("no password", no_password));
    let mut garbage = Credentials::for_device(&dev1, now + 3600).expect("sign");
    garbage.password = "SharedAccessSignature sig=%%%".into();
    cases.push(("a garbage token", garbage));

    for (what, credentials) in cases {
        let (mut mqtt, code) = RawMqtt::connect(f.mqtt, &credentials, GUARD)
            .await
            .unwrap_or_else(|e| panic!("{what}: expected a CONNACK, got {e}"));
        assert!(
            matches!(
                code,
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
            ),
            "{what}: {code:?}"
        );
        assert!(
            mqtt.closed_by_hub(GUARD).await,
            "{what}: the hub closes after refusing"
        );
    }

    // dev2 was never connected, and its twin is untouched.
    let twin = f.rest.twin("dev2").await.expect("twin").json();
    assert_eq!(twin["connectionState"], "Disconnected");
    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn a_device_cannot_touch_another_devices_twin_or_methods() {
    let f = Fixture::start().await;
    let mut dev1 = f.connect_device("dev1").await;
    // Topics naming another device are outside dev1's documented topics: the hub closes the
    // connection rather than answering (IoT Hub's MQTT behaviour).
    dev1.try_publish("devices/dev2/messages/events/", b"{}")
        .await
        .expect("publish");
    assert!(dev1.closed_by_hub(GUARD).await);

    let mut dev1 = f.connect_device("dev1").await;
    let refused = dev1
        .try_subscribe(
            &[("devices/dev2/messages/devicebound/#", QoS::AtLeastOnce)],
            GUARD,
        )
        .await;
    // Either a SUBACK with a failure code or a closed connection; never dev2's messages.
    if refused.is_ok() {
        let next = dev1.next(Duration::from_millis(200)).await;
        assert!(
            !matches!(next, Ok(Packet::Publish(_))),
            "dev1 received something for dev2: {next:?}"
        );
    }
    f.assert_still_works().await;
    assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// MQTT bytes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn random_bytes_on_the_mqtt_port_close_only_that_connection() {
    let seed = Seed::from_env_or_random();
    let _replay = seed.replay_hint("integration", "random_bytes_on_the_mqtt_port");
    let mut rng = seed.rng("mqtt-garbage");
    let f = Fixture::start().await;
    // A well-behaved device stays connected through all of it.
    let mut bystander = f.connect_device("dev2").await;
    bystander
        .try_subscribe(&[("$iothub/twin/res/#", QoS::AtLeastOnce)], GUARD)
        .await
        .expect("subscribe");

    for round in 0..100 {
        let len = rng.random_range(1..4096);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        if round % 3 == 0 {
            // A plausible first byte (a CONNECT header) with garbage after it.
            bytes[0] = 0x10;
        }
        let mut raw = RawMqtt::open(f.mqtt).await.expect("open");
        // The hub may close before everything is written; that is fine.
        let _ = raw.send_bytes(&bytes).await;
        // Mostly the stream then ends (the hub must notice at once); every tenth connection
        // stalls instead, and the hub's CONNECT timeout must end it.
        if round % 10 != 0 {
            let _ = raw.finish_writing().await;
        }
        let outcome = raw.next(GUARD).await;
        assert!(
            matches!(
                outcome,
                Err(RawMqttError::Closed | RawMqttError::Io(_)) | Ok(Packet::ConnAck(_))
            ),
            "round {round}: {outcome:?}"
        );
        if let Ok(Packet::ConnAck(ack)) = outcome {
            assert_ne!(
                ack.code,
                ConnectReturnCode::Success,
                "round {round}: garbage was let in"
            );
        }
    }

    // Garbage after a successful CONNECT closes that session too: a whole packet of the
    // reserved type 15 at once, random bytes as soon as the stream ends inside them.
    for round in 0..20 {
        let mut dev = f.connect_device("dev1").await;
        let len = rng.random_range(1..120u8);
        let mut bytes = vec![0u8; usize::from(len) + 2];
        rng.fill(&mut bytes[..]);
        let _ = if round % 2 == 0 {
            bytes[0] = 0xF0;
            bytes[1] = len;
            dev.send_bytes(&bytes).await
        } else {
            let _ = dev.send_bytes(&bytes).await;
            dev.finish_writing().await
        };
        assert!(
            dev.closed_by_hub(GUARD).await,
            "round {round}: {bytes:02x?}"
        );
    }

    let (topic, _) = bystander
        .twin_request("$iothub/twin/GET/?$rid=still-here", b" ", GUARD)
        .await
        .expect("the bystander is still served");
    assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn truncated_and_oversized_packets_are_handled() {
    let f = Fixture::start().await;
    let credentials =
        Credentials::for_device(&f.device_cs("dev1"), crate::common::unix_now() + 3600)
            .expect("sign");
    let mut connect = Connect::new(credentials.client_id.clone());
    connect.clean_session = false;
    connect.keep_alive = 60;
    connect.login = Some(Login::new(
        credentials.username.clone(),
        credentials.password.clone(),
    ));
    let connect = casement_tests::mqtt::encode(&Packet::Connect(connect)).expect("encode");

    // Every prefix of a valid CONNECT, then the client hangs up: the hub forgets it.
    for cut in (1..connect.len()).step_by(7) {
        let mut raw = RawMqtt::open(f.mqtt).await.expect("open");
        raw.send_bytes(&connect[..cut]).await.expect("send");
        drop(raw);
    }
    // A prefix, then silence: the hub closes after its CONNECT timeout (2 s in the fixture).
    let mut stalled = RawMqtt::open(f.mqtt).await.expect("open");
    stalled
        .send_bytes(&connect[..connect.len() / 2])
        .await
        .expect("send");
    assert!(
        stalled.closed_by_hub(GUARD).await,
        "a half CONNECT is not kept open"
    );
    // A connection that never says anything: closed the same way.
    let mut silent = RawMqtt::open(f.mqtt).await.expect("open");
    assert!(silent.closed_by_hub(GUARD).await);

    // A remaining length of ~256 MiB: refused before the hub reads (or buffers) it.
    let mut huge = RawMqtt::open(f.mqtt).await.expect("open");
    huge.send_bytes(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F])
        .await
        .expect("send");
    assert!(huge.closed_by_hub(GUARD).await);
    // A remaining length that never terminates (more than 4 length bytes).
    let mut endless = RawMqtt::open(f.mqtt).await.expect("open");
    endless
        .send_bytes(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
        .await
        .expect("send");
    assert!(endless.closed_by_hub(GUARD).await);

    // A truncated PUBLISH from a connected device, then a clean close: the session ends, the
    // device can come back.
    let mut dev = f.connect_device("dev1").await;
    let publish = casement_tests::mqtt::encode(&Packet::Publish(Publish::new(
        "$iothub/twin/PATCH/properties/reported/?$rid=1",
        QoS::AtMostOnce,
        br#"{"a": 1}"#.to_vec(),
    )))
    .expect("encode");
    dev.send_bytes(&publish[..publish.len() - 4])
        .await
        .expect("send");
    drop(dev);
    f.assert_still_works().await;
    assert_no_panics();
}

#[tokio::test]
async fn protocol_violations_close_the_connection_and_bad_reports_get_400() {
    let f = Fixture::start().await;

    // A PUBLISH before CONNECT.
    let mut raw = RawMqtt::open(f.mqtt).await.expect("open");
    raw.try_publish("$iothub/twin/GET/?$rid=1", b" ")
        .await
        .expect("send");
    assert!(raw.closed_by_hub(GUARD).await);

    // A second CONNECT on a session.
    let mut dev = f.connect_device("dev1").await;
    let again = Connect::new("dev1");
    dev.send(&Packet::Connect(again)).await.expect("send");
    assert!(dev.closed_by_hub(GUARD).await);

    // A QoS 2 PUBLISH.
    let mut dev = f.connect_device("dev1").await;
    let mut qos2 = Publish::new(
        "devices/dev1/messages/events/",
        QoS::ExactlyOnce,
        b"x".to_vec(),
    );
    qos2.pkid = 7;
    dev.send(&Packet::Publish(qos2)).await.expect("send");
    assert!(dev.closed_by_hub(GUARD).await);

    // A topic IoT Hub does not have.
    let mut dev = f.connect_device("dev1").await;
    dev.try_publish("anything/at/all", b"x")
        .await
        .expect("send");
    assert!(dev.closed_by_hub(GUARD).await);

    // Malformed reported patches are answered 400 with an error body; the session survives.
    let mut dev = f.connect_device("dev1").await;
    dev.try_subscribe(&[("$iothub/twin/res/#", QoS::AtLeastOnce)], GUARD)
        .await
        .expect("subscribe");
    for (rid, body) in [
        ("r1", b"{not json".to_vec()),
        ("r2", b"[1,2,3]".to_vec()),
        ("r3", vec![0xff, 0x00]),
        ("r4", json!({"a.b": 1}).to_string().into_bytes()),
        ("r5", json!(nested(12)).to_string().into_bytes()),
    ] {
        let (topic, body) = dev
            .twin_request(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                &body,
                GUARD,
            )
            .await
            .expect("a twin response");
        assert!(
            topic.starts_with("$iothub/twin/res/400/") && topic.contains(&format!("$rid={rid}")),
            "{rid}: {topic}"
        );
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert!(body.get("errorCode").is_some(), "{rid}: {body}");
        assert!(
            body.get("message").and_then(Value::as_str).is_some(),
            "{rid}: {body}"
        );
    }
    let (topic, _) = dev
        .twin_request(
            "$iothub/twin/PATCH/properties/reported/?$rid=ok",
            br#"{"fine": true}"#,
            GUARD,
        )
        .await
        .expect("a twin response");
    assert!(topic.starts_with("$iothub/twin/res/204/"), "{topic}");
    let twin = f.rest.twin("dev1").await.expect("twin").json();
    assert_eq!(twin["properties"]["reported"]["fine"], true);
    assert!(twin["properties"]["reported"].get("a.b").is_none());
    f.assert_still_works().await;
    assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// Policy files, through the `casement` command line (its library entry point: the same parsing,
// dispatch, output and exit codes as the binary)
// ---------------------------------------------------------------------------------------------

mod policy_files {
    use std::path::{Path, PathBuf};

    use casement::cli::{Cli, run_with};
    use casement_tests::seed::Seed;
    use clap::Parser;
    use rand::Rng;
    use serde_json::Value;

    use crate::common::{Fixture, short};

    const VALID: &str = r#"[policy]
name   = "gateways"
target = "tags.role = 'gateway'"

[window]
schedule = "0 2 * * SUN"
duration = "2h"
timezone = "device"

[reboot]
expected_duration = "10m"

[rollout]
max_concurrent = 5
"#;

    struct Run {
        code: u8,
        stdout: String,
        stderr: String,
    }

    /// Runs `casement <args>` as the binary would, capturing its output.
    fn casement(args: &[&str]) -> Run {
        let cli = Cli::try_parse_from(std::iter::once("casement").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(cli, &mut out, &mut err).unwrap_or_else(|e| {
            err.extend_from_slice(format!("error: {e:#}").as_bytes());
            casement::cli::EXIT_INPUT
        });
        Run {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        }
    }

    /// A directory holding a valid policy and `bad.toml`.
    fn with_bad_file(bad: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("good.toml"), VALID).expect("write");
        let bad_path = dir.path().join("bad.toml");
        std::fs::write(&bad_path, bad).expect("write");
        (dir, bad_path)
    }

    /// The diagnostics about `file` in `stderr`: (line, column, rest); whole-file errors have
    /// line and column 0.
    fn diagnostics(stderr: &str, file: &Path) -> Vec<(u32, u32, String)> {
        let prefix = format!("{}", file.display());
        stderr
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|rest| {
                let mut parts = rest.splitn(4, ':');
                let _ = parts.next(); // empty: the text right after the path
                let line_no = parts.next().and_then(|l| l.parse().ok());
                let column = parts.next().and_then(|c| c.parse().ok());
                match (line_no, column) {
                    (Some(l), Some(c)) => (l, c, parts.next().unwrap_or("").trim().to_owned()),
                    _ => (0, 0, rest.trim_start_matches(':').trim().to_owned()),
                }
            })
            .collect()
    }

    /// Corrupt and hostile files: each rejected with exit code 2 and a diagnostic at the right
    /// place, nothing accepted from the valid file beside it.
    #[test]
    fn invalid_policy_files_are_rejected_with_file_line_and_column() {
        crate::common::count_panics();
        let long_list = (0..60).map(|m| m.to_string()).collect::<Vec<_>>().join(",");
        let deep = format!("x = {}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let cases: Vec<(&str, String, (u32, u32), &str)> = vec![
            (
                "a truncated table header",
                VALID.replace("[window]", "[window"),
                (5, 8),
                "unclosed table",
            ),
            (
                "a missing quote",
                VALID.replace(r#"duration = "2h""#, r#"duration = "2h"#),
                (7, 15),
                "string",
            ),
            (
                "an unknown key",
                VALID.replace("timezone", "timezon"),
                (8, 1),
                "did you mean \"timezone\"",
            ),
            (
                "a bad cron field",
                VALID.replace("0 2 * * SUN", "0 25 * * SUN"),
                (6, 15),
                "hour field \"25\"",
            ),
            (
                "windows longer than the gap between starts",
                VALID.replace("0 2 * * SUN", &format!("{long_list},1 2 * * SUN")),
                (7, 12),
                "overlap",
            ),
            (
                "an unknown zone",
                VALID.replace(r#""device""#, r#""Europe/Amsterdm""#),
                (8, 12),
                "did you mean \"Europe/Amsterdam\"",
            ),
            (
                "a path as zone",
                VALID.replace(r#""device""#, r#""../../etc/localtime""#),
                (8, 12),
                "IANA",
            ),
            (
                "a path as name",
                VALID.replace(r#""gateways""#, r#""../../etc/passwd""#),
                (2, 10),
                "a-z, 0-9",
            ),
            (
                "a duration that overflows",
                VALID.replace(r#""2h""#, r#""99999999999999999999d""#),
                (7, 13),
                "too long",
            ),
            (
                "a negative limit",
                VALID.replace("max_concurrent = 5", "max_concurrent = -1"),
                (14, 18),
                "1 to 1000000",
            ),
            (
                "a limit that is not an integer",
                VALID.replace("max_concurrent = 5", "max_concurrent = 1e30"),
                (14, 18),
                "integer",
            ),
            // Column 23 is the second `=` inside the quoted query.
            (
                "a target that is not a query",
                VALID.replace("tags.role = 'gateway'", "tags.role = = 'gateway'"),
                (3, 23),
                "found '='",
            ),
            (
                "a type mismatch",
                VALID.replace(r#"duration = "2h""#, "duration = 7200"),
                (7, 12),
                "expected a string",
            ),
            (
                "a duplicate key",
                VALID.replace("[reboot]", "[reboot]\nexpected_duration = \"5m\""),
                (12, 1),
                "duplicate key",
            ),
            (
                "arrays nested ten thousand deep",
                format!("{VALID}\n{deep}\n"),
                (16, 85),
                "recursion",
            ),
        ];
        for (what, text, (line, column), mention) in cases {
            let (dir, bad) = with_bad_file(text.as_bytes());
            let run = casement(&["validate", &dir.path().display().to_string()]);
            assert_eq!(run.code, 2, "{what}: {}", short(&run.stderr));
            assert!(
                run.stdout.is_empty(),
                "{what}: nothing valid is listed: {}",
                run.stdout
            );
            let found = diagnostics(&run.stderr, &bad);
            assert!(
                !found.is_empty(),
                "{what}: no diagnostic for the file: {}",
                short(&run.stderr)
            );
            for (l, c, _) in &found {
                assert!(
                    *l > 0 && *c > 0,
                    "{what}: every problem has a line and column: {}",
                    short(&run.stderr)
                );
            }
            assert!(
                found.iter().any(|(l, c, _)| (*l, *c) == (line, column)),
                "{what}: expected {line}:{column} in {found:?}"
            );
            assert!(
                found
                    .iter()
                    .any(|(_, _, message)| message.contains(mention)),
                "{what}: the message should mention {mention:?}: {found:?}"
            );
            assert!(
                run.stderr.contains("nothing was accepted"),
                "{what}: {}",
                short(&run.stderr)
            );
        }
    }

    #[test]
    fn unreadable_and_oversized_files_are_named() {
        crate::common::count_panics();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "invalid UTF-8",
                [VALID.as_bytes(), &[0xff, 0xfe, b'\n']].concat(),
                "UTF-8",
            ),
            ("two megabytes", vec![b'#'; 2 * 1024 * 1024], "larger than"),
            ("NUL bytes", vec![0u8; 64], ""),
        ];
        for (what, bytes, mention) in cases {
            let (dir, bad) = with_bad_file(&bytes);
            let run = casement(&["validate", &dir.path().display().to_string()]);
            assert_eq!(run.code, 2, "{what}: {}", short(&run.stderr));
            let found = diagnostics(&run.stderr, &bad);
            assert!(
                found.iter().any(|(_, _, m)| m.contains(mention)),
                "{what}: {found:?}"
            );
        }
        // A device file where a policy file should be: refused, not read forever.
        #[cfg(unix)]
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let link = dir.path().join("zero.toml");
            std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
            let run = casement(&["validate", &link.display().to_string()]);
            assert_eq!(run.code, 2, "{}", short(&run.stderr));
            assert!(run.stderr.contains("larger than"), "{}", short(&run.stderr));
        }
        // A path that does not exist.
        let run = casement(&["validate", "/nonexistent/policies"]);
        assert_eq!(run.code, 2, "{}", short(&run.stderr));
        assert!(
            run.stderr.contains("/nonexistent/policies"),
            "{}",
            short(&run.stderr)
        );
    }

    #[test]
    fn randomly_damaged_policy_files_never_crash_and_always_say_where() {
        crate::common::count_panics();
        let seed = Seed::from_env_or_random();
        let _replay = seed.replay_hint("integration", "randomly_damaged_policy_files");
        let mut rng = seed.rng("policy-files");
        // The example policy files, in name order (so a seed replays the same rounds).
        let mut paths: Vec<PathBuf> = std::fs::read_dir(repo_policies())
            .expect("policies/")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        paths.sort();
        let examples: Vec<String> = paths
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read"))
            .collect();
        assert!(examples.len() >= 3);
        for round in 0..150 {
            let original = examples[round % examples.len()].as_bytes();
            let mut bytes = original.to_vec();
            match rng.random_range(0..3) {
                // Truncated anywhere.
                0 => bytes.truncate(rng.random_range(0..bytes.len())),
                // A few bytes replaced by printable noise.
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] = rng.random_range(b' '..=b'~');
                    }
                }
                // A line duplicated (duplicate keys, duplicate tables).
                _ => {
                    let lines: Vec<&[u8]> = original.split(|b| *b == b'\n').collect();
                    let i = rng.random_range(0..lines.len());
                    let mut out = Vec::new();
                    for (n, line) in lines.iter().enumerate() {
                        out.extend_from_slice(line);
                        out.push(b'\n');
                        if n == i {
                            out.extend_from_slice(line);
                            out.push(b'\n');
                        }
                    }
                    bytes = out;
                }
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("damaged.toml");
            std::fs::write(&path, &bytes).expect("write");
            let run = casement(&["validate", &path.display().to_string()]);
            let text = String::from_utf8_lossy(&bytes);
            match run.code {
                0 => {}
                2 => {
                    let found = diagnostics(&run.stderr, &path);
                    assert!(
                        !found.is_empty(),
                        "round {round}: {}\n--- file:\n{text}",
                        short(&run.stderr)
                    );
                    for (l, c, m) in &found {
                        assert!(
                            *l > 0 && *c > 0,
                            "round {round}: no position in {m:?}\n--- file:\n{text}"
                        );
                    }
                }
                other => panic!(
                    "round {round}: exit code {other}: {}\n--- file:\n{text}",
                    short(&run.stderr)
                ),
            }
        }
        crate::common::assert_no_panics();
    }

    fn repo_policies() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    /// `casement apply` with one invalid file among valid ones writes nothing; fixed, it
    /// applies, and the hub was fine all along.
    #[test]
    fn apply_is_all_or_nothing_and_works_after_invalid_files() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let f = runtime.block_on(Fixture::start());
        let hub = f.hub.owner().expect("owner").to_string();
        let endpoint = f.hub.http_url().expect("http");
        let (dir, bad) = with_bad_file(VALID.replace("0 2 * * SUN", "0 2 * * FUNDAY").as_bytes());
        let dir_arg = dir.path().display().to_string();
        let apply = |extra: &[&str]| {
            let mut args = vec![
                "apply",
                dir_arg.as_str(),
                "--hub",
                hub.as_str(),
                "--endpoint",
                endpoint.as_str(),
            ];
            args.extend_from_slice(extra);
            casement(&args)
        };

        let run = apply(&[]);
        assert_eq!(run.code, 2, "{}", short(&run.stderr));
        assert!(
            !diagnostics(&run.stderr, &bad).is_empty(),
            "{}",
            short(&run.stderr)
        );
        let desired = |id: &str| -> Value {
            runtime.block_on(f.rest.twin(id)).expect("twin").json()["properties"]["desired"].clone()
        };
        for id in ["dev1", "dev2"] {
            assert!(
                desired(id).get("maintenance").is_none(),
                "{id}: nothing half-applied"
            );
        }

        std::fs::remove_file(&bad).expect("remove");
        let run = apply(&[]);
        assert_eq!(
            run.code,
            0,
            "{}\n{}",
            short(&run.stdout),
            short(&run.stderr)
        );
        for id in ["dev1", "dev2"] {
            assert_eq!(desired(id)["maintenance"]["policy"], "gateways", "{id}");
        }
        runtime.block_on(f.assert_still_works());
        runtime.block_on(f.hub.shutdown());
        crate::common::assert_no_panics();
    }
}

// ---------------------------------------------------------------------------------------------
// Desired patches written straight into a twin, read by a real agent
// ---------------------------------------------------------------------------------------------

mod desired_patches {
    use std::sync::Arc;
    use std::time::Duration;

    use casement_agent::clock::DrivenClock;
    use casement_agent::config::{AgentConfig, Endpoint, RebootCommand};
    use casement_agent::{Agent, RebootHook, RunOutcome};
    use casement_iothub::connection_string::DeviceConnectionString;
    use casement_tests::hub::TestHub;
    use casement_tests::rest::{Call, Rest};
    use chrono::{TimeZone, Utc};
    use serde_json::{Value, json};

    use crate::common::{GUARD, short};

    const DEVICE: &str = "agent1";

    fn valid() -> Value {
        json!({"policy": "hourly", "revision": "aaaa1111",
               "window": {"schedule": "0 * * * *", "durationSeconds": 3000,
                          "timezone": "device", "blackout": []},
               "reboot": {"expectedDurationSeconds": 300}})
    }

    /// Makes `maintenance` exactly the desired value in one write: a merge patch from what the
    /// twin holds that also deletes (nulls) the keys `maintenance` lacks.
    async fn set_desired(rest: &Rest, maintenance: Value) {
        let twin = rest.twin(DEVICE).await.expect("twin").json();
        let current = twin["properties"]["desired"]["maintenance"].clone();
        let patch = merge_diff(&current, &maintenance);
        let set = rest
            .answer(
                Call::patch(format!("/twins/{DEVICE}"))
                    .json(&json!({"properties": {"desired": {"maintenance": patch}}}))
                    .header("if-match", "*"),
            )
            .await;
        assert_eq!(set.status, 200, "{}", short(&set.text()));
    }

    /// The JSON merge patch (RFC 7386) that turns `old` into `new`.
    fn merge_diff(old: &Value, new: &Value) -> Value {
        casement_iothub::twin::merge_diff(old, new).unwrap_or_else(|| json!({}))
    }

    /// Polls the twin until `pred` holds on `properties.reported.maintenance`.
    async fn wait_reported(rest: &Rest, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let wait = async {
            loop {
                let twin = rest.twin(DEVICE).await.expect("twin").json();
                let reported = twin["properties"]["reported"]["maintenance"].clone();
                if pred(&reported) {
                    return reported;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(GUARD, wait).await {
            Ok(reported) => reported,
            Err(_) => {
                let twin = rest.twin(DEVICE).await.expect("twin").json();
                panic!(
                    "{what}: never reported; the twin: {}",
                    twin["properties"]["reported"]
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_policies_are_rejected_and_the_previous_one_keeps_running() {
        crate::common::count_panics();
        let dir = tempfile::tempdir().expect("tempdir");
        // 10:05 UTC: the hourly window (10:00–10:50) is open.
        let driven = DrivenClock::new(Utc.with_ymd_and_hms(2026, 11, 29, 10, 5, 0).unwrap());
        let hub = TestHub::start_with(Some(Arc::new(driven.manual())), |_| {})
            .await
            .expect("hub");
        let cs = hub
            .hub()
            .create_device(DEVICE, json!({"role": "gateway"}))
            .await
            .expect("device");
        let mut cs: DeviceConnectionString = cs.parse().expect("device cs");
        cs.host_name = "localhost".into();
        let rest = Rest::new(&hub.http_url().expect("http"), hub.owner().expect("owner"))
            .expect("rest")
            .with_clock(Arc::new(driven.manual()));

        // The reboot command is local configuration: it leaves a marker.
        let marker = dir.path().join("rebooted-by-local-command");
        let pwned = dir.path().join("pwned");
        let command = RebootCommand::new(vec![
            "sh".into(),
            "-c".into(),
            format!("touch '{}'", marker.display()),
        ])
        .expect("command");
        let endpoint: Endpoint = format!("mqtt://{}", hub.mqtt_addr().expect("mqtt"))
            .parse()
            .expect("endpoint");
        let config = AgentConfig::new(
            cs,
            endpoint,
            dir.path().join("state"),
            chrono_tz::Europe::Amsterdam,
        );
        let agent = Agent::with_tls_config(config, None)
            .with_clock(driven.agent_clock())
            .with_reboot_hook(RebootHook::Command(command));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let agent_task = tokio::spawn(agent.run(async move {
            let _ = stop_rx.await;
        }));

        set_desired(&rest, valid()).await;
        let applied = wait_reported(&rest, "applied", |r| r["status"] == "applied").await;
        assert_eq!(applied["revision"], "aaaa1111");
        assert_eq!(applied["window"]["open"], true, "{applied}");
        let kept_window = applied["window"].clone();

        let mut bad: Vec<(&str, Value, &str)> = Vec::new();
        let mut with = |what, path: &[&str], value: Value, mention| {
            let mut m = valid();
            let mut at = &mut m;
            for key in &path[..path.len() - 1] {
                at = &mut at[*key];
            }
            match value {
                Value::Null => {
                    at.as_object_mut()
                        .expect("object")
                        .remove(path[path.len() - 1]);
                }
                value => at[path[path.len() - 1]] = value,
            }
            bad.push((what, m, mention));
        };
        with(
            "a bad cron minute",
            &["window", "schedule"],
            json!("61 * * * *"),
            "minute",
        );
        with(
            "an unknown zone",
            &["window", "timezone"],
            json!("Mars/Olympus_Mons"),
            "zone",
        );
        with(
            "a negative duration",
            &["window", "durationSeconds"],
            json!(-5),
            // The agent's message names the value but not the field (see the report).
            "-5",
        );
        with(
            "a zero duration",
            &["window", "durationSeconds"],
            json!(0),
            "duration",
        );
        with(
            "a window longer than its period",
            &["window", "durationSeconds"],
            json!(7200),
            "duration",
        );
        with("no revision", &["revision"], Value::Null, "revision");
        with(
            "a revision that is not hex",
            &["revision"],
            json!("; rm -rf /"),
            "revision",
        );
        with(
            "a window that is a string",
            &["window"],
            json!("soon"),
            "window",
        );
        with(
            "a blackout that is not a date",
            &["window", "blackout"],
            json!(["tomorrow"]),
            "blackout",
        );
        with(
            "a policy name with spaces",
            &["policy"],
            json!("rm -rf /"),
            "name",
        );
        with(
            "a huge schedule with one bad value at the end",
            &["window", "schedule"],
            json!("1,".repeat(1500) + "60 * * * *"),
            "minute",
        );
        bad.push(("not an object", json!("reboot now"), "maintenance"));
        bad.push(("an array", json!([valid()]), "maintenance"));

        for (what, maintenance, mention) in bad {
            set_desired(&rest, maintenance).await;
            let rejected = wait_reported(&rest, what, |r| r["status"] == "rejected").await;
            let error = rejected["error"].as_str().unwrap_or_default();
            assert!(
                error.to_lowercase().contains(&mention.to_lowercase()),
                "{what}: the error should mention {mention:?}: {error:?}"
            );
            // The previous policy keeps running: its window is still reported.
            assert_eq!(rejected["window"], kept_window, "{what}: {rejected}");
            // Back to the valid one before the next case.
            set_desired(&rest, valid()).await;
            wait_reported(&rest, "re-applied", |r| r["status"] == "applied").await;
        }

        // A twin cannot name a command: extra keys are refused or ignored, never run.
        let mut hostile = valid();
        hostile["reboot"]["command"] = json!(format!("touch '{}'", pwned.display()));
        hostile["command"] = json!(["sh", "-c", format!("touch '{}'", pwned.display())]);
        set_desired(&rest, hostile).await;
        let reported = wait_reported(&rest, "the hostile policy", |r| {
            r["status"] == "rejected" || r["status"] == "applied"
        })
        .await;
        // Leave a rejected policy in place for the last step.
        set_desired(
            &rest,
            json!({"policy": "broken", "revision": "bbbb", "window": 5}),
        )
        .await;
        wait_reported(&rest, "broken", |r| {
            r["status"] == "rejected" && r["policy"] == "broken"
        })
        .await;

        // Malformed reboot payloads are refused (400/409) and reboot nothing.
        for payload in [
            json!("now"),
            json!({"policy": 5}),
            json!({"force": "yes"}),
            json!([1, 2]),
        ] {
            let answer = rest
                .answer(Call::post(format!("/twins/{DEVICE}/methods")).json(&json!({
                    "methodName": "reboot", "payload": payload, "responseTimeoutInSeconds": 30})))
                .await;
            assert_eq!(answer.status, 200, "{payload}: {}", short(&answer.text()));
            let body = answer.json();
            assert!(
                matches!(body["status"].as_u64(), Some(400 | 409)),
                "{payload}: {body}"
            );
            assert_eq!(body["payload"]["accepted"], false, "{payload}: {body}");
        }
        assert!(!marker.exists(), "nothing rebooted yet");

        // The kept policy is still the one the gate uses: a reboot for it, in its window, is
        // accepted, and runs the local command — not anything from the twin.
        let answer = rest
            .answer(Call::post(format!("/twins/{DEVICE}/methods")).json(&json!({
                "methodName": "reboot", "responseTimeoutInSeconds": 30,
                "payload": {"policy": "hourly", "revision": "aaaa1111",
                            "occurrence": "2026-11-29T10:00:00.000Z"}})))
            .await;
        assert_eq!(answer.status, 200, "{}", short(&answer.text()));
        assert_eq!(
            answer.json()["payload"]["accepted"],
            true,
            "{}",
            short(&answer.text())
        );
        tokio::time::timeout(GUARD, async {
            while !marker.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the local reboot command ran");
        assert!(!pwned.exists(), "a command from the twin ran ({reported})");

        let _ = stop_tx.send(());
        let outcome = tokio::time::timeout(GUARD, agent_task)
            .await
            .expect("agent stops");
        assert!(
            matches!(outcome, Ok(Ok(RunOutcome::Shutdown))),
            "{outcome:?}"
        );
        hub.shutdown().await;
        crate::common::assert_no_panics();
    }
}
