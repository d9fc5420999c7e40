//! The example policies shipped in `policies/` are valid and say what their comments say.

use std::path::PathBuf;

use casement_policy::{MaxFailures, WindowKind, ZoneSpec, load};
use chrono::{TimeZone, Utc};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

#[test]
fn every_example_policy_is_valid() {
    let set = load([examples_dir()]).unwrap_or_else(|diagnostics| {
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        panic!("invalid example policies:\n{}", text.join("\n"))
    });
    assert!(set.len() >= 3, "expected at least three examples");
}

#[test]
fn weekly_gateway_reboot_is_in_device_local_time() {
    let set = load([examples_dir()]).unwrap();
    let p = set.get("store-gateways-weekly").unwrap();
    assert_eq!(p.window().timezone(), ZoneSpec::Device);
    // Sunday 02:00 in each device's zone.
    let at = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
    let lisbon = p.window().window_at(chrono_tz::Europe::Lisbon, at).unwrap();
    let helsinki = p
        .window()
        .window_at(chrono_tz::Europe::Helsinki, at)
        .unwrap();
    assert_eq!(
        lisbon.window.opens_at,
        Utc.with_ymd_and_hms(2026, 11, 29, 2, 0, 0).unwrap()
    );
    assert_eq!(
        helsinki.window.opens_at,
        Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap()
    );
}

#[test]
fn nightly_pos_reboot_has_a_fixed_zone_and_blackouts() {
    let set = load([examples_dir()]).unwrap();
    let p = set.get("pos-terminals-nightly").unwrap();
    assert_eq!(
        p.window().timezone(),
        ZoneSpec::Named(chrono_tz::America::New_York)
    );
    assert!(!p.window().blackout().is_empty());
    // Black Friday 2026 (27 November) is skipped.
    let at = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
    let first = p
        .window()
        .windows(chrono_tz::America::New_York, at)
        .next()
        .unwrap();
    assert_eq!(first.kind, WindowKind::SkippedBlackout);
}

#[test]
fn canary_has_tight_rollout_limits_and_wins_priority() {
    let set = load([examples_dir()]).unwrap();
    let canary = set.get("canary").unwrap();
    assert_eq!(canary.rollout().max_concurrent, 1);
    assert_eq!(canary.rollout().max_failures, MaxFailures::Count(0));
    assert!(
        set.iter()
            .filter(|p| p.name() != "canary")
            .all(|p| p.priority() < canary.priority())
    );
}
