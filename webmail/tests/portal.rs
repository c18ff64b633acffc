//! The pickup portal as its visitors and its attackers meet it, in process over the real
//! router and store: replies are bounded per day, in bytes per pickup, and by the sender's
//! quota, and sign-out takes the CSRF token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{body_text, Web};
use sealpost_auth::LoginLimits;
use sealpost_storage::{Actor, Role, PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX};

const RESULTS: &[u8] = b"From: doc@clinic.test\r\nTo: pat@outside.test\r\nSubject: Your results\r\n\
    Message-ID: <r1@clinic.test>\r\n\r\nAll is well.\r\n";

/// The portal session's CSRF token, from its message page.
async fn portal_csrf(web: &Web, cookie: &str, id: &str) -> String {
    let page = body_text(web.get(&format!("/portal/{id}"), cookie).await).await;
    let at = page.find("name=\"csrf\" value=\"").expect("a form with the token") + 19;
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
    let inbox = web.store.mailbox_by_name(account, "INBOX").unwrap().unwrap();
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

    // A second pickup to a sender whose mailbox is at its quota: refused, nothing delivered.
    let (token, id, _) = web.pickup(doc, "pat@outside.test", RESULTS);
    let patient = web.portal_visitor(&token).await;
    let id = id.to_string();
    let csrf = portal_csrf(&web, &patient, &id).await;
    let used = web.store.quota_usage(doc).unwrap();
    web.store.set_quota(doc, Some(used + 100), &Actor::cli()).unwrap();
    assert_eq!(
        reply(&web, &patient, &id, &csrf, "this will not fit").await,
        StatusCode::INSUFFICIENT_STORAGE
    );
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
