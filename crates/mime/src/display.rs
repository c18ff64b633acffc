//! What a message list shows: subject, senders, recipients and date, decoded for people, read
//! from the stored summary (its IMAP ENVELOPE) so that a list of thousands of messages opens
//! no message body.

use mail_parser::MessageParser;

use crate::address::Address;
use crate::structure::Envelope;

/// One person of a From, To or Cc list: the display name (decoded, may be empty) and address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub email: String,
}

impl Person {
    /// The name when there is one, else the address.
    pub fn label(&self) -> &str {
        if self.name.trim().is_empty() {
            &self.email
        } else {
            &self.name
        }
    }
}

/// A message's envelope, decoded for display.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    pub subject: String,
    pub from: Vec<Person>,
    pub to: Vec<Person>,
    pub cc: Vec<Person>,
    pub reply_to: Vec<Person>,
    pub date: Option<String>,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
}

/// Reads an ENVELOPE in IMAP syntax (as `envelope()` writes it) back into its raw fields.
pub fn parse_envelope(bytes: &[u8]) -> Option<Envelope> {
    let mut reader = Reader { bytes, at: 0 };
    reader.expect(b'(')?;
    let date = reader.nstring()?;
    reader.expect(b' ')?;
    let subject = reader.nstring()?;
    let mut lists = Vec::with_capacity(6);
    for _ in 0..6 {
        reader.expect(b' ')?;
        lists.push(reader.addresses()?);
    }
    reader.expect(b' ')?;
    let in_reply_to = reader.nstring()?;
    reader.expect(b' ')?;
    let message_id = reader.nstring()?;
    reader.expect(b')')?;
    let mut lists = lists.into_iter();
    let mut next = || lists.next().unwrap_or_default();
    Some(Envelope {
        date,
        subject,
        from: next(),
        sender: next(),
        reply_to: next(),
        to: next(),
        cc: next(),
        bcc: next(),
        in_reply_to,
        message_id,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    fn nstring(&mut self) -> Option<Option<String>> {
        let rest = &self.bytes[self.at..];
        if rest.starts_with(b"NIL") {
            self.at += 3;
            return Some(None);
        }
        match rest.first()? {
            b'"' => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    let byte = *self.bytes.get(self.at)?;
                    self.at += 1;
                    match byte {
                        b'"' => break,
                        b'\\' => {
                            out.push(*self.bytes.get(self.at)?);
                            self.at += 1;
                        }
                        other => out.push(other),
                    }
                }
                Some(Some(String::from_utf8_lossy(&out).into_owned()))
            }
            b'{' => {
                let close = rest.iter().position(|&b| b == b'}')?;
                let length: usize = std::str::from_utf8(&rest[1..close]).ok()?.parse().ok()?;
                let start = self.at + close + 3; // "}\r\n"
                let end = start.checked_add(length)?;
                let text = self.bytes.get(start..end)?;
                self.at = end;
                Some(Some(String::from_utf8_lossy(text).into_owned()))
            }
            _ => None,
        }
    }

    fn addresses(&mut self) -> Option<Vec<Address>> {
        if self.bytes[self.at..].starts_with(b"NIL") {
            self.at += 3;
            return Some(Vec::new());
        }
        self.expect(b'(')?;
        let mut out = Vec::new();
        while self.bytes.get(self.at) == Some(&b'(') {
            self.at += 1;
            let name = self.nstring()?;
            self.expect(b' ')?;
            let adl = self.nstring()?;
            self.expect(b' ')?;
            let mailbox = self.nstring()?;
            self.expect(b' ')?;
            let host = self.nstring()?;
            self.expect(b')')?;
            out.push(Address {
                name,
                adl,
                mailbox,
                host,
            });
        }
        self.expect(b')')?;
        Some(out)
    }
}

/// Decodes RFC 2047 encoded words (and charsets) in a header value, the way mail-parser
/// decodes a Subject.
pub(crate) fn decode(text: &str) -> String {
    let header = format!("Subject: {}\r\n\r\n", text.replace(['\r', '\n'], " "));
    MessageParser::default()
        .parse_headers(header.as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

fn people(list: &[Address]) -> Vec<Person> {
    list.iter()
        .filter_map(|a| {
            let email = a.email()?;
            Some(Person {
                name: a.name.as_deref().map(decode).unwrap_or_default(),
                email,
            })
        })
        .collect()
}

impl Shown {
    pub fn of(envelope: &Envelope) -> Shown {
        Shown {
            subject: envelope.subject.as_deref().map(decode).unwrap_or_default(),
            from: people(&envelope.from),
            to: people(&envelope.to),
            cc: people(&envelope.cc),
            reply_to: people(&envelope.reply_to),
            date: envelope.date.clone(),
            message_id: envelope.message_id.clone(),
            in_reply_to: envelope.in_reply_to.clone(),
        }
    }

    /// From a stored summary's ENVELOPE; an unreadable one shows as empty.
    pub fn of_imap(envelope: &[u8]) -> Shown {
        parse_envelope(envelope)
            .map(|e| Shown::of(&e))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{envelope, Limits, Structure};

    #[test]
    fn an_envelope_reads_back_exactly_as_written() {
        let raw = "Date: Mon, 23 Nov 2026 09:00:00 +0100\r\n\
                   Subject: =?UTF-8?Q?Bl=C3=BCtenwert_=22results=22?= \\ back\r\n\
                   From: \"M\u{fc}ller, Anna\" <anna@clinic.example>\r\n\
                   To: bob@example.org, Team: carol@example.org, dan@example.org;\r\n\
                   Cc: =?ISO-8859-1?Q?Andr=E9?= <andre@example.org>\r\n\
                   Message-ID: <m1@clinic.example>\r\n\
                   In-Reply-To: <m0@example.org>\r\n\r\nbody\r\n";
        let structure = Structure::parse(raw.as_bytes(), Limits::default());
        let written = envelope(&structure.envelope);
        assert_eq!(parse_envelope(&written).as_ref(), Some(&structure.envelope));
        let shown = Shown::of_imap(&written);
        assert_eq!(shown.subject, "Blütenwert \"results\" \\ back");
        assert_eq!(shown.from[0].label(), "Müller, Anna");
        assert_eq!(shown.from[0].email, "anna@clinic.example");
        let to: Vec<&str> = shown.to.iter().map(|p| p.email.as_str()).collect();
        assert_eq!(
            to,
            ["bob@example.org", "carol@example.org", "dan@example.org"],
            "groups flattened"
        );
        assert_eq!(
            shown.to[0].label(),
            "bob@example.org",
            "no name: the address"
        );
        assert_eq!(shown.cc[0].name, "André");
        assert_eq!(shown.message_id.as_deref(), Some("<m1@clinic.example>"));
        assert_eq!(
            shown.date.as_deref(),
            Some("Mon, 23 Nov 2026 09:00:00 +0100")
        );
    }

    #[test]
    fn damaged_envelopes_show_as_empty() {
        for bad in [
            &b""[..],
            b"(",
            b"(NIL NIL",
            b"({999}\r\nx NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
            b"garbage",
        ] {
            assert_eq!(
                parse_envelope(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(Shown::of_imap(bad), Shown::default());
        }
        // Any prefix of a good envelope, and bytes flipped in it: no panic, no read past it.
        let good = envelope(
            &Structure::parse(b"Subject: x\r\nFrom: a@b.c\r\n\r\n", Limits::default()).envelope,
        );
        for cut in 0..good.len() {
            let _ = parse_envelope(&good[..cut]);
            for flip in [b'{', b'"', b'\\', b')', b'9'] {
                let mut bent = good.clone();
                bent[cut] = flip;
                let _ = parse_envelope(&bent);
            }
        }
    }
}
