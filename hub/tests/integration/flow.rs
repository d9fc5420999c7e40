//! The core path end to end: a device over MQTT and the service over REST, as the agent and the
//! scheduler use the hub (reference §7 "Observed wire trace").

use casement_tests::mqtt::Device;
use casement_tests::rest::Rest;
use rumqttc::mqttbytes::QoS;
use serde_json::json;

#[tokio::test]
async fn device_and_service_talk_through_the_hub() {
    let hub = crate::common::start().await;
    let api = Rest::of(&hub);

    // Create over REST: 200 (not 201), keys generated from the empty strings Node sends.
    let created = api
        .put(
            "/devices/dev1",
            &json!({"deviceId": "dev1", "authentication": {"type": "sas",
                "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}}),
        )
        .await;
    assert_eq!(created.status, 200, "{created:?}");
    assert!(
        created
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let key = created.json()["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("generated key")
        .to_owned();
    assert!(!key.is_empty());
    let cs = format!("HostName=localhost;DeviceId=dev1;SharedAccessKey={key}");

    // Connect (CleanSession=0, as both SDKs do) and subscribe like the Node SDK.
    let mut dev = Device::connect(&hub, "dev1", &cs, false).await;
    let ack = dev
        .mqtt
        .subscribe(&[
            ("$iothub/methods/POST/#", QoS::AtMostOnce),
            ("$iothub/twin/res/#", QoS::AtLeastOnce),
            ("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(ack.return_codes.len(), 3);

    // Twin GET with the " " body both SDKs send; $version always present.
    let (topic, body) = dev.twin_get("r1").await;
    assert_eq!(topic, "$iothub/twin/res/200/?$rid=r1");
    assert_eq!(
        body,
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );

    // Reported patch → 204 with the new reported version.
    let (topic, _) = dev
        .report(
            "r2",
            &json!({"iothubDM": {"reboot": {"lastReboot": "2026-11-29T01:04:10.000Z"}}}),
        )
        .await;
    assert_eq!(topic, "$iothub/twin/res/204/?$rid=r2&$version=2");

    // The service sees it, with connectionState and $metadata.
    let twin = api.get("/twins/dev1").await;
    assert_eq!(twin.status, 200);
    assert_eq!(twin.json()["connectionState"], "Connected");
    assert_eq!(
        twin.json()["properties"]["reported"]["iothubDM"]["reboot"]["lastReboot"],
        "2026-11-29T01:04:10.000Z"
    );
    assert!(twin.json()["properties"]["reported"]["$metadata"]["$lastUpdated"].is_string());

    // A desired patch reaches the device with $version in topic and body.
    let patched = api
        .patch(
            "/twins/dev1",
            &json!({"properties": {"desired": {"fw": "2.0"}}}),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    let note = dev.mqtt.next_publish().await;
    assert_eq!(
        note.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    let body: serde_json::Value = serde_json::from_slice(&note.payload).expect("json");
    assert_eq!(body, json!({"fw": "2.0", "$version": 2}));

    // A direct method round trip: the hub's rid has no '&' or '='.
    let invoke = api.invoke_in_background(
        "dev1",
        json!({"methodName": "reboot", "payload": null, "timeoutInSeconds": 30,
               "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 0}),
    );
    let request = dev.mqtt.next_publish().await;
    let rid = request
        .topic
        .strip_prefix("$iothub/methods/POST/reboot/?$rid=")
        .expect("method topic")
        .to_owned();
    assert!(!rid.contains(['&', '=']));
    assert_eq!(&request.payload[..], b"null");
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            b"\"Reboot started\"",
        )
        .await;
    let answer = invoke.await.expect("join");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json(),
        json!({"status": 200, "payload": "Reboot started"})
    );

    // Query.
    let rows = api
        .query("SELECT deviceId FROM devices WHERE properties.reported.iothubDM.reboot.lastReboot >= '2026-01-01'", None, None)
        .await;
    assert_eq!(rows.status, 200);
    assert_eq!(rows.json(), json!([{"deviceId": "dev1"}]));
    assert_eq!(rows.header("x-ms-item-type"), Some("raw"));
    assert_eq!(rows.header("x-ms-continuation"), None);

    // Unknown device: 404 DeviceNotFound, ErrorCode form.
    let missing = api.get("/twins/nosuch").await;
    missing.expect_error(404, "DeviceNotFound");
    assert_eq!(missing.json()["Message"], "ErrorCode:DeviceNotFound;nosuch");

    assert_eq!(hub.stats().connected_devices, 1);
    hub.shutdown().await;
}
