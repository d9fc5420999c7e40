//! `casement apply`, `run --once` and `report`: the built binary against an in-process hub
//! (system clock), checked for output, exit codes and what reached the twins.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use casement_agent::{Simulation, SimulationConfig, simulate};
use casement_client::{ClientConfig, HubTarget, ServiceClient};
use casement_hub::{Hub, HubConfig, RunningHub};
use casement_iothub::rest::TwinPatch;
use casement_scheduler::fleet::TwinView;
use casement_tests::init_tracing;
use casement_tests::policy_file::PolicyFile;
use serde_json::{Value, json};

async fn casement(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_casement"))
        .args(args)
        .current_dir(dir)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("CASEMENT_CA")
        .env_remove("CASEMENT_ENDPOINT")
        .env_remove("CASEMENT_STATE_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run casement")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Setup {
    hub: RunningHub,
    dir: tempfile::TempDir,
    client: ServiceClient,
    url: String,
    cs: String,
}

async fn setup() -> Setup {
    init_tracing();
    let hub = Hub::start(HubConfig::for_tests()).await.unwrap();
    let url = hub.http_url().unwrap();
    let cs = hub.service_connection_string();
    let client = ServiceClient::new(
        HubTarget::new(cs.parse().unwrap())
            .with_endpoint(&url)
            .unwrap(),
        ClientConfig::default(),
        std::sync::Arc::new(casement_policy::SystemClock),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    Setup {
        hub,
        dir,
        client,
        url,
        cs,
    }
}

impl Setup {
    fn hub_flags(&self) -> Vec<String> {
        vec![
            "--hub".into(),
            self.cs.clone(),
            "--endpoint".into(),
            self.url.clone(),
        ]
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        all.extend(self.hub_flags());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        casement(self.dir.path(), &refs).await
    }

    fn policy(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join("policies").join(file), text).unwrap();
    }

    async fn desired_versions(&self) -> Vec<(String, Value)> {
        let mut v: Vec<(String, Value)> = self
            .client
            .query_all("SELECT * FROM devices")
            .await
            .unwrap()
            .into_iter()
            .map(|t| {
                (
                    t["deviceId"].as_str().unwrap().to_owned(),
                    t["properties"]["desired"].clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_validates_everything_first_plans_and_applies() {
    let s = setup().await;
    for id in ["g1", "g2", "g3"] {
        s.hub
            .create_device(id, json!({"role": "gateway"}))
            .await
            .unwrap();
    }
    s.policy("weekly.toml", &PolicyFile::default().text());
    s.policy(
        "bad-zone.toml",
        &PolicyFile {
            name: "bad-zone",
            timezone: "Europe/Amsterdan",
            ..PolicyFile::default()
        }
        .text(),
    );
    s.policy(
        "bad-cron.toml",
        &PolicyFile {
            name: "bad-cron",
            schedule: "0 25 * * *",
            ..PolicyFile::default()
        }
        .text(),
    );
    let before = s.desired_versions().await;

    let out = s.run(&["apply", "policies"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad-zone.toml:") && err.contains("Europe/Amsterdam"),
        "{err}"
    );
    assert!(err.contains("bad-cron.toml:"), "{err}");
    assert_eq!(s.desired_versions().await, before, "nothing written");

    std::fs::remove_file(s.dir.path().join("policies/bad-zone.toml")).unwrap();
    std::fs::remove_file(s.dir.path().join("policies/bad-cron.toml")).unwrap();
    let out = s
        .run(&["apply", "policies", "--plan", "--output", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["summary"]["planOnly"], true);
    assert_eq!(json["summary"]["changed"], 3);
    assert_eq!(s.desired_versions().await, before, "--plan wrote nothing");

    let out = s.run(&["apply", "policies"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("3 devices targeted, changed 3, unchanged 0, cleared 0, conflicts 0"),
        "{stdout}"
    );
    let out = s.run(&["apply", "policies"]).await;
    assert!(
        text(&out.stdout)
            .contains("3 devices targeted, changed 0, unchanged 3, cleared 0, conflicts 0"),
        "{}",
        text(&out.stdout)
    );

    // run --once: a pass, nothing in a window now, the journal created.
    let out = s
        .run(&["run", "policies", "--once", "--state-dir", "state"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("passes 1, invocations 0"),
        "{}",
        text(&out.stdout)
    );
    assert!(s.dir.path().join("state/journal").is_dir());
    // An unreachable hub is an error, not a hang.
    let out = casement(
        s.dir.path(),
        &[
            "run",
            "policies",
            "--once",
            "--state-dir",
            "state2",
            "--hub",
            &s.cs,
            "--endpoint",
            "http://127.0.0.1:9",
            "--retries",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot connect to 127.0.0.1:9") && stderr.contains("--endpoint"),
        "{stderr}"
    );
    // The same for report and query: 3 means "the hub is unavailable, try again later".
    for args in [&["report"][..], &["query", "SELECT * FROM devices"][..]] {
        let mut argv = args.to_vec();
        argv.extend([
            "--hub",
            &s.cs,
            "--endpoint",
            "http://127.0.0.1:9",
            "--retries",
            "1",
        ]);
        let out = casement(s.dir.path(), &argv).await;
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_exits_1_under_the_threshold_and_finds_the_local_hub() {
    let s = setup().await;
    // One real (simulated) device, on the system clock.
    let device =
        simulate::PlannedDevice::new("sim-0000", chrono_tz::UTC).with_tag("role", "gateway");
    let mut config = SimulationConfig::new(
        s.cs.parse().unwrap(),
        vec![device],
        s.dir.path().join("sim"),
    );
    config.hub_url = Some(s.url.clone());
    config.mqtt_endpoint = Some(
        format!("mqtt://{}", s.hub.mqtt_addr().unwrap())
            .parse()
            .unwrap(),
    );
    let sim = Simulation::start(config).await.unwrap();
    s.policy("weekly.toml", &PolicyFile::default().text());
    let out = s.run(&["apply", "policies"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Applied, its first window still to come: nothing is due, the percentage is n/a and
    // --fail-under passes, saying so (issue 12: never 100%).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !TwinView::from_twin(&s.client.twin("sim-0000").await.unwrap())
        .reported()
        .is_some_and(|r| r.status == casement_policy::MaintenanceStatus::Applied)
    {
        assert!(tokio::time::Instant::now() < deadline, "never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = s
        .run(&["report", "--format", "csv", "--fail-under", "100"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .lines()
            .nth(1)
            .is_some_and(|l| l.ends_with(",n/a")),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("not applicable"),
        "{}",
        text(&out.stderr)
    );

    // The device rejects what it is given: not compliant, and counted as due.
    let mut bad = TwinView::from_twin(&s.client.twin("sim-0000").await.unwrap())
        .desired_raw
        .unwrap();
    bad["window"]["timezone"] = json!("Nowhere/Special");
    s.client
        .patch(
            "sim-0000",
            &TwinPatch::desired(json!({"maintenance": bad})),
            None,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = TwinView::from_twin(&s.client.twin("sim-0000").await.unwrap());
        if view
            .reported()
            .is_some_and(|r| r.status == casement_policy::MaintenanceStatus::Rejected)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never rejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let out = s
        .run(&["report", "--format", "csv", "--fail-under", "50"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let csv = text(&out.stdout);
    assert_eq!(
        csv.lines().nth(1),
        Some("weekly,1,0,0,1,0,0,0,0,0,0,0,0,0,0.0"),
        "{csv}"
    );
    assert!(
        text(&out.stderr).contains("below --fail-under 50"),
        "{}",
        text(&out.stderr)
    );
    let out = s.run(&["report", "--devices"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("sim-0000  weekly  rejected")
            || text(&out.stdout).contains("rejected"),
        "{}",
        text(&out.stdout)
    );

    // Without --hub: the local hub's connection file in the working directory is used.
    let local = s.dir.path().join(".casement/hub");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(
        local.join("connection.env"),
        format!(
            "IOTHUB_CONNECTION_STRING='{}'\nCASEMENT_HUB_HTTP='{}'\n",
            s.cs, s.url
        ),
    )
    .unwrap();
    let out = casement(s.dir.path(), &["report", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("using the local hub from .casement/hub/connection.env"),
        "{}",
        text(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"]["rejected"], 1);
    // And with nothing at all, a clear error.
    std::fs::remove_file(local.join("connection.env")).unwrap();
    let out = casement(s.dir.path(), &["report"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no hub given"),
        "{}",
        text(&out.stderr)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_twin_show_read_the_hub_and_a_bad_query_names_its_column() {
    let s = setup().await;
    s.hub
        .create_device("gw-1", json!({"role": "gateway"}))
        .await
        .unwrap();
    s.hub
        .create_device("pos-1", json!({"role": "pos"}))
        .await
        .unwrap();

    let out = s
        .run(&[
            "query",
            "SELECT deviceId FROM devices WHERE tags.role = 'gateway'",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let items: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(items, json!([{"deviceId": "gw-1"}]));

    let out = s
        .run(&["query", "SELECT * FROM devices WHERE tags.role 'pos'"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad query: column 39"),
        "{}",
        text(&out.stderr)
    );

    let out = s.run(&["twin", "show", "pos-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let twin: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(twin["deviceId"], "pos-1");
    assert_eq!(twin["tags"]["role"], "pos");

    // A device the hub does not know is an input error (2), said once.
    let out = s.run(&["twin", "show", "nosuch"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).matches("DeviceNotFound").count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_clears_other_policies_only_with_prune_and_writes_configurations_with_via() {
    let s = setup().await;
    s.hub
        .create_device("g1", json!({"role": "gateway"}))
        .await
        .unwrap();
    s.hub
        .create_device("p1", json!({"role": "pos"}))
        .await
        .unwrap();
    s.policy("weekly.toml", &PolicyFile::default().text());
    s.policy(
        "pos.toml",
        &PolicyFile {
            name: "pos",
            priority: 20,
            target: "tags.role = 'pos'",
            ..PolicyFile::default()
        }
        .text(),
    );
    let out = s.run(&["apply", "policies"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let policy_of = |desired: &[(String, Value)], id: &str| {
        desired.iter().find(|(d, _)| d == id).unwrap().1["maintenance"]["policy"].clone()
    };

    // One file: p1 keeps pos, and the output says what --prune would clear.
    let out = s.run(&["apply", "policies/weekly.toml"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("--prune clears them"), "{stdout}");
    assert!(stdout.contains("  p1\n"), "{stdout}");
    assert!(stdout.contains("cleared 0"), "{stdout}");
    assert_eq!(policy_of(&s.desired_versions().await, "p1"), json!("pos"));

    let out = s.run(&["apply", "policies/weekly.toml", "--prune"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cleared 1"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(policy_of(&s.desired_versions().await, "p1"), Value::Null);

    // Through configurations: --plan lists them, then they are created and the hub writes p1.
    let out = s
        .run(&["apply", "policies", "--via", "configurations", "--plan"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("configurations: would create 2"),
        "{stdout}"
    );
    assert!(stdout.contains("create    casement-pos-"), "{stdout}");
    let out = s
        .run(&["apply", "policies", "--via", "configurations"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("configurations: created 2"),
        "{}",
        text(&out.stdout)
    );
    s.hub.evaluate_configurations().await.unwrap();
    assert_eq!(policy_of(&s.desired_versions().await, "p1"), json!("pos"));

    let out = casement(s.dir.path(), &["apply", "--help"]).await;
    let help = text(&out.stdout);
    for needle in [
        "--prune",
        "--via <VIA>",
        "3 hub unavailable",
        "--via configurations",
    ] {
        assert!(help.contains(needle), "{needle:?} missing in:\n{help}");
    }
}
