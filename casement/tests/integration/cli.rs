//! End-to-end tests of `casement validate` and `casement windows`: the built binary, run on
//! temporary policy files, checked for its output, its exact diagnostics and its exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VALID: &str = r#"
[policy]
name   = "NAME"
target = "tags.role = 'gateway'"

[window]
schedule = "30 2 * * *"
duration = "1h"
timezone = "device"
"#;

fn casement(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_casement"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run casement")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exit code")
}

fn policy(name: &str) -> String {
    VALID.replace("NAME", name)
}

/// A temp dir with `files` written into `policies/`.
fn setup(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("policies").join(name), text).unwrap();
    }
    dir
}

fn repo_policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

mod validate {
    use super::*;

    #[test]
    fn valid_set_prints_one_line_per_policy_and_exits_0() {
        let dir = setup(&[("b.toml", &policy("bravo")), ("a.toml", &policy("alpha"))]);
        let out = casement(&["validate", "policies"], dir.path());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("NAME"));
        for (line, name) in lines[1..3].iter().zip(["alpha", "bravo"]) {
            let columns: Vec<&str> = line.split("  ").filter(|c| !c.is_empty()).collect();
            assert_eq!(columns[0].trim(), name, "{line}");
            assert_eq!(columns[1].trim(), format!("policies/{}.toml", &name[..1]));
            assert_eq!(columns[2].trim(), "tags.role = 'gateway'");
            assert_eq!(columns[3].trim(), "30 2 * * *");
            assert_eq!(columns[4].trim(), "device");
            let revision = columns[5].trim();
            assert_eq!(revision.len(), 8);
            assert!(revision.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
        }
        assert_eq!(lines[3], "2 policies are valid");
        assert_eq!(stderr(&out), "");
    }

    #[test]
    fn shipped_example_policies_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let out = casement(&["validate", repo_policies().to_str().unwrap()], dir.path());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for name in ["store-gateways-weekly", "pos-terminals-nightly", "canary"] {
            assert!(stdout(&out).contains(name), "{name} missing");
        }
    }

    #[test]
    fn each_error_kind_has_its_exact_position_and_exit_2() {
        // (file contents, expected diagnostic line)
        let cases: Vec<(String, &str)> = vec![
            (
                policy("x").replace("\"device\"", "\"Europe/Amsterdan\""),
                "policies/p.toml:9:12: window.timezone: unknown zone \"Europe/Amsterdan\" (did you mean \"Europe/Amsterdam\"?)",
            ),
            (
                policy("x").replace("30 2 * * *", "30 2 * 13 *"),
                "policies/p.toml:7:20: window.schedule: month field \"13\": number out of bounds (allowed: 1-12 or JAN-DEC, with lists 1,5 ranges 1-5 and steps */15)",
            ),
            (
                policy("x").replace("\"1h\"", "\"1hour\""),
                "policies/p.toml:8:14: window.duration: unknown unit \"hour\" (use d, h, m or s)",
            ),
            (
                policy("x").replace("\"1h\"", "\"2d\""),
                "policies/p.toml:8:12: window.duration: duration 2d is longer than the shortest gap between two window starts (1d, 2024-01-01 02:30:00 to 2024-01-02 02:30:00); windows would overlap",
            ),
            (
                policy("x").replace("schedule", "schedulle"),
                "policies/p.toml:7:1: window.schedulle: unknown key (did you mean \"schedule\"?)",
            ),
            (
                policy("Bad_Name"),
                "policies/p.toml:3:10: policy.name: invalid character 'B' in name \"Bad_Name\": use a-z, 0-9 and - (try \"bad-name\")",
            ),
            (
                policy("x").replace("'gateway'", "'gateway"),
                "policies/p.toml:4:23: policy.target: invalid condition: unterminated string: expected a closing ' before the end of input",
            ),
            (
                policy("x") + "[rollout]\nmax_failures = \"120%\"\n",
                "policies/p.toml:11:16: rollout.max_failures: \"120%\" is more than 100%",
            ),
            (
                policy("x") + "[reboot]\nmethod_timeout = \"301s\"\n",
                "policies/p.toml:11:18: reboot.method_timeout: 301s is outside IoT Hub's direct-method timeout range, 5s to 5m",
            ),
            (
                policy("x").replace(
                    "timezone = \"device\"",
                    "timezone = \"device\"\nblackout = [\"2026-13-01\"]",
                ),
                "policies/p.toml:10:13: window.blackout: \"2026-13-01\" is not a date; write YYYY-MM-DD, e.g. \"2026-12-24\"",
            ),
            (
                policy("x").replace("duration = \"1h\"", "duration = \"1h"),
                "policies/p.toml:8:15: invalid TOML: ",
            ),
        ];
        for (text, expected) in cases {
            let dir = setup(&[("p.toml", &text)]);
            let out = casement(&["validate", "policies/p.toml"], dir.path());
            assert_eq!(code(&out), 2, "{expected}\n{}", stderr(&out));
            assert_eq!(stdout(&out), "", "nothing valid is printed");
            let err = stderr(&out);
            let first = err.lines().next().unwrap_or_default();
            assert!(
                first.starts_with(expected),
                "expected {expected}\n     got {first}"
            );
            assert_eq!(
                err.lines().last(),
                Some("error: 1 problem in 1 file; nothing was accepted")
            );
        }
    }

    #[test]
    fn every_error_in_every_file_is_reported_and_nothing_is_valid() {
        let dir = setup(&[
            ("a.toml", &policy("alpha")),
            (
                "b.toml",
                &policy("bravo")
                    .replace("\"device\"", "\"Mars/Base\"")
                    .replace("\"1h\"", "\"0s\""),
            ),
            ("c.toml", &policy("charlie").replace("30 2", "30 24")),
        ]);
        let out = casement(&["validate", "policies"], dir.path());
        assert_eq!(code(&out), 2);
        assert_eq!(stdout(&out), "");
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert!(lines[0].starts_with("policies/b.toml:8:12: window.duration: "));
        assert!(lines[1].starts_with("policies/b.toml:9:12: window.timezone: "));
        assert!(lines[2].starts_with("policies/c.toml:7:16: window.schedule: hour field"));
        assert_eq!(
            lines[3],
            "error: 3 problems in 2 files; nothing was accepted"
        );
    }

    #[test]
    fn duplicate_names_name_both_files() {
        let dir = setup(&[("a.toml", &policy("same")), ("b.toml", &policy("same"))]);
        let out = casement(&["validate", "policies"], dir.path());
        assert_eq!(code(&out), 2);
        assert_eq!(
            stderr(&out).lines().next().unwrap(),
            "policies/b.toml:3:10: policy.name: duplicate policy name \"same\": also defined at policies/a.toml:3:10"
        );
    }

    #[test]
    fn missing_file_and_usage_errors_exit_2() {
        let dir = setup(&[]);
        let out = casement(&["validate", "policies/nope.toml"], dir.path());
        assert_eq!(code(&out), 2);
        assert!(
            stderr(&out).starts_with("policies/nope.toml: cannot read: "),
            "{}",
            stderr(&out)
        );
        let out = casement(&["validate", "policies"], dir.path());
        assert_eq!(code(&out), 2);
        assert!(stderr(&out).starts_with("policies: directory has no *.toml policy files"));
        let out = casement(&["validate"], dir.path());
        assert_eq!(code(&out), 2);
        assert!(stderr(&out).contains("<PATH>..."));
        let out = casement(&["frobnicate"], dir.path());
        assert_eq!(code(&out), 2);
    }

    #[test]
    fn help_shows_examples() {
        let dir = tempfile::tempdir().unwrap();
        let out = casement(&["--help"], dir.path());
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains("casement validate policies/"));
        assert!(stdout(&out).contains("windows"));
        let out = casement(&["windows", "--help"], dir.path());
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains("--zone <ZONE>"));
        assert!(stdout(&out).contains("--from <RFC3339>"));
        assert!(stdout(&out).contains("--count <N>"));
    }
}

mod windows {
    use super::*;

    /// The data rows of the windows table (after the header line).
    fn rows(text: &str) -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with('#'))
            .skip(1)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn device_zone_policy_needs_zone() {
        let dir = setup(&[("p.toml", &policy("gateways"))]);
        let out = casement(&["windows", "policies/p.toml"], dir.path());
        assert_eq!(code(&out), 2);
        assert_eq!(stdout(&out), "");
        assert!(
            stderr(&out).starts_with(
                "error: policy \"gateways\" uses timezone = \"device\": each device's windows are in its own zone."
            ),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("--zone Europe/Amsterdam"));
    }

    #[test]
    fn lists_windows_in_local_time_and_utc_marking_dst() {
        let dir = setup(&[("p.toml", &policy("gateways"))]);
        let out = casement(
            &[
                "windows",
                "policies/p.toml",
                "--zone",
                "Europe/Amsterdam",
                "--from",
                "2026-03-28T00:00:00Z",
                "--count",
                "3",
            ],
            dir.path(),
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("in Europe/Amsterdam (device zone from --zone)"),
            "{text}"
        );
        let rows = rows(&text);
        assert_eq!(rows.len(), 3, "{text}");
        assert_eq!(
            rows[0],
            "1  Sat 2026-03-28 02:30 CET   Sat 2026-03-28 03:30 CET   2026-03-28T01:30:00Z  2026-03-28T02:30:00Z"
        );
        assert_eq!(
            rows[1],
            "2  Sun 2026-03-29 03:00 CEST  Sun 2026-03-29 04:00 CEST  2026-03-29T01:00:00Z  2026-03-29T02:00:00Z  moved by DST: 02:30 does not exist that night (clocks spring forward)"
        );
        assert!(
            rows[2].starts_with("3  Mon 2026-03-30 02:30 CEST"),
            "{}",
            rows[2]
        );
    }

    #[test]
    fn fall_back_and_open_now_are_marked() {
        let dir = setup(&[("p.toml", &policy("gateways"))]);
        let out = casement(
            &[
                "windows",
                "policies/p.toml",
                "--zone",
                "Europe/Amsterdam",
                "--from",
                "2026-10-25T01:00:00Z",
                "--count",
                "1",
            ],
            dir.path(),
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let rows = rows(&stdout(&out));
        assert_eq!(
            rows,
            vec![
                "1  Sun 2026-10-25 02:30 CEST  Sun 2026-10-25 02:30 CET  2026-10-25T00:30:00Z  2026-10-25T01:30:00Z  open now; DST: 02:30 happens twice (clocks fall back); opens at the first"
            ]
        );
    }

    #[test]
    fn fixed_zone_policy_with_blackout_marks_skipped_days() {
        let text = policy("pos")
            .replace("\"device\"", "\"America/New_York\"")
            .replace("timezone", "blackout = [\"2026-11-27\"]\ntimezone");
        let dir = setup(&[("p.toml", &text)]);
        let out = casement(
            &[
                "windows",
                "policies/p.toml",
                "--from",
                "2026-11-26T12:00:00Z",
                "--count",
                "2",
            ],
            dir.path(),
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("blackout dates: 2026-11-27"), "{text}");
        let rows = rows(&text);
        assert_eq!(rows.len(), 3, "{text}");
        assert!(
            rows[0].starts_with("-  Fri 2026-11-27 02:30 EST"),
            "{}",
            rows[0]
        );
        assert!(rows[0].ends_with("skipped: 2026-11-27 is a blackout date"));
        assert!(rows[1].starts_with("1  Sat 2026-11-28 02:30 EST"));
        assert!(rows[2].starts_with("2  Sun 2026-11-29 02:30 EST"));
        // --zone cannot override a fixed zone.
        let out = casement(
            &["windows", "policies/p.toml", "--zone", "Europe/Amsterdam"],
            dir.path(),
        );
        assert_eq!(code(&out), 2);
        assert!(stderr(&out).contains("uses the fixed zone America/New_York"));
    }

    #[test]
    fn bad_arguments_exit_2_with_a_reason() {
        let dir = setup(&[("p.toml", &policy("gateways"))]);
        let out = casement(
            &["windows", "policies/p.toml", "--zone", "Europe/Amsterdan"],
            dir.path(),
        );
        assert_eq!(code(&out), 2);
        assert!(
            stderr(&out)
                .contains("unknown zone \"Europe/Amsterdan\" (did you mean \"Europe/Amsterdam\"?)"),
            "{}",
            stderr(&out)
        );
        let out = casement(
            &[
                "windows",
                "policies/p.toml",
                "--zone",
                "UTC",
                "--from",
                "tomorrow",
            ],
            dir.path(),
        );
        assert_eq!(code(&out), 2);
        assert!(stderr(&out).contains("not an RFC 3339 instant"));
        let out = casement(
            &[
                "windows",
                "policies/p.toml",
                "--zone",
                "UTC",
                "--count",
                "0",
            ],
            dir.path(),
        );
        assert_eq!(code(&out), 2);
        let broken = setup(&[("p.toml", &policy("gateways").replace("\"1h\"", "\"1x\""))]);
        let out = casement(
            &["windows", "policies/p.toml", "--zone", "UTC"],
            broken.path(),
        );
        assert_eq!(code(&out), 2);
        assert!(stderr(&out).starts_with("policies/p.toml:8:14: window.duration: unknown unit"));
    }

    #[test]
    fn six_field_schedules_show_seconds() {
        let dir = setup(&[(
            "p.toml",
            &policy("s").replace("30 2 * * *", "15 30 2 * * *"),
        )]);
        let out = casement(
            &[
                "windows",
                "policies/p.toml",
                "--zone",
                "UTC",
                "--from",
                "2026-01-01T00:00:00Z",
                "--count",
                "1",
            ],
            dir.path(),
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(
            rows(&stdout(&out)),
            vec![
                "1  Thu 2026-01-01 02:30:15 UTC  Thu 2026-01-01 03:30:15 UTC  2026-01-01T02:30:15Z  2026-01-01T03:30:15Z"
            ]
        );
    }
}
