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
