//! `casement report --help` states every exit code (issue 12) and the meaning of n/a.

use std::process::Command;

#[test]
fn report_help_lists_every_exit_code_and_the_html_format() {
    let out = Command::new(env!("CARGO_BIN_EXE_casement"))
        .args(["report", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "0 ok",
        "1 the percentage is below --fail-under",
        "2 bad input",
        "3 the hub could not be reached",
        "n/a",
        "--format html",
        "not-applied",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}
