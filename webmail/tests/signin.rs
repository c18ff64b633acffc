//! Sign-in as an attacker would try it, in process over the real router and store, with a
//! software passkey (webauthn-authenticator-rs) answering the WebAuthn ceremonies: a password
//! alone never adds a factor, an enrolling session reaches nothing but enrolment, TOTP is not
//! for passkey roles, re-authentication asks for the strongest factor, and a password spray
//! does not lock an admin out of the passkey sign-in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::StatusCode;
use common::{body_text, location, set_cookie, Web, FORM_TOKEN, PASSWORD, SESSION_COOKIE};
use sealpost_auth::credentials::{Credentials, TotpFactor};
use sealpost_auth::websession::Stage;
use sealpost_auth::LoginLimits;
use sealpost_storage::{AccountId, Role};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

/// A web whose lockout closes an account after three failures, with no pause between them.
fn web() -> Web {
    Web::with_sign_in(
        LoginLimits {
            failure_delay_ms: 0,
            ..LoginLimits::default()
        },
        sealpost_auth::SignInSettings {
            failures_per_account_max: 3,
            ..sealpost_auth::SignInSettings::default()
        },
    )
}

fn with_totp(web: &Web, account: AccountId) -> Vec<u8> {
    let secret = sealpost_auth::totp::new_secret();
    let kept = secret.clone();
    Credentials::update(&web.store, account, |record| {
        record.totp = Some(TotpFactor {
            secret: kept,
            enrolled_ms: 0,
            last_step: None,
        });
        Some(vec![])
    })
    .unwrap();
    secret
}

fn code(secret: &[u8]) -> String {
    let now = u64::try_from(sealpost_storage::now_ms() / 1000).unwrap();
    sealpost_auth::totp::code_at(secret, 6, now).unwrap()
}

/// The password step: the session cookie and where it leads.
async fn password_step(
    web: &Web,
    address: &str,
    password: &str,
) -> (StatusCode, String, Option<String>) {
    let form = format!(
        "csrf={FORM_TOKEN}&address={}&password={}",
        address.replace('@', "%40"),
        password.replace(' ', "+")
    );
    let response = web.post_form("/sign-in", "", &form).await;
    (
        response.status(),
        location(&response),
        set_cookie(&response, SESSION_COOKIE),
    )
}

fn csrf(web: &Web, cookie: &str) -> String {
    web.session(cookie).expect("a live session").csrf
}

/// The second step with the current TOTP code, in the first step's session `cookie`.
async fn totp_step(
    web: &Web,
    cookie: &str,
    secret: &[u8],
) -> axum::http::Response<axum::body::Body> {
    let token = csrf(web, cookie);
    let form = format!("csrf={token}&code={}", code(secret));
    web.post_form("/second-factor", cookie, &form).await
}

/// Registers a passkey from `device` in the session of `cookie`: the JSON answer's status.
async fn add_passkey(web: &Web, cookie: &str, device: &mut SoftPasskey) -> StatusCode {
    let token = csrf(web, cookie);
    let ends = ("/security/passkeys/start", "/security/passkeys/finish");
    web.register_passkey(ends, cookie, &token, device).await
}

/// Signs in with the passkey of `device` (no password): the new session's cookie.
async fn passkey_sign_in(
    web: &Web,
    address: &str,
    device: &mut SoftPasskey,
) -> Result<String, StatusCode> {
    let ends = ("/passkey/sign-in/start", "/passkey/sign-in/finish");
    let request = serde_json::json!({ "address": address });
    web.passkey_sign_in(ends, &request, SESSION_COOKIE, device)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_alone_never_adds_a_passkey_to_an_admin_with_totp() {
    let web = web();
    let admin = web.account("admin@clinic.test", Role::Admin);
    let secret = with_totp(&web, admin);
    // The password is right: the factor the account has is asked for first.
    let (status, next, first) = password_step(&web, "admin@clinic.test", PASSWORD).await;
    assert_eq!(
        (status, next.as_str()),
        (StatusCode::SEE_OTHER, "/second-factor")
    );
    let first = first.unwrap();
    assert_eq!(web.session(&first).unwrap().stage, Stage::SecondFactor);
    // With the password alone, no passkey can be added (it could, to an Enrolment session).
    let mut attacker = SoftPasskey::new(true);
    assert_eq!(
        add_passkey(&web, &first, &mut attacker).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(Credentials::load(&web.store, admin)
        .unwrap()
        .passkeys
        .is_empty());
    // The TOTP code: the admin is now enrolling the passkey the role needs, nothing else.
    let page = body_text(web.get("/second-factor", &first).await).await;
    assert!(
        page.contains("name=\"code\""),
        "the admin without a passkey is asked for TOTP"
    );
    let answered = totp_step(&web, &first, &secret).await;
    assert_eq!(answered.status(), StatusCode::SEE_OTHER);
    let enrolling = set_cookie(&answered, SESSION_COOKIE).unwrap();
    assert_eq!(web.session(&enrolling).unwrap().stage, Stage::Enrolment);
    assert!(
        web.session(&first).is_none(),
        "the first step's session ended"
    );
    // In enrolment: no app passwords, no ending sessions, no TOTP for this role, no console.
    let token = csrf(&web, &enrolling);
    let before = web.store.audit_anchor();
    for (path, form) in [
        (
            "/security/app-passwords",
            format!("csrf={token}&name=x&scope=imap"),
        ),
        ("/security/sessions/end-all", format!("csrf={token}")),
        ("/security/recovery", format!("csrf={token}")),
        (
            "/security/password",
            format!("csrf={token}&password=x&again=x"),
        ),
    ] {
        let refused = web.post_form(path, &enrolling, &form).await;
        assert_eq!(
            (refused.status(), location(&refused).as_str()),
            (StatusCode::SEE_OTHER, "/security"),
            "{path}"
        );
    }
    let totp = web
        .post_form("/security/totp/start", &enrolling, &format!("csrf={token}"))
        .await;
    assert_eq!(totp.status(), StatusCode::BAD_REQUEST);
    assert!(body_text(totp)
        .await
        .contains("Your role signs in with a passkey"));
    assert_eq!(
        web.get("/admin/accounts", &enrolling).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(web.store.audit_anchor(), before, "nothing changed");
    // Enrolling the passkey signs the session in.
    let mut key = SoftPasskey::new(true);
    assert_eq!(
        add_passkey(&web, &enrolling, &mut key).await,
        StatusCode::OK
    );
    assert!(web.session(&enrolling).unwrap().signed_in());
    assert_eq!(
        web.get("/admin/accounts", &enrolling).await.status(),
        StatusCode::OK
    );
    // From now on the admin's second step is the passkey only.
    let (_, next, again) = password_step(&web, "admin@clinic.test", PASSWORD).await;
    assert_eq!(next, "/second-factor");
    let page = body_text(web.get("/second-factor", &again.unwrap()).await).await;
    assert!(
        !page.contains("name=\"code\""),
        "TOTP is offered to an admin with a passkey"
    );
    assert!(page.contains("data-passkey=\"sign-in\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_spray_does_not_lock_an_admin_out_of_the_passkey_sign_in() {
    let web = web();
    let admin = web.account("admin@clinic.test", Role::Admin);
    let mut key = SoftPasskey::new(true);
    let session = web.signed_in(admin);
    assert_eq!(add_passkey(&web, &session, &mut key).await, StatusCode::OK);
    for _ in 0..3 {
        let (status, _, _) =
            password_step(&web, "admin@clinic.test", "not the password at all").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Passwords are refused now, the right one too; the console says why.
    let (status, _, _) = password_step(&web, "admin@clinic.test", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let lockouts = body_text(web.get("/admin/lockouts", &session).await).await;
    assert!(
        lockouts.contains("admin@clinic.test")
            && lockouts.contains("wrong passwords or codes")
            && lockouts.contains("A passkey still signs in"),
        "{lockouts}"
    );
    // The passkey still signs in.
    let signed = passkey_sign_in(&web, "admin@clinic.test", &mut key)
        .await
        .expect("the passkey signs in");
    assert!(web.session(&signed).unwrap().signed_in());
    // A stranger's key does not, and is not counted as a password failure either.
    let mut stranger = SoftPasskey::new(true);
    assert!(passkey_sign_in(&web, "admin@clinic.test", &mut stranger)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_authentication_asks_for_the_strongest_factor_the_account_has() {
    let web = web();
    let staff = web.account("doc@clinic.test", Role::Staff);
    let session = web.signed_in(staff);
    let mut key = SoftPasskey::new(true);
    assert_eq!(add_passkey(&web, &session, &mut key).await, StatusCode::OK);
    // With a passkey, the password alone does not confirm, and the page offers no password.
    let page = body_text(web.get("/reauth", &session).await).await;
    assert!(!page.contains("name=\"password\""), "{page}");
    let token = csrf(&web, &session);
    let refused = web
        .post_form(
            "/reauth",
            &session,
            &format!("csrf={token}&password={}", PASSWORD.replace(' ', "+")),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(body_text(refused)
        .await
        .contains("Confirm with your passkey"));
    // With TOTP and no passkey: the password and a code; the password alone does not do.
    let nurse = web.account("nurse@clinic.test", Role::Staff);
    let secret = with_totp(&web, nurse);
    let session = web.signed_in(nurse);
    let token = csrf(&web, &session);
    let page = body_text(web.get("/reauth", &session).await).await;
    assert!(
        page.contains("name=\"password\"") && page.contains("name=\"code\""),
        "{page}"
    );
    let password = PASSWORD.replace(' ', "+");
    let alone = web
        .post_form(
            "/reauth",
            &session,
            &format!("csrf={token}&password={password}"),
        )
        .await;
    assert_eq!(alone.status(), StatusCode::UNAUTHORIZED);
    let both = web
        .post_form(
            "/reauth",
            &session,
            &format!("csrf={token}&password={password}&code={}", code(&secret)),
        )
        .await;
    assert_eq!(
        (both.status(), location(&both).as_str()),
        (StatusCode::SEE_OTHER, "/security")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weaker_factor_signs_in_but_does_not_change_factors_and_a_stale_enrolment_adds_none() {
    let web = web();
    // A staff member with a passkey and TOTP: password and code sign in, but adding a passkey
    // then needs the strongest factor (the passkey) first.
    let staff = web.account("doc@clinic.test", Role::Staff);
    let session = web.signed_in(staff);
    let mut key = SoftPasskey::new(true);
    assert_eq!(add_passkey(&web, &session, &mut key).await, StatusCode::OK);
    let secret = with_totp(&web, staff);
    let (_, next, first) = password_step(&web, "doc@clinic.test", PASSWORD).await;
    assert_eq!(next, "/second-factor");
    let first = first.unwrap();
    let answered = totp_step(&web, &first, &secret).await;
    let signed = set_cookie(&answered, SESSION_COOKIE).unwrap();
    assert!(web.session(&signed).unwrap().signed_in());
    let mut attacker = SoftPasskey::new(true);
    assert_eq!(
        add_passkey(&web, &signed, &mut attacker).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        Credentials::load(&web.store, staff).unwrap().passkeys.len(),
        1
    );

    // An enrolling session opened with the password before the owner enrolled a factor adds
    // nothing once the owner has one.
    let nurse = web.account("nurse@clinic.test", Role::Staff);
    let (_, next, stale) = password_step(&web, "nurse@clinic.test", PASSWORD).await;
    assert_eq!(next, "/security");
    let stale = stale.unwrap();
    assert_eq!(web.session(&stale).unwrap().stage, Stage::Enrolment);
    with_totp(&web, nurse);
    assert_eq!(
        add_passkey(&web, &stale, &mut attacker).await,
        StatusCode::FORBIDDEN
    );
    assert!(Credentials::load(&web.store, nurse)
        .unwrap()
        .passkeys
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_action_needs_a_recent_confirmation_with_the_passkey() {
    let web = web();
    let admin = web.account("admin@clinic.test", Role::Admin);
    let cookie = web.signed_in(admin);
    // The session was confirmed long ago: a console action first asks for the passkey.
    let value = cookie.strip_prefix(&format!("{SESSION_COOKIE}=")).unwrap();
    let found = sealpost_auth::websession::resume(
        &web.store,
        value,
        sealpost_storage::now_ms(),
        &sealpost_auth::SignInSettings::default(),
    )
    .unwrap()
    .unwrap();
    let mut session = found.session.clone();
    session.strong_at_ms =
        Some(sealpost_storage::now_ms() - sealpost_auth::websession::REAUTH_WINDOW_MS - 1_000);
    sealpost_auth::websession::save(&web.store, admin, &found.id, &session, vec![]).unwrap();
    let before = web.store.audit_anchor();
    let lifted = web
        .post_form(
            "/admin/lockouts/lift",
            &cookie,
            &format!("csrf={}&login=doc%40clinic.test", session.csrf),
        )
        .await;
    assert_eq!(
        (lifted.status(), location(&lifted).as_str()),
        (StatusCode::SEE_OTHER, "/reauth")
    );
    assert_eq!(web.store.audit_anchor(), before, "nothing done");
    // Confirmed just now (a fresh passkey sign-in), it goes through, with the session's own
    // token only: the pre-session form cookie's token, matching its cookie, opens no session
    // form (`request::Csrf` checks the token of the gate that found the session).
    session.strong_at_ms = Some(sealpost_storage::now_ms());
    sealpost_auth::websession::save(&web.store, admin, &found.id, &session, vec![]).unwrap();
    let with_cookie_token = web
        .post_form(
            "/admin/lockouts/lift",
            &cookie,
            &format!("csrf={FORM_TOKEN}&login=doc%40clinic.test"),
        )
        .await;
    assert_eq!(with_cookie_token.status(), StatusCode::FORBIDDEN);
    assert_eq!(web.store.audit_anchor(), before, "nothing done");
    let lifted = web
        .post_form(
            "/admin/lockouts/lift",
            &cookie,
            &format!("csrf={}&login=doc%40clinic.test", session.csrf),
        )
        .await;
    assert_eq!(lifted.status(), StatusCode::OK);
}

/// A session still owing its second factor is sent on by the start page (to the second-factor
/// step), not back to the password: the gates of mail pages send it to `/`.
#[tokio::test]
async fn a_session_owing_its_second_factor_is_sent_to_the_start_page_from_mail_pages() {
    let web = web();
    let doc = web.account("doc@clinic.test", Role::Staff);
    let cookie = web.signed_in(doc);
    let value = cookie.strip_prefix(&format!("{SESSION_COOKIE}=")).unwrap();
    let found = sealpost_auth::websession::resume(
        &web.store,
        value,
        sealpost_storage::now_ms(),
        &sealpost_auth::SignInSettings::default(),
    )
    .unwrap()
    .unwrap();
    let mut session = found.session.clone();
    session.stage = Stage::SecondFactor;
    sealpost_auth::websession::save(&web.store, doc, &found.id, &session, vec![]).unwrap();
    for page in ["/mail", "/sent", "/quarantine", "/compose"] {
        let answer = web.get(page, &cookie).await;
        assert_eq!(
            (answer.status(), location(&answer).as_str()),
            (StatusCode::SEE_OTHER, "/"),
            "{page}"
        );
    }
    let start = web.get("/", &cookie).await;
    assert_eq!(location(&start), "/second-factor");
}
