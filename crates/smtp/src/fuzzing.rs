//! Entry points for the fuzzer (`fuzz/`, run by `scripts/fuzz`) and for the test that replays
//! its corpora on stable (`tests/fuzz_corpora.rs`). Not an API: each function takes a
//! stranger's bytes and must never panic, hang or grow without bound.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sealpost_auth::{LoginLimits, MailLogins};
use sealpost_storage::{Actor, MasterKey, NewAccount, Role, Store, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{serve_session, Aliases, ListenerRole, SmtpConfig, SmtpConnection, SmtpShared};

/// Longest one fuzzed SMTP session may take once the client has sent everything and closed,
/// in ms. A session that outlives it is a hang: the fuzzer reports it as a crash.
const SESSION_MS_MAX: u64 = 20_000;
/// Largest message a fuzzed session takes, in bytes: small, so that SIZE, DATA and BDAT
/// limits are reached by short inputs.
const FUZZ_MESSAGE_BYTES_MAX: u64 = 4096;
/// Most reply bytes read from one fuzzed session; past it the client stops reading (and the
/// session must still end when the client goes away).
const FUZZ_REPLY_BYTES_MAX: u64 = 1024 * 1024;

/// One store with the accounts the SMTP transcripts use, and a runtime, for many sessions.
pub struct SessionHarness {
    store: Store,
    runtime: tokio::runtime::Runtime,
}

impl SessionHarness {
    /// Creates the store under `dir` (which must be empty or absent): accounts
    /// alice@, bob@ (barred from sending outside), admin@ (an admin) and gone@ (disabled) of
    /// example.test, each with the password `secret-pass`.
    pub fn new(dir: &Path) -> Result<Self, String> {
        let master =
            MasterKey::create_file(&dir.join("keys/master.key")).map_err(|e| e.to_string())?;
        let store = Store::create(StoreConfig::new(dir.join("store"), "example.test"), master)
            .map_err(|e| e.to_string())?;
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
            let id = store
                .create_account(&account, &Actor::cli())
                .map_err(|e| e.to_string())?;
            if address.starts_with("gone") {
                store
                    .set_account_status(
                        id,
                        sealpost_storage::AccountStatus::Disabled,
                        &Actor::cli(),
                    )
                    .map_err(|e| e.to_string())?;
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { store, runtime })
    }

    /// One SMTP session over an in-memory stream, as `crates/smtp/tests/transcripts.rs` runs
    /// them. `data[0]` chooses the listener (bit 0: submission, else inbound; bit 1: already
    /// TLS, as on port 465) and `data[1]` how many bytes each write carries; the rest is what
    /// the client sends (commands, DATA, BDAT chunks, AUTH exchanges), after which it closes.
    /// Panics only when the session does not end within `SESSION_MS_MAX`.
    pub fn session(&self, data: &[u8]) {
        let (options, step, sent) = match data {
            [options, step, sent @ ..] => (*options, usize::from(*step) + 1, sent),
            _ => return,
        };
        let role = if options & 1 == 1 {
            ListenerRole::Submission
        } else {
            ListenerRole::Inbound
        };
        let tls = (options & 2 == 2).then(|| "TLSv1_3 TLS13_AES_128_GCM_SHA256".to_string());
        let config = SmtpConfig {
            hostname: "mx.example.test".into(),
            message_bytes_max: FUZZ_MESSAGE_BYTES_MAX,
            recipients_per_message_max: 5,
            line_bytes_max: 512,
            command_timeout_ms: SESSION_MS_MAX,
            ..SmtpConfig::default()
        };
        // Failures pause a millisecond, so that the lockout is reached without slowing the
        // fuzzer; a fresh set of counters per session, so one input's failures do not lock
        // the next one out.
        let limits = LoginLimits {
            failure_delay_ms: 1,
            failure_delay_max_ms: 1,
            ..LoginLimits::default()
        };
        let policy = fuzz_policy();
        let mut aliases = Aliases::default();
        aliases.map.insert(
            "team@example.test".into(),
            vec!["alice@example.test".into(), "bob@example.test".into()],
        );
        let settings = sealpost_auth::SignInSettings {
            second_factor_required: false,
            failures_per_account_max: 3,
            ..sealpost_auth::SignInSettings::default()
        };
        let shared = SmtpShared::new(
            MailLogins::new(limits, settings, "localhost", MailLogins::no_notice()),
            aliases,
            None,
            None,
            policy,
        );
        let connection = SmtpConnection {
            peer_ip: "192.0.2.1".into(),
            tls,
            starttls: None,
            role,
            shared,
        };
        let store = self.store.clone();
        let finished = self.runtime.block_on(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            let session = tokio::spawn(serve_session(
                Box::new(server),
                store,
                Arc::new(config),
                connection,
                stopped,
            ));
            let (mut read, mut write) = tokio::io::split(client);
            let reader = tokio::spawn(async move {
                let mut replies = Vec::new();
                let _ = (&mut read)
                    .take(FUZZ_REPLY_BYTES_MAX)
                    .read_to_end(&mut replies)
                    .await;
            });
            for piece in sent.chunks(step) {
                if write.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = write.shutdown().await;
            drop(write);
            let ended = tokio::time::timeout(Duration::from_millis(SESSION_MS_MAX), session).await;
            reader.abort();
            ended
        });
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("the SMTP session panicked: {error}"),
            Err(_) => panic!(
                "the SMTP session did not end within {SESSION_MS_MAX} ms of the client closing"
            ),
        }
    }
}

/// The transcripts' policy: bob@ may not send outside, and mail naming oncology is blocked.
fn fuzz_policy() -> Arc<sealpost_policy::LivePolicy> {
    let mut config = sealpost_policy::PolicyConfig::default();
    config.barred_accounts.insert("bob@example.test".into());
    config.content.push(sealpost_policy::ContentRule {
        name: "no-oncology".into(),
        enabled: true,
        proof_required: false,
        detector: sealpost_policy::Detector::Keywords {
            words: vec!["oncology".into()],
        },
        action: sealpost_policy::Action::Block,
    });
    let policy = match sealpost_policy::Policy::new(config) {
        Ok(policy) => policy,
        Err(error) => panic!("the fuzzing policy does not load: {error}"),
    };
    sealpost_policy::LivePolicy::new(policy)
}

/// The header edits made on receipt, on a stranger's message: `data[0]` picks the hostname
/// whose Authentication-Results are forged (so that matching and non-matching names are
/// both tried), the rest is the message. Runs forged Authentication-Results removal,
/// X-Sealpost-* removal, the Received field with a hostile HELO, the impersonation check on
/// the From field, the warning and subject prefix, and the header look-ups; checks that what
/// is removed stays removed.
pub fn header_edits(data: &[u8]) {
    let Some((selector, raw)) = data.split_first() else {
        return;
    };
    let hostname = match selector % 3 {
        0 => "mx.example.test",
        1 => "MX.Example.Test",
        _ => "",
    };
    let walk = sealpost_mime::HeaderWalk::of(raw);
    assert!(walk.end <= walk.body && walk.body <= raw.len());
    let edits = crate::headers::Edits {
        forged_results_of: (!hostname.is_empty()).then_some(hostname),
        own_fields: true,
        ..crate::headers::Edits::default()
    };
    let cleaned = crate::headers::edited(raw, &walk, &edits);
    assert!(cleaned.ends_with(&raw[walk.end..]), "the body changed");
    let again = crate::headers::edited(&cleaned, &sealpost_mime::HeaderWalk::of(&cleaned), &edits);
    assert!(again == cleaned, "a removed field survived its removal");
    let walk = sealpost_mime::HeaderWalk::of(&cleaned);
    let _ = walk.named(&cleaned, "Message-ID").next();
    let from = walk.first(&cleaned, "From").unwrap_or_default();
    let subject = walk.first(&cleaned, "Subject").unwrap_or_default();
    let helo = String::from_utf8_lossy(&raw[..raw.len().min(300)]);
    let received = crate::headers::received(
        &helo,
        "192.0.2.1",
        "mx.example.test",
        "ESMTPS",
        Some(&subject),
        "0123456789abcdef",
        Some(&from),
    );
    // Whatever the client sent, Received stays one field: every line break is followed by a
    // tab, but the last.
    assert_eq!(
        received.matches("\r\n").count(),
        received.matches("\r\n\t").count() + 1,
        "client text broke the Received field: {received:?}"
    );
    assert_eq!(
        received.matches('\n').count(),
        received.matches("\r\n").count()
    );
    let (name, address) = match (from.rfind('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => (&from[..open], &from[open + 1..close]),
        _ => ("", from.as_str()),
    };
    let staff: std::collections::HashSet<String> =
        ["doc holliday".to_string()].into_iter().collect();
    // The check is quadratic in the domain's length; the session hands it at most a header
    // field's worth (the whole header section is within the message size).
    let why = crate::spam::impersonation(address, name, &["example.test".to_string()], &staff);
    let warning = crate::headers::Edits {
        warning: Some((why.as_deref().unwrap_or("fuzz"), "[EXTERNAL]")),
        ..crate::headers::Edits::default()
    };
    let warned = crate::headers::edited(&cleaned, &walk, &warning);
    assert!(warned.starts_with(b"X-Sealpost-Warning: impersonation: "));
    assert_eq!(
        warned
            .iter()
            .take_while(|b| **b != b'\n')
            .filter(|b| **b == b'\r')
            .count(),
        1,
        "the warning's reason broke its field"
    );
}

/// What Sealpost parses itself of what DNS servers, web servers and senders' domains say
/// (SPF, DKIM and DMARC themselves are mail-auth's): `data[0]` picks the parser, the rest is
/// its input. MTA-STS: the `_mta-sts` TXT record, the policy file (as a 200 answer's body;
/// the HTTP is hyper's) and the stored form; DANE: a DNS answer as read off the wire and its TLSA
/// records; and mail-auth's message parser, which reads every inbound message first.
pub fn auth_inputs(data: &[u8]) {
    let Some((selector, input)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(input);
    match selector % 6 {
        0 => {
            if let Some(id) = crate::mta_sts::record_id(&text) {
                assert!(!id.is_empty() && id.len() <= 32);
            }
        }
        1 => {
            if let Some(policy) = crate::mta_sts::parse("fuzz", &text) {
                let stored = crate::mta_sts::encode(&policy, 42);
                let _ = crate::mta_sts::decode(&stored);
                for host in ["mail.example.com", "a.b.example.com", "", ".", "*."] {
                    let _ = policy.allows(host);
                }
            }
        }
        2 => {
            if let Ok(body) = crate::mta_sts::policy_text(200, input.to_vec()) {
                let _ = crate::mta_sts::parse("fuzz", &body);
            }
        }
        3 => {
            let _ = crate::mta_sts::decode(input);
        }
        4 => dane_answer(input),
        _ => {
            if let Some(message) = mail_auth::AuthenticatedMessage::parse(input) {
                let _ = message.from();
            }
        }
    }
}

/// A DNS reply as the DANE resolver reads it off the wire (`dane.rs`), and the TLSA records
/// in it that SMTP may use.
fn dane_answer(input: &[u8]) {
    use mail_auth::hickory_resolver::proto::op::Message;
    use mail_auth::hickory_resolver::proto::rr::{RData, RecordType};
    let Ok(reply) = Message::from_vec(input) else {
        return;
    };
    let _ = (
        reply.metadata.authentic_data,
        reply.metadata.response_code,
        reply.queries.first(),
    );
    for record in reply
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::TLSA)
    {
        if let RData::TLSA(tlsa) = &record.data {
            let _ = crate::dane::Tlsa::usable(
                tlsa.cert_usage.into(),
                tlsa.selector.into(),
                tlsa.matching.into(),
                &tlsa.cert_data,
            );
        }
    }
}
