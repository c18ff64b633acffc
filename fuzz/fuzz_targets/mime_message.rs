//! sealpost-mime's structure walker and header reader on a sender's message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_mime::fuzzing::message(data);
});
