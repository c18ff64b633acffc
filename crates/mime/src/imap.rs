//! The IMAP forms of a structure: ENVELOPE, BODY and BODYSTRUCTURE (RFC 9051 section 7.5.2,
//! RFC 3501 section 7.4.2), and the byte ranges of sections (section 6.4.5).

use std::ops::Range;

use crate::address::Address;
use crate::header;
use crate::structure::{Content, Envelope, Part, Structure};

/// Which text of a part a FETCH section names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionText {
    /// `BODY[]` or `BODY[1.2]`: the whole message, or a part's body.
    Whole,
    /// `HEADER`: the header of the message or of an encapsulated message, blank line included.
    Header,
    /// `TEXT`: the body of the message or of an encapsulated message.
    Text,
    /// `1.MIME`: the MIME header of a part.
    Mime,
}

impl Structure {
    /// The bytes a section names, or `None` when the section does not exist in this message.
    pub fn section_range(
        &self,
        raw_len: usize,
        path: &[u32],
        text: SectionText,
    ) -> Option<Range<usize>> {
        match (path.is_empty(), text) {
            (true, SectionText::Whole) => Some(0..raw_len),
            (true, SectionText::Mime) => None,
            (false, SectionText::Whole) => Some(self.parts.get(self.resolve(path)?)?.body.clone()),
            (false, SectionText::Mime) => Some(self.parts.get(self.resolve(path)?)?.header.clone()),
            (_, SectionText::Header) => {
                Some(self.parts.get(self.message_root(path)?)?.header.clone())
            }
            (_, SectionText::Text) => Some(self.parts.get(self.message_root(path)?)?.body.clone()),
        }
    }

    /// `BODYSTRUCTURE` (with extension data) or `BODY` (without), in IMAP syntax.
    pub fn body_structure(&self, extended: bool) -> Vec<u8> {
        let mut out = Vec::new();
        // An explicit stack of what to write next, instead of recursion over the tree.
        enum Step<'a> {
            Part(usize),
            Text(&'a [u8]),
            MultipartTail(usize),
            MessageTail(usize),
        }
        let mut steps = vec![Step::Part(0)];
        while let Some(step) = steps.pop() {
            match step {
                Step::Text(text) => out.extend_from_slice(text),
                Step::Part(index) => {
                    let Some(part) = self.parts.get(index) else {
                        continue;
                    };
                    match &part.content {
                        Content::Multipart(children) => {
                            out.push(b'(');
                            steps.push(Step::MultipartTail(index));
                            for child in children.iter().rev() {
                                steps.push(Step::Part(*child));
                            }
                        }
                        Content::Message { envelope, root } => {
                            write_leaf_head(&mut out, part);
                            out.push(b' ');
                            write_envelope(&mut out, envelope);
                            out.push(b' ');
                            steps.push(Step::MessageTail(index));
                            steps.push(Step::Part(*root));
                        }
                        Content::Single => {
                            write_leaf_head(&mut out, part);
                            if part.is_text() {
                                out.extend_from_slice(format!(" {}", part.lines).as_bytes());
                            }
                            if extended {
                                write_leaf_extension(&mut out, part);
                            }
                            out.push(b')');
                        }
                    }
                }
                Step::MultipartTail(index) => {
                    let Some(part) = self.parts.get(index) else {
                        continue;
                    };
                    out.push(b' ');
                    quoted_or_literal(&mut out, &part.media_subtype.to_ascii_uppercase());
                    if extended {
                        out.push(b' ');
                        write_params(&mut out, &part.params);
                        write_common_extension(&mut out, part);
                    }
                    out.push(b')');
                }
                Step::MessageTail(index) => {
                    let Some(part) = self.parts.get(index) else {
                        continue;
                    };
                    out.extend_from_slice(format!(" {}", part.lines).as_bytes());
                    if extended {
                        write_leaf_extension(&mut out, part);
                    }
                    steps.push(Step::Text(b")"));
                }
            }
        }
        out
    }
}

/// `ENVELOPE` in IMAP syntax.
pub fn envelope(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    write_envelope(&mut out, envelope);
    out
}

fn write_envelope(out: &mut Vec<u8>, envelope: &Envelope) {
    out.push(b'(');
    nstring(out, envelope.date.as_deref());
    out.push(b' ');
    nstring(out, envelope.subject.as_deref());
    for list in [
        &envelope.from,
        &envelope.sender,
        &envelope.reply_to,
        &envelope.to,
        &envelope.cc,
        &envelope.bcc,
    ] {
        out.push(b' ');
        write_addresses(out, list);
    }
    out.push(b' ');
    nstring(out, envelope.in_reply_to.as_deref());
    out.push(b' ');
    nstring(out, envelope.message_id.as_deref());
    out.push(b')');
}

fn write_addresses(out: &mut Vec<u8>, list: &[Address]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for address in list {
        out.push(b'(');
        nstring(out, address.name.as_deref());
        out.push(b' ');
        nstring(out, address.adl.as_deref());
        out.push(b' ');
        nstring(out, address.mailbox.as_deref());
        out.push(b' ');
        nstring(out, address.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// `("TYPE" "SUBTYPE" (params) id description "encoding" size` — the fields every
/// non-multipart part starts with.
fn write_leaf_head(out: &mut Vec<u8>, part: &Part) {
    out.push(b'(');
    quoted_or_literal(out, &part.media_type.to_ascii_uppercase());
    out.push(b' ');
    quoted_or_literal(out, &part.media_subtype.to_ascii_uppercase());
    out.push(b' ');
    write_params(out, &part.params);
    out.push(b' ');
    nstring(out, part.id.as_deref());
    out.push(b' ');
    nstring(out, part.description.as_deref());
    out.push(b' ');
    quoted_or_literal(out, &part.encoding.to_ascii_uppercase());
    out.extend_from_slice(format!(" {}", part.body.len()).as_bytes());
}

fn write_leaf_extension(out: &mut Vec<u8>, part: &Part) {
    out.push(b' ');
    nstring(out, part.md5.as_deref());
    write_common_extension(out, part);
}

/// Disposition, language and location, shared by both kinds of part.
fn write_common_extension(out: &mut Vec<u8>, part: &Part) {
    out.push(b' ');
    match &part.disposition {
        None => out.extend_from_slice(b"NIL"),
        Some((kind, params)) => {
            out.push(b'(');
            quoted_or_literal(out, &kind.to_ascii_uppercase());
            out.push(b' ');
            write_params(out, params);
            out.push(b')');
        }
    }
    out.push(b' ');
    match part.language.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => quoted_or_literal(out, one),
        many => {
            out.push(b'(');
            for (i, language) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                quoted_or_literal(out, language);
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    nstring(out, part.location.as_deref());
}

fn write_params(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        quoted_or_literal(out, &name.to_ascii_uppercase());
        out.push(b' ');
        quoted_or_literal(out, value);
    }
    out.push(b')');
}

fn nstring(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.extend_from_slice(b"NIL"),
        Some(text) => quoted_or_literal(out, text),
    }
}

/// A quoted string when the text allows one, else a literal (8-bit text, CR, LF, NUL).
fn quoted_or_literal(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        out.push(b'"');
        for b in text.bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", text.len()).as_bytes());
        out.extend_from_slice(text.as_bytes());
    }
}

/// The fields of a header block named (or, with `exclude`, not named) in `names`, as
/// written, followed by the blank line: `BODY[HEADER.FIELDS (…)]` and `HEADER.FIELDS.NOT`.
pub fn header_fields(raw: &[u8], header: Range<usize>, names: &[&str], exclude: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for field in header::fields(raw, header) {
        let name = &raw[field.name.clone()];
        let listed = names
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()));
        if listed != exclude {
            out.extend_from_slice(&raw[field.name.start..field.value.end]);
            if !out.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}
