//! Conformance with Microsoft's Node service SDK (azure-iothub 1.16.6), run unmodified against
//! the hub: configurations, the bulk registry calls, registry statistics and `Registry.list`
//! (`GET /devices/`). See docs/iothub-contract.md.
//!
//! The Node service SDK always connects to port 443 (reference §7), so this test binds
//! 127.0.0.1:443 and is the only test in this binary. It needs `node` on the PATH and the SDK
//! in `<repo>/target/node-sdk` (`hub/tests/sdk/node/setup.sh`), or `$CASEMENT_NODE_SDK`
//! pointing at a `node_modules` directory. It is `#[ignore]`d, so `cargo test` reports it as
//! ignored rather than passed; `scripts/test` installs the SDK and runs it with
//! `--include-ignored`, and then a missing SDK or port fails it with what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use casement_hub::{Hub, HubConfig};
use serde_json::Value;

fn skip(msg: &str) {
    panic!("{msg}");
}

fn node_modules() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CASEMENT_NODE_SDK") {
        return Some(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/node-sdk/node_modules");
    dir.join("azure-iothub").exists().then_some(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node's azure-iothub in target/node-sdk and port 443; scripts/test runs it"]
async fn official_node_service_sdk_works_unmodified() {
    let Some(modules) = node_modules() else {
        return skip("Node SDK conformance: no azure-iothub (run hub/tests/sdk/node/setup.sh)");
    };
    casement_tests::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HubConfig {
        https: Some("127.0.0.1:443".parse().expect("addr")),
        // The script waits for the background evaluation, as an Azure client would.
        configuration_interval: Some(Duration::from_millis(200)),
        ..HubConfig::for_tests_in(dir.path())
    };
    let hub = match Hub::start(config).await {
        Ok(hub) => hub,
        Err(e) => return skip(&format!("Node SDK conformance needs 127.0.0.1:443: {e}")),
    };
    let ca = hub.ca_path().expect("generated CA").display().to_string();
    let service_cs = hub.service_connection_string();
    assert!(
        service_cs.starts_with("HostName=localhost;"),
        "{service_cs}"
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node/configurations.js");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .env("HUB_SERVICE_CS", &service_cs)
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("NODE_PATH", &modules)
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(180), command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            hub.shutdown().await;
            return skip(&format!("Node SDK conformance: cannot run node: {e}"));
        }
        Err(_) => panic!("configurations.js did not finish within 180 s"),
    };
    hub.shutdown().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let checks: Vec<(String, bool)> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["check"].as_str()?.to_owned(), v["ok"].as_bool()?)))
        .collect();
    assert!(
        output.status.success(),
        "configurations.js failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    for expected in [
        "addDevices",
        "Registry.list (GET /devices/)",
        "getRegistryStatistics",
        "addConfiguration + getConfiguration",
        "getConfigurations",
        "addConfiguration existing → 409",
        "evaluation applies the higher priority",
        "updateConfiguration priority",
        "updateConfiguration content → 400",
        "getConfiguration removed → 404",
        "removeDevices",
    ] {
        assert!(
            checks.iter().any(|(name, ok)| name == expected && *ok),
            "check {expected:?} missing or failed: {checks:?}"
        );
    }
}
