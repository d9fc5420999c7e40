//! Persistence in sled: registry, keys, twins, policies, certificates and CleanSession=0
//! sessions survive a restart on the same data directory — and acknowledged writes survive
//! `kill -9` of the hub's process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use casement_hub::HubConfig;
use casement_iothub::rest::TwinPatch;
use casement_tests::hub::service_client;
use casement_tests::mqtt::Device;
use casement_tests::rest::Rest;
use rumqttc::mqttbytes::QoS;
use serde_json::{Value, json};

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let hub = crate::common::start_with(HubConfig::for_tests_in(dir.path())).await;
    let api = Rest::of(&hub);
    let service_cs = hub.policy_connection_string("service").expect("service");
    let ca = hub.ca_pem().expect("ca").to_owned();
    let device_cs = hub
        .create_device("d1", json!({"site": "ams"}))
        .await
        .expect("d1");
    service_client(&hub)
        .patch("d1", &TwinPatch::desired(json!({"fw": "2.0"})), None)
        .await
        .expect("desired patched");
    let mut dev = Device::connect(&hub, "d1", &device_cs, false).await;
    dev.mqtt
        .subscribe(&[
            ("$iothub/methods/POST/#", QoS::AtMostOnce),
            ("$iothub/twin/res/#", QoS::AtMostOnce),
        ])
        .await;
    let (topic, _) = dev.report("r", &json!({"state": "ok"})).await;
    assert!(topic.ends_with("$version=2"));
    drop(dev);
    let before = api.get("/twins/d1").await.json();
    hub.shutdown().await;

    let hub = crate::common::start_with(HubConfig::for_tests_in(dir.path())).await;
    // Same keys, same policies, same CA: every connection string still works.
    assert_eq!(
        hub.policy_connection_string("service")
            .expect("service")
            .split(';')
            .nth(2),
        service_cs.split(';').nth(2)
    );
    assert_eq!(hub.ca_pem(), Some(ca.as_str()));
    assert_eq!(
        hub.device_connection_string("d1")
            .expect("d1")
            .split(';')
            .nth(2),
        device_cs.split(';').nth(2)
    );
    let api = Rest::of(&hub);
    let after = api.get("/twins/d1").await.json();
    for field in ["tags", "version", "etag"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(
        after["properties"]["desired"],
        before["properties"]["desired"]
    );
    assert_eq!(
        after["properties"]["reported"],
        before["properties"]["reported"]
    );
    assert_eq!(after["connectionState"], "Disconnected");

    // The CleanSession=0 session survived too: no re-subscribe needed for methods.
    let mut dev = Device::connect(&hub, "d1", &device_cs, false).await;
    assert!(dev.session_present);
    let call = api.invoke_in_background("d1", json!({"methodName": "reboot"}));
    let request = dev.mqtt.next_publish().await;
    let rid = request.topic.split("$rid=").nth(1).expect("rid").to_owned();
    dev.mqtt
        .publish(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            b"1",
        )
        .await;
    assert_eq!(call.await.expect("join").json()["status"], 200);

    // connection.env has the owner connection string and the CA path.
    let env = std::fs::read_to_string(dir.path().join("connection.env")).expect("connection.env");
    assert!(env.contains(&format!(
        "IOTHUB_CONNECTION_STRING='{}'",
        hub.service_connection_string()
    )));
    assert!(env.contains("ca.pem"));
    hub.shutdown().await;
}

#[tokio::test]
async fn a_second_hub_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let hub = crate::common::start_with(HubConfig::for_tests_in(dir.path())).await;
    let err = casement_hub::Hub::start(HubConfig::for_tests_in(dir.path()))
        .await
        .expect_err("locked");
    assert!(err.to_string().contains("another `casement hub`"), "{err}");
    hub.shutdown().await;
}

const CHILD_ENV: &str = "CASEMENT_HUB_KILL9_CHILD_DIR";

/// Not a test: the hub process the kill -9 test starts and kills.
#[tokio::test]
#[ignore = "helper process for acknowledged_writes_survive_kill_9"]
async fn kill9_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let hub = crate::common::start_with(HubConfig::for_tests_in(&dir)).await;
    let client = service_client(&hub);
    client
        .create_device("k1", &serde_json::Map::new())
        .await
        .expect("k1 created");
    let patch = TwinPatch {
        tags: Some(json!({"t": 1})),
        ..TwinPatch::desired(json!({"d": 2}))
    };
    client.patch("k1", &patch, None).await.expect("k1 patched");
    let cs = hub.device_connection_string("k1").expect("cs");
    let mut dev = Device::connect(&hub, "k1", &cs, false).await;
    dev.mqtt
        .subscribe(&[("$iothub/twin/res/#", QoS::AtMostOnce)])
        .await;
    let (topic, _) = dev.report("r", &json!({"r": 3})).await;
    assert!(topic.contains("res/204"));
    println!("READY");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--ignored",
            "--exact",
            "persistence::kill9_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child hub");
    let stdout = child.stdout.take().expect("stdout");
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("READY"))
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("child ready in time")
        .expect("join");
    assert!(ready, "child hub reported READY");
    child.kill().expect("SIGKILL"); // kill -9 on Unix
    child.wait().expect("reaped");

    let hub = crate::common::start_with(HubConfig::for_tests_in(dir.path())).await;
    let twin = Rest::of(&hub).get("/twins/k1").await;
    assert_eq!(twin.status, 200, "the device survived");
    assert_eq!(twin.json()["tags"], json!({"t": 1}));
    assert_eq!(twin.json()["properties"]["desired"]["d"], 2);
    assert_eq!(twin.json()["properties"]["reported"]["r"], 3);
    assert_eq!(
        twin.json()["properties"]["reported"]["$version"],
        Value::from(2)
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn the_start_up_banner_says_how_to_connect_and_trust() {
    let dir = tempfile::tempdir().expect("dir");
    let hub = crate::common::start_with(HubConfig::for_tests_in(dir.path())).await;
    let banner = casement_hub::startup_banner(&hub);
    let ca = std::fs::canonicalize(hub.ca_path().expect("ca")).expect("abs");
    for needle in [
        format!("NODE_EXTRA_CA_CERTS={}", ca.display()),
        format!("REQUESTS_CA_BUNDLE={}", ca.display()),
        format!("--ca {}", ca.display()),
        hub.service_connection_string(),
        format!("mqtt://{}", hub.mqtt_addr().expect("mqtt")),
        format!("mqtts://{}", hub.mqtts_addr().expect("mqtts")),
        format!("http://{}", hub.http_addr().expect("http")),
        "connection.env".to_owned(),
    ] {
        assert!(
            banner.contains(&needle),
            "banner lacks {needle:?}:\n{banner}"
        );
    }
    hub.shutdown().await;
}
