//! The header edits on receipt: Received, forged Authentication-Results and X-Sealpost-* removal, the impersonation warning.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_smtp::fuzzing::header_edits(data);
});
