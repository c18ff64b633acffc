//! The message model over a generated corpus: every section's bytes are the bytes the
//! generator wrote, the IMAP forms are exact for hand-checked messages, and mangled input
//! never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sealpost_mime::{envelope, header_fields, search_text, Limits, SectionText, Structure};

fn parse(raw: &[u8]) -> Structure {
    Structure::parse(raw, Limits::default())
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

fn section(raw: &[u8], path: &[u32], kind: SectionText) -> Option<String> {
    let structure = parse(raw);
    structure
        .section_range(raw.len(), path, kind)
        .map(|r| String::from_utf8_lossy(&raw[r]).to_string())
}

const SIMPLE: &str =
    "From: Alice Example <alice@example.org>\r\nTo: bob@example.org, \"Carol, C.\" <carol@example.org>\r\n\
Subject: Hello\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob\r\nBye\r\n";

#[test]
fn simple_message_envelope_and_bodystructure_are_exact() {
    let raw = SIMPLE.as_bytes();
    let s = parse(raw);
    assert_eq!(
        text(s.body_structure(true)),
        "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 16 2 NIL NIL NIL NIL)"
    );
    assert_eq!(
        text(s.body_structure(false)),
        "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 16 2)"
    );
    let alice = "((\"Alice Example\" NIL \"alice\" \"example.org\"))";
    assert_eq!(
        text(envelope(&s.envelope)),
        format!(
            "(\"Mon, 2 Nov 2026 10:00:00 +0000\" \"Hello\" {alice} {alice} {alice} \
             ((NIL NIL \"bob\" \"example.org\")(\"Carol, C.\" NIL \"carol\" \"example.org\")) NIL NIL NIL \"<1@example.org>\")"
        )
    );
    assert_eq!(
        section(raw, &[], SectionText::Text).unwrap(),
        "Hello Bob\r\nBye\r\n"
    );
    assert!(section(raw, &[], SectionText::Header)
        .unwrap()
        .ends_with("<1@example.org>\r\n\r\n"));
    assert_eq!(
        section(raw, &[1], SectionText::Whole).unwrap(),
        "Hello Bob\r\nBye\r\n",
        "part 1 of a single-part message is its body"
    );
    assert_eq!(section(raw, &[2], SectionText::Whole), None);
    assert_eq!(
        section(raw, &[1], SectionText::Header),
        None,
        "HEADER of a part that is no message"
    );
}

const MIXED: &str = "From: a@x.org\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
preamble\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=inner\r\n\r\n\
--inner\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Gr=FC=DFe\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n\
<p>Gr\u{fc}\u{df}e</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\nContent-ID: <scan@x.org>\r\nContent-Language: en, de\r\n\r\n\
JVBERi0xLjQK\r\n\
--outer\r\n\
Content-Type: message/rfc822\r\n\r\n\
From: inner@y.org\r\nSubject: forwarded\r\n\r\n\
inner body\r\n\
--outer--\r\n\
epilogue\r\n";

#[test]
fn mixed_message_sections_are_the_bytes_written() {
    let raw = MIXED.as_bytes();
    assert_eq!(
        section(raw, &[1, 1], SectionText::Whole).unwrap(),
        "Gr=FC=DFe"
    );
    assert_eq!(
        section(raw, &[1, 1], SectionText::Mime).unwrap(),
        "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    );
    assert_eq!(
        section(raw, &[1, 2], SectionText::Whole).unwrap(),
        "<p>Gr\u{fc}\u{df}e</p>"
    );
    assert_eq!(
        section(raw, &[2], SectionText::Whole).unwrap(),
        "JVBERi0xLjQK"
    );
    assert_eq!(
        section(raw, &[3], SectionText::Whole).unwrap(),
        "From: inner@y.org\r\nSubject: forwarded\r\n\r\ninner body"
    );
    assert_eq!(
        section(raw, &[3], SectionText::Header).unwrap(),
        "From: inner@y.org\r\nSubject: forwarded\r\n\r\n"
    );
    assert_eq!(section(raw, &[3], SectionText::Text).unwrap(), "inner body");
    assert_eq!(
        section(raw, &[3, 1], SectionText::Whole).unwrap(),
        "inner body",
        "part 1 of the nested single-part message"
    );
    assert_eq!(section(raw, &[4], SectionText::Whole), None);
    assert_eq!(section(raw, &[1, 3], SectionText::Whole), None);
    assert_eq!(section(raw, &[0], SectionText::Whole), None);

    let s = parse(raw);
    let expected = concat!(
        "(((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"iso-8859-1\") NIL NIL \"QUOTED-PRINTABLE\" 9 1 NIL NIL NIL NIL)",
        "(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 14 1 NIL NIL NIL NIL)",
        " \"ALTERNATIVE\" (\"BOUNDARY\" \"inner\") NIL NIL NIL)",
        "(\"APPLICATION\" \"PDF\" (\"NAME\" \"scan.pdf\") \"<scan@x.org>\" NIL \"BASE64\" 12 NIL",
        " (\"ATTACHMENT\" (\"FILENAME\" \"scan.pdf\")) (\"en\" \"de\") NIL)",
        "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 51",
        " (NIL \"forwarded\" ((NIL NIL \"inner\" \"y.org\")) ((NIL NIL \"inner\" \"y.org\")) ((NIL NIL \"inner\" \"y.org\")) NIL NIL NIL NIL NIL)",
        " (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL)",
        " \"MIXED\" (\"BOUNDARY\" \"outer\") NIL NIL NIL)"
    );
    // Sizes count bytes: the HTML part's ü and ß take two each in UTF-8.
    assert_eq!(text(s.body_structure(true)), expected);
    let body = text(s.body_structure(false));
    assert!(
        body.starts_with(
            "(((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"iso-8859-1\") NIL NIL \"QUOTED-PRINTABLE\" 9 1)"
        ),
        "{body}"
    );
    assert!(body.ends_with(" 4) \"MIXED\")"), "{body}");
    assert_eq!(
        s.envelope.subject.as_deref(),
        Some("=?ISO-8859-1?Q?Gr=FC=DFe?="),
        "ENVELOPE keeps encoded words"
    );

    let search = search_text(raw);
    assert_eq!(
        search.header("subject").next(),
        Some("Grüße"),
        "search decodes encoded words"
    );
    assert!(
        search.body.contains("Grüße"),
        "quoted-printable Latin-1 decoded: {}",
        search.body
    );
    assert!(
        search.body.contains("scan.pdf"),
        "attachment names are searchable"
    );
    assert!(
        search.body.contains("inner body"),
        "nested messages are searchable"
    );
}

#[test]
fn header_fields_select_and_exclude_fields_as_written() {
    let raw = SIMPLE.as_bytes();
    let s = parse(raw);
    let header = s.root().header.clone();
    assert_eq!(
        text(header_fields(
            raw,
            header.clone(),
            &["subject", "TO"],
            false
        )),
        "To: bob@example.org, \"Carol, C.\" <carol@example.org>\r\nSubject: Hello\r\n\r\n"
    );
    let rest = text(header_fields(
        raw,
        header.clone(),
        &["subject", "to", "from", "date"],
        true,
    ));
    assert_eq!(rest, "Message-ID: <1@example.org>\r\n\r\n");
    assert_eq!(text(header_fields(raw, header, &["x-none"], false)), "\r\n");
}

// ---- Generated corpus --------------------------------------------------------------------

/// A part to generate: either a leaf with its body, or a container.
enum Spec {
    Leaf {
        content_type: &'static str,
        encoding: &'static str,
        body: String,
    },
    Multipart {
        subtype: &'static str,
        children: Vec<Spec>,
    },
    Message(Box<Spec>),
}

/// What the generator knows about each part it wrote, by IMAP part path.
struct Written {
    path: Vec<u32>,
    mime_header: String,
    body: String,
}

struct Generator {
    next_boundary: u32,
    written: Vec<Written>,
}

impl Generator {
    /// Writes the MIME header and body of `spec` (explicit stack, no recursion).
    fn write(&mut self, spec: &Spec, path: Vec<u32>) -> (String, String) {
        match spec {
            Spec::Leaf {
                content_type,
                encoding,
                body,
            } => {
                let header = format!(
                    "Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
                );
                self.written.push(Written {
                    path,
                    mime_header: header.clone(),
                    body: body.clone(),
                });
                (header, body.clone())
            }
            Spec::Multipart { subtype, children } => {
                self.next_boundary += 1;
                let boundary = format!(
                    "=_b{}_{}",
                    self.next_boundary,
                    "x".repeat(self.next_boundary as usize % 5)
                );
                let header = format!(
                    "Content-Type: multipart/{subtype};\r\n boundary=\"{boundary}\"\r\n\r\n"
                );
                let mut body = String::from("This is a MIME preamble.\r\n");
                for (i, child) in children.iter().enumerate() {
                    let mut child_path = path.clone();
                    child_path.push(i as u32 + 1);
                    let (child_header, child_body) = self.write(child, child_path);
                    body.push_str(&format!("--{boundary}\r\n{child_header}{child_body}\r\n"));
                }
                body.push_str(&format!("--{boundary}--\r\nepilogue\r\n"));
                (header, body)
            }
            Spec::Message(inner) => {
                // Children of an encapsulated message are numbered inside it: a single-part
                // inner message's body is part `path.1`, whose MIME header is the whole
                // nested message header.
                let single = !matches!(**inner, Spec::Multipart { .. });
                let mut inner_path = path.clone();
                if single {
                    inner_path.push(1);
                }
                let first_recorded = self.written.len();
                let (inner_header, inner_body) = self.write(inner, inner_path);
                let nested_header =
                    format!("From: nested@x.org\r\nSubject: nested\r\n{inner_header}");
                if single {
                    self.written[first_recorded].mime_header = nested_header.clone();
                }
                let message = format!("{nested_header}{inner_body}");
                let header = "Content-Type: message/rfc822\r\n\r\n".to_string();
                self.written.push(Written {
                    path,
                    mime_header: header.clone(),
                    body: message.clone(),
                });
                (header, message)
            }
        }
    }
}

fn leaf(content_type: &'static str, encoding: &'static str, body: &str) -> Spec {
    Spec::Leaf {
        content_type,
        encoding,
        body: body.to_string(),
    }
}

fn corpus() -> Vec<Spec> {
    let latin1 = leaf(
        "text/plain; charset=iso-8859-1",
        "quoted-printable",
        "Caf=E9 cr=E8me=\r\n line two",
    );
    vec![
        Spec::Multipart {
            subtype: "alternative",
            children: vec![
                leaf(
                    "text/plain; charset=utf-8",
                    "8bit",
                    "plain text\r\nsecond line",
                ),
                leaf("text/html; charset=utf-8", "8bit", "<p>html</p>"),
            ],
        },
        Spec::Multipart {
            subtype: "mixed",
            children: vec![
                Spec::Multipart {
                    subtype: "alternative",
                    children: vec![
                        leaf("text/plain", "7bit", "body"),
                        leaf("text/html", "7bit", "<b>body</b>"),
                    ],
                },
                leaf(
                    "application/pdf; name=\"a.pdf\"",
                    "base64",
                    "JVBERi0xLjQKJcfsj6IK\r\nMSAwIG9iago=",
                ),
                leaf("image/png; name=b.png", "base64", "iVBORw0KGgo="),
                latin1,
            ],
        },
        Spec::Multipart {
            subtype: "mixed",
            children: vec![
                leaf("text/plain", "7bit", "see attached"),
                Spec::Message(Box::new(Spec::Multipart {
                    subtype: "mixed",
                    children: vec![
                        leaf("text/plain; charset=koi8-r", "8bit", "\u{0}"),
                        Spec::Message(Box::new(leaf("text/plain", "7bit", "deepest"))),
                    ],
                })),
            ],
        },
        Spec::Multipart {
            subtype: "mixed",
            children: vec![
                leaf("text/plain", "7bit", ""),
                leaf("text/plain", "7bit", "--not-a-boundary\r\n--=_b1 lookalike"),
            ],
        },
        leaf("text/plain; charset=windows-1252", "8bit", "single part"),
    ]
}

#[test]
fn generated_corpus_sections_match_what_was_written() {
    for (n, spec) in corpus().iter().enumerate() {
        let mut generator = Generator {
            next_boundary: 0,
            written: Vec::new(),
        };
        let root_path = if matches!(spec, Spec::Multipart { .. }) {
            Vec::new()
        } else {
            vec![1]
        };
        let (mime_header, body) = generator.write(spec, root_path);
        let raw = format!(
            "From: =?utf-8?b?SsO2cmc=?= <j@x.org>\r\nSubject: corpus {n}\r\nMIME-Version: 1.0\r\n{mime_header}{body}"
        );
        let raw = raw.as_bytes();
        let s = parse(raw);
        for written in &generator.written {
            let got = s
                .section_range(raw.len(), &written.path, SectionText::Whole)
                .map(|r| &raw[r]);
            assert_eq!(
                got,
                Some(written.body.as_bytes()),
                "message {n}, part {:?}",
                written.path
            );
            // Leaves of a single-part message have the message header as their MIME header.
            let body_of_single_part_message =
                written.path == [1] && !matches!(spec, Spec::Multipart { .. });
            if !written.path.is_empty() && !body_of_single_part_message {
                let got = s
                    .section_range(raw.len(), &written.path, SectionText::Mime)
                    .map(|r| &raw[r]);
                assert_eq!(
                    got,
                    Some(written.mime_header.as_bytes()),
                    "message {n}, MIME of {:?}",
                    written.path
                );
            }
        }
        let structure = s.body_structure(true);
        assert_balanced(&structure);
        assert_balanced(&s.body_structure(false));
        assert_balanced(&envelope(&s.envelope));
        assert_eq!(
            s.envelope.from[0].name.as_deref(),
            Some("=?utf-8?b?SsO2cmc=?=")
        );
        assert_eq!(
            search_text(raw).header("from").next(),
            Some("Jörg <j@x.org>")
        );
    }
}

/// Checks that IMAP syntax nests properly: parentheses balance outside quoted strings and
/// literals, and the text ends where the outermost list closes.
fn assert_balanced(bytes: &[u8]) {
    let mut depth = 0i32;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => {
                let close = at
                    + bytes[at..]
                        .iter()
                        .position(|&b| b == b'}')
                        .expect("literal length closes");
                let length: usize = std::str::from_utf8(&bytes[at + 1..close])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(&bytes[close + 1..close + 3], b"\r\n");
                at = close + 2 + length;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                assert!(depth >= 0, "unbalanced: {}", String::from_utf8_lossy(bytes));
                if depth == 0 {
                    assert_eq!(
                        at,
                        bytes.len() - 1,
                        "trailing text: {}",
                        String::from_utf8_lossy(bytes)
                    );
                }
            }
            _ => {}
        }
        at += 1;
    }
    assert_eq!(depth, 0, "unbalanced: {}", String::from_utf8_lossy(bytes));
}

#[test]
fn non_utf8_and_control_bytes_in_headers_become_literals() {
    let raw = b"Subject: caf\xe9 \"quoted\"\r\nFrom: \"Ren\xe9\" <r@x.org>\r\n\r\nbody";
    let s = parse(raw);
    let env = envelope(&s.envelope);
    assert_balanced(&env);
    // Header bytes that are not UTF-8 are read as Latin-1 and sent as UTF-8, in literals.
    let shown = String::from_utf8(env).unwrap();
    assert!(
        shown.starts_with(
            "(NIL {14}\r\ncaf\u{e9} \"quoted\" (({5}\r\nRen\u{e9} NIL \"r\" \"x.org\"))"
        ),
        "{shown}"
    );
    let raw = b"Subject: a \"q\" \\ b\r\n\r\n";
    assert!(text(envelope(&parse(raw).envelope)).contains("\"a \\\"q\\\" \\\\ b\""));
}

#[test]
fn nesting_past_the_limit_stays_whole() {
    let mut raw = String::new();
    let depth = 50;
    for level in 0..depth {
        raw.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n"
        ));
    }
    raw.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    let s = Structure::parse(
        raw.as_bytes(),
        Limits {
            nesting_depth_max: 10,
            parts_max: 10_000,
        },
    );
    assert_eq!(
        s.parts.len(),
        11,
        "ten levels taken apart, the eleventh kept whole"
    );
    assert_balanced(&s.body_structure(true));
    let s = Structure::parse(
        raw.as_bytes(),
        Limits {
            nesting_depth_max: 100,
            parts_max: 20,
        },
    );
    assert!(s.parts.len() <= 20);
    assert_balanced(&s.body_structure(true));
}

#[test]
fn malformed_input_never_panics_and_ranges_stay_in_bounds() {
    let seeds: Vec<Vec<u8>> = vec![MIXED.as_bytes().to_vec(), SIMPLE.as_bytes().to_vec()];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\r\n".to_vec(),
        b"no header at all".to_vec(),
        b"Content-Type: multipart/mixed\r\n\r\nno boundary".to_vec(),
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n".to_vec(),
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--".to_vec(),
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n----\r\n".to_vec(),
        b"Content-Type: message/rfc822\r\n\r\n".to_vec(),
        b"Content-Type: /\r\nContent-Type: text/\r\n\r\nx".to_vec(),
        b"From: <<<>>>@@@,,,;;;:::\"\r\nTo: (((\r\n\r\n".to_vec(),
        b"\n\n\n\r\r\r".to_vec(),
        vec![0xFF; 100],
    ];
    for seed in &seeds {
        for _ in 0..300 {
            let mut mutated = seed.clone();
            match next() % 4 {
                0 => mutated.truncate((next() as usize) % seed.len()),
                1 => {
                    for _ in 0..8 {
                        let at = (next() as usize) % mutated.len();
                        mutated[at] = next() as u8;
                    }
                }
                2 => {
                    let at = (next() as usize) % mutated.len();
                    mutated.splice(at..at, b"\r\n--outer\r\n--inner--\r\n".iter().copied());
                }
                _ => {
                    let at = (next() as usize) % mutated.len();
                    mutated.retain(|&b| b != b'\r' || at.is_multiple_of(2));
                }
            }
            cases.push(mutated);
        }
    }
    for raw in &cases {
        let s = parse(raw);
        for part in &s.parts {
            assert!(part.header.start <= part.header.end && part.header.end <= raw.len());
            assert!(part.body.start <= part.body.end && part.body.end <= raw.len());
        }
        assert_balanced(&s.body_structure(true));
        assert_balanced(&envelope(&s.envelope));
        for path in [&[][..], &[1], &[1, 1], &[2, 1, 1], &[9]] {
            for kind in [
                SectionText::Whole,
                SectionText::Header,
                SectionText::Text,
                SectionText::Mime,
            ] {
                if let Some(range) = s.section_range(raw.len(), path, kind) {
                    assert!(range.end <= raw.len());
                }
            }
        }
        let _ = search_text(raw);
    }
}
