//! Simulated devices against the real hub: registration, reboots as power cuts, ground truth.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use casement_agent::backoff::BackoffPolicy;
use casement_agent::{AgentEvent, SimEvent, Simulation, SimulationConfig};
use chrono::TimeDelta;
use common::{Harness, PATIENCE, policy, sunday};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Waits until `pred` held for an event of every device in `devices`.
async fn for_each_device(
    events: &mut broadcast::Receiver<(String, SimEvent)>,
    devices: &[String],
    what: &str,
    pred: impl Fn(&SimEvent) -> bool,
) {
    for_each_device_all(events, devices, what, &[&pred]).await;
}

/// Waits until, for every device, each of `preds` held for one of its events (in any order).
async fn for_each_device_all(
    events: &mut broadcast::Receiver<(String, SimEvent)>,
    devices: &[String],
    what: &str,
    preds: &[&dyn Fn(&SimEvent) -> bool],
) {
    let mut pending: BTreeSet<(String, usize)> = devices
        .iter()
        .flat_map(|d| (0..preds.len()).map(move |i| (d.clone(), i)))
        .collect();
    tokio::time::timeout(PATIENCE, async {
        while !pending.is_empty() {
            match events.recv().await {
                Ok((device, event)) => {
                    for (i, pred) in preds.iter().enumerate() {
                        if pred(&event) {
                            pending.remove(&(device.clone(), i));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the simulation stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}; still waiting for {pending:?}"));
}

#[tokio::test]
async fn simulated_devices_register_reboot_in_their_window_and_come_back() {
    let harness = Harness::start().await;
    let truth_file = harness.dir.path().join("ground-truth.jsonl");
    let mut config = SimulationConfig::new(harness.service(), 4, harness.dir.path().join("sim"));
    config.hub_url = Some(harness.http_url());
    config.mqtt_endpoint = Some(harness.mqtt_endpoint());
    config.tags = vec![("role".into(), "gateway".into())];
    config.zones = vec![chrono_tz::UTC, chrono_tz::Europe::Amsterdam];
    config.max_skew = TimeDelta::seconds(20);
    config.reboot_time = Duration::from_secs(120);
    config.ground_truth = Some(truth_file.clone());
    config.clock = harness.clock.agent_clock();
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let simulation = Simulation::start(config).await.expect("simulation starts");
    let mut events = simulation.events();
    let ids: Vec<String> = simulation.devices().iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, ["sim-0000", "sim-0001", "sim-0002", "sim-0003"]);
    for device in simulation.devices() {
        assert!(device.skew.abs() <= TimeDelta::seconds(20));
        let twin = harness.twin(&device.id).await;
        assert_eq!(
            twin["tags"],
            json!({"role": "gateway", "zone": device.zone.name()})
        );
    }
    for_each_device(&mut events, &ids, "every device online", |e| {
        matches!(e, SimEvent::Agent(AgentEvent::TwinFetched { .. }))
    })
    .await;

    for id in &ids {
        harness
            .patch_desired(id, json!({"maintenance": policy("aa01", "device")}))
            .await;
    }
    for_each_device(&mut events, &ids, "every policy applied", |e| {
        matches!(e, SimEvent::Agent(AgentEvent::Reported(p)) if p["maintenance"]["status"] == "applied")
    })
    .await;

    // 02:10 UTC: the UTC devices' window (02:00–04:00) and the Amsterdam ones' (01:00–03:00
    // UTC) are open, skew or not.
    harness.clock.set(sunday(2, 10, 0));
    for_each_device(&mut events, &ids, "every window open", |e| {
        matches!(e, SimEvent::Agent(AgentEvent::Reported(p)) if p["maintenance"]["window"]["open"] == true)
    })
    .await;
    for id in &ids {
        let (status, body) = harness.invoke_reboot(id, Value::Null).await;
        assert_eq!(
            (status, &body["accepted"]),
            (200, &json!(true)),
            "{id}: {body}"
        );
    }
    for_each_device(&mut events, &ids, "every power cut", |e| {
        matches!(e, SimEvent::PoweredOff(_))
    })
    .await;

    // Dark for two minutes of their own clocks, then back as a fresh boot.
    harness.clock.advance(TimeDelta::minutes(3));
    for_each_device_all(
        &mut events,
        &ids,
        "every device back online with its reboot completed",
        &[
            &|e| matches!(e, SimEvent::Agent(AgentEvent::Reported(p)) if p["iothubDM"]["reboot"]["status"] == "completed"),
            &|e| matches!(e, SimEvent::Agent(AgentEvent::TwinFetched { .. })),
        ],
    )
    .await;
    for id in &ids {
        let (status, body) = harness.invoke_reboot(id, Value::Null).await;
        assert_eq!(
            (status, &body["alreadyDone"]),
            (200, &json!(true)),
            "{id}: {body}"
        );
        let reboot = harness.reported(id).await["iothubDM"]["reboot"].clone();
        assert_eq!(reboot["status"], "completed");
    }

    // The ground truth: one reboot per device, inside its window, for its occurrence.
    let records = simulation.ground_truth().records();
    assert_eq!(records.len(), 4, "{records:?}");
    for record in &records {
        let device = simulation
            .devices()
            .iter()
            .find(|d| d.id == record.device)
            .unwrap();
        let opens = if device.zone == chrono_tz::UTC {
            sunday(2, 0, 0)
        } else {
            sunday(1, 0, 0)
        };
        assert_eq!(record.occurrence, Some(opens), "{record:?}");
        assert_eq!(record.device_time - record.at, device.skew);
        assert!(record.device_time >= opens && record.device_time < opens + TimeDelta::hours(2));
        assert!(!record.forced);
    }
    let lines = std::fs::read_to_string(&truth_file).unwrap();
    assert_eq!(lines.lines().count(), 4);
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(
        first["occurrence"]
            .as_str()
            .unwrap()
            .ends_with(":00:00.000Z"),
        "{first}"
    );
    simulation.shutdown().await;
}

/// Issue 14.4: with silent power cuts a rebooting device's socket stays open at the hub, with no
/// FIN and no DISCONNECT, so a direct method sent while it is dark waits out its timeout and
/// gets 504101 (as on Azure), where a closed connection gets 404103 at once; when it is back,
/// its new connection replaces the silent one and it answers `alreadyDone`.
#[tokio::test]
async fn a_silent_power_cut_leaves_the_hub_waiting_until_the_method_times_out() {
    use casement_client::{ClientConfig, HubTarget, RetryPolicy, ServiceClient};
    use casement_iothub::rest::MethodRequest;
    use std::sync::Arc;

    let harness = Harness::start().await;
    let mut config = SimulationConfig::new(harness.service(), 1, harness.dir.path().join("sim"));
    config.hub_url = Some(harness.http_url());
    config.mqtt_endpoint = Some(harness.mqtt_endpoint());
    config.reboot_time = Duration::from_secs(120);
    config.clock = harness.clock.agent_clock();
    config.silent_power_cuts = true;
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let simulation = Simulation::start(config).await.expect("simulation starts");
    let mut events = simulation.events();
    let ids = vec!["sim-0000".to_owned()];
    for_each_device(&mut events, &ids, "online", |e| {
        matches!(e, SimEvent::Agent(AgentEvent::TwinFetched { .. }))
    })
    .await;
    harness
        .patch_desired("sim-0000", json!({"maintenance": policy("aa01", "UTC")}))
        .await;
    harness.clock.set(sunday(2, 10, 0));
    for_each_device(&mut events, &ids, "window open", |e| {
        matches!(e, SimEvent::Agent(AgentEvent::Reported(p)) if p["maintenance"]["window"]["open"] == true)
    })
    .await;
    let (status, body) = harness.invoke_reboot("sim-0000", Value::Null).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(true)), "{body}");
    for_each_device(&mut events, &ids, "the power cut", |e| {
        matches!(e, SimEvent::PoweredOff(_))
    })
    .await;

    // Dark, but the hub still holds its (silent) connection: the call waits, then 504101.
    let target = HubTarget::new(harness.service())
        .with_endpoint(&harness.http_url())
        .unwrap();
    let client = ServiceClient::new(
        target,
        ClientConfig {
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..ClientConfig::default()
        },
        Arc::new(harness.clock.manual()),
    )
    .unwrap();
    let err = client
        .invoke("sim-0000", &MethodRequest::new("reboot", Value::Null, 5))
        .await
        .expect_err("no answer from a dark device");
    assert!(!err.is_device_offline(), "the hub noticed the cut: {err}");
    assert_eq!(
        err.service_error().map(|e| e.status),
        Some(504),
        "GatewayTimeout (504101) expected: {err}"
    );

    // Back after its reboot time: a new connection, the reboot completed, nothing done twice.
    harness.clock.advance(TimeDelta::minutes(3));
    for_each_device(&mut events, &ids, "back with the reboot completed", |e| {
        matches!(e, SimEvent::Agent(AgentEvent::Reported(p)) if p["iothubDM"]["reboot"]["status"] == "completed")
    })
    .await;
    let (status, body) = harness.invoke_reboot("sim-0000", Value::Null).await;
    assert_eq!(
        (status, &body["alreadyDone"]),
        (200, &json!(true)),
        "{body}"
    );
    assert_eq!(simulation.ground_truth().records().len(), 1);
    simulation.shutdown().await;
}
