//! The auth crate against the real store: mail client logins with app passwords, and web
//! sessions (cookie, expiry, CSRF, sign out everywhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sealpost_auth::credentials::{issue_app_password, revoke_app_password};
use sealpost_auth::websession::{
    self, Stage, REAUTH_WINDOW_MS, SESSION_ABSOLUTE_MS, SESSION_IDLE_MS,
};
use sealpost_auth::{mail_login, Credentials, MailLogin, Protocol, Scope, SignInSettings};
use sealpost_storage::{
    AccountId, AccountStatus, Actor, MasterKey, NewAccount, Role, Store, StoreConfig,
};

const PASSWORD: &str = "velvet kettle sonar magpie";

fn store(dir: &tempfile::TempDir) -> Store {
    let master = MasterKey::create_file(&dir.path().join("keys/master.key")).unwrap();
    Store::create(
        StoreConfig::new(dir.path().join("store"), "clinic.example"),
        master,
    )
    .unwrap()
}

fn account(store: &Store, address: &str) -> AccountId {
    store
        .create_account(
            &NewAccount {
                address,
                display_name: "Alice",
                role: Role::Staff,
                password: Some(PASSWORD),
            },
            &Actor::cli(),
        )
        .unwrap()
}

fn accepted(result: MailLogin) -> String {
    match result {
        MailLogin::Accepted { method, .. } => method,
        other => panic!("{other:?}"),
    }
}

#[test]
fn mail_clients_use_app_passwords_when_a_second_factor_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let alice = account(&store, "alice@clinic.example");
    let required = SignInSettings::default();
    let open = SignInSettings {
        second_factor_required: false,
        ..SignInSettings::default()
    };
    let login = |policy: &SignInSettings, login: &str, secret: &str, protocol: Protocol| {
        mail_login(&store, policy, login, secret, protocol, "192.0.2.10:50000").unwrap()
    };
    // The account password: refused where a second factor is required, with the hint.
    assert_eq!(
        login(&required, "alice@clinic.example", PASSWORD, Protocol::Imap),
        MailLogin::Rejected {
            app_password_needed: true
        }
    );
    assert_eq!(
        accepted(login(&open, "alice", PASSWORD, Protocol::Imap)),
        "password"
    );
    // An app password for IMAP only.
    let app = issue_app_password(
        &store,
        alice,
        "Thunderbird at home",
        Scope::Imap,
        &Actor::cli(),
    )
    .unwrap();
    assert_eq!(
        accepted(login(
            &required,
            "alice@clinic.example",
            &app,
            Protocol::Imap
        )),
        "app password Thunderbird at home"
    );
    assert!(matches!(
        login(&required, "alice@clinic.example", &app, Protocol::Smtp),
        MailLogin::Rejected { .. }
    ));
    assert!(matches!(
        login(&required, "bob@clinic.example", &app, Protocol::Imap),
        MailLogin::Rejected { .. }
    ));
    let record = Credentials::load(&store, alice).unwrap();
    assert_eq!(
        record.app_passwords[0].last_address.as_deref(),
        Some("192.0.2.10:50000")
    );
    assert!(record.app_passwords[0].last_used_ms.is_some());
    // Disabled accounts stay out; revoked app passwords stop working.
    store
        .set_account_status(alice, AccountStatus::Disabled, &Actor::cli())
        .unwrap();
    assert!(matches!(
        login(&required, "alice@clinic.example", &app, Protocol::Imap),
        MailLogin::Disabled(_)
    ));
    store
        .set_account_status(alice, AccountStatus::Active, &Actor::cli())
        .unwrap();
    let id = record.app_passwords[0].id.clone();
    assert!(revoke_app_password(&store, alice, &id, &Actor::cli()).unwrap());
    assert!(matches!(
        login(&required, "alice@clinic.example", &app, Protocol::Imap),
        MailLogin::Rejected { .. }
    ));
    assert!(!revoke_app_password(&store, alice, &id, &Actor::cli()).unwrap());
    // Names are bounded; so is the count.
    assert!(issue_app_password(&store, alice, "  ", Scope::Both, &Actor::cli()).is_err());
    assert!(
        issue_app_password(&store, alice, &"x".repeat(65), Scope::Both, &Actor::cli()).is_err()
    );
    for n in 0..32 {
        issue_app_password(
            &store,
            alice,
            &format!("device {n}"),
            Scope::Both,
            &Actor::cli(),
        )
        .unwrap();
    }
    assert!(issue_app_password(&store, alice, "one too many", Scope::Both, &Actor::cli()).is_err());
    // Each issue and revoke is audited, without the password.
    let mut audited = Vec::new();
    store
        .audit_records(0, &mut |r| {
            audited.push(format!("{:?}", r.event));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        audited
            .iter()
            .filter(|e| e.contains("auth.app_password.issue"))
            .count(),
        33
    );
    assert_eq!(
        audited
            .iter()
            .filter(|e| e.contains("auth.app_password.revoke"))
            .count(),
        1
    );
    assert!(!audited.iter().any(|e| e.contains(&app)));
}

#[test]
fn web_sessions_expire_check_their_secret_and_end_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let alice = account(&store, "alice@clinic.example");
    let bob = account(&store, "bob@clinic.example");
    let t0 = 1_800_000_000_000;
    let (cookie, session) = websession::start(
        &store,
        alice,
        "192.0.2.1:1",
        "Firefox",
        Stage::SignedIn("passkey".into()),
        t0,
    )
    .unwrap();
    assert!(session.recently_strong(t0 + REAUTH_WINDOW_MS));
    assert!(!session.recently_strong(t0 + REAUTH_WINDOW_MS + 1));
    let found = websession::resume(&store, &cookie, t0 + 1000, &SignInSettings::default())
        .unwrap()
        .unwrap();
    assert_eq!(found.account, alice);
    assert!(found.session.csrf_ok(&session.csrf));
    assert!(!found.session.csrf_ok(""));
    assert!(!found.session.csrf_ok(&"x".repeat(session.csrf.len())));
    // A wrong secret, another account's number, garbage: nothing.
    let (prefix, secret) = cookie.rsplit_once('.').unwrap();
    let wrong = format!("{prefix}.{}", "A".repeat(secret.len()));
    assert!(
        websession::resume(&store, &wrong, t0, &SignInSettings::default())
            .unwrap()
            .is_none()
    );
    let other = cookie.replacen(&format!("{}.", alice.0), &format!("{}.", bob.0), 1);
    assert!(
        websession::resume(&store, &other, t0, &SignInSettings::default())
            .unwrap()
            .is_none()
    );
    for junk in ["", "a.b.c", "1.2", "99999.AAAA.BBBB"] {
        assert!(
            websession::resume(&store, junk, t0, &SignInSettings::default())
                .unwrap()
                .is_none(),
            "{junk}"
        );
    }
    // Use keeps it alive past the idle limit, until the absolute limit.
    let mut now = t0;
    while now + SESSION_IDLE_MS / 2 < t0 + SESSION_ABSOLUTE_MS {
        now += SESSION_IDLE_MS / 2;
        assert!(
            websession::resume(&store, &cookie, now, &SignInSettings::default())
                .unwrap()
                .is_some(),
            "at {now}"
        );
    }
    assert!(websession::resume(
        &store,
        &cookie,
        t0 + SESSION_ABSOLUTE_MS + 1,
        &SignInSettings::default()
    )
    .unwrap()
    .is_none());
    assert!(
        websession::list(&store, alice).unwrap().is_empty(),
        "removed when found expired"
    );
    // Idle too long.
    let (idle, _) = websession::start(
        &store,
        alice,
        "192.0.2.1:1",
        "Firefox",
        Stage::SecondFactor,
        t0,
    )
    .unwrap();
    assert!(websession::resume(
        &store,
        &idle,
        t0 + SESSION_IDLE_MS + 1,
        &SignInSettings::default()
    )
    .unwrap()
    .is_none());
    // Sign out everywhere: a copied cookie stops working.
    let (first, _) = websession::start(
        &store,
        alice,
        "a",
        "",
        Stage::SignedIn("passkey".into()),
        t0,
    )
    .unwrap();
    let (second, _) = websession::start(
        &store,
        alice,
        "b",
        "",
        Stage::SignedIn("passkey".into()),
        t0,
    )
    .unwrap();
    let (bobs, _) =
        websession::start(&store, bob, "c", "", Stage::SignedIn("passkey".into()), t0).unwrap();
    assert_eq!(websession::list(&store, alice).unwrap().len(), 2);
    websession::end(&store, alice, None, &Actor::cli()).unwrap();
    assert!(
        websession::resume(&store, &first, t0, &SignInSettings::default())
            .unwrap()
            .is_none()
    );
    assert!(
        websession::resume(&store, &second, t0, &SignInSettings::default())
            .unwrap()
            .is_none()
    );
    assert!(
        websession::resume(&store, &bobs, t0, &SignInSettings::default())
            .unwrap()
            .is_some(),
        "bob's stays"
    );
    // The number of sessions is bounded: the least recently used go.
    for n in 0..70 {
        websession::start(&store, bob, "d", "", Stage::SecondFactor, t0 + n).unwrap();
    }
    assert_eq!(websession::list(&store, bob).unwrap().len(), 64);
    assert!(
        websession::resume(&store, &bobs, t0, &SignInSettings::default())
            .unwrap()
            .is_none(),
        "the oldest went"
    );
}

/// The one mail-login gate: a right login is admitted and audited; a wrong guess is counted,
/// paused and audited; the protocol's admission may still refuse (and then nothing is
/// cleared); past the account's bound, no password is even hashed.
#[test]
fn the_mail_login_gate_checks_counts_and_audits_every_attempt() {
    use sealpost_auth::{LoginLimits, LoginOutcome, LoginRefusal, MailLogins};
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let alice = account(&store, "alice@clinic.example");
    // Mail clients' app passwords note the networks they come from (the account password
    // does not, where policy lets it open mail).
    let app = issue_app_password(&store, alice, "Phone", Scope::Both, &Actor::cli()).unwrap();
    let open = SignInSettings {
        second_factor_required: false,
        failures_per_account_max: 3,
        ..SignInSettings::default()
    };
    let limits = LoginLimits {
        failure_delay_ms: 1,
        failure_delay_max_ms: 2,
        ..LoginLimits::default()
    };
    // The notice the server would write, recorded: the gate calls it for a new network only.
    let noticed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let notice: sealpost_auth::gate::NewNetworkNotice = {
        let noticed = noticed.clone();
        std::sync::Arc::new(
            move |_: &Store,
                  account: &sealpost_storage::Account,
                  peer: &str,
                  how: &str,
                  host: &str| {
                noticed
                    .lock()
                    .unwrap()
                    .push(format!("{} {peer} {how} {host}", account.address));
                Ok(())
            },
        )
    };
    let gate = MailLogins::new(limits, open, "mail.clinic.example", notice);
    let peer = "192.0.2.10";
    let attempt = |secret: &str, admit: bool, protocol: Protocol| {
        gate.attempt(
            &store,
            peer,
            " Alice@Clinic.Example",
            secret,
            protocol,
            |account| admit.then(|| account.address.clone()),
        )
    };
    match attempt(PASSWORD, true, Protocol::Imap) {
        LoginOutcome::Accepted {
            account,
            method,
            admitted,
        } => {
            assert_eq!(
                (account.address.as_str(), method.as_str()),
                ("alice@clinic.example", "password")
            );
            assert_eq!(admitted, "alice@clinic.example");
        }
        LoginOutcome::Refused { reason, .. } => panic!("{reason:?}"),
    }
    // The first network an app password is used from is no news; a second one is.
    let from = |peer: &str| gate.attempt(&store, peer, "alice", &app, Protocol::Smtp, |_| Some(()));
    assert!(matches!(from("192.0.2.10"), LoginOutcome::Accepted { .. }));
    assert!(noticed.lock().unwrap().is_empty(), "{noticed:?}");
    assert!(matches!(
        from("198.51.100.7"),
        LoginOutcome::Accepted { .. }
    ));
    assert_eq!(
        *noticed.lock().unwrap(),
        ["alice@clinic.example 198.51.100.7 SMTP, app password Phone mail.clinic.example"]
    );
    // The protocol's own admission refuses: no pause, not a guess.
    match attempt(PASSWORD, false, Protocol::Imap) {
        LoginOutcome::Refused { reason, pause } => {
            assert_eq!(reason, LoginRefusal::SessionLimit);
            assert!(pause.is_zero());
        }
        LoginOutcome::Accepted { .. } => panic!("admitted"),
    }
    // Wrong guesses pause and count; the third locks the account out, before any hash.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        match attempt("wrong horse", true, Protocol::Smtp) {
            LoginOutcome::Refused { reason, pause } => {
                assert_eq!(
                    reason,
                    LoginRefusal::Invalid {
                        app_password_needed: false
                    }
                );
                assert!(!pause.is_zero());
            }
            LoginOutcome::Accepted { .. } => panic!("a wrong password admitted"),
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    match attempt(PASSWORD, true, Protocol::Imap) {
        LoginOutcome::Refused { reason, .. } => assert_eq!(reason, LoginRefusal::AccountLockedOut),
        LoginOutcome::Accepted { .. } => panic!("admitted past the lockout"),
    }
    // The first network is known: no notice for the logins from it since.
    assert_eq!(noticed.lock().unwrap().len(), 1);
    // Every attempt is one audit record under the protocol's action.
    let mut records = Vec::new();
    store
        .audit_records(0, &mut |record| {
            let event = record.event;
            if event.action.starts_with("login.") {
                records.push((event.action, format!("{:?}", event.outcome), event.detail));
            }
            Ok(())
        })
        .unwrap();
    let actions: Vec<&str> = records
        .iter()
        .map(|(action, _, _)| action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "login.imap",
            "login.smtp",
            "login.smtp",
            "login.imap",
            "login.smtp",
            "login.smtp",
            "login.smtp",
            "login.imap"
        ]
    );
    assert!(records[0].2.contains("with password"), "{records:?}");
    assert!(
        records[1].2.contains("with app password Phone"),
        "{records:?}"
    );
    assert!(records[3].2.contains("too many sessions"), "{records:?}");
    assert!(records[4].2.contains("invalid credentials"), "{records:?}");
    assert!(
        records[7]
            .2
            .contains("too many failed logins for the account"),
        "{records:?}"
    );
}
