//! The `casement demo` and `casement hub` subcommands through the real binary: their help tells
//! the story, a taken port names the flag that moves it, and the hub starts, says where it
//! listens and stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn casement() -> Command {
    Command::new(env!("CARGO_BIN_EXE_casement"))
}

/// The child's stdout, line by line, read on a thread (so a test can wait with a bound).
fn stdout_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn demo_help_tells_the_story() {
    let out = casement().args(["demo", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "local IoT hub",
        "simulated devices",
        "policies/demo/",
        "max_concurrent",
        "compliance report",
        "--devices <N>",
        "--duration <DURATION>",
        "--keep-running",
        "Exit status: 0 when the fleet is compliant",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
    let top = casement().arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("demo"), "{top}");
    assert!(top.contains("hub"), "{top}");
}

#[test]
fn demo_rejects_bad_flags_with_a_usage_error() {
    let out = casement()
        .args(["demo", "--devices", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = casement()
        .args(["demo", "--duration", "later"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hub_help_lists_its_flags() {
    let out = casement().args(["hub", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--mqtt-addr",
        "--https-addr",
        "--http-addr",
        "--data-dir",
        "--in-memory",
        "--throttle",
        "connection.env",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}

#[test]
fn a_taken_port_names_the_flag_that_moves_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = casement()
        .args([
            "hub",
            "--in-memory",
            "--no-mqtts",
            "--no-https",
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            &addr,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mqtt-addr"), "{err}");
    assert!(err.contains(&addr), "{err}");
}

#[cfg(unix)]
#[test]
fn the_hub_starts_prints_its_connection_string_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = casement()
        .args([
            "hub",
            "--no-mqtts",
            "--no-https",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let mut banner = String::new();
    while !banner.contains("IOTHUB_CONNECTION_STRING=") {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no connection string printed:\n{banner}");
            }
        }
    }
    assert!(banner.contains("mqtt://127.0.0.1:"), "{banner}");
    assert!(banner.contains("http://127.0.0.1:"), "{banner}");
    assert!(
        dir.path().join("connection.env").exists(),
        "the connection string is written to the data dir"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the hub did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

/// Policies for a demo that ends within a minute and then stays quiet: one window, opening
/// half a minute from now and then once an hour (UTC), so the kept-running demo has no other
/// window while the test compares its reports.
fn write_hourly_policies(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let opens = chrono::Utc::now() + chrono::TimeDelta::seconds(30);
    let schedule = format!(
        "{} {} * * * *",
        chrono::Timelike::second(&opens),
        chrono::Timelike::minute(&opens)
    );
    let policy = |name: &str, target: &str, priority: i32| {
        format!(
            "[policy]\nname = \"{name}\"\npriority = {priority}\ntarget = \"{target}\"\n\n\
             [window]\nschedule = \"{schedule}\"\nduration = \"40s\"\ntimezone = \"UTC\"\n\n\
             [reboot]\nexpected_duration = \"3s\"\nmethod_timeout = \"5s\"\n\n\
             [rollout]\nmax_concurrent = 4\nmax_per_minute = 600\nmax_failures = \"0\"\n"
        )
    };
    std::fs::write(
        dir.join("gateways.toml"),
        policy(
            "hourly-gateways",
            "tags.role = 'gateway' AND tags.env = 'prod'",
            10,
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pos.toml"),
        policy("hourly-pos", "tags.role = 'pos'", 20),
    )
    .unwrap();
}

/// The value of `export NAME=VALUE` (single quotes stripped) in the demo's notes.
fn exported(notes: &str, name: &str) -> String {
    let prefix = format!("export {name}=");
    let line = notes
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in:\n{notes}"));
    line.trim_matches('\'').to_owned()
}

/// Issue 12: "the demo's closing report and `casement report` against the kept-running demo
/// agree". The real binary runs `casement demo --keep-running`; once it has printed its closing
/// report and the commands to query it with, `casement report` (and `--format json`), run as
/// those notes say, shows exactly the same counts.
#[cfg(unix)]
#[test]
fn casement_report_against_the_kept_running_demo_agrees_with_its_closing_report() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    write_hourly_policies(&policies);
    let mut child = casement()
        .args([
            "demo",
            "--devices",
            "20",
            "--duration",
            "100s",
            "--reboot-time",
            "1s",
            "--keep-running",
            "--plain",
            "--policies",
        ])
        .arg(&policies)
        .current_dir(dir.path())
        .env_remove("CASEMENT_HUB_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let stop = |child: &mut std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Everything up to the end of the notes (bounded: the demo's --duration and its setup).
    let mut output = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !output.contains("Stop everything with Ctrl-C.") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
            }
            Err(_) => {
                stop(&mut child);
                panic!("the demo printed no closing report and notes:\n{output}");
            }
        }
    }
    // The closing report's table (and the lines under it), as the demo printed it.
    let closing: String = {
        let from = output
            .find("Compliance report at")
            .expect("a closing report");
        let body = &output[from..];
        let start = body.find("\n\n").expect("the report after its title") + 2;
        let end = body.find("The devices' own log").expect("the log line");
        body[start..end].trim_end().to_owned()
    };
    assert!(
        output.contains("The fleet is compliant"),
        "the small demo ends compliant:\n{output}"
    );
    let run = |args: &[&str]| {
        let out = casement()
            .args(args)
            .current_dir(dir.path())
            .env_remove("CASEMENT_HUB_DATA_DIR")
            .env(
                "IOTHUB_CONNECTION_STRING",
                exported(&output, "IOTHUB_CONNECTION_STRING"),
            )
            .env("CASEMENT_ENDPOINT", exported(&output, "CASEMENT_ENDPOINT"))
            .env(
                "CASEMENT_STATE_DIR",
                exported(&output, "CASEMENT_STATE_DIR"),
            )
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, table, err) = run(&["report"]);
    let (json_code, json, json_err) = run(&["report", "--format", "json"]);
    stop(&mut child);
    assert_eq!(code, Some(0), "{table}\n{err}");
    assert_eq!(
        table.trim_end(),
        closing,
        "`casement report` against the kept-running demo and the demo's closing report"
    );
    assert_eq!(json_code, Some(0), "{json_err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The closing table's numbers, column by column, are the JSON total's.
    let rows: Vec<Vec<&str>> = closing
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let header = &rows[0];
    let total = rows
        .iter()
        .find(|r| r.first() == Some(&"TOTAL"))
        .unwrap_or(&rows[1]);
    assert_eq!(json["total"]["targeted"], 20, "{json}");
    for (column, field) in [
        ("TARGETED", "targeted"),
        ("APPLIED", "applied"),
        ("NOT-APPLIED", "notApplied"),
        ("REJECTED", "rejected"),
        ("COMPLIANT", "compliant"),
        ("SIMULATED", "simulated"),
        ("IN-WINDOW", "inWindow"),
        ("PENDING", "pending"),
        ("MISSED", "missed"),
        ("FAILED", "failed"),
        ("PAUSED", "paused"),
        ("FORCED", "forced"),
        ("OFFLINE", "offline"),
    ] {
        let i = header.iter().position(|h| *h == column).unwrap();
        assert_eq!(
            json["total"][field].to_string(),
            total[i],
            "{column}: {json}\n{closing}"
        );
    }
}
