//! Every route of the web application, for every role, in process (tower `oneshot` over the
//! real router and a real store; no network, no browser): the status each role gets, that
//! every POST without its CSRF token or with a wrong one is refused and changes nothing, and
//! that every response carries the Content-Security-Policy and the other security headers.
//! The routes are read from `src/lib.rs`: a route added without a line here fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use common::{Web, FORM_COOKIE, FORM_TOKEN};
use sealpost_auth::LoginLimits;
use sealpost_storage::{AccountId, Actor, Flags, InternalDate, NewMessage, Role};

const SOURCE: &str = include_str!("../src/lib.rs");

/// Who asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role5 {
    Anonymous,
    Staff,
    Admin,
    Auditor,
    Portal,
}
const ROLES: [Role5; 5] = [
    Role5::Anonymous,
    Role5::Staff,
    Role5::Admin,
    Role5::Auditor,
    Role5::Portal,
];

/// GET routes: the status for anonymous, staff, admin, auditor, portal visitor. 303 is a
/// redirect (to sign in, or to the page the role has); 403 is "not for your role".
const GETS: &[(&str, [u16; 5])] = &[
    ("/", [303, 303, 303, 303, 303]),
    ("/sign-in", [200, 200, 200, 200, 200]),
    ("/second-factor", [303, 303, 303, 303, 303]),
    ("/reauth", [303, 200, 200, 200, 303]),
    ("/security", [303, 200, 200, 200, 303]),
    ("/mail", [303, 303, 303, 303, 303]),
    // Mailbox numbers are each account's own: an admin's /mail/1 is the admin's INBOX.
    ("/mail/{mailbox}", [303, 200, 200, 200, 303]),
    ("/mail/{mailbox}/{uid}", [303, 200, 404, 404, 303]),
    (
        "/mail/{mailbox}/{uid}/attachment/{index}",
        [303, 200, 404, 404, 303],
    ),
    ("/mail/{mailbox}/{uid}/html", [303, 200, 404, 404, 303]),
    ("/compose", [303, 200, 200, 200, 303]),
    ("/sent", [303, 200, 200, 200, 303]),
    ("/sent/{queue}", [303, 200, 404, 404, 303]),
    ("/quarantine", [303, 200, 200, 200, 303]),
    // A visitor already signed in to the portal goes straight to the message.
    ("/pickup/{token}", [200, 200, 200, 200, 303]),
    ("/pickup/{token}/verify", [200, 200, 200, 200, 200]),
    // Without a portal session: "open the link in your email" (401); staff sessions are not
    // portal sessions.
    ("/portal", [401, 401, 401, 401, 200]),
    ("/portal/{id}", [401, 401, 401, 401, 200]),
    ("/portal/{id}/attachment/{index}", [401, 401, 401, 401, 200]),
    ("/admin/lockouts", [303, 403, 200, 403, 303]),
    ("/admin/accounts", [303, 403, 200, 403, 303]),
    ("/admin/accounts/{id}", [303, 403, 200, 403, 303]),
    ("/admin/queue", [303, 403, 200, 403, 303]),
    ("/admin/trace", [303, 403, 200, 403, 303]),
    ("/admin/health", [303, 403, 200, 403, 303]),
    ("/admin/holds", [303, 403, 200, 403, 303]),
    ("/admin/quarantine", [303, 403, 200, 403, 303]),
    ("/admin/retention", [303, 403, 200, 403, 303]),
    ("/admin/discovery", [303, 403, 200, 403, 303]),
    ("/admin/policies", [303, 403, 200, 403, 303]),
    ("/admin/audit", [303, 403, 200, 200, 303]),
    ("/admin/audit/export", [303, 403, 200, 200, 303]),
    // Only for the networks in [web] metrics_from (none here).
    ("/metrics", [404, 404, 404, 404, 404]),
    ("/enrol/{link}", [200, 200, 200, 200, 200]),
    ("/static/webauthn.js", [200, 200, 200, 200, 200]),
    ("/static/style.css", [200, 200, 200, 200, 200]),
    ("/static/logo", [404, 404, 404, 404, 404]),
    ("/favicon.ico", [204, 204, 204, 204, 204]),
];

/// POST routes: the status of a request with a wrong CSRF token, per role (one without a
/// token is refused too, perhaps before the form is read: 400 or 422). Nothing may change.
const POSTS: &[(&str, [u16; 5])] = &[
    ("/compose", [303, 403, 403, 403, 303]),
    ("/sent/{queue}/revoke", [303, 403, 403, 403, 303]),
    ("/pickup/{token}/code", [403, 403, 403, 403, 403]),
    ("/pickup/{token}/verify", [403, 403, 403, 403, 403]),
    ("/pickup/{token}/renew", [403, 403, 403, 403, 403]),
    ("/pickup/{token}/password", [403, 403, 403, 403, 403]),
    ("/portal/password", [401, 401, 401, 401, 403]),
    ("/portal/sign-out", [303, 303, 303, 303, 403]),
    ("/portal/{id}/reply", [401, 401, 401, 401, 403]),
    ("/portal/{id}/proof", [401, 401, 401, 401, 403]),
    ("/portal/passkey/start", [401, 401, 401, 401, 403]),
    ("/portal/passkey/finish", [401, 401, 401, 401, 403]),
    ("/pickup/{token}/passkey/start", [403, 403, 403, 403, 403]),
    ("/pickup/{token}/passkey/finish", [403, 403, 403, 403, 403]),
    ("/sent/{queue}/reset-passkey", [303, 403, 403, 403, 303]),
    ("/sign-in", [403, 403, 403, 403, 403]),
    ("/second-factor", [303, 403, 403, 403, 303]),
    ("/passkey/sign-in/start", [403, 403, 403, 403, 403]),
    ("/passkey/sign-in/finish", [403, 403, 403, 403, 403]),
    ("/sign-out", [303, 403, 403, 403, 303]),
    ("/reauth", [303, 403, 403, 403, 303]),
    ("/mail/{mailbox}/act", [303, 403, 403, 403, 303]),
    ("/admin/accounts", [303, 403, 403, 403, 303]),
    ("/admin/accounts/{id}/act", [303, 403, 403, 403, 303]),
    ("/admin/queue", [303, 403, 403, 403, 303]),
    ("/admin/holds", [303, 403, 403, 403, 303]),
    ("/quarantine", [303, 403, 403, 403, 303]),
    ("/admin/quarantine", [303, 403, 403, 403, 303]),
    ("/admin/retention", [303, 403, 403, 403, 303]),
    ("/admin/discovery/export", [303, 403, 403, 403, 303]),
    ("/admin/policies", [303, 403, 403, 403, 303]),
    ("/admin/policies/test", [303, 403, 403, 403, 303]),
    ("/admin/audit/verify", [303, 403, 403, 403, 303]),
    ("/enrol/{link}", [403, 403, 403, 403, 403]),
    ("/admin/lockouts/lift", [303, 403, 403, 403, 303]),
    ("/admin/portal-passkeys/reset", [303, 403, 403, 403, 303]),
    ("/security/totp/start", [303, 403, 403, 403, 303]),
    ("/security/totp/confirm", [303, 403, 403, 403, 303]),
    ("/security/totp/remove", [303, 403, 403, 403, 303]),
    ("/security/recovery", [303, 403, 403, 403, 303]),
    ("/security/password", [303, 403, 403, 403, 303]),
    ("/security/passkeys/start", [401, 403, 403, 403, 401]),
    ("/security/passkeys/finish", [401, 403, 403, 403, 401]),
    ("/security/passkeys/remove", [303, 403, 403, 403, 303]),
    ("/security/app-passwords", [303, 403, 403, 403, 303]),
    ("/security/app-passwords/revoke", [303, 403, 403, 403, 303]),
    ("/security/sessions/end", [303, 403, 403, 403, 303]),
    ("/security/sessions/end-all", [303, 403, 403, 403, 303]),
];

/// The Content-Security-Policy of every page but the sandboxed message frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The routes `src/lib.rs` declares: (method, path). Only `.route(path, get(..).post(..))`
/// is read; the router may add routes no other way (checked below), so none escapes.
fn declared_routes() -> BTreeSet<(String, String)> {
    let router = &SOURCE[SOURCE.find("pub fn router").expect("the router")..];
    let router = &router[..router.find(".with_state(").expect("the router's end")];
    for other in [
        ".nest(",
        ".merge(",
        ".route_service(",
        "put(",
        "delete(",
        "patch(",
        "any(",
    ] {
        assert!(
            !router.contains(other),
            "the router adds routes with {other}: read them here too"
        );
    }
    let mut routes = BTreeSet::new();
    for piece in router.split(".route(").skip(1) {
        // The route's text runs to the next `.route(` or the router's end.
        let text = piece.split(".fallback(").next().unwrap();
        let path = text.split('"').nth(1).expect("a route's path").to_string();
        let handlers = &text[text.find(',').unwrap()..];
        for method in ["get", "post"] {
            if handlers.contains(&format!("{method}(")) || handlers.contains(&format!(".{method}("))
            {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

struct Fixture {
    web: Web,
    staff: AccountId,
    /// Path parameters: name → value.
    params: Vec<(&'static str, String)>,
    /// Cookies per role.
    cookies: Vec<(Role5, String)>,
}

impl Fixture {
    async fn new() -> Fixture {
        let web = Web::new(LoginLimits::default());
        let store = web.store.clone();
        let staff = web.account("doc@clinic.test", Role::Staff);
        let admin = web.account("admin@clinic.test", Role::Admin);
        let auditor = web.account("audit@clinic.test", Role::Auditor);
        let newcomer = web.account("new@clinic.test", Role::Staff);
        let link = sealpost_auth::enrolment::issue(
            &store,
            newcomer,
            &Actor::cli(),
            sealpost_storage::now_ms(),
        )
        .unwrap();
        // A message with an attachment in the staff member's INBOX.
        let inbox = store.mailbox_by_name(staff, "INBOX").unwrap().unwrap();
        let raw = b"From: Lab <lab@outside.test>\r\nTo: doc@clinic.test\r\nSubject: Results\r\n\
            MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
            Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\nContent-Type: application/pdf\r\n\
            Content-Disposition: attachment; filename=r.pdf\r\n\r\n%PDF-1.4\r\n--b--\r\n";
        let summary = sealpost_mime::Summary::of(raw).to_bytes();
        let new = NewMessage {
            raw,
            flags: Flags::new(),
            internal_date: InternalDate::now(),
            summary: &summary,
            search_text: b"",
        };
        let appended = store.append(staff, inbox.id, &new).unwrap();
        // A message sent to a patient through the portal: its queue entry and pickup.
        let (token, pickup, queue) = web.pickup(staff, "pat@outside.test", raw);
        let mut fixture = Fixture {
            cookies: vec![
                (Role5::Anonymous, String::new()),
                (Role5::Staff, web.signed_in(staff)),
                (Role5::Admin, web.signed_in(admin)),
                (Role5::Auditor, web.signed_in(auditor)),
            ],
            web,
            staff,
            params: vec![
                ("{mailbox}", inbox.id.0.to_string()),
                ("{uid}", appended.uid.to_string()),
                ("{index}", "0".into()),
                ("{token}", token.clone()),
                ("{queue}", queue.to_string()),
                ("{link}", link.trim_start_matches("/enrol/").to_string()),
            ],
        };
        let portal = fixture.web.portal_visitor(&token).await;
        fixture.cookies.push((Role5::Portal, portal));
        fixture.params.push(("{id}", pickup.to_string()));
        fixture
    }

    fn path(&self, pattern: &str) -> String {
        let mut path = pattern.to_string();
        for (name, value) in &self.params {
            path = path.replace(name, value);
        }
        // /admin/accounts/{id} names an account, /portal/{id} a pickup.
        if pattern.starts_with("/admin/accounts/") {
            path = pattern
                .replace("{id}", &self.staff.0.to_string())
                .replace("{index}", "0");
        }
        assert!(
            !path.contains('{'),
            "{pattern}: a parameter without a value"
        );
        path
    }

    fn cookie(&self, role: Role5) -> &str {
        &self.cookies.iter().find(|(r, _)| *r == role).unwrap().1
    }

    /// What a change would show: the audit log's head, the queue, each account's web
    /// sessions, the lockout, the outbox.
    fn fingerprint(&self) -> String {
        let store = &self.web.store;
        let anchor = store.audit_anchor();
        let queued = store.queued().unwrap().len();
        let accounts = store.list_accounts().unwrap();
        let sessions: Vec<usize> = accounts
            .iter()
            .map(|a| store.web_sessions(a.id).unwrap().len())
            .collect();
        format!(
            "audit {} {:?}; queue {queued}; accounts {}; sessions {sessions:?}; locked {:?}; sent {}",
            anchor.seq,
            anchor.link,
            accounts.len(),
            self.web.lockout.locked_accounts(),
            self.web.sent.load(Ordering::SeqCst)
        )
    }
}

/// The security headers every response carries.
fn check_headers(what: &str, response: &Response<Body>, problems: &mut Vec<String>) {
    let headers = response.headers();
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    // The sandboxed message frame sets its own policy when it serves the message.
    let frame = (what.contains("/html as ") || what.ends_with("/html"))
        && response.status() == StatusCode::OK;
    let csp = get("content-security-policy");
    if frame {
        if !csp.contains("default-src 'none'") || !csp.contains("sandbox") {
            problems.push(format!("{what}: the message frame's CSP is {csp:?}"));
        }
    } else if csp != CSP {
        problems.push(format!("{what}: CSP {csp:?}"));
    }
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("strict-transport-security", "max-age=31536000"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        if get(name) != value {
            problems.push(format!("{what}: {name} is {:?}", get(name)));
        }
    }
    // The message frame is framed by the reading page only (frame-ancestors 'self').
    let framing = if frame { "SAMEORIGIN" } else { "DENY" };
    if get("x-frame-options") != framing {
        problems.push(format!(
            "{what}: x-frame-options {:?}",
            get("x-frame-options")
        ));
    }
    if !what.contains("/static/") && get("cache-control") != "no-store" {
        problems.push(format!("{what}: cache-control {:?}", get("cache-control")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_table_says_with_its_security_headers() {
    let fx = Fixture::new().await;
    // The table covers exactly the routes the router declares.
    let declared = declared_routes();
    let tabled: BTreeSet<(String, String)> = GETS
        .iter()
        .map(|(p, _)| ("GET".to_string(), p.to_string()))
        .chain(
            POSTS
                .iter()
                .map(|(p, _)| ("POST".to_string(), p.to_string())),
        )
        .collect();
    let missing: Vec<_> = declared.difference(&tabled).collect();
    let stale: Vec<_> = tabled.difference(&declared).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "routes without a line in the table: {missing:?}; lines for no route: {stale:?}"
    );
    assert!(
        declared.len() > 70,
        "the route reader found only {declared:?}"
    );

    let mut problems = Vec::new();
    let mut observed = String::new();
    for (pattern, expected) in GETS {
        let path = fx.path(pattern);
        let mut got = [0u16; 5];
        for (n, role) in ROLES.iter().enumerate() {
            let mut request = Request::get(&path);
            if !fx.cookie(*role).is_empty() {
                request = request.header(header::COOKIE, fx.cookie(*role));
            }
            let response = fx.web.send(request.body(Body::empty()).unwrap()).await;
            got[n] = response.status().as_u16();
            check_headers(&format!("GET {path} as {role:?}"), &response, &mut problems);
        }
        if got != *expected {
            problems.push(format!("GET {pattern}: expected {expected:?}, got {got:?}"));
        }
        observed.push_str(&format!("    (\"{pattern}\", {got:?}),\n"));
    }
    assert!(
        problems.is_empty(),
        "{}\n\nobserved:\n{observed}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_without_its_csrf_token_or_with_a_wrong_one_is_refused_and_changes_nothing() {
    let fx = Fixture::new().await;
    let mut problems = Vec::new();
    let mut observed = String::new();
    for (pattern, expected) in POSTS {
        let path = fx.path(pattern);
        let mut got = [0u16; 5];
        for (n, role) in ROLES.iter().enumerate() {
            for token in [None, Some("wrong-token-wrong-token-wrong-tok")] {
                let before = fx.fingerprint();
                // Every field a form of this route could want, but the token.
                let mut form = String::from(
                    "address=doc%40clinic.test&password=velvet+kettle+sonar+magpie&code=123456&to=x%40outside.test\
                     &subject=s&body=b&name=n&scope=imap&id=x&session=x&login=doc%40clinic.test&action=run\
                     &role=staff&recipient=pat%40outside.test&confirm=x&again=x&rules=x&sample=x&uid=1",
                );
                if let Some(token) = token {
                    form.push_str(&format!("&csrf={token}"));
                }
                // The passkey ceremonies' routes take JSON.
                let json = pattern.ends_with("/start") || pattern.ends_with("/finish");
                // The forms that carry files are multipart.
                let multipart = *pattern == "/compose" || pattern.ends_with("/reply");
                let mut request = Request::post(&path)
                    .header(
                        header::CONTENT_TYPE,
                        if json {
                            "application/json"
                        } else if multipart {
                            "multipart/form-data; boundary=XyZ"
                        } else {
                            "application/x-www-form-urlencoded"
                        },
                    )
                    .header("x-csrf-token", token.unwrap_or(""));
                // A pre-session form token cookie the wrong token does not match.
                let mut cookies = vec![format!("{FORM_COOKIE}={FORM_TOKEN}")];
                if !fx.cookie(*role).is_empty() {
                    cookies.push(fx.cookie(*role).to_string());
                }
                request = request.header(header::COOKIE, cookies.join("; "));
                let body = if json {
                    Body::from(
                        r#"{"address":"doc@clinic.test","name":"k","ceremony":"x","credential":{}}"#,
                    )
                } else if multipart {
                    let mut parts = String::new();
                    for (name, value) in form.split('&').filter_map(|pair| pair.split_once('=')) {
                        parts.push_str(&format!(
                            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                        ));
                    }
                    parts.push_str("--XyZ--\r\n");
                    Body::from(parts)
                } else {
                    Body::from(form)
                };
                let response = fx.web.send(request.body(body).unwrap()).await;
                let status = response.status().as_u16();
                check_headers(
                    &format!("POST {path} as {role:?}"),
                    &response,
                    &mut problems,
                );
                if response.status().is_success() {
                    problems.push(format!(
                        "POST {path} as {role:?} with token {token:?}: {status}"
                    ));
                }
                // The table holds the answer to a wrong token (the form is read, the token
                // compared); a form without one may already fail to read (422, 400).
                match token {
                    Some(_) => got[n] = status,
                    None if !(status == 303 || (400..500).contains(&status)) => {
                        problems.push(format!("POST {path} as {role:?} without a token: {status}"));
                    }
                    None => {}
                }
                let after = fx.fingerprint();
                if after != before {
                    problems.push(format!(
                        "POST {path} as {role:?} with token {token:?} changed something:\n  {before}\n  {after}"
                    ));
                }
            }
        }
        if got != *expected {
            problems.push(format!(
                "POST {pattern}: expected {expected:?}, got {got:?}"
            ));
        }
        observed.push_str(&format!("    (\"{pattern}\", {got:?}),\n"));
    }
    // With the right token, a console change is still refused to staff and auditors (the
    // role gate, not only the token): 403, nothing changed. Auditors may verify the log.
    for (pattern, _) in POSTS.iter().filter(|(p, _)| p.starts_with("/admin/")) {
        let path = fx.path(pattern);
        for role in [Role5::Staff, Role5::Auditor] {
            if role == Role5::Auditor && *pattern == "/admin/audit/verify" {
                continue;
            }
            let before = fx.fingerprint();
            let csrf = fx.web.session(fx.cookie(role)).unwrap().csrf;
            let response = fx
                .web
                .post_form(
                    &path,
                    fx.cookie(role),
                    &format!("csrf={csrf}&address=x%40clinic.test&login=doc%40clinic.test&action=run&id=x&rules=x&sample=x&case=x"),
                )
                .await;
            if response.status() != StatusCode::FORBIDDEN {
                problems.push(format!(
                    "POST {path} as {role:?} with its token: {}",
                    response.status()
                ));
            }
            if fx.fingerprint() != before {
                problems.push(format!(
                    "POST {path} as {role:?} with its token changed something"
                ));
            }
        }
    }
    // The sessions are all still there: no POST signed anyone out.
    for role in [Role5::Staff, Role5::Admin, Role5::Auditor] {
        let response = fx
            .web
            .send(
                Request::get("/security")
                    .header(header::COOKIE, fx.cookie(role))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        if response.status() != StatusCode::OK {
            problems.push(format!("{role:?} was signed out: {}", response.status()));
        }
    }
    let portal = fx
        .web
        .send(
            Request::get(fx.path("/portal/{id}"))
                .header(header::COOKIE, fx.cookie(Role5::Portal))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    if portal.status() != StatusCode::OK {
        problems.push(format!(
            "the portal visitor was signed out: {}",
            portal.status()
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\n\nobserved:\n{observed}",
        problems.join("\n")
    );
}
