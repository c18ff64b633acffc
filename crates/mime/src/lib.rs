//! The message model shared by IMAP and the web: a message's part tree with the byte range of
//! every section, its ENVELOPE and BODYSTRUCTURE in IMAP syntax, and decoded text for search.
//!
//! [`Structure::parse`] never fails and never panics; malformed input gives a best effort,
//! bounded by [`Limits`]. Structure, sections and envelope strings are raw, as IMAP wants them;
//! [`search_text`] decodes (charsets, transfer encodings, encoded words) for search and display.
//!
//! ```
//! use sealpost_mime::{Limits, SectionText, Structure};
//!
//! let raw = b"Subject: hi\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n\
//!             --x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--\r\n";
//! let structure = Structure::parse(raw, Limits::default());
//! let part = structure.section_range(raw.len(), &[1], SectionText::Whole).unwrap();
//! assert_eq!(&raw[part], b"hello");
//! assert_eq!(structure.envelope.subject.as_deref(), Some("hi"));
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod address;
mod display;
/// Entry points for the fuzzer and the replay of its corpora. Not an API.
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod imap;
mod indexed;
mod search;
mod structure;
mod summary;

pub use address::{parse_address_list, Address, ADDRESSES_PER_HEADER_MAX};
pub use display::{parse_envelope, Person, Shown};
pub use header::{HeaderLine, HeaderWalk};
pub use imap::{envelope, header_fields, SectionText};
pub use indexed::{sender, Indexed};
pub use search::{search_text, SearchText, SEARCH_TEXT_BYTES_MAX};
pub use structure::{Content, Envelope, Limits, Part, Structure};
pub use summary::Summary;

/// Undoes base64 transfer encoding (IMAP BINARY); `None` when it does not decode.
pub fn decode_base64(bytes: &[u8]) -> Option<Vec<u8>> {
    mail_parser::decoders::base64::base64_decode(bytes)
}

/// Undoes quoted-printable transfer encoding (IMAP BINARY); `None` when it does not decode.
pub fn decode_quoted_printable(bytes: &[u8]) -> Option<Vec<u8>> {
    mail_parser::decoders::quoted_printable::quoted_printable_decode(bytes)
}

/// The day a Date header names as written, in its own time zone and not converted to UTC, as
/// the Unix seconds of that day's start: what SENTBEFORE, SENTON and SENTSINCE compare (RFC 3501
/// section 6.4.4: "disregarding time and timezone"). `None` when it does not parse.
///
/// ```
/// let day = sealpost_mime::day_as_written("Sun, 25 Mar 2007 00:30:00 +0200").unwrap();
/// assert_eq!(day, 1_174_780_800); // 2007-03-25, though in UTC it is still the 24th
/// ```
pub fn day_as_written(date: &str) -> Option<i64> {
    let parsed = mail_parser::DateTime::parse_rfc822(date)?;
    Some(parsed.to_timestamp_local().div_euclid(86_400) * 86_400)
}
