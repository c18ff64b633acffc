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
mod header;
mod imap;
mod search;
mod structure;

pub use address::{parse_address_list, Address, ADDRESSES_PER_HEADER_MAX};
pub use imap::{envelope, header_fields, SectionText};
pub use search::{search_text, SearchText, SEARCH_TEXT_BYTES_MAX};
pub use structure::{Content, Envelope, Limits, Part, Structure};
