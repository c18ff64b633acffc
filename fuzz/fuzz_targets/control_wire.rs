//! The control socket's request lines and answer frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_control::fuzzing::wire(data);
});
