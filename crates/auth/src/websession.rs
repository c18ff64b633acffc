//! Web sessions: a cookie `ACCOUNT.ID.SECRET` (the secret 256 random bits, kept only as its
//! SHA-256), the record in the store (`Store::web_session`), idle and absolute expiry, a CSRF
//! token per session for every form, and the time of the last strong sign-in, which sensitive
//! changes require to be recent.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use sealpost_storage::{
    AccountId, Actor, AuditEvent, Store, WebSessionId, WEB_SESSIONS_PER_ACCOUNT_MAX,
};

use crate::secrets;

/// A session unused this long ends, in ms (30 minutes).
pub const SESSION_IDLE_MS: i64 = 30 * 60 * 1000;
/// A session ends this long after its sign-in whatever its use, in ms (12 hours).
pub const SESSION_ABSOLUTE_MS: i64 = 12 * 3600 * 1000;
/// Sensitive changes (adding a passkey, issuing an app password) need a strong sign-in this
/// recent, in ms (5 minutes); else the user signs in again first.
pub const REAUTH_WINDOW_MS: i64 = 5 * 60 * 1000;
/// A session's last use is written at most this often, in ms (not on every page).
const LAST_SEEN_WRITE_MS: i64 = 60 * 1000;
/// Longest user agent text kept, in characters.
const AGENT_CHARS_MAX: usize = 120;

/// Where a session is in signing in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// The password was right; a second factor is still owed.
    SecondFactor,
    /// The password was right and the account has no second factor yet, which policy
    /// requires: only enrolment is open.
    Enrolment,
    /// Signed in, by this method ("password and TOTP", "passkey", …).
    SignedIn(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebSession {
    secret_hash: [u8; 32],
    pub created_ms: i64,
    pub last_seen_ms: i64,
    /// The client address at sign-in, and its user agent (shortened).
    pub address: String,
    pub agent: String,
    pub stage: Stage,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When the user last proved a password and second factor, or a passkey.
    pub strong_at_ms: Option<i64>,
    /// A passkey ceremony's state between its two requests (JSON).
    pub ceremony: Option<String>,
    /// A TOTP secret being enrolled, until a first code proves the app has it.
    pub pending_totp: Option<Vec<u8>>,
}

impl WebSession {
    pub fn csrf_ok(&self, token: &str) -> bool {
        token.len() == self.csrf.len() && bool::from(token.as_bytes().ct_eq(self.csrf.as_bytes()))
    }

    pub fn signed_in(&self) -> bool {
        matches!(self.stage, Stage::SignedIn(_))
    }

    /// Whether a sensitive change may go ahead without signing in again.
    pub fn recently_strong(&self, now_ms: i64) -> bool {
        self.strong_at_ms
            .is_some_and(|at| now_ms - at <= REAUTH_WINDOW_MS)
    }

    fn expired(&self, now_ms: i64, settings: &crate::SignInSettings) -> bool {
        now_ms - self.last_seen_ms > settings.session_idle_ms_signed()
            || now_ms - self.created_ms > settings.session_absolute_ms_signed()
    }
}

/// A session as found from its cookie.
pub struct Found {
    pub account: AccountId,
    pub id: WebSessionId,
    pub session: WebSession,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn storage_error(e: impl std::fmt::Display) -> sealpost_storage::Error {
    sealpost_storage::Error::Corrupt {
        what: format!("a web session record: {e}"),
    }
}

/// Starts a session: the cookie value to set, and the session. Past
/// `WEB_SESSIONS_PER_ACCOUNT_MAX` the account's least recently used sessions end. Audited.
pub fn start(
    store: &Store,
    account: AccountId,
    address: &str,
    agent: &str,
    stage: Stage,
    now_ms: i64,
) -> sealpost_storage::Result<(String, WebSession)> {
    let strong = matches!(stage, Stage::SignedIn(_));
    start_proven(store, account, address, agent, stage, strong, now_ms)
}

/// `start`, saying whether the sign-in that made it was strong (a signed-in session always
/// is; an `Enrolment` session is when it proved the factor the account has and now owes a
/// passkey).
pub fn start_proven(
    store: &Store,
    account: AccountId,
    address: &str,
    agent: &str,
    stage: Stage,
    strong: bool,
    now_ms: i64,
) -> sealpost_storage::Result<(String, WebSession)> {
    let id: WebSessionId = rand::random();
    let secret: [u8; 32] = rand::random();
    let strong = strong.then_some(now_ms);
    let session = WebSession {
        secret_hash: Sha256::digest(secret).into(),
        created_ms: now_ms,
        last_seen_ms: now_ms,
        address: address.to_string(),
        agent: agent.chars().take(AGENT_CHARS_MAX).collect(),
        stage,
        csrf: secrets::token(32),
        strong_at_ms: strong,
        ceremony: None,
        pending_totp: None,
    };
    let mut existing = list(store, account)?;
    if existing.len() >= WEB_SESSIONS_PER_ACCOUNT_MAX {
        existing.sort_by_key(|(_, s)| s.last_seen_ms);
        let surplus = existing.len() + 1 - WEB_SESSIONS_PER_ACCOUNT_MAX;
        let oldest: Vec<WebSessionId> = existing.iter().take(surplus).map(|(id, _)| *id).collect();
        store.delete_web_sessions(account, Some(&oldest), vec![])?;
    }
    let actor = Actor {
        name: format!("account:{}", account.0),
        peer: address.to_string(),
    };
    let event = AuditEvent::new(
        &actor,
        "auth.session.start",
        format!("account:{}", account.0),
    )
    .detail(format!("session {}", hex(&id[..4])));
    save(store, account, &id, &session, vec![event])?;
    Ok((
        format!("{}.{}.{}", account.0, b64(&id), b64(&secret)),
        session,
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn save(
    store: &Store,
    account: AccountId,
    id: &WebSessionId,
    session: &WebSession,
    events: Vec<AuditEvent>,
) -> sealpost_storage::Result<()> {
    let bytes = serde_json::to_vec(session).map_err(storage_error)?;
    store.put_web_session(account, id, &bytes, events)
}

/// The live session a cookie names, if any: the secret must match and the session must not
/// have expired (an expired one is removed). Its last use is brought up to date.
pub fn resume(
    store: &Store,
    cookie: &str,
    now_ms: i64,
    settings: &crate::SignInSettings,
) -> sealpost_storage::Result<Option<Found>> {
    let mut parts = cookie.trim().splitn(3, '.');
    let (Some(account), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let decode = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
    };
    let (Ok(account), Some(id), Some(secret)) =
        (account.parse::<u64>(), decode(id), decode(secret))
    else {
        return Ok(None);
    };
    let (account, Ok(id)) = (AccountId(account), WebSessionId::try_from(id.as_slice())) else {
        return Ok(None);
    };
    // An account that no longer exists has no sessions.
    let Ok(Some(bytes)) = store.web_session(account, &id) else {
        return Ok(None);
    };
    let mut session: WebSession = serde_json::from_slice(&bytes).map_err(storage_error)?;
    let presented: [u8; 32] = Sha256::digest(&secret).into();
    if !bool::from(presented.ct_eq(&session.secret_hash)) {
        return Ok(None);
    }
    if session.expired(now_ms, settings) {
        store.delete_web_sessions(account, Some(&[id]), vec![])?;
        return Ok(None);
    }
    if now_ms - session.last_seen_ms >= LAST_SEEN_WRITE_MS {
        session.last_seen_ms = now_ms;
        save(store, account, &id, &session, vec![])?;
    }
    Ok(Some(Found {
        account,
        id,
        session,
    }))
}

/// The account's live sessions, most recently used first.
pub fn list(
    store: &Store,
    account: AccountId,
) -> sealpost_storage::Result<Vec<(WebSessionId, WebSession)>> {
    let mut sessions: Vec<(WebSessionId, WebSession)> = store
        .web_sessions(account)?
        .into_iter()
        .filter_map(|(id, bytes)| Some((id, serde_json::from_slice(&bytes).ok()?)))
        .collect();
    sessions.sort_by_key(|(_, s)| std::cmp::Reverse(s.last_seen_ms));
    Ok(sessions)
}

/// Signs out one session (`Some`) or every session of the account (`None`). Audited.
pub fn end(
    store: &Store,
    account: AccountId,
    id: Option<WebSessionId>,
    actor: &Actor,
) -> sealpost_storage::Result<()> {
    let (ids, what) = match &id {
        Some(id) => (
            Some(std::slice::from_ref(id)),
            format!("session {}", hex(&id[..4])),
        ),
        None => (None, "every session".to_string()),
    };
    let action = if id.is_some() {
        "auth.session.end"
    } else {
        "auth.session.end_all"
    };
    let event = AuditEvent::new(actor, action, format!("account:{}", account.0)).detail(what);
    store.delete_web_sessions(account, ids, vec![event])
}

/// A short public name for a session on the account security page.
pub fn label(id: &WebSessionId) -> String {
    hex(&id[..4])
}
