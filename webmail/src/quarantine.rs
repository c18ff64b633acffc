//! Quarantine pages: a user's digest of what the spam filter held for them (sender, subject,
//! verdict) with release and delete, and the console's view across accounts for admins, which
//! shows sender and verdict, and the subject only where `[spam] admin_sees_subjects` allows
//! (a subject can be PHI). Releasing delivers the message byte for byte into INBOX and
//! BACKUP. Everything audited by the store; the admin's listing too.

use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_storage::{quarantine_id_hex, quarantine_id_parse, AccountId, Actor, AuditEvent};
use serde::Deserialize;

use crate::html::{button_form, error_line, notice_line, render, when, Frame};
use crate::request::{blocking, forbidden, Admin, Csrf, SignedIn};
use crate::{Peer, WebState};

/// Held messages one console search lists at most.
pub(crate) const QUARANTINE_ROWS_MAX: usize = 500;

pub(crate) async fn digest(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found, account: me, ..
    }: SignedIn,
) -> Response {
    digest_page(&state, &found, &me, None, None).await
}

async fn digest_page(
    state: &Arc<WebState>,
    found: &sealpost_auth::websession::Found,
    me: &sealpost_storage::Account,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let (store, id) = (state.store.clone(), me.id);
    let Some(Ok(held)) = blocking(move || store.quarantined(id)).await else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Try again.",
        );
    };
    let rows: Vec<_> = held
        .iter()
        .map(|q| {
            let fields = [("id", quarantine_id_hex(&q.id))];
            let csrf = &found.session.csrf;
            view! {
                <tr>
                    <td>{q.sender.clone()}</td>
                    <td>{q.subject.clone()}</td>
                    <td>{q.verdict.clone()}</td>
                    <td>{when(q.held_ms)}</td>
                    <td>{when(q.expires_ms)}</td>
                    <td>
                        {button_form("/quarantine", csrf, &fields, "release", "Release to Inbox", "")}
                        {button_form("/quarantine", csrf, &fields, "delete", "Delete", "danger")}
                    </td>
                </tr>
            }
        })
        .collect();
    let count = held.len();
    render(
        Frame::new("Quarantine").account(&me.address, &found.session.csrf),
        view! {
            {notice_line(notice)}
            {error_line(error)}
            <p class="muted">{format!("{count} messages the spam filter held for you. Released messages go to your Inbox; the rest are deleted when they expire.")}</p>
            <table id="quarantine"><tr><th>"From"</th><th>"Subject"</th><th>"Verdict"</th><th>"Held"</th><th>"Expires"</th><th></th></tr>{rows}</table>
            <p><a href="/mail">"← Mail"</a></p>
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ActForm {
    csrf: String,
    id: String,
    action: String,
    /// The account (the console's form only).
    #[serde(default)]
    account: Option<u64>,
}

fn act_on(
    store: &sealpost_storage::Store,
    account: AccountId,
    form: &ActForm,
    actor: &Actor,
) -> Result<String, String> {
    let id = quarantine_id_parse(&form.id).ok_or("no such held message")?;
    match form.action.as_str() {
        "release" => store
            .release_quarantined(account, &id, actor)
            .map(|()| "Released into the Inbox.".to_string())
            .map_err(|e| e.to_string()),
        "delete" => store
            .delete_quarantined(account, &id, actor)
            .map(|()| "Deleted.".to_string())
            .map_err(|e| e.to_string()),
        _ => Err("unknown action".into()),
    }
}

pub(crate) async fn digest_act(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found,
        account: me,
        peer,
    }: SignedIn,
    Csrf(form): Csrf<ActForm>,
) -> Response {
    let actor = Actor {
        name: me.address.clone(),
        peer: peer.0.to_string(),
    };
    let (store, id) = (state.store.clone(), me.id);
    let done = blocking(move || act_on(&store, id, &form, &actor))
        .await
        .unwrap_or_else(|| Err("try again".into()));
    match done {
        Ok(notice) => digest_page(&state, &found, &me, Some(notice), None).await,
        Err(error) => {
            let page = digest_page(
                &state,
                &found,
                &me,
                None,
                Some(format!("Not done: {error}.")),
            )
            .await;
            (StatusCode::UNPROCESSABLE_ENTITY, page).into_response()
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    sender: Option<String>,
}

pub(crate) async fn console(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
    Extension(peer): Extension<Peer>,
    Query(query): Query<SearchQuery>,
) -> Response {
    let actor = Actor {
        name: me.address.clone(),
        peer: peer.0.to_string(),
    };
    console_page(&state, &found, &me, &query, actor, None).await
}

async fn console_page(
    state: &Arc<WebState>,
    found: &sealpost_auth::websession::Found,
    me: &sealpost_storage::Account,
    query: &SearchQuery,
    actor: Actor,
    notice: Option<String>,
) -> Response {
    let sender = query
        .sender
        .as_deref()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty());
    let (store, wanted) = (state.store.clone(), sender.clone());
    let listed = blocking(move || {
        let mut rows = Vec::new();
        for account in store.list_accounts()? {
            for held in store.quarantined(account.id)? {
                if wanted
                    .as_ref()
                    .is_some_and(|w| !held.sender.to_lowercase().contains(w.as_str()))
                {
                    continue;
                }
                rows.push((account.address.clone(), held));
                if rows.len() >= QUARANTINE_ROWS_MAX {
                    break;
                }
            }
        }
        store.audit(
            AuditEvent::new(&actor, "quarantine.search", "quarantine of all accounts").detail(
                format!(
                    "{} held; sender {}",
                    rows.len(),
                    wanted.as_deref().unwrap_or("any")
                ),
            ),
        )?;
        Ok::<_, sealpost_storage::Error>(rows)
    })
    .await;
    let Some(Ok(rows)) = listed else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Try again.",
        );
    };
    let subjects = state.spam_subjects_shown;
    let count = rows.len();
    let rows: Vec<_> = rows
        .iter()
        .map(|(address, q)| {
            let fields = [("id", quarantine_id_hex(&q.id)), ("account", q.account.0.to_string())];
            let csrf = &found.session.csrf;
            let subject = if subjects {
                q.subject.clone()
            } else {
                "(not shown)".to_string()
            };
            view! {
                <tr>
                    <td>{address.clone()}</td>
                    <td>{q.sender.clone()}</td>
                    <td>{subject}</td>
                    <td>{q.verdict.clone()}</td>
                    <td>{when(q.held_ms)}</td>
                    <td>
                        {button_form("/admin/quarantine", csrf, &fields, "release", "Release", "")}
                        {button_form("/admin/quarantine", csrf, &fields, "delete", "Delete", "danger")}
                    </td>
                </tr>
            }
        })
        .collect();
    let value = sender.unwrap_or_default();
    render(
        Frame::new("Quarantine").account(&me.address, &found.session.csrf),
        view! {
            {notice_line(notice)}
            <form method="get" action="/admin/quarantine" class="stack" id="quarantine-search">
                <label for="q-sender">"Sender"</label><input type="text" id="q-sender" name="sender" value=value/>
                <button type="submit">"Search"</button>
            </form>
            <p class="muted">{format!("{count} held messages (at most {QUARANTINE_ROWS_MAX} listed). Contents are not shown here.")}</p>
            <table id="quarantine"><tr><th>"Account"</th><th>"From"</th><th>"Subject"</th><th>"Verdict"</th><th>"Held"</th><th></th></tr>{rows}</table>
        },
    )
    .into_response()
}

pub(crate) async fn console_act(
    State(state): State<Arc<WebState>>,
    Admin { found, me, peer }: Admin,
    Csrf(form): Csrf<ActForm>,
) -> Response {
    let actor = Actor {
        name: me.address.clone(),
        peer: peer.0.to_string(),
    };
    let Some(account) = form.account.map(AccountId) else {
        return forbidden();
    };
    let (store, acting) = (state.store.clone(), actor.clone());
    let done = blocking(move || act_on(&store, account, &form, &acting))
        .await
        .unwrap_or_else(|| Err("try again".into()));
    let notice = match done {
        Ok(text) => text,
        Err(error) => format!("Not done: {error}."),
    };
    console_page(
        &state,
        &found,
        &me,
        &SearchQuery::default(),
        actor,
        Some(notice),
    )
    .await
}

crate::request::with_csrf!(ActForm);
