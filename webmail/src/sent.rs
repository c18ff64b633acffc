//! What became of sent mail: per outside recipient, how it was protected (verified TLS, or
//! the secure portal and why), and for the portal whether and when the recipient opened it;
//! the sender withdraws a portal message (before it is opened, or to stop further access).
//! Read from the store's delivery records, which outlive the queue entries.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_storage::{Delivery, DeliveryLine, PickupState, QueueId, RecipientStatus};
use serde::Deserialize;

use crate::html::{render, when, Frame};
use crate::mail::actor_of;
use crate::request::{blocking, see_other, Csrf, SignedIn};
use crate::WebState;

#[derive(Deserialize, Default)]
pub(crate) struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

fn subject_of(delivery: &Delivery) -> String {
    let subject = sealpost_mime::Summary::from_bytes(&delivery.summary)
        .map(|s| sealpost_mime::Shown::of_imap(&s.envelope).subject)
        .unwrap_or_default();
    if subject.trim().is_empty() {
        "(no subject)".into()
    } else {
        subject
    }
}

/// How one recipient was reached, in words, and whether the sender may still withdraw it.
fn describe(line: &DeliveryLine, pickup: Option<PickupState>) -> (String, bool) {
    match &line.status {
        RecipientStatus::Pending => (
            "Waiting to be delivered (tried again automatically)".into(),
            false,
        ),
        // A pickup notice that could not have verified TLS says how it went instead: over
        // STARTTLS with its certificate unchecked, or in plaintext where no TLS was offered.
        RecipientStatus::Delivered { at_ms, how } if how.contains("a pickup notice") => {
            (format!("Delivered, {how}, {}", when(*at_ms)), false)
        }
        RecipientStatus::Delivered { at_ms, how } => (
            format!("Delivered over verified TLS ({how}), {}", when(*at_ms)),
            false,
        ),
        RecipientStatus::Failed { at_ms, reply } => {
            (format!("Not delivered: {reply} ({})", when(*at_ms)), false)
        }
        RecipientStatus::Portal { at_ms, why } => {
            let opened = match line.opened_ms {
                Some(at) => format!("opened at {}", when(at)),
                None => "not opened yet".into(),
            };
            let state = match (line.revoked_ms, pickup) {
                (Some(at), _) => format!("; withdrawn at {}", when(at)),
                (None, Some(PickupState::Expired)) => "; the link has expired".into(),
                _ => String::new(),
            };
            let live = line.revoked_ms.is_none() && pickup == Some(PickupState::Live);
            (
                format!(
                    "Secure portal since {} ({why}); {opened}{state}",
                    when(*at_ms)
                ),
                live,
            )
        }
    }
}

pub(crate) async fn list(
    State(state): State<Arc<WebState>>,
    SignedIn { found, account, .. }: SignedIn,
    Query(query): Query<DoneQuery>,
) -> Response {
    let (state2, id) = (state.clone(), account.id);
    let Some(Ok(deliveries)) = blocking(move || state2.store.deliveries(id)).await else {
        return crate::mail::not_found();
    };
    let rows: Vec<_> = deliveries
        .iter()
        .map(|d| {
            let href = format!("/sent/{}", d.queue);
            let recipients = d
                .lines
                .iter()
                .map(|l| l.address.clone())
                .collect::<Vec<_>>()
                .join(", ");
            let portal = d
                .lines
                .iter()
                .filter(|l| matches!(l.status, RecipientStatus::Portal { .. }))
                .count();
            let opened = d.lines.iter().filter(|l| l.opened_ms.is_some()).count();
            let summary = if portal > 0 {
                format!("{portal} by portal, {opened} opened")
            } else {
                String::new()
            };
            view! {
                <tr>
                    <td><a href=href>{subject_of(d)}</a></td>
                    <td>{recipients}</td>
                    <td>{when(d.created_ms)}</td>
                    <td>{summary}</td>
                </tr>
            }
        })
        .collect();
    let done = query.done.map(|_| "Sent.".to_string());
    render(
        Frame::new("Sent to outside recipients").account(&account.address, &found.session.csrf),
        view! {
            {crate::html::notice_line(done)}
            <p class="muted">"Mail to people inside the organisation is delivered at once; below is what became of mail to outside recipients."</p>
            <table id="deliveries">
                <tr><th>"Subject"</th><th>"To"</th><th>"Sent"</th><th>"Portal"</th></tr>
                {rows}
            </table>
        },
    )
    .into_response()
}

pub(crate) async fn status(
    State(state): State<Arc<WebState>>,
    SignedIn { found, account, .. }: SignedIn,
    Path(queue): Path<String>,
    Query(query): Query<DoneQuery>,
) -> Response {
    let Ok(queue) = queue.parse::<QueueId>() else {
        return crate::mail::not_found();
    };
    let (state2, id) = (state.clone(), account.id);
    let loaded = blocking(move || {
        let delivery = state2.store.delivery(id, queue).ok()??;
        let states: Vec<Option<PickupState>> = delivery
            .lines
            .iter()
            .map(|l| {
                l.pickup
                    .and_then(|p| state2.store.pickup_by_id(p).ok().flatten())
                    .map(|p| p.state)
            })
            .collect();
        Some((delivery, states))
    })
    .await
    .flatten();
    let Some((delivery, states)) = loaded else {
        return crate::mail::not_found();
    };
    let csrf = found.session.csrf.clone();
    let action = format!("/sent/{queue}/revoke");
    let rows: Vec<_> = delivery
        .lines
        .iter()
        .zip(states)
        .map(|(line, pickup)| {
            let (text, revocable) = describe(line, pickup);
            let label = if line.opened_ms.is_some() {
                "Stop further access"
            } else {
                "Withdraw"
            };
            let form = revocable.then(|| {
                let (csrf, action, address) = (csrf.clone(), action.clone(), line.address.clone());
                view! {
                    <form method="post" action=action class="inline">
                        {crate::html::csrf_field(&csrf)}
                        <input type="hidden" name="recipient" value=address/>
                        <button type="submit" class="danger">{label}</button>
                    </form>
                }
            });
            // A patient who lost the passkey they registered in the portal: the sender resets it,
            // and codes are emailed to the address again.
            let reset = line.pickup.is_some().then(|| {
                let (csrf, action, address) = (
                    csrf.clone(),
                    format!("/sent/{queue}/reset-passkey"),
                    line.address.clone(),
                );
                view! {
                    <form method="post" action=action class="inline">
                        {crate::html::csrf_field(&csrf)}
                        <input type="hidden" name="recipient" value=address/>
                        <button type="submit" class="quiet">"Reset their portal passkey"</button>
                    </form>
                }
            });
            view! { <tr><td>{line.address.clone()}</td><td class="status">{text}</td><td>{form}{reset}</td></tr> }
        })
        .collect();
    let done = query.done.map(|d| match d.as_str() {
        "revoked" => "Withdrawn: the link no longer opens the message.".to_string(),
        "gone" => "There was nothing left to withdraw.".to_string(),
        "passkey-reset" => {
            "Their portal passkey is reset: a code is emailed to them again.".to_string()
        }
        "no-passkey" => "They had no portal passkey.".to_string(),
        _ => "Done.".to_string(),
    });
    let title = subject_of(&delivery);
    render(
        Frame::new(&title).account(&account.address, &found.session.csrf),
        view! {
            <p><a href="/sent">"← Sent to outside recipients"</a></p>
            {crate::html::notice_line(done)}
            <p class="muted">{format!("Sent {}. Reload to see the latest.", when(delivery.created_ms))}</p>
            <table id="delivery">
                <tr><th>"Recipient"</th><th>"How it was protected"</th><th></th></tr>
                {rows}
            </table>
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct RevokeForm {
    csrf: String,
    recipient: String,
}

crate::request::with_csrf!(RevokeForm);

/// The queue entry a sent message's form names (404 for anything else).
fn queue_of(queue: &str) -> Option<QueueId> {
    queue.parse::<QueueId>().ok()
}

pub(crate) async fn revoke(
    State(state): State<Arc<WebState>>,
    Path(queue): Path<String>,
    SignedIn { account, peer, .. }: SignedIn,
    Csrf(form): Csrf<RevokeForm>,
) -> Response {
    let Some(queue) = queue_of(&queue) else {
        return crate::mail::not_found();
    };
    let (state2, id, actor) = (state.clone(), account.id, actor_of(&account, &peer));
    let recipient = form.recipient;
    match blocking(move || state2.store.revoke_pickup(id, queue, &recipient, &actor)).await {
        Some(Ok(true)) => see_other(&format!("/sent/{queue}?done=revoked")),
        Some(Ok(false)) => see_other(&format!("/sent/{queue}?done=gone")),
        _ => crate::html::message_page_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not withdrawn",
            "The message could not be withdrawn; try again.",
        ),
    }
}

/// The sender resets the portal passkey of one of this message's portal recipients (a lost
/// device); audited. Only for an address this message went to through the portal.
pub(crate) async fn reset_passkey(
    State(state): State<Arc<WebState>>,
    Path(queue): Path<String>,
    SignedIn { account, peer, .. }: SignedIn,
    Csrf(form): Csrf<RevokeForm>,
) -> Response {
    let Some(queue) = queue_of(&queue) else {
        return crate::mail::not_found();
    };
    let (state2, id, actor) = (state.clone(), account.id, actor_of(&account, &peer));
    let recipient = form.recipient;
    let reset = blocking(move || {
        let delivery = state2.store.delivery(id, queue).ok()??;
        let line = delivery
            .lines
            .iter()
            .find(|l| l.address.eq_ignore_ascii_case(&recipient) && l.pickup.is_some())?;
        state2
            .store
            .reset_portal_passkeys(&line.address, &actor)
            .ok()
    })
    .await
    .flatten();
    match reset {
        Some(true) => see_other(&format!("/sent/{queue}?done=passkey-reset")),
        Some(false) => see_other(&format!("/sent/{queue}?done=no-passkey")),
        None => crate::mail::not_found(),
    }
}
