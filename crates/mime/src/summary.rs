//! What is kept of a message beside its body, so that listing a mailbox never parses bodies
//! again: the IMAP forms of its envelope and structure, and its sent date. Made once, when the
//! message arrives. (Search text is kept apart: [`SearchText`](crate::SearchText).)

use mail_parser::MessageParser;
use serde::{Deserialize, Serialize};

use crate::imap::envelope;
use crate::structure::{Limits, Structure};

/// A `Vec<u8>` as one byte string rather than a sequence of numbers: postcard writes both as
/// a length and the bytes, so stored summaries read either way, but decoding a byte string is
/// one copy where a sequence is a push per byte (a third of FETCH ENVELOPE's time).
mod bytes_field {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
                while let Some(byte) = seq.next_element()? {
                    out.push(byte);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `ENVELOPE` in IMAP syntax.
    #[serde(with = "bytes_field")]
    pub envelope: Vec<u8>,
    /// `BODYSTRUCTURE` in IMAP syntax.
    #[serde(with = "bytes_field")]
    pub body_structure: Vec<u8>,
    /// `BODY` in IMAP syntax.
    #[serde(with = "bytes_field")]
    pub body: Vec<u8>,
    /// The Date header as Unix seconds, when it parses (SENTBEFORE and friends).
    pub sent_at: Option<i64>,
}

impl Summary {
    /// Summarises a raw message. Never fails.
    pub fn of(raw: &[u8]) -> Summary {
        Self::of_parsed(raw, &Structure::parse(raw, Limits::default()))
    }

    /// As `of`, for a caller that has parsed the message already.
    pub fn of_parsed(raw: &[u8], structure: &Structure) -> Summary {
        let sent_at = MessageParser::default()
            .parse_headers(raw)
            .and_then(|m| m.date().map(|d| d.to_timestamp()));
        Self::of_parts(structure, sent_at)
    }

    /// From the structure and the Date header as Unix seconds (`Indexed` has both).
    pub(crate) fn of_parts(structure: &Structure, sent_at: Option<i64>) -> Summary {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Summaries stored before the fields were byte strings: the same fields as sequences.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct SummaryAsSequences {
        envelope: Vec<u8>,
        body_structure: Vec<u8>,
        body: Vec<u8>,
        sent_at: Option<i64>,
    }

    #[test]
    fn summaries_read_the_same_whether_written_as_byte_strings_or_sequences() {
        let raw = b"From: A <a@example.com>\r\nSubject: hi\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nbody\r\n";
        let summary = Summary::of(raw);
        assert!(!summary.envelope.is_empty() && summary.sent_at.is_some());
        let old = SummaryAsSequences {
            envelope: summary.envelope.clone(),
            body_structure: summary.body_structure.clone(),
            body: summary.body.clone(),
            sent_at: summary.sent_at,
        };
        let old_bytes = postcard::to_stdvec(&old).unwrap();
        assert_eq!(Summary::from_bytes(&old_bytes), Some(summary.clone()));
        assert_eq!(old_bytes, summary.to_bytes(), "the encoding is unchanged");
        let back: SummaryAsSequences = postcard::from_bytes(&summary.to_bytes()).unwrap();
        assert_eq!(back, old);
        assert_eq!(Summary::from_bytes(&summary.to_bytes()[..5]), None);
    }
}
