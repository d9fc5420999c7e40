//! `casement apply` against the real hub: priorities and overlaps, idempotence, `--plan` writing
//! nothing, clearing, an ETag conflict, and tier quotas kept by configuration.

use std::collections::BTreeMap;

use crate::common::*;
use casement_client::HubApi;
use casement_iothub::rest::TwinPatch;
use casement_scheduler::apply::{self, ApplyOptions, ApplySummary, ChangeKind};
use serde_json::json;

/// Gateways g1–g4 (g1 also in the canary ring) and POS terminals p1–p2.
async fn fleet(env: &Env) {
    for (id, tags) in [
        ("g1", json!({"role": "gateway", "ring": "canary"})),
        ("g2", json!({"role": "gateway"})),
        ("g3", json!({"role": "gateway"})),
        ("g4", json!({"role": "gateway"})),
        ("p1", json!({"role": "pos"})),
        ("p2", json!({"role": "pos"})),
        ("other", json!({"role": "printer"})),
    ] {
        env.hub.create_device(id, tags).await.unwrap();
    }
    env.write_policy("weekly.toml", &PolicyFile::default());
    env.write_policy(
        "canary.toml",
        &PolicyFile {
            name: "canary",
            priority: 100,
            target: "tags.ring = 'canary'",
            ..PolicyFile::default()
        },
    );
    env.write_policy(
        "pos.toml",
        &PolicyFile {
            name: "pos",
            priority: 20,
            target: "tags.role = 'pos'",
            timezone: "America/New_York",
            ..PolicyFile::default()
        },
    );
}

async fn apply_with<H: HubApi + Clone>(
    env: &Env,
    hub: &H,
    plan_only: bool,
) -> (apply::Plan, ApplySummary) {
    let set = env.load_policies();
    let plan = apply::build_plan(hub, &set).await.unwrap();
    let options = ApplyOptions {
        plan_only,
        ..ApplyOptions::default()
    };
    let summary = apply::execute(hub, &set, &plan, &options, &()).await;
    (plan, summary)
}

async fn apply(env: &Env, plan_only: bool) -> (apply::Plan, ApplySummary) {
    apply_with(env, &env.client, plan_only).await
}

/// Each device's desired policy and desired `$version`.
async fn desired(env: &Env) -> BTreeMap<String, (Option<String>, u64)> {
    let mut out = BTreeMap::new();
    for v in env.client.query_all("SELECT * FROM devices").await.unwrap() {
        let id = v["deviceId"].as_str().unwrap().to_owned();
        let d = &v["properties"]["desired"];
        out.insert(
            id,
            (
                d["maintenance"]["policy"].as_str().map(str::to_owned),
                d["$version"].as_u64().unwrap(),
            ),
        );
    }
    out
}

fn policy_of(d: &BTreeMap<String, (Option<String>, u64)>, id: &str) -> Option<String> {
    d[id].0.clone()
}

#[tokio::test]
async fn plan_writes_nothing_apply_picks_winners_and_a_second_apply_writes_nothing() {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    fleet(&env).await;
    let before = desired(&env).await;

    let (plan, summary) = apply(&env, true).await;
    assert!(summary.plan_only);
    assert_eq!(
        (summary.targeted, summary.changed, summary.cleared),
        (6, 6, 0)
    );
    assert_eq!(desired(&env).await, before, "--plan wrote nothing");
    let overlaps: Vec<(&str, Vec<String>)> = plan
        .overlaps()
        .map(|d| (d.device.as_str(), d.overlap.clone()))
        .collect();
    assert_eq!(
        overlaps,
        [("g1", vec!["canary".to_owned(), "weekly".to_owned()])]
    );

    let (_, summary) = apply(&env, false).await;
    assert_eq!(
        (
            summary.targeted,
            summary.changed,
            summary.unchanged,
            summary.cleared,
            summary.conflicts
        ),
        (6, 6, 0, 0, 0),
        "{summary:?}"
    );
    assert!(summary.failed.is_empty());
    let after = desired(&env).await;
    assert_eq!(
        policy_of(&after, "g1").as_deref(),
        Some("canary"),
        "priority 100 wins"
    );
    for g in ["g2", "g3", "g4"] {
        assert_eq!(policy_of(&after, g).as_deref(), Some("weekly"));
    }
    for p in ["p1", "p2"] {
        assert_eq!(policy_of(&after, p).as_deref(), Some("pos"));
    }
    assert_eq!(policy_of(&after, "other"), None);
    // What was written is the policy crate's schema, exactly.
    let twin = env.client.twin("p1").await.unwrap();
    let written: casement_policy::DesiredMaintenance =
        serde_json::from_value(twin.properties.desired["maintenance"].clone()).unwrap();
    let set = env.load_policies();
    assert_eq!(
        written,
        casement_policy::DesiredMaintenance::from(set.get("pos").unwrap())
    );

    let (_, again) = apply(&env, false).await;
    assert_eq!((again.changed, again.unchanged, again.cleared), (0, 6, 0));
    assert_eq!(desired(&env).await, after, "a second apply wrote nothing");
}

#[tokio::test]
async fn removed_and_edited_policies_clear_and_update_devices() {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    fleet(&env).await;
    apply(&env, false).await;

    std::fs::remove_file(env.policies.join("pos.toml")).unwrap();
    env.write_policy(
        "weekly.toml",
        &PolicyFile {
            duration: "3h",
            ..PolicyFile::default()
        },
    );
    let (plan, summary) = apply(&env, false).await;
    let kinds: BTreeMap<&str, ChangeKind> = plan
        .devices
        .iter()
        .map(|d| (d.device.as_str(), d.change))
        .collect();
    assert_eq!(kinds["g1"], ChangeKind::Unchanged);
    assert_eq!(kinds["g2"], ChangeKind::Update);
    assert_eq!(kinds["p1"], ChangeKind::Clear);
    assert_eq!(
        (
            summary.targeted,
            summary.changed,
            summary.unchanged,
            summary.cleared
        ),
        (4, 3, 1, 2),
        "{summary:?}"
    );
    let twin = env.client.twin("p1").await.unwrap();
    assert!(
        !twin.properties.desired.contains_key("maintenance"),
        "{:?}",
        twin.properties.desired
    );
    let twin = env.client.twin("g2").await.unwrap();
    assert_eq!(
        twin.properties.desired["maintenance"]["window"]["durationSeconds"],
        json!(3 * 3600)
    );
}

#[tokio::test]
async fn an_etag_conflict_is_resolved_by_re_reading_the_twin() {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    fleet(&env).await;
    let set = env.load_policies();
    let plan = apply::build_plan(&env.client, &set).await.unwrap();
    // Someone else writes g2's desired properties between the read and the write.
    env.client
        .patch("g2", &TwinPatch::desired(json!({"firmware": "2.1"})), None)
        .await
        .unwrap();
    let summary = apply::execute(&env.client, &set, &plan, &ApplyOptions::default(), &()).await;
    assert_eq!(summary.conflicts, 1, "{summary:?}");
    assert_eq!(summary.changed, 6);
    assert!(summary.failed.is_empty());
    let twin = env.client.twin("g2").await.unwrap();
    assert_eq!(
        twin.properties.desired["firmware"],
        json!("2.1"),
        "their write kept"
    );
    assert_eq!(
        twin.properties.desired["maintenance"]["policy"],
        json!("weekly")
    );

    // A conflict where the other writer already did the work: nothing more is written.
    let plan = {
        let mut p = apply::build_plan(&env.client, &set).await.unwrap();
        // Pretend g3 still needs its policy, with a stale ETag.
        let g3 = p.devices.iter_mut().find(|d| d.device == "g3").unwrap();
        g3.change = ChangeKind::Set;
        g3.current = None;
        g3.current_raw = None;
        g3.etag = Some("stale".into());
        p
    };
    let version_before =
        env.client.twin("g3").await.unwrap().properties.desired["$version"].clone();
    let summary = apply::execute(&env.client, &set, &plan, &ApplyOptions::default(), &()).await;
    assert_eq!(
        (summary.conflicts, summary.changed, summary.unchanged),
        (1, 0, 6),
        "{summary:?}"
    );
    assert_eq!(
        env.client.twin("g3").await.unwrap().properties.desired["$version"],
        version_before
    );
}

#[tokio::test]
async fn a_tier_quota_in_the_client_keeps_apply_under_the_hubs_throttle() {
    use casement_client::{ClientConfig, Quota, RetryPolicy};
    use casement_hub::{Operation, Rate, ThrottleConfig};
    let env = Env::start_with(utc(2026, 3, 28, 12, 0, 0), |mut c| {
        c.throttle = ThrottleConfig {
            rates: [(Operation::TwinUpdates, Rate::per_second(5.0))]
                .into_iter()
                .collect(),
        };
        c
    })
    .await;
    fleet(&env).await;
    // No retries: a single 429 would fail a device.
    let client = Env::client_for(
        &env.hub,
        &env.clock,
        ClientConfig {
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            quota: Quota::unlimited().with(
                casement_client::Operation::TwinUpdates,
                casement_client::Rate::per_second(4.0),
            ),
            ..ClientConfig::default()
        },
    );
    let (_, summary) = apply_with(&env, &client, false).await;
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(summary.changed, 6);
    assert_eq!(
        client
            .stats()
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The same without the quota meets the throttle.
    std::fs::remove_file(env.policies.join("pos.toml")).unwrap();
    std::fs::remove_file(env.policies.join("canary.toml")).unwrap();
    env.write_policy(
        "weekly.toml",
        &PolicyFile {
            duration: "90m",
            ..PolicyFile::default()
        },
    );
    let unlimited = Env::client_for(
        &env.hub,
        &env.clock,
        ClientConfig {
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..ClientConfig::default()
        },
    );
    // 4 updates and 2 clears at once against a bucket of 5: some are refused.
    let (_, summary) = apply_with(&env, &unlimited, false).await;
    assert!(
        unlimited
            .stats()
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            || !summary.failed.is_empty(),
        "{summary:?}"
    );
}
