//! The real agent against the real hub, in-process on 127.0.0.1:0, with a driven clock.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{Harness, policy, reboots_run, spawn, sunday, window_open_is};
use casement_agent::AgentEvent;
use casement_agent::RunOutcome;
use casement_agent::state::StateStore;
use chrono::TimeDelta;
use serde_json::{Value, json};

const OCCURRENCE: &str = "2030-01-06T02:00:00.000Z";

fn scheduled(revision: &str, occurrence: &str) -> Value {
    json!({"policy": "weekly", "revision": revision, "occurrence": occurrence})
}

#[tokio::test]
async fn window_opens_and_closes_are_reported_when_they_happen() {
    let harness = Harness::start().await;
    let device = harness.device("gw-window").await;
    let mut agent = spawn(
        &harness,
        harness.config(&device, chrono_tz::UTC),
        "boot-1",
        None,
    );
    agent.online().await;
    harness
        .patch_desired(
            "gw-window",
            json!({"maintenance": policy("aa01", "device")}),
        )
        .await;
    let applied = agent
        .reported("the applied policy", |p| {
            p["maintenance"]["status"] == "applied"
        })
        .await;
    assert_eq!(
        applied["maintenance"],
        json!({"policy": "weekly", "revision": "aa01", "status": "applied", "error": null,
               "timezone": "UTC",
               "window": {"open": false, "opensAt": OCCURRENCE, "closesAt": "2030-01-06T04:00:00.000Z",
                          "due": false}})
    );

    // One second before the window: still closed, by the agent's own answer and the twin.
    harness.clock.set(sunday(1, 59, 59));
    agent
        .wait("the clock move", |e| {
            matches!(e, AgentEvent::ClockJumped(_))
        })
        .await;
    let (status, body) = harness.invoke_reboot("gw-window", Value::Null).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("outside-window"))
    );
    assert_eq!(
        harness.reported("gw-window").await["maintenance"]["window"]["open"],
        false
    );

    // At the opening instant the agent reports the window open.
    harness.clock.set(sunday(2, 0, 0));
    let open = agent
        .reported("the window opening", |p| window_open_is(p, true))
        .await;
    assert_eq!(
        open,
        json!({"maintenance": {"window": {"open": true, "opensAt": OCCURRENCE,
                                          "closesAt": "2030-01-06T04:00:00.000Z", "due": true}}})
    );
    assert_eq!(
        harness.reported("gw-window").await["maintenance"]["window"]["open"],
        true
    );

    // At the closing instant: closed, and the next window is next Sunday's.
    harness.clock.set(sunday(4, 0, 0));
    let closed = agent
        .reported("the window closing", |p| window_open_is(p, false))
        .await;
    assert_eq!(
        closed["maintenance"]["window"]["opensAt"],
        "2030-01-13T02:00:00.000Z"
    );

    // A wall clock stepped back into the window is re-evaluated too.
    harness.clock.set(sunday(3, 0, 0));
    agent
        .reported("the window re-opened by a clock step", |p| {
            window_open_is(p, true)
        })
        .await;
    agent.stop().await;
}

#[tokio::test]
async fn the_reboot_method_accepts_and_refuses_by_the_agents_own_window() {
    let harness = Harness::start().await;
    let id = "gw-matrix";
    let device = harness.device(id).await;
    let config = harness.config(&device, chrono_tz::UTC);
    let mut agent = spawn(&harness, config.clone(), "boot-1", None);
    agent.online().await;

    // No policy yet.
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", OCCURRENCE))
        .await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("no-policy")));
    assert_eq!(body["accepted"], false);

    harness
        .patch_desired(id, json!({"maintenance": policy("aa01", "UTC")}))
        .await;
    agent
        .reported("the policy", |p| p["maintenance"]["status"] == "applied")
        .await;

    // Malformed payloads.
    for payload in [
        json!("please"),
        json!({"policy": "weekly"}),
        json!({"force": true}),
    ] {
        let (status, body) = harness.invoke_reboot(id, payload.clone()).await;
        assert_eq!(status, 400, "{payload}: {body}");
        assert_eq!(body["reason"], "malformed-payload");
    }

    // Outside the window, whatever the caller believes; the answer carries the window.
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", OCCURRENCE))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("outside-window"))
    );
    assert_eq!(
        body["window"],
        json!({"open": false, "opensAt": OCCURRENCE,
                                      "closesAt": "2030-01-06T04:00:00.000Z", "due": false})
    );

    // Near the end: less than expectedDurationSeconds (300 s) left.
    harness.clock.set(sunday(3, 55, 1));
    agent
        .reported("the window", |p| window_open_is(p, true))
        .await;
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", OCCURRENCE))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("insufficient-time"))
    );

    // Inside: another revision, another occurrence.
    harness.clock.set(sunday(2, 30, 0));
    agent
        .wait("the clock move", |e| {
            matches!(e, AgentEvent::ClockJumped(_))
        })
        .await;
    let (status, body) = harness
        .invoke_reboot(id, scheduled("bb02", OCCURRENCE))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("revision-mismatch"))
    );
    assert_eq!(body["revision"], "aa01");
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", "2029-12-30T02:00:00.000Z"))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("outside-window"))
    );
    assert_eq!(reboots_run(&config), 0, "nothing refused may reboot");

    // Accepted: answered, reported as rebooting, the command runs once.
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", OCCURRENCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], true);
    assert_eq!(body["occurrence"], OCCURRENCE);
    agent
        .wait("the reboot command", |e| {
            matches!(e, AgentEvent::RebootCommandFinished(Ok(())))
        })
        .await;
    assert_eq!(reboots_run(&config), 1);
    let reboot = harness.reported(id).await["iothubDM"]["reboot"].clone();
    assert_eq!(reboot["status"], "rebooting");
    assert_eq!(reboot["occurrence"], OCCURRENCE);
    assert_eq!(reboot["lastReboot"], "2030-01-06T02:30:00.000Z");
    // No longer due for this occurrence: the scheduler's candidate query stops finding it.
    let window = harness.reported(id).await["maintenance"]["window"].clone();
    assert_eq!(
        (&window["open"], &window["due"]),
        (&json!(true), &json!(false))
    );

    // The same occurrence again (the scheduler retrying): already done, no second reboot.
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", OCCURRENCE))
        .await;
    assert_eq!((status, &body["alreadyDone"]), (200, &json!(true)));
    let (status, body) = harness
        .invoke_reboot(id, json!({"force": true, "reason": "again"}))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("reboot-in-progress"))
    );
    assert_eq!(reboots_run(&config), 1);

    // The machine comes back (a new boot): completed, and still never twice.
    agent.stop().await;
    harness.clock.set(sunday(2, 33, 0));
    let mut agent = spawn(&harness, config.clone(), "boot-2", None);
    let completed = agent
        .reported("the completion", |p| {
            p["iothubDM"]["reboot"]["status"] == "completed"
        })
        .await;
    assert_eq!(
        completed["iothubDM"]["reboot"]["completedAt"],
        "2030-01-06T02:33:00.000Z"
    );
    assert_eq!(
        completed["iothubDM"]["reboot"]["lastReboot"],
        "2030-01-06T02:30:00.000Z"
    );
    agent.online().await;
    for payload in [scheduled("aa01", OCCURRENCE), Value::Null] {
        let (status, body) = harness.invoke_reboot(id, payload).await;
        assert_eq!(
            (status, &body["alreadyDone"]),
            (200, &json!(true)),
            "{body}"
        );
    }
    assert_eq!(reboots_run(&config), 1);

    // A forced reboot outside any window is accepted and audited in the twin.
    harness.clock.set(sunday(12, 0, 0));
    let (status, body) = harness
        .invoke_reboot(id, json!({"force": true, "reason": "CVE-2030-0001 hotfix"}))
        .await;
    assert_eq!((status, &body["forced"]), (200, &json!(true)), "{body}");
    let rebooting = agent
        .reported("the forced reboot", |p| {
            p["iothubDM"]["reboot"]["status"] == "rebooting"
        })
        .await;
    assert_eq!(rebooting["iothubDM"]["reboot"]["forced"], true);
    assert_eq!(
        rebooting["iothubDM"]["reboot"]["reason"],
        "CVE-2030-0001 hotfix"
    );
    assert_eq!(rebooting["iothubDM"]["reboot"]["occurrence"], Value::Null);
    agent
        .wait("the reboot command", |e| {
            matches!(e, AgentEvent::RebootCommandFinished(Ok(())))
        })
        .await;
    assert_eq!(reboots_run(&config), 2);
    agent.stop().await;
}

#[tokio::test]
async fn a_failing_reboot_command_is_reported_as_failed() {
    let harness = Harness::start().await;
    let id = "gw-fails";
    let device = harness.device(id).await;
    let mut config = harness.config(&device, chrono_tz::UTC);
    config.reboot_command = casement_agent::config::RebootCommand::new(vec![
        "sh".into(),
        "-c".into(),
        "echo 'Access denied' >&2; exit 3".into(),
    ])
    .unwrap();
    harness
        .patch_desired(id, json!({"maintenance": policy("aa01", "UTC")}))
        .await;
    harness.clock.set(sunday(2, 10, 0));
    let mut agent = spawn(&harness, config, "boot-1", None);
    agent.online().await;
    let (status, _) = harness.invoke_reboot(id, Value::Null).await;
    assert_eq!(status, 200);
    let failed = agent
        .reported("the failure", |p| {
            p["iothubDM"]["reboot"]["status"] == "failed"
        })
        .await;
    let error = failed["iothubDM"]["reboot"]["error"].as_str().unwrap();
    assert!(
        error.contains("exit status: 3") && error.contains("Access denied"),
        "{error}"
    );
    // It did not reboot, so the window's reboot may still happen.
    let (status, body) = harness.invoke_reboot(id, Value::Null).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(true)), "{body}");
    assert!(body.get("alreadyDone").is_none());
    agent.stop().await;
}

#[tokio::test]
async fn a_crash_between_persisting_and_rebooting() {
    let harness = Harness::start().await;
    let id = "gw-crash";
    let device = harness.device(id).await;
    let mut config = harness.config(&device, chrono_tz::UTC);
    // A reboot command that never takes effect: the process dies before the machine does.
    config.reboot_command =
        casement_agent::config::RebootCommand::new(vec!["sleep".into(), "3600".into()]).unwrap();
    harness
        .patch_desired(id, json!({"maintenance": policy("aa01", "UTC")}))
        .await;
    harness.clock.set(sunday(2, 10, 0));
    let mut agent = spawn(&harness, config.clone(), "boot-1", None);
    agent.online().await;
    agent
        .accept_then_crash(&harness, id, scheduled("aa01", OCCURRENCE))
        .await;

    // What was on disk at the crash: the reboot in progress.
    let store = StateStore::open(&config.state_dir).unwrap();
    let persisted = store.load().unwrap();
    let in_progress = persisted
        .in_progress
        .expect("persisted before the command ran");
    assert_eq!(
        in_progress.occurrence.map(|o| o.to_rfc3339()),
        Some("2030-01-06T02:00:00+00:00".into())
    );
    assert_eq!(in_progress.boot_id.as_deref(), Some("boot-1"));

    // Restarted on the same boot: the machine never went down. Reported failed, not done.
    let mut agent = spawn(&harness, config.clone(), "boot-1", None);
    let failed = agent
        .reported("the failure", |p| {
            p["iothubDM"]["reboot"]["status"] == "failed"
        })
        .await;
    assert!(
        failed["iothubDM"]["reboot"]["error"]
            .as_str()
            .unwrap()
            .contains("did not reboot")
    );
    assert!(store.load().unwrap().in_progress.is_none());
    agent.stop().await;

    // The same crash, then a power cut: the next boot completes the reboot, and the
    // occurrence is done for good.
    let mut agent = spawn(&harness, config.clone(), "boot-1", None);
    agent.online().await;
    agent
        .accept_then_crash(&harness, id, scheduled("aa01", OCCURRENCE))
        .await;
    let mut agent = spawn(&harness, config.clone(), "boot-2", None);
    agent
        .reported("the completion", |p| {
            p["iothubDM"]["reboot"]["status"] == "completed"
        })
        .await;
    agent.online().await;
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", OCCURRENCE))
        .await;
    assert_eq!(
        (status, &body["alreadyDone"]),
        (200, &json!(true)),
        "{body}"
    );
    assert!(store.load().unwrap().rebooted_for(sunday(2, 0, 0)));
    agent.stop().await;
}

#[tokio::test]
async fn the_token_is_renewed_before_it_expires() {
    let harness = Harness::start().await;
    let id = "gw-token";
    let device = harness.device(id).await;
    let mut config = harness.config(&device, chrono_tz::UTC);
    config.token_lifetime = std::time::Duration::from_secs(3600);
    config.renew_before = std::time::Duration::from_secs(900);
    let mut agent = spawn(&harness, config, "boot-1", None);
    agent.online().await;
    // Tokens live an hour and are renewed 15 minutes early. The hub checks expiry on the same
    // clock, so a session that outlived its token would not come back.
    for round in 1..=3 {
        harness.clock.advance(TimeDelta::minutes(44));
        agent
            .wait("the clock move", |e| {
                matches!(e, AgentEvent::ClockJumped(_))
            })
            .await;
        harness.clock.advance(TimeDelta::minutes(2));
        agent
            .wait("the renewal", |e| matches!(e, AgentEvent::TokenRenewal))
            .await;
        agent
            .wait("the reconnect", |e| matches!(e, AgentEvent::Connected))
            .await;
        agent.online().await;
        let (status, body) = harness.invoke_reboot(id, Value::Null).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (409, Some("no-policy")),
            "round {round}"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn the_agent_reconnects_after_the_hub_restarts() {
    let mut harness = Harness::start_on_disk().await;
    let id = "gw-restart";
    let device = harness.device(id).await;
    let mut agent = spawn(
        &harness,
        harness.config(&device, chrono_tz::UTC),
        "boot-1",
        None,
    );
    agent.online().await;
    harness.restart_hub().await;
    agent
        .wait("the disconnect", |e| {
            matches!(e, AgentEvent::Disconnected { .. })
        })
        .await;
    agent
        .wait("the reconnect", |e| matches!(e, AgentEvent::Connected))
        .await;
    agent.online().await;
    // Desired patches and methods flow again.
    harness
        .patch_desired(id, json!({"maintenance": policy("aa01", "UTC")}))
        .await;
    agent
        .reported("the policy", |p| p["maintenance"]["revision"] == "aa01")
        .await;
    let (status, body) = harness.invoke_reboot(id, Value::Null).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("outside-window"))
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_rejected_policy_keeps_the_previous_one() {
    let harness = Harness::start().await;
    let id = "gw-reject";
    let device = harness.device(id).await;
    let config = harness.config(&device, chrono_tz::UTC);
    let mut agent = spawn(&harness, config.clone(), "boot-1", None);
    agent.online().await;
    harness
        .patch_desired(id, json!({"maintenance": policy("aa01", "UTC")}))
        .await;
    agent
        .reported("the policy", |p| p["maintenance"]["status"] == "applied")
        .await;

    // A schedule that cannot be: rejected with the reason.
    harness
        .patch_desired(
            id,
            json!({"maintenance": {"revision": "bb02", "window": {"schedule": "0 26 * * SUN"}}}),
        )
        .await;
    let rejected = agent
        .reported("the rejection", |p| {
            p["maintenance"]["status"] == "rejected"
        })
        .await;
    assert_eq!(rejected["maintenance"]["revision"], "bb02");
    assert!(
        rejected["maintenance"]["error"]
            .as_str()
            .unwrap()
            .starts_with("window.schedule")
    );
    // ... while the previous window is still reported and enforced.
    assert_eq!(rejected["maintenance"]["window"]["opensAt"], OCCURRENCE);
    harness.clock.set(sunday(2, 5, 0));
    agent
        .reported("the old policy's window", |p| window_open_is(p, true))
        .await;
    let (status, body) = harness
        .invoke_reboot(id, scheduled("bb02", OCCURRENCE))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("revision-mismatch"))
    );
    let (status, body) = harness
        .invoke_reboot(id, scheduled("aa01", OCCURRENCE))
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(true)), "{body}");
    agent.stop().await;

    // Also across a restart: the persisted policy is the valid one.
    let state = StateStore::open(&config.state_dir).unwrap().load().unwrap();
    assert_eq!(state.policy.unwrap()["revision"], "aa01");
}

#[tokio::test]
async fn a_desired_patch_missed_while_offline_is_picked_up_on_reconnect() {
    let harness = Harness::start().await;
    let id = "gw-offline";
    let device = harness.device(id).await;
    let config = harness.config(&device, chrono_tz::Europe::Amsterdam);
    let mut agent = spawn(&harness, config.clone(), "boot-1", None);
    agent.online().await;
    harness
        .patch_desired(id, json!({"maintenance": policy("aa01", "device")}))
        .await;
    agent
        .reported("the policy", |p| p["maintenance"]["revision"] == "aa01")
        .await;
    agent.stop().await;

    // While the device is away the scheduler moves it to another revision and zone.
    harness
        .patch_desired(id, json!({"maintenance": policy("bb02", "Asia/Tokyo")}))
        .await;
    let mut agent = spawn(&harness, config, "boot-1", None);
    let applied = agent
        .reported("the new policy", |p| p["maintenance"]["revision"] == "bb02")
        .await;
    assert_eq!(applied["maintenance"]["status"], "applied");
    assert_eq!(applied["maintenance"]["timezone"], "Europe/Amsterdam");
    // 02:00 Tokyo on Sunday is 17:00 UTC on Saturday.
    assert_eq!(
        applied["maintenance"]["window"]["opensAt"],
        "2030-01-05T17:00:00.000Z"
    );

    // And a removed policy clears the report.
    harness
        .patch_desired(id, json!({"maintenance": null}))
        .await;
    agent
        .reported("the cleared report", |p| p["maintenance"].is_null())
        .await;
    assert!(harness.reported(id).await.get("maintenance").is_none());
    let (status, body) = harness.invoke_reboot(id, Value::Null).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("no-policy")));
    assert!(matches!(agent.stop().await, RunOutcome::Shutdown));
}

#[tokio::test]
async fn the_agent_connects_over_tls_trusting_only_the_given_ca() {
    let harness = Harness::start().await;
    let id = "gw-tls";
    let device = harness.device(id).await;
    let write_ca = |name: &str, pem: &str| {
        let path = harness.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    // The default endpoint is TLS on 8883: a port in HostName is the hub's HTTPS port, never
    // MQTT's (issue 12); the hub's device endpoint is given as --mqtt-endpoint would give it.
    let mut config = harness.config(&device, chrono_tz::UTC);
    let default = casement_agent::config::Endpoint::default_for(&device).unwrap();
    assert_eq!(
        (default.transport, default.port),
        (casement_agent::config::Transport::Tls, 8883)
    );
    config.endpoint = format!(
        "mqtts://localhost:{}",
        harness.hub().mqtts_addr().unwrap().port()
    )
    .parse()
    .unwrap();

    // Another hub's CA: the handshake fails, and the agent keeps trying (and says why).
    let other = casement_hub::Hub::start(casement_hub::HubConfig::for_tests())
        .await
        .unwrap();
    let mut wrong = config.clone();
    wrong.ca = Some(write_ca("other-ca.pem", other.ca_pem().unwrap()));
    let agent = casement_agent::Agent::new(wrong)
        .unwrap()
        .with_clock(harness.clock.agent_clock());
    let mut events = agent.events();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    for _ in 0..2 {
        let event = tokio::time::timeout(crate::common::PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap();
        match event {
            AgentEvent::Disconnected { reason } => {
                assert!(reason.to_lowercase().contains("certificate"), "{reason}")
            }
            other => panic!("connected with an untrusted certificate: {other:?}"),
        }
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    other.shutdown().await;

    // The hub's own CA: connected, and the method path works over TLS.
    config.ca = Some(write_ca("hub-ca.pem", harness.hub().ca_pem().unwrap()));
    let agent = casement_agent::Agent::new(config)
        .unwrap()
        .with_clock(harness.clock.agent_clock());
    let mut events = agent.events();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(crate::common::PATIENCE, async {
        while !matches!(events.recv().await, Ok(AgentEvent::TwinFetched { .. })) {}
    })
    .await
    .expect("online over TLS");
    let (status, body) = harness.invoke_reboot(id, Value::Null).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("no-policy")));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// The reported twins of `ids` whose window is open.
async fn reporting_open(harness: &Harness, ids: &[String]) -> BTreeSet<String> {
    let mut open = BTreeSet::new();
    for id in ids {
        if harness.reported(id).await["maintenance"]["window"]["open"] == true {
            open.insert(id.clone());
        }
    }
    open
}

/// Polls until `cond` holds (bounded by the harness's patience).
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + crate::common::PATIENCE;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 10: devices whose windows open at the same instant report the opening spread over
/// `[0, report_jitter)`, each at its own delay (a hash of its id), with one patch at the
/// opening and one at the closing as without jitter; the hub's `$metadata` times show the
/// spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_whose_windows_open_together_spreads_its_reports_over_the_jitter() {
    const N: usize = 30;
    let jitter = Duration::from_secs(30);
    let harness = Harness::start().await;
    let plan = casement_policy::DesiredMaintenance::from_desired(
        &json!({"maintenance": policy("aa01", "UTC")}),
    )
    .unwrap()
    .unwrap()
    .validate()
    .unwrap();
    let ids: Vec<String> = (0..N).map(|i| format!("gw-{i:02}")).collect();
    let mut agents = Vec::new();
    for id in &ids {
        let device = harness.device(id).await;
        let mut config = harness.config(&device, chrono_tz::UTC);
        config.report_jitter = jitter;
        let mut agent = spawn(&harness, config, "boot-1", None);
        agent.online().await;
        harness
            .patch_desired(id, json!({"maintenance": policy("aa01", "UTC")}))
            .await;
        agent
            .reported("the applied policy", |p| {
                p["maintenance"]["status"] == "applied"
            })
            .await;
        agents.push(agent);
    }
    let mut versions = Vec::new();
    for id in &ids {
        versions.push(harness.reported(id).await["$version"].as_u64().unwrap());
    }

    // Time runs on a second at a time from the opening: after each step exactly the devices
    // whose own delay has passed report the window open — never all at the opening instant.
    let delay_ms = |id: &str| plan.report_delay(id, jitter).as_millis() as i64;
    for second in 0..=30i64 {
        harness
            .clock
            .set(sunday(2, 0, 0) + TimeDelta::seconds(second));
        let expected: BTreeSet<String> = ids
            .iter()
            .filter(|id| delay_ms(id) <= second * 1000)
            .cloned()
            .collect();
        until(
            &format!("{} devices open at +{second}s", expected.len()),
            || {
                let expected = expected.clone();
                let harness = &harness;
                let ids = &ids;
                async move { reporting_open(harness, ids).await.is_superset(&expected) }
            },
        )
        .await;
        assert_eq!(
            reporting_open(&harness, &ids).await,
            expected,
            "at +{second}s only the devices whose delay has passed report the window open"
        );
    }
    // The hub stamped each opening at the second its device's delay ended: spread over the
    // jitter, at most a few in any one second (a fleet of 1,500 over 30 s is 50 a second,
    // S1's twin-update quota).
    let mut per_second = std::collections::BTreeMap::<i64, usize>::new();
    for id in &ids {
        let stamped = harness.reported(id).await["$metadata"]["maintenance"]["window"]["open"]
            ["$lastUpdated"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap();
        let second = (stamped - sunday(2, 0, 0)).num_seconds();
        assert_eq!(second, (delay_ms(id) + 999) / 1000, "{id}");
        *per_second.entry(second).or_default() += 1;
    }
    assert!(
        per_second.len() >= 15,
        "spread over at least half the jitter: {per_second:?}"
    );
    assert!(
        per_second.values().all(|n| *n <= N / 6),
        "no second holds more than a sixth of the fleet: {per_second:?}"
    );

    // The closing is reported too (after the jitter), and the window cost each device two
    // patches — the opening and the closing — as it does without jitter.
    harness.clock.set(sunday(4, 0, 30));
    until("every device reports the window closed", || {
        let harness = &harness;
        let ids = &ids;
        async move { reporting_open(harness, ids).await.is_empty() }
    })
    .await;
    for (id, before) in ids.iter().zip(versions) {
        let after = harness.reported(id).await["$version"].as_u64().unwrap();
        assert_eq!(after - before, 2, "{id}: one patch to open, one to close");
    }
    for agent in agents {
        agent.stop().await;
    }
}

/// Issue 10: a hub throttling twin reads and updates (429) does not lose the agents' reports:
/// each agent asks for its twin again and resends its patch after a backoff, on the same
/// connection, until the hub takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_gets_and_reports_refused_with_429_are_retried_until_the_hub_takes_them() {
    const N: usize = 8;
    let harness = Harness::start_throttled(|throttle| {
        throttle
            .with(
                casement_hub::Operation::TwinReads,
                casement_hub::Rate::per_second(2.0),
            )
            .with(
                casement_hub::Operation::TwinUpdates,
                casement_hub::Rate::per_second(1.0),
            )
    })
    .await;
    let ids: Vec<String> = (0..N).map(|i| format!("gw-{i:02}")).collect();
    let mut configs = Vec::new();
    for id in &ids {
        let device = harness.device(id).await;
        // Written straight into the hub, past the throttle.
        harness
            .hub()
            .patch_desired(id, json!({"maintenance": policy("aa01", "UTC")}))
            .await
            .unwrap();
        configs.push(harness.config(&device, chrono_tz::UTC));
    }
    // All at once: over the quotas of 2 twin reads and 1 twin update a second (the GETs the
    // hub takes, 2 a second, are followed by 2 reports a second).
    let mut agents: Vec<_> = configs
        .into_iter()
        .map(|config| spawn(&harness, config, "boot-1", None))
        .collect();
    let mut retried = BTreeSet::new();
    for agent in &mut agents {
        // Every agent's report of the applied policy arrives, however many 429s it took.
        while let AgentEvent::TwinRetry {
            request, status, ..
        } = agent
            .wait("the applied report or a retry", |e| {
                matches!(e, AgentEvent::TwinRetry { .. })
                    || matches!(e, AgentEvent::Reported(p) if p["maintenance"]["status"] == "applied")
            })
            .await
        {
            assert_eq!(status, 429);
            retried.insert(request);
        }
    }
    assert!(
        retried.contains("twin GET") && retried.contains("reported patch"),
        "both kinds were refused and retried: {retried:?}"
    );
    assert!(harness.hub().throttle_counts().refused > 0);
    for id in &ids {
        let reported = harness.reported(id).await;
        assert_eq!(reported["maintenance"]["status"], "applied", "{id}");
        assert_eq!(reported["maintenance"]["revision"], "aa01", "{id}");
    }
    for agent in agents {
        agent.stop().await;
    }
}
