//! What is kept of a message beside its body, so that listing a mailbox never parses bodies
//! again: the IMAP forms of its envelope and structure, and its sent date. Made once, when the
//! message arrives. (Search text is kept apart: [`SearchText`](crate::SearchText).)

use mail_parser::MessageParser;
use serde::{Deserialize, Serialize};

use crate::imap::envelope;
use crate::structure::{Limits, Structure};

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
}

impl Summary {
    /// Summarises a raw message. Never fails.
    pub fn of(raw: &[u8]) -> Summary {
        let structure = Structure::parse(raw, Limits::default());
        let sent_at = MessageParser::default()
            .parse_headers(raw)
            .and_then(|m| m.date().map(|d| d.to_timestamp()));
        Summary {
            envelope: envelope(&structure.envelope),
            body_structure: structure.body_structure(true),
            body: structure.body_structure(false),
            sent_at,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not a summary (an empty one, for example).
    pub fn from_bytes(bytes: &[u8]) -> Option<Summary> {
        postcard::from_bytes(bytes).ok()
    }
}
