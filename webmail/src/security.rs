//! The account security page: passkeys, the authenticator app (TOTP), recovery codes, app
//! passwords, sessions and recent sign-ins. Every form carries the session's CSRF token;
//! adding a passkey and issuing an app password need a strong sign-in in the last minutes.
//! A session still owing its first second factor (`Stage::Enrolment`) sees only enrolment.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use leptos::prelude::*;
use sealpost_auth::credentials::{
    issue_app_password, revoke_app_password, AppPasswordRefused, Credentials, PasskeyFactor,
    TotpFactor, CREDENTIAL_NAME_CHARS_MAX, PASSKEYS_MAX,
};
use sealpost_auth::websession::{self, Found, Stage};
use sealpost_auth::{secrets, totp, Scope};
use sealpost_storage::{Account, Actor, AuditEvent, WebSessionId};
use serde::Deserialize;

use crate::ceremony::Kind;
use crate::html::{error_line, notice_line, render, when, Frame};
use crate::request::{
    blocking, json_error, now_ms, script_token, see_other, session, stale_page, Csrf, Enrolling,
    SignedIn, TokenForm,
};
use crate::{Peer, WebState};

/// Characters of a session's user agent shown in the session list.
const AGENT_CHARS_SHOWN: usize = 60;

/// Something shown once, right after the change that made it.
enum Shown {
    Nothing,
    AppPassword { name: String, password: String },
    RecoveryCodes(Vec<String>),
    TotpPending { svg: String, secret: String },
}

struct Outcome {
    notice: Option<String>,
    error: Option<String>,
    shown: Shown,
}

impl Outcome {
    fn none() -> Self {
        Self {
            notice: None,
            error: None,
            shown: Shown::Nothing,
        }
    }
    fn notice(text: impl Into<String>) -> Self {
        Self {
            notice: Some(text.into()),
            ..Self::none()
        }
    }
    fn error(text: impl Into<String>) -> Self {
        Self {
            error: Some(text.into()),
            ..Self::none()
        }
    }
    fn shown(shown: Shown) -> Self {
        Self {
            shown,
            ..Self::none()
        }
    }
}

/// The session and account of a request that may see the page (signed in, or enrolling).
async fn current(
    state: &Arc<WebState>,
    headers: &HeaderMap,
) -> Option<(Found, Account, Credentials)> {
    let found = session(state, headers).await?;
    if found.session.stage == Stage::SecondFactor {
        return None;
    }
    let (state, id) = (state.clone(), found.account);
    let (account, credentials) = blocking(move || {
        Some((
            state.store.account(id).ok()?,
            Credentials::load(&state.store, id).ok()?,
        ))
    })
    .await
    .flatten()?;
    Some((found, account, credentials))
}

fn actor(account: &Account, peer: &Peer) -> Actor {
    Actor {
        name: account.address.clone(),
        peer: peer.0.to_string(),
    }
}

pub(crate) async fn page(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    match current(&state, &headers).await {
        Some((found, account, credentials)) => {
            show(&state, &found, &account, &credentials, Outcome::none()).await
        }
        None => see_other("/"),
    }
}

async fn show(
    state: &Arc<WebState>,
    found: &Found,
    account: &Account,
    credentials: &Credentials,
    outcome: Outcome,
) -> Response {
    let sessions = {
        let (state, id) = (state.clone(), account.id);
        blocking(move || websession::list(&state.store, id).unwrap_or_default())
            .await
            .unwrap_or_default()
    };
    let enrolling = found.session.stage == Stage::Enrolment;
    let passkey_needed = state.passkey_required(account);
    let strong = found.session.recently_strong(now_ms());
    let csrf = found.session.csrf.clone();
    let status = if outcome.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let intro = enrolling.then(|| {
        let what = if passkey_needed {
            "Your account needs a passkey before you can go on. Add one below."
        } else {
            "Your account needs a second factor before you can go on: add a passkey, or set up an authenticator app."
        };
        view! { <p class="error" role="alert">{what}</p> }
    });
    let content = view! {
        {intro}
        {error_line(outcome.error)}
        {notice_line(outcome.notice)}
        {shown_view(outcome.shown, &csrf)}
        {passkeys_view(credentials, &csrf, enrolling, strong)}
        {(!passkey_needed).then(|| totp_view(credentials, &csrf))}
        {(!enrolling).then(|| view! {
            {password_view(&csrf, strong)}
            {recovery_view(credentials, &csrf)}
            {app_passwords_view(credentials, &csrf, strong)}
            {sessions_view(&sessions, &found.id, &csrf)}
            {sign_ins_view(credentials)}
        })}
    };
    (
        status,
        render(
            Frame::new("Account security")
                .account(&account.address, &found.session.csrf)
                .script(true),
            content,
        ),
    )
        .into_response()
}

fn shown_view(shown: Shown, csrf: &str) -> impl IntoView {
    let csrf = csrf.to_string();
    match shown {
        Shown::Nothing => None,
        Shown::AppPassword { name, password } => Some(
            view! {
                <section>
                    <h2>"Your new app password"</h2>
                    <p>"For " {name} ". Enter it in the mail client as its password. It is shown only now."</p>
                    <p class="secret" id="app-password">{password}</p>
                </section>
            }
            .into_any(),
        ),
        Shown::RecoveryCodes(codes) => Some(
            view! {
                <section>
                    <h2>"Your recovery codes"</h2>
                    <p>"Each works once, instead of your second factor. Keep them somewhere safe; they are shown only now, and the old ones no longer work."</p>
                    <ul id="recovery-codes">{codes.into_iter().map(|c| view! { <li class="secret">{c}</li> }).collect::<Vec<_>>()}</ul>
                </section>
            }
            .into_any(),
        ),
        Shown::TotpPending { svg, secret } => Some(
            view! {
                <section>
                    <h2>"Set up your authenticator app"</h2>
                    <p>"Scan this code with the app, or type the key in by hand. Then enter the six-digit code it shows."</p>
                    <div class="qr" inner_html=svg></div>
                    <p>"Key: " <span class="secret" id="totp-secret">{secret}</span></p>
                    <form method="post" action="/security/totp/confirm">
                        {crate::html::csrf_field(&csrf)}
                        <label for="totp-code">"Code from the app"</label>
                        <input type="text" id="totp-code" name="code" inputmode="numeric" autocomplete="one-time-code" required=true/>
                        <button type="submit">"Turn on"</button>
                    </form>
                </section>
            }
            .into_any(),
        ),
    }
}

fn passkeys_view(
    credentials: &Credentials,
    csrf: &str,
    enrolling: bool,
    strong: bool,
) -> impl IntoView {
    let rows: Vec<_> = credentials
        .passkeys
        .iter()
        .map(|key| {
            let (csrf, id) = (csrf.to_string(), key.id.clone());
            let used = key.last_used_ms.map_or_else(|| "never".to_string(), when);
            view! {
                <tr>
                    <td>{key.name.clone()}</td>
                    <td>{when(key.created_ms)}</td>
                    <td>{used}</td>
                    <td>
                        <form class="inline" method="post" action="/security/passkeys/remove">
                            {crate::html::csrf_field(&csrf)}
                            <input type="hidden" name="id" value=id/>
                            <button type="submit" class="quiet">"Remove"</button>
                        </form>
                    </td>
                </tr>
            }
        })
        .collect();
    // Adding needs a recent strong sign-in, except as the first factor of an enrolment.
    let can_add = enrolling || strong;
    let csrf = csrf.to_string();
    view! {
        <section id="passkeys">
            <h2>"Passkeys"</h2>
            {if rows.is_empty() {
                view! { <p class="muted">"No passkeys yet."</p> }.into_any()
            } else {
                view! { <table><tr><th>"Name"</th><th>"Added"</th><th>"Last used"</th><th></th></tr>{rows}</table> }.into_any()
            }}
            {if can_add {
                view! {
                    <form data-passkey="register" data-start="/security/passkeys/start" data-finish="/security/passkeys/finish">
                        {crate::html::csrf_field(&csrf)}
                        <label for="passkey-name">"Name for the new passkey"</label>
                        <input type="text" id="passkey-name" name="name" placeholder="Phone, security key, laptop" maxlength="64" required=true/>
                        <button type="submit">"Add a passkey"</button>
                        <p class="passkey-status muted" role="status"></p>
                    </form>
                }.into_any()
            } else {
                view! { <p><a href="/reauth">"Confirm it is you"</a>" to add a passkey."</p> }.into_any()
            }}
        </section>
    }
}

fn totp_view(credentials: &Credentials, csrf: &str) -> impl IntoView {
    let csrf = csrf.to_string();
    let body = match &credentials.totp {
        Some(factor) => view! {
            <p>"On since " {when(factor.enrolled_ms)} "."</p>
            <form method="post" action="/security/totp/remove">
                {crate::html::csrf_field(&csrf)}
                <button type="submit" class="quiet">"Turn off"</button>
            </form>
        }
        .into_any(),
        None => view! {
            <p class="muted">"Not set up."</p>
            <form method="post" action="/security/totp/start">
                {crate::html::csrf_field(&csrf)}
                <button type="submit">"Set up an authenticator app"</button>
            </form>
        }
        .into_any(),
    };
    view! { <section id="totp"><h2>"Authenticator app"</h2>{body}</section> }
}

fn password_view(csrf: &str, strong: bool) -> impl IntoView {
    let csrf = csrf.to_string();
    let body = if strong {
        view! {
            <form method="post" action="/security/password">
                {crate::html::csrf_field(&csrf)}
                <label for="new-password">"New password"</label>
                <input type="password" id="new-password" name="password" autocomplete="new-password" required=true/>
                <label for="new-password-again">"The same again"</label>
                <input type="password" id="new-password-again" name="again" autocomplete="new-password" required=true/>
                <p class="muted">"At least 12 characters; several unrelated words are easiest to remember. Common and guessable passwords are refused. Your other sessions end."</p>
                <button type="submit" class="quiet">"Change the password"</button>
            </form>
        }
        .into_any()
    } else {
        view! { <p><a href="/reauth">"Confirm it is you"</a>" to change your password."</p> }
            .into_any()
    };
    view! { <section id="password"><h2>"Password"</h2>{body}</section> }
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    csrf: String,
    password: String,
    again: String,
}

pub(crate) async fn password_change(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account,
        peer,
    }: SignedIn,
    Csrf(form): Csrf<PasswordForm>,
) -> Response {
    let credentials = match credentials_of(&state, &account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    if !found.session.signed_in() {
        return see_other("/security");
    }
    if !found.session.recently_strong(now_ms()) {
        return see_other("/reauth");
    }
    if form.password != form.again {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error("The two passwords differ."),
        )
        .await;
    }
    if let Err(weakness) =
        sealpost_auth::password::check(&form.password, &[&account.address, &account.display_name])
    {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error(format!("Choose another password: {weakness}.")),
        )
        .await;
    }
    let Some(ticket) = state
        .lockout
        .admit_hash(&peer.0.ip().to_string(), &account.address)
    else {
        return crate::request::hashing_busy();
    };
    let who = actor(&account, &peer);
    let (state2, id, this, password) = (state.clone(), account.id, found.id, form.password.clone());
    let changed = blocking(move || {
        let _ticket = ticket;
        state2.store.set_password(id, &password, &who)?;
        // Every other session ends: whoever knew the old password is out.
        let others: Vec<WebSessionId> = websession::list(&state2.store, id)?
            .into_iter()
            .map(|(sid, _)| sid)
            .filter(|sid| *sid != this)
            .collect();
        state2
            .store
            .delete_web_sessions(id, Some(&others), vec![])?;
        Ok::<_, sealpost_storage::Error>(())
    })
    .await;
    match changed {
        Some(Ok(())) => {
            after(
                &state,
                &found,
                &account,
                Outcome::notice("Your password was changed."),
            )
            .await
        }
        _ => {
            show(
                &state,
                &found,
                &account,
                &credentials,
                Outcome::error("Try again shortly."),
            )
            .await
        }
    }
}

fn recovery_view(credentials: &Credentials, csrf: &str) -> impl IntoView {
    let csrf = csrf.to_string();
    let left = credentials.recovery.len();
    view! {
        <section id="recovery">
            <h2>"Recovery codes"</h2>
            <p>{format!("{left} unused.")}</p>
            <form method="post" action="/security/recovery">
                {crate::html::csrf_field(&csrf)}
                <button type="submit" class="quiet">"Make new recovery codes"</button>
            </form>
        </section>
    }
}

fn app_passwords_view(credentials: &Credentials, csrf: &str, strong: bool) -> impl IntoView {
    let rows: Vec<_> = credentials
        .app_passwords
        .iter()
        .map(|app| {
            let (csrf, id) = (csrf.to_string(), app.id.clone());
            let used = match (app.last_used_ms, &app.last_address) {
                (Some(at), Some(from)) => format!("{} from {from}", when(at)),
                _ => "never".to_string(),
            };
            view! {
                <tr>
                    <td>{app.name.clone()}</td>
                    <td>{app.scope.as_str()}</td>
                    <td>{when(app.created_ms)}</td>
                    <td>{used}</td>
                    <td>
                        <form class="inline" method="post" action="/security/app-passwords/revoke">
                            {crate::html::csrf_field(&csrf)}
                            <input type="hidden" name="id" value=id/>
                            <button type="submit" class="quiet">"Revoke"</button>
                        </form>
                    </td>
                </tr>
            }
        })
        .collect();
    let csrf = csrf.to_string();
    view! {
        <section id="app-passwords">
            <h2>"App passwords"</h2>
            <p class="muted">"Mail programs (Outlook, Thunderbird, phones) sign in with an app password, never with your account password."</p>
            {(!rows.is_empty()).then(|| view! {
                <table><tr><th>"Name"</th><th>"For"</th><th>"Made"</th><th>"Last used"</th><th></th></tr>{rows}</table>
            })}
            {if strong {
                view! {
                    <form method="post" action="/security/app-passwords">
                        {crate::html::csrf_field(&csrf)}
                        <label for="app-name">"Name"</label>
                        <input type="text" id="app-name" name="name" placeholder="Outlook on the clinic PC" maxlength="64" required=true/>
                        <label for="app-scope">"For"</label>
                        <select id="app-scope" name="scope">
                            <option value="both">"Reading and sending (IMAP and SMTP)"</option>
                            <option value="imap">"Reading only (IMAP)"</option>
                            <option value="smtp">"Sending only (SMTP)"</option>
                        </select>
                        <button type="submit">"Make an app password"</button>
                    </form>
                }.into_any()
            } else {
                view! { <p><a href="/reauth">"Confirm it is you"</a>" to make an app password."</p> }.into_any()
            }}
        </section>
    }
}

fn sessions_view(
    sessions: &[(WebSessionId, websession::WebSession)],
    this: &WebSessionId,
    csrf: &str,
) -> impl IntoView {
    let rows: Vec<_> = sessions
        .iter()
        .map(|(id, s)| {
            let current = id == this;
            let (csrf, label) = (csrf.to_string(), websession::label(id));
            view! {
                <tr>
                    <td>{if current { "this browser".to_string() } else { s.agent.chars().take(AGENT_CHARS_SHOWN).collect::<String>() }}</td>
                    <td>{s.address.clone()}</td>
                    <td>{when(s.created_ms)}</td>
                    <td>{when(s.last_seen_ms)}</td>
                    <td>
                        {(!current).then(|| view! {
                            <form class="inline" method="post" action="/security/sessions/end">
                                {crate::html::csrf_field(&csrf)}
                                <input type="hidden" name="session" value=label/>
                                <button type="submit" class="quiet">"Sign out"</button>
                            </form>
                        })}
                    </td>
                </tr>
            }
        })
        .collect();
    let csrf = csrf.to_string();
    view! {
        <section id="sessions">
            <h2>"Where you are signed in"</h2>
            <table><tr><th>"Browser"</th><th>"Address"</th><th>"Signed in"</th><th>"Last seen"</th><th></th></tr>{rows}</table>
            <form method="post" action="/security/sessions/end-all">
                {crate::html::csrf_field(&csrf)}
                <button type="submit" class="danger">"Sign out everywhere"</button>
            </form>
        </section>
    }
}

fn sign_ins_view(credentials: &Credentials) -> impl IntoView {
    let rows: Vec<_> = credentials
        .sign_ins
        .iter()
        .map(|s| {
            view! {
                <tr>
                    <td>{when(s.at_ms)}</td>
                    <td>{s.address.clone()}</td>
                    <td>{s.method.clone()}</td>
                </tr>
            }
        })
        .collect();
    view! {
        <section id="sign-ins">
            <h2>"Recent sign-ins"</h2>
            <table><tr><th>"When"</th><th>"From"</th><th>"How"</th></tr>{rows}</table>
        </section>
    }
}

crate::request::with_csrf!(CodeForm, IdForm, AppPasswordForm, SessionForm, PasswordForm);

/// The account's credential record, or the answer when it cannot be read (nothing is
/// decided on a record that is not there).
async fn credentials_of(state: &Arc<WebState>, account: &Account) -> Result<Credentials, Response> {
    let (state, id) = (state.clone(), account.id);
    match blocking(move || Credentials::load(&state.store, id)).await {
        Some(Ok(credentials)) => Ok(credentials),
        _ => Err(crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Your account's security settings could not be read just now; nothing was changed.",
        )),
    }
}

/// Reloads the record after a change, then shows the page.
async fn after(
    state: &Arc<WebState>,
    found: &Found,
    account: &Account,
    outcome: Outcome,
) -> Response {
    let (state2, id) = (state.clone(), account.id);
    let credentials = blocking(move || Credentials::load(&state2.store, id).unwrap_or_default())
        .await
        .unwrap_or_default();
    show(state, found, account, &credentials, outcome).await
}

/// Once an enrolling session has its first second factor, it becomes a signed-in one.
async fn enrolled(state: &Arc<WebState>, found: &mut Found, method: &str) {
    if found.session.stage != Stage::Enrolment {
        return;
    }
    found.session.stage = Stage::SignedIn(format!("password, then enrolled {method}"));
    found.session.strong_at_ms = Some(now_ms());
    let (state, account, id, session) = (
        state.clone(),
        found.account,
        found.id,
        found.session.clone(),
    );
    let _ = blocking(move || websession::save(&state.store, account, &id, &session, vec![])).await;
}

/// Whether a factor may change in this session now: a signed-in one must have confirmed with
/// its strongest factor in the last minutes; an enrolling one adds its first factor, or (a
/// passkey role that proved its TOTP) the passkey it owes, while that proof is recent. An
/// enrolling session left open from before the owner enrolled a factor adds nothing.
fn may_change_factors(found: &Found, credentials: &Credentials) -> bool {
    let recent = found.session.recently_strong(now_ms());
    match found.session.stage {
        Stage::Enrolment => !credentials.has_second_factor() || recent,
        _ => recent,
    }
}

/// The refusal of a TOTP enrolment for a role that signs in with a passkey only: the code
/// would never be asked for, and a password and a code must not stand in for the passkey.
const TOTP_NOT_FOR_ROLE: &str =
    "Your role signs in with a passkey: add a passkey instead of an authenticator app.";

pub(crate) async fn totp_start(
    State(state): State<Arc<WebState>>,
    Enrolling {
        mut found,
        account,
        peer: _,
    }: Enrolling,
    Csrf(_): Csrf<TokenForm>,
) -> Response {
    let credentials = match credentials_of(&state, &account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    if !may_change_factors(&found, &credentials) {
        return see_other("/reauth");
    }
    if state.passkey_required(&account) {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error(TOTP_NOT_FOR_ROLE),
        )
        .await;
    }
    if credentials.totp.is_some() {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error("The authenticator app is on already."),
        )
        .await;
    }
    let secret = totp::new_secret();
    let link = totp::enrolment_link(
        &secret,
        &format!("Sealpost {}", state.hostname),
        &account.address,
    )
    .unwrap_or_default();
    let svg = totp::qr_svg(&link).unwrap_or_default();
    let svg = svg.trim_start_matches(|c| c != '<').to_string();
    let svg = match svg.find("<svg") {
        Some(at) => svg[at..].to_string(),
        None => svg,
    };
    found.session.pending_totp = Some(secret.clone());
    let (state2, id, session_id, session) = (
        state.clone(),
        found.account,
        found.id,
        found.session.clone(),
    );
    let _ =
        blocking(move || websession::save(&state2.store, id, &session_id, &session, vec![])).await;
    show(
        &state,
        &found,
        &account,
        &credentials,
        Outcome::shown(Shown::TotpPending {
            svg,
            secret: totp::secret_text(&secret),
        }),
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct CodeForm {
    csrf: String,
    code: String,
}

pub(crate) async fn totp_confirm(
    State(state): State<Arc<WebState>>,
    Enrolling {
        mut found,
        account,
        peer,
    }: Enrolling,
    Csrf(form): Csrf<CodeForm>,
) -> Response {
    let credentials = match credentials_of(&state, &account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    if !may_change_factors(&found, &credentials) {
        return see_other("/reauth");
    }
    if state.passkey_required(&account) {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error(TOTP_NOT_FOR_ROLE),
        )
        .await;
    }
    let Some(secret) = found.session.pending_totp.clone() else {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error("Start the set-up again."),
        )
        .await;
    };
    let now = now_ms();
    let Some(step) = totp::verify(
        &secret,
        &form.code,
        u64::try_from(now / 1000).unwrap_or(0),
        None,
    ) else {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome {
                error: Some(
                    "That code did not match; check the app's clock and try the next code.".into(),
                ),
                ..Outcome::shown(Shown::TotpPending {
                    svg: totp::qr_svg(
                        &totp::enrolment_link(
                            &secret,
                            &format!("Sealpost {}", state.hostname),
                            &account.address,
                        )
                        .unwrap_or_default(),
                    )
                    .map(|s| s.find("<svg").map_or(s.clone(), |at| s[at..].to_string()))
                    .unwrap_or_default(),
                    secret: totp::secret_text(&secret),
                })
            },
        )
        .await;
    };
    let who = actor(&account, &peer);
    let (state2, id) = (state.clone(), account.id);
    let _ = blocking(move || {
        Credentials::update(&state2.store, id, |record| {
            record.totp = Some(TotpFactor {
                secret,
                enrolled_ms: now,
                last_step: Some(step),
            });
            Some(vec![AuditEvent::new(
                &who,
                "auth.totp.enrol",
                format!("account:{}", id.0),
            )])
        })
    })
    .await;
    found.session.pending_totp = None;
    let (state2, aid, sid, session) = (
        state.clone(),
        found.account,
        found.id,
        found.session.clone(),
    );
    let _ = blocking(move || websession::save(&state2.store, aid, &sid, &session, vec![])).await;
    enrolled(&state, &mut found, "an authenticator app").await;
    after(
        &state,
        &found,
        &account,
        Outcome::notice("The authenticator app is on."),
    )
    .await
}

/// Whether removing one factor would leave the account below what policy needs.
fn keeps_enough(
    state: &WebState,
    account: &Account,
    credentials: &Credentials,
    removing_passkey: bool,
) -> bool {
    let passkeys = credentials
        .passkeys
        .len()
        .saturating_sub(usize::from(removing_passkey));
    let totp = credentials.totp.is_some() && removing_passkey;
    if state.passkey_required(account) {
        return passkeys > 0;
    }
    !state.sign_in().second_factor_required || passkeys > 0 || totp
}

pub(crate) async fn totp_remove(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account,
        peer,
    }: SignedIn,
    Csrf(_): Csrf<TokenForm>,
) -> Response {
    let credentials = match credentials_of(&state, &account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    if credentials.totp.is_none() {
        return show(&state, &found, &account, &credentials, Outcome::none()).await;
    }
    if !may_change_factors(&found, &credentials) {
        return see_other("/reauth");
    }
    if !keeps_enough(&state, &account, &credentials, false) {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error("Add a passkey first: your account must keep a second factor."),
        )
        .await;
    }
    let who = actor(&account, &peer);
    let (state2, id) = (state.clone(), account.id);
    let _ = blocking(move || {
        Credentials::update(&state2.store, id, |record| {
            record.totp = None;
            Some(vec![AuditEvent::new(
                &who,
                "auth.totp.remove",
                format!("account:{}", id.0),
            )])
        })
    })
    .await;
    after(
        &state,
        &found,
        &account,
        Outcome::notice("The authenticator app is off."),
    )
    .await
}

pub(crate) async fn recovery_codes(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account,
        peer,
    }: SignedIn,
    Csrf(_): Csrf<TokenForm>,
) -> Response {
    let credentials = match credentials_of(&state, &account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    if !may_change_factors(&found, &credentials) {
        return see_other("/reauth");
    }
    let (codes, hashes) = secrets::recovery_codes();
    let who = actor(&account, &peer);
    let (state2, id) = (state.clone(), account.id);
    let _ = blocking(move || {
        Credentials::update(&state2.store, id, |record| {
            record.recovery = hashes;
            Some(vec![AuditEvent::new(
                &who,
                "auth.recovery_codes.issue",
                format!("account:{}", id.0),
            )])
        })
    })
    .await;
    after(
        &state,
        &found,
        &account,
        Outcome::shown(Shown::RecoveryCodes(codes)),
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct PasskeyName {
    name: String,
}

pub(crate) async fn passkey_start(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    Json(request): Json<PasskeyName>,
) -> Response {
    let Some((found, account, credentials)) = current(&state, &headers).await else {
        return json_error(StatusCode::UNAUTHORIZED, "sign in again");
    };
    if !found.session.csrf_ok(script_token(&headers)) {
        return stale_page();
    }
    if !may_change_factors(&found, &credentials) {
        return json_error(
            StatusCode::FORBIDDEN,
            "confirm it is you first (Account security, Confirm)",
        );
    }
    let name = request.name.trim().to_string();
    if name.is_empty() || name.chars().count() > CREDENTIAL_NAME_CHARS_MAX {
        return json_error(
            StatusCode::BAD_REQUEST,
            "give the passkey a name of 1 to 64 characters",
        );
    }
    if credentials.passkeys.len() >= PASSKEYS_MAX {
        return json_error(
            StatusCode::BAD_REQUEST,
            "at most 16 passkeys; remove one first",
        );
    }
    let user = credentials
        .user_handle
        .unwrap_or_else(sealpost_auth::passkeys::new_user_handle);
    let existing: Vec<_> = credentials
        .passkeys
        .iter()
        .map(|k| k.passkey.clone())
        .collect();
    match state.passkeys.start_registration(
        user,
        &account.address,
        &account.display_name,
        &existing,
    ) {
        Ok((options, ceremony_state)) => {
            let kept = serde_json::json!({ "state": ceremony_state, "name": name, "user": user })
                .to_string();
            let ceremony = state.ceremonies.start(Kind::Register, account.id, kept);
            let options: serde_json::Value = serde_json::from_str(&options).unwrap_or_default();
            Json(serde_json::json!({ "ceremony": ceremony, "options": options })).into_response()
        }
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
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
    let Some((mut found, account, _)) = current(&state, &headers).await else {
        return json_error(StatusCode::UNAUTHORIZED, "sign in again");
    };
    if !found.session.csrf_ok(script_token(&headers)) {
        return stale_page();
    }
    let Some((owner, kept)) = state.ceremonies.finish(&request.ceremony, Kind::Register) else {
        return json_error(StatusCode::BAD_REQUEST, "that took too long; try again");
    };
    if owner != account.id {
        return json_error(StatusCode::FORBIDDEN, "not your ceremony");
    }
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap_or_default();
    let (Some(ceremony_state), Some(name)) = (kept["state"].as_str(), kept["name"].as_str()) else {
        return json_error(StatusCode::BAD_REQUEST, "try again");
    };
    let user = serde_json::from_value(kept["user"].clone()).ok();
    let passkey = match state
        .passkeys
        .finish_registration(ceremony_state, &request.credential.to_string())
    {
        Ok(passkey) => passkey,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let who = actor(&account, &peer);
    let (state2, id, name) = (state.clone(), account.id, name.to_string());
    let stored = blocking(move || {
        Credentials::update(&state2.store, id, |record| {
            if record.passkeys.len() >= PASSKEYS_MAX
                || record
                    .passkeys
                    .iter()
                    .any(|k| k.passkey.cred_id() == passkey.cred_id())
            {
                return None;
            }
            if record.user_handle.is_none() {
                record.user_handle = user;
            }
            let key_id = secrets::token(6);
            record.passkeys.push(PasskeyFactor {
                id: key_id.clone(),
                name: name.clone(),
                passkey,
                created_ms: now_ms(),
                last_used_ms: None,
            });
            Some(vec![AuditEvent::new(
                &who,
                "auth.passkey.add",
                format!("account:{}", id.0),
            )
            .detail(format!("passkey {key_id} \"{name}\""))])
        })
    })
    .await;
    if !matches!(stored, Some(Ok(true))) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "this passkey is registered already",
        );
    }
    enrolled(&state, &mut found, "a passkey").await;
    Json(serde_json::json!({ "next": "/security" })).into_response()
}

#[derive(Deserialize)]
pub(crate) struct IdForm {
    csrf: String,
    id: String,
}

pub(crate) async fn passkey_remove(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account,
        peer,
    }: SignedIn,
    Csrf(form): Csrf<IdForm>,
) -> Response {
    let credentials = match credentials_of(&state, &account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    if !credentials.passkeys.iter().any(|k| k.id == form.id) {
        return show(&state, &found, &account, &credentials, Outcome::none()).await;
    }
    if !may_change_factors(&found, &credentials) {
        return see_other("/reauth");
    }
    if !keeps_enough(&state, &account, &credentials, true) {
        return show(
            &state,
            &found,
            &account,
            &credentials,
            Outcome::error("This is your last second factor: add another one before removing it."),
        )
        .await;
    }
    let who = actor(&account, &peer);
    let (state2, id, key) = (state.clone(), account.id, form.id.clone());
    let _ = blocking(move || {
        Credentials::update(&state2.store, id, |record| {
            let index = record.passkeys.iter().position(|k| k.id == key)?;
            let removed = record.passkeys.remove(index);
            Some(vec![AuditEvent::new(
                &who,
                "auth.passkey.remove",
                format!("account:{}", id.0),
            )
            .detail(format!("passkey {} \"{}\"", removed.id, removed.name))])
        })
    })
    .await;
    after(
        &state,
        &found,
        &account,
        Outcome::notice("The passkey was removed."),
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct AppPasswordForm {
    csrf: String,
    name: String,
    scope: String,
}

pub(crate) async fn app_password_issue(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account,
        peer,
    }: SignedIn,
    Csrf(form): Csrf<AppPasswordForm>,
) -> Response {
    let credentials = match credentials_of(&state, &account).await {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    if !found.session.signed_in() {
        return see_other("/security");
    }
    if !found.session.recently_strong(now_ms()) {
        return see_other("/reauth");
    }
    let scope = match form.scope.as_str() {
        "imap" => Scope::Imap,
        "smtp" => Scope::Smtp,
        "both" => Scope::Both,
        _ => {
            return show(
                &state,
                &found,
                &account,
                &credentials,
                Outcome::error("Choose what it is for."),
            )
            .await
        }
    };
    let who = actor(&account, &peer);
    let (state2, id, name) = (state.clone(), account.id, form.name.clone());
    let issued = blocking(move || issue_app_password(&state2.store, id, &name, scope, &who)).await;
    match issued {
        Some(Ok(password)) => {
            after(
                &state,
                &found,
                &account,
                Outcome::shown(Shown::AppPassword {
                    name: form.name.trim().to_string(),
                    password,
                }),
            )
            .await
        }
        Some(Err(why @ (AppPasswordRefused::Name | AppPasswordRefused::TooMany))) => {
            show(
                &state,
                &found,
                &account,
                &credentials,
                Outcome::error(why.to_string()),
            )
            .await
        }
        Some(Err(AppPasswordRefused::Store(error))) => {
            tracing::warn!(%error, "issuing an app password failed");
            show(
                &state,
                &found,
                &account,
                &credentials,
                Outcome::error("Try again shortly."),
            )
            .await
        }
        None => {
            show(
                &state,
                &found,
                &account,
                &credentials,
                Outcome::error("Try again shortly."),
            )
            .await
        }
    }
}

pub(crate) async fn app_password_revoke(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account,
        peer,
    }: SignedIn,
    Csrf(form): Csrf<IdForm>,
) -> Response {
    let who = actor(&account, &peer);
    let (state2, id, app) = (state.clone(), account.id, form.id.clone());
    let _ = blocking(move || revoke_app_password(&state2.store, id, &app, &who)).await;
    after(
        &state,
        &found,
        &account,
        Outcome::notice("The app password was revoked."),
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct SessionForm {
    csrf: String,
    session: String,
}

pub(crate) async fn session_end(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account,
        peer,
    }: SignedIn,
    Csrf(form): Csrf<SessionForm>,
) -> Response {
    let who = actor(&account, &peer);
    let (state2, id, label, this) = (state.clone(), account.id, form.session.clone(), found.id);
    let _ = blocking(move || {
        let sessions = websession::list(&state2.store, id)?;
        if let Some((target, _)) = sessions
            .iter()
            .find(|(sid, _)| websession::label(sid) == label && *sid != this)
        {
            websession::end(&state2.store, id, Some(*target), &who)?;
        }
        Ok::<_, sealpost_storage::Error>(())
    })
    .await;
    after(
        &state,
        &found,
        &account,
        Outcome::notice("That session was signed out."),
    )
    .await
}

pub(crate) async fn sessions_end_all(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found: _,
        account,
        peer,
    }: SignedIn,
    Csrf(_): Csrf<TokenForm>,
) -> Response {
    let who = actor(&account, &peer);
    let (state2, id) = (state.clone(), account.id);
    let _ = blocking(move || websession::end(&state2.store, id, None, &who)).await;
    (
        [crate::request::clear_cookie(crate::request::SESSION_COOKIE)],
        see_other("/sign-in"),
    )
        .into_response()
}
