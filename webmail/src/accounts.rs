//! The admin console's accounts: list and search, create with a
//! one-time enrolment link, disable (which ends the account's web and IMAP sessions at once),
//! enable, end sessions, reset the second factors, revoke app passwords, delete with a typed
//! confirmation (crypto-shredding). Admins only; every change audited. And `/enrol/LINK`,
//! where a new user chooses the password.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use leptos::prelude::*;
use sealpost_auth::enrolment::{self, LinkCheck};
use sealpost_auth::websession::{self, Found};
use sealpost_auth::Credentials;
use sealpost_storage::{Account, AccountId, AccountStatus, Actor, Role};
use serde::Deserialize;

use crate::html::{error_line, notice_line, render, when, Frame};
use crate::request::{
    blocking, form_token, now_ms, see_other, set_cookie, Admin, Csrf, FormCookie, FORM_COOKIE,
};
use crate::{Peer, WebState};
use sealpost_console::{AccountAction, Outcome};

fn actor(admin: &Account, peer: &Peer) -> Actor {
    Actor {
        name: admin.address.clone(),
        peer: peer.0.to_string(),
    }
}

fn frame<'a>(title: &'a str, found: &'a Found, account: &'a Account) -> Frame<'a> {
    Frame::new(title).account(&account.address, &found.session.csrf)
}

#[derive(Deserialize, Default)]
pub(crate) struct ListQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    page: Option<usize>,
}

pub(crate) async fn list(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
    Query(query): Query<ListQuery>,
) -> Response {
    let search = query.q.clone().unwrap_or_default();
    let (store, needle, asked) = (state.store.clone(), search.clone(), query.page.unwrap_or(1));
    let Some(Ok(found_page)) =
        blocking(move || sealpost_console::search_accounts(&store, &needle, asked)).await
    else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The accounts could not be read.",
        );
    };
    let sealpost_console::AccountsPage {
        accounts,
        page,
        pages,
        ..
    } = found_page;
    let rows: Vec<_> = accounts
        .iter()
        .map(|a| {
            let href = format!("/admin/accounts/{}", a.id.0);
            view! {
                <tr>
                    <td><a href=href>{a.address.clone()}</a></td>
                    <td>{a.display_name.clone()}</td>
                    <td>{a.role.as_str()}</td>
                    <td>{status_word(a.status)}</td>
                </tr>
            }
        })
        .collect();
    let kept = format!("&q={}", crate::mail::encode_component(&search));
    let previous = (page > 1).then(|| {
        let href = format!("/admin/accounts?page={}{kept}", page - 1);
        view! { <a href=href rel="prev">"Previous"</a> }
    });
    let next = (page < pages).then(|| {
        let href = format!("/admin/accounts?page={}{kept}", page + 1);
        view! { <a href=href rel="next">"Next"</a> }
    });
    let csrf = found.session.csrf.clone();
    let count = accounts.len();
    render(
        frame("Accounts", &found, &me),
        view! {
            <form method="get" action="/admin/accounts" class="inline">
                <label for="q">"Find"</label>
                <input type="text" id="q" name="q" value=search/>
                <button type="submit">"Search"</button>
            </form>
            <p class="muted">{format!("{count} accounts · page {page} of {pages}")}</p>
            <table id="accounts"><tr><th>"Address"</th><th>"Name"</th><th>"Role"</th><th>"Status"</th></tr>{rows}</table>
            <p>{previous}" "{next}</p>
            <h2>"New account"</h2>
            <form method="post" action="/admin/accounts" class="stack" id="new-account">
                {crate::html::csrf_field(&csrf)}
                <label for="address">"Address"</label>
                <input type="email" id="address" name="address" required=true/>
                <label for="display_name">"Name"</label>
                <input type="text" id="display_name" name="display_name"/>
                <label for="role">"Role"</label>
                <select id="role" name="role">
                    <option value="staff">"staff"</option>
                    <option value="admin">"admin"</option>
                    <option value="auditor">"auditor (reads the audit log, changes nothing)"</option>
                </select>
                <p class="muted">"The account gets no password: you receive a one-time link for its owner, who chooses the password and sets up a second factor."</p>
                <button type="submit">"Create"</button>
            </form>
            <p id="admin-pages">
                <a href="/admin/queue">"Queue"</a>" · "<a href="/admin/trace">"Message tracing"</a>" · "
                <a href="/admin/audit">"Audit log"</a>" · "<a href="/admin/policies">"Sending policy"</a>" · "<a href="/admin/health">"Health"</a>" · "
                <a href="/admin/lockouts">"Locked-out accounts"</a>" · "<a href="/admin/holds">"Legal holds"</a>" · "
                <a href="/admin/retention">"Retention"</a>" · "<a href="/admin/discovery">"eDiscovery"</a>" · "
                <a href="/admin/quarantine">"Quarantine"</a>
            </p>
        },
    )
    .into_response()
}

fn status_word(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "active",
        AccountStatus::Disabled => "disabled",
    }
}

#[derive(Deserialize)]
pub(crate) struct CreateForm {
    csrf: String,
    address: String,
    #[serde(default)]
    display_name: String,
    role: String,
}

pub(crate) async fn create(
    State(state): State<Arc<WebState>>,
    Admin { found, me, peer }: Admin,
    Csrf(form): Csrf<CreateForm>,
) -> Response {
    let role = match form.role.as_str() {
        "admin" => Role::Admin,
        "auditor" => Role::Auditor,
        _ => Role::Staff,
    };
    let (console, actor) = (state.console(), actor(&me, &peer));
    let created = blocking(move || {
        sealpost_console::create_account(&console, &actor, &form.address, &form.display_name, role)
    })
    .await;
    match created {
        Some(Ok((id, link))) => detail_page(&state, &found, &me, id, Some(link), None).await,
        Some(Err(error)) => {
            let text = format!("Not created: {error}.");
            crate::html::message_page_status(StatusCode::UNPROCESSABLE_ENTITY, "Not created", &text)
        }
        None => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Try again.",
        ),
    }
}

pub(crate) async fn detail(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
    Path(id): Path<u64>,
) -> Response {
    detail_page(&state, &found, &me, AccountId(id), None, None).await
}

/// One account: what it is and has, and the actions; `link` is a new enrolment link to show
/// once, `notice` what the last action did.
async fn detail_page(
    state: &Arc<WebState>,
    found: &Found,
    me: &Account,
    id: AccountId,
    link: Option<String>,
    notice: Option<String>,
) -> Response {
    let state2 = state.clone();
    let loaded = blocking(move || {
        let account = state2.store.account(id).ok()?;
        let credentials = Credentials::load(&state2.store, id).ok()?;
        let sessions = websession::list(&state2.store, id)
            .map(|s| s.len())
            .unwrap_or(0);
        let aliases = sealpost_console::aliases_of(&state2.store, &account.address);
        let quota = (
            state2.store.quota(id).ok()?,
            state2.store.quota_usage(id).ok()?,
        );
        Some((account, credentials, sessions, aliases, quota))
    })
    .await
    .flatten();
    let Some((account, credentials, sessions, aliases, (quota, used))) = loaded else {
        return crate::html::message_page_status(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such account.",
        );
    };
    let link = link.map(|path| {
        let url = format!("{}{path}", state.origin);
        view! {
            <section class="notice" id="enrolment">
                <p>"Give this link to the account's owner, privately. It works once, for 7 days; it is not shown again."</p>
                <p><code id="enrolment-link">{url}</code></p>
            </section>
        }
    });
    let factors = format!(
        "{} passkeys, {}, {} recovery codes left, {} app passwords, {} web sessions",
        credentials.passkeys.len(),
        if credentials.totp.is_some() {
            "an authenticator app"
        } else {
            "no authenticator app"
        },
        credentials.recovery.len(),
        credentials.app_passwords.len(),
        sessions
    );
    let pending = credentials
        .enrolment
        .as_ref()
        .map(|l| format!("An enrolment link is open until {}.", when(l.expires_ms)));
    let action = format!("/admin/accounts/{}/act", account.id.0);
    let button = |value: &'static str, label: &'static str, class: &'static str| {
        let (csrf, action) = (found.session.csrf.clone(), action.clone());
        view! {
            <form method="post" action=action class="inline">
                {crate::html::csrf_field(&csrf)}
                <button type="submit" name="action" value=value class=class>{label}</button>
            </form>
            " "
        }
    };
    let toggle = match account.status {
        AccountStatus::Active => button("disable", "Disable", "danger"),
        AccountStatus::Disabled => button("enable", "Enable", "quiet"),
    };
    let alias_rows: Vec<_> = aliases
        .into_iter()
        .map(|alias| {
            let (csrf, action) = (found.session.csrf.clone(), action.clone());
            view! {
                <li>
                    {alias.clone()}" "
                    <form method="post" action=action class="inline">
                        {crate::html::csrf_field(&csrf)}
                        <input type="hidden" name="alias" value=alias/>
                        <button type="submit" name="action" value="alias-remove" class="quiet">"Remove"</button>
                    </form>
                </li>
            }
        })
        .collect();
    let (alias_action, alias_csrf) = (action.clone(), found.session.csrf.clone());
    let (quota_action, quota_csrf) = (action.clone(), found.session.csrf.clone());
    let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1_048_576.0);
    let quota_text = match quota {
        Some(limit) => format!(
            "{} used of {} (BACKUP does not count).",
            mb(used),
            mb(limit)
        ),
        None => format!("{} used; no quota (BACKUP does not count).", mb(used)),
    };
    let quota_value = quota
        .map(|b| format!("{}", b as f64 / 1_048_576.0))
        .unwrap_or_default();
    let (csrf, delete_action, address) = (
        found.session.csrf.clone(),
        action.clone(),
        account.address.clone(),
    );
    let title = account.address.clone();
    render(
        frame(&title, found, me),
        view! {
            <p><a href="/admin/accounts">"← Accounts"</a></p>
            {notice_line(notice)}
            {link}
            <table class="headers" id="account">
                <tr><th>"Name"</th><td>{account.display_name.clone()}</td></tr>
                <tr><th>"Role"</th><td>{account.role.as_str()}</td></tr>
                <tr><th>"Status"</th><td id="status">{status_word(account.status)}</td></tr>
                <tr><th>"Created"</th><td>{when(account.created_at_ms)}</td></tr>
                <tr><th>"Sign-in"</th><td>{factors}</td></tr>
            </table>
            {pending.map(|p| view! { <p class="muted">{p}</p> })}
            <p id="actions">
                {toggle}
                {button("end-sessions", "End all sessions", "quiet")}
                {button("link", "New enrolment link", "quiet")}
                {button("reset-factors", "Reset second factors", "quiet")}
                {button("revoke-app-passwords", "Revoke app passwords", "quiet")}
            </p>
            <h2>"Quota"</h2>
            <p id="quota">{quota_text}</p>
            <form method="post" action=quota_action class="inline" id="quota-set">
                {crate::html::csrf_field(&quota_csrf)}
                <input type="hidden" name="action" value="quota"/>
                <label for="quota_mb" class="inline-label">"Quota in MB (empty: none)"</label>
                <input type="text" id="quota_mb" name="quota_mb" value=quota_value/>
                <button type="submit" class="quiet">"Set"</button>
            </form>
            <h2>"Aliases"</h2>
            <p class="muted">"Mail to an alias reaches this account (and any other it is set for), and the account may send as it."</p>
            <ul id="aliases">{alias_rows}</ul>
            <form method="post" action=alias_action class="inline" id="alias-add">
                {crate::html::csrf_field(&alias_csrf)}
                <input type="hidden" name="action" value="alias-add"/>
                <label for="alias" class="inline-label">"New alias"</label>
                <input type="text" id="alias" name="alias"/>
                <button type="submit" class="quiet">"Add"</button>
            </form>
            <h2>"Delete"</h2>
            <form method="post" action=delete_action class="stack" id="delete">
                <p>"Deleting destroys the account's keys: its mail can never be read again. Type the address to confirm."</p>
                {crate::html::csrf_field(&csrf)}
                <input type="hidden" name="action" value="delete"/>
                <label for="confirm">{format!("Type {address}")}</label>
                <input type="text" id="confirm" name="confirm" autocomplete="off"/>
                <button type="submit" class="danger">"Delete for good"</button>
            </form>
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ActForm {
    csrf: String,
    action: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    alias: String,
    /// A quota in MB (decimals allowed); empty: none.
    #[serde(default)]
    quota_mb: String,
}

pub(crate) async fn act(
    State(state): State<Arc<WebState>>,
    Path(id): Path<u64>,
    Admin { found, me, peer }: Admin,
    Csrf(form): Csrf<ActForm>,
) -> Response {
    let id = AccountId(id);
    let action = match form.action.as_str() {
        "disable" => AccountAction::Disable,
        "enable" => AccountAction::Enable,
        "end-sessions" => AccountAction::EndSessions,
        "link" => AccountAction::EnrolmentLink,
        "reset-factors" => AccountAction::ResetFactors,
        "revoke-app-passwords" => AccountAction::RevokeAppPasswords,
        "delete" => AccountAction::Delete {
            confirm: form.confirm.clone(),
        },
        "alias-add" => AccountAction::AliasAdd(form.alias.clone()),
        "alias-remove" => AccountAction::AliasRemove(form.alias.clone()),
        "quota" => AccountAction::Quota(form.quota_mb.clone()),
        _ => {
            return crate::html::message_page_status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not done",
                "Unknown action.",
            )
        }
    };
    let (console, actor, me_id) = (state.console(), actor(&me, &peer), me.id);
    let done = blocking(move || {
        sealpost_console::act_on_account(&console, &actor, id, action, Some(me_id))
    })
    .await;
    match done {
        Some(Ok(Outcome::Done(text))) => {
            detail_page(&state, &found, &me, id, None, Some(text)).await
        }
        Some(Ok(Outcome::Link(link))) => {
            detail_page(&state, &found, &me, id, Some(link), None).await
        }
        Some(Ok(Outcome::Refused(text))) => {
            crate::html::message_page_status(StatusCode::UNPROCESSABLE_ENTITY, "Not done", &text)
        }
        Some(Ok(Outcome::Deleted(address))) => see_other(&format!(
            "/admin/accounts?q={}",
            crate::mail::encode_component(&address)
        )),
        Some(Err(sealpost_storage::Error::AccountNotFound { .. })) => {
            crate::html::message_page_status(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such account.",
            )
        }
        _ => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not done",
            "Try again.",
        ),
    }
}

/// The enrolment link's page: choose the password.
pub(crate) async fn enrol_page(
    State(state): State<Arc<WebState>>,
    Path(link): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((id, secret)) = enrolment::parse(&link) else {
        return link_refused(LinkCheck::Invalid);
    };
    let state2 = state.clone();
    match blocking(move || enrolment::check(&state2.store, id, &secret, now_ms())).await {
        Some(Ok(LinkCheck::Valid)) => {}
        Some(Ok(other)) => return link_refused(other),
        _ => return link_refused(LinkCheck::Invalid),
    }
    let (token, new) = form_token(&headers);
    let set = new.then(|| set_cookie(FORM_COOKIE, &token));
    (
        AppendHeaders(set),
        enrol_form(&link, &token, None, StatusCode::OK),
    )
        .into_response()
}

fn link_refused(check: LinkCheck) -> Response {
    let text = match check {
        LinkCheck::Expired => "This enrolment link has expired. Ask your administrator for a new one.",
        _ => "This enrolment link is not valid: it was used already, replaced by a newer one, or not copied whole.",
    };
    crate::html::message_page_status(StatusCode::GONE, "Link not valid", text)
}

fn enrol_form(link: &str, token: &str, error: Option<String>, status: StatusCode) -> Response {
    let (action, token) = (format!("/enrol/{link}"), token.to_string());
    (
        status,
        render(
            Frame::new("Choose your password"),
            view! {
                <section id="enrol">
                    {error_line(error)}
                    <form method="post" action=action class="stack">
                        {crate::html::csrf_field(&token)}
                        <label for="password">"Password (at least 12 characters; a few unrelated words work well)"</label>
                        <input type="password" id="password" name="password" autocomplete="new-password" required=true/>
                        <label for="confirm">"The same again"</label>
                        <input type="password" id="confirm" name="confirm" autocomplete="new-password" required=true/>
                        <button type="submit">"Set password"</button>
                    </form>
                </section>
            },
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct EnrolForm {
    csrf: String,
    password: String,
    confirm: String,
}

crate::request::with_csrf!(EnrolForm);

pub(crate) async fn enrol(
    State(state): State<Arc<WebState>>,
    Extension(peer): Extension<Peer>,
    Path(link): Path<String>,
    FormCookie(form): FormCookie<EnrolForm>,
) -> Response {
    let Some((id, secret)) = enrolment::parse(&link) else {
        return link_refused(LinkCheck::Invalid);
    };
    if form.password != form.confirm {
        let error = Some("The two passwords are not the same.".to_string());
        return enrol_form(&link, &form.csrf, error, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let state2 = state.clone();
    let Some(Ok(account)) = blocking(move || state2.store.account(id)).await else {
        return link_refused(LinkCheck::Invalid);
    };
    let local = account.address.split('@').next().unwrap_or("").to_string();
    if let Err(weakness) = sealpost_auth::password::check(
        &form.password,
        &[&account.address, &local, &account.display_name],
    ) {
        let error = Some(format!("Choose another password: {weakness}."));
        return enrol_form(&link, &form.csrf, error, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let actor = Actor {
        name: account.address.clone(),
        peer: peer.0.to_string(),
    };
    let Some(ticket) = state
        .lockout
        .admit_hash(&peer.0.ip().to_string(), &account.address)
    else {
        return crate::request::hashing_busy();
    };
    let (state2, password) = (state.clone(), form.password);
    let completed = blocking(move || {
        let _ticket = ticket;
        enrolment::complete(&state2.store, id, &secret, &password, &actor, now_ms())
    });
    match completed.await {
        Some(Ok(true)) => crate::html::message_page_status(
            StatusCode::OK,
            "Password set",
            "Your password is set. Sign in with your address and it; you will then set up a second factor.",
        ),
        Some(Ok(false)) => link_refused(LinkCheck::Invalid),
        _ => crate::html::message_page_status(StatusCode::SERVICE_UNAVAILABLE, "Not set", "Try again in a minute."),
    }
}

crate::request::with_csrf!(CreateForm, ActForm);
