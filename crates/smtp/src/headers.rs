//! Header fields the receiver adds: Received (with the TLS version and cipher), and for
//! submissions a Message-ID and Date when the client left them out.

use rand::RngCore;
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
    let organisation = sanitize(&config.organisation);
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

/// The end of the header section: the index just past the blank line, or the message's
/// length when there is no body.
pub(crate) fn header_len(raw: &[u8]) -> usize {
    let mut at = 0;
    while at < raw.len() {
        let line_end = raw[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| at + p + 1);
        let line = &raw[at..line_end];
        if line == b"\r\n" || line == b"\n" {
            return line_end;
        }
        at = line_end;
    }
    raw.len()
}

/// The message without Authentication-Results fields that claim to come from `hostname`: a
/// sender could otherwise forge our verdict (RFC 8601 section 5). `None` when there is none.
pub(crate) fn without_forged_results(raw: &[u8], hostname: &str) -> Option<Vec<u8>> {
    const NAME: &[u8] = b"authentication-results";
    let header_end = header_len(raw);
    let mut fields: Vec<(usize, usize, bool)> = Vec::new();
    let mut at = 0;
    while at < header_end {
        let mut end = raw[at..header_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header_end, |p| at + p + 1);
        // Continuation lines belong to the field.
        while end < header_end && matches!(raw[end], b' ' | b'\t') {
            end = raw[end..header_end]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(header_end, |p| end + p + 1);
        }
        let field = &raw[at..end];
        // The name, then the colon, with the obsolete syntax's whitespace between them allowed
        // (RFC 5322 section 4.5.3: `Authentication-Results :` is the same field to a reader).
        let value_at = field
            .iter()
            .position(|&b| b == b':')
            .filter(|&colon| field[..colon].trim_ascii_end().eq_ignore_ascii_case(NAME))
            .map(|colon| colon + 1);
        let forged = value_at.is_some_and(|value_at| {
            let value = String::from_utf8_lossy(&field[value_at..]);
            let authserv = authserv_id(&value);
            authserv.eq_ignore_ascii_case(hostname)
                || authserv
                    .strip_suffix('.')
                    .is_some_and(|a| a.eq_ignore_ascii_case(hostname))
        });
        fields.push((at, end, forged));
        at = end;
    }
    if !fields.iter().any(|f| f.2) {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    for (start, end, forged) in fields {
        if !forged {
            out.extend_from_slice(&raw[start..end]);
        }
    }
    out.extend_from_slice(&raw[header_end..]);
    Some(out)
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

/// Whether the header section has a field of this name (case-insensitive).
pub(crate) fn has_field(raw: &[u8], name: &str) -> bool {
    let header = &raw[..header_len(raw)];
    header.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    })
}

/// The message without header fields named `X-Sealpost-*` (warnings and verdicts are ours to
/// add; a sender's are forgeries), or `None` when it has none. The header ends where
/// `header_len` (and every other reader of it) says, so a body after a bare-LF blank line is
/// left as it was sent.
pub(crate) fn without_own_headers(raw: &[u8]) -> Option<Vec<u8>> {
    let end = header_len(raw);
    let head = &raw[..end];
    let mut out = Vec::with_capacity(raw.len());
    let mut dropping = false;
    let mut dropped = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = line.len() >= 11 && line[..11].eq_ignore_ascii_case(b"x-sealpost-");
        }
        if dropping {
            dropped = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&raw[end..]);
    dropped.then_some(out)
}

/// The message with Sealpost's impersonation warning: an `X-Sealpost-Warning` field first,
/// and `prefix` (if any) in front of the subject.
pub(crate) fn with_warning(raw: &[u8], why: &str, prefix: &str) -> Vec<u8> {
    let why: String = why.chars().filter(|c| !c.is_control()).collect();
    let mut out = format!("X-Sealpost-Warning: impersonation: {why}\r\n").into_bytes();
    let end = header_len(raw);
    let mut done = prefix.trim().is_empty();
    for line in raw[..end].split_inclusive(|b| *b == b'\n') {
        if !done && line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"subject:") {
            let rest = &line[8..];
            let value = rest.strip_prefix(b" ").unwrap_or(rest);
            if !value.starts_with(prefix.trim().as_bytes()) {
                out.extend_from_slice(b"Subject: ");
                out.extend_from_slice(prefix.trim().as_bytes());
                out.push(b' ');
                out.extend_from_slice(value);
                done = true;
                continue;
            }
            done = true;
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(&raw[end..]);
    out
}

/// The first value of header field `name` (case-insensitive), unfolded; lines end in CRLF or
/// a bare LF.
pub(crate) fn field(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(&raw[..header_len(raw)]);
    let mut value: Option<String> = None;
    for line in text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
    {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line.trim_end()),
            Some(_) => break,
            None => {
                if let Some((field, rest)) = line.split_once(':') {
                    if field.trim().eq_ignore_ascii_case(name) {
                        value = Some(rest.trim().to_string());
                    }
                }
            }
        }
    }
    value
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

    #[test]
    fn forged_authentication_results_for_our_name_are_removed_and_others_kept() {
        let raw = b"Subject: x\r\nAuthentication-Results: MX.Example;\r\n\tdkim=pass\r\n\
                    Authentication-Results: other.example; spf=fail\r\n\r\n\
                    Authentication-Results: mx.example; in the body\r\n";
        let cleaned = without_forged_results(raw, "mx.example").unwrap();
        assert_eq!(
            cleaned,
            b"Subject: x\r\nAuthentication-Results: other.example; spf=fail\r\n\r\n\
              Authentication-Results: mx.example; in the body\r\n"
        );
        assert_eq!(
            without_forged_results(b"Subject: x\r\n\r\nbody", "mx.example"),
            None
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
                without_forged_results(raw.as_bytes(), "mx.example").as_deref(),
                Some(&b"Subject: x\r\nAuthentication-Results: other.example; spf=fail\r\n\r\nbody\r\n"[..]),
                "{forged:?}"
            );
        }
        let ours_in_a_comment =
            b"Authentication-Results: other.example (mx.example); spf=pass\r\n\r\n";
        assert_eq!(
            without_forged_results(ours_in_a_comment, "mx.example"),
            None
        );
    }

    #[test]
    fn header_fields_are_found_only_in_the_header() {
        let raw = b"Subject: x\r\nmessage-id: <1@x>\r\n\r\nDate: in the body\r\n";
        assert!(has_field(raw, "Message-ID"));
        assert!(!has_field(raw, "Date"));
        assert_eq!(header_len(raw), 33);
        assert_eq!(header_len(b"Subject: no body"), 16);
    }

    #[test]
    fn own_fields_from_senders_go_and_the_warning_marks_the_subject_once() {
        let raw = b"From: a@b.test\r\nX-Sealpost-Warning: forged\r\n continued\r\nx-sealpost-spam: low\r\nSubject: hi\r\n\r\nX-Sealpost-Warning: in the body\r\n";
        let cleaned = without_own_headers(raw).unwrap();
        assert_eq!(
            cleaned,
            b"From: a@b.test\r\nSubject: hi\r\n\r\nX-Sealpost-Warning: in the body\r\n".to_vec()
        );
        assert!(without_own_headers(&cleaned).is_none());
        let warned = with_warning(&cleaned, "looks like us", "[EXTERNAL]");
        let text = String::from_utf8(warned.clone()).unwrap();
        assert!(
            text.starts_with("X-Sealpost-Warning: impersonation: looks like us\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSubject: [EXTERNAL] hi\r\n"), "{text}");
        let again = String::from_utf8(with_warning(&cleaned, "x", "")).unwrap();
        assert!(again.contains("\r\nSubject: hi\r\n"));
        assert_eq!(
            field(&warned, "x-sealpost-warning").unwrap(),
            "impersonation: looks like us"
        );
    }

    /// Found by fuzzing (fuzz/regressions/smtp_headers/): the edits took the header to end at
    /// the first CRLF CRLF while the removal of forged results and every mail reader end it at
    /// the first blank line, so after a bare-LF blank line the sender's body lost its lines
    /// that start with `X-Sealpost-` (and the indented lines after them), and a `Subject:` in
    /// the body got the warning's prefix.
    #[test]
    fn the_body_after_a_bare_lf_blank_line_is_left_as_sent() {
        let raw = b"From: a@b.test\nSubject: hi\n\nX-Sealpost-Note: my own words\n kept\nSubject: body\r\n\r\nend\r\n";
        assert_eq!(header_len(raw), 28);
        assert_eq!(
            without_own_headers(raw),
            None,
            "nothing in the header to remove"
        );
        let warned = with_warning(raw, "x", "[EXTERNAL]");
        assert!(
            warned.ends_with(&raw[27..]),
            "{}",
            String::from_utf8_lossy(&warned)
        );
        assert!(String::from_utf8_lossy(&warned).contains("Subject: [EXTERNAL] hi\n"));
        assert_eq!(field(raw, "subject").as_deref(), Some("hi"));
        assert_eq!(field(raw, "x-sealpost-note"), None);
        let forged = b"X-Sealpost-Spam: low\nSubject: hi\n\nX-Sealpost-Note: kept\n";
        assert_eq!(
            without_own_headers(forged).unwrap(),
            b"Subject: hi\n\nX-Sealpost-Note: kept\n".to_vec()
        );
    }
}
