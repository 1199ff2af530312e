//! The binary's behaviour before it connects anywhere: bad configuration is refused with the
//! key named and the configuration exit status.

use std::process::Command;

fn run_with_env(pairs: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ipm-stream"))
        .envs(pairs.iter().copied())
        .env("IPM__KAFKA__BROKERS", "127.0.0.1:1")
        .output()
        .expect("the binary runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn unparseable_duration_exits_78_naming_the_key() {
    let (code, stderr) = run_with_env(&[("IPM__WINDOWS__OUT_OF_ORDERNESS", "soon")]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("windows.out_of_orderness"), "{stderr}");
}

#[test]
fn misspelt_key_exits_78_naming_it() {
    let (code, stderr) = run_with_env(&[("IPM__KAFKA__GROUP", "g")]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("unknown field `group`"), "{stderr}");
}

#[test]
fn bad_field_pointer_exits_78_naming_the_section() {
    let (code, stderr) = run_with_env(&[("IPM__INPUT__FIELDS__CAMPAIGN_ID", "campaign")]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("input.fields"), "{stderr}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_ipm-stream"))
        .args(["--log-format", "json"])
        .env("IPM__KAFKA__GROUP", "g")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().next().expect("a log line");
    let record: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(record["level"], "ERROR");
    assert!(record["message"].as_str().unwrap().contains("unknown field `group`"), "{line}");
}
