//! Azure fidelity (issue 14): the hub refuses what Azure IoT Hub refuses and is late where Azure
//! is late, behind flags whose defaults suit local use (see `docs/azure-fidelity.md`).
//!
//! - The query dialect: Azure's by default (`IS_DEFINED` only, reserved words escaped);
//!   `--query-dialect extended` opts in to the superset.
//! - Connection-state lag: `--connection-state-lag` shows `connectionState`,
//!   `connectionStateUpdatedTime` and `lastActivityTime` that long after they change.
//! - Method responses: JSON (or empty) of at most 128 KB, else 502/502101 to the caller.

use std::sync::Arc;
use std::time::Duration;

use casement_hub::HubConfig;
use casement_hub::clock::{Clock, ManualClock};
use casement_iothub::query::Dialect;
use casement_tests::mqtt::Device;
use casement_tests::rest::Rest;
use rumqttc::mqttbytes::QoS;
use serde_json::{Value, json};

fn ids(items: &Value) -> Vec<&str> {
    let mut ids: Vec<&str> = items
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["deviceId"].as_str().unwrap_or("?"))
        .collect();
    ids.sort_unstable();
    ids
}

async fn tagged(hub: &casement_hub::RunningHub, api: &Rest) {
    for (id, tags) in [
        ("store-1", json!({"group": "north"})),
        ("store-2", json!({"group": "south"})),
        ("depot-1", json!({"group": "north"})),
    ] {
        hub.create_device(id, Value::Null).await.expect("create");
        let r = api
            .patch(&format!("/twins/{id}"), &json!({"tags": tags}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
}

// --- 1. The query dialect -------------------------------------------------------------------

#[tokio::test]
async fn queries_use_azures_dialect_by_default() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    tagged(&hub, &api).await;

    let r = api
        .query(
            "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'store-')",
            None,
            None,
        )
        .await;
    r.expect_error(400, "ArgumentInvalid");
    let message = r.json()["Message"].as_str().unwrap().to_owned();
    assert!(message.contains("column 29"), "{message}");
    assert!(message.contains("only IS_DEFINED"), "{message}");

    let r = api
        .query(
            "SELECT * FROM devices WHERE tags.group = 'north'",
            None,
            None,
        )
        .await;
    r.expect_error(400, "ArgumentInvalid");
    let message = r.json()["Message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("column 34") && message.contains("[[group]]"),
        "{message}"
    );

    // Escaped, the same property is a valid Azure query.
    let r = api
        .query(
            "SELECT * FROM devices WHERE tags.[[group]] = 'north'",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(ids(&r.json()), ["depot-1", "store-1"]);
    // IS_DEFINED stays.
    let r = api
        .query(
            "SELECT * FROM devices WHERE IS_DEFINED(tags.[[group]])",
            None,
            None,
        )
        .await;
    assert_eq!(ids(&r.json()).len(), 3, "{r:?}");
}

#[tokio::test]
async fn the_extended_dialect_is_an_explicit_opt_in() {
    let hub = crate::common::start_with(HubConfig {
        query_dialect: Dialect::Extended,
        ..HubConfig::for_tests()
    })
    .await;
    let api = Rest::of(&hub);
    tagged(&hub, &api).await;
    let r = api
        .query(
            "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'store-') AND tags.group = 'north'",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(ids(&r.json()), ["store-1"]);
}

#[test]
fn the_flag_defaults_to_azure() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        hub: casement_hub::HubArgs,
    }
    let config = Cli::try_parse_from(["hub"])
        .unwrap()
        .hub
        .to_config()
        .unwrap();
    assert_eq!(config.query_dialect, Dialect::Azure);
    assert_eq!(config.connection_state_lag, Duration::ZERO);
    let config = Cli::try_parse_from([
        "hub",
        "--query-dialect",
        "extended",
        "--connection-state-lag",
        "5m",
    ])
    .unwrap()
    .hub
    .to_config()
    .unwrap();
    assert_eq!(config.query_dialect, Dialect::Extended);
    assert_eq!(config.connection_state_lag, Duration::from_secs(300));
    assert!(Cli::try_parse_from(["hub", "--query-dialect", "routing"]).is_err());
    assert!(Cli::try_parse_from(["hub", "--connection-state-lag", "soon"]).is_err());
}

// --- 3. Connection state is late ------------------------------------------------------------

async fn presence(api: &Rest, id: &str) -> (String, String, String) {
    let twin = api.get(&format!("/twins/{id}")).await;
    assert_eq!(twin.status, 200, "{twin:?}");
    let device = api.get(&format!("/devices/{id}")).await;
    assert_eq!(device.status, 200, "{device:?}");
    // The twin and the device agree.
    assert_eq!(
        twin.json()["connectionState"],
        device.json()["connectionState"]
    );
    assert_eq!(
        twin.json()["lastActivityTime"],
        device.json()["lastActivityTime"]
    );
    (
        twin.json()["connectionState"].as_str().unwrap().to_owned(),
        device.json()["connectionStateUpdatedTime"]
            .as_str()
            .unwrap()
            .to_owned(),
        twin.json()["lastActivityTime"].as_str().unwrap().to_owned(),
    )
}

async fn connected_count(api: &Rest) -> u64 {
    let r = api
        .query(
            "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()[0]["n"].as_u64().unwrap()
}

#[tokio::test]
async fn connection_state_and_activity_show_only_after_the_lag() {
    let clock = ManualClock::new(chrono::Utc::now() - chrono::TimeDelta::hours(1));
    let lag = chrono::TimeDelta::minutes(5);
    let hub = crate::common::start_with(HubConfig {
        clock: Arc::new(clock.clone()),
        connection_state_lag: lag.to_std().unwrap(),
        ..HubConfig::for_tests()
    })
    .await;
    let api = Rest::of(&hub);
    let never = "0001-01-01T00:00:00Z";

    let mut dev = Device::create_and_connect(&hub, "d1").await;
    let connected_at = casement_iothub::time::format_timestamp(Clock::now(&clock));
    // Connected for real, but not yet shown: not in twins, device GETs or queries.
    let (state, updated, activity) = presence(&api, "d1").await;
    assert_eq!(state, "Disconnected");
    assert_eq!((updated.as_str(), activity.as_str()), (never, never));
    assert_eq!(connected_count(&api).await, 0);
    clock.advance(lag - chrono::TimeDelta::seconds(1));
    assert_eq!(presence(&api, "d1").await.0, "Disconnected");
    assert_eq!(connected_count(&api).await, 0);

    clock.advance(chrono::TimeDelta::seconds(1));
    let (state, updated, activity) = presence(&api, "d1").await;
    assert_eq!(state, "Connected");
    assert_eq!(updated, connected_at, "the time of the real change");
    assert_eq!(activity, connected_at);
    assert_eq!(connected_count(&api).await, 1);

    // Activity (a reported patch, acknowledged before we go on) is late too.
    clock.advance(chrono::TimeDelta::minutes(1));
    let reported_at = casement_iothub::time::format_timestamp(Clock::now(&clock));
    dev.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;
    let (topic, _) = dev.report("r1", &json!({"x": 1})).await;
    assert!(topic.starts_with("$iothub/twin/res/204/"), "{topic}");
    assert_eq!(presence(&api, "d1").await.2, connected_at);
    clock.advance(lag);
    assert_eq!(presence(&api, "d1").await.2, reported_at);

    // A disconnect keeps showing Connected until it is `lag` old.
    dev.mqtt
        .send(&rumqttc::mqttbytes::v4::Packet::Disconnect)
        .await
        .expect("send");
    dev.mqtt.expect_closed().await;
    assert_eq!(presence(&api, "d1").await.0, "Connected");
    assert_eq!(connected_count(&api).await, 1);
    // The hub records the disconnect when it sees the socket close; once that change is `lag`
    // old it shows.
    let mut shown = false;
    for _ in 0..100 {
        clock.advance(lag);
        if presence(&api, "d1").await.0 == "Disconnected" {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shown, "the disconnect shows once it is {lag} old");
    assert_eq!(connected_count(&api).await, 0);
}

#[tokio::test]
async fn without_a_lag_connection_state_shows_at_once() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let _dev = Device::create_and_connect(&hub, "d1").await;
    assert_eq!(presence(&api, "d1").await.0, "Connected");
    assert_eq!(connected_count(&api).await, 1);
}

// --- 5. Method responses Azure refuses ------------------------------------------------------

async fn answer(dev: &mut Device, status: u16, body: &[u8]) {
    let p = dev.mqtt.next_publish().await;
    let rid = p.topic.split_once("?$rid=").expect("rid").1.to_owned();
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/{status}/?$rid={rid}"),
            QoS::AtMostOnce,
            body,
        )
        .await;
}

#[tokio::test]
async fn method_responses_must_be_json_of_at_most_128_kb() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .subscribe(&[("$iothub/methods/POST/#", QoS::AtMostOnce)])
        .await;
    let call = json!({"methodName": "reboot", "responseTimeoutInSeconds": 5});

    // Not JSON: Node's `"Reboot started"` is JSON only with its quotes.
    let pending = api.invoke_in_background("d1", call.clone());
    answer(&mut dev, 200, b"Reboot started").await;
    let r = pending.await.expect("join");
    r.expect_error(502, "InvalidResponseWhileProxying");
    let message = r.json()["Message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("not a valid document of type application/json"),
        "{message}"
    );

    // Over 128 KB.
    let big = format!("\"{}\"", "a".repeat(128 * 1024 - 1));
    let pending = api.invoke_in_background("d1", call.clone());
    answer(&mut dev, 200, big.as_bytes()).await;
    let r = pending.await.expect("join");
    r.expect_error(502, "InvalidResponseWhileProxying");
    assert!(
        r.json()["Message"]
            .as_str()
            .unwrap()
            .contains("131073 bytes"),
        "{r:?}"
    );

    // The device stays connected, and exactly 128 KB of JSON passes.
    let limit = format!("\"{}\"", "a".repeat(128 * 1024 - 2));
    let pending = api.invoke_in_background("d1", call.clone());
    answer(&mut dev, 200, limit.as_bytes()).await;
    let r = pending.await.expect("join");
    assert_eq!(r.status, 200, "{}", r.text().len());
    assert_eq!(
        r.json()["payload"].as_str().map(str::len),
        Some(128 * 1024 - 2)
    );

    // An empty body is still a null payload.
    let pending = api.invoke_in_background("d1", call);
    answer(&mut dev, 200, b"").await;
    let r = pending.await.expect("join");
    assert_eq!(r.json(), json!({"status": 200, "payload": null}));
}
