//! The webmail's HTML sanitiser on a sender's HTML.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_webmail::fuzzing::html(data);
});
