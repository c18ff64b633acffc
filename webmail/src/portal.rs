//! The secure-pickup portal for outside recipients. A notification link (`/pickup/TOKEN`)
//! opens a page that asks the recipient to prove they own the address: a one-time code is
//! mailed to it (`CODE_DIGITS` digits, valid `CODE_MS`, `CODE_TRIES_MAX` tries). A proven
//! address gets a portal session (its own cookie, apart from staff sessions) that shows only
//! the pickups sent to that address: read, download attachments, reply. A reply lands in the
//! sender's INBOX and BACKUP as an internal message, never over the internet. Every view,
//! download, reply and code is audited; an ended link says whether it expired or was
//! withdrawn and offers to ask the sender for a new one.
//!
//! Codes and portal sessions live in memory (bounded): a restart asks the recipient for a
//! new code, and nothing about a recipient is written but the audit records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Extension, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use leptos::prelude::*;
use mail_builder::headers::address::Address;
use mail_builder::MessageBuilder;
use mail_parser::MessageParser;
use sealpost_storage::{
    Actor, AuditEvent, AuditOutcome, DeliveryTarget, Flags, InternalDate, NewMessage, Outbound,
    OutboundRecipient, Pickup, PickupId, PickupState, Placement, PortalReply, ProofCheck,
    ProofKind,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::html::{render, when, Frame};
use crate::request::{
    blocking, clear_cookie, cookie, form_token, form_token_ok, same_token, see_other, set_cookie,
    Csrf, FormCookie, PortalVisitor, TokenForm,
};
use crate::{Peer, WebState};

/// Digits of a one-time code.
pub(crate) const CODE_DIGITS: u32 = 6;
/// How long a code works, in ms.
pub(crate) const CODE_MS: u64 = 10 * 60 * 1000;
/// Wrong codes one code survives; then a new one must be asked for.
pub(crate) const CODE_TRIES_MAX: u8 = 5;
/// Codes one link may have mailed per `CODE_MS`.
pub(crate) const CODES_SENT_PER_WINDOW_MAX: u8 = 5;
/// Wrong codes one link takes per `CODE_BLOCK_MS`; then it takes no codes until that passes
/// (so guessing a 6-digit code stays hopeless over a link's whole life).
pub(crate) const CODE_FAILURES_PER_LINK_MAX: u16 = 20;
/// How long a link that took too many wrong codes refuses new ones, in ms (a day).
pub(crate) const CODE_BLOCK_MS: u64 = 24 * 3600 * 1000;
/// Codes (and their send counters) kept at once; past it the oldest go.
pub(crate) const CODES_MAX: usize = 10_000;
/// A portal session ends this long after its last request, in ms.
pub(crate) const PORTAL_IDLE_MS: u64 = 30 * 60 * 1000;
/// A portal session ends this long after it began, in ms.
pub(crate) const PORTAL_ABSOLUTE_MS: u64 = 12 * 3600 * 1000;
/// Portal sessions kept at once; past it the oldest go.
pub(crate) const PORTAL_SESSIONS_MAX: usize = 10_000;

/// The portal's session cookie.
const PORTAL_COOKIE: &str = "__Host-sp_portal";

struct Code {
    hash: [u8; 32],
    issued: Instant,
    tries_left: u8,
    /// Codes mailed in the current window, and when it began.
    sent: u8,
    window: Instant,
    /// Wrong codes given for this link since `failed_since` (kept across new codes).
    failed: u16,
    failed_since: Instant,
}

impl Code {
    /// Whether too many wrong codes were given for the link lately.
    fn blocked(&self) -> bool {
        self.failed >= CODE_FAILURES_PER_LINK_MAX
            && self.failed_since.elapsed() < Duration::from_millis(CODE_BLOCK_MS)
    }
}

/// Why no code was issued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoCode {
    /// `CODES_SENT_PER_WINDOW_MAX` were mailed in the last `CODE_MS`.
    TooMany,
    /// `CODE_FAILURES_PER_LINK_MAX` wrong codes were given in the last `CODE_BLOCK_MS`.
    Blocked,
}

struct PortalSession {
    recipient: String,
    csrf: String,
    started: Instant,
    last_seen: Instant,
    /// Pickups whose extra proof (passphrase or question) this session gave.
    proven: Vec<PickupId>,
}

/// Pickups one portal session remembers as proven (the oldest forgotten past it).
const PROVEN_PER_SESSION_MAX: usize = 100;

/// Codes under way and portal sessions, in memory.
#[derive(Default)]
pub(crate) struct PortalState {
    codes: Mutex<HashMap<PickupId, Code>>,
    sessions: Mutex<HashMap<[u8; 32], PortalSession>>,
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// What a code check said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CodeCheck {
    Right,
    Wrong {
        tries_left: u8,
    },
    /// None asked for, expired, or out of tries.
    NoCode,
}

impl PortalState {
    /// A new code for `pickup`, replacing any before; `None` when too many were mailed lately.
    pub(crate) fn issue_code(&self, pickup: PickupId) -> Result<String, NoCode> {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        let window = Duration::from_millis(CODE_MS);
        if codes.len() >= CODES_MAX {
            codes.retain(|_, c| c.window.elapsed() < window || c.blocked());
            if codes.len() >= CODES_MAX {
                if let Some(oldest) = codes.iter().min_by_key(|(_, c)| c.window).map(|(k, _)| *k) {
                    codes.remove(&oldest);
                }
            }
        }
        let now = Instant::now();
        let (mut sent, mut started, mut failed, mut failed_since) =
            codes.get(&pickup).map_or((0, now, 0, now), |c| {
                (c.sent, c.window, c.failed, c.failed_since)
            });
        if started.elapsed() >= window {
            (sent, started) = (0, now);
        }
        if failed_since.elapsed() >= Duration::from_millis(CODE_BLOCK_MS) {
            (failed, failed_since) = (0, now);
        }
        if failed >= CODE_FAILURES_PER_LINK_MAX {
            return Err(NoCode::Blocked);
        }
        if sent >= CODES_SENT_PER_WINDOW_MAX {
            return Err(NoCode::TooMany);
        }
        let code = format!("{:06}", rand::random::<u32>() % 10u32.pow(CODE_DIGITS));
        codes.insert(
            pickup,
            Code {
                hash: digest(&code),
                issued: now,
                tries_left: CODE_TRIES_MAX,
                sent: sent + 1,
                window: started,
                failed,
                failed_since,
            },
        );
        Ok(code)
    }

    /// Checks a code; a right one is used up, a wrong one costs a try.
    pub(crate) fn check_code(&self, pickup: PickupId, given: &str) -> CodeCheck {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(code) = codes.get_mut(&pickup) else {
            return CodeCheck::NoCode;
        };
        if code.tries_left == 0
            || code.issued.elapsed() >= Duration::from_millis(CODE_MS)
            || code.blocked()
        {
            return CodeCheck::NoCode;
        }
        let given: String = given.chars().filter(char::is_ascii_digit).collect();
        let hash = digest(&given);
        if same_token(&hex(&hash), &hex(&code.hash)) {
            code.tries_left = 0;
            return CodeCheck::Right;
        }
        code.tries_left -= 1;
        code.failed = code.failed.saturating_add(1);
        CodeCheck::Wrong {
            tries_left: code.tries_left,
        }
    }

    /// A new portal session for a proven address: the cookie's value.
    fn start_session(&self, recipient: &str) -> String {
        let secret = sealpost_auth::secrets::token(32);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| live(s));
        if sessions.len() >= PORTAL_SESSIONS_MAX {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        let now = Instant::now();
        sessions.insert(
            digest(&secret),
            PortalSession {
                recipient: recipient.to_lowercase(),
                csrf: sealpost_auth::secrets::token(32),
                started: now,
                last_seen: now,
                proven: Vec::new(),
            },
        );
        secret
    }

    /// The proven address and CSRF token of this request's portal session.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let secret = cookie(headers, PORTAL_COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(&secret);
        let session = sessions.get_mut(&key)?;
        if !live(session) {
            sessions.remove(&key);
            return None;
        }
        session.last_seen = Instant::now();
        Some((session.recipient.clone(), session.csrf.clone()))
    }

    /// Whether this request's session gave `pickup`'s extra proof.
    fn proven(&self, headers: &HeaderMap, pickup: PickupId) -> bool {
        let Some(secret) = cookie(headers, PORTAL_COOKIE) else {
            return false;
        };
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&digest(&secret))
            .is_some_and(|s| s.proven.contains(&pickup))
    }

    /// Whether this request's session gave any sender's extra proof (a passphrase or an
    /// answer told apart from email): only such a session may register a passkey.
    fn proven_any(&self, headers: &HeaderMap) -> bool {
        let Some(secret) = cookie(headers, PORTAL_COOKIE) else {
            return false;
        };
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&digest(&secret))
            .is_some_and(|s| !s.proven.is_empty())
    }

    fn prove(&self, headers: &HeaderMap, pickup: PickupId) {
        let Some(secret) = cookie(headers, PORTAL_COOKIE) else {
            return;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(session) = sessions.get_mut(&digest(&secret)) {
            if session.proven.len() >= PROVEN_PER_SESSION_MAX {
                session.proven.remove(0);
            }
            session.proven.push(pickup);
        }
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(secret) = cookie(headers, PORTAL_COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(&digest(&secret));
        }
    }
}

fn live(session: &PortalSession) -> bool {
    session.last_seen.elapsed() < Duration::from_millis(PORTAL_IDLE_MS)
        && session.started.elapsed() < Duration::from_millis(PORTAL_ABSOLUTE_MS)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// "pat@example.org" as "pa…@example.org": enough for its owner to recognise.
fn masked(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let shown: String = local.chars().take(2).collect();
            format!("{shown}…@{domain}")
        }
        None => "…".into(),
    }
}

fn portal_actor(recipient: &str, peer: &Peer) -> Actor {
    Actor {
        name: format!("portal:{recipient}"),
        peer: peer.0.ip().to_string(),
    }
}

fn page(title: &str, content: impl IntoView + 'static) -> axum::response::Html<String> {
    render(Frame::new(title), content)
}

fn unknown_link() -> Response {
    (
        StatusCode::NOT_FOUND,
        page(
            "Link not recognised",
            view! { <p>"This link does not lead to a message. Check that the whole link was copied from the email; links are long."</p> },
        ),
    )
        .into_response()
}

async fn pickup_of_token(state: &Arc<WebState>, token: String) -> Option<Pickup> {
    let state = state.clone();
    blocking(move || state.store.pickup(&token).ok().flatten())
        .await
        .flatten()
}

/// An ended link: what happened, and a way to ask the sender for a new one.
fn ended_page(pickup: &Pickup, token: &str, form: &str, asked: bool) -> Response {
    let (title, text) = match pickup.state {
        PickupState::Revoked => (
            "Message withdrawn",
            "The sender withdrew this message; it can no longer be opened.",
        ),
        _ => (
            "Link expired",
            "This link has expired, and the message can no longer be opened with it.",
        ),
    };
    let action = format!("/pickup/{token}/renew");
    let form = form.to_string();
    let ask = if asked || pickup.renewal_asked_ms.is_some() {
        let at = pickup
            .renewal_asked_ms
            .map(when)
            .unwrap_or_else(|| "just now".into());
        view! { <p class="notice" role="status">{format!("The sender was asked for a new link ({at}).")}</p> }
            .into_any()
    } else {
        view! {
            <form method="post" action=action>
                {crate::html::csrf_field(&form)}
                <button type="submit">"Ask the sender for a new link"</button>
            </form>
        }
        .into_any()
    };
    (
        StatusCode::GONE,
        page(
            title,
            view! { <section id="ended"><p>{text}</p>{ask}</section> },
        ),
    )
        .into_response()
}

/// The page a notification link opens.
pub(crate) async fn link(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(pickup) = pickup_of_token(&state, token.clone()).await else {
        return unknown_link();
    };
    let (form, new_form) = form_token(&headers);
    let set = new_form.then(|| set_cookie(crate::request::FORM_COOKIE, &form));
    if pickup.state != PickupState::Live {
        let response = ended_page(&pickup, &token, &form, false);
        return (AppendHeaders(set), response).into_response();
    }
    if let Some((recipient, _)) = state.portal.session(&headers) {
        if recipient.eq_ignore_ascii_case(&pickup.recipient) {
            return see_other(&format!("/portal/{}", pickup.id));
        }
    }
    if patient_keys(&state, &pickup.recipient).await.is_some() {
        let response = passkey_link_page(&token, &form, &pickup);
        return (AppendHeaders(set), response).into_response();
    }
    let (state2, recipient) = (state.clone(), pickup.recipient.clone());
    let has_password = blocking(move || {
        state2
            .store
            .has_portal_password(&recipient)
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    let response = link_page(&token, &form, &pickup, has_password, None, StatusCode::OK);
    (AppendHeaders(set), response).into_response()
}

/// The passkeys one address registered in the portal, as kept in the store.
#[derive(Serialize, Deserialize)]
struct PatientKeys {
    user: sealpost_auth::passkeys::Uuid,
    keys: Vec<sealpost_auth::passkeys::Passkey>,
}

/// Passkeys one portal address may register.
pub(crate) const PORTAL_PASSKEYS_MAX: usize = 5;

/// The address's passkeys, if it registered any (a record that cannot be read counts as
/// present: the portal then refuses codes rather than falling back to them).
async fn patient_keys(state: &Arc<WebState>, recipient: &str) -> Option<PatientKeys> {
    let (store, recipient) = (state.store.clone(), recipient.to_string());
    let stored = blocking(move || store.portal_passkeys(&recipient)).await;
    match stored {
        Some(Ok(None)) => None,
        Some(Ok(Some(bytes))) => Some(serde_json::from_slice(&bytes).unwrap_or(PatientKeys {
            user: sealpost_auth::passkeys::new_user_handle(),
            keys: Vec::new(),
        })),
        _ => Some(PatientKeys {
            user: sealpost_auth::passkeys::new_user_handle(),
            keys: Vec::new(),
        }),
    }
}

/// The link's page for an address with a passkey: the passkey opens it; no code is mailed.
fn passkey_link_page(token: &str, form: &str, pickup: &Pickup) -> Response {
    let organisation = crate::html::brand()
        .map(|b| b.organisation.clone())
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| "The sender".into());
    let (start, finish) = (
        format!("/pickup/{token}/passkey/start"),
        format!("/pickup/{token}/passkey/finish"),
    );
    let address = masked(&pickup.recipient);
    let content = view! {
        <section id="pickup">
            <p>{format!("{organisation} sent a secure message to {address}.")}</p>
            <form data-passkey="sign-in" data-start=start data-finish=finish id="with-passkey">
                <p>"This address opens its messages with the passkey you registered."</p>
                <button type="submit">"Open with my passkey"</button>
                <p class="passkey-status muted" role="status"></p>
            </form>
            <p class="muted">"Lost it? Ask the sender to reset your passkey; then a code is emailed again."</p>
        </section>
    };
    render(
        Frame::new("A secure message for you")
            .token(form)
            .script(true),
        content,
    )
    .into_response()
}

/// The answer to a code or password sign-in for an address that uses a passkey.
fn passkey_only() -> Response {
    crate::html::message_page_status(
        StatusCode::FORBIDDEN,
        "Use your passkey",
        "This address opens its messages with a passkey, not with emailed codes or a password. Lost it? Ask the sender to reset it.",
    )
}

/// A portal visitor starts registering a passkey for their address (JSON, the session's CSRF
/// token in the header).
pub(crate) async fn passkey_register_start(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    axum::Json(_request): axum::Json<serde_json::Value>,
) -> Response {
    let Some((recipient, csrf)) = state.portal.session(&headers) else {
        return crate::request::json_error(
            StatusCode::UNAUTHORIZED,
            "open the link in your email again",
        );
    };
    if !same_token(crate::request::script_token(&headers), &csrf) {
        return crate::request::stale_page();
    }
    // A mailed code proves only that one reads the address's mail: whoever does could
    // otherwise register their own passkey, shut the patient out and keep reading. So a
    // passkey is registered only by a session that gave a sender's proof told apart from email.
    if !state.portal.proven_any(&headers) {
        return crate::request::json_error(
            StatusCode::FORBIDDEN,
            "a passkey can be registered after you gave the passphrase or answer a sender asked for",
        );
    }
    let existing = patient_keys(&state, &recipient).await;
    let (user, keys) = match existing {
        Some(found) => (found.user, found.keys),
        None => (sealpost_auth::passkeys::new_user_handle(), Vec::new()),
    };
    if keys.len() >= PORTAL_PASSKEYS_MAX {
        return crate::request::json_error(
            StatusCode::BAD_REQUEST,
            "at most 5 passkeys for one address",
        );
    }
    match state
        .passkeys
        .start_registration(user, &recipient, &recipient, &keys)
    {
        Ok((options, ceremony_state)) => {
            let kept = serde_json::json!({ "state": ceremony_state, "recipient": recipient, "user": user }).to_string();
            let ceremony = state.ceremonies.start(
                crate::ceremony::Kind::PortalRegister,
                sealpost_storage::AccountId(0),
                kept,
            );
            let options: serde_json::Value = serde_json::from_str(&options).unwrap_or_default();
            axum::Json(serde_json::json!({ "ceremony": ceremony, "options": options }))
                .into_response()
        }
        Err(error) => {
            crate::request::json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct PasskeyAnswer {
    ceremony: String,
    credential: serde_json::Value,
}

/// The passkey's answer: kept for the address, audited; from now on its links open with it.
pub(crate) async fn passkey_register_finish(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<PasskeyAnswer>,
) -> Response {
    let Some((recipient, csrf)) = state.portal.session(&headers) else {
        return crate::request::json_error(
            StatusCode::UNAUTHORIZED,
            "open the link in your email again",
        );
    };
    if !same_token(crate::request::script_token(&headers), &csrf) {
        return crate::request::stale_page();
    }
    let Some((_, kept)) = state
        .ceremonies
        .finish(&request.ceremony, crate::ceremony::Kind::PortalRegister)
    else {
        return crate::request::json_error(
            StatusCode::BAD_REQUEST,
            "that took too long; try again",
        );
    };
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap_or_default();
    if kept["recipient"].as_str() != Some(recipient.as_str()) || !state.portal.proven_any(&headers)
    {
        return crate::request::json_error(StatusCode::FORBIDDEN, "not your ceremony");
    }
    let (Some(ceremony_state), Ok(user)) = (
        kept["state"].as_str(),
        serde_json::from_value::<sealpost_auth::passkeys::Uuid>(kept["user"].clone()),
    ) else {
        return crate::request::json_error(StatusCode::BAD_REQUEST, "try again");
    };
    let passkey = match state
        .passkeys
        .finish_registration(ceremony_state, &request.credential.to_string())
    {
        Ok(passkey) => passkey,
        Err(error) => {
            return crate::request::json_error(StatusCode::BAD_REQUEST, &error.to_string())
        }
    };
    let mut keys = patient_keys(&state, &recipient)
        .await
        .map(|k| k.keys)
        .unwrap_or_default();
    if keys.len() >= PORTAL_PASSKEYS_MAX || keys.iter().any(|k| k.cred_id() == passkey.cred_id()) {
        return crate::request::json_error(
            StatusCode::BAD_REQUEST,
            "this passkey is registered already",
        );
    }
    keys.push(passkey);
    let record = serde_json::to_vec(&PatientKeys { user, keys }).unwrap_or_default();
    let actor = portal_actor(&recipient, &peer);
    let (store, address) = (state.store.clone(), recipient.clone());
    let event = AuditEvent::new(&actor, "portal.passkey.add", format!("for {address}"));
    match blocking(move || store.set_portal_passkeys(&address, &record, vec![event])).await {
        Some(Ok(())) => {
            axum::Json(serde_json::json!({ "next": "/portal?done=passkey" })).into_response()
        }
        _ => crate::request::json_error(StatusCode::SERVICE_UNAVAILABLE, "try again shortly"),
    }
}

/// Whether a pre-session script request carries the form cookie's token.
fn script_form_token_ok(headers: &HeaderMap) -> bool {
    let sent = crate::request::script_token(headers);
    !sent.is_empty() && form_token_ok(headers, sent)
}

/// The link's passkey sign-in starts: options for the address's passkeys.
pub(crate) async fn passkey_sign_in_start(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !script_form_token_ok(&headers) {
        return crate::request::stale_page();
    }
    let Some(pickup) = pickup_of_token(&state, token.clone())
        .await
        .filter(|p| p.state == PickupState::Live)
    else {
        return crate::request::json_error(
            StatusCode::NOT_FOUND,
            "this link does not open a message",
        );
    };
    let Some(found) = patient_keys(&state, &pickup.recipient)
        .await
        .filter(|k| !k.keys.is_empty())
    else {
        return crate::request::json_error(StatusCode::BAD_REQUEST, "this address has no passkey");
    };
    match state.passkeys.start_sign_in(&found.keys) {
        Ok((options, ceremony_state)) => {
            let kept = serde_json::json!({ "state": ceremony_state, "token": token }).to_string();
            let ceremony = state.ceremonies.start(
                crate::ceremony::Kind::PortalSignIn,
                sealpost_storage::AccountId(0),
                kept,
            );
            let options: serde_json::Value = serde_json::from_str(&options).unwrap_or_default();
            axum::Json(serde_json::json!({ "ceremony": ceremony, "options": options }))
                .into_response()
        }
        Err(error) => {
            crate::request::json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
        }
    }
}

/// The passkey's answer: a portal session for the address (audited), the signature counter
/// kept; the script then opens the message.
pub(crate) async fn passkey_sign_in_finish(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    Path(token): Path<String>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<PasskeyAnswer>,
) -> Response {
    if !script_form_token_ok(&headers) {
        return crate::request::stale_page();
    }
    let Some((_, kept)) = state
        .ceremonies
        .finish(&request.ceremony, crate::ceremony::Kind::PortalSignIn)
    else {
        return crate::request::json_error(
            StatusCode::BAD_REQUEST,
            "that took too long; try again",
        );
    };
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap_or_default();
    if kept["token"].as_str() != Some(token.as_str()) {
        return crate::request::json_error(StatusCode::FORBIDDEN, "not this link's ceremony");
    }
    let Some(pickup) = pickup_of_token(&state, token.clone())
        .await
        .filter(|p| p.state == PickupState::Live)
    else {
        return crate::request::json_error(
            StatusCode::NOT_FOUND,
            "this link does not open a message",
        );
    };
    let Some(mut found) = patient_keys(&state, &pickup.recipient)
        .await
        .filter(|k| !k.keys.is_empty())
    else {
        return crate::request::json_error(StatusCode::BAD_REQUEST, "this address has no passkey");
    };
    let actor = portal_actor(&pickup.recipient, &peer);
    let checked = state.passkeys.finish_sign_in(
        kept["state"].as_str().unwrap_or_default(),
        &request.credential.to_string(),
        &mut found.keys,
    );
    let (store, address, id) = (state.store.clone(), pickup.recipient.clone(), pickup.id);
    if let Err(why) = checked {
        let event = AuditEvent::new(&actor, "portal.sign_in", format!("pickup {id}"))
            .outcome(AuditOutcome::Denied)
            .detail(format!("passkey refused: {why}"));
        let _ = blocking(move || store.audit(event)).await;
        return crate::request::json_error(
            StatusCode::UNAUTHORIZED,
            "the passkey was not accepted",
        );
    }
    let record = serde_json::to_vec(&found).unwrap_or_default();
    let event = AuditEvent::new(&actor, "portal.sign_in", format!("pickup {id}")).detail("passkey");
    if !matches!(
        blocking(move || store.set_portal_passkeys(&address, &record, vec![event])).await,
        Some(Ok(()))
    ) {
        return crate::request::json_error(StatusCode::SERVICE_UNAVAILABLE, "try again shortly");
    }
    let secret = state.portal.start_session(&pickup.recipient);
    (
        AppendHeaders([set_cookie(PORTAL_COOKIE, &secret)]),
        axum::Json(serde_json::json!({ "next": format!("/portal/{}", pickup.id) })),
    )
        .into_response()
}

/// The page of a live link: a code by mail, or the recipient's own password if they chose one.
fn link_page(
    token: &str,
    form: &str,
    pickup: &Pickup,
    has_password: bool,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let action = format!("/pickup/{token}/code");
    let organisation = crate::html::brand()
        .map(|b| b.organisation.clone())
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| "The sender".into());
    let address = masked(&pickup.recipient);
    let password = has_password.then(|| {
        let (action, form) = (format!("/pickup/{token}/password"), form.to_string());
        view! {
            <form method="post" action=action class="stack" id="with-password">
                <p>"Or use the password you chose on an earlier visit:"</p>
                {crate::html::csrf_field(&form)}
                <label for="password">"Your password"</label>
                <input type="password" id="password" name="password" autocomplete="current-password" required=true/>
                <button type="submit">"Open with my password"</button>
            </form>
        }
    });
    let form = form.to_string();
    let content = view! {
        <section id="pickup">
            {crate::html::error_line(error)}
            <p>{format!("{organisation} sent a secure message to {address}.")}</p>
            <p>"To open it, show that this address is yours: we email a 6-digit code to it, which you enter on the next page."</p>
            <form method="post" action=action id="with-code">
                {crate::html::csrf_field(&form)}
                <button type="submit">"Email me a code"</button>
            </form>
            {password}
        </section>
    };
    (status, page("A secure message for you", content)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    csrf: String,
    password: String,
}

/// A return visit with the recipient's own password, through the lockout every sign-in uses.
pub(crate) async fn password_sign_in(
    State(state): State<Arc<WebState>>,
    PickupLink {
        pickup,
        token,
        peer,
    }: PickupLink,
    FormCookie(form): FormCookie<PasswordForm>,
) -> Response {
    if patient_keys(&state, &pickup.recipient).await.is_some() {
        return passkey_only();
    }
    let login = format!("portal:{}", pickup.recipient);
    let client = peer.0.ip().to_string();
    let actor = portal_actor(&pickup.recipient, &peer);
    if state.lockout.check(&client, &login).is_err() {
        let event = AuditEvent::new(&actor, "portal.sign_in", format!("pickup {}", pickup.id))
            .outcome(AuditOutcome::Denied)
            .detail("locked out");
        let state2 = state.clone();
        let _ = blocking(move || state2.store.audit(event)).await;
        return link_page(
            &token,
            &form.csrf,
            &pickup,
            true,
            Some("Too many wrong passwords; use a code by mail, or try again later.".into()),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let Some(ticket) = state.lockout.admit_hash(&client, &login) else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Too many passwords are being checked right now; try again in a moment.",
        );
    };
    let (state2, recipient, password) = (
        state.clone(),
        pickup.recipient.clone(),
        form.password.clone(),
    );
    let right = blocking(move || {
        let _ticket = ticket;
        state2.store.check_portal_password(&recipient, &password)
    })
    .await
    .and_then(Result::ok);
    let Some(right) = right else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The password could not be checked just now; try again in a minute.",
        );
    };
    let mut event = AuditEvent::new(&actor, "portal.sign_in", format!("pickup {}", pickup.id))
        .detail("password");
    if !right {
        event = event.outcome(AuditOutcome::Denied);
    }
    let state2 = state.clone();
    if !matches!(
        blocking(move || state2.store.audit(event)).await,
        Some(Ok(_))
    ) {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The password could not be checked just now; try again in a minute.",
        );
    }
    if !right {
        let pause = state.lockout.failed(&client, &login);
        tokio::time::sleep(pause).await;
        return link_page(
            &token,
            &form.csrf,
            &pickup,
            true,
            Some("That password is not right.".into()),
            StatusCode::UNAUTHORIZED,
        );
    }
    state.lockout.succeeded(&login);
    signed_in(&state, &pickup)
}

/// Starts the portal session of a proven address and shows the pickup.
fn signed_in(state: &WebState, pickup: &Pickup) -> Response {
    let secret = state.portal.start_session(&pickup.recipient);
    let location = HeaderValue::from_str(&format!("/portal/{}", pickup.id))
        .unwrap_or(HeaderValue::from_static("/portal"));
    (
        StatusCode::SEE_OTHER,
        AppendHeaders([
            (header::LOCATION, location),
            set_cookie(PORTAL_COOKIE, &secret),
        ]),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ChooseForm {
    csrf: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    action: String,
}

/// The recipient chooses (or forgets) a password for return visits.
pub(crate) async fn choose_password(
    State(state): State<Arc<WebState>>,
    PortalVisitor {
        recipient, peer, ..
    }: PortalVisitor,
    Csrf(form): Csrf<ChooseForm>,
) -> Response {
    let actor = portal_actor(&recipient, &peer);
    if form.action == "remove" {
        let state2 = state.clone();
        return match blocking(move || state2.store.remove_portal_password(&recipient, &actor)).await
        {
            Some(Ok(())) => see_other("/portal?done=password-removed"),
            _ => crate::html::message_page_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not changed",
                "Try again in a minute.",
            ),
        };
    }
    if form.password != form.confirm {
        return see_other("/portal?done=password-mismatch");
    }
    if let Err(weakness) = sealpost_auth::password::check(&form.password, &[&recipient]) {
        let text = format!("Not set: {weakness}.");
        return crate::html::message_page_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose another password",
            &text,
        );
    }
    let Some(ticket) = state
        .lockout
        .admit_hash(&peer.0.ip().to_string(), &format!("portal:{recipient}"))
    else {
        return crate::request::hashing_busy();
    };
    let state2 = state.clone();
    let password = form.password;
    let set = blocking(move || {
        let _ticket = ticket;
        state2
            .store
            .set_portal_password(&recipient, &password, &actor)
    });
    match set.await {
        Some(Ok(())) => see_other("/portal?done=password"),
        _ => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not set",
            "Try again in a minute.",
        ),
    }
}

/// A live pickup link of the request's path (`/pickup/{token}/...`): the pickup, the link's
/// token and the client. Anything else is answered before the handler runs: 403 (no form
/// cookie, so no form of this site's), 404 (unknown link), 410 (ended). Its forms come with
/// `Csrf`, checked against the form cookie.
pub(crate) struct PickupLink {
    pickup: Pickup,
    token: String,
    peer: Peer,
}

impl axum::extract::FromRequestParts<Arc<WebState>> for PickupLink {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<Peer>()
            .copied()
            .ok_or_else(crate::request::forbidden)?;
        let form = cookie(&parts.headers, crate::request::FORM_COOKIE)
            .filter(|token| token.len() >= 32)
            .ok_or_else(crate::request::forbidden)?;
        let Path(token) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| unknown_link())?;
        let Some(pickup) = pickup_of_token(state, token.clone()).await else {
            return Err(unknown_link());
        };
        if pickup.state != PickupState::Live {
            return Err(ended_page(&pickup, &token, &form, false));
        }
        Ok(Self {
            pickup,
            token,
            peer,
        })
    }
}

crate::request::with_csrf!(CodeForm, PasswordForm, ChooseForm, ProofForm);

/// Mails a code to the pickup's recipient, through the queue like every notice.
pub(crate) async fn send_code(
    State(state): State<Arc<WebState>>,
    PickupLink {
        pickup,
        token,
        peer,
    }: PickupLink,
    FormCookie(_): FormCookie<TokenForm>,
) -> Response {
    // An address with a passkey is never mailed a code: whoever reads its mail gets nothing.
    if patient_keys(&state, &pickup.recipient).await.is_some() {
        return passkey_only();
    }
    let code = match state.portal.issue_code(pickup.id) {
        Ok(code) => code,
        Err(NoCode::TooMany) => {
            return crate::html::message_page_status(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many codes",
                "Several codes were sent in the last minutes. Use the newest one, or wait ten minutes and ask again.",
            )
        }
        Err(NoCode::Blocked) => {
            return crate::html::message_page_status(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong codes",
                "Too many wrong codes were entered for this link; it takes no codes for a day. Ask the sender if you cannot wait.",
            )
        }
    };
    let notice = code_notice(&state, &pickup.recipient, &code);
    let (state2, actor) = (state.clone(), portal_actor(&pickup.recipient, &peer));
    let (account, recipient, from, id) = (
        pickup.account,
        pickup.recipient.clone(),
        state.sending.notice_from.clone(),
        pickup.id,
    );
    let queued = blocking(move || {
        let store = &state2.store;
        let summary = sealpost_mime::Indexed::of(&notice).summary_bytes();
        let envelope = Outbound {
            from,
            recipients: vec![OutboundRecipient {
                address: recipient,
                ..OutboundRecipient::default()
            }],
            env_id: None,
            ret: None,
            notice: true,
        };
        // No folder keeps the code: a copy in the sender's BACKUP would let staff prove an
        // address that is not theirs.
        let target = DeliveryTarget {
            account,
            placement: Placement::QueueOnly,
            outbound: Some(envelope),
        };
        let message = NewMessage {
            raw: &notice,
            flags: Flags::new(),
            internal_date: InternalDate::now(),
            summary: &summary,
            search_text: b"",
        };
        let event = AuditEvent::new(&actor, "portal.code.send", format!("pickup {id}"));
        store.deliver_all(&[target], &message, &|_| vec![event.clone()])
    })
    .await;
    match queued {
        Some(Ok(_)) => {
            if let Some(waker) = &state.sending.queue_waker {
                waker.notify_one();
            }
            see_other(&format!("/pickup/{token}/verify"))
        }
        _ => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "No code sent",
            "The code could not be sent just now; try again in a minute.",
        ),
    }
}

/// The code email: who sends it and the code; nothing of the message.
fn code_notice(state: &WebState, recipient: &str, code: &str) -> Vec<u8> {
    let organisation = crate::html::brand()
        .map(|b| b.organisation.clone())
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| state.hostname.clone());
    let minutes = CODE_MS / 60_000;
    let text = format!(
        "Your code to open the secure message from {organisation}:\r\n\r\n    {code}\r\n\r\n\
         It works for {minutes} minutes. If you did not ask for it, you may delete this email.\r\n"
    );
    MessageBuilder::new()
        .from(Address::new_address(
            Some(organisation.clone()),
            state.sending.notice_from.clone(),
        ))
        .to(Address::new_address(None::<String>, recipient.to_string()))
        .subject(format!("Your code: {code}"))
        .message_id(format!(
            "{}@{}",
            hex(&rand::random::<[u8; 12]>()),
            state.hostname
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .text_body(text)
        .write_to_vec()
        .unwrap_or_default()
}

pub(crate) async fn verify_page(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(pickup) = pickup_of_token(&state, token.clone()).await else {
        return unknown_link();
    };
    let (form, new_form) = form_token(&headers);
    if pickup.state != PickupState::Live {
        return ended_page(&pickup, &token, &form, false);
    }
    let set = new_form.then(|| set_cookie(crate::request::FORM_COOKIE, &form));
    (
        AppendHeaders(set),
        code_form(&token, &form, &pickup.recipient, None, StatusCode::OK),
    )
        .into_response()
}

fn code_form(
    token: &str,
    form: &str,
    recipient: &str,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let (action, again, form, form2) = (
        format!("/pickup/{token}/verify"),
        format!("/pickup/{token}/code"),
        form.to_string(),
        form.to_string(),
    );
    let address = masked(recipient);
    let content = view! {
        <section id="verify">
            {crate::html::error_line(error)}
            <p>{format!("We emailed a {CODE_DIGITS}-digit code to {address}. It works for {} minutes.", CODE_MS / 60_000)}</p>
            <form method="post" action=action class="stack">
                {crate::html::csrf_field(&form)}
                <label for="code">"Code"</label>
                <input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="12" required=true/>
                <button type="submit">"Open the message"</button>
            </form>
            <form method="post" action=again>
                {crate::html::csrf_field(&form2)}
                <button type="submit" class="quiet">"Send a new code"</button>
            </form>
        </section>
    };
    (status, page("Enter your code", content)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct CodeForm {
    csrf: String,
    code: String,
}

pub(crate) async fn verify(
    State(state): State<Arc<WebState>>,
    PickupLink {
        pickup,
        token,
        peer,
    }: PickupLink,
    FormCookie(form): FormCookie<CodeForm>,
) -> Response {
    // A code issued before the address registered a passkey opens nothing now.
    if patient_keys(&state, &pickup.recipient).await.is_some() {
        return passkey_only();
    }
    let check = state.portal.check_code(pickup.id, &form.code);
    let actor = portal_actor(&pickup.recipient, &peer);
    let mut event = AuditEvent::new(
        &actor,
        "portal.code.verify",
        format!("pickup {}", pickup.id),
    );
    if check != CodeCheck::Right {
        event = event.outcome(AuditOutcome::Denied);
    }
    let state2 = state.clone();
    let audited = blocking(move || state2.store.audit(event)).await;
    if !matches!(audited, Some(Ok(_))) {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The code could not be checked just now; try again in a minute.",
        );
    }
    match check {
        CodeCheck::Right => signed_in(&state, &pickup),
        CodeCheck::Wrong { tries_left } if tries_left > 0 => code_form(
            &token,
            &form.csrf,
            &pickup.recipient,
            Some(format!("That code is not right. {tries_left} tries left.")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        _ => code_form(
            &token,
            &form.csrf,
            &pickup.recipient,
            Some(
                "That code no longer works (too many tries, or too old). Ask for a new code."
                    .into(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    }
}

/// Asks the sender of an ended pickup for a new link: a note in their INBOX and BACKUP.
pub(crate) async fn renew(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    Path(token): Path<String>,
    FormCookie(form): FormCookie<TokenForm>,
) -> Response {
    let Some(pickup) = pickup_of_token(&state, token.clone()).await else {
        return unknown_link();
    };
    if pickup.state == PickupState::Live {
        return see_other(&format!("/pickup/{token}"));
    }
    let actor = portal_actor(&pickup.recipient, &peer);
    let (state2, p) = (state.clone(), pickup.clone());
    let hostname = state.hostname.clone();
    let from = state.sending.notice_from.clone();
    let asked = blocking(move || {
        let store = &state2.store;
        let event = AuditEvent::new(&actor, "pickup.renewal", format!("pickup {}", p.id));
        if !store.ask_pickup_renewal(p.id, event).ok()? {
            return Some(false);
        }
        let text = format!(
            "{recipient} followed the link to the secure message you sent on {sent}, and it had {what}.\r\n\
             They ask for a new one: send the message to them again if they should still have it.\r\n",
            recipient = p.recipient,
            sent = when(p.created_ms),
            what = if p.state == PickupState::Revoked {
                "been withdrawn"
            } else {
                "expired"
            },
        );
        let raw = MessageBuilder::new()
            .from(Address::new_address(Some("Secure portal"), from))
            .to(Address::new_address(None::<String>, p.sender.clone()))
            .subject(format!("{} asks for a new secure link", p.recipient))
            .message_id(format!("{}@{hostname}", hex(&rand::random::<[u8; 12]>())))
            .text_body(text)
            .write_to_vec()
            .ok()?;
        deliver_internal(store, p.account, &raw, Vec::new(), Placement::Notice).ok()?;
        Some(true)
    })
    .await
    .flatten();
    match asked {
        Some(_) => ended_page(&pickup, &token, &form.csrf, true),
        None => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not sent",
            "The request could not be sent just now; try again in a minute.",
        ),
    }
}

/// Delivers a message from the portal into the sending account's INBOX and BACKUP, with
/// `events` in the same write: a patient's reply as mail from outside (`Placement::Inbox`,
/// refused when the account is at its quota), the portal's notices as the server's own
/// (`Placement::Notice`, which a full mailbox still takes).
fn deliver_internal(
    store: &sealpost_storage::Store,
    account: sealpost_storage::AccountId,
    raw: &[u8],
    events: Vec<AuditEvent>,
    placement: Placement,
) -> Result<(), sealpost_storage::Error> {
    let index = sealpost_mime::Indexed::of(raw);
    let (summary, text) = (index.summary_bytes(), index.search_bytes());
    let target = DeliveryTarget {
        account,
        placement,
        outbound: None,
    };
    let message = NewMessage {
        raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: &summary,
        search_text: &text,
    };
    store.deliver_all(&[target], &message, &|_| events.clone())?;
    Ok(())
}

/// The answer to a portal request without a portal session.
pub(crate) fn open_your_link() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        page(
            "Open your link",
            view! { <p>"To read your secure messages, follow the link in the email you received and enter the code we send you."</p> },
        ),
    )
        .into_response()
}

/// The pickup `id` if this session's address may open it: 404 unknown, 403 another's.
async fn own_pickup(state: &Arc<WebState>, recipient: &str, id: &str) -> Result<Pickup, Response> {
    let Ok(id) = id.parse::<PickupId>() else {
        return Err(crate::html::message_page_status(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such message.",
        ));
    };
    let state2 = state.clone();
    let Some(Some(pickup)) = blocking(move || state2.store.pickup_by_id(id).ok().flatten()).await
    else {
        return Err(crate::html::message_page_status(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such message.",
        ));
    };
    if !pickup.recipient.eq_ignore_ascii_case(recipient) {
        return Err(crate::html::message_page_status(
            StatusCode::FORBIDDEN,
            "Not yours",
            "This message was sent to another address; it cannot be opened here.",
        ));
    }
    Ok(pickup)
}

/// The Message-ID of the message a pickup holds, from its delivery record (the proof is
/// kept under it, written before the message was submitted).
/// `Err` when the record cannot be read: the caller then fails closed.
async fn message_id_of(state: &Arc<WebState>, pickup: &Pickup) -> Result<Option<String>, ()> {
    let (store, account, queue) = (state.store.clone(), pickup.account, pickup.queue);
    blocking(move || {
        let delivery = store.delivery(account, queue).map_err(|_| ())?;
        Ok(delivery
            .and_then(|d| sealpost_mime::Summary::from_bytes(&d.summary))
            .and_then(|summary| sealpost_mime::Shown::of_imap(&summary.envelope).message_id))
    })
    .await
    .unwrap_or(Err(()))
}

/// What the sender asked of this pickup's recipient besides the code, if anything: its kind,
/// the tries left and the message's id.
async fn proof_asked(
    state: &Arc<WebState>,
    pickup: &Pickup,
) -> Result<Option<(ProofKind, u8, String)>, Response> {
    let unavailable = || {
        crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The message cannot be opened just now; try again in a minute.",
        )
    };
    // No Message-ID: the message was not composed on the web, where proofs are set.
    let Some(message_id) = message_id_of(state, pickup)
        .await
        .map_err(|()| unavailable())?
    else {
        return Ok(None);
    };
    let (store, account, recipient, id) = (
        state.store.clone(),
        pickup.account,
        pickup.recipient.clone(),
        message_id.clone(),
    );
    match blocking(move || store.pickup_proof(account, &id, &recipient)).await {
        Some(Ok(asked)) => Ok(asked.map(|(kind, left)| (kind, left, message_id))),
        // Fail closed: a proof that cannot be read is not given.
        _ => Err(crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The message cannot be opened just now; try again in a minute.",
        )),
    }
}

/// The message opens only to a session that gave the sender's extra proof, if one was asked:
/// otherwise the page asking for it (401), or, out of tries, the page saying so (423).
async fn gate(
    state: &Arc<WebState>,
    headers: &HeaderMap,
    pickup: &Pickup,
    csrf: &str,
) -> Result<(), Response> {
    if state.portal.proven(headers, pickup.id) {
        return Ok(());
    }
    match proof_asked(state, pickup).await? {
        None => Ok(()),
        Some((_, 0, _)) => Err(locked_page()),
        Some((kind, left, _)) => Err(proof_form(pickup, kind, left, csrf, None)),
    }
}

fn locked_page() -> Response {
    crate::html::message_page_status(
        StatusCode::LOCKED,
        "Locked",
        "The answers given for this message were wrong too many times, so it no longer opens. \
         The sender has been told; call them if you should have it.",
    )
}

fn proof_form(
    pickup: &Pickup,
    kind: ProofKind,
    left: u8,
    csrf: &str,
    error: Option<String>,
) -> Response {
    let action = format!("/portal/{}/proof", pickup.id);
    let (csrf, sender) = (csrf.to_string(), pickup.sender.clone());
    let fields = match kind {
        ProofKind::Passphrase => view! {
            <p>{format!("{sender} gave you a passphrase for this message, by phone or in person.")}</p>
            <label for="passphrase">"Passphrase"</label>
            <input type="password" id="passphrase" name="passphrase" autocomplete="off" required=true/>
        }
        .into_any(),
        ProofKind::Question => view! {
            <p>{format!("{sender} asks for your date of birth and surname before this message opens.")}</p>
            <label for="birth_date">"Date of birth"</label>
            <input type="date" id="birth_date" name="birth_date" required=true/>
            <label for="surname">"Surname"</label>
            <input type="text" id="surname" name="surname" autocomplete="family-name" required=true/>
        }
        .into_any(),
    };
    let content = view! {
        {crate::html::error_line(error)}
        <form method="post" action=action class="stack" id="proof-form">
            {crate::html::csrf_field(&csrf)}
            {fields}
            <p class="muted">{format!("{left} tries left.")}</p>
            <button type="submit">"Open the message"</button>
        </form>
    };
    (StatusCode::UNAUTHORIZED, page("One more step", content)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct ProofForm {
    csrf: String,
    #[serde(default)]
    passphrase: String,
    #[serde(default)]
    birth_date: String,
    #[serde(default)]
    surname: String,
}

/// The recipient's answer to the sender's extra proof: right, the session may open the
/// message; wrong, a try is used; the last wrong one locks the message and tells the sender.
/// Every answer is audited; each costs one argon2 check through the server's hash queue.
pub(crate) async fn prove(
    State(state): State<Arc<WebState>>,
    PortalVisitor {
        recipient,
        csrf,
        peer,
    }: PortalVisitor,
    Path(id): Path<String>,
    headers: HeaderMap,
    Csrf(form): Csrf<ProofForm>,
) -> Response {
    let pickup = match own_pickup(&state, &recipient, &id).await {
        Ok(pickup) => pickup,
        Err(response) => return response,
    };
    let (kind, message_id) = match proof_asked(&state, &pickup).await {
        Ok(Some((_, 0, _))) => return locked_page(),
        Ok(Some((kind, _, message_id))) => (kind, message_id),
        Ok(None) => return see_other(&format!("/portal/{}", pickup.id)),
        Err(response) => return response,
    };
    let answer = match kind {
        ProofKind::Passphrase => form.passphrase.clone(),
        ProofKind::Question => crate::compose::question_answer(&form.birth_date, &form.surname),
    };
    let Some(ticket) = state
        .lockout
        .admit_hash(&peer.0.ip().to_string(), &format!("portal:{recipient}"))
    else {
        return crate::request::hashing_busy();
    };
    let actor = portal_actor(&pickup.recipient, &peer);
    let (state2, p) = (state.clone(), pickup.clone());
    let hostname = state.hostname.clone();
    let from = state.sending.notice_from.clone();
    let checked = blocking(move || {
        let _ticket = ticket;
        let store = &state2.store;
        let event = AuditEvent::new(&actor, "pickup.proof", format!("pickup {}", p.id)).detail(format!("{kind:?}"));
        let check = store.check_pickup_proof(p.account, &message_id, &p.recipient, &answer, event).ok()?;
        if check == ProofCheck::Locked {
            let text = format!(
                "{recipient} gave a wrong {what} five times for the secure message you sent on {sent}.\r\n\
                 It no longer opens. If they should have it, send it again with a new {what}, told to them apart from email.\r\n",
                recipient = p.recipient,
                sent = when(p.created_ms),
                what = match kind {
                    ProofKind::Passphrase => "passphrase",
                    ProofKind::Question => "date of birth and surname",
                },
            );
            let raw = MessageBuilder::new()
                .from(Address::new_address(Some("Secure portal"), from))
                .to(Address::new_address(None::<String>, p.sender.clone()))
                .subject(format!("A secure message to {} is locked", p.recipient))
                .message_id(format!("{}@{hostname}", hex(&rand::random::<[u8; 12]>())))
                .text_body(text)
                .write_to_vec()
                .ok()?;
            deliver_internal(store, p.account, &raw, Vec::new(), Placement::Notice).ok()?;
        }
        Some(check)
    })
    .await
    .flatten();
    match checked {
        Some(ProofCheck::Right) => {
            state.portal.prove(&headers, pickup.id);
            see_other(&format!("/portal/{}", pickup.id))
        }
        Some(ProofCheck::NotAsked) => see_other(&format!("/portal/{}", pickup.id)),
        Some(ProofCheck::Wrong { tries_left }) => proof_form(
            &pickup,
            kind,
            tries_left,
            &csrf,
            Some(format!("That was not right. {tries_left} tries left.")),
        ),
        Some(ProofCheck::Locked) => locked_page(),
        None => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The answer could not be checked just now; try again in a minute.",
        ),
    }
}

/// Every pickup of the session's address.
pub(crate) async fn home(
    State(state): State<Arc<WebState>>,
    visitor: PortalVisitor,
    Query(query): Query<DoneQuery>,
    headers: HeaderMap,
) -> Response {
    let PortalVisitor {
        recipient, csrf, ..
    } = visitor;
    let (state2, address) = (state.clone(), recipient.clone());
    let (pickups, has_password) = blocking(move || {
        let pickups = state2.store.pickups_for(&address).unwrap_or_default();
        (
            pickups,
            state2.store.has_portal_password(&address).unwrap_or(false),
        )
    })
    .await
    .unwrap_or_default();
    let rows: Vec<_> = pickups
        .iter()
        .map(|p| {
            let href = format!("/portal/{}", p.id);
            let state = match p.state {
                PickupState::Live => format!("until {}", when(p.expires_ms)),
                PickupState::Expired => "expired".into(),
                PickupState::Revoked => "withdrawn".into(),
            };
            view! { <tr><td><a href=href>{format!("From {}", p.sender)}</a></td><td>{when(p.created_ms)}</td><td>{state}</td></tr> }
        })
        .collect();
    let done = query.done.map(|d| {
        match d.as_str() {
            "password" => "Your password is set: next time, use it instead of a code.",
            "password-removed" => "Your password is removed: next time, we email you a code.",
            "password-mismatch" => "The two passwords were not the same; nothing was changed.",
            "passkey" => "Your passkey is registered: links to this address now open with it, and no code is emailed.",
            _ => "Done.",
        }
        .to_string()
    });
    let csrf2 = csrf.clone();
    let password = if has_password {
        view! {
            <form method="post" action="/portal/password" id="password-form">
                <p>"You chose a password for this address; links sent to it open with it."</p>
                {crate::html::csrf_field(&csrf2)}
                <button type="submit" name="action" value="remove" class="quiet">"Forget my password"</button>
            </form>
        }
        .into_any()
    } else {
        view! {
            <form method="post" action="/portal/password" class="stack" id="password-form">
                <p>"Optional: choose a password, and future links open with it instead of a code by mail."</p>
                {crate::html::csrf_field(&csrf2)}
                <label for="new-password">"Password (at least 12 characters)"</label>
                <input type="password" id="new-password" name="password" autocomplete="new-password" required=true/>
                <label for="confirm">"The same again"</label>
                <input type="password" id="confirm" name="confirm" autocomplete="new-password" required=true/>
                <button type="submit" name="action" value="set">"Set password"</button>
            </form>
        }
        .into_any()
    };
    let has_passkey = patient_keys(&state, &recipient).await.is_some();
    let may_register = state.portal.proven_any(&headers);
    let passkey = may_register.then(|| view! {
        <form data-passkey="register" data-start="/portal/passkey/start" data-finish="/portal/passkey/finish" class="stack" id="passkey-form">
            <p>{if has_passkey {
                "Your messages open with your passkey. You may add another device's."
            } else {
                "Safest: register a passkey (your phone or computer's screen lock). Then links to this address open only with it, and no code is emailed, so someone reading your email cannot open your messages."
            }}</p>
            <input type="hidden" name="name" value="portal"/>
            <button type="submit">"Use a passkey for this address"</button>
            <p class="passkey-status muted" role="status"></p>
        </form>
    });
    let content = view! {
        {crate::html::notice_line(done)}
        <p>{format!("Signed in as {recipient}.")}</p>
        {passkey}
        <table id="pickups"><tr><th>"Message"</th><th>"Sent"</th><th>"Open"</th></tr>{rows}</table>
        <h2>"Return visits"</h2>
        {password}
        <form method="post" action="/portal/sign-out">
            {crate::html::csrf_field(&csrf)}
            <button type="submit" class="quiet">"Sign out"</button>
        </form>
    };
    render(
        Frame::new("Your secure messages").token(&csrf).script(true),
        content,
    )
    .into_response()
}

/// Ends the portal session. Takes the session's CSRF token like every other form: another
/// site cannot sign a patient out (and so make them ask for a new code by mail).
pub(crate) async fn sign_out(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    form: Result<axum::Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some((_, csrf)) = state.portal.session(&headers) else {
        return (
            StatusCode::SEE_OTHER,
            AppendHeaders([
                (header::LOCATION, HeaderValue::from_static("/portal")),
                clear_cookie(PORTAL_COOKIE),
            ]),
        )
            .into_response();
    };
    if !form.is_ok_and(|axum::Form(form)| same_token(&form.csrf, &csrf)) {
        return crate::request::forbidden();
    }
    state.portal.end_session(&headers);
    (
        StatusCode::SEE_OTHER,
        AppendHeaders([
            (header::LOCATION, HeaderValue::from_static("/portal")),
            clear_cookie(PORTAL_COOKIE),
        ]),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
pub(crate) struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

/// One message in the portal: read (audited; the first read shows as "opened" to the
/// sender), its attachments, the recipient's earlier replies and a reply form.
pub(crate) async fn message(
    State(state): State<Arc<WebState>>,
    visitor: PortalVisitor,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
    Query(query): Query<DoneQuery>,
    headers: HeaderMap,
) -> Response {
    let PortalVisitor {
        recipient, csrf, ..
    } = visitor;
    let pickup = match own_pickup(&state, &recipient, &id).await {
        Ok(pickup) => pickup,
        Err(response) => return response,
    };
    if let Err(response) = gate(&state, &headers, &pickup, &csrf).await {
        return response;
    }
    let Some(raw) = read(&state, &pickup, &peer, "portal view".into()).await else {
        return ended_in_portal(&pickup);
    };
    let structure = sealpost_mime::Structure::parse(&raw, sealpost_mime::Limits::default());
    let shown = sealpost_mime::Shown::of(&structure.envelope);
    let parsed = MessageParser::default().parse(&raw);
    let text = parsed
        .as_ref()
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .unwrap_or_default();
    let attachments =
        crate::mail::attachment_items(parsed.as_ref(), &format!("/portal/{}", pickup.id));
    let subject = if shown.subject.trim().is_empty() {
        "(no subject)".to_string()
    } else {
        shown.subject.clone()
    };
    let from = shown
        .from
        .iter()
        .map(|p| {
            if p.name.is_empty() {
                p.email.clone()
            } else {
                format!("{} <{}>", p.name, p.email)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let replies: Vec<_> = pickup
        .replies
        .iter()
        .map(|r| {
            let files = (!r.attachments.is_empty()).then(|| format!("Attached: {}", r.attachments.join(", ")));
            view! { <li><p class="muted">{when(r.at_ms)}</p><pre class="body">{r.text.clone()}</pre>{files.map(|f| view! { <p class="muted">{f}</p> })}</li> }
        })
        .collect();
    let done = query.done.map(|_| "Your reply was sent.".to_string());
    let action = format!("/portal/{}/reply", pickup.id);
    let content = view! {
        <p><a href="/portal">"← Your secure messages"</a></p>
        {crate::html::notice_line(done)}
        <section id="message">
            <table class="headers">
                <tr><th>"From"</th><td>{from}</td></tr>
                <tr><th>"Date"</th><td>{shown.date.clone().unwrap_or_default()}</td></tr>
                <tr><th>"Available until"</th><td>{when(pickup.expires_ms)}</td></tr>
            </table>
            <pre class="body">{text}</pre>
            {(!attachments.is_empty()).then(|| view! { <h2>"Attachments"</h2><ul id="attachments">{attachments}</ul> })}
        </section>
        {(!replies.is_empty()).then(|| view! { <h2>"Your replies"</h2><ul id="replies">{replies}</ul> })}
        <h2>"Reply"</h2>
        <form method="post" action=action enctype="multipart/form-data" class="stack" id="reply">
            {crate::html::csrf_field(&csrf)}
            <label for="body">"Your reply"</label>
            <textarea id="body" name="body" rows="8" required=true></textarea>
            <label for="files">"Attach files"</label>
            <input type="file" id="files" name="files" multiple=true/>
            <p class="muted">"Your reply goes straight to the sender's mailbox here; it does not travel by email."</p>
            <button type="submit">"Send reply"</button>
        </form>
    };
    page(&subject, content).into_response()
}

fn ended_in_portal(pickup: &Pickup) -> Response {
    let text = match pickup.state {
        PickupState::Revoked => "The sender withdrew this message; it can no longer be opened.",
        _ => {
            "This message has expired and can no longer be opened. Ask the sender to send it again."
        }
    };
    crate::html::message_page_status(StatusCode::GONE, "No longer available", text)
}

/// The pickup's bytes, the read audited (and marked opened) first.
async fn read(
    state: &Arc<WebState>,
    pickup: &Pickup,
    peer: &Peer,
    what: String,
) -> Option<Vec<u8>> {
    let actor = portal_actor(&pickup.recipient, peer);
    let event =
        AuditEvent::new(&actor, "pickup.read", format!("pickup {}", pickup.id)).detail(what);
    let (state2, id) = (state.clone(), pickup.id);
    blocking(move || state2.store.read_pickup_audited(id, event).ok().flatten())
        .await
        .flatten()
}

pub(crate) async fn attachment(
    State(state): State<Arc<WebState>>,
    visitor: PortalVisitor,
    Extension(peer): Extension<Peer>,
    Path((id, index)): Path<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    let PortalVisitor {
        recipient, csrf, ..
    } = visitor;
    let pickup = match own_pickup(&state, &recipient, &id).await {
        Ok(pickup) => pickup,
        Err(response) => return response,
    };
    if let Err(response) = gate(&state, &headers, &pickup, &csrf).await {
        return response;
    }
    let Some(raw) = read(&state, &pickup, &peer, format!("portal attachment {index}")).await else {
        return ended_in_portal(&pickup);
    };
    crate::mail::attachment_response(&raw, index)
}

/// A reply from the portal: to the sender's INBOX and BACKUP, with the recipient's files.
pub(crate) async fn reply(
    State(state): State<Arc<WebState>>,
    visitor: PortalVisitor,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let PortalVisitor {
        recipient, csrf, ..
    } = visitor;
    let pickup = match own_pickup(&state, &recipient, &id).await {
        Ok(pickup) => pickup,
        Err(response) => return response,
    };
    let form = match crate::compose::read_form(&mut multipart, state.sending.upload_bytes_max).await
    {
        Ok(form) => form,
        Err(response) => return response,
    };
    if !same_token(&form.field("csrf"), &csrf) {
        return crate::request::forbidden();
    }
    if let Err(response) = gate(&state, &headers, &pickup, &csrf).await {
        return response;
    }
    let text = form.field("body").replace("\r\n", "\n");
    if text.trim().is_empty() && form.uploads.is_empty() {
        return see_other(&format!("/portal/{}", pickup.id));
    }
    // The original's subject and Message-ID thread the reply; its reading is audited.
    let Some(raw) = read(&state, &pickup, &peer, "portal reply".into()).await else {
        return ended_in_portal(&pickup);
    };
    let structure = sealpost_mime::Structure::parse(&raw, sealpost_mime::Limits::default());
    let shown = sealpost_mime::Shown::of(&structure.envelope);
    let mut builder = MessageBuilder::new()
        .from(Address::new_address(
            None::<String>,
            pickup.recipient.clone(),
        ))
        .to(Address::new_address(None::<String>, pickup.sender.clone()))
        .subject(if shown.subject.to_lowercase().starts_with("re:") {
            shown.subject.clone()
        } else {
            format!("Re: {}", shown.subject)
        })
        .message_id(format!(
            "{}@{}",
            hex(&rand::random::<[u8; 12]>()),
            state.hostname
        ))
        .header(
            "Authentication-Results",
            mail_builder::headers::raw::Raw::new(format!(
                "{}; sealpost-portal=pass (the sender proved this address with a one-time code)",
                state.hostname
            )),
        )
        .text_body(text.replace('\n', "\r\n"));
    if let Some(message_id) = &shown.message_id {
        let id = message_id.trim_matches(['<', '>']).to_string();
        builder = builder.in_reply_to(id.clone()).references(id);
    }
    for upload in &form.uploads {
        builder = builder.attachment(
            upload.kind.clone(),
            upload.name.clone(),
            upload.bytes.clone(),
        );
    }
    let Ok(reply_raw) = builder.write_to_vec() else {
        return crate::html::message_page_status(
            StatusCode::BAD_REQUEST,
            "Not sent",
            "The reply could not be put together.",
        );
    };
    let received = format!(
        "Received: from portal ([{}])\r\n\tby {} (Sealpost) with HTTPS;\r\n\t{}\r\n",
        peer.0.ip(),
        state.hostname,
        crate::mail::now_rfc2822()
    );
    let reply_raw = [received.as_bytes(), &reply_raw].concat();
    if let Some(refusal) = reply_refused(&state, &pickup, reply_raw.len() as u64).await {
        return refusal;
    }
    let actor = portal_actor(&pickup.recipient, &peer);
    let kept = PortalReply {
        at_ms: crate::request::now_ms(),
        text,
        attachments: form.uploads.iter().map(|u| u.name.clone()).collect(),
    };
    let (state2, p) = (state.clone(), pickup.clone());
    let done = blocking(move || {
        let store = &state2.store;
        let event = AuditEvent::new(&actor, "pickup.reply", format!("pickup {}", p.id))
            .detail(format!("to {}; {} bytes", p.sender, reply_raw.len()));
        deliver_internal(
            store,
            p.account,
            &reply_raw,
            vec![event.clone()],
            Placement::Inbox,
        )?;
        store.record_portal_reply(
            p.id,
            kept,
            reply_raw.len() as u64,
            AuditEvent::new(&actor, "pickup.reply.kept", format!("pickup {}", p.id)),
        )
    })
    .await;
    match done {
        Some(Ok(())) => see_other(&format!("/portal/{}?done=replied", pickup.id)),
        // The store holds the sender's mailbox to its quota (a reply lands in INBOX, which
        // counts, and BACKUP, which its owner cannot empty).
        Some(Err(sealpost_storage::Error::OverQuota { .. })) => crate::html::message_page_status(
            StatusCode::INSUFFICIENT_STORAGE,
            "Not sent",
            "The sender's mailbox is full. Try again later, or call the sender.",
        ),
        _ => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not sent",
            "Your reply could not be sent just now; try again in a minute.",
        ),
    }
}

/// Why a reply of `bytes` may not go now, as the page that says so: the pickup took
/// `PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX` replies in the last day, or its replies would pass
/// `PORTAL_REPLY_BYTES_PER_PICKUP_MAX` (the sender's quota is the store's to hold). Nothing is
/// sent then.
async fn reply_refused(state: &Arc<WebState>, pickup: &Pickup, bytes: u64) -> Option<Response> {
    let day_ago = crate::request::now_ms() - 24 * 3600 * 1000;
    let today = pickup.replies.iter().filter(|r| r.at_ms > day_ago).count();
    if today >= sealpost_storage::PORTAL_REPLIES_PER_PICKUP_PER_DAY_MAX {
        return Some(crate::html::message_page_status(
            StatusCode::TOO_MANY_REQUESTS,
            "Not sent",
            &format!(
                "You sent {today} replies to this message in the last day, which is the most it takes. Try again tomorrow, or call the sender."
            ),
        ));
    }
    let (store, id) = (state.store.clone(), pickup.id);
    let counted = blocking(move || store.portal_reply_bytes(id).ok())
        .await
        .flatten();
    // What cannot be counted is not sent.
    let Some(sent) = counted else {
        return Some(crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not sent",
            "Your reply could not be sent just now; try again in a minute.",
        ));
    };
    if sent.saturating_add(bytes) > sealpost_storage::PORTAL_REPLY_BYTES_PER_PICKUP_MAX {
        return Some(crate::html::message_page_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Not sent",
            "Your replies to this message have reached the most they may hold together. Call the sender, or ask them for a new message.",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_five_wrong_tries_end_it() {
        let portal = PortalState::default();
        let id = PickupId([7; 32]);
        assert_eq!(portal.check_code(id, "123456"), CodeCheck::NoCode);
        let code = portal.issue_code(id).unwrap();
        assert_eq!(code.len(), 6);
        assert_eq!(portal.check_code(id, &code), CodeCheck::Right);
        assert_eq!(portal.check_code(id, &code), CodeCheck::NoCode, "used up");
        let code = portal.issue_code(id).unwrap();
        let wrong = if code == "000000" { "000001" } else { "000000" };
        for left in (0..CODE_TRIES_MAX).rev() {
            assert_eq!(
                portal.check_code(id, wrong),
                CodeCheck::Wrong { tries_left: left }
            );
        }
        assert_eq!(
            portal.check_code(id, &code),
            CodeCheck::NoCode,
            "out of tries"
        );
        // Five codes per window, then none until it passes.
        for _ in 2..CODES_SENT_PER_WINDOW_MAX {
            assert!(portal.issue_code(id).is_ok());
        }
        assert_eq!(portal.issue_code(id), Err(NoCode::TooMany));
        assert!(
            portal.issue_code(PickupId([8; 32])).is_ok(),
            "another link is counted apart"
        );
    }

    #[test]
    fn a_link_that_took_too_many_wrong_codes_takes_no_more() {
        let portal = PortalState::default();
        let id = PickupId([9; 32]);
        let code = portal.issue_code(id).unwrap();
        // As if earlier codes had taken all but one of the wrong tries a link may have.
        portal.codes.lock().unwrap().get_mut(&id).unwrap().failed = CODE_FAILURES_PER_LINK_MAX - 1;
        let wrong = if code == "000000" { "000001" } else { "000000" };
        assert_eq!(
            portal.check_code(id, wrong),
            CodeCheck::Wrong {
                tries_left: CODE_TRIES_MAX - 1
            }
        );
        assert_eq!(
            portal.check_code(id, &code),
            CodeCheck::NoCode,
            "even the right code"
        );
        portal.codes.lock().unwrap().get_mut(&id).unwrap().sent = 0;
        assert_eq!(portal.issue_code(id), Err(NoCode::Blocked));
    }

    #[test]
    fn addresses_are_masked() {
        assert_eq!(masked("patient@example.org"), "pa…@example.org");
        assert_eq!(masked("p@example.org"), "p…@example.org");
    }
}
