//! Conformance with Microsoft's official Python SDKs — azure-iot-device 2.14.0 (v2) and
//! azure-iot-hub 2.7.0 — run unmodified against the hub (reference §7).
//!
//! The Python device SDK is hard-wired to port 8883, so this test binds 127.0.0.1:8883; it is
//! the only test in this binary, so the scripts never run in parallel with each other. Python
//! comes from `$CASEMENT_SDK_PYTHON`, else `<repo>/target/sdk-venv/bin/python` (made by
//! `hub/tests/sdk/setup.sh`, which `scripts/test` runs). The test is `#[ignore]`d, so a plain
//! `cargo test` reports it as ignored rather than passed; `scripts/test` runs it with
//! `--include-ignored`, and then a missing venv fails it with what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use casement_hub::{Hub, HubConfig, Storage};
use serde_json::Value;

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CASEMENT_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv/bin/python");
    venv.exists().then_some(venv)
}

/// Runs one script; returns the checks it printed (name → ok) after asserting it passed.
async fn run_script(python: &Path, script: &str, envs: &[(&str, String)]) -> Vec<(String, bool)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within 180 s"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let checks: Vec<(String, bool)> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["check"].as_str()?.to_owned(), v["ok"].as_bool()?)))
        .collect();
    assert!(
        output.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    checks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDK venv (hub/tests/sdk/setup.sh) and port 8883; scripts/test runs it"]
async fn official_python_sdks_work_unmodified() {
    let Some(python) = python() else {
        panic!(
            "SDK conformance: no Python SDK venv (run hub/tests/sdk/setup.sh, or set CASEMENT_SDK_PYTHON)"
        );
    };
    casement_tests::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HubConfig {
        mqtts: Some("127.0.0.1:8883".parse().expect("addr")),
        storage: Storage::Dir(dir.path().to_owned()),
        // configurations.py waits for the background evaluation, as an Azure client would.
        configuration_interval: Some(Duration::from_millis(200)),
        ..HubConfig::for_tests()
    };
    let hub = Hub::start(config)
        .await
        .unwrap_or_else(|e| panic!("the SDK test needs 127.0.0.1:8883 free: {e}"));
    let ca = hub.ca_path().expect("generated CA").display().to_string();
    // HostName=localhost:<https port>: the Python service SDK honours the port (reference §7).
    let service_cs = hub.service_connection_string();
    assert!(
        service_cs.starts_with("HostName=localhost:"),
        "{service_cs}"
    );
    let envs = [
        ("HUB_SERVICE_CS", service_cs),
        ("HUB_CA", ca.clone()),
        ("REQUESTS_CA_BUNDLE", ca),
    ];

    let flow = run_script(&python, "device_and_service.py", &envs).await;
    let not_found = run_script(&python, "not_found.py", &envs).await;
    let configurations = run_script(&python, "configurations.py", &envs).await;
    hub.shutdown().await;

    let all: Vec<&(String, bool)> = flow
        .iter()
        .chain(&not_found)
        .chain(&configurations)
        .collect();
    for expected in [
        "device create",
        "device get",
        "device connect",
        "twin get",
        "reported patch",
        "twin connectionState",
        "service update_twin",
        "desired-patch notification",
        "direct method",
        "query page 1",
        "query last page",
        "query count",
        "device delete",
        "get_device unknown → 404",
        "get_twin unknown → 404",
        "404 carries ErrorCode:DeviceNotFound",
        "update_twin unknown → 404",
        "delete_device unknown → 404",
        "invoke_device_method unknown → 404",
        "invoke_device_method offline → 404",
        "offline is DeviceNotOnline",
        "bulk create",
        "bulk create tags",
        "bulk create existing → error entry",
        "device registry statistics",
        "service statistics",
        "configuration create",
        "configuration get",
        "configuration list",
        "configuration list max_count",
        "configuration test queries",
        "evaluation applies content",
        "higher priority wins",
        "systemMetrics counts",
        "device tagged later gets content",
        "configuration update priority and target",
        "lower priority gives way",
        "configuration content change → 400",
        "configuration stale etag → 412",
        "configuration create existing → 409",
        "configuration delete → get 404",
        "deleting keeps desired properties",
        "bulk delete",
    ] {
        assert!(
            all.iter().any(|(name, ok)| name == expected && *ok),
            "check {expected:?} missing or failed: {all:?}"
        );
    }
}
