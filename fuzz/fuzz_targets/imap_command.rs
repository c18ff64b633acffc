//! The IMAP command path: framing, parsing, and the MIME parser behind APPEND.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealpost_imap::fuzz::command_path(data);
});
