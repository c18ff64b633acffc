//! What handlers need of a request: the client's address, cookies, the session, CSRF checks.
//!
//! The gates are extractors, each answering before the handler runs: `SignedIn` (a signed-in
//! session), `Enrolling` (one that may also still owe its first second factor), `Admin` and
//! `Auditor` (the console's roles; a request that changes something also needs a recent
//! confirmation with the passkey), `PortalVisitor` (a patient signed into the portal),
//! `PickupLink` (a live pickup link of the path), `Csrf<F>` (a form whose `csrf` field
//! matches the token of the session the gate before it found) and `FormCookie<F>` (a form
//! before any session, whose token matches the form cookie's). A handler names what it needs
//! in its arguments and checks nothing itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sealpost_auth::websession::{self, Found, Stage};
use sealpost_storage::{Account, Role};
use serde::Deserialize;

use crate::WebState;

/// The client's address, put on each request by `serve_connection`.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The session cookie: `__Host-` binds it to this host, path / and HTTPS.
pub(crate) const SESSION_COOKIE: &str = "__Host-sp_session";
/// Before a session exists, forms carry this cookie's value (double-submit CSRF token).
pub(crate) const FORM_COOKIE: &str = "__Host-sp_form";

pub(crate) use sealpost_storage::now_ms;

/// Runs store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// A cookie only this site's HTTPS pages send back, never readable by script.
pub(crate) fn set_cookie(name: &str, value: &str) -> (header::HeaderName, HeaderValue) {
    let text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict");
    (
        header::SET_COOKIE,
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("")),
    )
}

pub(crate) fn clear_cookie(name: &str) -> (header::HeaderName, HeaderValue) {
    let text = format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        header::SET_COOKIE,
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("")),
    )
}

/// 303 to `path`: after a form, the browser loads the next page with GET.
pub(crate) fn see_other(path: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, path.to_string())],
    )
        .into_response()
}

/// The live session of this request, if any.
pub(crate) async fn session(state: &Arc<WebState>, headers: &HeaderMap) -> Option<Found> {
    let value = cookie(headers, SESSION_COOKIE)?;
    let state = state.clone();
    blocking(move || websession::resume(&state.store, &value, now_ms(), &state.sign_in()))
        .await?
        .ok()
        .flatten()
}

/// A refused form: no valid CSRF token. Changes nothing.
pub(crate) fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        crate::html::message_page(
            "Form expired",
            "This form was not sent from this site's current page, so nothing was changed. Go back, reload the page and try again.",
        ),
    )
        .into_response()
}

/// The browser's user agent, for the session list.
pub(crate) fn agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Constant-time equality of two tokens.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A JSON error for the script, which shows it.
pub(crate) fn json_error(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": text }))).into_response()
}

/// The CSRF token a script request carries in its `X-CSRF-Token` header ("" if none).
pub(crate) fn script_token(headers: &HeaderMap) -> &str {
    headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The answer to a script request whose token does not match.
pub(crate) fn stale_page() -> Response {
    json_error(StatusCode::FORBIDDEN, "this page is out of date; reload it")
}

/// The pre-session form token: the cookie's, or a new one (then also set).
pub(crate) fn form_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, FORM_COOKIE) {
        Some(token) if token.len() >= 32 => (token, false),
        _ => (sealpost_auth::secrets::token(32), true),
    }
}

/// Whether a pre-session form or request carries the form cookie's token.
pub(crate) fn form_token_ok(headers: &HeaderMap, sent: &str) -> bool {
    cookie(headers, FORM_COOKIE).is_some_and(|token| token.len() >= 32 && same_token(&token, sent))
}

/// Forms that carry a CSRF token in their `csrf` field (`html::csrf_field`).
pub(crate) trait WithCsrf {
    fn csrf(&self) -> &str;
}

/// Implements `WithCsrf` for forms with a `csrf` field.
macro_rules! with_csrf {
    ($($form:ty),*) => {$(
        impl $crate::request::WithCsrf for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    )*};
}
pub(crate) use with_csrf;

/// A form with nothing but its token (sign-out, and buttons that say all in their path).
#[derive(Deserialize)]
pub(crate) struct TokenForm {
    pub(crate) csrf: String,
}

with_csrf!(TokenForm);

/// The token a form of this request must carry: the session's or the portal's, put here by
/// the gate that found it. Without one, the pre-session form cookie's.
#[derive(Clone)]
struct ExpectedToken(String);

/// The client's address (every request has it; without it, 403).
fn peer_of(parts: &Parts) -> Option<Peer> {
    parts.extensions.get::<Peer>().copied()
}

/// A form (`application/x-www-form-urlencoded`) of a session whose `csrf` field matches the
/// session's token: the token the gate before it found (`SignedIn`, `Enrolling`, `Admin`,
/// `Auditor`, `PortalVisitor`). Without such a gate it refuses (so a handler cannot take the
/// pre-session form cookie for a session's token by leaving its gate out). A malformed form
/// or a wrong token is answered 403 and changes nothing.
pub(crate) struct Csrf<F>(pub(crate) F);

impl<F> FromRequest<Arc<WebState>> for Csrf<F>
where
    F: serde::de::DeserializeOwned + WithCsrf + Send + 'static,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<WebState>) -> Result<Self, Response> {
        let Some(ExpectedToken(token)) = request.extensions().get::<ExpectedToken>().cloned()
        else {
            return Err(forbidden());
        };
        let axum::Form(form) = axum::Form::<F>::from_request(request, state)
            .await
            .map_err(|_| forbidden())?;
        if same_token(&token, form.csrf()) {
            Ok(Self(form))
        } else {
            Err(forbidden())
        }
    }
}

/// A form sent before any session (sign-in, enrolment, a pickup link's page) whose `csrf`
/// field matches the form cookie's token (double submit: another site can neither read nor
/// set the `__Host-` cookie). 403 otherwise, changing nothing.
pub(crate) struct FormCookie<F>(pub(crate) F);

impl<F> FromRequest<Arc<WebState>> for FormCookie<F>
where
    F: serde::de::DeserializeOwned + WithCsrf + Send + 'static,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<WebState>) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let axum::Form(form) = axum::Form::<F>::from_request(request, state)
            .await
            .map_err(|_| forbidden())?;
        if form_token_ok(&headers, form.csrf()) {
            Ok(Self(form))
        } else {
            Err(forbidden())
        }
    }
}

/// What the session of a request is to a gate.
enum Session {
    /// No session, or one at a stage the gate does not take.
    Not,
    /// A session the gate takes, whose account could not be read.
    Unreadable,
    /// A session the gate takes, and its account; its CSRF token is now the one forms must
    /// carry. (Boxed: the record is large next to the other answers.)
    Found(Box<(Found, Account)>),
}

/// The session of this request, if the session is at one of the stages `admit` takes.
async fn session_parts(
    parts: &mut Parts,
    state: &Arc<WebState>,
    admit: fn(&Stage) -> bool,
) -> Session {
    let Some(found) = session(state, &parts.headers)
        .await
        .filter(|f| admit(&f.session.stage))
    else {
        return Session::Not;
    };
    let (state, id) = (state.clone(), found.account);
    let Some(Ok(account)) = blocking(move || state.store.account(id)).await else {
        return Session::Unreadable;
    };
    parts
        .extensions
        .insert(ExpectedToken(found.session.csrf.clone()));
    Session::Found(Box::new((found, account)))
}

/// A signed-in or enrolling session of this request (the stages an account's own pages take),
/// with the client.
async fn own_session(
    parts: &mut Parts,
    state: &Arc<WebState>,
) -> Result<(Session, Peer), Response> {
    let peer = peer_of(parts).ok_or_else(forbidden)?;
    let own = |stage: &Stage| matches!(stage, Stage::SignedIn(_) | Stage::Enrolment);
    Ok((session_parts(parts, state, own).await, peer))
}

/// A signed-in session: its record, its account and the client. Anyone else is sent to the
/// start page, which sends each on by its stage (sign in, the second factor); an enrolling
/// session to finish enrolling first.
pub(crate) struct SignedIn {
    pub(crate) found: Found,
    pub(crate) account: Account,
    pub(crate) peer: Peer,
}

impl FromRequestParts<Arc<WebState>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Response> {
        match own_session(parts, state).await? {
            (Session::Found(both), _) if !both.0.session.signed_in() => Err(see_other("/security")),
            (Session::Found(both), peer) => {
                let Enrolling { found, account, .. } = Enrolling::of(*both, peer);
                Ok(Self {
                    found,
                    account,
                    peer,
                })
            }
            // No session, or one still owing its second factor: the start page sends each on.
            (Session::Not, _) => Err(see_other("/")),
            // Not back to the start page, which would send a signed-in session here again.
            (Session::Unreadable, _) => Err(see_other("/sign-in")),
        }
    }
}

/// A signed-in session, or one that owes its first second factor and may enrol it (and sign
/// out) but nothing more. Anyone else is sent to sign in.
pub(crate) struct Enrolling {
    pub(crate) found: Found,
    pub(crate) account: Account,
    pub(crate) peer: Peer,
}

impl Enrolling {
    fn of((found, account): (Found, Account), peer: Peer) -> Self {
        Self {
            found,
            account,
            peer,
        }
    }
}

impl FromRequestParts<Arc<WebState>> for Enrolling {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Response> {
        match own_session(parts, state).await? {
            (Session::Found(both), peer) => Ok(Self::of(*both, peer)),
            _ => Err(see_other("/sign-in")),
        }
    }
}

/// A console session of one of `roles`. A request that changes something (not GET or HEAD)
/// also needs a confirmation with the strongest factor (an admin's or auditor's passkey) in
/// the last minutes: a session left open is not enough.
async fn console_parts(
    parts: &mut Parts,
    state: &Arc<WebState>,
    roles: &[Role],
) -> Result<(Found, Account, Peer), Response> {
    let peer = peer_of(parts).ok_or_else(forbidden)?;
    let signed_in = |stage: &Stage| matches!(stage, Stage::SignedIn(_));
    let Session::Found(both) = session_parts(parts, state, signed_in).await else {
        return Err(see_other("/sign-in"));
    };
    let (found, account) = *both;
    if !roles.contains(&account.role) {
        return Err(crate::html::message_page_status(
            StatusCode::FORBIDDEN,
            "Not for your role",
            "This page is for administrators.",
        ));
    }
    let reads = parts.method == Method::GET || parts.method == Method::HEAD;
    if !reads && !found.session.recently_strong(now_ms()) {
        return Err(see_other("/reauth"));
    }
    Ok((found, account, peer))
}

/// A console gate: `$name` admits a session whose role is in `$roles` (see `console_parts`).
macro_rules! console_gate {
    ($(#[$doc:meta])* $name:ident, $roles:expr) => {
        $(#[$doc])*
        pub(crate) struct $name {
            pub(crate) found: Found,
            pub(crate) me: Account,
            pub(crate) peer: Peer,
        }

        impl FromRequestParts<Arc<WebState>> for $name {
            type Rejection = Response;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &Arc<WebState>,
            ) -> Result<Self, Response> {
                let (found, me, peer) = console_parts(parts, state, $roles).await?;
                Ok(Self { found, me, peer })
            }
        }
    };
}

console_gate!(
    /// An admin's console session: every console page but the audit log's.
    Admin,
    &[Role::Admin]
);
console_gate!(
    /// An admin's or an auditor's console session: the audit log's pages.
    Auditor,
    &[Role::Admin, Role::Auditor]
);

/// A patient signed into the portal: the recipient address and the client; the portal
/// session's CSRF token becomes the one forms must carry. Anyone else is told to open their
/// link.
pub(crate) struct PortalVisitor {
    pub(crate) recipient: String,
    pub(crate) csrf: String,
    pub(crate) peer: Peer,
}

impl FromRequestParts<Arc<WebState>> for PortalVisitor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Response> {
        let peer = peer_of(parts).ok_or_else(forbidden)?;
        let (recipient, csrf) = state
            .portal
            .session(&parts.headers)
            .ok_or_else(crate::portal::open_your_link)?;
        parts.extensions.insert(ExpectedToken(csrf.clone()));
        Ok(Self {
            recipient,
            csrf,
            peer,
        })
    }
}

/// The answer when the password-hash queue (or this account's or address's share of it) is
/// full: nothing was hashed or changed.
pub(crate) fn hashing_busy() -> Response {
    crate::html::message_page_status(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "Too many passwords are being checked right now; nothing was changed. Try again in a moment.",
    )
}
