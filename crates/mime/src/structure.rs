//! The part tree of a message, with the byte range of every header block and body.
//!
//! Built with an explicit work list, not recursion, and bounded by [`Limits`]: a part nested
//! deeper than `nesting_depth_max`, or past `parts_max`, is kept whole as a single part.

use std::ops::Range;

use crate::address::{parse_address_list, Address};
use crate::header::{self, Field};

/// Bounds on what the parser builds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Levels of multipart and message/rfc822 nesting taken apart.
    pub nesting_depth_max: usize,
    /// Parts built in all; past it, bodies stay whole.
    pub parts_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            nesting_depth_max: 32,
            parts_max: 10_000,
        }
    }
}

/// ENVELOPE as RFC 9051 section 7.5.2 defines it. Strings are raw: encoded words are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub date: Option<String>,
    pub subject: Option<String>,
    pub from: Vec<Address>,
    /// The From addresses when the message has no Sender.
    pub sender: Vec<Address>,
    /// The From addresses when the message has no Reply-To.
    pub reply_to: Vec<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub in_reply_to: Option<String>,
    pub message_id: Option<String>,
}

/// What a part holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A leaf: text, an attachment, anything not taken apart.
    Single,
    /// Indexes of the child parts, in order.
    Multipart(Vec<usize>),
    /// An encapsulated message: its envelope, and the index of its root part.
    Message {
        envelope: Box<Envelope>,
        root: usize,
    },
}

/// One MIME part. For a message's root part, `header` is the message header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The header block, blank line included.
    pub header: Range<usize>,
    /// The body, as transfer-encoded, without the line break before a following boundary.
    pub body: Range<usize>,
    /// Lower-case, `text` when absent.
    pub media_type: String,
    /// Lower-case, `plain` when absent.
    pub media_subtype: String,
    /// Content-Type parameters as written (names keep their case).
    pub params: Vec<(String, String)>,
    pub id: Option<String>,
    pub description: Option<String>,
    /// Content-Transfer-Encoding as written, `7bit` when absent.
    pub encoding: String,
    pub md5: Option<String>,
    pub disposition: Option<(String, Vec<(String, String)>)>,
    pub language: Vec<String>,
    pub location: Option<String>,
    /// Lines of the body: line breaks, plus one for an unterminated last line.
    pub lines: u64,
    pub content: Content,
}

impl Part {
    fn placeholder() -> Self {
        Part {
            header: 0..0,
            body: 0..0,
            media_type: String::new(),
            media_subtype: String::new(),
            params: Vec::new(),
            id: None,
            description: None,
            encoding: String::new(),
            md5: None,
            disposition: None,
            language: Vec::new(),
            location: None,
            lines: 0,
            content: Content::Single,
        }
    }

    pub fn is_text(&self) -> bool {
        self.media_type == "text"
    }

    /// The value of a Content-Type parameter, by case-insensitive name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A message taken apart: part 0 is the root, whose header is the message header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Structure {
    pub parts: Vec<Part>,
    pub envelope: Envelope,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DefaultType {
    TextPlain,
    MessageRfc822,
}

struct Task {
    index: usize,
    range: Range<usize>,
    default_type: DefaultType,
    depth: usize,
}

impl Structure {
    /// Takes `raw` apart. Never fails and never panics: malformed input gives a best effort.
    pub fn parse(raw: &[u8], limits: Limits) -> Structure {
        let mut parts = vec![Part::placeholder()];
        let mut work = vec![Task {
            index: 0,
            range: 0..raw.len(),
            default_type: DefaultType::TextPlain,
            depth: 0,
        }];
        while let Some(task) = work.pop() {
            let (part, children) = parse_part(raw, &task, &mut parts, limits);
            parts[task.index] = part;
            // Pushed in reverse so that parts are built in order (purely for readability of
            // the arena; correctness does not depend on it).
            work.extend(children.into_iter().rev());
        }
        let envelope = envelope_of(raw, &parts[0].header);
        Structure { parts, envelope }
    }

    /// The root part.
    pub fn root(&self) -> &Part {
        &self.parts[0]
    }

    /// Resolves an IMAP part number path (`[2, 1]` for "2.1") to a part index.
    ///
    /// Part 1 of a non-multipart message is its body; the parts of an encapsulated message
    /// are numbered inside it, as RFC 9051 section 6.4.5 says.
    pub fn resolve(&self, path: &[u32]) -> Option<usize> {
        let mut current: Option<usize> = None;
        for &number in path {
            let base = match current {
                None => 0,
                Some(index) => match &self.parts.get(index)?.content {
                    Content::Message { root, .. } => *root,
                    _ => index,
                },
            };
            let position = usize::try_from(number.checked_sub(1)?).ok()?;
            current = Some(match &self.parts.get(base)?.content {
                Content::Multipart(children) => *children.get(position)?,
                _ if position == 0 => base,
                _ => return None,
            });
        }
        current
    }

    /// The message root a section's HEADER and TEXT refer to: the top message for an empty
    /// path, else the message encapsulated in the part the path names.
    pub fn message_root(&self, path: &[u32]) -> Option<usize> {
        if path.is_empty() {
            return Some(0);
        }
        match &self.parts.get(self.resolve(path)?)?.content {
            Content::Message { root, .. } => Some(*root),
            _ => None,
        }
    }
}

fn parse_part(raw: &[u8], task: &Task, parts: &mut Vec<Part>, limits: Limits) -> (Part, Vec<Task>) {
    let range = task.range.clone();
    let header_end = header::header_end(raw, range.start, range.end);
    let fields = header::fields(raw, range.start..header_end);
    let mut part = Part::placeholder();
    part.header = range.start..header_end;
    part.body = header_end..range.end;
    part.lines = count_lines(&raw[part.body.clone()]);

    let content_type = header::first(raw, &fields, "content-type").map(|v| header::structured(&v));
    let parsed = content_type.as_ref().and_then(|ct| {
        let (media_type, subtype) = ct.value.split_once('/')?;
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
        (valid(media_type) && valid(subtype)).then(|| {
            (
                media_type.to_ascii_lowercase(),
                subtype.to_ascii_lowercase(),
            )
        })
    });
    match (parsed, task.default_type) {
        (Some((media_type, subtype)), _) => {
            part.media_type = media_type;
            part.media_subtype = subtype;
            part.params = content_type.map(|ct| ct.params).unwrap_or_default();
        }
        (None, DefaultType::MessageRfc822) => {
            part.media_type = "message".to_string();
            part.media_subtype = "rfc822".to_string();
        }
        (None, DefaultType::TextPlain) => {
            part.media_type = "text".to_string();
            part.media_subtype = "plain".to_string();
            part.params = vec![("charset".to_string(), "us-ascii".to_string())];
        }
    }
    part.encoding = header::first(raw, &fields, "content-transfer-encoding")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "7bit".to_string());
    part.id = header::first(raw, &fields, "content-id");
    part.description = header::first(raw, &fields, "content-description");
    part.md5 = header::first(raw, &fields, "content-md5");
    part.location = header::first(raw, &fields, "content-location");
    part.disposition = header::first(raw, &fields, "content-disposition")
        .map(|v| header::structured(&v))
        .filter(|d| !d.value.is_empty())
        .map(|d| (d.value, d.params));
    part.language = header::first(raw, &fields, "content-language")
        .map(|v| {
            v.split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();

    let room = task.depth < limits.nesting_depth_max && parts.len() < limits.parts_max;
    let mut children = Vec::new();
    if part.media_type == "multipart" && room {
        let default_type = if part.media_subtype == "digest" {
            DefaultType::MessageRfc822
        } else {
            DefaultType::TextPlain
        };
        let mut ranges = part
            .param("boundary")
            .map(|boundary| split_multipart(raw, part.body.clone(), boundary.as_bytes()))
            .unwrap_or_default();
        if ranges.is_empty() {
            // RFC 9051's syntax needs at least one part: the body becomes one headerless part.
            ranges.push(part.body.clone());
        }
        let room_left = limits.parts_max.saturating_sub(parts.len()).max(1);
        ranges.truncate(room_left);
        let mut indexes = Vec::with_capacity(ranges.len());
        for child in ranges {
            indexes.push(parts.len());
            children.push(Task {
                index: parts.len(),
                range: child,
                default_type,
                depth: task.depth + 1,
            });
            parts.push(Part::placeholder());
        }
        part.content = Content::Multipart(indexes);
    } else if part.media_type == "message"
        && matches!(part.media_subtype.as_str(), "rfc822" | "global")
        && room
    {
        let root = parts.len();
        parts.push(Part::placeholder());
        let nested_header_end = header::header_end(raw, part.body.start, part.body.end);
        let envelope = envelope_of(raw, &(part.body.start..nested_header_end));
        children.push(Task {
            index: root,
            range: part.body.clone(),
            default_type: DefaultType::TextPlain,
            depth: task.depth + 1,
        });
        part.content = Content::Message {
            envelope: Box::new(envelope),
            root,
        };
    }
    (part, children)
}

/// Splits a multipart body at its boundary into the ranges of its parts (header and body of
/// each). The preamble and epilogue are left out. A missing close delimiter ends the last
/// part at the end of the body.
fn split_multipart(raw: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let mut out = Vec::new();
    let mut part_start: Option<usize> = None;
    let mut at = body.start;
    while at < body.end {
        let line_end = header::find_line_end(raw, at, body.end);
        let line = &raw[at..line_end];
        if let Some(rest) = line.strip_prefix(delimiter.as_slice()) {
            let is_close = rest.starts_with(b"--");
            let is_open = rest.iter().all(|b| b.is_ascii_whitespace());
            if is_close || is_open {
                if let Some(start) = part_start.take() {
                    out.push(start..end_before_line_break(raw, start, at));
                }
                if is_close {
                    return out;
                }
                part_start = Some(line_end);
            }
        }
        at = line_end;
    }
    if let Some(start) = part_start {
        out.push(start..body.end);
    }
    out
}

/// The line break before a delimiter line belongs to the delimiter (RFC 2046 section 5.1.1).
fn end_before_line_break(raw: &[u8], start: usize, line_start: usize) -> usize {
    let mut end = line_start;
    if end > start && raw[end - 1] == b'\n' {
        end -= 1;
        if end > start && raw[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}

fn count_lines(body: &[u8]) -> u64 {
    let breaks = body.iter().filter(|&&b| b == b'\n').count() as u64;
    match body.last() {
        Some(b'\n') | None => breaks,
        Some(_) => breaks + 1,
    }
}

fn envelope_of(raw: &[u8], header: &Range<usize>) -> Envelope {
    let fields: Vec<Field> = header::fields(raw, header.clone());
    let text = |name: &str| header::first(raw, &fields, name).filter(|v| !v.is_empty());
    let addresses = |name: &str| {
        text(name)
            .map(|v| parse_address_list(&v))
            .unwrap_or_default()
    };
    let from = addresses("from");
    let or_from = |list: Vec<Address>| if list.is_empty() { from.clone() } else { list };
    Envelope {
        date: text("date"),
        subject: text("subject"),
        sender: or_from(addresses("sender")),
        reply_to: or_from(addresses("reply-to")),
        to: addresses("to"),
        cc: addresses("cc"),
        bcc: addresses("bcc"),
        in_reply_to: text("in-reply-to"),
        message_id: text("message-id"),
        from,
    }
}
