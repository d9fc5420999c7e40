use super::*;
use serde_json::json;

fn policy_file(name: &str, priority: i32, target: &str) -> String {
    format!(
        r#"
[policy]
name = "{name}"
priority = {priority}
target = "{target}"

[window]
schedule = "0 2 * * SUN"
duration = "2h"
timezone = "device"
"#
    )
}

fn load(files: &[(&str, i32, &str)]) -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().unwrap();
    for (name, priority, target) in files {
        std::fs::write(
            dir.path().join(format!("{name}.toml")),
            policy_file(name, *priority, target),
        )
        .unwrap();
    }
    let set = casement_policy::load([dir.path()]).unwrap();
    (dir, set)
}

fn view(id: &str, desired: Option<Value>) -> TwinView {
    let mut d = json!({"$version": 1});
    if let Some(m) = desired {
        d["maintenance"] = m;
    }
    TwinView::from_value(json!({
        "deviceId": id, "etag": format!("etag-{id}"),
        "properties": {"desired": d, "reported": {"$version": 1}}
    }))
    .unwrap()
}

fn desired_of(set: &PolicySet, name: &str) -> Value {
    serde_json::to_value(DesiredMaintenance::from(set.get(name).unwrap())).unwrap()
}

fn targets(entries: &[(&str, Vec<TwinView>)]) -> BTreeMap<String, Vec<TwinView>> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn device<'a>(plan: &'a Plan, id: &str) -> &'a DevicePlan {
    plan.devices.iter().find(|d| d.device == id).unwrap()
}

#[test]
fn the_highest_priority_wins_then_the_name_and_overlaps_are_listed() {
    let (_d, set) = load(&[
        ("weekly", 10, "tags.role = 'gateway'"),
        ("canary", 100, "tags.ring = 'canary'"),
        ("also-ten", 10, "tags.role = 'gateway'"),
    ]);
    let plan = resolve(
        &set,
        &targets(&[
            ("weekly", vec![view("g1", None), view("g2", None)]),
            ("also-ten", vec![view("g1", None), view("g2", None)]),
            ("canary", vec![view("g2", None), view("c1", None)]),
        ]),
        &[],
    );
    // g1: two policies at priority 10; "also-ten" sorts first.
    assert_eq!(device(&plan, "g1").winner.as_deref(), Some("also-ten"));
    assert_eq!(device(&plan, "g1").overlap, ["also-ten", "weekly"]);
    // g2: canary's priority wins.
    assert_eq!(device(&plan, "g2").winner.as_deref(), Some("canary"));
    assert_eq!(
        device(&plan, "g2").overlap,
        ["canary", "also-ten", "weekly"]
    );
    assert!(device(&plan, "c1").overlap.is_empty());
    assert_eq!(plan.overlaps().count(), 2);
    let weekly = plan.policies.iter().find(|p| p.name == "weekly").unwrap();
    assert_eq!((weekly.targeted, weekly.wins), (2, 0));
    let canary = plan.policies.iter().find(|p| p.name == "canary").unwrap();
    assert_eq!((canary.targeted, canary.wins, canary.changes), (2, 2, 2));
    assert_eq!(plan.count(ChangeKind::Set), 3);
}

#[test]
fn devices_already_right_are_unchanged_and_others_updated_or_cleared() {
    let (_d, set) = load(&[("weekly", 10, "tags.role = 'gateway'")]);
    let mut stale = desired_of(&set, "weekly");
    stale["revision"] = json!("00000000");
    let plan = resolve(
        &set,
        &targets(&[(
            "weekly",
            vec![
                view("same", Some(desired_of(&set, "weekly"))),
                view("stale", Some(stale)),
                view("new", None),
            ],
        )]),
        &[
            view("same", Some(desired_of(&set, "weekly"))),
            view(
                "orphan",
                Some(json!({"policy": "removed", "revision": "1234abcd"})),
            ),
            view("garbage", Some(json!({"policy": "old", "window": 5}))),
        ],
    );
    assert_eq!(device(&plan, "same").change, ChangeKind::Unchanged);
    assert_eq!(device(&plan, "stale").change, ChangeKind::Update);
    assert_eq!(device(&plan, "new").change, ChangeKind::Set);
    assert_eq!(device(&plan, "orphan").change, ChangeKind::Clear);
    assert_eq!(device(&plan, "garbage").change, ChangeKind::Clear);
    assert_eq!(
        device(&plan, "orphan").current,
        Some(Assigned {
            policy: "removed".into(),
            revision: "1234abcd".into(),
            valid: false,
        })
    );
    assert_eq!(plan.targeted(), 3);
    assert_eq!(device(&plan, "stale").etag.as_deref(), Some("etag-stale"));
}

#[test]
fn merge_patches_delete_stale_keys_and_skip_equal_ones() {
    let old = json!({"policy": "a", "window": {"schedule": "x", "blackout": ["2026-12-24"], "old": 1}, "$meta": 1});
    let new = json!({"policy": "a", "window": {"schedule": "y", "blackout": []}});
    assert_eq!(
        merge_patch_between(&old, &new),
        Some(json!({"window": {"schedule": "y", "blackout": [], "old": null}}))
    );
    assert_eq!(merge_patch_between(&new, &new), None);
    assert_eq!(
        merge_patch_between(&json!(1), &json!({"a": 1})),
        Some(json!({"a": 1}))
    );
    // Applying the patch gives the new document (metadata keys aside).
    let mut applied = old.clone();
    casement_iothub::twin::apply_merge_patch(
        &mut applied,
        &merge_patch_between(&old, &new).unwrap(),
    );
    applied.as_object_mut().unwrap().remove("$meta");
    assert_eq!(applied, new);
}

#[test]
fn patches_set_replace_and_clear_maintenance() {
    let (_d, set) = load(&[("weekly", 10, "tags.role = 'gateway'")]);
    let target = DesiredMaintenance::from(set.get("weekly").unwrap());
    let set_patch = patch_for(None, Some(&target)).unwrap();
    assert_eq!(
        set_patch.desired_patch().unwrap()["maintenance"],
        serde_json::to_value(&target).unwrap()
    );
    let clear = patch_for(Some(&json!({"policy": "x"})), None).unwrap();
    assert_eq!(
        clear.desired_patch().unwrap(),
        &json!({"maintenance": null})
    );
    let same = serde_json::to_value(&target).unwrap();
    assert!(patch_for(Some(&same), Some(&target)).is_none());
}

#[test]
fn text_output_lists_overlaps_changes_and_the_summary() {
    let (_d, set) = load(&[
        ("weekly", 10, "tags.role = 'gateway'"),
        ("canary", 100, "tags.ring = 'canary'"),
    ]);
    let plan = resolve(
        &set,
        &targets(&[
            ("weekly", vec![view("g1", None)]),
            ("canary", vec![view("g1", None)]),
        ]),
        &[view(
            "old",
            Some(json!({"policy": "gone", "revision": "1"})),
        )],
    );
    let summary = ApplySummary {
        targeted: 1,
        changed: 1,
        cleared: 1,
        plan_only: true,
        ..ApplySummary::default()
    };
    let text = render_text(&plan, &summary, true);
    assert!(text.contains("g1: canary > weekly"), "{text}");
    assert!(text.contains("set     g1  - -> canary@"), "{text}");
    assert!(text.contains("clear   old  gone@1 -> -"), "{text}");
    assert!(
        text.contains(
            "1 devices targeted, would change 1, unchanged 0, would clear 1, conflicts 0"
        ),
        "{text}"
    );
    let json = render_json(&plan, &summary);
    assert_eq!(json["summary"]["planOnly"], true);
    assert_eq!(json["plan"]["devices"][1]["change"], "clear");
}
