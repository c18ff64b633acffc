//! Every fuzz target's corpus (`fuzz/corpus/TARGET/`) and every input a fuzzer ever crashed
//! with (`fuzz/regressions/TARGET/`), run on stable through the same function the target
//! calls: so the test suite proves the corpora crash-free, and a crash once found stays
//! fixed. A target whose corpus folder is missing or empty fails, as does a target of
//! `fuzz/Cargo.toml` this file does not replay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The targets replayed here, as `fuzz/Cargo.toml` names them.
const TARGETS: &[&str] = &[
    "imap_command",
    "smtp_session",
    "mime_message",
    "smtp_headers",
    "auth_inputs",
    "web_html",
    "web_forms",
    "control_wire",
];

/// Runs `check` on every corpus and regression input of `target`; fails naming each input
/// that panics, and when the corpus is missing or empty.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{target}: no corpus at {}: {e}", corpus.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(
        !inputs.is_empty(),
        "{target}: the corpus at {} is empty",
        corpus.display()
    );
    let corpus_count = inputs.len();
    if let Ok(entries) = std::fs::read_dir(fuzz_dir().join("regressions").join(target)) {
        inputs.extend(entries.map(|entry| entry.unwrap().path()));
    }
    inputs.sort();
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: these inputs panic:\n{}",
        failed.join("\n")
    );
    eprintln!(
        "{target}: {} inputs replayed ({corpus_count} corpus, {} regressions)",
        inputs.len(),
        inputs.len() - corpus_count
    );
}

#[test]
fn every_fuzz_target_is_replayed_here() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut declared: Vec<&str> = manifest
        .lines()
        .skip_while(|line| *line != "[[bin]]")
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .collect();
    declared.sort();
    let mut replayed = TARGETS.to_vec();
    replayed.sort();
    assert_eq!(
        declared, replayed,
        "fuzz/Cargo.toml's targets and the ones replayed differ"
    );
}

#[test]
fn imap_command_corpus() {
    replay("imap_command", sealpost_imap::fuzz::command_path);
}

#[test]
fn smtp_session_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let harness = sealpost_smtp::fuzzing::SessionHarness::new(dir.path()).unwrap();
    replay("smtp_session", |data| harness.session(data));
}

#[test]
fn mime_message_corpus() {
    replay("mime_message", sealpost_mime::fuzzing::message);
}

#[test]
fn smtp_headers_corpus() {
    replay("smtp_headers", sealpost_smtp::fuzzing::header_edits);
}

#[test]
fn auth_inputs_corpus() {
    replay("auth_inputs", sealpost_smtp::fuzzing::auth_inputs);
}

#[test]
fn web_html_corpus() {
    replay("web_html", sealpost_webmail::fuzzing::html);
}

#[test]
fn web_forms_corpus() {
    replay("web_forms", sealpost_webmail::fuzzing::forms);
}

#[test]
fn control_wire_corpus() {
    replay("control_wire", sealpost_control::fuzzing::wire);
}
