//! The console's lockout page: accounts locked out by failed sign-ins, and lifting a lockout.
//! Only for admins (`request::Admin`), who sign in with a passkey; audited. Also the reset of a
//! portal visitor's passkeys.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_auth::websession::Found;
use sealpost_storage::{Account, Actor};
use serde::Deserialize;

use crate::html::{notice_line, render, Frame};
use crate::request::{blocking, Admin, Csrf};
use crate::WebState;

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
                            {crate::html::csrf_field(&csrf)}
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
        Frame::new("Locked-out accounts").account(&account.address, &found.session.csrf),
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
                    {crate::html::csrf_field(&found.session.csrf)}
                    <label for="address">"The patient's email address"</label>
                    <input type="email" id="address" name="address" required=true/>
                    <button type="submit">"Reset their passkey (codes are emailed again)"</button>
                </form>
            </section>
        },
    )
    .into_response()
}

pub(crate) async fn lockouts(
    State(state): State<Arc<WebState>>,
    Admin {
        found, me: account, ..
    }: Admin,
) -> Response {
    page(&state, &found, &account, None)
}

#[derive(Deserialize)]
pub(crate) struct LiftForm {
    csrf: String,
    login: String,
}

pub(crate) async fn lift(
    State(state): State<Arc<WebState>>,
    Admin {
        found,
        me: account,
        peer,
    }: Admin,
    Csrf(form): Csrf<LiftForm>,
) -> Response {
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
    Admin {
        found,
        me: account,
        peer,
    }: Admin,
    Csrf(form): Csrf<PasskeyResetForm>,
) -> Response {
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
