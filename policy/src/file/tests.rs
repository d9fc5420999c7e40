use super::*;
use crate::policy::MaxFailures;
use crate::window::WindowKind;

const FULL: &str = r#"# A full policy.
[policy]
name        = "store-gateways-weekly"
description = "Weekly reboot"
priority    = 10
target      = "tags.role = 'gateway' AND tags.env = 'prod'"

[window]
schedule = "0 2 * * SUN"
duration = "2h"
timezone = "Europe/Amsterdam"
blackout = ["2026-12-27", 2027-01-03]

[reboot]
expected_duration = "10m"
method_timeout    = "1m"

[rollout]
max_concurrent = 50
max_per_minute = 200
max_failures   = "5%"
"#;

const MINIMAL: &str = r#"
[policy]
name   = "minimal"
target = "tags.role = 'gateway'"

[window]
schedule = "0 2 * * *"
duration = "1h"
timezone = "device"
"#;

fn parse(source: &str) -> Result<Policy, Vec<Diagnostic>> {
    parse_policy(Path::new("policies/x.toml"), source)
}

/// The diagnostics of an invalid policy, displayed.
fn errors(source: &str) -> Vec<String> {
    match parse(source) {
        Ok(_) => panic!("expected errors"),
        Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
    }
}

/// MINIMAL with one line replaced (by its key) or appended to a section.
fn with(line: &str) -> String {
    let key = line.split('=').next().unwrap().trim();
    let replaced: Vec<String> = MINIMAL
        .lines()
        .map(|l| {
            if l.split('=').next().unwrap().trim() == key {
                line.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    replaced.join("\n") + "\n"
}

#[test]
fn full_policy_parses() {
    let p = parse(FULL).unwrap();
    assert_eq!(p.name(), "store-gateways-weekly");
    assert_eq!(p.description(), "Weekly reboot");
    assert_eq!(p.priority(), 10);
    assert_eq!(
        p.target_text(),
        "tags.role = 'gateway' AND tags.env = 'prod'"
    );
    assert!(p.target_query().starts_with("SELECT * FROM devices WHERE "));
    assert_eq!(p.window().schedule().as_str(), "0 2 * * SUN");
    assert_eq!(p.window().duration(), Duration::from_secs(7200));
    assert_eq!(
        p.window().timezone(),
        ZoneSpec::Named(chrono_tz::Europe::Amsterdam)
    );
    assert_eq!(p.window().blackout().len(), 2);
    assert_eq!(p.reboot().expected_duration, Duration::from_secs(600));
    assert_eq!(p.reboot().method_timeout, Duration::from_secs(60));
    assert_eq!(p.rollout().max_concurrent, 50);
    assert_eq!(p.rollout().max_per_minute, 200);
    assert_eq!(p.rollout().max_failures, MaxFailures::Percent(500));
    assert_eq!(p.revision().as_str().len(), 8);
    assert_eq!(p.file(), Path::new("policies/x.toml"));
    // 2026-12-27 is a Sunday and blacked out.
    let at = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 12, 26, 12, 0, 0).unwrap();
    let first = p
        .window()
        .windows(chrono_tz::Europe::Amsterdam, at)
        .next()
        .unwrap();
    assert_eq!(first.kind, WindowKind::SkippedBlackout);
}

#[test]
fn defaults_fill_optional_fields() {
    let p = parse(MINIMAL).unwrap();
    assert_eq!(p.description(), "");
    assert_eq!(p.priority(), 0);
    assert_eq!(p.window().timezone(), ZoneSpec::Device);
    assert!(p.window().blackout().is_empty());
    assert_eq!(*p.reboot(), RebootSettings::default());
    assert_eq!(p.reboot().expected_duration, Duration::from_secs(300));
    assert_eq!(p.reboot().method_timeout, Duration::from_secs(30));
    assert_eq!(*p.rollout(), Rollout::default());
    assert_eq!(p.rollout().max_concurrent, 10);
    assert_eq!(p.rollout().max_per_minute, 60);
    assert_eq!(p.rollout().max_failures, MaxFailures::Percent(1000));
}

#[test]
fn unknown_zone_points_at_the_value_and_suggests() {
    let source = with("timezone = \"Europe/Amsterdan\"");
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:9:12: window.timezone: unknown zone \"Europe/Amsterdan\" (did you mean \"Europe/Amsterdam\"?)"
        ]
    );
}

#[test]
fn unknown_keys_and_sections_suggest_the_right_name() {
    let source = MINIMAL.replace("timezone = ", "timzone = ");
    let errs = errors(&source);
    assert_eq!(
        errs,
        vec!["policies/x.toml:9:1: window.timzone: unknown key (did you mean \"timezone\"?)"]
    );
    // A missing key with no misspelling in sight is reported at the section header.
    let source = MINIMAL.replace("timezone = \"device\"", "");
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:6:1: window.timezone: missing required key \"timezone\" (an IANA zone such as \"Europe/Amsterdam\", or \"device\")"
        ]
    );
    let source = format!("{MINIMAL}\n[rolout]\nmax_concurrent = 5\n");
    assert_eq!(
        errors(&source),
        vec!["policies/x.toml:11:2: rolout: unknown section [rolout] (did you mean [rollout]?)"]
    );
    let source = format!("priority = 5\n{MINIMAL}");
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:1:1: priority: \"priority\" must be inside a section: put it under [policy]"
        ]
    );
    let source = MINIMAL.replace("duration = \"1h\"", "duration = \"1h\"\npriority = 3");
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:9:1: window.priority: unknown key \"priority\" in [window]; it belongs in [policy]"
        ]
    );
    let source = format!("{MINIMAL}colour = \"red\"\n");
    let errs = errors(&source);
    assert!(errs[0].starts_with("policies/x.toml:10:1: window.colour: unknown key (keys of [window] are schedule, duration, timezone, blackout)"), "{errs:?}");
}

#[test]
fn missing_sections() {
    let errs = errors("# nothing here\n");
    assert_eq!(
        errs,
        vec![
            "policies/x.toml:1:1: policy: missing [policy] section (with at least name and target)",
            "policies/x.toml:1:1: window: missing [window] section (with schedule, duration and timezone)",
        ]
    );
    let errs = errors(
        "policy = 3\n[window]\nschedule = \"0 2 * * *\"\nduration = \"1h\"\ntimezone = \"UTC\"\n",
    );
    assert!(
        errs.iter()
            .any(|e| e
                == "policies/x.toml:1:1: policy: expected a [policy] section, found an integer"),
        "{errs:?}"
    );
}

#[test]
fn name_must_be_valid() {
    assert_eq!(
        errors(&with("name   = \"Store_Gateways\"")),
        vec![
            "policies/x.toml:3:10: policy.name: invalid character 'S' in name \"Store_Gateways\": use a-z, 0-9 and - (try \"store-gateways\")"
        ]
    );
    assert_eq!(
        errors(&with("name   = \"-x\"")),
        vec!["policies/x.toml:3:10: policy.name: name \"-x\" must not start or end with '-'"]
    );
}

#[test]
fn priority_range_and_type() {
    let source = MINIMAL.replace(
        "name   = \"minimal\"",
        "name   = \"minimal\"\npriority = 5000",
    );
    assert_eq!(
        errors(&source),
        vec!["policies/x.toml:4:12: policy.priority: 5000 is out of range: expected -1000 to 1000"]
    );
    let source = MINIMAL.replace(
        "name   = \"minimal\"",
        "name   = \"minimal\"\npriority = \"high\"",
    );
    assert_eq!(
        errors(&source),
        vec!["policies/x.toml:4:12: policy.priority: expected an integer, found a string"]
    );
    let source = MINIMAL.replace(
        "name   = \"minimal\"",
        "name   = \"minimal\"\npriority = -1_000",
    );
    assert_eq!(parse(&source).unwrap().priority(), -1000);
}

#[test]
fn target_errors_point_into_the_string() {
    // The query parser reports the column of the offending token inside the condition.
    let source = with("target = \"tags.role = 'gateway' AND AND tags.env = 'prod'\"");
    let errs = errors(&source);
    assert_eq!(errs.len(), 1, "{errs:?}");
    // `target = "` is 10 characters; the second AND is at column 27 of the condition.
    assert!(
        errs[0].starts_with("policies/x.toml:4:37: policy.target: invalid condition: "),
        "{errs:?}"
    );
    let errs = errors(&with("target = \"\""));
    assert!(
        errs[0].starts_with("policies/x.toml:4:11: policy.target: invalid condition"),
        "{errs:?}"
    );
}

#[test]
fn targets_use_azures_query_dialect() {
    // STARTS_WITH is a routing-query function: Azure answers 400 to it in a twin query, so the
    // policy is refused here, at the function (`target = "` is 10 characters).
    let errs = errors(&with("target = \"STARTS_WITH(deviceId, 'store-')\""));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("policies/x.toml:4:11: policy.target: invalid condition: STARTS_WITH"),
        "{errs:?}"
    );
    assert!(errs[0].contains("only IS_DEFINED"), "{errs:?}");
    let errs = errors(&with(
        "target = \"tags.env = 'prod' AND LOWER(tags.site) = 'ams'\"",
    ));
    assert!(
        errs[0].starts_with("policies/x.toml:4:33: policy.target: invalid condition: LOWER"),
        "{errs:?}"
    );
    // A reserved word as a bare property name, at the word; escaped, it is valid.
    let errs = errors(&with("target = \"tags.group = 'north'\""));
    assert!(
        errs[0].starts_with("policies/x.toml:4:16: policy.target: invalid condition: 'group'"),
        "{errs:?}"
    );
    assert!(errs[0].contains("[[group]]"), "{errs:?}");
    let p = parse(&with(
        "target = \"tags.[[group]] = 'north' AND IS_DEFINED(tags.role)\"",
    ))
    .unwrap();
    assert!(
        p.target_query().contains("tags.[[group]]"),
        "{}",
        p.target_query()
    );
}

#[test]
fn schedule_errors_name_the_field_and_point_at_it() {
    let errs = errors(&with("schedule = \"0 25 * * *\""));
    assert_eq!(
        errs,
        vec![
            "policies/x.toml:7:15: window.schedule: hour field \"25\": number out of bounds (allowed: 0-23, with lists 1,5 ranges 1-5 and steps */15)"
        ]
    );
    let errs = errors(&with("schedule = \"0 2 * *\""));
    assert_eq!(
        errs,
        vec![
            "policies/x.toml:7:13: window.schedule: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), found 4"
        ]
    );
}

#[test]
fn duration_errors() {
    assert_eq!(
        errors(&with("duration = \"2 hours\"")),
        vec!["policies/x.toml:8:14: window.duration: unknown unit \" hours\" (use d, h, m or s)"]
    );
    assert_eq!(
        errors(&with("duration = \"0s\"")),
        vec!["policies/x.toml:8:12: window.duration: duration must be positive (e.g. \"2h\")"]
    );
    assert_eq!(
        errors(&with("duration = 7200")),
        vec!["policies/x.toml:8:12: window.duration: expected a string, found an integer"]
    );
    let errs = errors(&with("duration = \"25h\""));
    assert_eq!(
        errs,
        vec![
            "policies/x.toml:8:12: window.duration: duration 1d1h is longer than the shortest gap between two window starts (1d, 2024-01-01 02:00:00 to 2024-01-02 02:00:00); windows would overlap"
        ]
    );
}

#[test]
fn blackout_dates() {
    let source = MINIMAL.replace(
        "timezone = \"device\"",
        "timezone = \"device\"\nblackout = [\"2026-12-24\", \"24/12/2026\", 2026-12-31T10:00:00, 5]",
    );
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:10:27: window.blackout: \"24/12/2026\" is not a date; write YYYY-MM-DD, e.g. \"2026-12-24\"",
            "policies/x.toml:10:41: window.blackout: expected a date such as \"2026-12-24\", found a datetime",
            "policies/x.toml:10:62: window.blackout: expected a date such as \"2026-12-24\", found an integer",
        ]
    );
    let source = MINIMAL.replace(
        "timezone = \"device\"",
        "timezone = \"device\"\nblackout = \"2026-12-24\"",
    );
    assert!(errors(&source)[0].contains("expected a list of dates"));
    let source = MINIMAL.replace(
        "timezone = \"device\"",
        "timezone = \"device\"\nblackout = [\"2026-02-30\"]",
    );
    assert!(errors(&source)[0].contains("\"2026-02-30\" is not a date"));
}

#[test]
fn reboot_fields() {
    let source = format!("{MINIMAL}[reboot]\nexpected_duration = \"1h\"\n");
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:11:21: reboot.expected_duration: expected_duration 1h must be shorter than window.duration 1h, or no reboot could ever start"
        ]
    );
    // The default (5m) against a 5-minute window is reported too, at the window's duration.
    let source = with("duration = \"5m\"").replace("0 2 * * *", "*/10 * * * *");
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:1:1: reboot.expected_duration: expected_duration 5m (the default) must be shorter than window.duration 5m, or no reboot could ever start"
        ]
    );
    let source = format!("{MINIMAL}[reboot]\nmethod_timeout = \"10m\"\n");
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:11:18: reboot.method_timeout: 10m is outside IoT Hub's direct-method timeout range, 5s to 5m"
        ]
    );
    let source = format!("{MINIMAL}[reboot]\nmethod_timeout = \"4s\"\n");
    assert!(errors(&source)[0].contains("outside IoT Hub's direct-method timeout range"));
    let source = format!("{MINIMAL}[reboot]\nmethod_timeout = \"5m\"\n");
    assert_eq!(
        parse(&source).unwrap().reboot().method_timeout,
        Duration::from_secs(300)
    );
}

#[test]
fn rollout_fields() {
    let source = format!(
        "{MINIMAL}[rollout]\nmax_concurrent = 0\nmax_per_minute = \"many\"\nmax_failures = \"150%\"\n"
    );
    assert_eq!(
        errors(&source),
        vec![
            "policies/x.toml:11:18: rollout.max_concurrent: 0 is out of range: expected 1 to 1000000 (devices rebooting at once)",
            "policies/x.toml:12:18: rollout.max_per_minute: expected an integer, found a string",
            "policies/x.toml:13:16: rollout.max_failures: \"150%\" is more than 100%",
        ]
    );
    let source = format!("{MINIMAL}[rollout]\nmax_failures = 3\n");
    assert_eq!(
        parse(&source).unwrap().rollout().max_failures,
        MaxFailures::Count(3)
    );
    let source = format!("{MINIMAL}[rollout]\nmax_failures = \"3\"\n");
    assert_eq!(
        parse(&source).unwrap().rollout().max_failures,
        MaxFailures::Count(3)
    );
    let source = format!("{MINIMAL}[rollout]\nmax_failures = -3\n");
    assert!(errors(&source)[0].contains("not a count"));
}

#[test]
fn toml_syntax_errors_have_positions() {
    let errs = errors("[policy]\nname = \"x\"\ntarget = tags.role\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("policies/x.toml:3:10: invalid TOML: "),
        "{errs:?}"
    );
    let errs = errors("[policy]\nname = \"a\"\nname = \"b\"\n");
    assert!(
        errs[0].starts_with("policies/x.toml:3:1: invalid TOML: duplicate key"),
        "{errs:?}"
    );
}

#[test]
fn every_error_in_a_file_is_reported_in_order() {
    let source = r#"
[policy]
name = "Bad"
target = "tags.x ="

[window]
schedule = "0 2 * * MOON"
duration = "2x"
timezone = "Mars/Olympus"
"#;
    let errs = errors(source);
    let fields: Vec<&str> = errs.iter().map(|e| e.split(": ").nth(1).unwrap()).collect();
    assert_eq!(
        fields,
        vec![
            "policy.name",
            "policy.target",
            "window.schedule",
            "window.duration",
            "window.timezone"
        ],
        "{errs:?}"
    );
}

#[test]
fn escaped_strings_point_at_the_literal() {
    let source = with("schedule = \"0 25 * * \\u002A\"");
    let errs = errors(&source);
    assert!(
        errs[0].starts_with("policies/x.toml:7:12: window.schedule: hour field"),
        "{errs:?}"
    );
    // Literal strings have no escapes and map exactly.
    let source = with("schedule = '0 25 * * *'");
    assert!(errors(&source)[0].starts_with("policies/x.toml:7:15:"));
}

#[test]
fn columns_count_characters_not_bytes() {
    let source = MINIMAL.replace(
        "name   = \"minimal\"",
        "description = \"Wöchentlich\" ; name   = \"minimal\"",
    );
    // A syntax error after a non-ASCII character: column in characters.
    let errs = errors(&source);
    assert!(
        errs[0].starts_with("policies/x.toml:3:29: invalid TOML"),
        "{errs:?}"
    );
}

#[test]
fn revision_ignores_formatting_and_tracks_meaning() {
    let base = parse(FULL).unwrap().revision().clone();
    let reformatted = r#"
# Same policy, reordered and reformatted.
[rollout]
max_failures = '5%'
max_per_minute = 200
max_concurrent = 50

[window]
timezone = "Europe/Amsterdam"   # comment
blackout = [2027-01-03, "2026-12-27", "2026-12-27"]
duration = "120m"
schedule = "0  2 * * sun"

[reboot]
method_timeout = "60s"
expected_duration = "600s"

[policy]
target = "tags.role='gateway' AND tags.env='prod'"
priority = 10
name = "store-gateways-weekly"
description = "A different description"
"#;
    assert_eq!(parse(reformatted).unwrap().revision(), &base);

    let changes = [
        (
            "name        = \"store-gateways-weekly\"",
            "name = \"other\"",
        ),
        ("priority    = 10", "priority = 11"),
        (
            "target      = \"tags.role = 'gateway' AND tags.env = 'prod'\"",
            "target = \"tags.role = 'gateway'\"",
        ),
        ("schedule = \"0 2 * * SUN\"", "schedule = \"0 3 * * SUN\""),
        ("duration = \"2h\"", "duration = \"3h\""),
        ("timezone = \"Europe/Amsterdam\"", "timezone = \"device\""),
        (
            "blackout = [\"2026-12-27\", 2027-01-03]",
            "blackout = [\"2026-12-27\"]",
        ),
        ("expected_duration = \"10m\"", "expected_duration = \"11m\""),
        ("method_timeout    = \"1m\"", "method_timeout = \"2m\""),
        ("max_concurrent = 50", "max_concurrent = 51"),
        ("max_per_minute = 200", "max_per_minute = 201"),
        ("max_failures   = \"5%\"", "max_failures = \"5\""),
    ];
    for (from, to) in changes {
        assert!(FULL.contains(from), "{from}");
        let changed = parse(&FULL.replace(from, to)).unwrap();
        assert_ne!(changed.revision(), &base, "{from} -> {to}");
    }
}

mod load {
    use super::*;

    fn write(dir: &Path, name: &str, source: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, source).unwrap();
        path
    }

    fn named(name: &str) -> String {
        MINIMAL.replace("\"minimal\"", &format!("\"{name}\""))
    }

    #[test]
    fn directories_are_expanded_sorted_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.toml", &named("bravo"));
        let a = write(dir.path(), "a.toml", &named("alpha"));
        write(dir.path(), "notes.txt", "not a policy");
        let set = load([dir.path(), a.as_path()]).unwrap();
        let names: Vec<&str> = set.iter().map(|p| p.name()).collect();
        assert_eq!(names, vec!["alpha", "bravo"]);
        assert_eq!(set.len(), 2);
        assert!(set.get("bravo").is_some());
        assert!(set.get("charlie").is_none());
    }

    #[test]
    fn duplicate_names_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &named("same"));
        write(dir.path(), "b.toml", &named("same"));
        let errs = load([dir.path()]).unwrap_err();
        assert_eq!(errs.len(), 1);
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        assert_eq!(
            errs[0].to_string(),
            format!(
                "{}:3:10: policy.name: duplicate policy name \"same\": also defined at {}:3:10",
                b.display(),
                a.display()
            )
        );
    }

    #[test]
    fn all_or_nothing_with_every_error_of_every_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &named("alpha"));
        write(
            dir.path(),
            "b.toml",
            &named("bravo").replace("\"device\"", "\"Nowhere/Land\""),
        );
        write(
            dir.path(),
            "c.toml",
            &named("charlie").replace("\"1h\"", "\"1y\""),
        );
        let errs = load([dir.path()]).unwrap_err();
        let files: Vec<String> = errs
            .iter()
            .map(|d| d.file.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, vec!["b.toml", "c.toml"]);
    }

    #[test]
    fn unreadable_and_empty_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let errs = load([&missing]).unwrap_err();
        assert_eq!(errs[0].line, 0);
        assert!(
            errs[0]
                .to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display())),
            "{}",
            errs[0]
        );
        let empty = tempfile::tempdir().unwrap();
        let errs = load([empty.path()]).unwrap_err();
        assert!(errs[0].message.contains("no *.toml policy files"));
        let big = write(dir.path(), "big.toml", &"#".repeat(2 * 1024 * 1024));
        let errs = load([&big]).unwrap_err();
        assert!(errs[0].message.contains("larger than"));
        let binary = dir.path().join("bin.toml");
        std::fs::write(&binary, [0x5b, 0xff, 0xfe]).unwrap();
        let errs = load([&binary]).unwrap_err();
        assert!(errs[0].message.contains("not UTF-8"));
    }
}
