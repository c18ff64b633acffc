//! What a session costs, read from the server's own counters rather than timed, over
//! in-memory sessions on a real store. Before login a stranger gets little: small literals,
//! one deadline per command, and a login that costs an argon2 hash only when the lockout and
//! the hashing queue allow it (counted by `sealpost_auth::HashQueue`). After it, a partial
//! FETCH opens only the body chunks that hold its range (`Store::chunks_opened`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sealpost_imap::{serve_session, Connection, ImapConfig, ImapShared, LoginLimits};
use sealpost_storage::{Actor, MasterKey, NewAccount, Role, Store, StoreConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, ReadHalf, WriteHalf};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn store(dir: &std::path::Path) -> Store {
    let master = MasterKey::create_file(&dir.join("keys/master.key")).unwrap();
    let store = Store::create(StoreConfig::new(dir.join("store"), "example.test"), master).unwrap();
    let account = NewAccount {
        address: "alice@example.test",
        display_name: "Alice",
        role: Role::Staff,
        password: Some("secret-pass"),
    };
    store.create_account(&account, &Actor::cli()).unwrap();
    store
}

fn shared(limits: LoginLimits) -> Arc<ImapShared> {
    let policy = sealpost_auth::SignInSettings {
        second_factor_required: false,
        ..sealpost_auth::SignInSettings::default()
    };
    ImapShared::new(limits, policy, "localhost")
}

struct Client {
    lines: Lines<BufReader<ReadHalf<tokio::io::DuplexStream>>>,
    write: WriteHalf<tokio::io::DuplexStream>,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Client {
    /// A session on `store` from `peer`, its greeting read.
    async fn start(
        store: &Store,
        shared: &Arc<ImapShared>,
        config: ImapConfig,
        peer: &str,
    ) -> Self {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let connection = Connection {
            peer: peer.into(),
            tls: true,
            starttls: None,
            shared: shared.clone(),
        };
        tokio::spawn(serve_session(
            Box::new(server),
            store.clone(),
            Arc::new(config),
            connection,
            stopped,
        ));
        let (read, write) = tokio::io::split(client);
        let mut client = Self {
            lines: BufReader::new(read).lines(),
            write,
            _stop: stop,
        };
        let greeting = client.line().await.unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        client
    }

    async fn send(&mut self, bytes: &str) {
        self.write.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Lines up to and including the one tagged `tag`, as bytes decoded lossily.
    async fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await.expect("the server closed");
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done || lines.len() > 1_000_000 {
                return lines;
            }
        }
    }

    /// The next line, or `None` when the server closed.
    async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(READ_TIMEOUT, self.lines.next_line())
            .await
            .expect("an answer within the read timeout")
            .unwrap()
    }
}

#[tokio::test]
async fn a_login_during_a_failures_pause_is_refused_before_any_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = shared(LoginLimits {
        failure_delay_ms: 3_000,
        failure_delay_max_ms: 3_000,
        ..LoginLimits::default()
    });
    let hashes = shared.logins().lockout().hash_queue();
    let mut guesser = Client::start(&store, &shared, ImapConfig::default(), "192.0.2.7").await;
    guesser.send("a LOGIN alice@example.test wrong\r\n").await;
    // The failure is recorded once its hash is done; the guesser's answer then waits 3 s.
    let deadline = Instant::now() + READ_TIMEOUT;
    while shared
        .logins()
        .lockout()
        .check("192.0.2.7", "alice@example.test")
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the failure was never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(hashes.admitted_total(), 1);
    // A second connection from the same address, with the right password, during the pause.
    let mut second = Client::start(&store, &shared, ImapConfig::default(), "192.0.2.7").await;
    second
        .send("b LOGIN alice@example.test secret-pass\r\n")
        .await;
    let reply = second.line().await.unwrap();
    assert!(
        reply.starts_with(
            "b NO [UNAVAILABLE] a failed login from your address or for this account is still in its pause"
        ),
        "{reply}"
    );
    // From elsewhere, for the same account: refused too.
    let mut third = Client::start(&store, &shared, ImapConfig::default(), "198.51.100.1").await;
    third
        .send("c LOGIN alice@example.test secret-pass\r\n")
        .await;
    let reply = third.line().await.unwrap();
    assert!(reply.starts_with("c NO [UNAVAILABLE]"), "{reply}");
    assert_eq!(
        hashes.admitted_total(),
        1,
        "neither refused login computed a hash"
    );
    let answer = guesser.line().await.unwrap();
    assert_eq!(answer, "a NO [AUTHENTICATIONFAILED] invalid credentials");
}

#[tokio::test]
async fn a_full_hashing_queue_refuses_a_login_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = shared(LoginLimits::default());
    let hashes = shared.logins().lockout().hash_queue();
    hashes.set_queue_max(1);
    // Other sign-ins hold every worker and the one waiting place.
    let held: Vec<_> = (0..sealpost_auth::PASSWORD_HASH_WORKERS + 1)
        .map(|_| hashes.admit().unwrap())
        .collect();
    let mut client = Client::start(&store, &shared, ImapConfig::default(), "192.0.2.8").await;
    let asked = Instant::now();
    client
        .send("a LOGIN alice@example.test secret-pass\r\n")
        .await;
    let reply = client.line().await.unwrap();
    assert_eq!(
        reply,
        "a NO [UNAVAILABLE] too many logins are being checked right now; try again shortly"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "at once, not after a wait"
    );
    assert_eq!(hashes.refused_total(), 1);
    drop(held);
    client
        .send("b LOGIN alice@example.test secret-pass\r\n")
        .await;
    let reply = client.line().await.unwrap();
    assert!(reply.starts_with("b OK"), "a place came free: {reply}");
}

#[tokio::test]
async fn a_big_literal_before_login_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = shared(LoginLimits::default());
    let config = ImapConfig::default();
    assert_eq!(config.prelogin_literal_bytes_max, 8192);
    let mut client = Client::start(&store, &shared, config.clone(), "192.0.2.9").await;
    client.send("a LOGIN {60000000}\r\n").await;
    let reply = client.line().await.unwrap();
    assert_eq!(
        reply, "a NO [TOOBIG] 60000000 bytes is over the limit of 8192 before login",
        "no continuation"
    );
    client.send("b LOGIN {8193}\r\n").await;
    let reply = client.line().await.unwrap();
    assert_eq!(
        reply,
        "b NO [TOOBIG] 8193 bytes is over the limit of 8192 before login"
    );
    // Within the bound, a literal login works, and afterwards the message limit is in force.
    client.send("c LOGIN {18}\r\n").await;
    assert_eq!(client.line().await.unwrap(), "+ Ready for literal data");
    client.send("alice@example.test secret-pass\r\n").await;
    let reply = client.line().await.unwrap();
    assert!(reply.starts_with("c OK"), "{reply}");
    client.send("d APPEND INBOX {60000000}\r\n").await;
    assert_eq!(
        client.line().await.unwrap(),
        "+ Ready for literal data",
        "after login"
    );

    // A non-synchronising literal is on its way already: the connection ends.
    let mut client = Client::start(&store, &shared, config, "192.0.2.9").await;
    client.send("e LOGIN {60000000+}\r\n").await;
    let reply = client.line().await.unwrap();
    assert_eq!(
        reply,
        "* BYE [TOOBIG] a literal of 60000000 bytes is over the limit of 8192 before login"
    );
    assert_eq!(client.line().await, None, "closed");
}

#[tokio::test]
async fn a_stranger_trickling_a_command_is_closed_at_the_prelogin_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = shared(LoginLimits::default());
    let config = ImapConfig {
        prelogin_idle_ms_max: 600,
        ..ImapConfig::default()
    };
    let mut client = Client::start(&store, &shared, config.clone(), "192.0.2.10").await;
    let started = Instant::now();
    // One byte every 100 ms: always active, never a whole command.
    let mut closed = None;
    for byte in "a LOGIN alice@example.test secret-pass".chars().take(30) {
        client.send(&byte.to_string()).await;
        match tokio::time::timeout(Duration::from_millis(100), client.lines.next_line()).await {
            Ok(line) => {
                closed = Some(line.unwrap());
                break;
            }
            Err(_) => continue,
        }
    }
    let bye = closed.expect("closed before the command was whole");
    assert_eq!(
        bye.as_deref(),
        Some("* BYE no complete command within 600 ms before login, closing")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(2_000),
        "{took:?}"
    );

    // After login the session's own idle timeout rules, not the pre-login deadline.
    let mut client = Client::start(&store, &shared, config, "192.0.2.10").await;
    client
        .send("a LOGIN alice@example.test secret-pass\r\n")
        .await;
    assert!(client.line().await.unwrap().starts_with("a OK"));
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.send("b NOOP\r\n").await;
    assert_eq!(client.line().await.unwrap(), "b OK completed");
}

#[tokio::test]
async fn a_partial_fetch_opens_only_the_chunks_of_its_range() {
    use sealpost_storage::{Flags, InternalDate, NewMessage, CHUNK_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let alice = store.find_account("alice@example.test").unwrap().unwrap();
    let inbox = store.mailbox_by_name(alice.id, "INBOX").unwrap().unwrap();
    // Eight chunks and a bit; lines of digits so that a range's bytes can be checked.
    let mut raw = b"Subject: large\r\n\r\n".to_vec();
    let mut n = 0u64;
    while raw.len() < 8 * CHUNK_BYTES + 100 {
        raw.extend_from_slice(format!("{n:08}\r\n").as_bytes());
        n += 1;
    }
    let message = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    store.append(alice.id, inbox.id, &message).unwrap();
    let shared = shared(LoginLimits::default());
    let mut client = Client::start(&store, &shared, ImapConfig::default(), "192.0.2.9").await;
    client
        .send("a LOGIN alice@example.test secret-pass\r\n")
        .await;
    assert!(client
        .until_tagged("a")
        .await
        .last()
        .unwrap()
        .starts_with("a OK"));
    client.send("b SELECT INBOX\r\n").await;
    assert!(client
        .until_tagged("b")
        .await
        .last()
        .unwrap()
        .starts_with("b OK"));

    // A range inside the fifth chunk: one chunk opened, the right bytes sent.
    let offset = 4 * CHUNK_BYTES + 7;
    let before = store.chunks_opened();
    client
        .send(&format!("c FETCH 1 BODY.PEEK[]<{offset}.20>\r\n"))
        .await;
    let lines = client.until_tagged("c").await;
    assert!(lines.last().unwrap().starts_with("c OK"), "{lines:?}");
    assert_eq!(store.chunks_opened() - before, 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("* 1 FETCH (BODY[]<{offset}> {{20}}")),
        "{lines:?}"
    );
    let expected = String::from_utf8_lossy(&raw[offset..offset + 20]).to_string();
    let sent = lines[1..lines.len() - 1].join("\r\n");
    assert!(
        sent.starts_with(expected.trim_end()),
        "{sent:?} / {expected:?}"
    );

    // A range across a chunk boundary opens the two chunks; the whole message opens all.
    let before = store.chunks_opened();
    client
        .send(&format!(
            "d FETCH 1 BODY.PEEK[]<{}.200>\r\n",
            CHUNK_BYTES - 100
        ))
        .await;
    assert!(client
        .until_tagged("d")
        .await
        .last()
        .unwrap()
        .starts_with("d OK"));
    assert_eq!(store.chunks_opened() - before, 2);
    let before = store.chunks_opened();
    client.send("e FETCH 1 BODY.PEEK[]\r\n").await;
    assert!(client
        .until_tagged("e")
        .await
        .last()
        .unwrap()
        .starts_with("e OK"));
    assert_eq!(store.chunks_opened() - before, 9);
    // Past the end: an empty string, nothing opened (RFC 9051 6.4.5).
    let before = store.chunks_opened();
    client
        .send(&format!("f FETCH 1 BODY.PEEK[]<{}.10>\r\n", raw.len() + 5))
        .await;
    let lines = client.until_tagged("f").await;
    assert!(lines.last().unwrap().starts_with("f OK"), "{lines:?}");
    assert!(lines[0].ends_with("{0}"), "{lines:?}");
    assert_eq!(store.chunks_opened() - before, 0);
}
