//! Transcript tests: each file under `tests/transcripts/` is a conversation, `C:` lines sent
//! by the client and `S:` lines the server must answer, in order, over an in-memory session
//! with a real store. In `S:` lines, `{{any}}` stands for any text (UIDVALIDITY, dates).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sealpost_imap::{serve_session, Connection, ImapConfig, ImapShared, LoginLimits};
use sealpost_storage::{Actor, MasterKey, NewAccount, Role, Store, StoreConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn store(dir: &std::path::Path) -> Store {
    let master = MasterKey::create_file(&dir.join("keys/master.key")).unwrap();
    let store = Store::create(StoreConfig::new(dir.join("store"), "example.test"), master).unwrap();
    for (address, role) in [("alice@example.test", Role::Staff), ("bob@example.test", Role::Staff)] {
        let account = NewAccount {
            address,
            display_name: "Test",
            role,
            password: Some("secret-pass"),
        };
        store.create_account(&account, &Actor::cli()).unwrap();
    }
    let disabled = store
        .create_account(
            &NewAccount {
                address: "gone@example.test",
                display_name: "",
                role: Role::Staff,
                password: Some("secret-pass"),
            },
            &Actor::cli(),
        )
        .unwrap();
    store
        .set_account_status(disabled, sealpost_storage::AccountStatus::Disabled, &Actor::cli())
        .unwrap();
    store
}

/// Whether `line` matches `expected`, where `{{any}}` matches any run of text.
/// Expands `{{x*N}}` to N copies of x, for long lines.
fn expand(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(start) = out.find("{{x*") {
        let Some(len) = out[start..].find("}}") else { break };
        let count: usize = out[start + 4..start + len].parse().unwrap();
        out.replace_range(start..start + len + 2, &"x".repeat(count));
    }
    out.replace("{{CRLF}}", "\r\n")
}

fn line_matches(expected: &str, line: &str) -> bool {
    let parts: Vec<&str> = expected.split("{{any}}").collect();
    if parts.len() == 1 {
        return expected == line;
    }
    let Some(rest) = line.strip_prefix(parts[0]) else {
        return false;
    };
    let mut rest = rest;
    for (i, part) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

async fn run_transcript(name: &str, text: &str, config: ImapConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (client, server) = tokio::io::duplex(1 << 20);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let session = tokio::spawn(serve_session(
        Box::new(server),
        store,
        Arc::new(config),
        Connection {
            peer: "192.0.2.1".into(),
            tls: true,
            starttls: None,
            shared: ImapShared::new(LoginLimits::default()),
        },
        stopped,
    ));
    let (read, mut write) = tokio::io::split(client);
    let mut lines = BufReader::new(read).lines();
    for (number, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", number + 1);
        if let Some(sent) = line.strip_prefix("C: ") {
            write.write_all(expand(sent).as_bytes()).await.unwrap();
            write.write_all(b"\r\n").await.unwrap();
        } else if let Some(raw) = line.strip_prefix("R: ") {
            // Raw bytes without a line break (a literal's data sent in pieces, for example).
            write.write_all(expand(raw).as_bytes()).await.unwrap();
        } else if let Some(expected) = line.strip_prefix("S: ") {
            let got = tokio::time::timeout(READ_TIMEOUT, lines.next_line()).await;
            let got = got.unwrap_or_else(|_| panic!("{at}: no answer within {READ_TIMEOUT:?}, expected {expected:?}"));
            let got = got
                .unwrap()
                .unwrap_or_else(|| panic!("{at}: connection closed, expected {expected:?}"));
            assert!(
                line_matches(expected, &got),
                "{at}:\n  expected {expected:?}\n       got {got:?}"
            );
        } else if line == "CLOSED" {
            let got = tokio::time::timeout(READ_TIMEOUT, lines.next_line())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, None, "{at}: expected the server to close the connection");
        } else {
            assert!(
                line.is_empty() || line.starts_with('#'),
                "{at}: a line must start with C:, S:, R:, CLOSED or #"
            );
        }
    }
    // Both halves must go for the session to see the connection close.
    drop(write);
    drop(lines);
    let ended = tokio::time::timeout(READ_TIMEOUT, session).await;
    assert!(
        ended.is_ok(),
        "{name}: the session did not end when the client went away"
    );
}

async fn check(name: &str) {
    let path = format!("{}/tests/transcripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut config = ImapConfig {
        message_bytes_max: 4096,
        line_bytes_max: 2048,
        ..ImapConfig::default()
    };
    if name.starts_with("limits-rate") {
        config.commands_per_second_max = 3;
    }
    run_transcript(name, &text, config).await;
}

#[tokio::test]
async fn authentication() {
    check("auth.txt").await;
}

#[tokio::test]
async fn mailboxes() {
    check("mailboxes.txt").await;
}

#[tokio::test]
async fn messages() {
    check("messages.txt").await;
}

#[tokio::test]
async fn backup_is_read_only() {
    check("backup.txt").await;
}

#[tokio::test]
async fn malformed_input_and_limits() {
    check("limits.txt").await;
}

#[tokio::test]
async fn command_rate_limit() {
    check("limits-rate.txt").await;
}

#[test]
fn transcript_patterns_match_only_what_they_say() {
    assert!(line_matches("* OK [UIDVALIDITY {{any}}] x", "* OK [UIDVALIDITY 123] x"));
    assert!(!line_matches("* OK [UIDVALIDITY {{any}}] x", "* OK [UIDNEXT 1] y"));
    assert!(line_matches("a", "a"));
    assert!(!line_matches("a", "ab"));
}
