//! Header blocks: finding fields, unfolding them, and the RFC 2045 `type/subtype; a=b` syntax.
//! Values stay raw (encoded words are not decoded): IMAP's ENVELOPE and BODYSTRUCTURE want
//! them so.

use std::ops::Range;

/// One header field of a block: where its name and its value are in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: Range<usize>,
    /// From after the colon to the end of the field, line breaks included.
    pub(crate) value: Range<usize>,
}

/// Splits the header block at `raw[range]` into fields: `HeaderWalk`'s fields, stray lines
/// (and what continues them) left out, as mail software skips them.
pub(crate) fn fields(raw: &[u8], range: Range<usize>) -> Vec<Field> {
    HeaderWalk::within(raw, range)
        .lines
        .into_iter()
        .filter_map(|line| {
            let name = line.name?;
            let colon = name.end
                + raw[name.end..line.whole.end]
                    .iter()
                    .position(|&b| b == b':')?;
            Some(Field {
                name,
                value: colon + 1..line.whole.end,
            })
        })
        .collect()
}

/// Finds the end of the header block that starts at `start`: the offset after the empty line,
/// and the offset where the body starts (the same). A block with no empty line runs to `end`.
pub(crate) fn header_end(raw: &[u8], start: usize, end: usize) -> usize {
    let mut at = start;
    while at < end {
        let line_end = find_line_end(raw, at, end);
        if trim_line_break(&raw[at..line_end]).is_empty() {
            return line_end;
        }
        at = line_end;
    }
    end
}

/// The offset after the next LF at or after `at`, or `end`.
pub(crate) fn find_line_end(raw: &[u8], at: usize, end: usize) -> usize {
    raw[at..end]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(end, |p| at + p + 1)
}

fn trim_line_break(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_end_ws_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1)
}

/// The unfolded value of a field: line breaks removed, outer whitespace trimmed. Bytes that
/// are not UTF-8 are kept as Latin-1 characters, so nothing is lost or invented.
pub(crate) fn unfolded(raw: &[u8], field: &Field) -> String {
    let bytes: Vec<u8> = raw[field.value.clone()]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
    };
    text.trim().to_string()
}

/// The first field named `name` (ASCII case-insensitive), unfolded.
pub(crate) fn first(raw: &[u8], fields: &[Field], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|f| raw[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| unfolded(raw, f))
}

/// A parsed `value; attribute=value; …` header (Content-Type, Content-Disposition).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Structured {
    pub(crate) value: String,
    pub(crate) params: Vec<(String, String)>,
}

/// Parses `type/subtype; a=b; c="d e"` and `attachment; filename=x`. Comments are dropped,
/// quoted strings unquoted. Parameters keep their names' case; RFC 2231 `name*=` forms are
/// kept as they are written.
pub(crate) fn structured(text: &str) -> Structured {
    let mut tokens = Tokens {
        chars: text.chars().collect(),
        at: 0,
    };
    let mut value = String::new();
    while let Some(c) = tokens.peek() {
        if c == ';' {
            break;
        }
        if c == '(' {
            tokens.skip_comment();
            continue;
        }
        tokens.at += 1;
        if !c.is_whitespace() {
            value.push(c);
        }
    }
    let mut params = Vec::new();
    while tokens.peek() == Some(';') {
        tokens.at += 1;
        tokens.skip_cfws();
        let name = tokens.name();
        tokens.skip_cfws();
        if tokens.peek() != Some('=') {
            // A name without a value: skip to the next parameter.
            while let Some(c) = tokens.peek() {
                if c == ';' {
                    break;
                }
                tokens.at += 1;
            }
            continue;
        }
        tokens.at += 1;
        tokens.skip_cfws();
        let value = if tokens.peek() == Some('"') {
            tokens.quoted()
        } else {
            tokens.value()
        };
        tokens.skip_cfws();
        if !name.is_empty() {
            params.push((name, value));
        }
    }
    Structured { value, params }
}

struct Tokens {
    chars: Vec<char>,
    at: usize,
}

impl Tokens {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_cfws(&mut self) {
        while let Some(c) = self.peek() {
            if c == '(' {
                self.skip_comment();
            } else if c.is_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    /// Skips a comment, nested ones included, with a counter rather than recursion.
    fn skip_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek() {
            self.at += 1;
            match c {
                '\\' => self.at += 1,
                '(' => depth += 1,
                ')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    fn name(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c == ';' || c == '=' || c == '(' || c == '"' || c.is_whitespace() {
                break;
            }
            out.push(c);
            self.at += 1;
        }
        out
    }

    fn value(&mut self) -> String {
        let mut out = self.name();
        // A value with spaces but no quotes (seen in the wild): take the rest up to `;`.
        if !out.is_empty() && self.peek().is_some_and(char::is_whitespace) {
            let save = self.at;
            let mut rest = String::new();
            while let Some(c) = self.peek() {
                if c == ';' || c == '(' {
                    break;
                }
                rest.push(c);
                self.at += 1;
            }
            let trimmed = rest.trim_end();
            if trimmed.trim().is_empty() {
                self.at = save;
            } else {
                out.push_str(trimmed);
            }
        }
        out
    }

    fn quoted(&mut self) -> String {
        let mut out = String::new();
        self.at += 1;
        while let Some(c) = self.peek() {
            self.at += 1;
            match c {
                '"' => return out,
                '\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.at += 1;
                    }
                }
                '\r' | '\n' => {}
                _ => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_headers_parse_like_mail_software_does() {
        let check = |text: &str, value: &str, params: &[(&str, &str)]| {
            let parsed = structured(text);
            assert_eq!(parsed.value, value, "{text}");
            let got: Vec<(&str, &str)> = parsed
                .params
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            assert_eq!(got, params, "{text}");
        };
        check("text/plain", "text/plain", &[]);
        check(
            "text/plain; charset=UTF-8",
            "text/plain",
            &[("charset", "UTF-8")],
        );
        check(
            "Text/HTML ; charset = \"iso-8859-1\" (latin)",
            "Text/HTML",
            &[("charset", "iso-8859-1")],
        );
        check(
            "multipart/mixed;\r\n\tboundary=\"=_a b\\\"c\"",
            "multipart/mixed",
            &[("boundary", "=_a b\"c")],
        );
        check(
            "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
            "attachment",
            &[("filename*", "UTF-8''r%C3%A9sum%C3%A9.pdf")],
        );
        check(
            "text/plain; ; charset=x; broken; name=a",
            "text/plain",
            &[("charset", "x"), ("name", "a")],
        );
        check(
            "application/pdf; name=my file.pdf",
            "application/pdf",
            &[("name", "my file.pdf")],
        );
        check("", "", &[]);
        check("(comment only", "", &[]);
        check(
            "text/plain; charset=\"unterminated",
            "text/plain",
            &[("charset", "unterminated")],
        );
    }

    #[test]
    fn fields_unfold_and_bad_lines_are_skipped() {
        let raw = b"Subject: a\r\n b\r\nX-Bad\r\nFrom: x@y\r\n\r\nbody";
        let end = header_end(raw, 0, raw.len());
        assert_eq!(&raw[end..], b"body");
        let found = fields(raw, 0..end);
        assert_eq!(found.len(), 2);
        assert_eq!(first(raw, &found, "subject").as_deref(), Some("a b"));
        assert_eq!(first(raw, &found, "FROM").as_deref(), Some("x@y"));
        assert_eq!(first(raw, &found, "To"), None);
    }
}

/// One field of a header section with its continuation lines, as an editor walks it: `whole`
/// is every byte of it, line breaks included, and `name` where its name is (before the colon,
/// without the obsolete syntax's whitespace). A line that is neither a field nor a
/// continuation has no name: readers skip it, an editor keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderLine {
    pub whole: Range<usize>,
    pub name: Option<Range<usize>>,
}

/// A message's header section, walked once: its fields in order and where it ends. The
/// section ends at the first blank line (CRLF or a bare LF), as every mail reader ends it.
#[derive(Clone, Debug)]
pub struct HeaderWalk {
    pub lines: Vec<HeaderLine>,
    /// Where the blank line that ends the section starts (the message's length without one).
    pub end: usize,
    /// Just past that blank line: where the body starts.
    pub body: usize,
}

impl HeaderWalk {
    /// The message's own header section.
    pub fn of(raw: &[u8]) -> HeaderWalk {
        Self::within(raw, 0..raw.len())
    }

    /// The header block at `raw[range]` (a part's, say).
    pub fn within(raw: &[u8], range: Range<usize>) -> HeaderWalk {
        let mut lines: Vec<HeaderLine> = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let line_end = find_line_end(raw, at, range.end);
            let content = trim_line_break(&raw[at..line_end]);
            if content.is_empty() {
                return HeaderWalk {
                    lines,
                    end: at,
                    body: line_end,
                };
            }
            let continuation = matches!(content[0], b' ' | b'\t');
            match lines.last_mut() {
                Some(last) if continuation => last.whole.end = line_end,
                _ => {
                    let name = content
                        .iter()
                        .position(|&b| b == b':')
                        .map(|colon| at..at + trim_end_ws_len(&content[..colon]))
                        .filter(|name| {
                            !name.is_empty() && raw[name.clone()].iter().all(|&b| b > 32 && b < 127)
                        });
                    lines.push(HeaderLine {
                        whole: at..line_end,
                        name,
                    });
                }
            }
            at = line_end;
        }
        HeaderWalk {
            lines,
            end: range.end,
            body: range.end,
        }
    }

    /// Whether `line` is a field named `name` (ASCII case-insensitive).
    pub fn is_named(raw: &[u8], line: &HeaderLine, name: &str) -> bool {
        line.name
            .as_ref()
            .is_some_and(|n| raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The fields named `name`.
    pub fn named<'a>(
        &'a self,
        raw: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'a HeaderLine> + 'a {
        self.lines
            .iter()
            .filter(move |line| Self::is_named(raw, line, name))
    }

    /// The value of a field (after its colon), unfolded and trimmed; bytes that are not UTF-8
    /// are kept as Latin-1 characters.
    pub fn value(raw: &[u8], line: &HeaderLine) -> String {
        let start = line.name.as_ref().map_or(line.whole.start, |n| {
            n.end
                + raw[n.end..line.whole.end]
                    .iter()
                    .position(|&b| b == b':')
                    .map_or(0, |p| p + 1)
        });
        unfolded(
            raw,
            &Field {
                name: line.whole.start..start,
                value: start..line.whole.end,
            },
        )
    }

    /// The first field named `name`, unfolded.
    pub fn first(&self, raw: &[u8], name: &str) -> Option<String> {
        self.named(raw, name)
            .next()
            .map(|line| Self::value(raw, line))
    }
}

#[cfg(test)]
mod walk_tests {
    use super::*;

    #[test]
    fn the_walk_keeps_every_byte_and_ends_at_the_first_blank_line() {
        let raw = b"Subject: a\r\n b\r\nstray line\r\nFrom : x@y\r\n\tz\n\nDate: in the body\r\n";
        let walk = HeaderWalk::of(raw);
        assert_eq!(walk.lines.len(), 3);
        let covered: Vec<u8> = walk
            .lines
            .iter()
            .flat_map(|l| raw[l.whole.clone()].to_vec())
            .collect();
        assert_eq!(&covered[..], &raw[..walk.end]);
        assert_eq!(&raw[walk.end..walk.body], b"\n");
        assert_eq!(walk.lines[1].name, None, "a stray line");
        assert_eq!(walk.first(raw, "subject").as_deref(), Some("a b"));
        assert_eq!(walk.first(raw, "FROM").as_deref(), Some("x@y\tz"));
        assert_eq!(walk.first(raw, "date"), None, "only the header counts");
        let none = HeaderWalk::of(b"Subject: no body");
        assert_eq!((none.end, none.body, none.lines.len()), (16, 16, 1));
    }
}
