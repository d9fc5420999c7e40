//! `apply --via configurations` against the real hub and simulated agents on a driven clock:
//! a policy written as an IoT Hub configuration reaches the agents at the hub's evaluation, the
//! scheduler reboots them in their window and the report counts them; a changed policy replaces
//! its configuration; equal-priority overlaps are refused; `--prune` and `--plan`; the metric
//! queries parse on the hub (`testQueries`) and count what they say.

use std::time::Duration;

use crate::common::*;
use casement_iothub::configuration::TestQueriesRequest;
use casement_scheduler::apply::configurations::{
    METRIC_APPLIED, METRIC_REJECTED, PRIORITY_OFFSET, configuration_for, configuration_id,
};
use casement_scheduler::apply::{self, ApplyError, ApplyOptions, ApplyVia, ConfigAction};
use casement_scheduler::journal::JournalView;
use casement_scheduler::report;
use chrono::TimeDelta;
use chrono_tz::UTC;
use serde_json::json;

const REBOOT: Duration = Duration::from_secs(90);
const STEP: TimeDelta = TimeDelta::seconds(60);

fn via_configurations(prune: bool, plan_only: bool) -> ApplyOptions {
    ApplyOptions {
        via: ApplyVia::Configurations,
        prune,
        plan_only,
        ..ApplyOptions::default()
    }
}

async fn apply_via(
    env: &Env,
    options: &ApplyOptions,
) -> Result<(apply::Plan, apply::ApplySummary), ApplyError> {
    let set = env.load_policies();
    let plan = apply::plan(&env.client, &set, options).await?;
    let summary = apply::execute(&env.client, &set, &plan, options, &()).await;
    Ok((plan, summary))
}

async fn configuration_ids(env: &Env) -> Vec<String> {
    env.client
        .configurations()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_applied_through_a_configuration_reaches_the_agents_reboots_them_and_is_replaced_when_changed()
 {
    let mut env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    env.write_policy("weekly.toml", &PolicyFile::default());
    env.simulate(3, &[UTC], REBOOT, TimeDelta::zero()).await;
    let first = env.load_policies().get("weekly").unwrap().clone();
    let spec = first.window().clone();

    // The scheduler's own (re-)apply goes through configurations.
    let mut config = env.run_config();
    config.apply_options.via = ApplyVia::Configurations;
    let mut scheduler = env.scheduler_with(env.client.clone(), config).await;
    scheduler.pass().await.unwrap();
    assert_eq!(configuration_ids(&env).await, [configuration_id(&first)]);
    // Apply wrote no twin: the hub does, at its evaluation.
    assert!(
        env.views().await.iter().all(|v| v.desired_raw.is_none()),
        "twins written before the evaluation"
    );
    let evaluation = env.hub.evaluate_configurations().await.unwrap();
    assert_eq!(evaluation.desired_writes, 3, "{evaluation:?}");
    env.wait_applied("weekly").await;

    // Sunday's window: every device rebooted once.
    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 4, 0, 0),
        STEP,
        REBOOT,
    )
    .await;
    assert_eq!(env.reboots().len(), 3, "{:?}", env.reboots());

    // The report counts them, as it does when apply wrote the twins.
    let journal = JournalView::load(&env.state_dir()).unwrap();
    let r = report::compute(
        &env.client,
        &journal,
        env.clock.now(),
        report::DEFAULT_LOOKBACK,
        None,
    )
    .await
    .unwrap();
    let weekly = &r.policies[0];
    assert_eq!(weekly.policy, "weekly");
    assert_eq!(weekly.counts.targeted, 3, "{:?}", weekly.counts);
    assert_eq!(weekly.counts.applied, 3, "{:?}", weekly.counts);
    assert_eq!(weekly.counts.compliant, 3, "{:?}", weekly.counts);

    // The configuration's metrics count the devices that report the revision applied.
    env.hub.evaluate_configurations().await.unwrap();
    let cfg = env
        .client
        .configuration(&configuration_id(&first))
        .await
        .unwrap();
    assert_eq!(cfg.metrics.results.get(METRIC_APPLIED), Some(&3), "{cfg:?}");
    assert_eq!(
        cfg.metrics.results.get(METRIC_REJECTED),
        Some(&0),
        "{cfg:?}"
    );
    assert_eq!(cfg.system_metrics.results.get("appliedCount"), Some(&3));

    // A changed policy: a new configuration replaces the old one, the agents take it.
    env.write_policy(
        "weekly.toml",
        &PolicyFile {
            duration: "3h",
            ..PolicyFile::default()
        },
    );
    assert!(scheduler.reload().await.unwrap());
    scheduler.pass().await.unwrap();
    let second = env.load_policies().get("weekly").unwrap().clone();
    assert_ne!(first.revision(), second.revision());
    assert_eq!(configuration_ids(&env).await, [configuration_id(&second)]);
    env.hub.evaluate_configurations().await.unwrap();
    env.wait_for("every device reports the new revision applied", |views| {
        views.len() == 3
            && views.iter().all(|v| {
                v.reported().is_some_and(|r| {
                    r.revision == second.revision().as_str()
                        && r.status == casement_policy::MaintenanceStatus::Applied
                })
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_carries_target_priority_content_labels_and_metric_queries_the_hub_accepts()
 {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    env.write_policy(
        "pos.toml",
        &PolicyFile {
            name: "pos",
            priority: -5,
            target: "tags.role = 'pos' AND tags.site IN ['a', 'b']",
            ..PolicyFile::default()
        },
    );
    let policy = env.load_policies().get("pos").unwrap().clone();
    let config = configuration_for(&policy);
    assert_eq!(
        config.id,
        format!("casement-pos-{}", policy.revision().as_str())
    );
    assert_eq!(config.priority, PRIORITY_OFFSET - 5);
    assert_eq!(
        config.content.device_content["properties.desired.maintenance"]["revision"],
        json!(policy.revision().as_str())
    );
    assert_eq!(config.labels["casement-policy"], "pos");
    assert_eq!(
        config.labels["casement-revision"],
        policy.revision().as_str()
    );
    let answer = env
        .client
        .test_configuration_queries(&TestQueriesRequest {
            target_condition: Some(config.target_condition.clone()),
            custom_metric_queries: Some(config.metrics.queries.clone()),
        })
        .await
        .unwrap();
    assert_eq!(answer.target_condition_error, "", "{answer:?}");
    assert!(answer.custom_metric_query_errors.is_empty(), "{answer:?}");
    assert_eq!(config.metrics.queries.len(), 2);

    // Created as written; applying again changes nothing.
    let (_, summary) = apply_via(&env, &via_configurations(false, false))
        .await
        .unwrap();
    assert_eq!(summary.configurations_created, 1, "{summary:?}");
    let stored = env.client.configuration(&config.id).await.unwrap();
    assert_eq!(stored.priority, config.priority);
    assert_eq!(stored.target_condition, config.target_condition);
    assert_eq!(stored.content, config.content);
    assert_eq!(stored.metrics.queries, config.metrics.queries);
    let (plan, summary) = apply_via(&env, &via_configurations(false, false))
        .await
        .unwrap();
    let actions: Vec<ConfigAction> = plan
        .configurations
        .unwrap()
        .iter()
        .map(|c| c.action)
        .collect();
    assert_eq!(actions, [ConfigAction::Unchanged]);
    assert_eq!(summary.configurations_created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_priorities_on_a_common_device_are_refused_before_anything_is_written() {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    env.hub
        .create_device("g1", json!({"role": "gateway", "ring": "canary"}))
        .await
        .unwrap();
    env.write_policy("weekly.toml", &PolicyFile::default());
    env.write_policy(
        "canary.toml",
        &PolicyFile {
            name: "canary",
            target: "tags.ring = 'canary'",
            ..PolicyFile::default()
        },
    );
    let err = apply_via(&env, &via_configurations(false, false))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ApplyError::Tie(_)), "{message}");
    for needle in [
        "canary (",
        "canary.toml",
        "weekly.toml",
        "priority 10",
        "g1",
        "higher priority",
    ] {
        assert!(message.contains(needle), "{needle:?} missing in: {message}");
    }
    assert!(configuration_ids(&env).await.is_empty());
    // Twins settle the tie by name, so --via twins accepts it.
    let set = env.load_policies();
    let options = ApplyOptions::default();
    assert!(apply::plan(&env.client, &set, &options).await.is_ok());
    // A higher priority settles it for configurations too.
    env.write_policy(
        "canary.toml",
        &PolicyFile {
            name: "canary",
            priority: 11,
            target: "tags.ring = 'canary'",
            ..PolicyFile::default()
        },
    );
    let (_, summary) = apply_via(&env, &via_configurations(false, false))
        .await
        .unwrap();
    assert_eq!(summary.configurations_created, 2, "{summary:?}");
    env.hub.evaluate_configurations().await.unwrap();
    let twin = env.client.twin("g1").await.unwrap();
    assert_eq!(
        twin.properties.desired["maintenance"]["policy"],
        json!("canary")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_lists_configurations_and_prune_removes_those_of_policies_not_given() {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    env.hub
        .create_device("g1", json!({"role": "gateway"}))
        .await
        .unwrap();
    env.hub
        .create_device("p1", json!({"role": "pos"}))
        .await
        .unwrap();
    env.write_policy("weekly.toml", &PolicyFile::default());
    env.write_policy(
        "pos.toml",
        &PolicyFile {
            name: "pos",
            priority: 20,
            target: "tags.role = 'pos'",
            ..PolicyFile::default()
        },
    );
    // --plan writes nothing and says what it would create.
    let (plan, summary) = apply_via(&env, &via_configurations(false, true))
        .await
        .unwrap();
    let configs = plan.configurations.as_ref().unwrap();
    assert!(configs.iter().all(|c| c.action == ConfigAction::Create));
    assert_eq!(summary.configurations_created, 2);
    let text = apply::render_text(&plan, &summary, true);
    assert!(text.contains("would create 2"), "{text}");
    assert!(configuration_ids(&env).await.is_empty());

    apply_via(&env, &via_configurations(false, false))
        .await
        .unwrap();
    env.hub.evaluate_configurations().await.unwrap();
    let pos_id = configuration_id(env.load_policies().get("pos").unwrap());

    // Only weekly.toml given: pos's configuration is kept and p1 not cleared without --prune.
    std::fs::remove_file(env.policies.join("pos.toml")).unwrap();
    let (plan, summary) = apply_via(&env, &via_configurations(false, false))
        .await
        .unwrap();
    let pos = plan
        .configurations
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.id == pos_id)
        .unwrap();
    assert_eq!(pos.action, ConfigAction::Keep);
    assert_eq!(summary.not_pruned, ["p1"]);
    assert!(configuration_ids(&env).await.contains(&pos_id));
    let twin = env.client.twin("p1").await.unwrap();
    assert_eq!(
        twin.properties.desired["maintenance"]["policy"],
        json!("pos")
    );

    // --prune: removed, and p1 cleared twin by twin (a configuration leaves what it wrote).
    let (_, summary) = apply_via(&env, &via_configurations(true, false))
        .await
        .unwrap();
    assert_eq!(summary.configurations_removed, 1, "{summary:?}");
    assert_eq!(summary.cleared, 1, "{summary:?}");
    assert!(!configuration_ids(&env).await.contains(&pos_id));
    let twin = env.client.twin("p1").await.unwrap();
    assert!(
        twin.properties.desired.get("maintenance").is_none(),
        "{twin:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_through_configurations_makes_calls_per_policy_not_per_device() {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    for n in 0..250 {
        env.hub
            .create_device(&format!("g{n:03}"), json!({"role": "gateway"}))
            .await
            .unwrap();
    }
    env.write_policy("weekly.toml", &PolicyFile::default());
    let set = env.load_policies();
    let client = Env::client_for(&env.hub, &env.clock, Default::default());
    let options = via_configurations(true, false);
    let plan = apply::plan(&client, &set, &options).await.unwrap();
    let summary = apply::execute(&client, &set, &plan, &options, &()).await;
    assert_eq!(summary.targeted, 250);
    assert_eq!(summary.configurations_created, 1);
    // Per policy: a COUNT(); then the union COUNT(), the clear query, the list and the PUT.
    let requests = client
        .stats()
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(requests, 5, "{summary:?}");
    let evaluation = env.hub.evaluate_configurations().await.unwrap();
    assert_eq!(evaluation.desired_writes, 250);
}
