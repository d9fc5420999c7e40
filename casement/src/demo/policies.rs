//! The demo's policies, `policies/demo/*.toml`, built into the binary so that `casement demo`
//! works from any directory (and from `cargo install`). `--policies DIR` uses other files.

use std::path::Path;

/// `(file name, contents)` of each built-in demo policy.
pub const BUILTIN: [(&str, &str); 3] = [
    (
        "demo-canary.toml",
        include_str!("../../../policies/demo/demo-canary.toml"),
    ),
    (
        "demo-gateways.toml",
        include_str!("../../../policies/demo/demo-gateways.toml"),
    ),
    (
        "demo-pos.toml",
        include_str!("../../../policies/demo/demo-pos.toml"),
    ),
];

/// Writes the built-in policies into `dir` (created if needed).
///
/// # Errors
/// The directory or a file cannot be written.
pub fn write_builtin(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in BUILTIN {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::fleet;
    use chrono::{TimeDelta, TimeZone, Utc};
    use std::time::Duration;

    fn load() -> casement_policy::PolicySet {
        let dir = tempfile::tempdir().expect("temp dir");
        write_builtin(dir.path()).expect("write");
        casement_policy::load([dir.path()]).expect("the demo policies are valid")
    }

    #[test]
    fn the_files_on_disk_are_the_built_in_ones_and_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/demo");
        let set = casement_policy::load([&root]).expect("policies/demo is valid");
        assert_eq!(set.len(), BUILTIN.len());
        for (name, text) in BUILTIN {
            let on_disk = std::fs::read_to_string(root.join(name)).expect("read");
            assert_eq!(on_disk, text, "{name}");
        }
    }

    #[test]
    fn every_device_of_the_demo_fleet_is_targeted() {
        let set = load();
        for device in fleet::plan(200, &fleet::default_sites()) {
            let twin = device.twin();
            assert!(
                set.iter().any(|p| p.target().matches(&twin)),
                "{} is targeted by no demo policy",
                device.id
            );
        }
    }

    /// The promise of `casement demo --help`: whatever the instant the demo starts, every
    /// policy lets a reboot start within a minute, on every zone of the fleet, with the
    /// scheduler's default clock-skew allowance.
    #[test]
    fn a_reboot_can_start_within_a_minute_of_any_instant() {
        let set = load();
        let skew = TimeDelta::seconds(5);
        let start = Utc.with_ymd_and_hms(2026, 3, 29, 0, 0, 0).unwrap();
        for policy in &set {
            let expected = TimeDelta::from_std(policy.reboot().expected_duration).unwrap();
            for site in fleet::default_sites() {
                let tz = policy.window().timezone().resolve(Some(site.zone)).unwrap();
                for step in 0..(4 * 60 / 7) {
                    let t = start + TimeDelta::seconds(7 * step);
                    let state = policy.window().window_at(tz, t).unwrap();
                    let usable_until = state.window.closes_at - expected - skew;
                    let first = (state.window.opens_at + skew).max(t);
                    let wait = if first <= usable_until {
                        first - t
                    } else {
                        let next = policy
                            .window()
                            .window_at(tz, state.window.closes_at)
                            .unwrap();
                        next.window.opens_at + skew - t
                    };
                    assert!(
                        wait <= TimeDelta::seconds(60),
                        "{} in {tz} at {t}: first reboot after {wait}",
                        policy.name()
                    );
                }
            }
            assert!(policy.window().duration() <= Duration::from_secs(120));
        }
    }
}
