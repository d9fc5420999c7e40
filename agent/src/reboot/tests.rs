use super::*;
use casement_policy::window::Window;
use chrono::{TimeDelta, TimeZone};

const RID: &str = "7";

fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, h, m, 0).unwrap()
}

/// The window 01:00–03:00 UTC, seen at `now`.
fn window_at(now: DateTime<Utc>) -> WindowState {
    let window = Window {
        opens_at: t(1, 0),
        closes_at: t(3, 0),
        occurrence: t(1, 0),
    };
    WindowState {
        open: window.contains(now),
        window,
    }
}

fn policy(now: DateTime<Utc>) -> ActivePolicy<'static> {
    ActivePolicy {
        name: "weekly",
        revision: "rev1",
        expected_duration: Duration::from_secs(300),
        window: Some(window_at(now)),
    }
}

fn ctx(now: DateTime<Utc>, state: &AgentState) -> Context<'_> {
    Context {
        now,
        policy: Some(policy(now)),
        state,
        boot_id: Some("boot-a"),
    }
}

fn scheduled(occurrence: &str) -> Vec<u8> {
    format!(r#"{{"policy":"weekly","revision":"rev1","occurrence":"{occurrence}"}}"#).into_bytes()
}

fn only_response(actions: Vec<RebootAction>) -> MethodResponse {
    match actions.as_slice() {
        [RebootAction::Respond(response)] => {
            assert_eq!(response.rid, RID);
            response.clone()
        }
        other => panic!("expected one response, got {other:?}"),
    }
}

fn refused(actions: Vec<RebootAction>, reason: &str) -> MethodResponse {
    let response = only_response(actions);
    assert_eq!(response.status, 409, "{response:?}");
    assert_eq!(response.body["accepted"], false);
    assert_eq!(response.body["reason"], reason, "{response:?}");
    response
}

/// Runs an accepted request through persist; returns the persisted state and the actions after.
fn accept(
    machine: &mut RebootMachine,
    ctx: &Context<'_>,
    payload: &[u8],
) -> (AgentState, Vec<RebootAction>) {
    let actions = machine.on_request(ctx, RID, payload);
    let state = match actions.as_slice() {
        [RebootAction::Persist(state)] => state.clone(),
        other => panic!("expected a persist, got {other:?}"),
    };
    assert!(matches!(machine.phase(), Phase::Persisting { .. }));
    (state, machine.on_persisted(Ok(())))
}

#[test]
fn a_malformed_payload_gets_400_and_changes_nothing() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    let response = only_response(machine.on_request(&ctx(t(1, 30), &state), RID, b"[]"));
    assert_eq!(response.status, 400);
    assert_eq!(response.body["reason"], "malformed-payload");
    assert!(response.body["message"].as_str().unwrap().contains("array"));
    assert_eq!(machine.phase(), &Phase::Idle);
}

// ---- the gate --------------------------------------------------------------------------------

#[test]
fn accepted_inside_the_window_persists_then_answers_reports_and_reboots() {
    let state = AgentState::default();
    let now = t(1, 30);
    let mut machine = RebootMachine::new();
    let (persisted, actions) = accept(
        &mut machine,
        &ctx(now, &state),
        &scheduled("2026-11-29T01:00:00.000Z"),
    );
    let expected = InProgressReboot {
        occurrence: Some(t(1, 0)),
        policy: Some("weekly".into()),
        revision: Some("rev1".into()),
        started_at: now,
        forced: false,
        reason: None,
        boot_id: Some("boot-a".into()),
    };
    assert_eq!(persisted.in_progress.as_ref(), Some(&expected));
    match actions.as_slice() {
        [
            RebootAction::Respond(response),
            RebootAction::Report(RebootUpdate::Rebooting(reported)),
            RebootAction::RunRebootCommand,
        ] => {
            assert_eq!(response.status, 200);
            assert_eq!(response.body["accepted"], true);
            assert_eq!(response.body["occurrence"], "2026-11-29T01:00:00.000Z");
            assert_eq!(response.body["window"]["open"], true);
            assert_eq!(reported, &expected);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(machine.phase(), &Phase::Rebooting(expected));
}

#[test]
fn refused_without_a_policy() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    for payload in [scheduled("2026-11-29T01:00:00Z"), b"null".to_vec()] {
        let c = Context {
            policy: None,
            ..ctx(t(1, 30), &state)
        };
        let response = refused(machine.on_request(&c, RID, &payload), "no-policy");
        assert_eq!(response.body["window"], Value::Null);
    }
    assert_eq!(machine.phase(), &Phase::Idle);
}

#[test]
fn refused_for_another_policy_or_revision() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    for payload in [
        &br#"{"policy":"weekly","revision":"rev0","occurrence":"2026-11-29T01:00:00Z"}"#[..],
        br#"{"policy":"nightly","revision":"rev1","occurrence":"2026-11-29T01:00:00Z"}"#,
    ] {
        let response = refused(
            machine.on_request(&ctx(t(1, 30), &state), RID, payload),
            "revision-mismatch",
        );
        assert_eq!(response.body["revision"], "rev1");
        assert_eq!(response.body["policy"], "weekly");
    }
}

#[test]
fn refused_outside_the_window_with_the_next_window() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    // Before it opens, and exactly at the (exclusive) close.
    for now in [t(0, 59), t(3, 0)] {
        let response = refused(
            machine.on_request(&ctx(now, &state), RID, &scheduled("2026-11-29T01:00:00Z")),
            "outside-window",
        );
        assert_eq!(response.body["window"]["open"], false);
        assert_eq!(
            response.body["window"]["opensAt"],
            "2026-11-29T01:00:00.000Z"
        );
        assert_eq!(
            response.body["window"]["closesAt"],
            "2026-11-29T03:00:00.000Z"
        );
    }
    // Open, but for another occurrence (last week's, or one the scheduler guessed wrong).
    let response = refused(
        machine.on_request(
            &ctx(t(1, 30), &state),
            RID,
            &scheduled("2026-11-22T01:00:00Z"),
        ),
        "outside-window",
    );
    assert!(
        response.body["message"]
            .as_str()
            .unwrap()
            .contains("2026-11-29T01:00:00.000Z")
    );
    assert_eq!(machine.phase(), &Phase::Idle);
}

#[test]
fn refused_with_less_than_the_expected_duration_left() {
    let state = AgentState::default();
    let payload = scheduled("2026-11-29T01:00:00Z");
    let mut machine = RebootMachine::new();
    // 300 s needed: 299 s left is refused, exactly 300 s is enough.
    let late = t(3, 0) - TimeDelta::seconds(299);
    let response = refused(
        machine.on_request(&ctx(late, &state), RID, &payload),
        "insufficient-time",
    );
    assert!(
        response.body["message"]
            .as_str()
            .unwrap()
            .contains("299 s left")
    );
    assert_eq!(response.body["window"]["open"], true);
    let just_enough = t(3, 0) - TimeDelta::seconds(300);
    accept(&mut machine, &ctx(just_enough, &state), &payload);
}

#[test]
fn a_null_payload_is_gated_on_the_current_window() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    refused(
        machine.on_request(&ctx(t(0, 30), &state), RID, b"null"),
        "outside-window",
    );
    refused(
        machine.on_request(&ctx(t(2, 58), &state), RID, b"null"),
        "insufficient-time",
    );
    let (persisted, _) = accept(&mut machine, &ctx(t(1, 5), &state), b"null");
    let reboot = persisted.in_progress.unwrap();
    assert_eq!(reboot.occurrence, Some(t(1, 0)));
    assert_eq!(reboot.revision.as_deref(), Some("rev1"));
}

#[test]
fn an_occurrence_already_rebooted_for_is_already_done() {
    let mut state = AgentState::default();
    state.record_reboot(RebootRecord {
        occurrence: Some(t(1, 0)),
        policy: Some("weekly".into()),
        started_at: t(1, 10),
        completed_at: t(1, 12),
        forced: false,
    });
    let mut machine = RebootMachine::new();
    // Inside the window, after it closed, and with a null payload: never a second reboot.
    for (now, payload) in [
        (t(1, 30), scheduled("2026-11-29T01:00:00.000Z")),
        (t(5, 0), scheduled("2026-11-29T01:00:00.000Z")),
        (t(1, 30), b"null".to_vec()),
    ] {
        let response = only_response(machine.on_request(&ctx(now, &state), RID, &payload));
        assert_eq!(response.status, 200);
        assert_eq!(response.body["accepted"], true);
        assert_eq!(response.body["alreadyDone"], true);
        assert_eq!(machine.phase(), &Phase::Idle);
    }
}

#[test]
fn requests_during_a_reboot_are_already_done_or_busy() {
    let state = AgentState::default();
    let payload = scheduled("2026-11-29T01:00:00Z");
    let mut machine = RebootMachine::new();
    let c = ctx(t(1, 30), &state);
    let actions = machine.on_request(&c, RID, &payload);
    assert!(matches!(actions.as_slice(), [RebootAction::Persist(_)]));
    // While persisting and while rebooting: the same occurrence is already being done...
    let response = only_response(machine.on_request(&c, RID, &payload));
    assert_eq!(response.body["alreadyDone"], true);
    machine.on_persisted(Ok(()));
    let response = only_response(machine.on_request(&c, RID, b"null"));
    assert_eq!(response.body["alreadyDone"], true);
    // ...and anything else is refused.
    refused(
        machine.on_request(&c, RID, br#"{"force":true,"reason":"again"}"#),
        "reboot-in-progress",
    );
}

#[test]
fn forced_reboots_skip_the_window_and_are_audited() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    // Outside any window, and without any policy at all.
    let c = Context {
        policy: None,
        ..ctx(t(12, 0), &state)
    };
    let (persisted, actions) = accept(&mut machine, &c, br#"{"force":true,"reason":"CVE-2026-1"}"#);
    let reboot = persisted.in_progress.unwrap();
    assert!(reboot.forced);
    assert_eq!(reboot.reason.as_deref(), Some("CVE-2026-1"));
    assert_eq!(reboot.occurrence, None);
    match actions.as_slice() {
        [
            RebootAction::Respond(r),
            RebootAction::Report(report),
            RebootAction::RunRebootCommand,
        ] => {
            assert_eq!(r.status, 200);
            assert_eq!(r.body["forced"], true);
            let patch = report.to_patch();
            assert_eq!(patch["iothubDM"]["reboot"]["forced"], true);
            assert_eq!(patch["iothubDM"]["reboot"]["reason"], "CVE-2026-1");
            assert_eq!(patch["iothubDM"]["reboot"]["status"], "rebooting");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forced_reboot_inside_a_window_counts_for_that_occurrence() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    let (persisted, _) = accept(
        &mut machine,
        &ctx(t(2, 59), &state),
        br#"{"force":true,"reason":"now"}"#,
    );
    assert_eq!(
        persisted.in_progress.as_ref().unwrap().occurrence,
        Some(t(1, 0))
    );
    // After the restart, the scheduler's request for that window is already done.
    let c = Context {
        boot_id: Some("boot-b"),
        ..ctx(t(2, 59), &persisted)
    };
    let actions = RebootMachine::on_start(&c);
    let RebootAction::Persist(after) = &actions[0] else {
        panic!("{actions:?}")
    };
    let mut machine = RebootMachine::new();
    let response = only_response(machine.on_request(
        &ctx(t(2, 59), after),
        RID,
        &scheduled("2026-11-29T01:00:00Z"),
    ));
    assert_eq!(response.body["alreadyDone"], true);
}

// ---- persisting, the command, the restart -----------------------------------------------------

#[test]
fn a_failed_state_write_answers_500_and_does_not_reboot() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    machine.on_request(&ctx(t(1, 30), &state), RID, b"null");
    let response = only_response(machine.on_persisted(Err("disk full".into())));
    assert_eq!(response.status, 500);
    assert_eq!(response.body["reason"], "state-write-failed");
    assert!(
        response.body["message"]
            .as_str()
            .unwrap()
            .contains("disk full")
    );
    assert_eq!(machine.phase(), &Phase::Idle);
    // A late or stray persist outcome does nothing.
    assert!(machine.on_persisted(Ok(())).is_empty());
}

#[test]
fn a_failed_reboot_command_is_reported_and_the_occurrence_stays_open() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    let (persisted, _) = accept(&mut machine, &ctx(t(1, 30), &state), b"null");
    let c = ctx(t(1, 31), &persisted);
    assert!(
        machine.on_command_finished(&c, Ok(())).is_empty(),
        "success: wait for the power to go"
    );
    let actions = machine.on_command_finished(&c, Err("exit status 1: Access denied".into()));
    match actions.as_slice() {
        [RebootAction::Persist(after), RebootAction::Report(report)] => {
            assert_eq!(after.in_progress, None);
            assert!(!after.rebooted_for(t(1, 0)));
            let patch = report.to_patch();
            let reboot = &patch["iothubDM"]["reboot"];
            assert_eq!(reboot["status"], "failed");
            assert_eq!(reboot["error"], "exit status 1: Access denied");
            assert_eq!(reboot["lastReboot"], "2026-11-29T01:30:00.000Z");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(machine.phase(), &Phase::Idle);
}

#[test]
fn after_a_real_reboot_the_completion_is_reported_and_remembered() {
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    let (persisted, _) = accept(
        &mut machine,
        &ctx(t(1, 30), &state),
        &scheduled("2026-11-29T01:00:00Z"),
    );
    // A new boot id (or none to compare) means the machine went down and came back.
    for boot_id in [Some("boot-b"), None] {
        let c = Context {
            boot_id,
            ..ctx(t(1, 33), &persisted)
        };
        let actions = RebootMachine::on_start(&c);
        match actions.as_slice() {
            [RebootAction::Persist(after), RebootAction::Report(report)] => {
                assert_eq!(after.in_progress, None);
                assert!(after.rebooted_for(t(1, 0)));
                let patch = report.to_patch();
                let reboot = &patch["iothubDM"]["reboot"];
                assert_eq!(reboot["status"], "completed");
                assert_eq!(reboot["completedAt"], "2026-11-29T01:33:00.000Z");
                assert_eq!(reboot["lastReboot"], "2026-11-29T01:30:00.000Z");
                assert_eq!(reboot["occurrence"], "2026-11-29T01:00:00.000Z");
                assert_eq!(reboot["error"], Value::Null);
                assert_eq!(reboot["forced"], false);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn an_agent_restart_without_a_reboot_is_reported_as_failed() {
    // The crash between persisting and rebooting: same boot, so the machine never went down.
    let state = AgentState::default();
    let mut machine = RebootMachine::new();
    let (persisted, _) = accept(&mut machine, &ctx(t(1, 30), &state), b"null");
    let actions = RebootMachine::on_start(&ctx(t(1, 32), &persisted));
    match actions.as_slice() {
        [RebootAction::Persist(after), RebootAction::Report(report)] => {
            assert_eq!(after.in_progress, None);
            assert!(
                !after.rebooted_for(t(1, 0)),
                "it did not reboot, so it may still"
            );
            let patch = report.to_patch();
            assert_eq!(patch["iothubDM"]["reboot"]["status"], "failed");
            assert!(
                patch["iothubDM"]["reboot"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("did not reboot")
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing in progress: nothing to say.
    assert!(RebootMachine::on_start(&ctx(t(1, 32), &state)).is_empty());
}
