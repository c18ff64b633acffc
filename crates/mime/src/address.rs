//! RFC 5322 address lists, as IMAP's ENVELOPE needs them: name, source route, mailbox and
//! host of each address, with group start and end markers. Names keep encoded words as written.

/// One address of an ENVELOPE address list, or a group marker.
///
/// A group starts with `mailbox: Some(group name), host: None` and ends with every field
/// `None`, as RFC 3501 section 7.4.2 encodes groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Address {
    pub name: Option<String>,
    pub adl: Option<String>,
    pub mailbox: Option<String>,
    pub host: Option<String>,
}

impl Address {
    pub fn is_group_start(&self) -> bool {
        self.host.is_none() && self.mailbox.is_some()
    }

    pub fn is_group_end(&self) -> bool {
        self.host.is_none() && self.mailbox.is_none()
    }

    /// `mailbox@host`, for display and search.
    pub fn email(&self) -> Option<String> {
        Some(format!(
            "{}@{}",
            self.mailbox.as_deref()?,
            self.host.as_deref()?
        ))
    }
}

/// Placeholders for addresses without a local part or domain, so that they do not read as
/// group markers (the same words Dovecot uses).
const MISSING_MAILBOX: &str = "MISSING_MAILBOX";
const MISSING_DOMAIN: &str = "MISSING_DOMAIN";

/// Most addresses taken from one header; the rest are ignored.
pub const ADDRESSES_PER_HEADER_MAX: usize = 1_000;

#[derive(Default)]
struct Pending {
    /// The display name so far: quotes removed, whitespace collapsed.
    phrase: String,
    /// The same text with quotes kept, for an addr-spec without angle brackets.
    raw: String,
    comment: Option<String>,
    angle: Option<String>,
}

impl Pending {
    fn push_space(&mut self) {
        if !self.phrase.is_empty() && !self.phrase.ends_with(' ') {
            self.phrase.push(' ');
        }
        if !self.raw.is_empty() && !self.raw.ends_with(' ') {
            self.raw.push(' ');
        }
    }

    fn finish(self) -> Option<Address> {
        let phrase = self.phrase.trim().to_string();
        let (name, spec) = match self.angle {
            Some(angle) => {
                let name = if phrase.is_empty() {
                    self.comment
                } else {
                    Some(phrase)
                };
                (name, angle)
            }
            None => {
                let spec: String = without_unquoted_spaces(self.raw.trim());
                // A comment alone is no address (`group2: (foo) ;` has no member).
                if spec.is_empty() {
                    return None;
                }
                (self.comment, spec)
            }
        };
        if spec.is_empty() && name.is_none() {
            return None;
        }
        let (adl, spec) = match spec.strip_prefix('@').and(spec.split_once(':')) {
            Some((route, rest)) => (Some(route.to_string()), rest.to_string()),
            None => (None, spec),
        };
        let (mailbox, host) = match spec.rsplit_once('@') {
            Some((local, domain)) => (
                non_empty(local, MISSING_MAILBOX),
                non_empty(domain, MISSING_DOMAIN),
            ),
            None => (
                non_empty(&spec, MISSING_MAILBOX),
                MISSING_DOMAIN.to_string(),
            ),
        };
        Some(Address {
            name: name.filter(|n| !n.is_empty()),
            adl,
            mailbox: Some(mailbox),
            host: Some(host),
        })
    }
}

fn non_empty(text: &str, fallback: &str) -> String {
    if text.is_empty() {
        fallback.to_string()
    } else {
        text.to_string()
    }
}

fn without_unquoted_spaces(text: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if quoted || !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Parses an unfolded address-list header value. Never fails: what cannot be read is skipped.
pub fn parse_address_list(text: &str) -> Vec<Address> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut pending = Pending::default();
    let mut in_group = false;
    let mut at = 0;
    let emit = |pending: Pending, out: &mut Vec<Address>| {
        if out.len() < ADDRESSES_PER_HEADER_MAX {
            out.extend(pending.finish());
        }
    };
    while let Some(&c) = chars.get(at) {
        at += 1;
        match c {
            '"' => {
                let (content, next) = read_quoted(&chars, at);
                pending.phrase.push_str(&content);
                pending.raw.push('"');
                pending.raw.push_str(&content);
                pending.raw.push('"');
                at = next;
            }
            '(' => {
                let (content, next) = read_comment(&chars, at);
                let trimmed = collapse_spaces(&content);
                if !trimmed.is_empty() {
                    pending.comment = Some(trimmed);
                }
                at = next;
            }
            '<' => {
                let end = chars[at..]
                    .iter()
                    .position(|&c| c == '>')
                    .map_or(chars.len(), |p| at + p);
                let inside: String = chars[at..end]
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                pending.angle = Some(inside);
                at = (end + 1).min(chars.len());
            }
            ',' => emit(std::mem::take(&mut pending), &mut out),
            ':' if pending.angle.is_none() && !in_group => {
                let name = collapse_spaces(&pending.phrase);
                out.push(Address {
                    mailbox: Some(name),
                    ..Address::default()
                });
                pending = Pending::default();
                in_group = true;
            }
            ';' if in_group => {
                emit(std::mem::take(&mut pending), &mut out);
                out.push(Address::default());
                in_group = false;
            }
            c if c.is_whitespace() => pending.push_space(),
            c => {
                pending.phrase.push(c);
                pending.raw.push(c);
            }
        }
    }
    emit(pending, &mut out);
    if in_group {
        out.push(Address::default());
    }
    out
}

fn read_quoted(chars: &[char], mut at: usize) -> (String, usize) {
    let mut out = String::new();
    while let Some(&c) = chars.get(at) {
        at += 1;
        match c {
            '"' => return (out, at),
            '\\' => {
                if let Some(&next) = chars.get(at) {
                    out.push(next);
                    at += 1;
                }
            }
            _ => out.push(c),
        }
    }
    (out, at)
}

/// Reads a comment after its `(`; nested comments with a depth counter, not recursion.
fn read_comment(chars: &[char], mut at: usize) -> (String, usize) {
    let mut out = String::new();
    let mut depth = 1usize;
    while let Some(&c) = chars.get(at) {
        at += 1;
        match c {
            '\\' => {
                if let Some(&next) = chars.get(at) {
                    out.push(next);
                    at += 1;
                }
            }
            '(' => {
                depth += 1;
                out.push(c);
            }
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (out, at);
                }
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    (out, at)
}

fn collapse_spaces(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str) -> Vec<String> {
        parse_address_list(text)
            .iter()
            .map(|a| {
                let f = |v: &Option<String>| v.clone().unwrap_or_else(|| "NIL".to_string());
                format!(
                    "{}|{}|{}|{}",
                    f(&a.name),
                    f(&a.adl),
                    f(&a.mailbox),
                    f(&a.host)
                )
            })
            .collect()
    }

    #[test]
    fn address_lists_parse_into_envelope_addresses() {
        let check = |text: &str, expect: &[&str]| assert_eq!(show(text), expect, "{text}");
        check("alice@example.org", &["NIL|NIL|alice|example.org"]);
        check(
            "Alice Example <alice@example.org>",
            &["Alice Example|NIL|alice|example.org"],
        );
        check(
            "\"Example, Alice\" <alice@example.org>, bob@example.org",
            &[
                "Example, Alice|NIL|alice|example.org",
                "NIL|NIL|bob|example.org",
            ],
        );
        check("\"A \\\"q\\\" B\" <a@b.c>", &["A \"q\" B|NIL|a|b.c"]);
        check(
            "alice@example.org (Alice Comment)",
            &["Alice Comment|NIL|alice|example.org"],
        );
        check(
            "=?utf-8?q?J=C3=B6rg?= <j@x.de>",
            &["=?utf-8?q?J=C3=B6rg?=|NIL|j|x.de"],
        );
        check(
            "<@relay.example:alice@example.org>",
            &["NIL|@relay.example|alice|example.org"],
        );
        check(
            "Team: alice@a.org, Bob <bob@b.org>;, carol@c.org",
            &[
                "NIL|NIL|Team|NIL",
                "NIL|NIL|alice|a.org",
                "Bob|NIL|bob|b.org",
                "NIL|NIL|NIL|NIL",
                "NIL|NIL|carol|c.org",
            ],
        );
        check(
            "undisclosed-recipients:;",
            &["NIL|NIL|undisclosed-recipients|NIL", "NIL|NIL|NIL|NIL"],
        );
        check("root", &["NIL|NIL|root|MISSING_DOMAIN"]);
        check("", &[]);
        check(" , ,", &[]);
        check(
            "Broken <unterminated@x.org",
            &["Broken|NIL|unterminated|x.org"],
        );
        check(
            "John Q. Public <jqp@x.org>",
            &["John Q. Public|NIL|jqp|x.org"],
        );
        check(
            "\"quoted local\"@x.org",
            &["NIL|NIL|\"quoted local\"|x.org"],
        );
    }
}
