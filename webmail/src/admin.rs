//! The first admin page: accounts locked out by failed sign-ins, and lifting a lockout. Only
//! for admins, who sign in with a passkey (policy); audited. The full console comes with its
//! own issue, on the same checks.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use leptos::prelude::*;
use sealpost_auth::websession::Found;
use sealpost_storage::{Account, Actor, Role};
use serde::Deserialize;

use crate::html::{notice_line, render, Frame};
use crate::request::{blocking, forbidden, see_other, session};
use crate::{Peer, WebState};

/// The signed-in admin of this request, or the answer for anyone else.
pub(crate) async fn admin(
    state: &Arc<WebState>,
    headers: &HeaderMap,
) -> Result<(Found, Account), Response> {
    console(state, headers, &[Role::Admin]).await
}

/// A console form of a signed-in admin (or, with `AUDITOR`, an auditor too) whose CSRF token
/// matches: the session, the account, the form and the client. Anything else is answered
/// before the handler runs (sign in, 403 for another role, 403 for a wrong token).
pub(crate) struct AdminForm<F, const AUDITOR: bool = false> {
    pub(crate) found: Found,
    pub(crate) me: Account,
    pub(crate) form: F,
    pub(crate) peer: Peer,
}

impl<F, const AUDITOR: bool> axum::extract::FromRequest<Arc<WebState>> for AdminForm<F, AUDITOR>
where
    F: serde::de::DeserializeOwned + crate::request::WithCsrf + Send + 'static,
{
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &Arc<WebState>,
    ) -> Result<Self, Response> {
        let peer = request
            .extensions()
            .get::<Peer>()
            .copied()
            .ok_or_else(forbidden)?;
        let roles: &[Role] = if AUDITOR {
            &[Role::Admin, Role::Auditor]
        } else {
            &[Role::Admin]
        };
        let (found, me) = console(state, request.headers(), roles).await?;
        let Form(form) = Form::<F>::from_request(request, state)
            .await
            .map_err(|_| forbidden())?;
        if !found.session.csrf_ok(form.csrf()) {
            return Err(forbidden());
        }
        // A console action needs a confirmation with the strongest factor (an admin's or an
        // auditor's passkey) in the last minutes: a session left open is not enough.
        if !found.session.recently_strong(crate::request::now_ms()) {
            return Err(see_other("/reauth"));
        }
        Ok(Self {
            found,
            me,
            form,
            peer,
        })
    }
}

/// The signed-in account of this request if its role is one of `roles` (the audit pages
/// admit auditors too), or the answer for anyone else.
pub(crate) async fn console(
    state: &Arc<WebState>,
    headers: &HeaderMap,
    roles: &[Role],
) -> Result<(Found, Account), Response> {
    let Some(found) = session(state, headers)
        .await
        .filter(|f| f.session.signed_in())
    else {
        return Err(see_other("/sign-in"));
    };
    let (state2, id) = (state.clone(), found.account);
    let Some(Ok(account)) = blocking(move || state2.store.account(id)).await else {
        return Err(see_other("/sign-in"));
    };
    if !roles.contains(&account.role) {
        return Err((
            StatusCode::FORBIDDEN,
            crate::html::message_page("Not for your role", "This page is for administrators."),
        )
            .into_response());
    }
    Ok((found, account))
}

fn page(state: &WebState, found: &Found, account: &Account, notice: Option<String>) -> Response {
    let window_minutes = state.lockout.settings().failure_window_ms.div_ceil(60_000);
    let rows: Vec<_> = state
        .lockout
        .locked_accounts()
        .into_iter()
        .map(|(login, failures)| {
            let csrf = found.session.csrf.clone();
            let name = login.clone();
            let minutes = state
                .lockout
                .lock_ends_in(&login)
                .map_or(0, |left| left.as_secs().div_ceil(60));
            let why = format!(
                "{failures} wrong passwords or codes (web, IMAP or SMTP) within {} minutes; passwords and codes are refused for {minutes} more minutes. A passkey still signs in.",
                window_minutes
            );
            view! {
                <tr>
                    <td>{login}</td>
                    <td>{failures}</td>
                    <td class="why">{why}</td>
                    <td>
                        <form class="inline" method="post" action="/admin/lockouts/lift">
                            <input type="hidden" name="csrf" value=csrf/>
                            <input type="hidden" name="login" value=name/>
                            <button type="submit">"Lift"</button>
                        </form>
                    </td>
                </tr>
            }
        })
        .collect();
    let empty = rows.is_empty();
    render(
        Frame {
            title: "Locked-out accounts",
            csrf: Some(&found.session.csrf),
            account: Some((&account.address, &found.session.csrf)),
            script: false,
        },
        view! {
            {notice_line(notice)}
            <section id="lockouts">
                {if empty {
                    view! { <p>"No account is locked out."</p> }.into_any()
                } else {
                    view! { <table><tr><th>"Account"</th><th>"Failed sign-ins"</th><th>"Why it is locked"</th><th></th></tr>{rows}</table> }.into_any()
                }}
                <p class="muted">"A lockout also ends by itself when its time is up."</p>
            </section>
            <section id="portal-passkey">
                <h2>"A patient lost their portal passkey"</h2>
                <form method="post" action="/admin/portal-passkeys/reset" class="stack">
                    <input type="hidden" name="csrf" value=found.session.csrf.clone()/>
                    <label for="address">"The patient's email address"</label>
                    <input type="email" id="address" name="address" required=true/>
                    <button type="submit">"Reset their passkey (codes are emailed again)"</button>
                </form>
            </section>
        },
    )
    .into_response()
}

pub(crate) async fn lockouts(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    match admin(&state, &headers).await {
        Ok((found, account)) => page(&state, &found, &account, None),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(crate) struct LiftForm {
    csrf: String,
    login: String,
}

pub(crate) async fn lift(
    State(state): State<Arc<WebState>>,
    checked: AdminForm<LiftForm>,
) -> Response {
    let AdminForm {
        found,
        me: account,
        form,
        peer,
    } = checked;
    let actor = Actor {
        name: account.address.clone(),
        peer: peer.0.to_string(),
    };
    let (console, login) = (state.console(), form.login.clone());
    let lifted = blocking(move || sealpost_console::lift_lockout(&console, &actor, &login))
        .await
        .and_then(Result::ok)
        .unwrap_or(false);
    let notice = if lifted {
        format!("{}'s lockout is lifted.", form.login)
    } else {
        format!("{} was not locked out.", form.login)
    };
    page(&state, &found, &account, Some(notice))
}

crate::request::with_csrf!(LiftForm);

#[derive(Deserialize)]
pub(crate) struct PasskeyResetForm {
    csrf: String,
    address: String,
}

crate::request::with_csrf!(PasskeyResetForm);

/// An admin resets a portal visitor's passkeys (a lost device); audited.
pub(crate) async fn reset_portal_passkey(
    State(state): State<Arc<WebState>>,
    checked: AdminForm<PasskeyResetForm>,
) -> Response {
    let AdminForm {
        found,
        me: account,
        form,
        peer,
    } = checked;
    let actor = Actor {
        name: account.address.clone(),
        peer: peer.0.to_string(),
    };
    let (store, address) = (state.store.clone(), form.address.trim().to_lowercase());
    let shown = address.clone();
    let reset = blocking(move || store.reset_portal_passkeys(&address, &actor))
        .await
        .and_then(Result::ok);
    let notice = match reset {
        Some(true) => {
            format!("{shown}'s portal passkey is reset: codes are emailed to them again.")
        }
        Some(false) => format!("{shown} had no portal passkey."),
        None => "Not reset; try again.".to_string(),
    };
    page(&state, &found, &account, Some(notice))
}
