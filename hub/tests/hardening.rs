//! Hardening found by the adversarial run (issue 13): device ids are case-sensitive in token
//! scopes, a NUL in a topic closes the connection, expired tokens end MQTT sessions, idle
//! connections cannot lock the REST API out, and the data directory is private.

mod common;

use casement_iothub::sas;
use common::{Api, Device, Mqtt, device_token, now, username};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet, Publish};
use serde_json::{Value, json};

/// Item 1: a token scoped to `devA` neither reads nor patches `DEVA` (another device) over
/// REST, nor connects as it over MQTT; the host part of `sr` stays case-insensitive.
#[tokio::test]
async fn a_device_scoped_token_does_not_reach_a_device_differing_only_in_case() {
    let hub = common::start().await;
    let dev_a = hub.create_device("devA", Value::Null).await.expect("devA");
    hub.create_device("DEVA", Value::Null).await.expect("DEVA");
    let policy_key = |name: &str| {
        hub.policy_connection_string(name)
            .expect("policy")
            .split(';')
            .find_map(|kv| kv.strip_prefix("SharedAccessKey="))
            .expect("key")
            .to_owned()
    };

    // REST: a `service` token for LOCALHOST/devices/devA (host in another case).
    let service_key = policy_key("service");
    let token = sas::sign(
        "LOCALHOST/devices/devA",
        &service_key,
        Some("service"),
        now() + 600,
    )
    .expect("sign");
    let scoped = Api::with_token(&hub, token);
    assert_eq!(scoped.get("/twins/devA").await.status, 200);
    scoped
        .get("/twins/DEVA")
        .await
        .expect_error(401, "IotHubUnauthorized");
    scoped
        .patch("/twins/DEVA", &json!({"properties": {"desired": {"x": 1}}}))
        .await
        .expect_error(401, "IotHubUnauthorized");
    let owner = Api::new(&hub);
    let deva = owner.get("/twins/DEVA").await;
    assert!(
        deva.json["properties"]["desired"]["x"].is_null(),
        "{deva:?}"
    );

    // MQTT: a `device`-policy token for devA connects as devA, not as DEVA.
    let device_key = policy_key("device");
    let token = sas::sign(
        "localhost/devices/devA",
        &device_key,
        Some("device"),
        now() + 600,
    )
    .expect("sign");
    for (client, expected) in [
        ("DEVA", ConnectReturnCode::NotAuthorized),
        ("deva", ConnectReturnCode::NotAuthorized),
        ("devA", ConnectReturnCode::Success),
    ] {
        let mut mqtt = Mqtt::open(hub.mqtt_addr().expect("mqtt")).await;
        let ack = mqtt
            .connect_raw(client, &username("localhost", client), &token, true, 60)
            .await
            .expect("CONNACK");
        assert_eq!(
            ack.code, expected,
            "device-policy token for devA as {client}"
        );
    }
    // devA's own key does not connect DEVA either.
    let own = device_token(&dev_a, now() + 600);
    let mut mqtt = Mqtt::open(hub.mqtt_addr().expect("mqtt")).await;
    let ack = mqtt
        .connect_raw("DEVA", &username("localhost", "DEVA"), &own, true, 60)
        .await
        .expect("CONNACK");
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    hub.shutdown().await;
}

/// Item 7: a PUBLISH whose topic holds U+0000 closes that connection without a PUBACK
/// (MQTT 3.1.1 §4.7.3), and the hub keeps serving the other devices.
#[tokio::test]
async fn a_nul_in_a_topic_closes_the_connection_and_only_that_one() {
    let hub = common::start().await;
    let mut bad = Device::create_and_connect(&hub, "bad").await;
    let mut good = Device::create_and_connect(&hub, "good").await;

    let mut publish = Publish::new("devices/bad/messages/events/\0", QoS::AtLeastOnce, "x");
    publish.pkid = bad.mqtt.pkid();
    bad.mqtt.send(Packet::Publish(publish)).await;
    loop {
        match bad.mqtt.recv().await {
            None => break,
            Some(Packet::PubAck(ack)) => panic!("a NUL topic was acknowledged: {ack:?}"),
            Some(_) => {}
        }
    }
    // A NUL in a subscription filter is refused the same way.
    let mut sub = Device::create_and_connect(&hub, "sub").await;
    let mut filter = rumqttc::mqttbytes::v4::Subscribe::new(
        "devices/sub/messages/devicebound/\0#",
        QoS::AtLeastOnce,
    );
    filter.pkid = sub.mqtt.pkid();
    sub.mqtt.send(Packet::Subscribe(filter)).await;
    sub.mqtt.expect_closed().await;

    // The other device is still served, and the NUL device can reconnect.
    let acks = good
        .mqtt
        .publish("devices/good/messages/events/", QoS::AtLeastOnce, b"ok")
        .await;
    assert!(acks.is_empty());
    good.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;
    let (topic, _) = good.twin_get("1").await;
    assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
    let mut again = Device::create_and_connect(&hub, "bad").await;
    again
        .mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;
    let (topic, _) = again.twin_get("2").await;
    assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
    hub.shutdown().await;
}

/// Item 3: a new data directory is 0700 with every file in it 0600 (sled's `db` holds every
/// key), and a hub started on an existing world-readable directory makes it private.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_private_on_creation_and_on_start() {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn modes(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        let meta = std::fs::symlink_metadata(dir).expect("metadata");
        out.push((dir.to_path_buf(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                modes(&entry.expect("entry").path(), out);
            }
        }
    }
    fn assert_private(dir: &Path) {
        let mut all = Vec::new();
        modes(dir, &mut all);
        assert!(all.len() > 3, "the hub wrote its files: {all:?}");
        for (path, mode) in all {
            let want = if path.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{} is {mode:o}", path.display());
        }
    }

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("hub");
    let hub = common::start_with(casement_hub::HubConfig::for_tests_in(&dir)).await;
    hub.create_device("d1", Value::Null).await.expect("d1");
    assert!(dir.join("db").exists(), "sled's files are under db/");
    assert_private(&dir);
    hub.shutdown().await;

    // An older hub left it open: 0755 directories, 0644 files.
    let mut all = Vec::new();
    modes(&dir, &mut all);
    for (path, _) in &all {
        let open = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(open)).expect("chmod");
    }
    let hub = common::start_with(casement_hub::HubConfig::for_tests_in(&dir)).await;
    assert_private(&dir);
    assert!(hub.device_connection_string("d1").is_some(), "data kept");
    hub.shutdown().await;
}

/// Item 6: by the hub's (injected) clock, an MQTT connection is closed once its token's `se`
/// plus the skew allowance has passed, and a CONNECT with a token expired beyond the allowance
/// is refused; within the allowance it is accepted.
#[tokio::test]
async fn an_mqtt_session_ends_when_its_token_expires() {
    let clock = std::sync::Arc::new(casement_hub::ManualClock::new(chrono::Utc::now()));
    let mut config = casement_hub::HubConfig::for_tests();
    config.clock = clock.clone();
    config.limits.token_expiry_skew = std::time::Duration::from_secs(30);
    let hub = common::start_with(config).await;
    let cs = hub.create_device("d1", Value::Null).await.expect("d1");
    let hub_now = || u64::try_from(clock.now().timestamp()).expect("after 1970");
    use casement_hub::Clock as _;

    let connect = |token: String| {
        let addr = hub.mqtt_addr().expect("mqtt");
        async move {
            let mut mqtt = Mqtt::open(addr).await;
            let ack = mqtt
                .connect_raw("d1", &username("localhost", "d1"), &token, true, 60)
                .await
                .expect("CONNACK");
            (mqtt, ack.code)
        }
    };
    let first_token = device_token(&cs, hub_now() + 60);
    let (mut mqtt, code) = connect(first_token.clone()).await;
    assert_eq!(code, ConnectReturnCode::Success);
    mqtt.subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;

    // Expired, but within the 30 s allowance: still served.
    clock.advance(chrono::TimeDelta::seconds(60 + 30));
    let topic = twin_get_topic(&mut mqtt, "1").await;
    assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");

    // Past the allowance: the hub closes the connection.
    clock.advance(chrono::TimeDelta::seconds(2));
    mqtt.expect_closed().await;

    // The same token cannot connect again; one expired less than the allowance ago can.
    let (_, code) = connect(first_token).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    let (mut mqtt, code) = connect(device_token(&cs, hub_now() - 10)).await;
    assert_eq!(code, ConnectReturnCode::Success);
    mqtt.subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;
    let topic = twin_get_topic(&mut mqtt, "2").await;
    assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
    hub.shutdown().await;
}

/// Sends a twin GET and returns the response's topic.
async fn twin_get_topic(mqtt: &mut common::PlainMqtt, rid: &str) -> String {
    let topic = format!("$iothub/twin/GET/?$rid={rid}");
    let _ = mqtt.publish(&topic, QoS::AtMostOnce, b"").await;
    mqtt.next_publish().await.topic
}
