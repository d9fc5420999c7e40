//! Every valid device id round-trips through the client against the real hub: ids with the
//! punctuation IoT Hub allows are encoded in paths and reach their own device, and the two ids
//! no URL can carry (`.` and `..`) are refused by the hub at creation and by the client before
//! anything is sent.

use std::sync::Arc;

use casement_client::{ClientConfig, ClientError, HubTarget, ServiceClient};
use casement_hub::{Hub, HubConfig};
use casement_iothub::clock::SystemClock;
use casement_iothub::rest::{MethodRequest, TwinPatch};
use serde_json::json;

const ODD_IDS: [&str; 10] = [
    "a.b", "...", ".hidden", "d%41", "d$x", "(x)", "it's", "a:b=c@d", "q?x*y!", "s,t_u-v",
];

#[tokio::test]
async fn every_valid_id_reaches_its_own_twin_and_dot_ids_are_refused() {
    casement_client::ensure_crypto_provider();
    let hub = Hub::start(HubConfig::for_tests()).await.expect("hub");
    let target = HubTarget::new(hub.service_connection_string().parse().expect("cs"))
        .with_endpoint(&hub.http_url().expect("http"))
        .expect("endpoint");
    let client =
        ServiceClient::new(target, ClientConfig::default(), Arc::new(SystemClock)).expect("client");

    // A twin per odd id, each patched with its own id, read back through its own path.
    for id in ODD_IDS {
        hub.create_device(id, json!({ "id": id }))
            .await
            .unwrap_or_else(|e| panic!("create {id:?}: {e}"));
        let twin = client
            .patch(id, &TwinPatch::desired(json!({ "mine": id })), None)
            .await
            .unwrap_or_else(|e| panic!("patch {id:?}: {e}"));
        assert_eq!(twin.device_id, id);
    }
    for id in ODD_IDS {
        let twin = client
            .twin(id)
            .await
            .unwrap_or_else(|e| panic!("get {id:?}: {e}"));
        assert_eq!(twin.device_id, id);
        assert_eq!(twin.properties.desired["mine"], json!(id), "{id:?}");
        assert_eq!(twin.tags["id"], json!(id), "{id:?}");
    }
    // The method path too: the device is offline, and the hub says so for *this* device.
    let err = client
        .invoke("a.b", &MethodRequest::new("reboot", json!(null), 5))
        .await
        .expect_err("offline");
    assert!(err.is_device_offline(), "{err}");

    // "." and "..": the hub refuses to create them; the client refuses to address them.
    for id in [".", ".."] {
        let err = hub
            .create_device(id, serde_json::Value::Null)
            .await
            .expect_err(id);
        assert!(err.to_string().contains("cannot be addressed"), "{err}");
        let err = client.twin(id).await.expect_err(id);
        assert!(matches!(err, ClientError::Invalid { .. }), "{err}");
        assert!(!err.is_unavailable(), "a bad id is not 'try again later'");
        assert!(err.to_string().contains("rename the device"), "{err}");
    }
    hub.shutdown().await;
}
