//! Transcript tests: each file under `tests/transcripts/` is a conversation, `C:` lines sent
//! by the client and `S:` lines the server must answer, in order, over an in-memory session
//! with a real store. In `S:` lines, `{{any}}` stands for any text (UIDVALIDITY, dates).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sealpost_imap::{serve_session, Connection, ImapConfig, ImapShared, LoginLimits};
use sealpost_storage::{Actor, MasterKey, NewAccount, Role, Store, StoreConfig};
use sealpost_testkit::{expand, line_matches};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn store(dir: &std::path::Path) -> Store {
    let master = MasterKey::create_file(&dir.join("keys/master.key")).unwrap();
    let store = Store::create(StoreConfig::new(dir.join("store"), "example.test"), master).unwrap();
    for (address, role) in [
        ("alice@example.test", Role::Staff),
        ("bob@example.test", Role::Staff),
    ] {
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
        .set_account_status(
            disabled,
            sealpost_storage::AccountStatus::Disabled,
            &Actor::cli(),
        )
        .unwrap();
    store
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
            shared: ImapShared::new(LoginLimits::default(), passwords_allowed(), "localhost"),
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
            let got = got.unwrap_or_else(|_| {
                panic!("{at}: no answer within {READ_TIMEOUT:?}, expected {expected:?}")
            });
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
            assert_eq!(
                got, None,
                "{at}: expected the server to close the connection"
            );
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
        config.commands_paced_ms_max = 0;
    }
    if name.starts_with("limits-paced") {
        config.commands_per_second_max = 3;
        config.commands_paced_ms_max = 5_000;
    }
    if name.starts_with("limits-idle") {
        config.idle_timeout_ms = 300;
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

#[tokio::test]
async fn command_rate_pacing() {
    check("limits-paced.txt").await;
}

#[tokio::test]
async fn idle_timeout() {
    check("limits-idle.txt").await;
}

#[tokio::test]
async fn overlapping_and_far_reaching_sets_and_long_list_patterns() {
    check("amplification.txt").await;
}

/// Starts a session on `store` with `shared`, logs in as alice, and returns the tagged reply.
/// The session lives while the returned sender and client do.
async fn login_reply(
    store: &Store,
    shared: &Arc<ImapShared>,
    password: &str,
) -> (
    String,
    tokio::sync::watch::Sender<bool>,
    tokio::io::DuplexStream,
) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let connection = Connection {
        peer: "192.0.2.9".into(),
        tls: true,
        starttls: None,
        shared: shared.clone(),
    };
    tokio::spawn(serve_session(
        Box::new(server),
        store.clone(),
        Arc::new(ImapConfig::default()),
        connection,
        stopped,
    ));
    let (read, mut write) = tokio::io::split(client);
    let mut lines = BufReader::new(read).lines();
    lines.next_line().await.unwrap();
    write
        .write_all(format!("a LOGIN alice@example.test {password}\r\n").as_bytes())
        .await
        .unwrap();
    let reply = tokio::time::timeout(READ_TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let client = lines.into_inner().into_inner().unsplit(write);
    (reply, stop, client)
}

#[tokio::test]
async fn sessions_per_account_and_login_lockout_are_enforced_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = ImapShared::new(
        LoginLimits {
            sessions_per_account_max: 1,
            failure_delay_ms: 1,
            ..LoginLimits::default()
        },
        locked_after_two(),
        "localhost",
    );
    let (first, _s1, c1) = login_reply(&store, &shared, "secret-pass").await;
    assert!(first.starts_with("a OK"), "{first}");
    let (second, _s2, _c2) = login_reply(&store, &shared, "secret-pass").await;
    assert_eq!(
        second,
        "a NO [LIMIT] too many sessions open for this account"
    );
    drop(c1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (third, _s3, _c3) = login_reply(&store, &shared, "secret-pass").await;
    assert!(
        third.starts_with("a OK"),
        "the slot came free when the first session ended: {third}"
    );

    let lockout = ImapShared::new(
        LoginLimits {
            failure_delay_ms: 1,
            ..LoginLimits::default()
        },
        locked_after_two(),
        "localhost",
    );
    for _ in 0..2 {
        let (reply, _, _) = login_reply(&store, &lockout, "wrong").await;
        assert_eq!(reply, "a NO [AUTHENTICATIONFAILED] invalid credentials");
    }
    let (locked, _, _) = login_reply(&store, &lockout, "secret-pass").await;
    assert_eq!(
        locked, "a NO [UNAVAILABLE] too many failed logins for this account; try later",
        "even the right password"
    );
}

#[test]
fn transcript_patterns_match_only_what_they_say() {
    assert!(line_matches(
        "* OK [UIDVALIDITY {{any}}] x",
        "* OK [UIDVALIDITY 123] x"
    ));
    assert!(!line_matches(
        "* OK [UIDVALIDITY {{any}}] x",
        "* OK [UIDNEXT 1] y"
    ));
    assert!(line_matches("a", "a"));
    assert!(!line_matches("a", "ab"));
}

#[tokio::test]
async fn compress_deflate_carries_the_rest_of_the_session() {
    use async_compression::tokio::{bufread::DeflateDecoder, write::DeflateEncoder};
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = ImapShared::new(LoginLimits::default(), passwords_allowed(), "localhost");
    let (login, _stop, client) = login_reply(&store, &shared, "secret-pass").await;
    assert!(login.contains("COMPRESS=DEFLATE"), "{login}");
    let (read, mut write) = tokio::io::split(client);
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    // The compressed commands follow at once, in the same write: the server must keep them.
    let mut early = DeflateEncoder::new(Vec::new());
    early.write_all(b"c NOOP\r\n").await.unwrap();
    early.flush().await.unwrap();
    let mut request = b"b COMPRESS DEFLATE\r\n".to_vec();
    request.extend_from_slice(early.get_ref());
    write.write_all(&request).await.unwrap();
    line.clear();
    reader.read_line(&mut line).await.unwrap();
    assert_eq!(line, "b OK DEFLATE active\r\n");
    let mut lines = BufReader::new(DeflateDecoder::new(reader)).lines();
    assert_eq!(
        tokio::time::timeout(READ_TIMEOUT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        "c OK completed"
    );
    let mut writer = early;
    writer.get_mut().clear();
    for command in [
        "d SELECT INBOX\r\n",
        "e COMPRESS DEFLATE\r\n",
        "f LOGOUT\r\n",
    ] {
        writer.write_all(command.as_bytes()).await.unwrap();
        writer.flush().await.unwrap();
        write.write_all(writer.get_ref()).await.unwrap();
        writer.get_mut().clear();
    }
    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(READ_TIMEOUT, lines.next_line()).await {
        seen.push(line);
        if seen.last().is_some_and(|l| l.starts_with("f OK")) {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.starts_with("d OK [READ-WRITE]")),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"e NO [COMPRESSIONACTIVE] compression is already on".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"f OK LOGOUT completed".to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn fetch_of_more_bodies_than_one_batch_answers_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = ImapShared::new(LoginLimits::default(), passwords_allowed(), "localhost");
    let (reply, _stop, client) = login_reply(&store, &shared, "secret-pass").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    let (read, mut write) = tokio::io::split(client);
    let mut lines = BufReader::new(read).lines();
    let count = 40;
    for n in 1..=count {
        let message = format!("Subject: {n}\r\n\r\nbody number {n}\r\n");
        write
            .write_all(
                format!("p{n} APPEND INBOX {{{}+}}\r\n{message}\r\n", message.len()).as_bytes(),
            )
            .await
            .unwrap();
    }
    write
        .write_all(b"s SELECT INBOX\r\nf FETCH 1:* (UID BODY.PEEK[TEXT])\r\n")
        .await
        .unwrap();
    let mut bodies = Vec::new();
    loop {
        let line = tokio::time::timeout(READ_TIMEOUT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(rest) = line.strip_prefix("body number ") {
            bodies.push(rest.parse::<u32>().unwrap());
        }
        if line.starts_with("f ") {
            assert_eq!(line, "f OK FETCH completed");
            break;
        }
    }
    assert_eq!(
        bodies,
        (1..=count).collect::<Vec<u32>>(),
        "every body once, in order, across batches"
    );
}

/// The account password opens a session here: these tests are about the protocol, not about
/// app passwords (tested in `crates/auth` and `tests/auth.rs`).
/// Passwords open mail, and two failures lock an account out.
fn locked_after_two() -> sealpost_auth::SignInSettings {
    sealpost_auth::SignInSettings {
        failures_per_account_max: 2,
        ..passwords_allowed()
    }
}

fn passwords_allowed() -> sealpost_auth::SignInSettings {
    sealpost_auth::SignInSettings {
        second_factor_required: false,
        ..sealpost_auth::SignInSettings::default()
    }
}
