//! The console's compliance pages: legal holds (open a case, add and remove custodians with
//! an optional date range, release), retention (the rules in force, a dry run, a sweep now),
//! and eDiscovery (a search across accounts, counted, then an encrypted export). Holds and
//! retention are admins'; eDiscovery is admins' and auditors'. Each calls the same store and
//! `discovery` functions as `sealpost hold|retention|ediscovery`; everything is audited there.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_auth::websession::Found;
use sealpost_storage::{Account, Actor};
use serde::Deserialize;

use crate::html::{button_form, error_line, notice_line, render, when, Frame};
use crate::queue::day_ms;
use crate::request::{blocking, now_ms, Admin, Csrf};
use crate::WebState;
use sealpost_console::discovery::{
    self, DiscoveryQuery, ExportError, ExportKind, DISCOVERY_WEB_HITS_MAX,
};

/// Largest export the web hands out, in bytes before encryption (it is built in memory);
/// larger ones are `sealpost ediscovery export`'s.
pub(crate) const DISCOVERY_WEB_EXPORT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Messages a discovery page lists (all are counted and exported).
pub(crate) const DISCOVERY_ROWS_SHOWN: usize = 200;

fn frame<'a>(title: &'a str, found: &'a Found, me: &'a Account) -> Frame<'a> {
    Frame::new(title).account(&me.address, &found.session.csrf)
}

fn actor(me: &Account, peer: &crate::Peer) -> Actor {
    Actor {
        name: me.address.clone(),
        peer: peer.0.to_string(),
    }
}

pub(crate) async fn holds(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
) -> Response {
    holds_page(&state, &found, &me, None, None).await
}

async fn holds_page(
    state: &Arc<WebState>,
    found: &Found,
    me: &Account,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let store = state.store.clone();
    let Some(Some((holds, accounts))) =
        blocking(move || Some((store.holds().ok()?, store.list_accounts().ok()?))).await
    else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Try again.",
        );
    };
    let address_of = |id| {
        accounts
            .iter()
            .find(|a| a.id == id)
            .map_or_else(|| "(deleted account)".to_string(), |a| a.address.clone())
    };
    let csrf = found.session.csrf.clone();
    let rows: Vec<_> = holds
        .iter()
        .rev()
        .map(|hold| {
            let open = hold.active();
            let state_text = match hold.released_ms {
                Some(at) => format!("released {}", when(at)),
                None => "open".into(),
            };
            let custodians: Vec<_> = hold
                .custodians
                .iter()
                .map(|c| {
                    let range = match (c.from_ms, c.until_ms) {
                        (None, None) => "all mail".to_string(),
                        (from, until) => format!(
                            "mail dated {} to {}",
                            from.map_or("the start".into(), when),
                            until.map_or("now".into(), when)
                        ),
                    };
                    let address = address_of(c.account);
                    let fields = [("hold", hold.id.to_string()), ("address", address.clone())];
                    let remove = open.then(|| button_form("/admin/holds", &csrf, &fields, "remove", "Remove", "quiet"));
                    view! { <li>{format!("{address}: {range} ")}{remove}</li> }
                })
                .collect();
            let (csrf1, id1) = (csrf.clone(), hold.id.to_string());
            let forms = open.then(|| {
                view! {
                    <form method="post" action="/admin/holds" class="stack add-custodian">
                        {crate::html::csrf_field(&csrf1)}
                        <input type="hidden" name="hold" value=id1/>
                        <label>"Account"<input type="text" name="address" placeholder="someone@…"/></label>
                        <label>"Mail dated from (YYYY-MM-DD, optional)"<input type="text" name="from"/></label>
                        <label>"until (YYYY-MM-DD, optional)"<input type="text" name="until"/></label>
                        <button type="submit" name="action" value="add">"Add custodian"</button>
                    </form>
                    {button_form("/admin/holds", &csrf, &[("hold", hold.id.to_string())], "release", "Release this hold", "danger")}
                }
            });
            view! {
                <section class="hold">
                    <h2>{format!("Hold {}: {}", hold.id, hold.name)}</h2>
                    <p class="muted">{format!("{state_text}; opened {} by {}. Reason: {}", when(hold.opened_ms), hold.opened_by, hold.reason)}</p>
                    <ul>{custodians}</ul>
                    {forms}
                </section>
            }
        })
        .collect();
    let csrf = found.session.csrf.clone();
    render(
        frame("Legal holds", found, me),
        view! {
            {notice_line(notice)}
            {error_line(error)}
            <p class="muted">"While an account is held, nothing of its mail is destroyed: its owner's deletions hide messages from them only, retention skips them, and the account cannot be deleted."</p>
            <form method="post" action="/admin/holds" class="stack" id="open-hold">
                {crate::html::csrf_field(&csrf)}
                <label>"Case name"<input type="text" name="name" required/></label>
                <label>"Reason"<input type="text" name="reason"/></label>
                <button type="submit" name="action" value="open">"Open a hold"</button>
            </form>
            <div id="holds">{rows}</div>
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct HoldForm {
    csrf: String,
    action: String,
    #[serde(default)]
    hold: Option<u64>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    until: Option<String>,
}

pub(crate) async fn holds_act(
    State(state): State<Arc<WebState>>,
    Admin { found, me, peer }: Admin,
    Csrf(form): Csrf<HoldForm>,
) -> Response {
    let (store, actor) = (state.store.clone(), actor(&me, &peer));
    let done = blocking(move || -> Result<String, String> {
        let hold = form.hold.unwrap_or(0);
        let account = || {
            store
                .find_account(form.address.trim())
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("There is no account {}.", form.address.trim()))
        };
        match form.action.as_str() {
            "open" => store
                .open_hold(&form.name, &form.reason, &actor)
                .map(|id| format!("Hold {id} is open; add its custodians."))
                .map_err(|e| e.to_string()),
            "add" => {
                let account = account()?;
                let date = |v: &Option<String>| match v.as_deref().map(str::trim) {
                    None | Some("") => Ok(None),
                    Some(_) => day_ms(v)
                        .map(Some)
                        .ok_or_else(|| "Dates are YYYY-MM-DD.".to_string()),
                };
                let (from, until) = (date(&form.from)?, date(&form.until)?);
                store
                    .hold_add_custodian(hold, account.id, from, until, &actor)
                    .map(|()| format!("{} is under hold {hold}.", account.address))
                    .map_err(|e| e.to_string())
            }
            "remove" => {
                let account = account()?;
                store
                    .hold_remove_custodian(hold, account.id, &actor)
                    .map(|()| format!("{} is off hold {hold}.", account.address))
                    .map_err(|e| e.to_string())
            }
            "release" => store
                .release_hold(hold, &actor)
                .map(|()| format!("Hold {hold} is released; retention takes its course again."))
                .map_err(|e| e.to_string()),
            _ => Err("Unknown action.".into()),
        }
    })
    .await
    .unwrap_or_else(|| Err("Try again.".into()));
    match done {
        Ok(notice) => holds_page(&state, &found, &me, Some(notice), None).await,
        Err(error) => {
            let page = holds_page(
                &state,
                &found,
                &me,
                None,
                Some(format!("Not done: {error}")),
            )
            .await;
            (StatusCode::UNPROCESSABLE_ENTITY, page).into_response()
        }
    }
}

pub(crate) async fn retention(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
) -> Response {
    retention_page(&state, &found, &me, None).await
}

async fn retention_page(
    state: &Arc<WebState>,
    found: &Found,
    me: &Account,
    swept: Option<(bool, Vec<sealpost_storage::Destruction>)>,
) -> Response {
    let store = state.store.clone();
    let Some(Some((rules, accounts))) =
        blocking(move || Some((store.retention_rules().ok()?, store.list_accounts().ok()?))).await
    else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Try again.",
        );
    };
    let days = |d: Option<u32>| d.map_or_else(|| "—".to_string(), |d| format!("{d} days"));
    let list = |v: &[String]| {
        if v.is_empty() {
            "all".to_string()
        } else {
            v.join(", ")
        }
    };
    let rows: Vec<_> = rules
        .iter()
        .map(|r| {
            view! {
                <tr><td>{r.name.clone()}</td><td>{list(&r.folders)}</td><td>{list(&r.accounts)}</td>
                <td>{days(r.max_age_days)}</td><td>{days(r.min_age_days)}</td></tr>
            }
        })
        .collect();
    let outcome = swept.map(|(dry, gone)| {
        let address_of = |id| {
            accounts
                .iter()
                .find(|a| a.id == id)
                .map_or_else(|| "?".to_string(), |a| a.address.clone())
        };
        let head = if dry {
            format!("{} messages would be destroyed now (nothing was changed).", gone.len())
        } else {
            format!("{} messages were destroyed (each audited).", gone.len())
        };
        let items: Vec<_> = gone
            .iter()
            .map(|d| {
                view! { <li>{format!("{} · {} · {} bytes · dated {} · {}", address_of(d.account), d.folder, d.size, when(d.internal_date_ms), d.rule)}</li> }
            })
            .collect();
        view! { <section id="sweep"><p class="notice">{head}</p><ul>{items}</ul></section> }
    });
    let (csrf, csrf2) = (found.session.csrf.clone(), found.session.csrf.clone());
    render(
        frame("Retention", found, me),
        view! {
            <p class="muted">"Rules are part of the policy ("<a href="/admin/policies">"edit them there"</a>", as [[retention]]). A message past a rule's maximum age is destroyed, unless a minimum age or a legal hold keeps it: keeping wins. Messages their owners deleted inside a minimum age or a hold are kept out of sight until nothing keeps them."</p>
            <table id="rules"><tr><th>"Rule"</th><th>"Folders"</th><th>"Accounts"</th><th>"Destroy after"</th><th>"Keep at least"</th></tr>{rows}</table>
            <form method="post" action="/admin/retention" class="inline">
                {crate::html::csrf_field(&csrf)}
                <button type="submit" name="action" value="dry-run" class="quiet">"What would go now"</button>
            </form>
            <form method="post" action="/admin/retention" class="inline">
                {crate::html::csrf_field(&csrf2)}
                <button type="submit" name="action" value="run" class="danger">"Apply the rules now"</button>
            </form>
            {outcome}
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct RetentionForm {
    csrf: String,
    action: String,
}

pub(crate) async fn retention_act(
    State(state): State<Arc<WebState>>,
    Admin { found, me, peer }: Admin,
    Csrf(form): Csrf<RetentionForm>,
) -> Response {
    let dry = form.action != "run";
    let (store, actor) = (state.store.clone(), actor(&me, &peer));
    match blocking(move || store.retention_sweep(now_ms(), dry, &actor)).await {
        Some(Ok(gone)) => retention_page(&state, &found, &me, Some((dry, gone))).await,
        _ => crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not done",
            "Try again.",
        ),
    }
}

#[derive(Deserialize, Default, Clone)]
pub(crate) struct DiscoveryParams {
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    text: Option<String>,
    /// YYYY-MM-DD.
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    held_only: Option<String>,
}

impl DiscoveryParams {
    fn query(&self) -> DiscoveryQuery {
        let field = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        DiscoveryQuery {
            sender: field(&self.sender),
            recipient: field(&self.recipient),
            subject: field(&self.subject),
            text: field(&self.text),
            since_ms: day_ms(&self.since),
            before_ms: day_ms(&self.before),
            held_only: self.held_only.is_some(),
        }
    }

    fn asked(&self) -> bool {
        [
            &self.sender,
            &self.recipient,
            &self.subject,
            &self.text,
            &self.since,
            &self.before,
        ]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| !v.trim().is_empty()))
            || self.held_only.is_some()
    }
}

/// eDiscovery shows subjects and exports whole messages: an admin action (`Admin`). Auditors
/// read the audit log only.
pub(crate) async fn discovery_page(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
    Query(params): Query<DiscoveryParams>,
    axum::extract::Extension(peer): axum::extract::Extension<crate::Peer>,
) -> Response {
    let found_hits = if params.asked() {
        let (store, actor, query) = (state.store.clone(), actor(&me, &peer), params.query());
        blocking(move || {
            discovery::search_audited(&store, &actor, &query, DISCOVERY_WEB_HITS_MAX).ok()
        })
        .await
        .flatten()
    } else {
        None
    };
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let (s, r, subj, t, a, b) = (
        value(&params.sender),
        value(&params.recipient),
        value(&params.subject),
        value(&params.text),
        value(&params.since),
        value(&params.before),
    );
    let held = params.held_only.is_some();
    let results = found_hits.map(|(hits, truncated)| {
        let count = format!(
            "{}{} messages match.",
            if truncated { "More than " } else { "" },
            hits.len()
        );
        let rows: Vec<_> = hits
            .iter()
            .take(DISCOVERY_ROWS_SHOWN)
            .map(|h| {
                view! { <tr><td>{h.address.clone()}</td><td>{h.folder.clone()}</td><td>{when(h.internal_date_ms)}</td><td>{h.size}</td><td>{h.from.clone()}</td><td>{h.subject.clone()}</td></tr> }
            })
            .collect();
        let p = params.clone();
        let csrf = found.session.csrf.clone();
        let hidden = [
            ("sender", p.sender),
            ("recipient", p.recipient),
            ("subject", p.subject),
            ("text", p.text),
            ("since", p.since),
            ("before", p.before),
            ("held_only", p.held_only),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| view! { <input type="hidden" name=name value=v/> }))
        .collect::<Vec<_>>();
        view! {
            <p id="discovery-count">{count}</p>
            <table id="discovery"><tr><th>"Account"</th><th>"Folder"</th><th>"Date"</th><th>"Bytes"</th><th>"From"</th><th>"Subject"</th></tr>{rows}</table>
            <h2>"Export"</h2>
            <form method="post" action="/admin/discovery/export" class="stack" id="discovery-export">
                {crate::html::csrf_field(&csrf)}
                {hidden}
                <label>"Encrypt to (age recipient, age1…)"<input type="text" name="encrypt_to" required/></label>
                <label>"Format"<select name="format"><option value="eml">"a .eml file per message"</option><option value="mbox">"one mbox"</option></select></label>
                <button type="submit">"Export, encrypted"</button>
            </form>
        }
    });
    render(
        frame("eDiscovery", &found, &me),
        view! {
            <p class="muted">"Searches every account's mail, including what owners deleted while a hold or a minimum age kept it. Every search and export is audited with its query and count."</p>
            <form method="get" action="/admin/discovery" class="stack" id="discovery-search">
                <label>"Sender"<input type="text" name="sender" value=s/></label>
                <label>"Recipient"<input type="text" name="recipient" value=r/></label>
                <label>"Subject"<input type="text" name="subject" value=subj/></label>
                <label>"Text"<input type="text" name="text" value=t/></label>
                <label>"Dated from (YYYY-MM-DD)"<input type="text" name="since" value=a/></label>
                <label>"Dated before (YYYY-MM-DD)"<input type="text" name="before" value=b/></label>
                <label><input type="checkbox" name="held_only" value="on" checked=held/>" Held accounts only"</label>
                <button type="submit">"Search"</button>
            </form>
            {results}
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ExportForm {
    csrf: String,
    encrypt_to: String,
    #[serde(default)]
    format: String,
    #[serde(flatten)]
    params: DiscoveryParams,
}

/// The export as a download: an age-encrypted zip, built in memory within
/// `DISCOVERY_WEB_EXPORT_BYTES_MAX`.
pub(crate) async fn discovery_export(
    State(state): State<Arc<WebState>>,
    Admin { me, peer, .. }: Admin,
    Csrf(form): Csrf<ExportForm>,
) -> Response {
    let kind = if form.format == "mbox" {
        ExportKind::Mbox
    } else {
        ExportKind::Eml
    };
    let (store, actor, query) = (state.store.clone(), actor(&me, &peer), form.params.query());
    let recipient = form.encrypt_to.clone();
    let done = blocking(move || {
        let (hits, _) = discovery::search(&store, &query, DISCOVERY_WEB_HITS_MAX)
            .map_err(|e| ExportError::Failed(e.to_string()))?;
        let total: u64 = hits.iter().map(|h| h.size).sum();
        if total > DISCOVERY_WEB_EXPORT_BYTES_MAX {
            return Err(ExportError::Refused(format!(
                "the messages take {total} bytes, over the web's {DISCOVERY_WEB_EXPORT_BYTES_MAX}: use sealpost ediscovery export"
            )));
        }
        let mut body = Vec::new();
        discovery::export(
            &store,
            &actor,
            &query,
            kind,
            &recipient,
            DISCOVERY_WEB_HITS_MAX,
            &mut body,
        )?;
        Ok(body)
    })
    .await
    .unwrap_or_else(|| Err(ExportError::Failed("the export stopped".into())));
    match done {
        Ok(body) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let name = format!("ediscovery-{}.zip.age", now_ms() / 1000);
            if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        // The request cannot be exported as it is: say why, to be fixed.
        Err(ExportError::Refused(why)) => crate::html::message_page_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not exported",
            &format!("Not exported: {why}."),
        ),
        // The server failed: nothing the admin can fix in the form; the log has it.
        Err(failed @ ExportError::Failed(_)) => {
            tracing::warn!(error = %failed, "eDiscovery export failed");
            crate::html::message_page_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not exported",
                "The export failed on the server; try again, and if it fails again the server's log says why.",
            )
        }
    }
}

crate::request::with_csrf!(HoldForm, RetentionForm, ExportForm);
