//! The SMTP session over an in-memory stream with a real store: command lines, DATA and BDAT
//! framing, AUTH exchanges. The store lives in `$SEALPOST_FUZZ_DIR` (scripts/fuzz makes and
//! removes it), else in the system's temporary folder.
#![no_main]

use std::sync::OnceLock;

use sealpost_smtp::fuzzing::SessionHarness;

fn harness() -> &'static SessionHarness {
    static HARNESS: OnceLock<SessionHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let base = std::env::var_os("SEALPOST_FUZZ_DIR").map_or_else(std::env::temp_dir, Into::into);
        let dir = base.join(format!("sealpost-fuzz-smtp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        SessionHarness::new(&dir).unwrap_or_else(|error| panic!("the fuzzing store at {}: {error}", dir.display()))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness().session(data);
});
