//! A message as the store indexes it, from one parse of each kind: the part tree (own parser,
//! byte ranges for IMAP) and mail-parser's decoding (the Date, the search text). Every place
//! that hands the store a new message builds one of these, once.

use mail_parser::MessageParser;

use crate::search::{self, SearchText};
use crate::structure::{Limits, Structure};
use crate::summary::Summary;

/// A parsed message: its structure, summary and decoded text (as written, not lower-cased).
pub struct Indexed {
    pub structure: Structure,
    pub summary: Summary,
    pub text: SearchText,
}

impl Indexed {
    /// Parses `raw` once with each parser. Never fails; what does not parse is left out.
    pub fn of(raw: &[u8]) -> Indexed {
        let parsed = MessageParser::default().parse(raw);
        let sent_at = parsed
            .as_ref()
            .and_then(|m| m.date().map(|d| d.to_timestamp()));
        let text = search::of_parsed(raw, parsed.as_ref());
        drop(parsed);
        let structure = Structure::parse(raw, Limits::default());
        Indexed {
            summary: Summary::of_parts(&structure, sent_at),
            structure,
            text,
        }
    }

    /// The summary as the store keeps it.
    pub fn summary_bytes(&self) -> Vec<u8> {
        self.summary.to_bytes()
    }

    /// The search text as the store keeps it: lower-cased, for case-insensitive search.
    pub fn search_bytes(&self) -> Vec<u8> {
        self.text.to_lowercased().to_bytes()
    }
}

/// The first From address, lower-cased, and its display name decoded, as IMAP's ENVELOPE and
/// the webmail show the sender (the first From field, our own parser, RFC 2047 words decoded):
/// what a reader sees is what the impersonation check reads. `None` without an address.
pub fn sender(raw: &[u8]) -> Option<(String, String)> {
    let walk = crate::HeaderWalk::of(raw);
    crate::parse_address_list(&walk.first(raw, "from")?)
        .into_iter()
        .find_map(|a| {
            let email = a.email()?.to_lowercase();
            let name = a
                .name
                .as_deref()
                .map(crate::display::decode)
                .unwrap_or_default();
            Some((email, name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parse_gives_what_the_separate_functions_give() {
        let raw = b"From: A <a@example.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
                    Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                    --b\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b\r\n\
                    Content-Type: text/html\r\n\r\n<p>World</p>\r\n--b--\r\n";
        let indexed = Indexed::of(raw);
        assert_eq!(indexed.summary, Summary::of(raw));
        assert_eq!(indexed.text, crate::search_text(raw));
        assert_eq!(indexed.summary.sent_at, Some(1_796_119_200));
        assert_eq!(
            sender(b"From: =?utf-8?q?Doc_Holliday?= <DOC@Clinic.test>\r\n\r\nbody"),
            Some(("doc@clinic.test".into(), "Doc Holliday".into()))
        );
        assert_eq!(sender(b"Subject: none\r\n\r\n"), None);
        // The name a reader is shown, whatever another parser makes of a second field or of
        // a line before the first (found by review: mail-parser keeps the last From, takes
        // `Fr om` for From and ends the header at a line of one space).
        let shown = Some(("x@evil.test".to_string(), "Doc Holliday".to_string()));
        assert_eq!(
            sender(b"From: Doc Holliday <x@evil.test>\r\nFr om: <x@evil.test>\r\n\r\nb"),
            shown
        );
        assert_eq!(
            sender(b" \r\nFrom: Doc Holliday <x@evil.test>\r\n\r\nb"),
            shown
        );
        assert_eq!(
            indexed.search_bytes(),
            crate::search_text(raw).lowercased().to_bytes()
        );
    }
}
