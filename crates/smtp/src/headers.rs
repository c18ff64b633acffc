//! Header fields the receiver adds: Received (with the TLS version and cipher), and for
//! submissions a Message-ID and Date when the client left them out.

use rand::RngCore;
use sealpost_mime::HeaderWalk;
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// The Received field for a message taken in by this server (RFC 5321 §4.4), folded.
pub(crate) fn received(
    helo: &str,
    peer_ip: &str,
    hostname: &str,
    protocol: &str,
    tls: Option<&str>,
    id: &str,
    single_recipient: Option<&str>,
) -> String {
    let helo = sanitize(helo);
    let mut field = format!(
        "Received: from {helo} ([{peer_ip}])\r\n\tby {hostname} (Sealpost) with {protocol}"
    );
    if let Some(tls) = tls {
        field.push_str(&format!("\r\n\t(TLS {})", sanitize(tls)));
    }
    field.push_str(&format!("\r\n\tid {id}"));
    if let Some(rcpt) = single_recipient {
        field.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    field.push_str(&format!(";\r\n\t{}\r\n", now_rfc2822()));
    field
}

/// The notice telling an outside recipient that a message waits in the pickup portal. It
/// says who the organisation is and where to go, and nothing of the message.
pub(crate) fn pickup_notice(
    config: &crate::OutboundConfig,
    recipient: &str,
    token: &str,
    expires_ms: i64,
) -> Vec<u8> {
    let expires = time::OffsetDateTime::from_unix_timestamp(expires_ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let organisation = match sanitize(&config.organisation) {
        named if named.trim().is_empty() => "Sealpost".to_string(),
        named => named,
    };
    format!(
        "From: {organisation} <{from}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: {id}\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         {organisation} has sent you a secure message.\r\n\r\n\
         To read it, open this link:\r\n{url}{token}\r\n\r\n\
         The link works until {expires}.\r\n\
         This email holds no part of the message; if you did not expect it, you may delete it.\r\n",
        from = config.notice_from,
        subject = sanitize(&config.notice_subject),
        date = now_rfc2822(),
        id = message_id(&config.hostname),
        url = config.portal_url,
    )
    .into_bytes()
}

/// A Message-ID in our domain.
pub(crate) fn message_id(hostname: &str) -> String {
    let mut random = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut random);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("<{hex}@{hostname}>")
}

/// A short random id for Received and the queue reply.
pub(crate) fn session_id() -> String {
    let mut random = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut random);
    random.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn now_rfc2822() -> String {
    let now = OffsetDateTime::now_utc();
    now.format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

/// Longest HELO name or other client text put into a header, in bytes (a DNS name's limit).
pub(crate) const HEADER_TEXT_BYTES_MAX: usize = 255;

/// Keeps what a client sent (HELO name) from breaking the header: printable ASCII, no
/// parentheses or semicolons that would end the field's comments early, at most
/// HEADER_TEXT_BYTES_MAX bytes.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '(' | ')' | ';' | '\\'))
        .take(HEADER_TEXT_BYTES_MAX)
        .collect()
}

/// A Date and a Message-ID for a submission whose header has none (RFC 6409 section 8.3 and
/// 8.2), each ending in CRLF; empty when it has both.
pub(crate) fn missing_origin_fields(raw: &[u8], walk: &HeaderWalk, hostname: &str) -> String {
    let mut fields = String::new();
    if walk.named(raw, "date").next().is_none() {
        fields.push_str(&format!("Date: {}\r\n", now_rfc2822()));
    }
    if walk.named(raw, "message-id").next().is_none() {
        fields.push_str(&format!("Message-ID: {}\r\n", message_id(hostname)));
    }
    fields
}

/// What is done to a message's header on its way to the store, all in one pass (`edited`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Edits<'a> {
    /// Fields written first, each ending in CRLF: Received, a Date and Message-ID the client
    /// left out, Authentication-Results, X-Sealpost-Spam.
    pub(crate) prefix: &'a str,
    /// Drops Authentication-Results fields that claim to come from this host name: a sender
    /// could otherwise forge our verdict (RFC 8601 section 5).
    pub(crate) forged_results_of: Option<&'a str>,
    /// Drops every `X-Sealpost-*` field: warnings and verdicts are ours to add, a sender's
    /// are forgeries.
    pub(crate) own_fields: bool,
    /// Sealpost's impersonation warning: the reason, and a prefix for the subject (may be
    /// empty). The `X-Sealpost-Warning` field goes first.
    pub(crate) warning: Option<(&'a str, &'a str)>,
}

/// The message as kept: `raw` (walked as `walk`) with `edits` made, in one copy. The header
/// ends where `walk` says, as every mail reader ends it, and the body after it is left as it
/// was sent. A submission's line ends are made CRLF before (`with_crlf_line_ends`), so that a
/// bare CR cannot hide a field inside another from these edits.
pub(crate) fn edited(raw: &[u8], walk: &HeaderWalk, edits: &Edits<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + edits.prefix.len() + 256);
    let push = |out: &mut Vec<u8>, bytes: &[u8]| out.extend_from_slice(bytes);
    if let Some((why, _)) = edits.warning {
        let why: String = why.chars().filter(|c| !c.is_control()).collect();
        out.extend_from_slice(format!("X-Sealpost-Warning: impersonation: {why}\r\n").as_bytes());
    }
    out.extend_from_slice(edits.prefix.as_bytes());
    let subject_prefix = edits
        .warning
        .map(|(_, prefix)| prefix.trim())
        .filter(|prefix| !prefix.is_empty());
    let mut subject_seen = false;
    for (at, line) in walk.lines.iter().enumerate() {
        let bytes = &raw[line.whole.clone()];
        // Lines before the first field that start with white space would continue the last
        // field we put first (our verdict, say) for every reader: they go.
        if at == 0 && line.name.is_none() && matches!(bytes.first(), Some(b' ' | b'\t')) {
            continue;
        }
        // A field is judged by its name; a stray line, and each line continuing it, by what
        // another reader could take for a name (spaces inside it dropped, as mail-parser
        // drops them), since such a reader starts a field there.
        let forged = match &line.name {
            Some(name) => forged_field(edits, &raw[name.clone()], || HeaderWalk::value(raw, line)),
            None => bytes.split_inclusive(|b| *b == b'\n').any(|physical| {
                let text = String::from_utf8_lossy(physical);
                let (name, value) = text.split_once(':').unwrap_or((&text, ""));
                let name: String = name.chars().filter(|c| !c.is_whitespace()).collect();
                forged_field(edits, name.as_bytes(), || value.to_string())
            }),
        };
        if forged {
            continue;
        }
        if let Some(prefix) = subject_prefix.filter(|_| !subject_seen) {
            if HeaderWalk::is_named(raw, line, "subject") {
                subject_seen = true;
                let colon = bytes.iter().position(|&b| b == b':').unwrap_or(0);
                let value = &bytes[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if !value.starts_with(prefix.as_bytes()) {
                    push(&mut out, b"Subject: ");
                    push(&mut out, prefix.as_bytes());
                    push(&mut out, b" ");
                    push(&mut out, value);
                    continue;
                }
            }
        }
        push(&mut out, bytes);
    }
    push(&mut out, &raw[walk.end..]);
    out
}

/// Whether a field named `name` (its value read only if needed) is one the edits drop: ours,
/// or a verdict claiming our host name.
fn forged_field(edits: &Edits<'_>, name: &[u8], value: impl FnOnce() -> String) -> bool {
    if edits.own_fields && name.len() >= 11 && name[..11].eq_ignore_ascii_case(b"x-sealpost-") {
        return true;
    }
    edits.forged_results_of.is_some_and(|hostname| {
        name.eq_ignore_ascii_case(b"authentication-results") && claims_host(&value(), hostname)
    })
}

/// Whether an Authentication-Results value names `hostname` as its authserv-id (or the same
/// name with a trailing dot).
fn claims_host(value: &str, hostname: &str) -> bool {
    let authserv = authserv_id(value);
    authserv.eq_ignore_ascii_case(hostname)
        || authserv
            .strip_suffix('.')
            .is_some_and(|a| a.eq_ignore_ascii_case(hostname))
}

/// Appends `bytes` with every bare CR and bare LF made a CRLF (a CR LF pair stays one).
fn push_with_crlf(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut iter = bytes.iter().copied().peekable();
    while let Some(byte) = iter.next() {
        match byte {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                iter.next_if_eq(&b'\n');
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(byte),
        }
    }
}

/// The message with every bare CR and bare LF made a CRLF; the message itself when it has
/// none (no copy then).
pub(crate) fn with_crlf_line_ends(raw: Vec<u8>) -> Vec<u8> {
    let bare = raw.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => raw.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || raw[i - 1] != b'\r',
        _ => false,
    });
    if !bare {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
    push_with_crlf(&mut out, &raw);
    out
}

/// The authserv-id an Authentication-Results value names (RFC 8601 section 2.2): after any
/// whitespace and comments (nested, with quoted pairs), a token or a quoted string. A reader
/// takes `(comment) mx.example; dkim=pass` and `"mx.example"; dkim=pass` as the server's own.
fn authserv_id(value: &str) -> String {
    let mut chars = value.chars().peekable();
    let mut depth = 0usize;
    while let Some(&c) = chars.peek() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            '\\' if depth > 0 => {
                chars.next();
            }
            c if depth > 0 || c.is_whitespace() => {}
            _ => break,
        }
        chars.next();
    }
    if chars.peek() == Some(&'"') {
        chars.next();
        let mut id = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => id.extend(chars.next()),
                c => id.push(c),
            }
        }
        return id;
    }
    chars
        .take_while(|c| !matches!(c, ';' | '(') && !c.is_whitespace())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_names_tls_and_cannot_be_broken_by_the_helo_name() {
        let field = received(
            "evil(x);\r\nInjected: yes",
            "192.0.2.1",
            "mail.example",
            "ESMTPS",
            Some("TLSv1_3 TLS13_AES_256_GCM_SHA384"),
            "abc",
            Some("a@example.com"),
        );
        assert!(field.starts_with("Received: from evilxInjected: yes ([192.0.2.1])\r\n"));
        assert!(field.contains("(TLS TLSv1_3 TLS13_AES_256_GCM_SHA384)"));
        assert!(field.contains("for <a@example.com>;"));
        assert!(field.ends_with("\r\n"));
        assert_eq!(
            field.matches("\r\n").count(),
            field.matches("\r\n\t").count() + 1
        );
    }

    /// `raw` with the inbound edits (forged results of mx.example and own fields dropped).
    fn cleaned(raw: &[u8]) -> Vec<u8> {
        let edits = Edits {
            forged_results_of: Some("mx.example"),
            own_fields: true,
            ..Edits::default()
        };
        edited(raw, &HeaderWalk::of(raw), &edits)
    }

    #[test]
    fn forged_authentication_results_for_our_name_are_removed_and_others_kept() {
        let raw = b"Subject: x\r\nAuthentication-Results: MX.Example;\r\n\tdkim=pass\r\n\
                    Authentication-Results: other.example; spf=fail\r\n\r\n\
                    Authentication-Results: mx.example; in the body\r\n";
        assert_eq!(
            cleaned(raw),
            b"Subject: x\r\nAuthentication-Results: other.example; spf=fail\r\n\r\n\
              Authentication-Results: mx.example; in the body\r\n"
        );
        assert_eq!(
            cleaned(b"Subject: x\r\n\r\nbody"),
            b"Subject: x\r\n\r\nbody"
        );
    }

    /// Comments, a quoted authserv-id and a trailing dot hid a forged verdict from the removal
    /// (RFC 8601 allows each; a reader takes them as this server's).
    #[test]
    fn forged_results_hidden_behind_comments_quotes_or_a_dot_are_removed() {
        for forged in [
            "Authentication-Results: (our (verdict)) mx.example; dkim=pass\r\n",
            "Authentication-Results:\t\"mx.example\"; spf=pass\r\n",
            "Authentication-Results: mx.example. 1; dmarc=pass\r\n",
            "Authentication-Results: (a \\) b)MX.Example;dkim=pass\r\n",
            "Authentication-Results : mx.example; dkim=pass\r\n",
            "authentication-results\t: mx.example; spf=pass\r\n",
        ] {
            let raw = format!("Subject: x\r\n{forged}Authentication-Results: other.example; spf=fail\r\n\r\nbody\r\n");
            assert_eq!(
                cleaned(raw.as_bytes()),
                b"Subject: x\r\nAuthentication-Results: other.example; spf=fail\r\n\r\nbody\r\n",
                "{forged:?}"
            );
        }
        let ours_in_a_comment =
            b"Authentication-Results: other.example (mx.example); spf=pass\r\n\r\n";
        assert_eq!(cleaned(ours_in_a_comment), ours_in_a_comment);
    }

    #[test]
    fn own_fields_from_senders_go_and_the_warning_marks_the_subject_once() {
        let raw = b"From: a@b.test\r\nX-Sealpost-Warning: forged\r\n continued\r\nx-sealpost-spam: low\r\nSubject: hi\r\n\r\nX-Sealpost-Warning: in the body\r\n";
        assert_eq!(
            cleaned(raw),
            b"From: a@b.test\r\nSubject: hi\r\n\r\nX-Sealpost-Warning: in the body\r\n".to_vec()
        );
        let warn = |raw: &[u8], prefix| {
            let edits = Edits {
                prefix: "Received: here\r\n",
                own_fields: true,
                warning: Some(("looks\r\nlike us", prefix)),
                ..Edits::default()
            };
            String::from_utf8(edited(raw, &HeaderWalk::of(raw), &edits)).unwrap()
        };
        let text = warn(raw, "[EXTERNAL]");
        assert_eq!(
            text,
            "X-Sealpost-Warning: impersonation: lookslike us\r\nReceived: here\r\n\
             From: a@b.test\r\nSubject: [EXTERNAL] hi\r\n\r\nX-Sealpost-Warning: in the body\r\n"
        );
        let twice = warn(text.as_bytes(), "[EXTERNAL]");
        assert!(twice.contains("\r\nSubject: [EXTERNAL] hi\r\n"), "{twice}");
        assert!(warn(raw, "").contains("\r\nSubject: hi\r\n"));
    }

    /// Found by fuzzing (fuzz/regressions/smtp_headers/): the edits took the header to end at
    /// the first CRLF CRLF while the removal of forged results and every mail reader end it at
    /// the first blank line, so after a bare-LF blank line the sender's body lost its lines
    /// that start with `X-Sealpost-` (and the indented lines after them), and a `Subject:` in
    /// the body got the warning's prefix.
    #[test]
    fn the_body_after_a_bare_lf_blank_line_is_left_as_sent() {
        let raw = b"From: a@b.test\nSubject: hi\n\nX-Sealpost-Note: my own words\n kept\nSubject: body\r\n\r\nend\r\n";
        assert_eq!(HeaderWalk::of(raw).body, 28);
        assert_eq!(cleaned(raw), raw, "nothing in the header to remove");
        let edits = Edits {
            warning: Some(("x", "[EXTERNAL]")),
            ..Edits::default()
        };
        let warned = edited(raw, &HeaderWalk::of(raw), &edits);
        assert!(
            warned.ends_with(&raw[27..]),
            "{}",
            String::from_utf8_lossy(&warned)
        );
        assert!(String::from_utf8_lossy(&warned).contains("Subject: [EXTERNAL] hi\n"));
        let forged = b"X-Sealpost-Spam: low\nSubject: hi\n\nX-Sealpost-Note: kept\n";
        assert_eq!(
            cleaned(forged),
            b"Subject: hi\n\nX-Sealpost-Note: kept\n".to_vec()
        );
    }

    /// Found by review: another reader (mail-parser, which the webmail uses) takes a name
    /// with a space inside for the field, starts a field at an indented line after a stray
    /// one, and a first line that starts with white space continues our own last field.
    #[test]
    fn verdicts_hidden_from_the_walk_are_dropped_for_every_reader() {
        let inbound = Edits {
            prefix: "Authentication-Results: mx.example; dmarc=fail\r\n",
            forged_results_of: Some("mx.example"),
            own_fields: true,
            ..Edits::default()
        };
        for (raw, kept) in [
            (
                &b"Authentication -Results: mx.example; dmarc=pass\r\nSubject: x\r\n\r\nb"[..],
                &b"Subject: x\r\n\r\nb"[..],
            ),
            (
                b"no colon here\r\n Authentication-Results: mx.example; dkim=pass\r\nSubject: x\r\n\r\nb",
                b"Subject: x\r\n\r\nb",
            ),
            (
                b"stray\r\n\tX-Sealpost-Warning : none\r\nSubject: x\r\n\r\nb",
                b"Subject: x\r\n\r\nb",
            ),
            (
                b"\tdmarc=pass (x)\r\nSubject: x\r\n\r\nb",
                b"Subject: x\r\n\r\nb",
            ),
            (
                b"a stray line, kept\r\nSubject: x\r\n\r\nb",
                b"a stray line, kept\r\nSubject: x\r\n\r\nb",
            ),
        ] {
            let out = edited(raw, &HeaderWalk::of(raw), &inbound);
            let expected = [inbound.prefix.as_bytes(), kept].concat();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    /// Found while making the edits one pass: X-Sealpost-* fields were dropped before a
    /// submission's bare line ends became CRLF, so a bare CR inside a field hid a verdict
    /// field that the CRLF then made a field of its own. Line ends go first now.
    #[test]
    fn a_bare_cr_cannot_hide_a_field_from_the_edits() {
        let raw = b"Subject: a\rX-Sealpost-Spam: score=-100\r\nFrom: x@y\n\nbody\r".to_vec();
        let raw = with_crlf_line_ends(raw);
        let edits = Edits {
            own_fields: true,
            ..Edits::default()
        };
        assert_eq!(
            edited(&raw, &HeaderWalk::of(&raw), &edits),
            b"Subject: a\r\nFrom: x@y\r\n\r\nbody\r\n".to_vec()
        );
    }
}
