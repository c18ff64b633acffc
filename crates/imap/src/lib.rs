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

pub use sealpost_auth::LoginLimits;
pub use session::{serve_session, BoxedStream, Connection, ImapConfig, Stream, TlsUpgrade};
pub use shared::{CommandStats, ImapShared, COMMAND_SECONDS_BUCKETS};

/// Entry points for the fuzzer (`fuzz/`) and the replay of its corpora (`tests/fuzz_corpora.rs`). Not an API.
#[doc(hidden)]
pub mod fuzz {
    use crate::framer::{Frame, FrameLimits, Framer};
    use crate::parse::{parse_command, NameEncoding};

    /// Feeds `data` through the framer in pieces and parses every command it yields, as a
    /// session would; then parses what an APPEND carried as a message. Must never panic.
    pub fn command_path(data: &[u8]) {
        let limits = FrameLimits {
            line_bytes_max: 4096,
            literal_bytes_max: 64 * 1024,
            command_bytes_max: 128 * 1024,
        };
        let mut framer = Framer::new(limits);
        // Split points come from the data itself, so the fuzzer explores partial reads.
        let step = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
        for piece in data.chunks(step) {
            framer.push(piece);
            while let Some(frame) = framer.next_frame() {
                if let Frame::Command(bytes) = frame {
                    for names in [NameEncoding::Utf7, NameEncoding::Utf8] {
                        if let Ok(crate::command::Command {
                            body: crate::command::CommandBody::Append { message, .. },
                            ..
                        }) = parse_command(&bytes, names)
                        {
                            let structure = sealpost_mime::Structure::parse(
                                &message,
                                sealpost_mime::Limits::default(),
                            );
                            let _ = structure.body_structure(true);
                            let _ = sealpost_mime::Summary::of(&message);
                        }
                    }
                }
            }
        }
    }
}
