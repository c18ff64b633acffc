//! The pickup portal as its visitors and its attackers meet it, in process over the real
//! router and store: replies are bounded per day, in bytes per pickup, and by the sender's
//! quota, and sign-out takes the CSRF token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{body_text, Web, FORM_TOKEN, PORTAL_COOKIE};
use sealpost_auth::LoginLimits;
use sealpost_storage::{Actor, Role, PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

const RESULTS: &[u8] =
    b"From: doc@clinic.test\r\nTo: pat@outside.test\r\nSubject: Your results\r\n\
    Message-ID: <r1@clinic.test>\r\n\r\nAll is well.\r\n";

/// The portal session's CSRF token, from its message page.
async fn portal_csrf(web: &Web, cookie: &str, id: &str) -> String {
    let page = body_text(web.get(&format!("/portal/{id}"), cookie).await).await;
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with the token")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

async fn reply(web: &Web, cookie: &str, id: &str, csrf: &str, text: &str) -> StatusCode {
    let body = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"body\"\r\n\r\n{text}\r\n--XyZ--\r\n"
    );
    web.send(
        Request::post(format!("/portal/{id}/reply"))
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
    .status()
}

fn inbox_count(web: &Web, account: sealpost_storage::AccountId) -> usize {
    let inbox = web
        .store
        .mailbox_by_name(account, "INBOX")
        .unwrap()
        .unwrap();
    web.store.messages(account, inbox.id).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_from_the_portal_are_bounded_per_day_and_by_the_senders_quota() {
    let web = Web::new(LoginLimits::default());
    let doc = web.account("doc@clinic.test", Role::Staff);
    let (token, id, _) = web.pickup(doc, "pat@outside.test", RESULTS);
    let patient = web.portal_visitor(&token).await;
    let id = id.to_string();
    let csrf = portal_csrf(&web, &patient, &id).await;
    for n in 0..PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX {
        assert_eq!(
            reply(&web, &patient, &id, &csrf, &format!("reply {n}")).await,
            StatusCode::SEE_OTHER
        );
    }
    let delivered = inbox_count(&web, doc);
    assert_eq!(delivered, PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX);
    // One more in the same day is refused, and nothing reaches the sender.
    assert_eq!(
        reply(&web, &patient, &id, &csrf, "one more").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(inbox_count(&web, doc), delivered);

    // A second pickup to a sender whose mailbox is at its quota: refused by the store,
    // nothing delivered. Just under it, a reply goes (and may take it past, as any mail from
    // outside may).
    let (token, id, _) = web.pickup(doc, "pat@outside.test", RESULTS);
    let patient = web.portal_visitor(&token).await;
    let id = id.to_string();
    let csrf = portal_csrf(&web, &patient, &id).await;
    let used = web.store.quota_usage(doc).unwrap();
    web.store.set_quota(doc, Some(used), &Actor::cli()).unwrap();
    assert_eq!(
        reply(&web, &patient, &id, &csrf, "this will not fit").await,
        StatusCode::INSUFFICIENT_STORAGE
    );
    assert_eq!(inbox_count(&web, doc), delivered);
    web.store
        .set_quota(doc, Some(used + 1), &Actor::cli())
        .unwrap();
    assert_eq!(
        reply(&web, &patient, &id, &csrf, "one byte of room").await,
        StatusCode::SEE_OTHER
    );
    let delivered = delivered + 1;
    assert_eq!(inbox_count(&web, doc), delivered);
    web.store.set_quota(doc, None, &Actor::cli()).unwrap();
    assert_eq!(
        reply(&web, &patient, &id, &csrf, "now it fits").await,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_sign_out_takes_the_csrf_token() {
    let web = Web::new(LoginLimits::default());
    let doc = web.account("doc@clinic.test", Role::Staff);
    let (token, id, _) = web.pickup(doc, "pat@outside.test", RESULTS);
    let patient = web.portal_visitor(&token).await;
    let id = id.to_string();
    // Another site's form (no token) does not sign the patient out.
    let forged = web
        .send(
            Request::post("/portal/sign-out")
                .header(header::COOKIE, &patient)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("x=1"))
                .unwrap(),
        )
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        web.get(&format!("/portal/{id}"), &patient).await.status(),
        StatusCode::OK
    );
    // The portal's own form does.
    let csrf = portal_csrf(&web, &patient, &id).await;
    let signed_out = web
        .send(
            Request::post("/portal/sign-out")
                .header(header::COOKIE, &patient)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={csrf}")))
                .unwrap(),
        )
        .await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        web.get(&format!("/portal/{id}"), &patient).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Composes a message to pat@outside.test on the web with the proof fields given; the status
/// and the message as handed to the outbox.
async fn compose(
    web: &Web,
    cookie: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, Option<Vec<u8>>) {
    let csrf = web.session(cookie).unwrap().csrf;
    let mut body = String::new();
    let all = [
        ("csrf", csrf.as_str()),
        ("to", "pat@outside.test"),
        ("subject", "Your results"),
        ("body", "The biopsy is benign."),
        ("action", "send"),
    ];
    for (name, value) in all.iter().chain(fields) {
        body.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str("--XyZ--\r\n");
    let before = web.outbox.lock().unwrap().len();
    let response = web
        .send(
            Request::post("/compose")
                .header(header::COOKIE, cookie)
                .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    let outbox = web.outbox.lock().unwrap();
    (
        response.status(),
        (outbox.len() > before).then(|| outbox.last().unwrap().clone()),
    )
}

async fn prove(web: &Web, cookie: &str, id: &str, fields: &str) -> StatusCode {
    let csrf = portal_csrf_of_proof(web, cookie, id).await;
    web.post_form(
        &format!("/portal/{id}/proof"),
        cookie,
        &format!("csrf={csrf}&{fields}"),
    )
    .await
    .status()
}

/// The CSRF token on the proof page (the message page is not shown before the proof).
async fn portal_csrf_of_proof(web: &Web, cookie: &str, id: &str) -> String {
    let page = body_text(web.get(&format!("/portal/{id}"), cookie).await).await;
    let at = page.find("name=\"csrf\" value=\"").expect("the proof form") + 19;
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoever_reads_the_patients_mail_opens_a_code_only_message_but_not_one_with_a_passphrase() {
    let web = Web::new(LoginLimits::default());
    let doc = web.account("doc@clinic.test", Role::Staff);
    let clinician = web.signed_in(doc);
    // The default's limit, documented: the notice and the code are all it takes, so whoever
    // captures every mail to the patient (here: everything queued for them) opens it.
    let (status, raw) = compose(&web, &clinician, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        web.portals.lock().unwrap().last().unwrap(),
        &None,
        "a code-only message may go by TLS"
    );
    let (token, id, _) = web.pickup(doc, "pat@outside.test", &raw.unwrap());
    let eavesdropper = web.portal_visitor(&token).await;
    let page = web.get(&format!("/portal/{id}"), &eavesdropper).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(body_text(page).await.contains("The biopsy is benign."));

    // With a passphrase told by phone: the same capture does not open it, nor its
    // attachments or reply form, and five wrong guesses lock it and tell the sender.
    let (status, raw) = compose(
        &web,
        &clinician,
        &[("proof", "passphrase"), ("passphrase", "Blue heron  seven")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // A proof is asked only by the portal: the message goes there for every outside
    // recipient, even one whose server has verified TLS.
    assert!(
        web.portals.lock().unwrap().last().unwrap().is_some(),
        "the portal is forced"
    );
    let raw = raw.unwrap();
    let (token, id, _) = web.pickup(doc, "pat@outside.test", &raw);
    let id = id.to_string();
    let eavesdropper = web.portal_visitor(&token).await;
    let page = web.get(&format!("/portal/{id}"), &eavesdropper).await;
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    let page = body_text(page).await;
    assert!(
        page.contains("passphrase") && !page.contains("benign"),
        "{page}"
    );
    assert_eq!(
        web.get(&format!("/portal/{id}/attachment/0"), &eavesdropper)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let notes_before = inbox_count(&web, doc);
    for n in 1..=5u8 {
        let status = prove(&web, &eavesdropper, &id, &format!("passphrase=guess{n}")).await;
        let expected = if n < 5 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::LOCKED
        };
        assert_eq!(status, expected, "guess {n}");
    }
    let locked = web.get(&format!("/portal/{id}"), &eavesdropper).await;
    assert_eq!(locked.status(), StatusCode::LOCKED);
    assert_eq!(
        inbox_count(&web, doc),
        notes_before + 1,
        "the sender is told"
    );
    // Locked is locked: the right passphrase no longer opens it.
    let home = body_text(web.get("/portal", &eavesdropper).await).await;
    let at = home.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = home[at..at + home[at..].find('"').unwrap()].to_string();
    let late = web
        .post_form(
            &format!("/portal/{id}/proof"),
            &eavesdropper,
            &format!("csrf={csrf}&passphrase=blue+heron+seven"),
        )
        .await;
    assert_eq!(late.status(), StatusCode::LOCKED);

    // The patient, told the passphrase, opens a new one (case and spacing do not count).
    let (id, patient) = proven_passphrase_message(&web, &clinician, doc).await;
    let page = web.get(&format!("/portal/{id}"), &patient).await;
    assert_eq!(page.status(), StatusCode::OK);

    // The question: date of birth and surname, which the sender knows.
    let (status, _) = compose(
        &web,
        &clinician,
        &[("proof", "question"), ("birth_date", "1970-03-04")],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a question needs both answers"
    );
    let (_, raw) = compose(
        &web,
        &clinician,
        &[
            ("proof", "question"),
            ("birth_date", "1970-03-04"),
            ("surname", "Müller"),
        ],
    )
    .await;
    let (token, id, _) = web.pickup(doc, "pat@outside.test", &raw.unwrap());
    let id = id.to_string();
    let patient = web.portal_visitor(&token).await;
    let wrong = prove(
        &web,
        &patient,
        &id,
        "birth_date=1970-04-03&surname=M%C3%BCller",
    )
    .await;
    assert_eq!(wrong, StatusCode::UNAUTHORIZED);
    let right = prove(
        &web,
        &patient,
        &id,
        "birth_date=1970-03-04&surname=+m%C3%BCller",
    )
    .await;
    assert_eq!(right, StatusCode::SEE_OTHER);
    assert_eq!(
        web.get(&format!("/portal/{id}"), &patient).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_can_require_a_proof_for_every_message_to_outside() {
    let web = Web::new(LoginLimits::default());
    let doc = web.account("doc@clinic.test", Role::Staff);
    web.account("nurse@clinic.test", Role::Staff);
    let clinician = web.signed_in(doc);
    let mut config = sealpost_policy::PolicyConfig::default();
    config.portal.proof_required = true;
    web.rules
        .replace(sealpost_policy::Policy::new(config).unwrap());
    let (status, raw) = compose(&web, &clinician, &[]).await;
    assert_eq!(
        (status, raw.is_none()),
        (StatusCode::UNPROCESSABLE_ENTITY, true),
        "nothing sent"
    );
    let (status, raw) = compose(
        &web,
        &clinician,
        &[("proof", "passphrase"), ("passphrase", "short")],
    )
    .await;
    assert_eq!(
        (status, raw.is_none()),
        (StatusCode::UNPROCESSABLE_ENTITY, true),
        "too short"
    );
    let (status, raw) = compose(
        &web,
        &clinician,
        &[("proof", "passphrase"), ("passphrase", "long enough now")],
    )
    .await;
    assert_eq!((status, raw.is_some()), (StatusCode::SEE_OTHER, true));
}

/// Registers a passkey for the portal session's address: the finish's status.
async fn register_patient_passkey(
    web: &Web,
    cookie: &str,
    csrf: &str,
    device: &mut SoftPasskey,
) -> StatusCode {
    let ends = ("/portal/passkey/start", "/portal/passkey/finish");
    web.register_passkey(ends, cookie, csrf, device).await
}

/// Opens a link with the address's passkey: the portal cookie, or the refusal's status.
async fn open_with_passkey(
    web: &Web,
    token: &str,
    device: &mut SoftPasskey,
) -> Result<String, StatusCode> {
    let (start, finish) = (
        format!("/pickup/{token}/passkey/start"),
        format!("/pickup/{token}/passkey/finish"),
    );
    web.passkey_sign_in(
        (&start, &finish),
        &serde_json::json!({}),
        PORTAL_COOKIE,
        device,
    )
    .await
}

/// A message composed with the passphrase "Blue heron seven", kept for pat@outside.test's
/// pickup, opened with a mailed code and the passphrase: its id and the portal cookie.
async fn proven_passphrase_message(
    web: &Web,
    clinician: &str,
    doc: sealpost_storage::AccountId,
) -> (String, String) {
    let proof = [("proof", "passphrase"), ("passphrase", "Blue heron seven")];
    let (_, raw) = compose(web, clinician, &proof).await;
    let (token, id, _) = web.pickup(doc, "pat@outside.test", &raw.unwrap());
    let id = id.to_string();
    let patient = web.portal_visitor(&token).await;
    let proved = prove(web, &patient, &id, "passphrase=blue+HERON+seven").await;
    assert_eq!(proved, StatusCode::SEE_OTHER);
    (id, patient)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_with_a_passkey_is_never_mailed_a_code_and_the_sender_can_reset_it() {
    let web = Web::new(LoginLimits::default());
    let doc = web.account("doc@clinic.test", Role::Staff);
    let clinician = web.signed_in(doc);
    // A session that only has the mailed code cannot register a passkey: whoever reads the
    // patient's mail would otherwise register theirs and shut the patient out.
    let (token, id, _) = web.pickup(doc, "pat@outside.test", RESULTS);
    let eavesdropper = web.portal_visitor(&token).await;
    let csrf = portal_csrf(&web, &eavesdropper, &id.to_string()).await;
    let started = web
        .post_json(
            "/portal/passkey/start",
            &eavesdropper,
            &csrf,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(started.status(), StatusCode::FORBIDDEN);
    // The patient, who gave the passphrase told by phone, registers one.
    let (id, patient) = proven_passphrase_message(&web, &clinician, doc).await;
    let csrf = portal_csrf(&web, &patient, &id).await;
    let mut phone = SoftPasskey::new(true);
    assert_eq!(
        register_patient_passkey(&web, &patient, &csrf, &mut phone).await,
        StatusCode::OK
    );

    // The next message: its link asks for the passkey; no code is mailed to the address, so
    // whoever reads the patient's mail gets nothing to open it with.
    let (token, id, queue) = web.pickup(doc, "pat@outside.test", RESULTS);
    let page = body_text(web.get(&format!("/pickup/{token}"), "").await).await;
    assert!(
        page.contains("Open with my passkey") && !page.contains("Email me a code"),
        "{page}"
    );
    let queued = web.store.queued().unwrap().len();
    let asked = web
        .post_form(
            &format!("/pickup/{token}/code"),
            "",
            &format!("csrf={FORM_TOKEN}"),
        )
        .await;
    assert_eq!(asked.status(), StatusCode::FORBIDDEN);
    assert_eq!(web.store.queued().unwrap().len(), queued, "no code mailed");
    let mut stranger = SoftPasskey::new(true);
    assert!(
        open_with_passkey(&web, &token, &mut stranger)
            .await
            .is_err(),
        "another key"
    );
    // The patient's passkey opens it.
    let session = open_with_passkey(&web, &token, &mut phone)
        .await
        .expect("the passkey opens it");
    assert_eq!(
        web.get(&format!("/portal/{id}"), &session).await.status(),
        StatusCode::OK
    );

    // A lost phone: the sender resets the passkey (audited) and codes are mailed again.
    let csrf = web.session(&clinician).unwrap().csrf;
    let reset = web
        .post_form(
            &format!("/sent/{queue}/reset-passkey"),
            &clinician,
            &format!("csrf={csrf}&recipient=pat%40outside.test"),
        )
        .await;
    assert_eq!(
        common::location(&reset),
        format!("/sent/{queue}?done=passkey-reset")
    );
    let again = web.portal_visitor(&token).await;
    assert_eq!(
        web.get(&format!("/portal/{id}"), &again).await.status(),
        StatusCode::OK
    );
    assert!(
        web.store
            .portal_passkeys("pat@outside.test")
            .unwrap()
            .is_none(),
        "the reset forgot the passkey"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_can_require_a_proof_per_domain_and_per_content_rule() {
    let web = Web::new(LoginLimits::default());
    let doc = web.account("doc@clinic.test", Role::Staff);
    let clinician = web.signed_in(doc);
    let mut config = sealpost_policy::PolicyConfig::default();
    config.portal.proof_required_domains = vec!["outside.test".into()];
    web.rules
        .replace(sealpost_policy::Policy::new(config.clone()).unwrap());
    // pat@outside.test is in a listed domain: no proof, not sent.
    let (status, raw) = compose(&web, &clinician, &[]).await;
    assert_eq!(
        (status, raw.is_none()),
        (StatusCode::UNPROCESSABLE_ENTITY, true)
    );
    // Another domain, and a content rule that asks for a proof when it matches.
    config.portal.proof_required_domains = vec!["elsewhere.test".into()];
    config.content.push(sealpost_policy::ContentRule {
        name: "biopsy".into(),
        detector: sealpost_policy::Detector::Keywords {
            words: vec!["biopsy".into()],
        },
        action: sealpost_policy::Action::Portal,
        enabled: true,
        proof_required: true,
    });
    web.rules
        .replace(sealpost_policy::Policy::new(config.clone()).unwrap());
    let (status, raw) = compose(&web, &clinician, &[]).await;
    assert_eq!(
        (status, raw.is_none()),
        (StatusCode::UNPROCESSABLE_ENTITY, true),
        "the rule matched"
    );
    config.content.last_mut().unwrap().proof_required = false;
    web.rules
        .replace(sealpost_policy::Policy::new(config).unwrap());
    let (status, raw) = compose(&web, &clinician, &[]).await;
    assert_eq!(
        (status, raw.is_some()),
        (StatusCode::SEE_OTHER, true),
        "no rule asks for one"
    );
}
