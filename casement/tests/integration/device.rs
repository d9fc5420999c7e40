//! `casement device`, `invoke`, `reboot`, the hub banner's commands and the demo's suggestions:
//! the built binary against a hub started in-process on a data directory, found the way a new
//! user finds it (`CASEMENT_HUB_DATA_DIR` → connection.env, HTTPS with the hub's CA), and a real
//! agent in `--simulate-reboot` mode.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use casement_agent::config::{AgentConfig, Endpoint};
use casement_client::{ClientConfig, HubTarget, ServiceClient};
use casement_hub::{Hub, HubConfig, RunningHub};
use casement_tests::init_tracing;

struct Setup {
    hub: RunningHub,
    dir: tempfile::TempDir,
    client: ServiceClient,
}

impl Setup {
    async fn start() -> Setup {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(HubConfig::for_tests_in(dir.path().join("hub")))
            .await
            .unwrap();
        let client = ServiceClient::new(
            HubTarget::new(hub.service_connection_string().parse().unwrap())
                .with_endpoint(&hub.http_url().unwrap())
                .unwrap(),
            ClientConfig::default(),
            Arc::new(casement_policy::SystemClock),
        )
        .unwrap();
        Setup { hub, dir, client }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("hub")
    }

    /// Runs `casement` in a directory without a local hub, finding the hub through
    /// `CASEMENT_HUB_DATA_DIR`.
    async fn casement(&self, args: &[&str]) -> Output {
        self.casement_env(args, &[]).await
    }

    async fn casement_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let cwd = self.dir.path().join("work");
        std::fs::create_dir_all(&cwd).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_casement"));
        command
            .args(args)
            .current_dir(&cwd)
            .env_remove("IOTHUB_CONNECTION_STRING")
            .env_remove("CASEMENT_CA")
            .env_remove("CASEMENT_ENDPOINT")
            .env("CASEMENT_HUB_DATA_DIR", self.data_dir())
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            command.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .expect("casement finished within two minutes")
            .expect("run casement")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The value after `flag` in a command line.
fn flag_value<'a>(line: &'a str, flag: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_command_adds_a_device_with_a_ready_agent_line() {
    let s = Setup::start().await;
    let banner = casement_hub::startup_banner(&s.hub);
    let mqtts = format!("mqtts://{}", s.hub.mqtts_addr().unwrap());
    assert!(
        banner.contains(&format!("Devices connect to {mqtts}")),
        "{banner}"
    );
    let commands: Vec<&str> = banner
        .lines()
        .map(str::trim)
        // Every command line the banner prints (its first line names the hub, not a command).
        .filter(|l| l.starts_with("casement ") && !l.starts_with("casement hub is running"))
        .collect();
    assert!(!commands.is_empty(), "{banner}");
    for command in commands {
        let line = command.replace("<ID>", "lab-1");
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let out = ok(&s.casement(&words).await);
        let cs = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("HostName="))
            .unwrap_or_else(|| panic!("no connection string in {out}"));
        assert!(cs.contains(";DeviceId=lab-1;SharedAccessKey="), "{cs}");
        let agent = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("casement-agent run"))
            .unwrap_or_else(|| panic!("no agent line in {out}"));
        assert_eq!(
            flag_value(agent, "--mqtt-endpoint"),
            Some(mqtts.as_str()),
            "{agent}"
        );
        let ca = flag_value(agent, "--ca").unwrap_or_else(|| panic!("no --ca in {agent}"));
        assert_eq!(
            Path::new(ca),
            std::fs::canonicalize(s.hub.ca_path().unwrap()).unwrap()
        );
        assert!(agent.contains("--simulate-reboot"), "{agent}");
    }
    assert!(s.client.device("lab-1").await.is_ok());

    // Twice: the id is taken; what to do instead.
    let again = s.casement(&["device", "add", "lab-1"]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already registered"),
        "{}",
        text(&again.stderr)
    );
    let bad = s.casement(&["device", "add", "lab 2"]).await;
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_shown_imported_and_removed() {
    let s = Setup::start().await;
    ok(&s
        .casement(&[
            "device", "add", "gw-1", "--tag", "role=gw", "--tag", "floor=3",
        ])
        .await);
    let cs = ok(&s
        .casement(&["device", "add", "sensor-1", "--connection-string-only"])
        .await);
    assert!(
        cs.trim().starts_with("HostName=") && cs.lines().count() == 1,
        "{cs}"
    );

    let listed = ok(&s
        .casement(&["device", "list", "--where", "tags.role = 'gw'"])
        .await);
    assert!(
        listed.contains("gw-1") && listed.contains("floor=3"),
        "{listed}"
    );
    assert!(!listed.contains("sensor-1"), "{listed}");
    let bad_where = s
        .casement(&["device", "list", "--where", "tags.role = "])
        .await;
    assert_eq!(
        bad_where.status.code(),
        Some(2),
        "{}",
        text(&bad_where.stderr)
    );

    let shown: serde_json::Value =
        serde_json::from_str(&ok(&s.casement(&["device", "show", "sensor-1"]).await)).unwrap();
    assert_eq!(shown["deviceId"], "sensor-1");
    assert_eq!(shown["connectionString"].as_str(), Some(cs.trim()));

    // 250 devices: three bulk calls of at most 100.
    let file = s.dir.path().join("fleet.jsonl");
    let lines: Vec<String> = (0..250)
        .map(|i| format!("{{\"id\": \"pos-{i:04}\", \"tags\": {{\"role\": \"pos\"}}}}"))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let imported = ok(&s
        .casement(&["device", "import", file.to_str().unwrap()])
        .await);
    assert!(
        imported.contains("Registered 250 of 250 devices in 3 registry calls"),
        "{imported}"
    );
    assert_eq!(
        s.client
            .list_devices(Some("tags.role = 'pos'"))
            .await
            .unwrap()
            .len(),
        250
    );

    // The same file again: every id is taken; nothing is sent.
    let again = s
        .casement(&["device", "import", file.to_str().unwrap()])
        .await;
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already registered"),
        "{}",
        text(&again.stderr)
    );

    // A file with a mistake: its position, exit 2, nothing registered (not even the good line).
    let bad = s.dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"new-1\"}\n{\"id\": \"new 2\"}\n").unwrap();
    let out = s
        .casement(&["device", "import", bad.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.jsonl:2:8: "),
        "{}",
        text(&out.stderr)
    );
    assert!(
        s.client
            .device("new-1")
            .await
            .unwrap_err()
            .is_device_not_found()
    );

    ok(&s.casement(&["device", "remove", "sensor-1"]).await);
    assert!(
        s.client
            .device("sensor-1")
            .await
            .unwrap_err()
            .is_device_not_found()
    );
    let gone = s.casement(&["device", "remove", "sensor-1"]).await;
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        text(&gone.stderr).contains("no device sensor-1"),
        "{}",
        text(&gone.stderr)
    );
    let gone = s.casement(&["device", "show", "sensor-1"]).await;
    assert_eq!(gone.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_hub_certificate_exits_2_naming_ca_at_once() {
    let s = Setup::start().await;
    // The connection string without the CA: HTTPS to the hub with the system roots only.
    let cs = s.hub.service_connection_string();
    let out = s
        .casement(&["device", "list", "--hub", &cs, "--retries", "7"])
        .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--ca"), "{err}");
    let ca = std::fs::canonicalize(s.hub.ca_path().unwrap()).unwrap();
    assert!(err.contains(&format!("--ca {}", ca.display())), "{err}");
    // Not retried: one request, so no back-off message either.
    assert!(!err.contains("retrying"), "{err}");
}

/// A real agent in `--simulate-reboot` mode for `device`, until the returned sender is dropped.
fn start_agent(
    s: &Setup,
    device: &str,
    cs: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let endpoint: Endpoint = format!("mqtt://{}", s.hub.mqtt_addr().unwrap())
        .parse()
        .unwrap();
    let config = AgentConfig::new(
        cs.parse().unwrap(),
        endpoint,
        s.dir.path().join("agent").join(device),
        chrono_tz::UTC,
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        casement_agent::try_out::run_simulating_reboots(config, async {
            let _ = rx.await;
        })
        .await
        .expect("agent ran")
        .reboots
    });
    (tx, task)
}

/// `casement reboot lab-1 --force --reason "INC-1234 kernel hotfix"`, accepted.
async fn force_reboot(s: &Setup) {
    let out = ok(&s
        .casement(&[
            "reboot",
            "lab-1",
            "--force",
            "--reason",
            "INC-1234 kernel hotfix",
        ])
        .await);
    assert!(out.contains("accepted the forced reboot"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_and_a_forced_reboot_reach_a_real_agent_and_are_audited() {
    let s = Setup::start().await;
    let cs = ok(&s
        .casement(&["device", "add", "lab-1", "--connection-string-only"])
        .await);

    // Offline: exit 2 with what to do.
    let offline = s.casement(&["invoke", "lab-1", "ping"]).await;
    assert_eq!(offline.status.code(), Some(2));
    assert!(
        text(&offline.stderr).contains("not connected"),
        "{}",
        text(&offline.stderr)
    );

    let (stop, agent) = start_agent(&s, "lab-1", cs.trim());
    // Wait (bounded) until the agent can take methods.
    let mut answer = None;
    for _ in 0..300 {
        let out = s
            .casement(&[
                "invoke",
                "lab-1",
                "ping",
                "--payload",
                "{\"a\": 1}",
                "--connect-timeout",
                "5",
            ])
            .await;
        if out.status.code() == Some(1) {
            answer = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.expect("the agent answered ping");
    let body: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(body["status"], 404, "{body}");
    assert!(
        body["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown method")
    );

    let bad = s
        .casement(&["invoke", "lab-1", "ping", "--payload", "{nope"])
        .await;
    assert_eq!(bad.status.code(), Some(2));
    let no_force = s.casement(&["reboot", "lab-1", "--reason", "x"]).await;
    assert_eq!(no_force.status.code(), Some(2), "clap requires --force");

    force_reboot(&s).await;

    // The simulated reboot completes as a new boot, and the twin says it was forced and why.
    let mut twin_err = String::new();
    for _ in 0..300 {
        let twin = s.client.twin("lab-1").await.unwrap();
        let reboot = serde_json::Value::Object(twin.reported())["iothubDM"]["reboot"].clone();
        if reboot["status"] == "completed" {
            assert_eq!(reboot["forced"], true, "{reboot}");
            assert_eq!(reboot["reason"], "INC-1234 kernel hotfix", "{reboot}");
            let shown = s.casement(&["twin", "show", "lab-1"]).await;
            ok(&shown);
            twin_err = text(&shown.stderr);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        twin_err.contains("FORCED") && twin_err.contains("INC-1234 kernel hotfix"),
        "twin show: {twin_err}"
    );
    // Never silently simulated: the twin says so, and twin show repeats it.
    let mut simulated = serde_json::Value::Null;
    for _ in 0..300 {
        let twin = s.client.twin("lab-1").await.unwrap();
        simulated = serde_json::Value::Object(twin.reported())["casementAgent"].clone();
        if simulated["simulatedReboots"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(simulated["rebootMode"], "simulated", "{simulated}");
    assert_eq!(simulated["simulatedReboots"], 1, "{simulated}");
    let shown = s.casement(&["twin", "show", "lab-1"]).await;
    assert!(
        text(&shown.stderr).contains("SIMULATES reboots (--simulate-reboot; 1 so far)"),
        "{}",
        text(&shown.stderr)
    );
    drop(stop);
    let reboots = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("agent stopped")
        .unwrap();
    assert_eq!(reboots, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_the_demo_suggests_runs_against_a_hub() {
    let s = Setup::start().await;
    ok(&s
        .casement(&["device", "add", "demo-0000", "--tag", "region=asia"])
        .await);
    let policy = s.dir.path().join("demo-pos.toml");
    std::fs::write(
        &policy,
        casement_tests::policy_file::PolicyFile::default().text(),
    )
    .unwrap();
    for line in casement::demo::try_commands("demo-0000", Some(&policy)) {
        let words = casement::demo::command_words(&line);
        assert_eq!(words[0], "casement");
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let out = s.casement(&args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "`{line}`: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// The README's "Try it with one real device", walked in-process from a clean data dir: a hub,
/// `casement device add`, one real agent with `--simulate-reboot`, a policy whose window is open
/// now, `apply`, `run --once`, and `report` showing the device compliant — by a simulated
/// reboot, and saying so; then `casement reboot --force --reason …`, and `report` showing who
/// forced what, when and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_try_it_out_walk_reaches_compliant_with_one_simulated_reboot() {
    let s = Setup::start().await;
    let cs = ok(&s
        .casement(&[
            "device",
            "add",
            "lab-1",
            "--tag",
            "role=lab",
            "--connection-string-only",
        ])
        .await);
    let (stop, agent) = start_agent(&s, "lab-1", cs.trim());

    // A daily window that opened a minute ago (UTC) and lasts two hours.
    let opened = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    let policy = s.dir.path().join("work").join("lab.toml");
    std::fs::write(
        &policy,
        format!(
            "[policy]\nname = \"lab\"\ntarget = \"tags.role = 'lab'\"\n\n[window]\n\
             schedule = \"{} {} * * *\"\nduration = \"2h\"\ntimezone = \"UTC\"\n\n\
             [reboot]\nexpected_duration = \"5m\"\n",
            chrono::Timelike::minute(&opened),
            chrono::Timelike::hour(&opened)
        ),
    )
    .unwrap();
    ok(&s.casement(&["validate", "lab.toml"]).await);
    ok(&s.casement(&["apply", "lab.toml"]).await);

    // The agent applies the policy and reports its window open.
    let mut open = false;
    for _ in 0..300 {
        let twin = s.client.twin("lab-1").await.unwrap();
        if serde_json::Value::Object(twin.reported())["maintenance"]["window"]["open"] == true {
            open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(open, "the agent never reported its window open");

    ok(&s
        .casement(&["run", "lab.toml", "--once", "--state-dir", "scheduler"])
        .await);
    let mut report = String::new();
    for _ in 0..300 {
        let out = s
            .casement(&["report", "--devices", "--format", "json"])
            .await;
        report = ok(&out);
        let json: serde_json::Value = serde_json::from_str(&report).unwrap();
        if json["total"]["compliant"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let json: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(json["total"]["compliant"], 1, "{report}");
    let twin = s.client.twin("lab-1").await.unwrap();
    assert_eq!(
        serde_json::Value::Object(twin.reported())["iothubDM"]["reboot"]["status"],
        "completed"
    );
    // Compliant by a simulated reboot: counted as such, never silently as a real one.
    assert_eq!(json["total"]["simulated"], 1, "{report}");
    assert_eq!(json["devices"][0]["simulated"], true, "{report}");
    let table = ok(&s.casement(&["report"]).await);
    assert!(
        table.contains(
            "simulated: 1 of the 1 compliant device(s) of lab rebooted in simulation only \
             (casement-agent run --simulate-reboot): nothing was really rebooted"
        ),
        "{table}"
    );

    // The emergency override, then the report: who forced what, when and why.
    force_reboot(&s).await;
    let mut forced_at = None;
    for _ in 0..300 {
        let twin = s.client.twin("lab-1").await.unwrap();
        let reboot = serde_json::Value::Object(twin.reported())["iothubDM"]["reboot"].clone();
        if reboot["status"] == "completed" && reboot["forced"] == true {
            forced_at = reboot["lastReboot"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let forced_at = forced_at.expect("the forced reboot completed");
    let table = ok(&s.casement(&["report"]).await);
    assert!(
        table.contains(&format!(
            "forced: lab-1 (lab) rebooted at {forced_at}, FORCED outside its window: INC-1234 kernel hotfix"
        )),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s.casement(&["report", "--format", "json"]).await)).unwrap();
    assert_eq!(json["total"]["forced"], 1, "{json}");
    assert_eq!(
        json["forcedReboots"],
        serde_json::json!([{"device": "lab-1", "policy": "lab", "at": forced_at,
                            "reason": "INC-1234 kernel hotfix"}]),
        "{json}"
    );
    let csv = ok(&s
        .casement(&["report", "--devices", "--format", "csv"])
        .await);
    assert!(
        csv.contains(&format!("{forced_at},\"forced, simulated\",")),
        "{csv}"
    );
    drop(stop);
    let reboots = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("agent stopped")
        .unwrap();
    assert_eq!(reboots, 2, "one simulated reboot in the window, one forced");
}

/// An agent that does not trust the hub's CA sees a reason the agent classifies as an
/// untrusted certificate (logged once with the --ca hint), not an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_the_hubs_ca_is_told_about_ca_not_an_outage() {
    let s = Setup::start().await;
    let cs = ok(&s
        .casement(&["device", "add", "lab-1", "--connection-string-only"])
        .await);
    let endpoint: Endpoint = format!("mqtts://localhost:{}", s.hub.mqtts_addr().unwrap().port())
        .parse()
        .unwrap();
    let config = AgentConfig::new(
        cs.trim().parse().unwrap(),
        endpoint,
        s.dir.path().join("agent"),
        chrono_tz::UTC,
    );
    let agent = casement_agent::Agent::new(config).unwrap();
    let mut events = agent.events();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = rx.await;
    }));
    let reason = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(casement_agent::AgentEvent::Disconnected { reason }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the agent reported why it could not connect");
    assert!(
        casement_agent::config::is_untrusted_certificate(&reason),
        "{reason}"
    );
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

/// The client classifies an untrusted certificate as input to fix, not an outage, and does not
/// retry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_does_not_retry_an_untrusted_certificate() {
    let s = Setup::start().await;
    let client = ServiceClient::new(
        HubTarget::new(s.hub.service_connection_string().parse().unwrap()),
        ClientConfig::default(),
        Arc::new(casement_policy::SystemClock),
    )
    .unwrap();
    let err = client.device_ids().await.unwrap_err();
    assert!(err.is_untrusted_certificate(), "{err}");
    assert!(!err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("--ca"), "{err}");
    assert_eq!(
        client
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "sent once"
    );
}
