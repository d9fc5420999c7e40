//! Azure's behaviours that slow local use, behind the hub's fault flags: lagging twin queries
//! (`--query-lag`), throttling by shaping (`--throttle-mode shape`) and the silent socket
//! (`RunningHub::blackhole_device`). See `docs/hub-faults.md`.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{device_token, now};
use casement_hub::{
    HubConfig, ManualClock, Operation, Rate, RunningHub, ThrottleConfig, ThrottleMode,
};
use casement_iothub::rest::{ConnectionState, TwinPatch};
use casement_tests::hub::service_client;
use casement_tests::mqtt::{Device, RawMqtt, WAIT, username};
use casement_tests::rest::Rest;
use chrono::{TimeDelta, Utc};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
use serde_json::{Value, json};

const LAG: Duration = Duration::from_secs(60);

/// A hub whose queries lag [`LAG`] behind, on a clock the test moves.
async fn lagging_hub() -> (RunningHub, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = HubConfig {
        query_lag: LAG,
        clock: clock.clone(),
        ..HubConfig::for_tests()
    };
    (crate::common::start_with(config).await, clock)
}

fn past_the_lag(clock: &ManualClock) {
    clock.advance(TimeDelta::seconds(61));
}

/// The device ids of every page of `sql`, `page` items a page.
async fn all_ids(api: &Rest, sql: &str, page: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let r = api.query(sql, Some(page), continuation.as_deref()).await;
        assert_eq!(r.status, 200, "{r:?}");
        let items = r.json().as_array().expect("array").clone();
        assert!(items.len() <= page);
        ids.extend(
            items
                .iter()
                .map(|t| t["deviceId"].as_str().expect("id").to_owned()),
        );
        match r.header("x-ms-continuation") {
            Some(next) => continuation = Some(next.to_owned()),
            None => return ids,
        }
    }
}

async fn query(api: &Rest, sql: &str) -> Value {
    let r = api.query(sql, None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[tokio::test]
async fn a_reported_patch_reaches_queries_only_after_the_lag_but_twin_reads_at_once() {
    let (hub, clock) = lagging_hub().await;
    let api = Rest::of(&hub);
    hub.create_device("d1", Value::Null).await.expect("create");
    assert_eq!(
        query(&api, "SELECT * FROM devices").await,
        json!([]),
        "a device created less than the lag ago is not in queries yet"
    );
    past_the_lag(&clock);
    assert_eq!(
        query(&api, "SELECT deviceId FROM devices").await,
        json!([{"deviceId": "d1"}])
    );

    let mut dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtLeastOnce)])
        .await;
    let (topic, _) = dev.report("1", &json!({"fw": "2.0"})).await;
    assert!(topic.starts_with("$iothub/twin/res/204/"), "{topic}");

    // Twin reads are strongly consistent, REST and MQTT alike.
    let twin = api.get("/twins/d1").await;
    assert_eq!(twin.json()["properties"]["reported"]["fw"], "2.0");
    let (_, props) = dev.twin_get("2").await;
    assert_eq!(props["reported"]["fw"], "2.0");

    let fw = "SELECT deviceId FROM devices WHERE properties.reported.fw = '2.0'";
    assert_eq!(query(&api, fw).await, json!([]));
    let seen = query(&api, "SELECT * FROM devices").await;
    assert!(
        seen[0]["properties"]["reported"].get("fw").is_none(),
        "{seen}"
    );
    clock.advance(TimeDelta::seconds(59));
    assert_eq!(query(&api, fw).await, json!([]), "59 s is within the lag");
    clock.advance(TimeDelta::seconds(2));
    assert_eq!(query(&api, fw).await, json!([{"deviceId": "d1"}]));

    // A deleted device stays in queries until the lag has passed; GET knows at once.
    assert_eq!(api.delete("/devices/d1").await.status, 204);
    api.get("/twins/d1")
        .await
        .expect_error(404, "DeviceNotFound");
    assert_eq!(query(&api, fw).await, json!([{"deviceId": "d1"}]));
    past_the_lag(&clock);
    assert_eq!(query(&api, "SELECT * FROM devices").await, json!([]));
    hub.shutdown().await;
}

#[tokio::test]
async fn paging_sees_one_consistent_lagging_view() {
    let (hub, clock) = lagging_hub().await;
    let api = Rest::of(&hub);
    let client = service_client(&hub);
    for i in 0..5 {
        hub.create_device(&format!("d{i}"), json!({"ring": "old"}))
            .await
            .expect("create");
    }
    past_the_lag(&clock);
    // Changes within the lag: two new devices, one deleted, one re-tagged.
    hub.create_device("d5", json!({"ring": "new"}))
        .await
        .expect("create");
    hub.create_device("a0", json!({"ring": "new"}))
        .await
        .expect("create");
    client.delete_device("d2").await.expect("d2 deleted");
    client
        .patch("d3", &TwinPatch::tags(json!({"ring": "new"})), None)
        .await
        .expect("d3 re-tagged");

    let old = "SELECT * FROM devices WHERE tags.ring = 'old'";
    assert_eq!(
        all_ids(&api, "SELECT * FROM devices", 2).await,
        ["d0", "d1", "d2", "d3", "d4"]
    );
    assert_eq!(all_ids(&api, old, 2).await, ["d0", "d1", "d2", "d3", "d4"]);
    assert_eq!(all_ids(&api, old, 1).await, ["d0", "d1", "d2", "d3", "d4"]);

    past_the_lag(&clock);
    assert_eq!(
        all_ids(&api, "SELECT * FROM devices", 2).await,
        ["a0", "d0", "d1", "d3", "d4", "d5"]
    );
    assert_eq!(all_ids(&api, old, 2).await, ["d0", "d1", "d4"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn aggregates_lag_too() {
    let (hub, clock) = lagging_hub().await;
    let api = Rest::of(&hub);
    for i in 0..3 {
        hub.create_device(&format!("d{i}"), json!({"env": "a"}))
            .await
            .expect("create");
    }
    let count = "SELECT COUNT() AS n FROM devices";
    let by_env = "SELECT tags.env AS env, COUNT() AS n FROM devices GROUP BY tags.env";
    assert_eq!(query(&api, count).await, json!([{"n": 0}]));
    past_the_lag(&clock);
    assert_eq!(query(&api, count).await, json!([{"n": 3}]));
    service_client(&hub)
        .patch("d1", &TwinPatch::tags(json!({"env": "b"})), None)
        .await
        .expect("d1 re-tagged");
    assert_eq!(query(&api, by_env).await, json!([{"env": "a", "n": 3}]));
    past_the_lag(&clock);
    let mut groups = query(&api, by_env).await.as_array().expect("array").clone();
    groups.sort_by_key(|g| g["env"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        groups,
        [json!({"env": "a", "n": 2}), json!({"env": "b", "n": 1})]
    );
    hub.shutdown().await;
}

/// One twin read every three seconds, no burst beyond one.
fn slow_twin_reads(mode: ThrottleMode, max_wait: Duration) -> HubConfig {
    HubConfig {
        throttle: ThrottleConfig::none().with(
            Operation::TwinReads,
            Rate {
                per_second: 1.0 / 3.0,
                burst: 1.0,
            },
        ),
        throttle_mode: mode,
        throttle_max_wait: max_wait,
        ..HubConfig::for_tests()
    }
}

/// Waits until the hub has queued `n` operations.
async fn until_queued(hub: &RunningHub, n: u64) {
    tokio::time::timeout(WAIT, async {
        while hub.throttle_counts().queued < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the request reaches the shaping queue");
}

#[tokio::test]
async fn shaping_serves_calls_over_quota_later_and_answers_429_when_the_queue_is_full() {
    let hub =
        crate::common::start_with(slow_twin_reads(ThrottleMode::Shape, Duration::from_secs(4)))
            .await;
    let api = Rest::of(&hub);
    hub.create_device("d1", Value::Null).await.expect("create");
    assert_eq!(api.get("/twins/d1").await.status, 200);
    // Over quota: queued for the next token (3 s), not refused.
    let api2 = api.clone();
    let queued = tokio::spawn(async move { api2.get("/twins/d1").await });
    until_queued(&hub, 1).await;
    // The one after would wait 6 s, more than the queue holds (4 s): 429 with Retry-After.
    let r = api.get("/twins/d1").await;
    r.expect_error(429, "ThrottlingException");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!(retry >= 1, "{retry}");
    let served = queued.await.expect("task");
    assert_eq!(served.status, 200, "the queued read is served: {served:?}");
    assert_eq!(served.json()["deviceId"], "d1");
    let counts = hub.throttle_counts();
    assert_eq!((counts.queued, counts.refused), (1, 1));
    hub.shutdown().await;
}

#[tokio::test]
async fn reject_mode_still_answers_429_at_once() {
    let hub = crate::common::start_with(slow_twin_reads(
        ThrottleMode::Reject,
        Duration::from_secs(60),
    ))
    .await;
    let api = Rest::of(&hub);
    hub.create_device("d1", Value::Null).await.expect("create");
    assert_eq!(api.get("/twins/d1").await.status, 200);
    api.get("/twins/d1")
        .await
        .expect_error(429, "ThrottlingException");
    assert_eq!(hub.throttle_counts().queued, 0);
    hub.shutdown().await;
}

#[tokio::test]
async fn shaping_a_twin_update_over_quota_makes_it_wait_not_fail() {
    let config = HubConfig {
        throttle: ThrottleConfig::none().with(
            Operation::TwinUpdates,
            Rate {
                per_second: 1.0,
                burst: 1.0,
            },
        ),
        throttle_mode: ThrottleMode::Shape,
        ..HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    let api = Rest::of(&hub);
    hub.create_device("d1", Value::Null).await.expect("create");
    // Three updates back to back at one a second: all succeed, the last two after a wait.
    for i in 0..3 {
        let r = api
            .patch("/twins/d1", &json!({"properties": {"desired": {"n": i}}}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        hub.throttle_counts().queued >= 1,
        "{:?}",
        hub.throttle_counts()
    );
    assert_eq!(hub.throttle_counts().refused, 0);
    hub.shutdown().await;
}

#[tokio::test]
async fn an_mqtt_device_over_quota_with_the_queue_full_is_disconnected_and_can_reconnect() {
    let config = HubConfig {
        throttle: ThrottleConfig::none()
            .with(Operation::TwinReads, Rate::per_minute(1.0))
            .with(Operation::TwinUpdates, Rate::per_minute(1.0)),
        throttle_mode: ThrottleMode::Shape,
        throttle_max_wait: Duration::from_secs(5),
        ..HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtLeastOnce)])
        .await;
    let (topic, _) = dev.twin_get("1").await;
    assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
    // The next read would wait a minute: IoT Hub closes the connection (429002) rather than
    // answer 429 on the response topic.
    dev.mqtt
        .publish("$iothub/twin/GET/?$rid=2", QoS::AtLeastOnce, b" ")
        .await;
    dev.mqtt.expect_closed().await;
    assert_eq!(hub.throttle_counts().refused, 1);
    // The device reconnects; its session (CleanSession=0) is still there.
    let mut again = Device::create_and_connect(&hub, "d1").await;
    assert!(again.session_present);
    assert_eq!(hub.stats().connected_devices, 1);
    // The same for reported patches.
    let (topic, _) = again.report("3", &json!({"n": 1})).await;
    assert!(topic.starts_with("$iothub/twin/res/204/"), "{topic}");
    again
        .mqtt
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=4",
            QoS::AtLeastOnce,
            b"{\"n\":2}",
        )
        .await;
    again.mqtt.expect_closed().await;
    assert_eq!(hub.throttle_counts().refused, 2);
    hub.shutdown().await;
}

#[tokio::test]
async fn telemetry_over_quota_waits_in_the_queue_in_shape_mode() {
    let config = HubConfig {
        throttle: ThrottleConfig::none().with(
            Operation::Telemetry,
            Rate {
                per_second: 2.0,
                burst: 1.0,
            },
        ),
        throttle_mode: ThrottleMode::Shape,
        ..HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    for _ in 0..3 {
        // Each PUBACK comes once the message has been let through.
        dev.mqtt
            .publish("devices/d1/messages/events/", QoS::AtLeastOnce, b"{}")
            .await;
    }
    assert_eq!(hub.stats().telemetry_messages, 3);
    assert!(hub.throttle_counts().queued >= 1);
    assert_eq!(hub.stats().connected_devices, 1);
    hub.shutdown().await;
}

/// Connects `id` with keep-alive `keep_alive` seconds and subscribes to methods.
async fn connect_for_methods(
    hub: &RunningHub,
    id: &str,
    keep_alive: u16,
) -> casement_tests::mqtt::RawMqtt {
    let cs = match hub.device_connection_string(id) {
        Some(cs) => cs,
        None => hub.create_device(id, Value::Null).await.expect("create"),
    };
    let mut mqtt = RawMqtt::open(hub.mqtt_addr().expect("mqtt"))
        .await
        .expect("tcp connect");
    let ack = mqtt
        .connect_raw(
            id,
            &username("localhost", id),
            &device_token(&cs, now() + 3600),
            false,
            keep_alive,
        )
        .await
        .expect("CONNACK");
    assert_eq!(ack.code, ConnectReturnCode::Success);
    mqtt.subscribe(&[("$iothub/methods/POST/#", QoS::AtMostOnce)])
        .await;
    mqtt
}

fn reboot(timeout_secs: u64) -> Value {
    json!({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": timeout_secs,
           "connectTimeoutInSeconds": 0})
}

#[tokio::test]
async fn a_silent_socket_gets_504101_until_the_keep_alive_expires_then_404103() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let client = service_client(&hub);
    assert!(
        !hub.blackhole_device("d1"),
        "no connection to black-hole yet"
    );
    // Keep-alive 4 s: the hub gives up on the device 6 s after the last packet it saw.
    let mut mqtt = connect_for_methods(&hub, "d1", 4).await;
    assert!(hub.blackhole_device("d1"));
    // The device pings as MQTT asks; the hub no longer hears it.
    mqtt.send(&Packet::PingReq).await.expect("send");

    // The hub still believes the device connected: the method waits out its timeout.
    let r = api.invoke("d1", &reboot(5)).await;
    r.expect_error(504, "GatewayTimeout");
    let twin = client.twin("d1").await.expect("twin");
    assert_eq!(
        twin.connection_state,
        Some(ConnectionState::Connected),
        "{twin:?}"
    );

    // Nothing reached the device; then the keep-alive timeout closes the socket.
    assert!(
        mqtt.recv().await.is_none(),
        "no PINGRESP, no method request, then close"
    );
    let twin = client.twin("d1").await.expect("twin");
    assert_eq!(
        twin.connection_state,
        Some(ConnectionState::Disconnected),
        "{twin:?}"
    );
    api.invoke("d1", &reboot(5))
        .await
        .expect_error(404, "DeviceNotOnline");

    // The device's next connection is served normally.
    let mut mqtt = connect_for_methods(&hub, "d1", 60).await;
    let call = api.invoke_in_background("d1", reboot(30));
    let request = mqtt.next_publish().await;
    let rid = request.topic.split("$rid=").nth(1).expect("rid").to_owned();
    mqtt.publish(
        &format!("$iothub/methods/res/200/?$rid={rid}"),
        QoS::AtMostOnce,
        b"{\"ok\":true}",
    )
    .await;
    let r = call.await.expect("task");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["payload"]["ok"], true);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_silent_socket_that_really_dies_is_noticed_only_by_keep_alive() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let mqtt = connect_for_methods(&hub, "d1", 2).await;
    assert!(hub.blackhole_device("d1"));
    // The device loses power: its socket closes, but the hub, like Azure without a FIN,
    // does not notice until the keep-alive (3 s) runs out.
    drop(mqtt);
    let r = api.invoke("d1", &reboot(5)).await;
    r.expect_error(504, "GatewayTimeout");
    tokio::time::timeout(WAIT, async {
        while hub.stats().connected_devices > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the keep-alive timeout disconnects the device");
    hub.shutdown().await;
}

#[tokio::test]
async fn even_without_a_keep_alive_a_silent_device_is_dropped_at_azures_cap() {
    let hub = crate::common::start().await;
    // Keep-alive 0 is MQTT's "none"; IoT Hub's server-side timeout is never above 1,767 s.
    let mut mqtt = connect_for_methods(&hub, "d1", 0).await;
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4000), mqtt.recv_forever()).await;
    assert_eq!(closed, Ok(None), "the hub closes the silent connection");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(1767)..Duration::from_secs(1800)).contains(&waited),
        "{waited:?}"
    );
    drop(mqtt);
    tokio::time::resume();
    hub.shutdown().await;
}
