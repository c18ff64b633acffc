//! Decoded text for search: header values with encoded words decoded, and the text of every
//! text part (HTML reduced to text) in UTF-8, whatever the charset and transfer encoding.

use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};

/// Most bytes of body text kept for search; the rest of a huge message is not searched.
pub const SEARCH_TEXT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What SEARCH looks in.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchText {
    /// Header fields in order: lower-case name, decoded value.
    pub headers: Vec<(String, String)>,
    /// Text of the text parts and attachment names, decoded, one part per paragraph.
    pub body: String,
}

impl SearchText {
    /// The same text in lower case, as stored for case-insensitive search.
    pub fn lowercased(self) -> SearchText {
        self.to_lowercased()
    }

    /// As `lowercased`, leaving this text as written (no copy of it first: lower-casing
    /// makes the one copy).
    pub fn to_lowercased(&self) -> SearchText {
        SearchText {
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.to_lowercase()))
                .collect(),
            body: self.body.to_lowercase(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not a search text (an empty record, for example).
    pub fn from_bytes(bytes: &[u8]) -> Option<SearchText> {
        postcard::from_bytes(bytes).ok()
    }

    /// Decoded values of every field named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `raw` for search. Never panics; what does not parse adds nothing.
pub fn search_text(raw: &[u8]) -> SearchText {
    of_parsed(raw, MessageParser::default().parse(raw).as_ref())
}

/// As `search_text`, from the parse of `raw` (`None`: it did not parse).
pub(crate) fn of_parsed(raw: &[u8], message: Option<&mail_parser::Message<'_>>) -> SearchText {
    let mut out = SearchText::default();
    let Some(message) = message else {
        return out;
    };
    for header in message.headers() {
        let name = header.name().to_ascii_lowercase();
        // Identifiers are searched as written (mail-parser strips their angle brackets).
        let value = if IDENTIFIER_FIELDS.contains(&name.as_str()) {
            raw_value(raw, header)
        } else {
            header_text(header.value(), raw, header)
        };
        out.headers.push((name, value));
    }
    // Messages inside messages: an explicit list, bounded by the parser's own nesting limit.
    let mut pending = vec![message];
    while let Some(current) = pending.pop() {
        for part in &current.parts {
            if out.body.len() >= SEARCH_TEXT_BYTES_MAX {
                return out;
            }
            if let Some(name) = part.attachment_name() {
                push_paragraph(&mut out.body, name);
            }
            match &part.body {
                PartType::Text(text) => push_paragraph(&mut out.body, text),
                PartType::Html(html) => push_paragraph(
                    &mut out.body,
                    &mail_parser::decoders::html::html_to_text(html),
                ),
                PartType::Message(nested) => pending.push(nested),
                PartType::Binary(_) | PartType::InlineBinary(_) | PartType::Multipart(_) => {}
            }
        }
    }
    out.body
        .truncate(floor_char_boundary(&out.body, SEARCH_TEXT_BYTES_MAX));
    out
}

fn push_paragraph(body: &mut String, text: &str) {
    if !body.is_empty() {
        body.push('\n');
    }
    body.push_str(text);
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

const IDENTIFIER_FIELDS: [&str; 5] = [
    "message-id",
    "in-reply-to",
    "references",
    "content-id",
    "resent-message-id",
];

fn raw_value(raw: &[u8], header: &mail_parser::Header<'_>) -> String {
    let start = usize::try_from(header.offset_start()).unwrap_or(0);
    let end = usize::try_from(header.offset_end()).unwrap_or(0);
    raw.get(start..end)
        .map(|v| {
            String::from_utf8_lossy(v)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn header_text(value: &HeaderValue<'_>, raw: &[u8], header: &mail_parser::Header<'_>) -> String {
    match value {
        HeaderValue::Text(text) => text.to_string(),
        HeaderValue::TextList(list) => list.join(", "),
        HeaderValue::Address(address) => {
            let person = |a: &mail_parser::Addr<'_>| match (a.name(), a.address()) {
                (Some(name), Some(email)) => format!("{name} <{email}>"),
                (None, Some(email)) => email.to_string(),
                (Some(name), None) => name.to_string(),
                (None, None) => String::new(),
            };
            match address {
                // A group's name is searched too (SEARCH TO "Friends" finds `To: Friends: ...;`).
                mail_parser::Address::Group(groups) => groups
                    .iter()
                    .map(|group| {
                        let members: Vec<String> = group.addresses.iter().map(person).collect();
                        match &group.name {
                            Some(name) => format!("{name}: {};", members.join(", ")),
                            None => members.join(", "),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                mail_parser::Address::List(list) => {
                    list.iter().map(person).collect::<Vec<_>>().join(", ")
                }
            }
        }
        _ => {
            let start = usize::try_from(header.offset_start()).unwrap_or(0);
            let end = usize::try_from(header.offset_end()).unwrap_or(0);
            raw.get(start..end)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .unwrap_or_default()
        }
    }
}
