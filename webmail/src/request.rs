//! What handlers need of a request: the client's address, cookies, the session, CSRF checks.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sealpost_auth::websession::{self, Found};

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

/// Forms that carry the session's CSRF token (`csrf`).
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

/// The answer when the password-hash queue (or this account's or address's share of it) is
/// full: nothing was hashed or changed.
pub(crate) fn hashing_busy() -> Response {
    crate::html::message_page_status(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "Too many passwords are being checked right now; nothing was changed. Try again in a moment.",
    )
}
