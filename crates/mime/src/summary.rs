//! What is kept of a message beside its body, so that listing a mailbox and searching its
//! headers never parse bodies again: the IMAP forms of its envelope and structure, its sent
//! date, and its decoded header fields. Made once, when the message arrives.

use mail_parser::MessageParser;
use serde::{Deserialize, Serialize};

use crate::imap::envelope;
use crate::search::search_text;
use crate::structure::{Limits, Structure};

/// Most bytes of decoded header text kept for search.
pub const SUMMARY_HEADER_BYTES_MAX: usize = 256 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `ENVELOPE` in IMAP syntax.
    pub envelope: Vec<u8>,
    /// `BODYSTRUCTURE` in IMAP syntax.
    pub body_structure: Vec<u8>,
    /// `BODY` in IMAP syntax.
    pub body: Vec<u8>,
    /// The Date header as Unix seconds, when it parses (SENTBEFORE and friends).
    pub sent_at: Option<i64>,
    /// Decoded header fields: lower-case name, value.
    pub headers: Vec<(String, String)>,
}

impl Summary {
    /// Summarises a raw message. Never fails.
    pub fn of(raw: &[u8]) -> Summary {
        let structure = Structure::parse(raw, Limits::default());
        let sent_at = MessageParser::default()
            .parse_headers(raw)
            .and_then(|m| m.date().map(|d| d.to_timestamp()));
        let mut headers = search_text_headers(raw);
        let mut kept = 0usize;
        headers.retain(|(name, value)| {
            kept += name.len() + value.len();
            kept <= SUMMARY_HEADER_BYTES_MAX
        });
        Summary {
            envelope: envelope(&structure.envelope),
            body_structure: structure.body_structure(true),
            body: structure.body_structure(false),
            sent_at,
            headers,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not a summary (an empty one, for example).
    pub fn from_bytes(bytes: &[u8]) -> Option<Summary> {
        postcard::from_bytes(bytes).ok()
    }

    /// Decoded values of every field named `name` (lower case).
    pub fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn search_text_headers(raw: &[u8]) -> Vec<(String, String)> {
    // Only the header block is needed: cut the body off before decoding.
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2));
    let header = &raw[..end.unwrap_or(raw.len())];
    search_text(header).headers
}
