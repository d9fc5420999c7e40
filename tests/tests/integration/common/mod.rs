//! What the whole-system test files share: a hub with two devices and clients for it, and a
//! process-wide panic counter.

use std::net::SocketAddr;
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use casement_iothub::connection_string::DeviceConnectionString;
use casement_tests::hub::TestHub;
use casement_tests::mqtt::{Credentials, RawMqtt};
use casement_tests::rest::{Call, Rest};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use serde_json::json;

/// A hang guard for one local step (not a timing assert).
pub const GUARD: Duration = Duration::from_secs(30);

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Records every panic in the process from now on that is not a test's own failed assertion
/// (tokio catches panics in spawned tasks, so a hub task that panics on bad input would
/// otherwise go unnoticed), then reports it as usual.
pub fn count_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| l.file().to_owned())
                .unwrap_or_default();
            // This crate's test files fail by panicking; those are reported by the harness.
            if !location.starts_with("tests/tests/") {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                PANICS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(format!("{location}: {message}"));
            }
            previous(info);
        }));
    });
}

/// Asserts that nothing outside the test code has panicked in this process.
pub fn assert_no_panics() {
    let panics = PANICS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert!(panics.is_empty(), "panics outside the tests: {panics:#?}");
}

/// The first `n` characters of `text`, for assertion messages about large bodies.
pub fn short(text: &str) -> String {
    const N: usize = 300;
    if text.chars().count() <= N {
        text.to_owned()
    } else {
        format!(
            "{}… ({} bytes)",
            text.chars().take(N).collect::<String>(),
            text.len()
        )
    }
}

/// Seconds since the epoch, by the system clock.
pub fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// A hub (data on disk, a 2 s CONNECT timeout) with devices `dev1` and `dev2`, and a REST
/// client with the `iothubowner` policy.
pub struct Fixture {
    pub hub: TestHub,
    pub rest: Rest,
    pub mqtt: SocketAddr,
}

impl Fixture {
    pub async fn start() -> Self {
        count_panics();
        let hub = TestHub::start_with(None, |config| {
            config.limits.connect_timeout = Duration::from_secs(2);
        })
        .await
        .expect("hub");
        for id in ["dev1", "dev2"] {
            hub.hub()
                .create_device(id, json!({"role": "gateway", "env": "test"}))
                .await
                .expect("device");
        }
        let rest =
            Rest::new(&hub.http_url().expect("http"), hub.owner().expect("owner")).expect("rest");
        let mqtt = hub.mqtt_addr().expect("mqtt");
        Self { hub, rest, mqtt }
    }

    /// A device's connection string (`HostName=localhost`).
    pub fn device_cs(&self, id: &str) -> DeviceConnectionString {
        let text = self
            .hub
            .hub()
            .device_connection_string(id)
            .expect("device exists");
        let mut cs: DeviceConnectionString = text.parse().expect("device connection string");
        cs.host_name = "localhost".into();
        cs
    }

    /// A device's SAS token.
    pub fn device_password(&self, id: &str, expiry: u64) -> String {
        Credentials::for_device(&self.device_cs(id), expiry)
            .expect("sign")
            .password
    }

    /// A device connected with its own credentials (CONNACK accepted).
    pub async fn connect_device(&self, id: &str) -> RawMqtt {
        let credentials =
            Credentials::for_device(&self.device_cs(id), unix_now() + 3600).expect("sign");
        let (mqtt, code) = RawMqtt::connect(self.mqtt, &credentials, GUARD)
            .await
            .expect("CONNACK");
        assert_eq!(code, ConnectReturnCode::Success, "{id} connects");
        mqtt
    }

    /// The hub still serves well-behaved clients: a twin write and read and a query over
    /// REST, a device session with a twin GET and a reported patch over MQTT.
    pub async fn assert_still_works(&self) {
        let patch = self
            .rest
            .call(
                Call::patch("/twins/dev2")
                    .json(&json!({"properties": {"desired": {"probe": unix_now()}}}))
                    .header("if-match", "*"),
            )
            .await
            .expect("answer");
        assert_eq!(
            patch.status,
            200,
            "a valid twin patch after bad input: {}",
            patch.text()
        );
        let rows = self
            .rest
            .query_all("SELECT deviceId FROM devices WHERE tags.role = 'gateway'")
            .await
            .expect("answer")
            .unwrap_or_else(|a| panic!("a valid query after bad input: {}", a.text()));
        assert_eq!(rows.len(), 2, "{rows:?}");

        let mut dev = self.connect_device("dev2").await;
        dev.try_subscribe(&[("$iothub/twin/res/#", QoS::AtLeastOnce)], GUARD)
            .await
            .expect("subscribe");
        let (topic, body) = dev
            .twin_request("$iothub/twin/GET/?$rid=check", b" ", GUARD)
            .await
            .expect("twin GET");
        assert!(topic.starts_with("$iothub/twin/res/200/"), "{topic}");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("twin JSON");
        assert!(body["desired"]["probe"].is_number(), "{body}");
        let (topic, _) = dev
            .twin_request(
                "$iothub/twin/PATCH/properties/reported/?$rid=check2",
                br#"{"alive": true}"#,
                GUARD,
            )
            .await
            .expect("reported patch");
        assert!(topic.starts_with("$iothub/twin/res/204/"), "{topic}");
    }
}
