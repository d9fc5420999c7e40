//! The agent against a hub that enforces SAS token expiry on open MQTT sessions (issue 13
//! item 6): it renews before the hub would cut it, over several token lifetimes.

use std::time::Duration;

use crate::common::{Harness, policy, spawn};
use casement_agent::AgentEvent;
use chrono::TimeDelta;
use serde_json::json;

/// Tokens live 10 minutes and are renewed 2 minutes early; the hub (default 5 minutes of skew)
/// closes a session whose token is 15 minutes old. The clock moves 100 s at a time for five
/// lifetimes: every session ends by the agent's own renewal, never by the hub, and the agent
/// keeps applying and reporting desired changes throughout.
#[tokio::test]
async fn the_agent_outlives_many_short_tokens_on_a_hub_that_enforces_expiry() {
    let harness = Harness::start().await;
    let id = "gw-expiry";
    let device = harness.device(id).await;
    let mut config = harness.config(&device, chrono_tz::UTC);
    config.token_lifetime = Duration::from_secs(600);
    config.renew_before = Duration::from_secs(120);
    let mut agent = spawn(&harness, config, id, None);
    agent.online().await;

    let no_hub_cut = |step: u32| {
        move |e: &AgentEvent| {
            if let AgentEvent::Disconnected { reason } = e {
                panic!("the hub closed the session at step {step} (token not renewed?): {reason}");
            }
        }
    };
    let mut issued = harness.clock.now();
    let mut renewals = 0;
    for step in 1..=30u32 {
        harness.clock.advance(TimeDelta::seconds(100));
        let check = no_hub_cut(step);
        agent
            .wait("the clock move", |e| {
                check(e);
                matches!(e, AgentEvent::ClockJumped(_))
            })
            .await;
        if harness.clock.now() >= issued + TimeDelta::seconds(600 - 120) {
            agent
                .wait("the renewal", |e| {
                    check(e);
                    matches!(e, AgentEvent::TokenRenewal)
                })
                .await;
            agent
                .wait("the reconnect", |e| {
                    check(e);
                    matches!(e, AgentEvent::Connected)
                })
                .await;
            agent.online().await;
            issued = harness.clock.now();
            renewals += 1;
            // The new session works both ways: a desired change is applied and reported.
            let revision = format!("aa{renewals:02}");
            harness
                .patch_desired(id, json!({"maintenance": policy(&revision, "UTC")}))
                .await;
            agent
                .reported("the applied policy", |p| {
                    p["maintenance"]["revision"] == revision.as_str()
                        && p["maintenance"]["status"] == "applied"
                })
                .await;
        }
    }
    assert!(renewals >= 5, "renewed {renewals} times over 3,000 s");
    // The hub checks expiry about once a second; give it the chance to cut a stale session,
    // then make sure it never did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reported = harness.reported(id).await;
    assert_eq!(
        reported["maintenance"]["revision"],
        json!(format!("aa{renewals:02}"))
    );
    while let Ok(event) = agent.events.try_recv() {
        no_hub_cut(31)(&event);
    }
    agent.stop().await;
}
