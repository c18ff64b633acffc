//! Transcript tests: each file under `tests/transcripts/` is an SMTP conversation over an
//! in-memory session with a real store. `C:` lines are sent with CRLF, `R:` lines sent as
//! they are (`{{CRLF}}` for a line break; `{{CR}}` and `{{LF}}` for a bare CR or LF in `C:`
//! and `R:` lines), `S:` lines must be the next reply line (`{{any}}` matches any text),
//! `CLOSED` expects the server to hang up, `DISCONNECT` hangs up as the client, and `COUNT
//! address mailbox n` / `QUEUED n` / `QUEUED_CRLF n` (n queued, every line ending in CRLF)
//! check the store at that point. A first line `#! key=value ...` sets the listener and
//! limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sealpost_auth::{LoginLimits, MailLogins};
use sealpost_smtp::{
    serve_session, submit_from_web, Aliases, ListenerRole, SmtpConfig, SmtpConnection, SmtpShared,
    WebMessage,
};
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
        ("admin@example.test", Role::Admin),
        ("gone@example.test", Role::Staff),
    ] {
        let account = NewAccount {
            address,
            display_name: "Test",
            role,
            password: Some("secret-pass"),
        };
        let id = store.create_account(&account, &Actor::cli()).unwrap();
        if address.starts_with("gone") {
            store
                .set_account_status(id, sealpost_storage::AccountStatus::Disabled, &Actor::cli())
                .unwrap();
        }
    }
    store
}

/// What the sessions of one test server share: bob is barred from sending outside, and a
/// content rule blocks "oncology" to outside recipients.
fn shared(
    login_limits: LoginLimits,
    settings: sealpost_auth::SignInSettings,
    aliases: Aliases,
) -> Arc<SmtpShared> {
    let mut policy = sealpost_policy::PolicyConfig::default();
    policy.barred_accounts.insert("bob@example.test".into());
    policy.content.push(sealpost_policy::ContentRule {
        name: "no-oncology".into(),
        enabled: true,
        proof_required: false,
        detector: sealpost_policy::Detector::Keywords {
            words: vec!["oncology".into()],
        },
        action: sealpost_policy::Action::Block,
    });
    let policy = sealpost_policy::LivePolicy::new(sealpost_policy::Policy::new(policy).unwrap());
    SmtpShared::new(
        MailLogins::new(login_limits, settings, "localhost", MailLogins::no_notice()),
        aliases,
        None,
        None,
        policy,
    )
}

/// A transcript line as bytes: `{{CRLF}}`, `{{CR}}` (a bare CR) and `{{LF}}` (a bare LF).
fn expand_line(text: &str) -> String {
    expand(text).replace("{{CR}}", "\r").replace("{{LF}}", "\n")
}

/// The queued messages' bytes, each as stored.
fn queued_messages(store: &Store) -> Vec<Vec<u8>> {
    store
        .queued()
        .unwrap()
        .iter()
        .map(|entry| store.read_queued(entry.account, entry.id).unwrap())
        .collect()
}

/// Whether every line of `raw` ends in CRLF: no CR without LF, no LF without CR.
fn only_crlf(raw: &[u8]) -> bool {
    raw.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => raw.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && raw[i - 1] == b'\r',
        _ => true,
    })
}

fn count(store: &Store, address: &str, mailbox: &str) -> usize {
    let account = store.find_account(address).unwrap().unwrap();
    let mailbox = store.mailbox_by_name(account.id, mailbox).unwrap().unwrap();
    store.messages(account.id, mailbox.id).unwrap().len()
}

async fn run(name: &str) {
    let path = format!("{}/tests/transcripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut config = SmtpConfig {
        hostname: "mx.example.test".into(),
        message_bytes_max: 4096,
        ..SmtpConfig::default()
    };
    let (mut role, mut tls) = (ListenerRole::Inbound, None);
    let (mut login_limits, mut settings) = (LoginLimits::default(), passwords_allowed());
    let mut aliases = Aliases::default();
    aliases.map.insert(
        "team@example.test".into(),
        vec!["alice@example.test".into(), "bob@example.test".into()],
    );
    if let Some(options) = text.lines().next().and_then(|l| l.strip_prefix("#! ")) {
        for option in options.split_whitespace() {
            let (key, value) = option.split_once('=').unwrap();
            match key {
                "role" => {
                    role = if value == "submission" {
                        ListenerRole::Submission
                    } else {
                        ListenerRole::Inbound
                    }
                }
                "tls" => {
                    tls = (value == "yes").then(|| "TLSv1_3 TLS13_AES_128_GCM_SHA256".to_string())
                }
                "message_bytes_max" => config.message_bytes_max = value.parse().unwrap(),
                "recipients_max" => config.recipients_per_message_max = value.parse().unwrap(),
                "errors_max" => config.errors_per_session_max = value.parse().unwrap(),
                "line_max" => config.line_bytes_max = value.parse().unwrap(),
                "hourly" => config.messages_per_hour_per_account_max = value.parse().unwrap(),
                "timeout_ms" => config.command_timeout_ms = value.parse().unwrap(),
                "lockout" => {
                    settings.failures_per_account_max = value.parse().unwrap();
                    login_limits.failure_delay_ms = 1;
                    login_limits.failure_delay_max_ms = 1;
                }
                other => panic!("{name}: unknown option {other}"),
            }
        }
    }
    let (client, server) = tokio::io::duplex(1 << 20);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let shared = shared(login_limits, settings, aliases);
    let counts = shared.clone();
    let mut session = Some(tokio::spawn(serve_session(
        Box::new(server),
        store.clone(),
        Arc::new(config),
        SmtpConnection {
            peer_ip: "192.0.2.1".into(),
            tls,
            starttls: None,
            role,
            shared,
        },
        stopped,
    )));
    let (read, write) = tokio::io::split(client);
    let mut write = Some(write);
    let mut lines = Some(BufReader::new(read).lines());
    for (number, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", number + 1);
        if let Some(sent) = line.strip_prefix("C: ").or((line == "C:").then_some("")) {
            let w = write.as_mut().unwrap();
            w.write_all(expand_line(sent).as_bytes()).await.unwrap();
            w.write_all(b"\r\n").await.unwrap();
        } else if let Some(raw) = line.strip_prefix("R: ") {
            write
                .as_mut()
                .unwrap()
                .write_all(expand_line(raw).as_bytes())
                .await
                .unwrap();
        } else if let Some(expected) = line.strip_prefix("S: ") {
            let reader = lines.as_mut().unwrap();
            let got = tokio::time::timeout(READ_TIMEOUT, reader.next_line()).await;
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
            let reader = lines.as_mut().unwrap();
            let got = tokio::time::timeout(READ_TIMEOUT, reader.next_line())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                got, None,
                "{at}: expected the server to close the connection"
            );
        } else if line == "DISCONNECT" {
            write = None;
            lines = None;
            let ended = tokio::time::timeout(READ_TIMEOUT, session.take().unwrap()).await;
            assert!(
                ended.is_ok(),
                "{at}: the session did not end when the client went away"
            );
        } else if let Some(args) = line.strip_prefix("COUNT ") {
            let args: Vec<&str> = args.split_whitespace().collect();
            let n: usize = args[2].parse().unwrap();
            assert_eq!(
                count(&store, args[0], args[1]),
                n,
                "{at}: {} in {} of {}",
                n,
                args[1],
                args[0]
            );
        } else if let Some(rest) = line.strip_prefix("QUEUED_PORTAL ") {
            // QUEUED_PORTAL n reason: n queued recipients marked for the portal for that reason.
            let (n, reason) = rest.split_once(' ').unwrap();
            let marked = store
                .queued()
                .unwrap()
                .iter()
                .flat_map(|e| e.envelope.recipients.clone())
                .filter(|r| r.portal.as_deref() == Some(reason))
                .count();
            assert_eq!(
                marked,
                n.parse::<usize>().unwrap(),
                "{at}: recipients marked for the portal"
            );
        } else if let Some(n) = line.strip_prefix("QUEUED_CRLF ") {
            // QUEUED_CRLF n: n messages queued, every line of each ending in CRLF.
            let messages = queued_messages(&store);
            assert_eq!(messages.len(), n.parse::<usize>().unwrap(), "{at}: queued");
            for raw in messages {
                assert!(
                    only_crlf(&raw),
                    "{at}: a bare CR or LF was queued: {:?}",
                    String::from_utf8_lossy(&raw)
                );
            }
        } else if let Some(rest) = line.strip_prefix("PIPELINE ") {
            // PIPELINE m c p: m messages through the header edits so far, with c copies of
            // them and p whole-message parses in all.
            let expected: Vec<u64> = rest.split(' ').map(|n| n.parse().unwrap()).collect();
            let (m, c, p) = counts.pipeline_counts();
            assert_eq!(vec![m, c, p], expected, "{at}: messages, copies, parses");
        } else if let Some(n) = line.strip_prefix("QUEUED ") {
            assert_eq!(
                store.queued().unwrap().len(),
                n.parse::<usize>().unwrap(),
                "{at}: queued"
            );
        } else {
            assert!(
                line.is_empty() || line.starts_with('#'),
                "{at}: a line must start with C:, S:, R:, CLOSED, DISCONNECT, COUNT, QUEUED, PIPELINE or #"
            );
        }
    }
    drop(write);
    drop(lines);
    if let Some(session) = session {
        let ended = tokio::time::timeout(READ_TIMEOUT, session).await;
        assert!(
            ended.is_ok(),
            "{name}: the session did not end when the client went away"
        );
    }
}

#[tokio::test]
async fn inbound_delivers_to_local_accounts_only() {
    run("inbound.txt").await;
}

#[tokio::test]
async fn commands_out_of_order_and_malformed_input() {
    run("errors.txt").await;
}

#[tokio::test]
async fn size_recipient_and_line_limits() {
    run("limits.txt").await;
}

#[tokio::test]
async fn submission_authenticates_and_checks_the_sender() {
    run("submission.txt").await;
}

#[tokio::test]
async fn submission_refuses_auth_without_tls() {
    run("submission-cleartext.txt").await;
}

#[tokio::test]
async fn bdat_chunks() {
    run("bdat.txt").await;
}

#[tokio::test]
async fn a_client_that_stops_mid_data_delivers_nothing() {
    run("mid-data.txt").await;
}

#[tokio::test]
async fn auth_failures_lock_the_account_out_and_close_the_connection() {
    run("auth-lockout.txt").await;
}

#[tokio::test]
async fn policy_bars_accounts_and_blocks_content_for_outside_recipients() {
    run("policy.txt").await;
    run("policy-content.txt").await;
}

#[tokio::test]
async fn auth_login_and_hourly_limit() {
    run("auth-login.txt").await;
}

#[tokio::test]
async fn dsn_parameters_are_printable_ascii_or_refused() {
    run("dsn-parameters.txt").await;
}

#[tokio::test]
async fn submissions_with_a_repeated_once_only_field_are_refused() {
    run("repeated-fields.txt").await;
    run("inbound-repeated-fields.txt").await;
}

#[tokio::test]
async fn submitted_bare_cr_and_lf_are_stored_as_crlf() {
    run("bare-line-ends.txt").await;
}

/// The web's send button takes the same path: the same field counts, the same line ends, and
/// recipients that could break a command line refused.
#[tokio::test]
async fn web_submissions_get_crlf_line_ends_one_of_each_field_and_clean_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = shared(
        LoginLimits::default(),
        passwords_allowed(),
        Aliases::default(),
    );
    let config = SmtpConfig {
        hostname: "mx.example.test".into(),
        ..SmtpConfig::default()
    };
    let alice = store.find_account("alice@example.test").unwrap().unwrap();
    let message = |raw: &[u8], to: &str| WebMessage {
        raw: raw.to_vec(),
        recipients: vec![to.to_string()],
        peer: "192.0.2.9".into(),
        portal: None,
    };
    let twice = b"From: alice@example.test\r\nTo: carol@elsewhere.example\r\nTo: spy@elsewhere.example\r\n\r\nbody\r\n";
    let refused = submit_from_web(
        &store,
        &shared,
        &config,
        &alice,
        message(twice, "carol@elsewhere.example"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, sealpost_smtp::WebSendError::Refused(text)
            if text == "Message has 2 To fields; RFC 5322 allows one."),
        "{refused:?}"
    );
    for injected in [
        "spy@elsewhere.example>\r\nRCPT TO:<carol@elsewhere.example",
        "carol@elsewhere.example\rRCPT TO:<spy@elsewhere.example>",
        "carol@elsewhere.example\u{7f}",
        "two words@elsewhere.example",
    ] {
        let body = b"From: alice@example.test\r\n\r\nbody\r\n";
        let refused = submit_from_web(&store, &shared, &config, &alice, message(body, injected))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, sealpost_smtp::WebSendError::Refused(text)
                if text.contains("is not an email address")),
            "{injected:?}: {refused:?}"
        );
    }
    assert!(
        store.queued().unwrap().is_empty(),
        "a refused message was queued"
    );

    let bare = b"From: alice@example.test\nTo: carol@elsewhere.example\n\none\r.\ntwo\n.\nthree\n.\r\nend\r";
    submit_from_web(
        &store,
        &shared,
        &config,
        &alice,
        message(bare, "carol@elsewhere.example"),
    )
    .await
    .unwrap();
    let queued = queued_messages(&store);
    assert_eq!(queued.len(), 1);
    let text = String::from_utf8_lossy(&queued[0]).to_string();
    assert!(only_crlf(&queued[0]), "{text:?}");
    assert!(
        text.ends_with("\r\n\r\none\r\n.\r\ntwo\r\n.\r\nthree\r\n.\r\nend\r\n"),
        "{text:?}"
    );
    assert_eq!(
        store.queued().unwrap()[0].envelope.recipients[0].portal,
        None
    );

    // A message whose sender asked for a proof apart from email goes to the portal for every
    // outside recipient, whatever their server offers.
    let proof = b"From: alice@example.test\r\nTo: dan@elsewhere.example\r\n\r\nresults\r\n";
    let forced = WebMessage {
        portal: Some("the sender asked for a passphrase".into()),
        ..message(proof, "dan@elsewhere.example")
    };
    submit_from_web(&store, &shared, &config, &alice, forced)
        .await
        .unwrap();
    let entries = store.queued().unwrap();
    let dan = entries
        .iter()
        .flat_map(|e| &e.envelope.recipients)
        .find(|r| r.address == "dan@elsewhere.example")
        .unwrap();
    assert_eq!(
        dan.portal.as_deref(),
        Some("the sender asked for a passphrase")
    );

    // Past the hourly budget the refusal says so as its own kind (the web answers 429, not
    // the 422 of a message the author can change).
    let spent = SmtpConfig {
        messages_per_hour_per_account_max: 2,
        ..config.clone()
    };
    let refused = submit_from_web(
        &store,
        &shared,
        &spent,
        &alice,
        message(proof, "dan@elsewhere.example"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, sealpost_smtp::WebSendError::TooMany(text) if text.contains("last hour")),
        "{refused:?}"
    );
}

/// The account password opens a session here: these tests are about the protocol, not about
/// app passwords (tested in `crates/auth` and `tests/auth.rs`).
fn passwords_allowed() -> sealpost_auth::SignInSettings {
    sealpost_auth::SignInSettings {
        second_factor_required: false,
        ..sealpost_auth::SignInSettings::default()
    }
}
