//! Sealpost's IMAP server: IMAP4rev2 and IMAP4rev1 sessions over any async byte stream.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod command;
mod framer;
mod parse;
mod utf7;
