//! What Sealpost parses itself of DNS and web answers: MTA-STS records, policies and their HTTP responses, DANE answers; mail-auth's message parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_smtp::fuzzing::auth_inputs(data);
});
