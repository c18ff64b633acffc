//! The webmail's reading side: the folder list with unread counts, a folder's messages (50 a
//! page, sorted by date, sender or subject), and a message (its headers, its text, its
//! attachments, downloaded as attachments). Reading is audited as IMAP's FETCH is, and marks
//! the message read.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use mail_parser::{MessageParser, MimeHeaders};
use sealpost_mime::Shown;
use sealpost_storage::{
    Account, Actor, AuditEvent, FlagChange, Flags, Mailbox, MailboxId, MessageMeta, SpecialUse,
    SystemFlag,
};
use serde::Deserialize;

use crate::html::{render, when, Frame};
use crate::request::{blocking, see_other, SignedIn};
use crate::{Peer, WebState};

/// Messages on one page of a folder.
pub(crate) const MESSAGES_PER_PAGE: usize = 50;

pub(crate) fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        crate::html::message_page(
            "Not found",
            "There is no such folder or message in your mailbox.",
        ),
    )
        .into_response()
}

pub(crate) async fn inbox(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found: _, account, ..
    }: SignedIn,
) -> Response {
    let (state2, id) = (state.clone(), account.id);
    match blocking(move || state2.store.mailbox_by_name(id, "INBOX")).await {
        Some(Ok(Some(inbox))) => see_other(&format!("/mail/{}", inbox.id.0)),
        _ => not_found(),
    }
}

#[derive(Deserialize, Default, Clone)]
pub(crate) struct ListQuery {
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    sort: Option<String>,
    /// Search: words in the sender, the recipients, the subject, the text; a date range
    /// (YYYY-MM-DD, received on or after `since`, before `before`).
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    before: Option<String>,
    /// What the last action did, shown once.
    #[serde(default)]
    done: Option<String>,
}

impl ListQuery {
    fn searching(&self) -> bool {
        [
            &self.from,
            &self.to,
            &self.subject,
            &self.text,
            &self.since,
            &self.before,
        ]
        .iter()
        .any(|f| f.as_deref().is_some_and(|v| !v.trim().is_empty()))
    }

    /// The search part of the query string, for links that keep it.
    fn search_string(&self) -> String {
        query_string(&[
            ("from", &self.from),
            ("to", &self.to),
            ("subject", &self.subject),
            ("text", &self.text),
            ("since", &self.since),
            ("before", &self.before),
        ])
    }
}

/// `&name=value` for each field given (not blank), for links that keep a search.
pub(crate) fn query_string(fields: &[(&str, &Option<String>)]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        if let Some(value) = value.as_deref().filter(|v| !v.trim().is_empty()) {
            out.push_str(&format!("&{name}={}", encode_component(value)));
        }
    }
    out
}

pub(crate) fn encode_component(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A date field as Unix seconds at its midnight UTC.
fn day_start(text: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text.trim(), &format).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

fn contains_word(haystack: &str, needle: &str) -> bool {
    haystack
        .to_lowercase()
        .contains(&needle.trim().to_lowercase())
}

/// Whether a message passes the search (`text` is checked by the caller against the store).
fn matches(query: &ListQuery, meta: &MessageMeta, shown: &Shown) -> bool {
    let people = |list: &[sealpost_mime::Person]| {
        list.iter()
            .map(|p| format!("{} {}", p.name, p.email))
            .collect::<Vec<_>>()
            .join(" ")
    };
    fn field(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    if let Some(from) = field(&query.from) {
        if !contains_word(&people(&shown.from), from) {
            return false;
        }
    }
    if let Some(to) = field(&query.to) {
        if !contains_word(&format!("{} {}", people(&shown.to), people(&shown.cc)), to) {
            return false;
        }
    }
    if let Some(subject) = field(&query.subject) {
        if !contains_word(&shown.subject, subject) {
            return false;
        }
    }
    if let Some(since) = field(&query.since).and_then(day_start) {
        if meta.internal_date.unix_seconds < since {
            return false;
        }
    }
    if let Some(before) = field(&query.before).and_then(day_start) {
        if meta.internal_date.unix_seconds >= before {
            return false;
        }
    }
    true
}

/// A folder's name as people read it.
pub(crate) fn folder_label(mailbox: &Mailbox) -> String {
    match mailbox.special_use {
        Some(SpecialUse::Backup) => "BACKUP (everything, read-only)".to_string(),
        _ if mailbox.name.eq_ignore_ascii_case("INBOX") => "Inbox".to_string(),
        _ => mailbox.name.clone(),
    }
}

fn folders_view(mailboxes: &[Mailbox], current: MailboxId) -> impl IntoView {
    let items: Vec<_> = mailboxes
        .iter()
        .map(|m| {
            let label = folder_label(m);
            let unseen = (m.unseen > 0).then(|| format!(" ({})", m.unseen));
            let href = format!("/mail/{}", m.id.0);
            let aria = (m.id == current).then_some("page");
            view! { <li><a href=href aria-current=aria>{label}</a>{unseen}</li> }
        })
        .collect();
    view! { <nav aria-label="Folders" id="folders"><ul>{items}<li><a href="/quarantine" id="quarantine-link">"Quarantine (held by the spam filter)"</a></li></ul></nav> }
}

pub(crate) async fn folder(
    State(state): State<Arc<WebState>>,
    SignedIn { found, account, .. }: SignedIn,
    Path(mailbox): Path<u32>,
    Query(query): Query<ListQuery>,
    axum::extract::Extension(peer): axum::extract::Extension<Peer>,
) -> Response {
    let (state2, id) = (state.clone(), account.id);
    let mailbox = MailboxId(mailbox);
    let sort = query.sort.clone().unwrap_or_else(|| "date".into());
    let sort_key = sort.clone();
    let search = query.clone();
    let loaded = blocking(move || {
        let mailboxes = state2.store.list_mailboxes(id).ok()?;
        let current = mailboxes.iter().find(|m| m.id == mailbox)?.clone();
        let metas = state2.store.messages(id, mailbox).ok()?;
        let uids: Vec<u32> = metas.iter().map(|m| m.uid).collect();
        let mut rows: Vec<(MessageMeta, Shown)> = state2
            .store
            .message_summaries(id, mailbox, &uids)
            .ok()?
            .into_iter()
            .map(|(meta, summary)| {
                let shown = sealpost_mime::Summary::from_bytes(&summary)
                    .map(|s| Shown::of_imap(&s.envelope))
                    .unwrap_or_default();
                (meta, shown)
            })
            .filter(|(meta, shown)| matches(&search, meta, shown))
            .collect();
        if let Some(text) = search
            .text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            // The stored search text is lower-cased, decoded headers and body text.
            let needle = text.to_lowercase();
            rows.retain(|(meta, _)| {
                state2
                    .store
                    .message_search_text(id, mailbox, meta.uid)
                    .ok()
                    .and_then(|bytes| sealpost_mime::SearchText::from_bytes(&bytes))
                    .is_some_and(|t| {
                        t.body.contains(&needle)
                            || t.headers.iter().any(|(_, v)| v.contains(&needle))
                    })
            });
        }
        match sort_key.as_str() {
            "from" => rows.sort_by_cached_key(|(m, s)| {
                (
                    s.from
                        .first()
                        .map(|p| p.label().to_lowercase())
                        .unwrap_or_default(),
                    std::cmp::Reverse(m.internal_date.unix_seconds),
                )
            }),
            "subject" => rows.sort_by_cached_key(|(m, s)| {
                (
                    s.subject.to_lowercase(),
                    std::cmp::Reverse(m.internal_date.unix_seconds),
                )
            }),
            _ => {
                rows.sort_by_key(|(m, _)| std::cmp::Reverse((m.internal_date.unix_seconds, m.uid)))
            }
        }
        Some((mailboxes, current, rows))
    })
    .await
    .flatten();
    let Some((mailboxes, current, rows)) = loaded else {
        return not_found();
    };
    let pages = rows.len().div_ceil(MESSAGES_PER_PAGE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    // The list shows subjects and senders: a read of patient data, one record per page shown
    // with its UIDs. No record, no page.
    let listed: Vec<String> = rows
        .iter()
        .skip((page - 1) * MESSAGES_PER_PAGE)
        .take(MESSAGES_PER_PAGE)
        .map(|(meta, _)| meta.uid.to_string())
        .collect();
    if !listed.is_empty() {
        let event = AuditEvent::new(
            &actor_of(&account, &peer),
            "message.read",
            format!("mailbox:{} uids:{}", current.id.0, listed.join(",")),
        )
        .detail(format!("web folder list, page {page}"));
        let state2 = state.clone();
        if !matches!(
            blocking(move || state2.store.audit(event)).await,
            Some(Ok(_))
        ) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                crate::html::message_page(
                    "Try again",
                    "The folder could not be shown just now; try again shortly.",
                ),
            )
                .into_response();
        }
    }
    let shown: Vec<_> = rows
        .iter()
        .skip((page - 1) * MESSAGES_PER_PAGE)
        .take(MESSAGES_PER_PAGE)
        .map(|(meta, shown)| {
            let unread = !meta.flags.has(SystemFlag::Seen);
            let flagged = meta.flags.has(SystemFlag::Flagged);
            let from = shown.from.first().map(|p| p.label().to_string()).unwrap_or_default();
            let subject = if shown.subject.trim().is_empty() {
                "(no subject)".to_string()
            } else {
                shown.subject.clone()
            };
            let href = format!("/mail/{}/{}", current.id.0, meta.uid);
            let class = if unread { "unread" } else { "" };
            let (uid, label) = (meta.uid.to_string(), format!("Select {subject}"));
            view! {
                <tr class=class>
                    <td>
                        <input type="checkbox" name="uid" value=uid form="bulk" aria-label=label/>
                        {flagged.then_some(" ⚑")}{unread.then(|| view! { <span class="sr-only">"unread "</span> })}
                    </td>
                    <td>{from}</td>
                    <td><a href=href>{subject}</a></td>
                    <td>{when(meta.internal_date.unix_seconds * 1000)}</td>
                </tr>
            }
        })
        .collect();
    let base = format!("/mail/{}", current.id.0);
    let kept = query.search_string();
    let link = |page: usize, sort: &str| format!("{base}?page={page}&sort={sort}{kept}");
    let previous = (page > 1).then(|| {
        let href = link(page - 1, &sort);
        view! { <a href=href rel="prev">"Newer"</a> }
    });
    let next = (page < pages).then(|| {
        let href = link(page + 1, &sort);
        view! { <a href=href rel="next">"Older"</a> }
    });
    let sorts: Vec<_> = [("date", "Date"), ("from", "Sender"), ("subject", "Subject")]
        .into_iter()
        .map(|(key, label)| {
            let href = link(1, key);
            let aria = (key == sort).then_some("true");
            view! { <a href=href aria-pressed=aria class="sort">{label}</a> " " }
        })
        .collect();
    let count = rows.len();
    let title = folder_label(&current);
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let (from, to, subject, text, since, before) = (
        value(&query.from),
        value(&query.to),
        value(&query.subject),
        value(&query.text),
        value(&query.since),
        value(&query.before),
    );
    let search_action = base.clone();
    let searching = query.searching();
    let clear = base.clone();
    let targets: Vec<_> = mailboxes
        .iter()
        .filter(|m| m.id != current.id && !m.read_only)
        .map(|m| {
            let (id, label) = (m.id.0.to_string(), folder_label(m));
            view! { <option value=id>{label}</option> }
        })
        .collect();
    let act = format!("{base}/act");
    let csrf = found.session.csrf.clone();
    let read_only = current.read_only;
    let done = query.done.clone().map(|d| match d.as_str() {
        "read" => "Marked read.",
        "unread" => "Marked unread.",
        "flag" => "Flagged.",
        "unflag" => "Flag removed.",
        "delete" => "Deleted (moved to Trash; BACKUP keeps its copy).",
        "move" => "Moved.",
        "draft" => "Draft saved.",
        "none" => "Nothing was selected.",
        _ => "Done.",
    });
    render(
        Frame::new(&title).account(&account.address, &found.session.csrf),
        view! {
            <div class="mail">
                {folders_view(&mailboxes, current.id)}
                <section id="messages">
                    {crate::html::notice_line(done.map(str::to_string))}
                    <details open=searching>
                        <summary>"Search"</summary>
                        <form method="get" action=search_action id="search">
                            <label for="s-from">"From"</label><input type="text" id="s-from" name="from" value=from/>
                            <label for="s-to">"To"</label><input type="text" id="s-to" name="to" value=to/>
                            <label for="s-subject">"Subject"</label><input type="text" id="s-subject" name="subject" value=subject/>
                            <label for="s-text">"Text"</label><input type="text" id="s-text" name="text" value=text/>
                            <label for="s-since">"Received from (YYYY-MM-DD)"</label><input type="text" id="s-since" name="since" value=since/>
                            <label for="s-before">"Received before (YYYY-MM-DD)"</label><input type="text" id="s-before" name="before" value=before/>
                            <button type="submit">"Search"</button>
                            {searching.then(|| view! { " " <a href=clear>"Show all"</a> })}
                        </form>
                    </details>
                    <p class="muted">{format!("{count} messages · page {page} of {pages} · sort by ")}{sorts}</p>
                    {(!read_only).then(|| view! {
                        <form method="post" action=act id="bulk" class="actions">
                            {crate::html::csrf_field(&csrf)}
                            <button type="submit" name="action" value="read" class="quiet">"Mark read"</button>
                            " "<button type="submit" name="action" value="unread" class="quiet">"Mark unread"</button>
                            " "<button type="submit" name="action" value="flag" class="quiet">"Flag"</button>
                            " "<button type="submit" name="action" value="unflag" class="quiet">"Unflag"</button>
                            " "<button type="submit" name="action" value="delete" class="danger">"Delete"</button>
                            " "<label for="move-to" class="inline-label">"Move to"</label>
                            <select id="move-to" name="to">{targets}</select>
                            <button type="submit" name="action" value="move" class="quiet">"Move"</button>
                        </form>
                    })}
                    <table>
                        <tr><th></th><th>"From"</th><th>"Subject"</th><th>"Received"</th></tr>
                        {shown}
                    </table>
                    <p>{previous}" "{next}</p>
                </section>
            </div>
        },
    )
    .into_response()
}

/// A bulk action on selected messages: mark (read, unread, flag, unflag), delete (to Trash;
/// in Trash for good — BACKUP keeps its copy), or move. The form repeats `uid`, which the
/// usual form extractor cannot take, so the body is read as pairs.
pub(crate) async fn act(
    State(state): State<Arc<WebState>>,
    SignedIn { found, account, .. }: SignedIn,
    Extension(peer): Extension<Peer>,
    Path(mailbox): Path<u32>,
    axum::extract::RawForm(body): axum::extract::RawForm,
) -> Response {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if !get("csrf").is_some_and(|token| found.session.csrf_ok(&token)) {
        return crate::request::forbidden();
    }
    let uids: Vec<u32> = pairs
        .iter()
        .filter(|(k, _)| k == "uid")
        .filter_map(|(_, v)| v.parse().ok())
        .take(MESSAGES_PER_PAGE)
        .collect();
    let action = get("action").unwrap_or_default();
    let back = |done: &str| see_other(&format!("/mail/{mailbox}?done={done}"));
    if uids.is_empty() {
        return back("none");
    }
    let target = get("to").and_then(|t| t.parse::<u32>().ok()).map(MailboxId);
    let (state2, id, mailbox_id) = (state.clone(), account.id, MailboxId(mailbox));
    let actor = actor_of(&account, &peer);
    let done_action = action.clone();
    let result = blocking(move || {
        let store = &state2.store;
        let flags = |flag| Flags::new().with(flag);
        let listed = format!(
            "mailbox:{} uids:{}",
            mailbox_id.0,
            uids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let mark = match done_action.as_str() {
            "read" => Some(FlagChange::Add(flags(SystemFlag::Seen))),
            "unread" => Some(FlagChange::Remove(flags(SystemFlag::Seen))),
            "flag" => Some(FlagChange::Add(flags(SystemFlag::Flagged))),
            "unflag" => Some(FlagChange::Remove(flags(SystemFlag::Flagged))),
            _ => None,
        };
        if let Some(change) = mark {
            return store
                .store_flags(id, mailbox_id, &uids, &change, None)
                .map(|_| ());
        }
        match done_action.as_str() {
            "move" => {
                let to = target.ok_or(sealpost_storage::Error::MailboxNotFound)?;
                store.move_messages(id, mailbox_id, &uids, to)?;
                store.audit(
                    AuditEvent::new(&actor, "message.move", listed)
                        .detail(format!("web, to mailbox:{}", to.0)),
                )?;
                Ok(())
            }
            "delete" => {
                let trash = store.mailbox_by_special_use(id, SpecialUse::Trash)?;
                match trash {
                    Some(trash) if trash.id != mailbox_id => {
                        store.move_messages(id, mailbox_id, &uids, trash.id)?;
                    }
                    _ => {
                        store.store_flags(
                            id,
                            mailbox_id,
                            &uids,
                            &FlagChange::Add(flags(SystemFlag::Deleted)),
                            None,
                        )?;
                        store.expunge_deleted(id, mailbox_id, Some(&uids))?;
                    }
                }
                store.audit(AuditEvent::new(&actor, "message.delete", listed).detail("web"))?;
                Ok(())
            }
            _ => Err(sealpost_storage::Error::InvalidInput {
                what: "unknown action",
            }),
        }
    })
    .await;
    match result {
        Some(Ok(())) => back(&action),
        Some(Err(sealpost_storage::Error::ReadOnly { .. })) => (
            StatusCode::FORBIDDEN,
            crate::html::message_page(
                "Read-only",
                "BACKUP keeps everything; nothing in it can be changed.",
            ),
        )
            .into_response(),
        _ => not_found(),
    }
}

/// A message's bytes, its reading audited first: no audit record, no content (runs on a
/// blocking thread).
pub(crate) fn read_audited(
    store: &sealpost_storage::Store,
    actor: &Actor,
    account: sealpost_storage::AccountId,
    mailbox: MailboxId,
    uid: u32,
    what: String,
) -> Option<Vec<u8>> {
    let event = AuditEvent::new(
        actor,
        "message.read",
        format!("mailbox:{} uids:{uid}", mailbox.0),
    )
    .detail(what);
    store.message(account, mailbox, uid).ok()?;
    store.audit(event).ok()?;
    store.read_message(account, mailbox, uid).ok()
}

pub(crate) fn actor_of(account: &Account, peer: &Peer) -> Actor {
    Actor {
        name: account.address.clone(),
        peer: peer.0.to_string(),
    }
}

/// "type/subtype" of a part, `application/octet-stream` when it says none.
pub(crate) fn media_type(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type()
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("octet-stream")))
        .unwrap_or_else(|| "application/octet-stream".into())
}

fn people_line(label: &'static str, people: &[sealpost_mime::Person]) -> impl IntoView {
    (!people.is_empty()).then(|| {
        let text = people
            .iter()
            .map(|p| {
                if p.name.trim().is_empty() {
                    p.email.clone()
                } else {
                    format!("{} <{}>", p.name, p.email)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        view! { <tr><th>{label}</th><td>{text}</td></tr> }
    })
}

#[derive(Deserialize, Default)]
pub(crate) struct ImagesQuery {
    #[serde(default, deserialize_with = "flag")]
    images: Option<bool>,
}

fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    Ok(text.map(|t| t == "1" || t == "true"))
}

pub(crate) async fn message(
    State(state): State<Arc<WebState>>,
    SignedIn { found, account, .. }: SignedIn,
    Extension(peer): Extension<Peer>,
    Path((mailbox, uid)): Path<(u32, u32)>,
    Query(query): Query<ImagesQuery>,
) -> Response {
    let (state2, id, mailbox) = (state.clone(), account.id, MailboxId(mailbox));
    let actor = actor_of(&account, &peer);
    let loaded = blocking(move || {
        let folder = state2.store.mailbox(id, mailbox).ok()?;
        let meta = state2.store.message(id, mailbox, uid).ok()?;
        let raw = read_audited(&state2.store, &actor, id, mailbox, uid, "web".into())?;
        if !meta.flags.has(SystemFlag::Seen) && !folder.read_only {
            let _ = state2.store.store_flags(
                id,
                mailbox,
                &[uid],
                &FlagChange::Add(Flags::new().with(SystemFlag::Seen)),
                None,
            );
        }
        Some((folder, meta, raw))
    })
    .await
    .flatten();
    let Some((folder, meta, raw)) = loaded else {
        return not_found();
    };
    let structure = sealpost_mime::Structure::parse(&raw, sealpost_mime::Limits::default());
    let shown = Shown::of(&structure.envelope);
    let parsed = MessageParser::default().parse(&raw);
    let text = parsed
        .as_ref()
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .unwrap_or_default();
    // A text/html part of its own (mail-parser also lists converted text among HTML bodies).
    let has_html = structure
        .parts
        .iter()
        .any(|p| p.media_type == "text" && p.media_subtype == "html");
    // Ours are the first of their name (written before the sender's fields); a later one,
    // another server's, is not shown in their place.
    let walk = sealpost_mime::HeaderWalk::of(&raw);
    let authentication = walk.first(&raw, "Authentication-Results");
    // Sealpost's own warning (a sender's copy of the field is removed on receipt).
    let warning = walk
        .first(&raw, "X-Sealpost-Warning")
        .map(|w| {
            view! {
                <p class="error" id="impersonation-warning" role="alert">
                    {format!("Careful: this message comes from outside the organisation, and {}.", w.trim_start_matches("impersonation: "))}
                </p>
            }
        });
    let attachments = attachment_items(parsed.as_ref(), &format!("/mail/{}/{}", folder.id.0, uid));
    let subject = if shown.subject.trim().is_empty() {
        "(no subject)".to_string()
    } else {
        shown.subject.clone()
    };
    let back = format!("/mail/{}", folder.id.0);
    let reference = format!("{}/{}", folder.id.0, uid);
    let (reply, reply_all, forward) = (
        format!("/compose?reply={reference}"),
        format!("/compose?reply={reference}&all=1"),
        format!("/compose?forward={reference}"),
    );
    let edit = (folder.special_use == Some(SpecialUse::Drafts)).then(|| {
        let href = format!("/compose?draft={reference}");
        view! { " · " <a href=href id="edit-draft">"Go on with this draft"</a> }
    });
    let date = shown
        .date
        .clone()
        .unwrap_or_else(|| when(meta.internal_date.unix_seconds * 1000));
    render(
        Frame::new(&subject).account(&account.address, &found.session.csrf),
        view! {
            <p><a href=back>{format!("← {}", folder_label(&folder))}</a></p>
            <p class="actions">
                <a href=reply id="reply">"Reply"</a>" · "<a href=reply_all id="reply-all">"Reply all"</a>" · "<a href=forward id="forward">"Forward"</a>
                {edit}
            </p>
            {warning}
            <section id="message">
                <table class="headers">
                    {people_line("From", &shown.from)}
                    {people_line("To", &shown.to)}
                    {people_line("Cc", &shown.cc)}
                    <tr><th>"Date"</th><td>{date}</td></tr>
                    {authentication.map(|a| view! { <tr><th>"Checks"</th><td class="muted">{a}</td></tr> })}
                </table>
                {if has_html {
                    let images = query.images.unwrap_or(false);
                    let src = format!("/mail/{}/{}/html{}", folder.id.0, uid, if images { "?images=1" } else { "" });
                    let toggle = format!("/mail/{}/{}{}", folder.id.0, uid, if images { "" } else { "?images=1" });
                    view! {
                        <p class="muted">
                            {if images { "Remote images are shown for this message. " } else { "Remote images are blocked. " }}
                            <a href=toggle id="images-toggle">{if images { "Block them" } else { "Show remote images" }}</a>
                        </p>
                        <iframe class="formatted" sandbox="allow-popups allow-popups-to-escape-sandbox" src=src title="The formatted message" referrerpolicy="no-referrer"></iframe>
                    }.into_any()
                } else {
                    view! { <pre class="body">{text}</pre> }.into_any()
                }}
                {(!attachments.is_empty()).then(|| view! { <h2>"Attachments"</h2><ul id="attachments">{attachments}</ul> })}
            </section>
        },
    )
    .into_response()
}

/// A message's attachments as list items linking to `BASE/attachment/INDEX`, with their type
/// and size.
pub(crate) fn attachment_items(
    message: Option<&mail_parser::Message<'_>>,
    base: &str,
) -> Vec<impl IntoView> {
    let Some(message) = message else {
        return Vec::new();
    };
    message
        .attachments()
        .enumerate()
        .map(|(index, part)| {
            let name = part.attachment_name().unwrap_or("attachment").to_string();
            let kind = media_type(part);
            let href = format!("{base}/attachment/{index}");
            let size = part.len();
            view! { <li><a href=href download="">{name}</a>{format!(" ({kind}, {})", human_size(size))}</li> }
        })
        .collect()
}

/// Most bytes of a message's own images (`cid:`) put into its formatted view.
pub(crate) const INLINE_IMAGES_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The message's own images by Content-ID, as data: URLs (the sandboxed frame has no
/// cookies to fetch them with, and loads nothing but data: images anyway).
fn inline_images(message: &mail_parser::Message<'_>) -> std::collections::HashMap<String, String> {
    use base64::Engine;
    let mut images = std::collections::HashMap::new();
    let mut total = 0;
    for part in &message.parts {
        let (Some(id), Some(kind)) = (part.content_id(), part.content_type()) else {
            continue;
        };
        let subtype = kind.subtype().unwrap_or("");
        if !kind.ctype().eq_ignore_ascii_case("image")
            || !["png", "jpeg", "jpg", "gif", "webp"].contains(&subtype)
        {
            continue;
        }
        let bytes = part.contents();
        total += bytes.len();
        if total > INLINE_IMAGES_BYTES_MAX {
            break;
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        let id = id.trim_matches(['<', '>']).to_ascii_lowercase();
        images.insert(id, format!("data:image/{subtype};base64,{encoded}"));
    }
    images
}

/// The message's HTML, sanitized (ammonia: no script, no event handler, no form, no
/// javascript: link), for a sandboxed frame whose own policy lets nothing load but inline
/// styles and data: images, and remote images only when the reader asked for them. `cid:`
/// images become the message's own images from `inline`.
pub(crate) fn sanitize(
    html: &str,
    remote_images: bool,
    inline: std::collections::HashMap<String, String>,
) -> String {
    let mut builder = ammonia::Builder::default();
    builder
        .add_generic_attributes(["style"])
        .link_rel(Some("noopener noreferrer"))
        .set_tag_attribute_value("a", "target", "_blank")
        .url_schemes(
            ["http", "https", "mailto", "data", "cid"]
                .into_iter()
                .collect(),
        )
        .attribute_filter(move |element, attribute, value| {
            if element == "img" && attribute == "src" {
                let lower = value.trim().to_ascii_lowercase();
                if let Some(id) = lower.strip_prefix("cid:") {
                    return inline
                        .get(id.trim_matches(['<', '>']))
                        .cloned()
                        .map(Into::into);
                }
                let remote = lower.starts_with("http:")
                    || lower.starts_with("https:")
                    || lower.starts_with("//");
                if remote && !remote_images {
                    return None;
                }
                if !remote && !lower.starts_with("data:image/") {
                    return None;
                }
            }
            Some(value.into())
        });
    builder.clean(html).to_string()
}

pub(crate) async fn formatted(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found: _, account, ..
    }: SignedIn,
    Extension(peer): Extension<Peer>,
    Path((mailbox, uid)): Path<(u32, u32)>,
    Query(query): Query<ImagesQuery>,
) -> Response {
    let (state2, id, mailbox) = (state.clone(), account.id, MailboxId(mailbox));
    let actor = actor_of(&account, &peer);
    let read = move || {
        read_audited(
            &state2.store,
            &actor,
            id,
            mailbox,
            uid,
            "web formatted".into(),
        )
    };
    let Some(Some(raw)) = blocking(read).await else {
        return not_found();
    };
    let parsed = MessageParser::default().parse(&raw);
    let html = parsed
        .as_ref()
        .and_then(|m| m.body_html(0).map(|h| h.into_owned()))
        .unwrap_or_default();
    let inline = parsed.as_ref().map(inline_images).unwrap_or_default();
    let images = query.images.unwrap_or(false);
    let page = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><base target=\"_blank\"></head><body>{}</body></html>",
        sanitize(&html, images, inline)
    );
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:{}; frame-ancestors 'self'; base-uri 'none'; \
         form-action 'none'; sandbox allow-popups allow-popups-to-escape-sandbox",
        if images { " https:" } else { "" }
    );
    let mut response = axum::response::Html(page).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    response
}

fn human_size(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1_048_576 => format!("{:.0} KB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MB", bytes as f64 / 1_048_576.0),
    }
}

/// A file name safe in a Content-Disposition header: printable ASCII without quotes or
/// separators (others become "_"), and the full UTF-8 name in `filename*`.
fn disposition(name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !"\"\\;/".contains(c) || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{encoded}")
}

pub(crate) async fn attachment(
    State(state): State<Arc<WebState>>,
    SignedIn {
        found: _, account, ..
    }: SignedIn,
    Extension(peer): Extension<Peer>,
    Path((mailbox, uid, index)): Path<(u32, u32, usize)>,
) -> Response {
    let (state2, id, mailbox) = (state.clone(), account.id, MailboxId(mailbox));
    let actor = actor_of(&account, &peer);
    let loaded = blocking(move || {
        read_audited(
            &state2.store,
            &actor,
            id,
            mailbox,
            uid,
            format!("web attachment {index}"),
        )
    })
    .await
    .flatten();
    let Some(raw) = loaded else {
        return not_found();
    };
    attachment_response(&raw, index)
}

/// The `index`th attachment of a message, as a download with its type and a safe name.
pub(crate) fn attachment_response(raw: &[u8], index: usize) -> Response {
    let Some(message) = MessageParser::default().parse(raw) else {
        return not_found();
    };
    let Some(part) = message.attachments().nth(index) else {
        return not_found();
    };
    let name = part.attachment_name().unwrap_or("attachment").to_string();
    let kind = media_type(part);
    let mut response = part.contents().to_vec().into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&kind)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition(&name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// The time now as an RFC 2822 date, for trace fields.
pub(crate) fn now_rfc2822() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_loses_scripts_handlers_and_remote_images_unless_allowed() {
        let html = r#"<p onclick="steal()">Hello <b>bold</b></p><script>steal()</script>
            <img src="https://tracker.example/pixel.png"><img src="data:image/png;base64,AAAA">
            <a href="javascript:steal()">x</a><a href="https://example.org/">link</a>
            <form action="https://evil.example/"><input name="pw"></form>
            <div style="color: red">styled</div><iframe src="https://evil.example/"></iframe>"#;
        let clean = sanitize(html, false, Default::default());
        for gone in [
            "onclick",
            "<script",
            "steal()",
            "tracker.example",
            "javascript:",
            "<form",
            "<input",
            "<iframe",
            "evil.example",
        ] {
            assert!(!clean.contains(gone), "{gone} survived: {clean}");
        }
        for kept in [
            "Hello <b>bold</b>",
            "data:image/png",
            "https://example.org/",
            "target=\"_blank\"",
            "style=\"color: red\"",
        ] {
            assert!(clean.contains(kept), "{kept} lost: {clean}");
        }
        assert!(
            sanitize(html, true, Default::default()).contains("tracker.example/pixel.png"),
            "allowed images stay"
        );
        // The message's own images come inline; unknown ones go.
        let inline = [(
            "logo@clinic".to_string(),
            "data:image/png;base64,AAAA".to_string(),
        )]
        .into_iter()
        .collect();
        let own = sanitize(
            r#"<img src="cid:logo@clinic"><img src="cid:other@x">"#,
            false,
            inline,
        );
        assert!(
            own.contains(r#"src="data:image/png;base64,AAAA""#) && !own.contains("cid:"),
            "{own}"
        );
    }

    #[test]
    fn attachment_names_cannot_break_the_header() {
        assert_eq!(
            disposition("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        let tricky = disposition("a\"b;\r\nX-Evil: 1/Befund ü.pdf");
        assert!(!tricky.contains('\r') && !tricky.contains('\n'), "{tricky}");
        assert!(
            tricky.starts_with("attachment; filename=\"a_b___X-Evil: 1_Befund _.pdf\""),
            "{tricky}"
        );
        assert!(tricky.ends_with("Befund%20%C3%BC.pdf"), "{tricky}");
    }
}
