//! The admin console's queue and message tracing. The queue: what waits, why (each
//! recipient's last reply), the next try; retry and delete, audited. Tracing: "was this message
//! sent?" answered from the delivery records (kept after the queue entries) by sender,
//! recipient, date range and Message-ID, with each recipient's outcome and protection, and
//! never the content (the subject neither: it can be patient information).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_storage::{Account, Actor, QueueId, RecipientState};
use serde::Deserialize;

use crate::html::{button_form, notice_line, render, when, Frame};
use crate::request::{blocking, Admin, Csrf};
use crate::WebState;

use sealpost_console::{state_text, TRACE_ROWS_MAX};

pub(crate) async fn queue(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
) -> Response {
    queue_page(&state, &found, &me, None).await
}

async fn queue_page(
    state: &Arc<WebState>,
    found: &sealpost_auth::websession::Found,
    me: &Account,
    notice: Option<String>,
) -> Response {
    let state2 = state.clone();
    let loaded = blocking(move || {
        let entries = state2.store.queued().ok()?;
        let accounts = state2.store.list_accounts().ok()?;
        Some((entries, accounts))
    })
    .await
    .flatten();
    let Some((entries, accounts)) = loaded else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The queue could not be read.",
        );
    };
    let address_of = |id| {
        accounts
            .iter()
            .find(|a| a.id == id)
            .map_or_else(|| "?".to_string(), |a| a.address.clone())
    };
    let rows: Vec<_> = entries
        .iter()
        .map(|entry| {
            let recipients: Vec<_> = entry
                .envelope
                .recipients
                .iter()
                .zip(&entry.states)
                .map(|(r, s)| view! { <li>{format!("{}: {}", r.address, state_text(s))}</li> })
                .collect();
            let kind = if entry.envelope.notice {
                "pickup notice"
            } else {
                "message"
            };
            let fields = [("id", entry.id.to_string())];
            let csrf = &found.session.csrf;
            view! {
                <tr>
                    <td><code>{entry.id.to_string()}</code><br/>{kind}</td>
                    <td>{address_of(entry.account)}</td>
                    <td>{format!("{} bytes", entry.size)}</td>
                    <td>{when(entry.created_ms)}</td>
                    <td>{format!("{} tries; next {}", entry.attempts, when(entry.next_attempt_ms))}</td>
                    <td><ul>{recipients}</ul></td>
                    <td>
                        {button_form("/admin/queue", csrf, &fields, "retry", "Retry now", "quiet")}
                        {button_form("/admin/queue", csrf, &fields, "delete", "Delete", "danger")}
                    </td>
                </tr>
            }
        })
        .collect();
    let count = entries.len();
    render(
        Frame::new("Queue").account(&me.address, &found.session.csrf),
        view! {
            {notice_line(notice)}
            <p class="muted">{format!("{count} entries wait. Deleting one drops its undelivered recipients without a bounce.")}</p>
            <table id="queue">
                <tr><th>"Entry"</th><th>"From account"</th><th>"Size"</th><th>"Queued"</th><th>"Tries"</th><th>"Recipients"</th><th></th></tr>
                {rows}
            </table>
            <p><a href="/admin/trace">"Trace a message"</a></p>
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct QueueForm {
    csrf: String,
    id: String,
    action: String,
}

pub(crate) async fn queue_act(
    State(state): State<Arc<WebState>>,
    Admin { found, me, peer }: Admin,
    Csrf(form): Csrf<QueueForm>,
) -> Response {
    let Ok(id) = form.id.parse::<QueueId>() else {
        return crate::html::message_page_status(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such queue entry.",
        );
    };
    let actor = Actor {
        name: me.address.clone(),
        peer: peer.0.to_string(),
    };
    let (state2, action) = (state.clone(), form.action.clone());
    let done = blocking(move || {
        let entry = state2.store.queued()?.into_iter().find(|e| e.id == id);
        let Some(entry) = entry else {
            return Ok(None);
        };
        match action.as_str() {
            "retry" => state2.store.queue_retry(entry.account, id, &actor)?,
            "delete" => state2.store.queue_delete(entry.account, id, &actor)?,
            _ => return Ok(None),
        }
        Ok::<_, sealpost_storage::Error>(Some(action))
    })
    .await;
    let notice = match done {
        Some(Ok(Some(action))) if action == "retry" => {
            if let Some(waker) = &state.sending.queue_waker {
                waker.notify_one();
            }
            format!("Entry {id} is being tried again.")
        }
        Some(Ok(Some(_))) => format!("Entry {id} was deleted."),
        Some(Ok(None)) => format!("Entry {id} is no longer in the queue."),
        _ => "The queue could not be changed; try again.".into(),
    };
    queue_page(&state, &found, &me, Some(notice)).await
}

#[derive(Deserialize, Default)]
pub(crate) struct TraceQuery {
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    /// YYYY-MM-DD, sent on or after.
    #[serde(default)]
    since: Option<String>,
    /// YYYY-MM-DD, sent before.
    #[serde(default)]
    before: Option<String>,
}

pub(crate) fn field(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(|v| v.trim().to_lowercase())
        .filter(|v| !v.is_empty())
}

pub(crate) fn day_ms(text: &Option<String>) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text.as_deref()?.trim(), &format).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

pub(crate) async fn trace(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
    Query(query): Query<TraceQuery>,
) -> Response {
    let searching = [
        &query.sender,
        &query.recipient,
        &query.message_id,
        &query.since,
        &query.before,
    ]
    .iter()
    .any(|f| field(f).is_some());
    let question = sealpost_console::TraceQuery {
        sender: field(&query.sender),
        recipient: field(&query.recipient),
        message_id: field(&query.message_id),
        since_ms: day_ms(&query.since),
        before_ms: day_ms(&query.before),
    };
    let store = state.store.clone();
    let found_rows = if searching {
        blocking(move || sealpost_console::trace(&store, &question).ok())
            .await
            .flatten()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let count = found_rows.len();
    let rows: Vec<_> = found_rows
        .into_iter()
        .map(
            |sealpost_console::Traced {
                 sender,
                 message_id: id,
                 delivery,
             }| {
                let lines: Vec<_> = delivery
                    .lines
                    .iter()
                    .map(|line| {
                        let mut text = state_text(&RecipientState {
                            status: line.status.clone(),
                            last_reply: None,
                        });
                        if let Some(at) = line.opened_ms {
                            text.push_str(&format!("; opened in the portal {}", when(at)));
                        }
                        if let Some(at) = line.revoked_ms {
                            text.push_str(&format!("; withdrawn {}", when(at)));
                        }
                        view! { <li>{format!("{}: {text}", line.address)}</li> }
                    })
                    .collect();
                view! {
                    <tr>
                        <td>{when(delivery.created_ms)}</td>
                        <td>{sender}</td>
                        <td><code>{id}</code></td>
                        <td><ul>{lines}</ul></td>
                    </tr>
                }
            },
        )
        .collect();
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let (s, r, m, a, b) = (
        value(&query.sender),
        value(&query.recipient),
        value(&query.message_id),
        value(&query.since),
        value(&query.before),
    );
    render(
        Frame::new("Message tracing").account(&me.address, &found.session.csrf),
        view! {
            <form method="get" action="/admin/trace" class="stack" id="trace">
                <label for="t-sender">"Sender (account)"</label><input type="text" id="t-sender" name="sender" value=s/>
                <label for="t-recipient">"Recipient"</label><input type="text" id="t-recipient" name="recipient" value=r/>
                <label for="t-id">"Message-ID"</label><input type="text" id="t-id" name="message_id" value=m/>
                <label for="t-since">"Sent from (YYYY-MM-DD)"</label><input type="text" id="t-since" name="since" value=a/>
                <label for="t-before">"Sent before (YYYY-MM-DD)"</label><input type="text" id="t-before" name="before" value=b/>
                <button type="submit">"Trace"</button>
            </form>
            {searching.then(|| view! { <p class="muted">{format!("{count} messages to outside recipients found (at most {TRACE_ROWS_MAX}).")}</p> })}
            <table id="traced"><tr><th>"Sent"</th><th>"Sender"</th><th>"Message-ID"</th><th>"Recipients"</th></tr>{rows}</table>
            <p class="muted">"Mail to outside recipients, from its delivery records; no content or subject is shown."</p>
        },
    )
    .into_response()
}

crate::request::with_csrf!(QueueForm);
