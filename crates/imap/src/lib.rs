//! Sealpost's IMAP server: IMAP4rev2 and IMAP4rev1 sessions over any async byte stream.
//!
//! [`serve_session`] runs one connection: the listener (in `server/`) accepts TCP, wraps TLS
//! and hands over the stream; tests hand over one end of an in-memory pipe. The session uses
//! the store (`sealpost-storage`) for everything it keeps and the message model
//! (`sealpost-mime`) for structure, sections and search.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod command;
mod framer;
mod list;
mod parse;
mod response;
mod search;
mod selected;
mod session;
mod shared;
mod utf7;

pub use session::{serve_session, BoxedStream, Connection, ImapConfig, Stream, TlsUpgrade};
pub use shared::{ImapShared, LoginLimits};
