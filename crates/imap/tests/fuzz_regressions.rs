//! Every input the fuzzer (`scripts/fuzz`) ever found a crash with, plus the seed corpus,
//! run through the same command path on every test run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn fuzz_regressions_and_seeds_run_without_panicking() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        sealpost_imap::fuzz::command_path(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
}
