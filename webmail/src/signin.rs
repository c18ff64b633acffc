//! Signing in and out: the password, then a second factor (TOTP, a recovery code or a passkey),
//! or a passkey alone; re-authentication before sensitive changes. Failures count in the
//! server's lockout with IMAP and SMTP, and every outcome is audited.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::{Form, Json};
use leptos::prelude::*;
use sealpost_auth::credentials::Credentials;
use sealpost_auth::websession::{self, Stage};
use sealpost_auth::{secrets, totp, Refusal};
use sealpost_storage::{Account, AccountId, Actor, AuditEvent, AuditOutcome, Login, WebSessionId};
use serde::Deserialize;

use crate::ceremony::Kind;
use crate::html::{error_line, render, Frame};
use crate::request::{
    agent, blocking, clear_cookie, forbidden, form_token, form_token_ok, json_error, now_ms,
    script_token, see_other, session, set_cookie, stale_page, Csrf, FormCookie, SignedIn,
    TokenForm, FORM_COOKIE, SESSION_COOKIE,
};
use crate::{Peer, WebState};

pub(crate) async fn home(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    match session(&state, &headers).await.map(|f| f.session.stage) {
        Some(Stage::SecondFactor) => see_other("/second-factor"),
        Some(Stage::Enrolment) => see_other("/security"),
        Some(Stage::SignedIn(_)) => see_other("/mail"),
        None => see_other("/sign-in"),
    }
}

fn sign_in_view(token: &str, error: Option<String>, address: &str) -> impl IntoView {
    let (token, token2, address, address2) = (
        token.to_string(),
        token.to_string(),
        address.to_string(),
        address.to_string(),
    );
    view! {
        {error_line(error)}
        <section>
            <h2>"With your password"</h2>
            <form method="post" action="/sign-in">
                {crate::html::csrf_field(&token)}
                <label for="address">"Email address"</label>
                <input type="email" id="address" name="address" value=address autocomplete="username" required=true/>
                <label for="password">"Password"</label>
                <input type="password" id="password" name="password" autocomplete="current-password" required=true/>
                <button type="submit">"Continue"</button>
            </form>
        </section>
        <section>
            <h2>"With a passkey"</h2>
            <form data-passkey="sign-in" data-start="/passkey/sign-in/start" data-finish="/passkey/sign-in/finish">
                {crate::html::csrf_field(&token2)}
                <label for="passkey-address">"Email address"</label>
                <input type="email" id="passkey-address" name="address" value=address2 autocomplete="username webauthn" required=true/>
                <button type="submit">"Sign in with a passkey"</button>
                <p class="passkey-status muted" role="status"></p>
            </form>
        </section>
    }
}

pub(crate) async fn sign_in_page(headers: HeaderMap) -> Response {
    let (token, new) = form_token(&headers);
    let page = render(
        Frame::new("Sign in").token(&token).script(true),
        sign_in_view(&token, None, ""),
    );
    if new {
        ([set_cookie(FORM_COOKIE, &token)], page).into_response()
    } else {
        page.into_response()
    }
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    csrf: String,
    address: String,
    password: String,
}

crate::request::with_csrf!(SignInForm, ReauthForm);

fn sign_in_again(headers: &HeaderMap, status: StatusCode, error: &str, address: &str) -> Response {
    let (token, _) = form_token(headers);
    let page = render(
        Frame::new("Sign in").token(&token).script(true),
        sign_in_view(&token, Some(error.to_string()), address),
    );
    (status, [set_cookie(FORM_COOKIE, &token)], page).into_response()
}

async fn audit(state: &Arc<WebState>, event: AuditEvent) {
    let state = state.clone();
    let written = blocking(move || state.store.audit(event)).await;
    if !matches!(written, Some(Ok(_))) {
        tracing::warn!("writing a sign-in audit record failed");
    }
}

fn actor(login: &str, peer: &Peer) -> Actor {
    Actor {
        name: login.to_string(),
        peer: peer.0.to_string(),
    }
}

fn refusal_text(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::AddressLockedOut => "Too many failed sign-ins from your network. Try again in a while.",
        Refusal::AccountLockedOut => {
            "Too many failed sign-ins for this account. Try again in a while, or ask your administrator."
        }
        Refusal::Paused => "A sign-in from your network or for this account just failed. Try again in a few seconds.",
    }
}

/// A failed password or code: counted in the lockout, audited, and answered after the
/// lockout's pause.
async fn failed(state: &Arc<WebState>, peer: &Peer, login: &str, what: &str) {
    let pause = state.lockout.failed(&peer.0.ip().to_string(), login);
    denied(state, peer, login, what).await;
    tokio::time::sleep(pause).await;
}

/// A refused step that the lockout does not count (a passkey: nothing to guess, and a
/// password spray must not lock an admin out of the passkey sign-in); audited.
async fn denied(state: &Arc<WebState>, peer: &Peer, login: &str, what: &str) {
    audit(
        state,
        AuditEvent::new(&actor(login, peer), "login.web", format!("account {login}"))
            .outcome(AuditOutcome::Denied)
            .detail(what.to_string()),
    )
    .await;
}

pub(crate) async fn sign_in(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    FormCookie(form): FormCookie<SignInForm>,
) -> Response {
    let login = form.address.trim().to_lowercase();
    if let Err(refusal) = state.lockout.check(&peer.0.ip().to_string(), &login) {
        audit(
            &state,
            AuditEvent::new(
                &actor(&login, &peer),
                "login.web",
                format!("account {login}"),
            )
            .outcome(AuditOutcome::Denied)
            .detail(refusal_text(refusal)),
        )
        .await;
        return sign_in_again(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            refusal_text(refusal),
            &form.address,
        );
    }
    // The password is hashed through the server's one queue; when it is full the sign-in is
    // refused at once rather than waiting behind someone else's flood.
    let Some(ticket) = state.lockout.admit_hash(&peer.0.ip().to_string(), &login) else {
        return sign_in_again(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins are being checked right now. Try again in a moment.",
            &form.address,
        );
    };
    let checked = {
        let (state, login, password) = (state.clone(), login.clone(), form.password.clone());
        blocking(move || {
            let _ticket = ticket;
            state.store.check_password(&login, &password)
        })
        .await
    };
    let account = match checked {
        Some(Ok(Login::Accepted(account))) => account,
        Some(Ok(Login::Rejected)) => {
            failed(&state, &peer, &login, "wrong address or password").await;
            return sign_in_again(
                &headers,
                StatusCode::UNAUTHORIZED,
                "The address or the password is wrong.",
                &form.address,
            );
        }
        Some(Ok(Login::Disabled(_))) => {
            failed(&state, &peer, &login, "the account is disabled").await;
            return sign_in_again(
                &headers,
                StatusCode::FORBIDDEN,
                "This account is disabled.",
                &form.address,
            );
        }
        _ => {
            return sign_in_again(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in is not possible right now; try again shortly.",
                &form.address,
            )
        }
    };
    let credentials = {
        let (state, id) = (state.clone(), account.id);
        match blocking(move || Credentials::load(&state.store, id)).await {
            Some(Ok(credentials)) => credentials,
            _ => {
                return sign_in_again(
                    &headers,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again shortly.",
                    &form.address,
                )
            }
        }
    };
    let passkey_needed = state.passkey_required(&account);
    // Any factor the account has is asked for before anything else, even when the role must
    // still enrol a passkey: a password alone never reaches enrolment of a second factor
    // for an account that has one.
    let (stage, next) = if credentials.has_second_factor() {
        (Stage::SecondFactor, "/second-factor")
    } else if state.sign_in().second_factor_required || passkey_needed {
        (Stage::Enrolment, "/security")
    } else {
        (Stage::SignedIn("password".into()), "/security")
    };
    let signed_in = matches!(stage, Stage::SignedIn(_));
    audit(
        &state,
        AuditEvent::new(
            &actor(&login, &peer),
            "login.web",
            format!("account {login}"),
        )
        .detail(match stage {
            Stage::SecondFactor => "password accepted; second factor owed",
            Stage::Enrolment => "password accepted; a second factor must be set up first",
            Stage::SignedIn(_) => "signed in with the password",
        }),
    )
    .await;
    if signed_in {
        return finish_sign_in(
            &state,
            &account,
            None,
            Stage::SignedIn("password".into()),
            // The password is all this account has: its strongest factor.
            true,
            &peer,
            &headers,
            next,
        )
        .await;
    }
    let started = {
        let (state, id, address, agent) = (
            state.clone(),
            account.id,
            peer.0.to_string(),
            agent(&headers),
        );
        blocking(move || websession::start(&state.store, id, &address, &agent, stage, now_ms()))
            .await
    };
    match started {
        Some(Ok((value, _))) => (
            AppendHeaders([
                set_cookie(SESSION_COOKIE, &value),
                clear_cookie(FORM_COOKIE),
            ]),
            see_other(next),
        )
            .into_response(),
        _ => sign_in_again(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again shortly.",
            &form.address,
        ),
    }
}

/// The last step of every sign-in: a new session (the one that held the first step ends, so a
/// session id seen before the sign-in is worth nothing after it), the sign-in recorded, a
/// notice when the network is new, the lockout's count for the account cleared. `stage` is
/// `SignedIn(method)`, or `Enrolment` for a role that proved the factor it has and must
/// now add the passkey it lacks. `strong`: the sign-in used the strongest factor the account
/// has, so factors may change in the next minutes without confirming again (a password and
/// TOTP code for an account that has a passkey are not enough for that).
#[allow(clippy::too_many_arguments)]
async fn finish_sign_in(
    state: &Arc<WebState>,
    account: &Account,
    old: Option<WebSessionId>,
    stage: Stage,
    strong: bool,
    peer: &Peer,
    headers: &HeaderMap,
    next: &str,
) -> Response {
    state.lockout.succeeded(&account.address);
    let method = match &stage {
        Stage::SignedIn(method) => method.clone(),
        _ => "two factors, a passkey still owed".to_string(),
    };
    let done = {
        let (state, account, address, agent) = (
            state.clone(),
            account.clone(),
            peer.0.to_string(),
            agent(headers),
        );
        blocking(move || {
            if let Some(old) = old {
                state
                    .store
                    .delete_web_sessions(account.id, Some(&[old]), vec![])?;
            }
            let (cookie, _) = websession::start_proven(
                &state.store,
                account.id,
                &address,
                &agent,
                stage,
                strong,
                now_ms(),
            )?;
            let mut new_network = false;
            let how = format!("the web, {method}");
            Credentials::update(&state.store, account.id, |record| {
                new_network = record.record_sign_in(&address, &how, true);
                Some(vec![])
            })?;
            if new_network {
                sealpost_console::notice::new_network(
                    &state.store,
                    &account,
                    &address,
                    &how,
                    &state.hostname,
                )?;
            }
            Ok::<_, sealpost_storage::Error>(cookie)
        })
        .await
    };
    match done {
        Some(Ok(cookie)) => (
            AppendHeaders([
                set_cookie(SESSION_COOKIE, &cookie),
                clear_cookie(FORM_COOKIE),
            ]),
            see_other(next),
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            crate::html::message_page(
                "Try again",
                "Signing in is not possible right now; try again shortly.",
            ),
        )
            .into_response(),
    }
}

fn second_factor_view(
    csrf: &str,
    address: &str,
    totp: bool,
    recovery: bool,
    passkeys: bool,
    error: Option<String>,
) -> impl IntoView {
    let (c1, c2, c3, address) = (
        csrf.to_string(),
        csrf.to_string(),
        csrf.to_string(),
        address.to_string(),
    );
    view! {
        {error_line(error)}
        {passkeys.then(|| view! {
            <section>
                <h2>"Use your passkey"</h2>
                <form data-passkey="sign-in" data-start="/passkey/sign-in/start" data-finish="/passkey/sign-in/finish">
                    {crate::html::csrf_field(&c1)}
                    <input type="hidden" name="address" value=address/>
                    <button type="submit">"Use a passkey"</button>
                    <p class="passkey-status muted" role="status"></p>
                </form>
            </section>
        })}
        {totp.then(|| view! {
            <section>
                <h2>"Or a code from your authenticator app"</h2>
                <form method="post" action="/second-factor">
                    {crate::html::csrf_field(&c2)}
                    <label for="code">"Six-digit code"</label>
                    <input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required=true/>
                    <button type="submit">"Sign in"</button>
                </form>
            </section>
        })}
        {recovery.then(|| view! {
            <section>
                <h2>"Or a recovery code"</h2>
                <form method="post" action="/second-factor">
                    {crate::html::csrf_field(&c3)}
                    <label for="recovery">"Recovery code"</label>
                    <input type="text" id="recovery" name="recovery" autocomplete="off" required=true/>
                    <button type="submit" class="quiet">"Sign in with a recovery code"</button>
                </form>
            </section>
        })}
    }
}

/// What the second-factor page offers the account: (TOTP, recovery codes, passkeys).
fn offered(state: &WebState, account: &Account, credentials: &Credentials) -> (bool, bool, bool) {
    // A role that must use a passkey answers with its passkey once it has one; until then
    // with the factor it has, and then enrols a passkey (`Stage::Enrolment`).
    let passkey_only = state.passkey_required(account) && !credentials.passkeys.is_empty();
    (
        credentials.totp.is_some() && !passkey_only,
        !credentials.recovery.is_empty() && !passkey_only,
        !credentials.passkeys.is_empty(),
    )
}

async fn account_and_credentials(
    state: &Arc<WebState>,
    id: AccountId,
) -> Option<(Account, Credentials)> {
    let state = state.clone();
    blocking(move || {
        Some((
            state.store.account(id).ok()?,
            Credentials::load(&state.store, id).ok()?,
        ))
    })
    .await
    .flatten()
}

pub(crate) async fn second_factor_page(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
) -> Response {
    let Some(found) = session(&state, &headers).await else {
        return see_other("/sign-in");
    };
    if found.session.stage != Stage::SecondFactor {
        return see_other("/");
    }
    let Some((account, credentials)) = account_and_credentials(&state, found.account).await else {
        return see_other("/sign-in");
    };
    let (totp, recovery, passkeys) = offered(&state, &account, &credentials);
    render(
        Frame::new("Second step")
            .token(&found.session.csrf)
            .script(passkeys),
        second_factor_view(
            &found.session.csrf,
            &account.address,
            totp,
            recovery,
            passkeys,
            None,
        ),
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct SecondFactorForm {
    csrf: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovery: Option<String>,
}

pub(crate) async fn second_factor(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<SecondFactorForm>,
) -> Response {
    let Some(found) = session(&state, &headers).await else {
        return see_other("/sign-in");
    };
    if !found.session.csrf_ok(&form.csrf) {
        return forbidden();
    }
    if found.session.stage != Stage::SecondFactor {
        return see_other("/");
    }
    let Some((account, credentials)) = account_and_credentials(&state, found.account).await else {
        return see_other("/sign-in");
    };
    if let Err(refusal) = state
        .lockout
        .check(&peer.0.ip().to_string(), &account.address)
    {
        return second_factor_again(
            &state,
            &found.session.csrf,
            &account,
            &credentials,
            refusal_text(refusal),
        );
    }
    let (totp_offered, recovery_offered, _) = offered(&state, &account, &credentials);
    let now = now_ms();
    let mut method = None;
    let (code, recovery) = (
        form.code.unwrap_or_default(),
        form.recovery.unwrap_or_default(),
    );
    let checked = {
        let (state, id) = (state.clone(), account.id);
        blocking(move || {
            let mut used = None;
            Credentials::update(&state.store, id, |record| {
                if totp_offered && !code.trim().is_empty() {
                    let factor = record.totp.as_mut()?;
                    let seconds = u64::try_from(now / 1000).unwrap_or(0);
                    let step = totp::verify(&factor.secret, &code, seconds, factor.last_step)?;
                    factor.last_step = Some(step);
                    used = Some("password and TOTP");
                    return Some(vec![]);
                }
                if recovery_offered && !recovery.trim().is_empty() {
                    let index = record
                        .recovery
                        .iter()
                        .position(|h| secrets::matches(&recovery, h))?;
                    record.recovery.remove(index);
                    used = Some("password and a recovery code");
                    return Some(vec![AuditEvent::new(
                        &Actor::system(),
                        "auth.recovery_code.use",
                        format!("account:{}", id.0),
                    )
                    .detail(format!("{} left", record.recovery.len()))]);
                }
                None
            })
            .ok()?;
            used
        })
        .await
        .flatten()
    };
    method = method.or(checked);
    match method {
        Some(method) => {
            // A role that must use a passkey and has none yet proved the factor it has; now it
            // enrols the passkey, and nothing else, before it is signed in.
            let stage = if state.passkey_required(&account) && credentials.passkeys.is_empty() {
                Stage::Enrolment
            } else {
                Stage::SignedIn(method.into())
            };
            // TOTP or a recovery code is the strongest factor only of an account without a
            // passkey.
            let strong = credentials.passkeys.is_empty();
            finish_sign_in(
                &state,
                &account,
                Some(found.id),
                stage,
                strong,
                &peer,
                &headers,
                "/security",
            )
            .await
        }
        None => {
            failed(&state, &peer, &account.address, "wrong second factor").await;
            second_factor_again(
                &state,
                &found.session.csrf,
                &account,
                &credentials,
                "That code did not work.",
            )
        }
    }
}

fn second_factor_again(
    state: &WebState,
    csrf: &str,
    account: &Account,
    credentials: &Credentials,
    error: &str,
) -> Response {
    let (totp, recovery, passkeys) = offered(state, account, credentials);
    (
        StatusCode::UNAUTHORIZED,
        render(
            Frame::new("Second step").token(csrf).script(passkeys),
            second_factor_view(
                csrf,
                &account.address,
                totp,
                recovery,
                passkeys,
                Some(error.to_string()),
            ),
        ),
    )
        .into_response()
}

/// The token a script request carries: the session's, or before one the form cookie's.
fn script_token_ok(headers: &HeaderMap, session: Option<&websession::Found>) -> bool {
    let sent = script_token(headers);
    if sent.is_empty() {
        return false;
    }
    match session {
        Some(found) => found.session.csrf_ok(sent) || form_token_ok(headers, sent),
        None => form_token_ok(headers, sent),
    }
}

#[derive(Deserialize)]
pub(crate) struct PasskeyStart {
    address: String,
}

pub(crate) async fn passkey_start(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Json(request): Json<PasskeyStart>,
) -> Response {
    let found = session(&state, &headers).await;
    if !script_token_ok(&headers, found.as_ref()) {
        return stale_page();
    }
    // No lockout check: the lockout counts passwords and codes, and a passkey sign-in must
    // stay open to an account whose password is being sprayed.
    let login = request.address.trim().to_lowercase();
    let loaded = {
        let (state, login) = (state.clone(), login.clone());
        blocking(move || {
            let account = state.store.find_account(&login).ok()??;
            let credentials = Credentials::load(&state.store, account.id).ok()?;
            Some((account, credentials))
        })
        .await
        .flatten()
    };
    let Some((account, credentials)) = loaded.filter(|(_, c)| !c.passkeys.is_empty()) else {
        // The same shape of answer as for an account with passkeys, so that it does not tell
        // which addresses have one; the browser then finds no such key.
        let options = decoy_options(&state, &login);
        return Json(serde_json::json!({ "ceremony": secrets::token(24), "options": options }))
            .into_response();
    };
    let keys: Vec<_> = credentials
        .passkeys
        .iter()
        .map(|k| k.passkey.clone())
        .collect();
    match state.passkeys.start_sign_in(&keys) {
        Ok((options, ceremony_state)) => {
            let ceremony = state
                .ceremonies
                .start(Kind::SignIn, account.id, ceremony_state);
            let options: serde_json::Value = serde_json::from_str(&options).unwrap_or_default();
            Json(serde_json::json!({ "ceremony": ceremony, "options": options })).into_response()
        }
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

/// Sign-in options for an address without passkeys: a random challenge and a credential id
/// derived from the address with a key of this process, so that asking twice gives the same
/// id, as it would for a real key.
fn decoy_options(state: &WebState, login: &str) -> serde_json::Value {
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(state.decoy_key)
        .chain_update(login.as_bytes())
        .finalize();
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let challenge: [u8; 32] = rand::random();
    serde_json::json!({
        "publicKey": {
            "challenge": encode(&challenge),
            "timeout": 300000,
            "rpId": state.hostname,
            "allowCredentials": [{ "type": "public-key", "id": encode(&digest[..16]) }],
            "userVerification": "required",
            "extensions": { "uvm": true }
        }
    })
}

#[derive(Deserialize)]
pub(crate) struct PasskeyFinish {
    ceremony: String,
    credential: serde_json::Value,
}

pub(crate) async fn passkey_finish(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Json(request): Json<PasskeyFinish>,
) -> Response {
    let found = session(&state, &headers).await;
    if !script_token_ok(&headers, found.as_ref()) {
        return stale_page();
    }
    let Some((id, ceremony_state)) = state.ceremonies.finish(&request.ceremony, Kind::SignIn)
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "the sign-in took too long; try again",
        );
    };
    let response = request.credential.to_string();
    let checked = {
        let state = state.clone();
        blocking(move || {
            let account = state.store.account(id).ok()?;
            let mut outcome = None;
            Credentials::update(&state.store, id, |record| {
                let mut keys: Vec<_> = record.passkeys.iter().map(|k| k.passkey.clone()).collect();
                let index = state
                    .passkeys
                    .finish_sign_in(&ceremony_state, &response, &mut keys);
                outcome = Some(index.clone().map_err(|e| e.to_string()));
                let index = index.ok()?;
                record.passkeys[index].passkey = keys[index].clone();
                record.passkeys[index].last_used_ms = Some(now_ms());
                Some(vec![])
            })
            .ok()?;
            Some((account, outcome?))
        })
        .await
        .flatten()
    };
    let Some((account, outcome)) = checked else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "try again shortly");
    };
    if let Err(why) = outcome {
        denied(
            &state,
            &peer,
            &account.address,
            &format!("passkey refused: {why}"),
        )
        .await;
        return json_error(StatusCode::UNAUTHORIZED, "the passkey was not accepted");
    }
    if account.status == sealpost_storage::AccountStatus::Disabled {
        denied(&state, &peer, &account.address, "the account is disabled").await;
        return json_error(StatusCode::FORBIDDEN, "this account is disabled");
    }
    audit(
        &state,
        AuditEvent::new(
            &actor(&account.address, &peer),
            "login.web",
            format!("account {}", account.address),
        )
        .detail("signed in with a passkey"),
    )
    .await;
    // The session of a first step (or of an earlier sign-in) of the same account ends.
    let old = found.filter(|f| f.account == account.id).map(|f| f.id);
    let response = finish_sign_in(
        &state,
        &account,
        old,
        Stage::SignedIn("passkey".into()),
        true,
        &peer,
        &headers,
        "/security",
    )
    .await;
    // The script follows `next` itself; keep the cookies, answer JSON.
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::OK;
    parts.headers.remove(axum::http::header::LOCATION);
    let body = Json(serde_json::json!({ "next": "/security" }))
        .into_response()
        .into_body();
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, body)
}

pub(crate) async fn sign_out(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    let Some(found) = session(&state, &headers).await else {
        return ([clear_cookie(SESSION_COOKIE)], see_other("/sign-in")).into_response();
    };
    if !found.session.csrf_ok(&form.csrf) {
        return forbidden();
    }
    let (state2, account, id) = (state.clone(), found.account, found.id);
    let who = actor(&format!("account:{}", account.0), &peer);
    let _ = blocking(move || websession::end(&state2.store, account, Some(id), &who)).await;
    ([clear_cookie(SESSION_COOKIE)], see_other("/sign-in")).into_response()
}

/// The confirmation asks for the strongest factor the account has: its passkey where it has
/// one (no password form at all), else the password and a TOTP code, else the password.
fn reauth_view(
    csrf: &str,
    address: &str,
    totp: bool,
    passkeys: bool,
    error: Option<String>,
) -> impl IntoView {
    let (c1, c2, address) = (csrf.to_string(), csrf.to_string(), address.to_string());
    let password = (!passkeys).then(|| {
        view! {
            <section>
                <form method="post" action="/reauth">
                    {crate::html::csrf_field(&c2)}
                    <label for="password">"Password"</label>
                    <input type="password" id="password" name="password" autocomplete="current-password" required=true/>
                    {totp.then(|| view! {
                        <label for="code">"Code from your authenticator app"</label>
                        <input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required=true/>
                    })}
                    <button type="submit">"Confirm"</button>
                </form>
            </section>
        }
    });
    view! {
        <p>"For this change, confirm that it is you."</p>
        {error_line(error)}
        {passkeys.then(|| view! {
            <section>
                <form data-passkey="sign-in" data-start="/passkey/sign-in/start" data-finish="/passkey/sign-in/finish">
                    {crate::html::csrf_field(&c1)}
                    <input type="hidden" name="address" value=address/>
                    <button type="submit">"Confirm with a passkey"</button>
                    <p class="passkey-status muted" role="status"></p>
                </form>
            </section>
        })}
        {password}
    }
}

pub(crate) async fn reauth_page(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
) -> Response {
    let Some(found) = session(&state, &headers)
        .await
        .filter(|f| f.session.signed_in())
    else {
        return see_other("/sign-in");
    };
    let Some((account, credentials)) = account_and_credentials(&state, found.account).await else {
        return see_other("/sign-in");
    };
    let (totp, passkeys) = (credentials.totp.is_some(), !credentials.passkeys.is_empty());
    render(
        Frame::new("Confirm it is you")
            .account(&account.address, &found.session.csrf)
            .script(passkeys),
        reauth_view(&found.session.csrf, &account.address, totp, passkeys, None),
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ReauthForm {
    csrf: String,
    password: String,
    #[serde(default)]
    code: String,
}

pub(crate) async fn reauth(
    State(state): State<Arc<WebState>>,
    SignedIn { found, peer, .. }: SignedIn,
    Csrf(form): Csrf<ReauthForm>,
) -> Response {
    let Some((account, credentials)) = account_and_credentials(&state, found.account).await else {
        return see_other("/sign-in");
    };
    let passkeys = !credentials.passkeys.is_empty();
    if let Err(refusal) = state
        .lockout
        .check(&peer.0.ip().to_string(), &account.address)
    {
        return again_reauth(
            &found,
            &account,
            credentials.totp.is_some(),
            passkeys,
            refusal_text(refusal),
        );
    }
    // The strongest factor the account has: an account with a passkey (every admin) confirms
    // with it, never with a password, and one with TOTP gives a code with its password.
    let totp_offered = credentials.totp.is_some();
    if passkeys || state.passkey_required(&account) {
        return again_reauth(
            &found,
            &account,
            false,
            passkeys,
            "Confirm with your passkey.",
        );
    }
    let Some(ticket) = state
        .lockout
        .admit_hash(&peer.0.ip().to_string(), &account.address)
    else {
        return again_reauth(
            &found,
            &account,
            totp_offered,
            passkeys,
            "Too many sign-ins are being checked right now. Try again in a moment.",
        );
    };
    let now = now_ms();
    let ok = {
        let (state, address, password, code, id) = (
            state.clone(),
            account.address.clone(),
            form.password.clone(),
            form.code.clone(),
            account.id,
        );
        blocking(move || {
            let _ticket = ticket;
            if !matches!(
                state.store.check_password(&address, &password),
                Ok(Login::Accepted(_))
            ) {
                return false;
            }
            if !totp_offered {
                return true;
            }
            let mut ok = false;
            let _ = Credentials::update(&state.store, id, |record| {
                let factor = record.totp.as_mut()?;
                let seconds = u64::try_from(now / 1000).unwrap_or(0);
                let step = totp::verify(&factor.secret, &code, seconds, factor.last_step)?;
                factor.last_step = Some(step);
                ok = true;
                Some(vec![])
            });
            ok
        })
        .await
        .unwrap_or(false)
    };
    if !ok {
        failed(&state, &peer, &account.address, "re-authentication failed").await;
        return again_reauth(
            &found,
            &account,
            totp_offered,
            passkeys,
            "That did not match.",
        );
    }
    let mut session = found.session.clone();
    session.strong_at_ms = Some(now);
    let (state2, id, account_id) = (state.clone(), found.id, found.account);
    let event = AuditEvent::new(
        &actor(&account.address, &peer),
        "auth.reauth",
        format!("account {}", account.address),
    );
    let _ =
        blocking(move || websession::save(&state2.store, account_id, &id, &session, vec![event]))
            .await;
    see_other("/security")
}

fn again_reauth(
    found: &websession::Found,
    account: &Account,
    totp: bool,
    passkeys: bool,
    error: &str,
) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        render(
            Frame::new("Confirm it is you")
                .account(&account.address, &found.session.csrf)
                .script(passkeys),
            reauth_view(
                &found.session.csrf,
                &account.address,
                totp,
                passkeys,
                Some(error.to_string()),
            ),
        ),
    )
        .into_response()
}
