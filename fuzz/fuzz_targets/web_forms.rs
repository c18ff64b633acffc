//! The web's form decoders: multipart uploads, the portal's urlencoded forms, cookies, addresses.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_webmail::fuzzing::forms(data);
});
