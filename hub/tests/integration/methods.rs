//! Direct methods: IoT Hub's timeouts and error codes, the connect-timeout wait, the in-flight
//! cap, and that a device answers only its own requests. Also the HTTP connection limits a
//! long method call must not trip: the idle/header timeout and the request-body deadline.

use std::time::Duration;

use casement_hub::{HubConfig, Limits};
use casement_tests::mqtt::Device;
use casement_tests::rest::Rest;
use rumqttc::mqttbytes::QoS;
use serde_json::{Value, json};

async fn subscribed(hub: &casement_hub::RunningHub, id: &str) -> Device {
    let mut dev = Device::create_and_connect(hub, id).await;
    dev.mqtt
        .subscribe(&[("$iothub/methods/POST/#", QoS::AtMostOnce)])
        .await;
    dev
}

/// Reads the next method request: (name, rid, payload).
async fn next_request(dev: &mut Device) -> (String, String, Value) {
    let p = dev.mqtt.next_publish().await;
    let rest = p
        .topic
        .strip_prefix("$iothub/methods/POST/")
        .expect("method topic");
    let (name, rid) = rest.split_once("/?$rid=").expect("rid");
    assert_eq!(p.qos, QoS::AtMostOnce, "method requests go at QoS 0");
    (
        name.to_owned(),
        rid.to_owned(),
        serde_json::from_slice(&p.payload).expect("json"),
    )
}

#[tokio::test]
async fn device_status_and_payload_pass_through() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let mut dev = subscribed(&hub, "d1").await;
    let call = api.invoke_in_background(
        "d1",
        json!({"methodName": "reboot", "payload": {"policy": "p", "n": 1},
               "responseTimeoutInSeconds": 30}),
    );
    let (name, rid, payload) = next_request(&mut dev).await;
    assert_eq!(name, "reboot");
    assert_eq!(payload, json!({"policy": "p", "n": 1}));
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/409/?$rid={rid}"),
            QoS::AtMostOnce,
            br#"{"reason":"outside-window"}"#,
        )
        .await;
    let r = call.await.expect("join");
    assert_eq!(
        r.status, 200,
        "the invocation succeeded; the device chose 409"
    );
    assert_eq!(
        r.json(),
        json!({"status": 409, "payload": {"reason": "outside-window"}})
    );
    // An empty answer body is a null payload.
    let call = api.invoke_in_background("d1", json!({"methodName": "ping"}));
    let (_, rid, payload) = next_request(&mut dev).await;
    assert_eq!(payload, Value::Null);
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            b"",
        )
        .await;
    assert_eq!(
        call.await.expect("join").json(),
        json!({"status": 200, "payload": null})
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn no_answer_in_time_is_504_gateway_timeout() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let mut dev = subscribed(&hub, "d1").await;
    tokio::time::pause();
    let call = api.invoke_in_background(
        "d1",
        json!({"methodName": "slow", "responseTimeoutInSeconds": 5}),
    );
    let (_, rid, _) = next_request(&mut dev).await;
    let r = call.await.expect("join");
    r.expect_error(504, "GatewayTimeout");
    // A late answer is dropped quietly; the connection stays up.
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            b"{}",
        )
        .await;
    assert_eq!(hub.stats().methods_in_flight, 0);
    tokio::time::resume();
    hub.shutdown().await;
}

#[tokio::test]
async fn offline_or_unsubscribed_devices_are_404103_and_unknown_devices_404001() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("offline", Value::Null)
        .await
        .expect("device");
    let method = json!({"methodName": "reboot", "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 0});
    api.invoke("offline", &method)
        .await
        .expect_error(404, "DeviceNotOnline");
    // Connected but not subscribed to methods.
    let _dev = Device::create_and_connect(&hub, "unsubscribed").await;
    api.invoke("unsubscribed", &method)
        .await
        .expect_error(404, "DeviceNotOnline");
    api.invoke("nosuch", &method)
        .await
        .expect_error(404, "DeviceNotFound");
    hub.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_waits_for_the_device_to_connect_and_subscribe() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("late", Value::Null)
        .await
        .expect("device");
    let call = api.invoke_in_background(
        "late",
        json!({"methodName": "reboot", "responseTimeoutInSeconds": 30,
               "connectTimeoutInSeconds": 60}),
    );
    // Connecting is not enough; the call waits for the methods subscription too.
    let mut dev = Device::create_and_connect(&hub, "late").await;
    dev.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;
    dev.mqtt
        .subscribe(&[("$iothub/methods/POST/#", QoS::AtMostOnce)])
        .await;
    let (_, rid, _) = next_request(&mut dev).await;
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            b"\"ok\"",
        )
        .await;
    let r = call.await.expect("join");
    assert_eq!(r.json(), json!({"status": 200, "payload": "ok"}));
    hub.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_expiry_is_404103() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    hub.create_device("never", Value::Null)
        .await
        .expect("device");
    tokio::time::pause();
    let r = api
        .invoke(
            "never",
            &json!({"methodName": "reboot", "connectTimeoutInSeconds": 20}),
        )
        .await;
    r.expect_error(404, "DeviceNotOnline");
    assert!(
        r.json()["Message"]
            .as_str()
            .is_some_and(|m| m.contains("Timed out waiting for device"))
    );
    tokio::time::resume();
    hub.shutdown().await;
}

#[tokio::test]
async fn timeouts_out_of_range_are_400() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let _dev = subscribed(&hub, "d1").await;
    for body in [
        json!({"methodName": "m", "responseTimeoutInSeconds": 4}),
        json!({"methodName": "m", "responseTimeoutInSeconds": 301}),
        json!({"methodName": "m", "connectTimeoutInSeconds": 301}),
        json!({"methodName": ""}),
        json!({"payload": 1}),
    ] {
        let r = api.invoke("d1", &body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn in_flight_methods_are_capped() {
    let config = HubConfig {
        limits: Limits {
            max_inflight_methods: 1,
            ..Limits::default()
        },
        ..HubConfig::for_tests()
    };
    let hub = crate::common::start_with(config).await;
    let api = Rest::of(&hub);
    let mut dev = subscribed(&hub, "d1").await;
    let first = api.invoke_in_background("d1", json!({"methodName": "a"}));
    let (_, rid, _) = next_request(&mut dev).await;
    api.invoke("d1", &json!({"methodName": "b"}))
        .await
        .expect_error(429, "ThrottlingException");
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            b"1",
        )
        .await;
    assert_eq!(first.await.expect("join").status, 200);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_device_cannot_answer_another_devices_method() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let mut victim = subscribed(&hub, "victim").await;
    let mut intruder = subscribed(&hub, "intruder").await;
    let call = api.invoke_in_background("victim", json!({"methodName": "reboot"}));
    let (_, rid, _) = next_request(&mut victim).await;
    intruder
        .mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            b"\"forged\"",
        )
        .await;
    victim
        .mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            b"\"genuine\"",
        )
        .await;
    let r = call.await.expect("join");
    assert_eq!(r.json()["payload"], "genuine");
    hub.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_waiting_calls() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);
    let mut dev = subscribed(&hub, "d1").await;
    let call = api.invoke_in_background(
        "d1",
        json!({"methodName": "m", "responseTimeoutInSeconds": 300}),
    );
    let _ = next_request(&mut dev).await;
    let stopped = tokio::time::timeout(Duration::from_secs(20), hub.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "graceful shutdown does not wait for the method's 300 s"
    );
    let r = call.await.expect("join");
    r.expect_error(503, "ServiceUnavailable");
}

/// Reads one HTTP/1.1 response (headers and a `content-length` body) from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before a whole response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// Waits (bounded) for the hub to close `stream`: EOF or a reset.
async fn expect_closed_by_hub(stream: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: the hub kept the connection open");
}

#[tokio::test]
async fn idle_and_trickling_http_connections_are_closed_but_a_long_method_call_is_not() {
    use tokio::io::AsyncWriteExt;
    let mut config = HubConfig::for_tests();
    config.limits.http_idle_timeout = Duration::from_millis(300);
    let hub = crate::common::start_with(config).await;
    let api = Rest::of(&hub);
    let addr = hub.http_addr().expect("http");

    // Connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Sends half a request header and stops (slowloris).
    let mut trickling = tokio::net::TcpStream::connect(addr).await.expect("connect");
    trickling
        .write_all(b"GET /devices/d1?api-version=2021-04-12 HTTP/1.1\r\nHost: hub\r\n")
        .await
        .expect("write");
    // Makes one request, keeps the connection alive, and goes quiet.
    let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET /devices/d1?api-version=2021-04-12 HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .expect("write");
    let answer = read_response(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    expect_closed_by_hub(&mut silent, "a silent connection").await;
    expect_closed_by_hub(&mut trickling, "a trickling header").await;
    expect_closed_by_hub(&mut kept, "an idle keep-alive connection").await;

    // A direct method whose device answers well after the idle limit is still answered: the
    // limit is on waiting for a request, not on handling one.
    let mut dev = subscribed(&hub, "d1").await;
    let call = api.invoke_in_background(
        "d1",
        json!({"methodName": "reboot", "responseTimeoutInSeconds": 30}),
    );
    let (_, rid, _) = next_request(&mut dev).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            br#"{"ok":true}"#,
        )
        .await;
    let r = call.await.expect("join");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"status": 200, "payload": {"ok": true}}));
    hub.shutdown().await;
}

#[tokio::test]
async fn a_trickled_request_body_gets_an_answer_and_the_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let mut config = HubConfig::for_tests();
    config.limits.http_body_timeout = Duration::from_millis(300);
    let hub = crate::common::start_with(config).await;
    let addr = hub.http_addr().expect("http");
    let token = Rest::of(&hub).service_token().expect("token");

    // Headers promise 100 bytes; 12 arrive, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(
        format!(
            "PUT /devices/d1?api-version=2021-04-12 HTTP/1.1\r\nHost: hub\r\n\
             Authorization: {token}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"deviceId\":"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(10), read_response(&mut slow))
        .await
        .expect("the hub answers a stalled body");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within 0.3 s"), "{answer}");
    expect_closed_by_hub(&mut slow, "a connection whose body stalled").await;

    // Nothing was created, and the hub serves the next client.
    let api = Rest::of(&hub);
    api.get("/devices/d1")
        .await
        .expect_error(404, "DeviceNotFound");
    hub.shutdown().await;
}
