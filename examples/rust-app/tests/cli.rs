//! logsum as a user runs it: the summary of sample.txt is sample.expected.json.

use std::process::Command;

fn logsum(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_logsum"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("logsum runs")
}

#[test]
fn summarises_the_sample_as_expected() {
    let out = logsum(&["sample.txt"]);
    assert!(out.status.success());
    let expected = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sample.expected.json"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn refuses_top_zero_and_a_missing_file() {
    assert!(!logsum(&["sample.txt", "--top", "0"]).status.success());
    let missing = logsum(&["no-such.log"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read no-such.log"));
}
