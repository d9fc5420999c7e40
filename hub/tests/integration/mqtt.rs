//! The device side over real sockets: CONNECT authentication, sessions, QoS rules, limits,
//! keep-alive, twin topics, robustness against broken clients, and MQTT over TLS.

use std::time::Duration;

use crate::common::{device_token, now};
use casement_iothub::rest::{ConnectionState, TwinPatch};
use casement_iothub::sas;
use casement_tests::hub::service_client;
use casement_tests::mqtt::{Device, RawMqtt, username};
use casement_tests::rest::{Call, Rest};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet, SubscribeReasonCode};
use serde_json::{Value, json};

async fn connect_code(
    hub: &casement_hub::RunningHub,
    client_id: &str,
    user: &str,
    password: &str,
) -> ConnectReturnCode {
    let mut mqtt = RawMqtt::open(hub.mqtt_addr().expect("mqtt"))
        .await
        .expect("tcp connect");
    let ack = mqtt
        .connect_raw(client_id, user, password, false, 60)
        .await
        .expect("a CONNACK");
    if ack.code != ConnectReturnCode::Success {
        // Refused connections are closed right after the CONNACK.
        assert!(mqtt.recv().await.is_none(), "closed after refusal");
    }
    ack.code
}

#[tokio::test]
async fn connect_is_authenticated_like_iot_hub() {
    let hub = crate::common::start().await;
    let d1 = hub.create_device("d1", Value::Null).await.expect("d1");
    let d2 = hub.create_device("d2", Value::Null).await.expect("d2");
    let good = device_token(&d1, now() + 3600);
    let user = username("localhost", "d1");
    assert_eq!(
        connect_code(&hub, "d1", &user, &good).await,
        ConnectReturnCode::Success
    );

    // The host may carry a port, and 127.0.0.1 is an alias.
    let with_port = username("localhost:8883", "d1");
    assert_eq!(
        connect_code(&hub, "d1", &with_port, &good).await,
        ConnectReturnCode::Success
    );
    assert_eq!(
        connect_code(&hub, "d1", &username("127.0.0.1", "d1"), &good).await,
        ConnectReturnCode::Success
    );

    let refused = ConnectReturnCode::NotAuthorized;
    // Bad signature: d2's key for d1's resource.
    let forged = sas::device_token(
        "localhost",
        "d1",
        None,
        &crate::common::device_key(&d2),
        now() + 3600,
    )
    .expect("sign");
    assert_eq!(connect_code(&hub, "d1", &user, &forged).await, refused);
    // Expired (beyond the 5 minutes of skew).
    let expired = device_token(&d1, now() - 600);
    assert_eq!(connect_code(&hub, "d1", &user, &expired).await, refused);
    // Another device's valid token.
    assert_eq!(
        connect_code(&hub, "d2", &username("localhost", "d2"), &good).await,
        refused
    );
    // Unknown device; wrong hub name; ClientId ≠ username; garbage password; no password.
    let ghost = sas::device_token(
        "localhost",
        "ghost",
        None,
        &crate::common::device_key(&d1),
        now() + 3600,
    )
    .expect("sign");
    assert_eq!(
        connect_code(&hub, "ghost", &username("localhost", "ghost"), &ghost).await,
        refused
    );
    assert_eq!(
        connect_code(
            &hub,
            "d1",
            &username("otherhub.azure-devices.net", "d1"),
            &good
        )
        .await,
        refused
    );
    assert_eq!(connect_code(&hub, "d2", &user, &good).await, refused);
    assert_eq!(
        connect_code(&hub, "d1", &user, "not a token").await,
        refused
    );
    assert_eq!(connect_code(&hub, "d1", "garbage", &good).await, refused);
    // A registryRead policy token lacks DeviceConnect; the device policy has it.
    let rr = policy_scoped_token(&hub, "registryRead", "localhost/devices/d1");
    assert_eq!(connect_code(&hub, "d1", &user, &rr).await, refused);
    let dev_policy = policy_scoped_token(&hub, "device", "localhost/devices/d1");
    assert_eq!(
        connect_code(&hub, "d1", &user, &dev_policy).await,
        ConnectReturnCode::Success
    );

    // A disabled device is refused.
    let api = Rest::of(&hub);
    let disabled = api
        .answer(
            Call::put("/devices/d1")
                .json(&json!({"deviceId": "d1", "status": "disabled"}))
                .header("If-Match", "*"),
        )
        .await;
    assert_eq!(disabled.status, 200, "{disabled:?}");
    assert_eq!(connect_code(&hub, "d1", &user, &good).await, refused);
    hub.shutdown().await;
}

fn policy_scoped_token(hub: &casement_hub::RunningHub, policy: &str, resource: &str) -> String {
    let cs = hub.policy_connection_string(policy).expect("policy");
    let key = cs
        .split(';')
        .find_map(|kv| kv.strip_prefix("SharedAccessKey="))
        .expect("key");
    sas::sign(resource, key, Some(policy), now() + 3600).expect("sign")
}

#[tokio::test]
async fn a_new_connection_drops_the_old_one() {
    let hub = crate::common::start().await;
    let mut first = Device::create_and_connect(&hub, "d1").await;
    let second = Device::create_and_connect(&hub, "d1").await;
    first.mqtt.expect_closed().await;
    assert!(
        second.session_present,
        "CleanSession=0 session carried over"
    );
    assert_eq!(hub.stats().connected_devices, 1);
    let twin = service_client(&hub).twin("d1").await.expect("twin");
    assert_eq!(
        twin.connection_state,
        Some(ConnectionState::Connected),
        "the old connection's close does not mark the device offline"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn clean_session_0_keeps_subscriptions_across_reconnects() {
    let hub = crate::common::start().await;
    let client = service_client(&hub);
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .subscribe(&[("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)])
        .await;
    drop(dev);
    // Reconnect (as Node does on token renewal) without subscribing again.
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    assert!(dev.session_present);
    client
        .patch("d1", &TwinPatch::desired(json!({"a": 1})), None)
        .await
        .expect("desired patched");
    let note = dev.mqtt.next_publish().await;
    assert_eq!(
        note.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );

    // CleanSession=1 forgets them.
    drop(dev);
    let cs = hub.device_connection_string("d1").expect("cs");
    let mut clean = Device::connect(&hub, "d1", &cs, true).await;
    assert!(!clean.session_present);
    client
        .patch("d1", &TwinPatch::desired(json!({"a": 2})), None)
        .await
        .expect("desired patched");
    // Nothing is delivered: a ping gets its answer first and nothing else arrives.
    clean.mqtt.send(&Packet::PingReq).await.expect("send");
    assert_eq!(clean.mqtt.recv().await, Some(Packet::PingResp));
    hub.shutdown().await;
}

#[tokio::test]
async fn qos_rules() {
    let hub = crate::common::start().await;
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    // QoS 2 SUBSCRIBE is granted QoS 1.
    let ack = dev
        .mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::ExactlyOnce)])
        .await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // Retain is accepted (and not stored).
    let mut retained = rumqttc::mqttbytes::v4::Publish::new(
        "devices/d1/messages/events/",
        QoS::AtLeastOnce,
        b"x".to_vec(),
    );
    retained.retain = true;
    retained.pkid = 7;
    dev.mqtt
        .send(&Packet::Publish(retained))
        .await
        .expect("send");
    assert!(matches!(dev.mqtt.recv().await, Some(Packet::PubAck(a)) if a.pkid == 7));
    // QoS 2 PUBLISH closes the connection.
    dev.mqtt
        .publish("devices/d1/messages/events/", QoS::ExactlyOnce, b"x")
        .await;
    dev.mqtt.expect_closed().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn at_most_five_subscriptions_and_only_documented_filters() {
    let hub = crate::common::start().await;
    // A device id that URL-encodes differently gives six distinct valid filter strings.
    let mut dev = Device::create_and_connect(&hub, "d:1").await;
    let filters = [
        "$iothub/twin/res/#",
        "$iothub/methods/POST/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "devices/+/messages/devicebound/#",
        "devices/d:1/messages/devicebound/#",
        "devices/d%3A1/messages/devicebound/#",
    ];
    let with_qos: Vec<(&str, QoS)> = filters.iter().map(|f| (*f, QoS::AtMostOnce)).collect();
    let ack = dev.mqtt.subscribe(&with_qos).await;
    assert_eq!(
        ack.return_codes[..5],
        [SubscribeReasonCode::Success(QoS::AtMostOnce); 5]
    );
    assert_eq!(ack.return_codes[5], SubscribeReasonCode::Failure);
    // Filters IoT Hub does not document, or for another device's messages, fail.
    let ack = dev
        .mqtt
        .subscribe(&[
            ("#", QoS::AtMostOnce),
            ("devices/d2/messages/devicebound/#", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Failure; 2]);
    // The connection is still fine.
    dev.mqtt.send(&Packet::PingReq).await.expect("send");
    assert_eq!(dev.mqtt.recv().await, Some(Packet::PingResp));
    hub.shutdown().await;
}

#[tokio::test]
async fn telemetry_is_acknowledged_and_counted() {
    let hub = crate::common::start().await;
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .publish(
            "devices/d1/messages/events/$.ct=application%2Fjson&k=v",
            QoS::AtLeastOnce,
            b"{}",
        )
        .await;
    dev.mqtt
        .publish("devices/d1/messages/events/", QoS::AtMostOnce, b"{}")
        .await;
    // A ping round trip orders the QoS 0 message before the assertion.
    dev.mqtt.send(&Packet::PingReq).await.expect("send");
    assert_eq!(dev.mqtt.recv().await, Some(Packet::PingResp));
    assert_eq!(hub.stats().telemetry_messages, 2);
    let twin = Rest::of(&hub).get("/twins/d1").await;
    assert_ne!(twin.json()["lastActivityTime"], "0001-01-01T00:00:00Z");
    // Telemetry under another device's name closes the connection.
    dev.mqtt
        .publish("devices/d2/messages/events/", QoS::AtMostOnce, b"{}")
        .await;
    dev.mqtt.expect_closed().await;
    assert_eq!(hub.stats().telemetry_messages, 2);
    hub.shutdown().await;
}

#[tokio::test]
async fn undocumented_topics_close_the_connection() {
    let hub = crate::common::start().await;
    for topic in [
        "some/topic",
        "$iothub/twin/PATCH/properties/desired/?$rid=1",
        "$iothub/twin/GET/",
    ] {
        let mut dev = Device::create_and_connect(&hub, "d1").await;
        dev.mqtt.publish(topic, QoS::AtMostOnce, b"{}").await;
        dev.mqtt.expect_closed().await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn twin_errors_carry_status_and_error_code() {
    let hub = crate::common::start().await;
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtLeastOnce)])
        .await;
    // Malformed JSON.
    dev.mqtt
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=a",
            QoS::AtLeastOnce,
            b"{not json",
        )
        .await;
    let p = dev.mqtt.next_publish().await;
    assert!(
        p.topic.starts_with("$iothub/twin/res/400/?$rid=a"),
        "{}",
        p.topic
    );
    let body: Value = serde_json::from_slice(&p.payload).expect("json");
    assert_eq!(body["errorCode"], 400006);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    // Twin rules: bad key, too deep, too large.
    let mut deep = json!(1);
    for _ in 0..12 {
        deep = json!({ "x": deep });
    }
    let big: serde_json::Map<String, Value> = (0..9)
        .map(|i| (format!("k{i}"), json!("y".repeat(4000))))
        .collect();
    for (rid, patch) in [
        ("b", json!({"bad key": 1})),
        ("c", deep),
        ("d", Value::Object(big)),
        ("e", json!({"s": "z".repeat(5000)})),
    ] {
        let (topic, body) = dev.report(rid, &patch).await;
        assert!(
            topic.starts_with(&format!("$iothub/twin/res/400/?$rid={rid}")),
            "{topic}"
        );
        assert_eq!(body["errorCode"], 400004, "{body}");
    }
    // Nothing was applied.
    let (_, twin) = dev.twin_get("f").await;
    assert_eq!(twin["reported"], json!({"$version": 1}));
    hub.shutdown().await;
}

#[tokio::test]
async fn desired_notifications_go_only_to_subscribed_connected_devices_in_order() {
    let hub = crate::common::start().await;
    let client = service_client(&hub);
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    // Offline changes are not queued; the device reads the twin on reconnect.
    drop(dev);
    client
        .patch("d1", &TwinPatch::desired(json!({"a": 1})), None)
        .await
        .expect("desired patched");
    dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .subscribe(&[
            ("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce),
            ("$iothub/twin/res/#", QoS::AtLeastOnce),
        ])
        .await;
    let (_, twin) = dev.twin_get("g").await;
    assert_eq!(twin["desired"], json!({"a": 1, "$version": 2}));
    for v in 2..=5 {
        client
            .patch(
                "d1",
                &TwinPatch::desired(json!({"a": v, "gone": null})),
                None,
            )
            .await
            .expect("desired patched");
    }
    for v in 3..=6u64 {
        let note = dev.mqtt.next_publish().await;
        assert_eq!(
            note.topic,
            format!("$iothub/twin/PATCH/properties/desired/?$version={v}")
        );
        let body: Value = serde_json::from_slice(&note.payload).expect("json");
        assert_eq!(body["$version"], v);
        assert_eq!(body["gone"], Value::Null, "deletes are sent as null");
    }
    // A tags-only change sends nothing.
    client
        .patch("d1", &TwinPatch::tags(json!({"t": 1})), None)
        .await
        .expect("tags patched");
    dev.mqtt.send(&Packet::PingReq).await.expect("send");
    assert_eq!(dev.mqtt.recv().await, Some(Packet::PingResp));
    hub.shutdown().await;
}

#[tokio::test]
async fn disabling_or_deleting_a_device_closes_its_connection() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    let r = api
        .answer(
            Call::put("/devices/d1")
                .json(&json!({"deviceId": "d1", "status": "disabled"}))
                .header("If-Match", "*"),
        )
        .await;
    assert_eq!(r.status, 200);
    dev.mqtt.expect_closed().await;

    let mut other = Device::create_and_connect(&hub, "d2").await;
    assert_eq!(api.delete("/devices/d2").await.status, 204);
    other.mqtt.expect_closed().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let hub = crate::common::start().await;
    let cs = hub.create_device("d1", Value::Null).await.expect("device");
    let mut mqtt = RawMqtt::open(hub.mqtt_addr().expect("mqtt"))
        .await
        .expect("tcp connect");
    let ack = mqtt
        .connect_raw(
            "d1",
            &username("localhost", "d1"),
            &device_token(&cs, now() + 3600),
            true,
            60,
        )
        .await
        .expect("connack");
    assert_eq!(ack.code, ConnectReturnCode::Success);
    // A device that pings in time stays connected ...
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(80)).await;
    mqtt.send(&Packet::PingReq).await.expect("send");
    assert_eq!(mqtt.recv_forever().await, Some(Packet::PingResp));
    // ... one that goes silent is dropped after 1.5 × 60 s.
    let started = tokio::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(1000), mqtt.recv_forever()).await;
    assert_eq!(closed, Ok(None), "the hub closes a silent connection");
    assert!(
        started.elapsed() >= Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
    drop(mqtt);
    tokio::time::resume();
    hub.shutdown().await;
}

#[tokio::test]
async fn garbage_truncated_and_oversized_packets_only_hurt_their_own_connection() {
    let hub = crate::common::start().await;
    let addr = hub.mqtt_addr().expect("mqtt");
    let mut good = Device::create_and_connect(&hub, "good").await;
    good.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtLeastOnce)])
        .await;

    // Garbage before CONNECT.
    let mut bad = RawMqtt::open(addr).await.expect("tcp connect");
    let _ = bad
        .send_bytes(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02])
        .await;
    assert!(bad.recv().await.is_none());
    // A packet that is not CONNECT first.
    let mut bad = RawMqtt::open(addr).await.expect("tcp connect");
    bad.send(&Packet::PingReq).await.expect("send");
    assert!(bad.recv().await.is_none());
    // A remaining length far beyond the limit: refused from the header, nothing buffered.
    let mut bad = RawMqtt::open(addr).await.expect("tcp connect");
    let _ = bad.send_bytes(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await;
    assert!(bad.recv().await.is_none());
    // Garbage after a valid CONNECT.
    let mut bad = Device::create_and_connect(&hub, "bad").await;
    let _ = bad.mqtt.send_bytes(&[0x00, 0x00, 0xff]).await;
    bad.mqtt.expect_closed().await;
    // An oversized PUBLISH after CONNECT.
    let mut bad = Device::create_and_connect(&hub, "bad").await;
    let huge = vec![b'x'; 300 * 1024];
    bad.mqtt
        .publish("devices/bad/messages/events/", QoS::AtMostOnce, &huge)
        .await;
    bad.mqtt.expect_closed().await;
    // Truncated: half a packet, then the client goes away.
    let mut bad = RawMqtt::open(addr).await.expect("tcp connect");
    let _ = bad.send_bytes(&[0x10, 0x20, 0x00, 0x04, b'M']).await;
    drop(bad);

    // The good device never noticed.
    let (topic, _) = good.twin_get("still-here").await;
    assert_eq!(topic, "$iothub/twin/res/200/?$rid=still-here");
    hub.shutdown().await;
}

#[tokio::test]
async fn mqtt_over_tls_with_the_generated_ca_and_rumqttc() {
    let hub = crate::common::start().await;
    let cs = hub
        .create_device("tls-dev", Value::Null)
        .await
        .expect("device");
    let ca = hub.ca_pem().expect("ca").to_owned();
    let addr = hub.mqtts_addr().expect("mqtts");

    let mut options = rumqttc::MqttOptions::new("tls-dev", "localhost", addr.port());
    options.set_credentials(
        username("localhost", "tls-dev"),
        device_token(&cs, now() + 3600),
    );
    options.set_clean_session(false);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(crate::common::client_tls(&ca)),
    ));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    client
        .subscribe("$iothub/twin/res/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client
        .publish("$iothub/twin/GET/?$rid=tls1", QoS::AtLeastOnce, false, " ")
        .await
        .expect("publish");
    let response = tokio::time::timeout(casement_tests::mqtt::WAIT, async {
        loop {
            match events.poll().await.expect("event loop") {
                rumqttc::Event::Incoming(Packet::Publish(p)) => return p,
                _ => continue,
            }
        }
    })
    .await
    .expect("twin response over TLS");
    assert_eq!(response.topic, "$iothub/twin/res/200/?$rid=tls1");

    // A client that does not trust the CA cannot connect.
    let empty = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(empty));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    assert!(connector.connect(name, tcp).await.is_err());
    hub.shutdown().await;
}

#[tokio::test]
async fn connections_are_capped() {
    let config = casement_hub::HubConfig {
        limits: casement_hub::Limits {
            max_mqtt_connections: 1,
            ..casement_hub::Limits::default()
        },
        ..casement_hub::HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    let mut first = Device::create_and_connect(&hub, "d1").await;
    // Over the cap: closed before any packet is read.
    let mut second = RawMqtt::open(hub.mqtt_addr().expect("mqtt"))
        .await
        .expect("tcp connect");
    assert!(second.recv().await.is_none());
    // The first connection is unaffected, and its slot is reusable once it is gone.
    first.mqtt.send(&Packet::PingReq).await.expect("send");
    assert_eq!(first.mqtt.recv().await, Some(Packet::PingResp));
    drop(first);
    let again = tokio::time::timeout(casement_tests::mqtt::WAIT, async {
        loop {
            let cs = hub.device_connection_string("d1").expect("cs");
            let mut mqtt = RawMqtt::open(hub.mqtt_addr().expect("mqtt"))
                .await
                .expect("tcp connect");
            let token = device_token(&cs, now() + 3600);
            mqtt.send(&Packet::Connect({
                let mut c = rumqttc::mqttbytes::v4::Connect::new("d1");
                c.set_login(username("localhost", "d1"), token);
                c
            }))
            .await
            .expect("send");
            if let Some(Packet::ConnAck(ack)) = mqtt.recv().await {
                return ack.code;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("reconnect once the slot is free");
    assert_eq!(again, ConnectReturnCode::Success);
    hub.shutdown().await;
}

#[tokio::test]
async fn throttled_connections_and_twin_reads() {
    use casement_hub::{Operation, Rate, ThrottleConfig};
    let config = casement_hub::HubConfig {
        throttle: ThrottleConfig::none()
            .with(Operation::Connections, Rate::per_minute(1.0))
            .with(Operation::TwinReads, Rate::per_minute(1.0)),
        ..casement_hub::HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    let mut dev = Device::create_and_connect(&hub, "d1").await;
    dev.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;
    let (topic, _) = dev.twin_get("1").await;
    assert!(topic.starts_with("$iothub/twin/res/200/"));
    let (topic, body) = dev.twin_get("2").await;
    assert!(topic.starts_with("$iothub/twin/res/429/?$rid=2"), "{topic}");
    assert_eq!(body["errorCode"], 429001);
    // A second new connection within the minute: CONNACK "server unavailable".
    let cs = hub.device_connection_string("d1").expect("cs");
    assert_eq!(
        connect_code(
            &hub,
            "d1",
            &username("localhost", "d1"),
            &device_token(&cs, now() + 3600)
        )
        .await,
        ConnectReturnCode::ServiceUnavailable
    );
    hub.shutdown().await;
}
