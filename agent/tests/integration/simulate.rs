//! Simulated devices against the real hub: registration, reboots as power cuts, ground truth.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{Harness, PATIENCE, policy, sunday};
use casement_agent::backoff::BackoffPolicy;
use casement_agent::{AgentEvent, SimEvent, Simulation, SimulationConfig, simulate};
use chrono::TimeDelta;
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
    let devices = simulate::numbered(
        simulate::DEFAULT_PREFIX,
        4,
        &[chrono_tz::UTC, chrono_tz::Europe::Amsterdam],
    )
    .into_iter()
    .map(|d| d.with_tag("role", "gateway"))
    .collect();
    let mut config =
        SimulationConfig::new(harness.service(), devices, harness.dir.path().join("sim"));
    config.hub_url = Some(harness.http_url());
    config.mqtt_endpoint = Some(harness.mqtt_endpoint());
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
    let mut config = SimulationConfig::new(
        harness.service(),
        simulate::numbered(simulate::DEFAULT_PREFIX, 1, &[chrono_tz::UTC]),
        harness.dir.path().join("sim"),
    );
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

#[tokio::test]
async fn a_planned_fleet_is_registered_once_in_bulk_and_an_existing_device_keeps_its_key() {
    use casement_agent::simulate::PlannedDevice;
    use casement_hub::Operation;
    use casement_iothub::connection_string::DeviceAuth;

    let harness = Harness::start().await;
    // Registered before the simulation (e.g. by a previous run): it keeps its key.
    let existing = harness.device("store-0007").await;
    let zones = [chrono_tz::Europe::Lisbon, chrono_tz::Asia::Tokyo];
    let devices: Vec<PlannedDevice> = (0..250)
        .map(|n| {
            PlannedDevice::new(format!("store-{n:04}"), zones[n % 2])
                .with_tag("role", if n % 3 == 0 { "gateway" } else { "pos" })
        })
        .collect();
    let mut config = SimulationConfig::new(
        harness.service(),
        devices.clone(),
        harness.dir.path().join("sim"),
    );
    config.hub_url = Some(harness.http_url());
    config.mqtt_endpoint = Some(harness.mqtt_endpoint());
    config.clock = harness.clock.agent_clock();

    let before = harness.hub().stats().operations.get(Operation::Registry);
    let simulation = Simulation::start(config).await.expect("simulation starts");
    let registry_calls = harness.hub().stats().operations.get(Operation::Registry) - before;
    // Three bulk calls of at most 100 devices, and one read of the existing device's keys;
    // never a create, a 409, a read and a patch per device.
    assert_eq!(registry_calls, 4);
    assert_eq!(harness.hub().stats().devices, 250);

    let simulated = simulation.devices();
    assert_eq!(simulated.len(), 250);
    for (planned, device) in devices.iter().zip(simulated) {
        assert_eq!((&device.id, device.zone), (&planned.id, planned.zone));
    }
    let DeviceAuth::SharedAccessKey(kept) = &simulated[7].connection.auth else {
        panic!("a key")
    };
    let DeviceAuth::SharedAccessKey(original) = &existing.auth else {
        panic!("a key")
    };
    assert_eq!(kept, original, "the existing device keeps its key");
    for n in [0usize, 7, 100, 249] {
        let twin = harness.twin(&devices[n].id).await;
        assert_eq!(
            twin["tags"],
            json!({"role": devices[n].tags["role"], "zone": devices[n].zone.name()}),
            "{}",
            devices[n].id
        );
    }
    simulation.shutdown().await;
}

/// A hub answering 429 to registry calls beyond one a second (S1 allows 100 a minute): the
/// simulator waits for the quota and registers the whole fleet instead of giving up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_on_a_hub_that_refuses_with_429_waits_for_the_quota_and_registers_everyone() {
    let harness = Harness::start_throttled(|throttle| {
        throttle.with(
            casement_hub::Operation::Registry,
            casement_hub::Rate::per_second(1.0),
        )
    })
    .await;
    // Registered earlier: its keys are read back, one more registry call.
    harness.device("sim-0003").await;
    let devices = casement_agent::simulate::numbered("sim-", 250, &[chrono_tz::UTC]);
    let mut config =
        SimulationConfig::new(harness.service(), devices, harness.dir.path().join("sim"));
    config.hub_url = Some(harness.http_url());
    config.mqtt_endpoint = Some(harness.mqtt_endpoint());
    config.clock = harness.clock.agent_clock();

    let refused_before = harness.hub().throttle_counts().refused;
    let registered = Simulation::register(&config)
        .await
        .expect("registration waits for the quota");
    assert!(
        harness.hub().throttle_counts().refused > refused_before,
        "the hub refused some registry calls with 429"
    );
    assert_eq!(registered.devices().len(), 250);
    assert_eq!(harness.hub().stats().devices, 250);
}

#[tokio::test]
async fn a_plan_naming_a_device_twice_is_refused_before_anything_is_registered() {
    use casement_agent::simulate::PlannedDevice;

    let harness = Harness::start().await;
    let devices = vec![
        PlannedDevice::new("a", chrono_tz::UTC),
        PlannedDevice::new("a", chrono_tz::Asia::Tokyo),
    ];
    let config = SimulationConfig::new(harness.service(), devices, harness.dir.path().join("sim"));
    let err = Simulation::start(config).await.expect_err("refused");
    assert!(err.to_string().contains("\"a\" is planned twice"), "{err}");
    assert_eq!(harness.hub().stats().devices, 0);
}

#[tokio::test]
async fn registering_first_leaves_the_devices_offline_until_run_starts_them() {
    let harness = Harness::start().await;
    let mut config = SimulationConfig::new(
        harness.service(),
        simulate::numbered(simulate::DEFAULT_PREFIX, 3, &[chrono_tz::UTC]),
        harness.dir.path().join("sim"),
    );
    config.hub_url = Some(harness.http_url());
    config.mqtt_endpoint = Some(harness.mqtt_endpoint());
    config.clock = harness.clock.agent_clock();

    let registered = Simulation::register(&config).await.expect("registered");
    assert_eq!(registered.devices().len(), 3);
    assert_eq!(harness.hub().stats().devices, 3);
    assert_eq!(harness.hub().stats().connected_devices, 0, "no agent yet");

    let simulation = Simulation::run(config, registered).await.expect("runs");
    tokio::time::timeout(PATIENCE, async {
        while harness.hub().stats().connected_devices < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every registered device connects");
    simulation.shutdown().await;
}
