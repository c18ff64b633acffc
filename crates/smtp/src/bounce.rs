//! Delivery status notifications (RFC 3464) for recipients that failed for good, delivered to
//! the sending account's INBOX (and BACKUP, like every delivery).

use sealpost_storage::{OutboundRecipient, QueuedMessage};

use crate::headers;

/// One failed recipient: who, the reply or reason, and the server that gave it.
pub(crate) struct Failure<'a> {
    pub(crate) recipient: &'a OutboundRecipient,
    pub(crate) reply: &'a str,
}

/// Whether the sender asked not to hear of failures (NOTIFY without FAILURE, or NEVER).
pub(crate) fn wanted(recipient: &OutboundRecipient) -> bool {
    recipient.notify.is_empty() || recipient.notify.iter().any(|n| n == "FAILURE")
}

/// The enhanced status code of a reply ("550 5.1.1 no such user" → "5.1.1"), else 5.0.0.
fn status_of(reply: &str) -> String {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|code| {
            let parts: Vec<&str> = code.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or_else(|| "5.0.0".to_string(), str::to_string)
}

/// Longest diagnostic kept from a remote server's reply, in characters.
const DIAGNOSTIC_CHARS_MAX: usize = 500;

/// Keeps what a remote server said from breaking the report's lines.
fn one_line(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(DIAGNOSTIC_CHARS_MAX)
        .collect()
}

/// The report, as a message to `entry`'s sender. `original` is the queued message; with
/// RET=FULL it is returned whole, otherwise only its header.
pub(crate) fn report(
    hostname: &str,
    entry: &QueuedMessage,
    original: &[u8],
    failures: &[Failure<'_>],
) -> Vec<u8> {
    let boundary = format!("dsn-{}", headers::session_id());
    let date = headers::now_rfc2822();
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    out.push_str(&format!("To: <{}>\r\n", entry.envelope.from));
    out.push_str("Subject: Undelivered mail returned to sender\r\n");
    out.push_str(&format!("Date: {date}\r\n"));
    out.push_str(&format!(
        "Message-ID: {}\r\n",
        headers::message_id(hostname)
    ));
    out.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    out.push_str("Your message could not be delivered to these recipients:\r\n\r\n");
    for failure in failures {
        out.push_str(&format!(
            "  {}: {}\r\n",
            failure.recipient.address,
            one_line(failure.reply)
        ));
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {hostname}\r\n"
    ));
    if let Some(env_id) = &entry.envelope.env_id {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(env_id)));
    }
    out.push_str("\r\n");
    for failure in failures {
        out.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            failure.recipient.address
        ));
        if let Some(orcpt) = &failure.recipient.orcpt {
            out.push_str(&format!("Original-Recipient: {}\r\n", one_line(orcpt)));
        }
        out.push_str("Action: failed\r\n");
        out.push_str(&format!("Status: {}\r\n", status_of(failure.reply)));
        out.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n\r\n",
            one_line(failure.reply)
        ));
    }
    let full = entry.envelope.ret.as_deref() == Some("FULL");
    let returned = if full {
        original
    } else {
        &original[..sealpost_mime::HeaderWalk::of(original).body]
    };
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: {}\r\n\r\n",
        if full {
            "message/rfc822"
        } else {
            "text/rfc822-headers"
        }
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(returned);
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_storage::{AccountId, Outbound, QueueId};

    #[test]
    fn a_report_names_each_failure_with_its_status_and_returns_the_header() {
        let recipient = OutboundRecipient {
            address: "eve@reject.test".into(),
            notify: vec!["FAILURE".into()],
            orcpt: Some("rfc822;eve@reject.test".into()),
            portal: None,
        };
        let entry = QueuedMessage {
            id: QueueId([7; 16]),
            account: AccountId(1),
            envelope: Outbound {
                from: "doc@clinic.test".into(),
                recipients: vec![recipient.clone()],
                env_id: Some("env-1".into()),
                ret: None,
                notice: false,
            },
            size: 0,
            created_ms: 0,
            attempts: 1,
            next_attempt_ms: 0,
            states: vec![],
        };
        let original = b"Subject: results\r\n\r\nThe patient record.\r\n";
        let failures = [Failure {
            recipient: &recipient,
            reply: "550 5.1.1 no such user\r\nInjected: x",
        }];
        let text =
            String::from_utf8(report("mx.clinic.test", &entry, original, &failures)).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; eve@reject.test\r\n"));
        assert!(text.contains("Original-Recipient: rfc822;eve@reject.test\r\n"));
        assert!(text.contains("Original-Envelope-Id: env-1\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such userInjected: x\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: results\r\n"));
        assert!(
            !text.contains("The patient record."),
            "RET=HDRS (the default) returns no body"
        );
        assert!(!wanted(&OutboundRecipient {
            notify: vec!["NEVER".into()],
            ..recipient.clone()
        }));
        assert!(wanted(&recipient));
        assert_eq!(status_of("451 try later"), "5.0.0");
    }
}
