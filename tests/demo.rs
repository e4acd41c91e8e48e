//! `casestream demo` as a newcomer runs it: no broker, no Docker, no Java; created and survey
//! events printed within a minute, each survey after its case.

use std::collections::HashSet;
use std::process::Command;

#[test]
fn demo_prints_created_then_survey_events_within_a_minute() {
    let output = Command::new(env!("CARGO_BIN_EXE_casestream"))
        .args(["demo", "--duration", "45s"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run casestream demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stderr}\n{stdout}");
    let mut created = HashSet::new();
    let mut surveys = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.get(1) {
            Some(&"created") => {
                created.insert(fields[3].to_owned());
            }
            Some(&"survey") => {
                surveys += 1;
                assert!(
                    created.contains(fields[3]),
                    "survey before its case: {line}"
                );
                assert!(line.contains("score"), "{line}");
            }
            _ => {}
        }
    }
    assert!(
        created.len() >= 20,
        "only {} created events:\n{stdout}",
        created.len()
    );
    assert!(surveys >= 3, "only {surveys} survey events:\n{stdout}");
    assert!(
        stdout.contains(&format!(
            "{} case.created and {surveys} case.survey events",
            created.len()
        )),
        "summary line:\n{stdout}"
    );
    assert!(
        stderr.trim().is_empty(),
        "the demo stays quiet on stderr: {stderr}"
    );
}
