//! The admin console's audit log: search by actor, action, object, any text and time, newest
//! first, `AUDIT_ROWS_PER_PAGE` a page; export of the selection as CSV or JSON lines; and
//! "verify chain", which walks the hash chain and shows the result. Admins and auditors only;
//! nothing here changes or deletes a record (the store has no call that could), and searching,
//! exporting and verifying are themselves audited.

use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_storage::{Actor, AuditEvent, AuditSearch};
use serde::Deserialize;

use crate::html::{notice_line, render, when, Frame};
use crate::queue::{day_ms, field as lower};
use crate::request::{blocking, Auditor, Csrf};
use crate::{Peer, WebState};

/// Records on one page of a search.
pub(crate) const AUDIT_ROWS_PER_PAGE: usize = 100;

/// A search: a record matches when it has every word of every field given (words as the
/// store's audit index cuts them: `root` finds `root@clinic.test`, `account` finds
/// `account.delete`).
#[derive(Deserialize, Default, Clone, Debug)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    object: Option<String>,
    /// Anywhere in the record: actor, address, action, object, outcome, detail.
    #[serde(default)]
    text: Option<String>,
    /// YYYY-MM-DD, on or after (UTC).
    #[serde(default)]
    since: Option<String>,
    /// YYYY-MM-DD, before (UTC).
    #[serde(default)]
    before: Option<String>,
    /// Paging: only records older than this sequence number.
    #[serde(default)]
    older_than: Option<u64>,
    #[serde(default)]
    format: Option<String>,
}

impl AuditQuery {
    fn search(&self, limit: usize) -> AuditSearch {
        AuditSearch {
            actor: lower(&self.actor),
            action: lower(&self.action),
            object: lower(&self.object),
            text: lower(&self.text),
            since_ms: day_ms(&self.since),
            before_ms: day_ms(&self.before),
            older_than: self.older_than,
            limit,
        }
    }

    /// The query string of the search (not the paging), for links and the export.
    fn search_string(&self) -> String {
        crate::mail::query_string(&[
            ("actor", &self.actor),
            ("action", &self.action),
            ("object", &self.object),
            ("text", &self.text),
            ("since", &self.since),
            ("before", &self.before),
        ])
    }
}

fn actor_of(account: &sealpost_storage::Account, peer: &Peer) -> Actor {
    Actor {
        name: account.address.clone(),
        peer: peer.0.to_string(),
    }
}

pub(crate) async fn page(
    State(state): State<Arc<WebState>>,
    Auditor { found, me, .. }: Auditor,
    Extension(peer): Extension<Peer>,
    Query(query): Query<AuditQuery>,
) -> Response {
    let kept = query.search_string();
    let searching = !kept.is_empty();
    let (state2, search) = (state.clone(), query.search(AUDIT_ROWS_PER_PAGE));
    let event = searching.then(|| {
        AuditEvent::new(&actor_of(&me, &peer), "audit.search", "audit log")
            .detail(kept.trim_start_matches('&').to_string())
    });
    let result = blocking(move || {
        if let Some(event) = event {
            state2.store.audit(event)?;
        }
        state2.store.audit_search(&search)
    })
    .await;
    let Some(Ok(found_page)) = result else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The audit log could not be read.",
        );
    };
    let (records, matched) = (found_page.records, found_page.matched);
    let count = if found_page.matched_exact {
        format!("{matched} records match.")
    } else {
        format!("More than {matched} records match.")
    };
    let older = (records.len() == AUDIT_ROWS_PER_PAGE)
        .then(|| records.last().map(|r| r.seq))
        .flatten()
        .map(|seq| {
            let href = format!("/admin/audit?older_than={seq}{kept}");
            view! { <a href=href rel="next">"Older"</a> }
        });
    let rows: Vec<_> = records
        .iter()
        .map(|r| {
            let e = &r.event;
            view! {
                <tr>
                    <td>{r.seq}</td>
                    <td>{when(r.at_ms)}</td>
                    <td>{e.actor.clone()}<br/><span class="muted">{e.peer.clone()}</span></td>
                    <td>{e.action.clone()}</td>
                    <td>{e.object.clone()}</td>
                    <td>{e.outcome.as_str()}</td>
                    <td>{e.detail.clone()}</td>
                </tr>
            }
        })
        .collect();
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let (actor, action, object, text, since, before) = (
        value(&query.actor),
        value(&query.action),
        value(&query.object),
        value(&query.text),
        value(&query.since),
        value(&query.before),
    );
    let (csv, jsonl) = (
        format!("/admin/audit/export?format=csv{kept}"),
        format!("/admin/audit/export?format=jsonl{kept}"),
    );
    let csrf = found.session.csrf.clone();
    render(
        Frame::new("Audit log").account(&me.address, &found.session.csrf),
        view! {
            <form method="get" action="/admin/audit" class="stack" id="audit-search">
                <label for="a-actor">"Actor (account or address)"</label><input type="text" id="a-actor" name="actor" value=actor/>
                <label for="a-action">"Action (for example message.read, or message for all message actions)"</label><input type="text" id="a-action" name="action" value=action/>
                <label for="a-object">"Object (account, mailbox, queue entry…)"</label><input type="text" id="a-object" name="object" value=object/>
                <label for="a-text">"Words anywhere"</label><input type="text" id="a-text" name="text" value=text/>
                <label for="a-since">"From (YYYY-MM-DD)"</label><input type="text" id="a-since" name="since" value=since/>
                <label for="a-before">"Before (YYYY-MM-DD)"</label><input type="text" id="a-before" name="before" value=before/>
                <button type="submit">"Search"</button>
            </form>
            <p class="muted" id="audit-count">{count}</p>
            <p>"Export this selection: "<a href=csv id="export-csv">"CSV"</a>" · "<a href=jsonl id="export-jsonl">"JSON lines"</a></p>
            <form method="post" action="/admin/audit/verify" class="inline" id="verify">
                {crate::html::csrf_field(&csrf)}
                <button type="submit">"Verify chain"</button>
            </form>
            <table id="audit">
                <tr><th>"#"</th><th>"When"</th><th>"Who"</th><th>"Action"</th><th>"Object"</th><th>"Outcome"</th><th>"Detail"</th></tr>
                {rows}
            </table>
            <p>{older}</p>
        },
    )
    .into_response()
}

/// The selection as a file: CSV or JSON lines, oldest first, audited with the query and count.
pub(crate) async fn export(
    State(state): State<Arc<WebState>>,
    Auditor { found: _, me, .. }: Auditor,
    Extension(peer): Extension<Peer>,
    Query(query): Query<AuditQuery>,
) -> Response {
    let jsonl = query.format.as_deref() == Some("jsonl");
    let format = if jsonl {
        sealpost_console::ExportFormat::JsonLines
    } else {
        sealpost_console::ExportFormat::Csv
    };
    let kept = query.search_string();
    let (state2, actor) = (state.clone(), actor_of(&me, &peer));
    let search = query.search(sealpost_console::AUDIT_EXPORT_RECORDS_MAX);
    let result = blocking(move || {
        let mut body = Vec::new();
        sealpost_console::export_audit(
            &state2.store,
            &actor,
            &search,
            kept.trim_start_matches('&'),
            format,
            &mut body,
        )?;
        Ok::<_, sealpost_storage::Error>(body)
    })
    .await;
    let Some(Ok(body)) = result else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The audit log could not be read.",
        );
    };
    let (kind, name) = if jsonl {
        ("application/x-ndjson", "audit.jsonl")
    } else {
        ("text/csv; charset=utf-8", "audit.csv")
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct VerifyForm {
    csrf: String,
}

pub(crate) async fn verify(
    State(state): State<Arc<WebState>>,
    Auditor { found, me, peer }: Auditor,
    Csrf(_): Csrf<VerifyForm>,
) -> Response {
    let (state2, actor) = (state.clone(), actor_of(&me, &peer));
    let result = blocking(move || {
        let report = state2.store.audit_verify()?;
        let detail = match &report.first_break {
            None => format!("{} records, unbroken", report.records_verified),
            Some(b) => format!("broken at record {}: {}", b.seq, b.reason),
        };
        state2
            .store
            .audit(AuditEvent::new(&actor, "audit.verify", "audit log").detail(detail))?;
        Ok::<_, sealpost_storage::Error>(report)
    })
    .await;
    let (text, status) = match result {
        Some(Ok(report)) => match report.first_break {
            None => (
                format!(
                    "The chain holds: all {} records are linked and sealed as written.",
                    report.records_verified
                ),
                StatusCode::OK,
            ),
            Some(b) => (
                format!(
                    "The chain is broken at record {} ({}); the {} records before it check out.",
                    b.seq, b.reason, report.records_verified
                ),
                StatusCode::CONFLICT,
            ),
        },
        _ => (
            "The audit log could not be read.".into(),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    };
    (
        status,
        render(
            Frame::new("Audit chain").account(&me.address, &found.session.csrf),
            view! {
                {notice_line(Some(text))}
                <p><a href="/admin/audit">"← Audit log"</a></p>
            },
        ),
    )
        .into_response()
}

crate::request::with_csrf!(VerifyForm);
