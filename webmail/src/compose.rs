//! Writing mail: compose, reply, reply all, forward (with the original's attachments), drafts
//! and sending. A sent message goes through `Outbox`, which the binary wires to the SMTP
//! crate's submission path: the From check, recipient and content rules, the protection
//! choice, the queue, DKIM at departure and the BACKUP copy apply as for a mail client, and a
//! copy goes to Sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Extension, Multipart, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use mail_builder::headers::address::Address;
use mail_builder::MessageBuilder;
use mail_parser::{MessageParser, MimeHeaders};
use sealpost_storage::{
    Account, FlagChange, Flags, InternalDate, MailboxId, NewMessage, QueueId, SpecialUse,
    SystemFlag,
};
use serde::Deserialize;

use crate::html::{render, Frame};
use crate::mail::{actor_of, read_audited};
use crate::request::{blocking, see_other, SignedIn};
use crate::{Peer, WebState};

/// A message composed on the web, for `Outbox::send`.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub raw: Vec<u8>,
    /// To, Cc and Bcc: everyone it goes to.
    pub recipients: Vec<String>,
    /// The browser's address, for Received and the audit log.
    pub peer: String,
    /// Set when every outside recipient must get the portal (the sender asked for a proof).
    pub portal: Option<String>,
}

/// What became of a sent message.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The queue entry and delivery record of its outside recipients, if any.
    pub queue: Option<QueueId>,
}

/// Why the outbox did not send a message, each a sentence for the author; the compose page
/// answers 429, 422 or 503.
#[derive(Debug, thiserror::Error)]
pub enum NotSent {
    /// The account's hourly budget is spent.
    #[error("{0}")]
    TooMany(String),
    /// The message or a recipient is refused: the author can change it.
    #[error("{0}")]
    Refused(String),
    /// The server cannot take it now; try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// The future `Outbox::send` returns.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<Sent, NotSent>> + Send + 'a>>;

/// Where the web hands a message to be sent: the same path as SMTP submission (the binary
/// wires it to `sealpost_smtp::submit_from_web`).
pub trait Outbox: Send + Sync {
    fn send<'a>(&'a self, account: &'a Account, message: Outgoing) -> Sending<'a>;
}

/// The longest subject kept from the form, in bytes.
pub(crate) const SUBJECT_BYTES_MAX: usize = 998;
/// Files one message may carry from the form.
pub(crate) const ATTACHMENTS_MAX: usize = 32;

#[derive(Deserialize, Default)]
pub(crate) struct ComposeQuery {
    /// `MAILBOX/UID` of the message answered.
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    all: Option<String>,
    /// `MAILBOX/UID` of the message forwarded.
    #[serde(default)]
    forward: Option<String>,
    /// `MAILBOX/UID` of a draft to go on with.
    #[serde(default)]
    draft: Option<String>,
}

/// What the compose form holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Draft {
    pub(crate) to: String,
    pub(crate) cc: String,
    pub(crate) bcc: String,
    pub(crate) subject: String,
    pub(crate) body: String,
    pub(crate) in_reply_to: String,
    pub(crate) references: String,
    /// `MAILBOX/UID` whose attachments go along (forward).
    pub(crate) forward: String,
    /// `MAILBOX/UID` of the draft this replaces when saved or sent.
    pub(crate) draft: String,
    /// `MAILBOX/UID` of the message answered, marked answered once sent.
    pub(crate) answered: String,
    /// Names of the attachments a forward carries, shown.
    pub(crate) carried: Vec<String>,
    /// What a portal recipient must prove besides the mailed code: "", "passphrase" or
    /// "question", with the passphrase or the date of birth (YYYY-MM-DD) and surname.
    pub(crate) proof: String,
    pub(crate) passphrase: String,
    pub(crate) birth_date: String,
    pub(crate) surname: String,
}

/// Shortest passphrase a sender may set, in characters (it is read out, not typed by them).
pub(crate) const PASSPHRASE_CHARS_MIN: usize = 8;

/// The proof a draft asks of portal recipients, as stored, or why it cannot be taken.
fn proof_of(draft: &Draft) -> Result<Option<(sealpost_storage::ProofKind, String)>, &'static str> {
    match draft.proof.as_str() {
        "" | "none" => Ok(None),
        "passphrase" if draft.passphrase.trim().chars().count() >= PASSPHRASE_CHARS_MIN => {
            Ok(Some((
                sealpost_storage::ProofKind::Passphrase,
                draft.passphrase.clone(),
            )))
        }
        "passphrase" => Err("Choose a passphrase of at least 8 characters to tell the patient."),
        "question" => {
            let date = time::Date::parse(
                draft.birth_date.trim(),
                &time::macros::format_description!("[year]-[month]-[day]"),
            );
            if date.is_err() || draft.surname.trim().is_empty() {
                return Err("Give the patient's date of birth (YYYY-MM-DD) and surname.");
            }
            Ok(Some((
                sealpost_storage::ProofKind::Question,
                question_answer(&draft.birth_date, &draft.surname),
            )))
        }
        _ => Err("Choose what the patient must give besides the emailed code."),
    }
}

/// The answer to the date-of-birth-and-surname question, as both sides write it.
pub(crate) fn question_answer(birth_date: &str, surname: &str) -> String {
    format!("{} {}", birth_date.trim(), surname.trim())
}

fn parse_reference(text: &str) -> Option<(MailboxId, u32)> {
    let (mailbox, uid) = text.split_once('/')?;
    Some((MailboxId(mailbox.parse().ok()?), uid.parse().ok()?))
}

fn people(list: &[sealpost_mime::Person]) -> String {
    list.iter()
        .map(|p| {
            if p.name.trim().is_empty() {
                p.email.clone()
            } else {
                format!("{} <{}>", p.name.replace(['<', '>', ',', '"'], ""), p.email)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn quoted(text: &str) -> String {
    text.lines().map(|l| format!("> {l}\n")).collect()
}

fn with_prefix(prefix: &str, subject: &str) -> String {
    let lower = subject.trim_start().to_lowercase();
    if lower.starts_with(&prefix.to_lowercase()) {
        subject.to_string()
    } else {
        format!("{prefix} {subject}")
    }
}

/// The form's starting point for a reply, a forward or a draft, from the original's bytes.
fn prefill(raw: &[u8], query: &ComposeQuery, own: &str) -> Draft {
    let structure = sealpost_mime::Structure::parse(raw, sealpost_mime::Limits::default());
    let shown = sealpost_mime::Shown::of(&structure.envelope);
    let parsed = MessageParser::default().parse(raw);
    let text = parsed
        .as_ref()
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .unwrap_or_default();
    let attachments: Vec<String> = parsed
        .as_ref()
        .map(|m| {
            m.attachments()
                .map(|p| p.attachment_name().unwrap_or("attachment").to_string())
                .collect()
        })
        .unwrap_or_default();
    let date = shown.date.clone().unwrap_or_default();
    let sender = people(&shown.from);
    if let Some(reference) = &query.draft {
        return Draft {
            to: people(&shown.to),
            cc: people(&shown.cc),
            bcc: parsed
                .as_ref()
                .and_then(|m| m.header_raw("Bcc").map(|b| b.trim().to_string()))
                .unwrap_or_default(),
            subject: shown.subject.clone(),
            body: text,
            in_reply_to: shown.in_reply_to.clone().unwrap_or_default(),
            references: parsed
                .as_ref()
                .and_then(|m| m.header_raw("References").map(|r| r.trim().to_string()))
                .unwrap_or_default(),
            forward: parsed
                .as_ref()
                .and_then(|m| {
                    m.header_raw("X-Sealpost-Forward")
                        .map(|r| r.trim().to_string())
                })
                .unwrap_or_default(),
            draft: reference.clone(),
            ..Draft::default()
        };
    }
    let message_id = shown.message_id.clone().unwrap_or_default();
    let references = {
        let earlier = parsed
            .as_ref()
            .and_then(|m| m.header_raw("References").map(|r| r.trim().to_string()))
            .unwrap_or_default();
        format!("{earlier} {message_id}").trim().to_string()
    };
    if let Some(reference) = &query.forward {
        return Draft {
            subject: with_prefix("Fwd:", &shown.subject),
            body: format!(
                "\n\n---------- Forwarded message ----------\nFrom: {sender}\nDate: {date}\nSubject: {}\nTo: {}\n\n{text}",
                shown.subject,
                people(&shown.to)
            ),
            references,
            forward: reference.clone(),
            carried: attachments,
            ..Draft::default()
        };
    }
    let answer_to = if shown.reply_to.is_empty() {
        &shown.from
    } else {
        &shown.reply_to
    };
    let cc = if query.all.is_some() {
        let others: Vec<sealpost_mime::Person> = shown
            .to
            .iter()
            .chain(&shown.cc)
            .filter(|p| {
                !p.email.eq_ignore_ascii_case(own) && !answer_to.iter().any(|a| a.email == p.email)
            })
            .cloned()
            .collect();
        people(&others)
    } else {
        String::new()
    };
    Draft {
        to: people(answer_to),
        cc,
        subject: with_prefix("Re:", &shown.subject),
        body: format!("\n\nOn {date}, {sender} wrote:\n{}", quoted(&text)),
        in_reply_to: message_id,
        references,
        answered: query.reply.clone().unwrap_or_default(),
        ..Draft::default()
    }
}

pub(crate) async fn page(
    State(state): State<Arc<WebState>>,
    SignedIn { found, account, .. }: SignedIn,
    Extension(peer): Extension<Peer>,
    Query(query): Query<ComposeQuery>,
) -> Response {
    let source = query
        .reply
        .as_deref()
        .or(query.forward.as_deref())
        .or(query.draft.as_deref())
        .map(|r| parse_reference(r).ok_or(()));
    let draft = match source {
        None => Draft::default(),
        Some(Err(())) => return crate::mail::not_found(),
        Some(Ok((mailbox, uid))) => {
            let (state2, id, actor) = (state.clone(), account.id, actor_of(&account, &peer));
            let read = move || {
                read_audited(
                    &state2.store,
                    &actor,
                    id,
                    mailbox,
                    uid,
                    "web compose".into(),
                )
            };
            let Some(Some(raw)) = blocking(read).await else {
                return crate::mail::not_found();
            };
            prefill(&raw, &query, &account.address)
        }
    };
    form_page(&found.session.csrf, &account, draft, None, StatusCode::OK)
}

fn form_page(
    csrf: &str,
    account: &Account,
    draft: Draft,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let Draft {
        to,
        cc,
        bcc,
        subject,
        body,
        in_reply_to,
        references,
        forward,
        draft,
        answered,
        carried,
        proof,
        passphrase,
        birth_date,
        surname,
    } = draft;
    let (proof_none, proof_passphrase, proof_question) = (
        !matches!(proof.as_str(), "passphrase" | "question"),
        proof == "passphrase",
        proof == "question",
    );
    let carried = (!carried.is_empty()).then(|| {
        let names: Vec<_> = carried
            .into_iter()
            .map(|n| view! { <li>{n}</li> })
            .collect();
        view! { <p>"Attached from the forwarded message:"</p><ul id="carried">{names}</ul> }
    });
    let title = if subject.is_empty() {
        "New message".to_string()
    } else {
        subject.clone()
    };
    let token = csrf.to_string();
    (
        status,
        render(
            Frame::new(&title).account(&account.address, csrf),
            view! {
                <section id="compose">
                    {crate::html::error_line(error)}
                    <form method="post" action="/compose" enctype="multipart/form-data" class="stack">
                        {crate::html::csrf_field(&token)}
                        <input type="hidden" name="in_reply_to" value=in_reply_to/>
                        <input type="hidden" name="references" value=references/>
                        <input type="hidden" name="forward" value=forward/>
                        <input type="hidden" name="draft" value=draft/>
                        <input type="hidden" name="answered" value=answered/>
                        <label for="to">"To"</label>
                        <input type="text" id="to" name="to" value=to autocomplete="email"/>
                        <label for="cc">"Cc"</label>
                        <input type="text" id="cc" name="cc" value=cc/>
                        <label for="bcc">"Bcc"</label>
                        <input type="text" id="bcc" name="bcc" value=bcc/>
                        <label for="subject">"Subject"</label>
                        <input type="text" id="subject" name="subject" value=subject maxlength="998"/>
                        <label for="body">"Message"</label>
                        <textarea id="body" name="body" rows="14">{body}</textarea>
                        {carried}
                        <label for="files">"Attach files"</label>
                        <input type="file" id="files" name="files" multiple=true/>
                        <p class="muted">"Outside recipients get the message over verified TLS or, where that cannot be had or the content calls for it, through the secure portal. You will see which after sending."</p>
                        <fieldset id="proof">
                            <legend>"If it goes to the secure portal, the patient also gives"</legend>
                            <label><input type="radio" name="proof" value="none" checked=proof_none/>" nothing more than the emailed code"</label>
                            <label><input type="radio" name="proof" value="passphrase" checked=proof_passphrase/>" a passphrase I tell them by phone or in person:"</label>
                            <input type="text" id="passphrase" name="passphrase" value=passphrase autocomplete="off" aria-label="Passphrase"/>
                            <label><input type="radio" name="proof" value="question" checked=proof_question/>" their date of birth and surname:"</label>
                            <input type="date" id="birth_date" name="birth_date" value=birth_date aria-label="Date of birth"/>
                            <input type="text" id="surname" name="surname" value=surname autocomplete="off" aria-label="Surname"/>
                        </fieldset>
                        <p>
                            <button type="submit" name="action" value="send">"Send"</button>
                            " "
                            <button type="submit" name="action" value="draft" class="quiet">"Save draft"</button>
                        </p>
                    </form>
                </section>
            },
        ),
    )
        .into_response()
}

/// An attachment uploaded with a form.
pub(crate) struct Upload {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) bytes: Vec<u8>,
}

/// A multipart form's text fields and files.
pub(crate) struct Form {
    pub(crate) fields: Vec<(String, String)>,
    pub(crate) uploads: Vec<Upload>,
}

impl Form {
    pub(crate) fn field(&self, name: &str) -> String {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// Reads a multipart form whose files come in fields named `files` (at most
/// `ATTACHMENTS_MAX`; the whole body within the route's limit, `upload_bytes_max`).
pub(crate) async fn read_form(
    multipart: &mut Multipart,
    upload_bytes_max: usize,
) -> Result<Form, Response> {
    let too_large = |text: String| {
        crate::html::message_page_status(StatusCode::PAYLOAD_TOO_LARGE, "Not sent", &text)
    };
    let mut form = Form {
        fields: Vec::new(),
        uploads: Vec::new(),
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Ok(form),
            Err(error) => {
                return Err(too_large(format!(
                    "The form could not be read ({}). Files may be at most {upload_bytes_max} bytes together; nothing was sent.",
                    error.body_text()
                )))
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let kind = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_string();
        let Ok(bytes) = field.bytes().await else {
            return Err(too_large(format!(
                "The upload was cut off or larger than {upload_bytes_max} bytes; nothing was sent."
            )));
        };
        match file_name {
            Some(file) if name == "files" => {
                if file.is_empty() && bytes.is_empty() {
                    continue;
                }
                if form.uploads.len() >= ATTACHMENTS_MAX {
                    return Err(too_large(format!(
                        "At most {ATTACHMENTS_MAX} files may be attached."
                    )));
                }
                form.uploads.push(Upload {
                    name: file,
                    kind,
                    bytes: bytes.to_vec(),
                });
            }
            _ => form
                .fields
                .push((name, String::from_utf8_lossy(&bytes).into_owned())),
        }
    }
}

/// Splits "A <a@x>, b@y; C <c@z>" into (name, address) pairs.
pub(crate) fn split_addresses(text: &str) -> Vec<(String, String)> {
    text.split([',', ';'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match (part.rfind('<'), part.rfind('>')) {
            (Some(open), Some(close)) if open < close => (
                part[..open].trim().trim_matches('"').to_string(),
                part[open + 1..close].trim().to_string(),
            ),
            _ => (String::new(), part.to_string()),
        })
        .collect()
}

fn address_list(pairs: &[(String, String)]) -> Address<'static> {
    Address::new_list(
        pairs
            .iter()
            .map(|(name, email)| {
                if name.is_empty() {
                    Address::new_address(None::<String>, email.clone())
                } else {
                    Address::new_address(Some(name.clone()), email.clone())
                }
            })
            .collect(),
    )
}

pub(crate) async fn submit(
    State(state): State<Arc<WebState>>,
    SignedIn { found, account, .. }: SignedIn,
    Extension(peer): Extension<Peer>,
    mut multipart: Multipart,
) -> Response {
    let form = match read_form(&mut multipart, state.sending.upload_bytes_max).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let uploads = form.uploads;
    let fields = form.fields;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if !found.session.csrf_ok(&get("csrf")) {
        return crate::request::forbidden();
    }
    let mut subject = get("subject").replace(['\r', '\n'], " ");
    if subject.len() > SUBJECT_BYTES_MAX {
        let mut end = SUBJECT_BYTES_MAX;
        while !subject.is_char_boundary(end) {
            end -= 1;
        }
        subject.truncate(end);
    }
    let draft = Draft {
        to: get("to"),
        cc: get("cc"),
        bcc: get("bcc"),
        subject,
        body: get("body").replace("\r\n", "\n"),
        in_reply_to: get("in_reply_to"),
        references: get("references"),
        forward: get("forward"),
        draft: get("draft"),
        answered: get("answered"),
        carried: Vec::new(),
        proof: get("proof"),
        passphrase: get("passphrase"),
        birth_date: get("birth_date"),
        surname: get("surname"),
    };
    let saving = get("action") == "draft";
    // The forwarded message's attachments come along (its reading is audited).
    let mut carried: Vec<Upload> = Vec::new();
    if let Some((mailbox, uid)) = parse_reference(&draft.forward) {
        let (state2, id, actor) = (state.clone(), account.id, actor_of(&account, &peer));
        let read = move || {
            read_audited(
                &state2.store,
                &actor,
                id,
                mailbox,
                uid,
                "web forward".into(),
            )
        };
        if let Some(Some(raw)) = blocking(read).await {
            if let Some(message) = MessageParser::default().parse(&raw) {
                carried = message
                    .attachments()
                    .map(|part| Upload {
                        name: part.attachment_name().unwrap_or("attachment").to_string(),
                        kind: crate::mail::media_type(part),
                        bytes: part.contents().to_vec(),
                    })
                    .collect();
            }
        }
    }
    let to = split_addresses(&draft.to);
    let cc = split_addresses(&draft.cc);
    let bcc = split_addresses(&draft.bcc);
    let message_id = format!(
        "{}@{}",
        rand::random::<[u8; 12]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        state.hostname
    );
    let mut builder = MessageBuilder::new()
        .from(Address::new_address(
            Some(account.display_name.clone()).filter(|n| !n.is_empty()),
            account.address.clone(),
        ))
        .subject(draft.subject.clone())
        .message_id(message_id.clone())
        .text_body(draft.body.replace('\n', "\r\n"));
    if !to.is_empty() {
        builder = builder.to(address_list(&to));
    }
    if !cc.is_empty() {
        builder = builder.cc(address_list(&cc));
    }
    if saving && !bcc.is_empty() {
        // Only the draft keeps Bcc: a sent message never shows it.
        builder = builder.bcc(address_list(&bcc));
    }
    let in_reply_to = draft
        .in_reply_to
        .trim()
        .trim_matches(['<', '>'])
        .to_string();
    if !in_reply_to.is_empty() {
        builder = builder.in_reply_to(in_reply_to.clone());
    }
    let references: Vec<String> = draft
        .references
        .split_whitespace()
        .map(|r| r.trim_matches(['<', '>']).to_string())
        .filter(|r| !r.is_empty())
        .collect();
    if !references.is_empty() {
        builder = builder.references(references);
    }
    if saving && !draft.forward.is_empty() {
        builder = builder.header(
            "X-Sealpost-Forward",
            mail_builder::headers::raw::Raw::new(draft.forward.clone()),
        );
    }
    for upload in uploads
        .iter()
        .chain(if saving { [].iter() } else { carried.iter() })
    {
        builder = builder.attachment(
            upload.kind.clone(),
            upload.name.clone(),
            upload.bytes.clone(),
        );
    }
    let raw = match builder.write_to_vec() {
        Ok(raw) => raw,
        Err(_) => {
            return form_page(
                &found.session.csrf,
                &account,
                draft,
                Some("The message could not be put together.".into()),
                StatusCode::BAD_REQUEST,
            )
        }
    };
    let old_draft = parse_reference(&draft.draft);
    if saving {
        return save_draft(&state, &account, raw, old_draft).await;
    }
    let recipients: Vec<String> = to
        .iter()
        .chain(&cc)
        .chain(&bcc)
        .map(|(_, a)| a.clone())
        .collect();
    // The proof a portal recipient must give besides the mailed code: kept (hashed) for each
    // recipient before the message is submitted, so no notice can leave before it exists.
    let proof = match proof_of(&draft) {
        Ok(proof) => proof,
        Err(why) => {
            return form_page(
                &found.session.csrf,
                &account,
                draft,
                Some(why.into()),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
        }
    };
    if proof.is_none() {
        // The policy asks for a proof on every message to outside recipients, on those to
        // some domains, or on those a content rule with `proof_required` matches.
        let policy = state.sending.rules.current();
        let portal = &policy.config().portal;
        let (state2, all) = (state.clone(), recipients.clone());
        let outside: Vec<String> = blocking(move || {
            all.into_iter()
                .filter(|a| !matches!(state2.store.find_account(a), Ok(Some(_))))
                .collect()
        })
        .await
        .unwrap_or_default();
        let by_domain = outside.iter().any(|address| {
            let domain = address.rsplit('@').next().unwrap_or("").to_lowercase();
            portal.proof_required_domains.iter().any(|d| {
                d.trim()
                    .trim_start_matches('@')
                    .eq_ignore_ascii_case(&domain)
            })
        });
        let names: Vec<&str> = uploads.iter().map(|u| u.name.as_str()).collect();
        let content = sealpost_policy::Content {
            subject: &draft.subject,
            text: &draft.body,
            attachment_names: names,
        };
        let by_rule = !outside.is_empty()
            && policy.scan(&content).iter().any(|finding| {
                policy
                    .config()
                    .content
                    .iter()
                    .any(|rule| rule.name == finding.rule && rule.proof_required)
            });
        if (!outside.is_empty() && portal.proof_required) || by_domain || by_rule {
            return form_page(
                &found.session.csrf,
                &account,
                draft,
                Some(
                    "Your organisation asks for a passphrase or the patient's date of birth and surname on messages to outside recipients."
                        .into(),
                ),
                StatusCode::UNPROCESSABLE_ENTITY,
            );
        }
    }
    // A proof is asked only by the portal: a message that carries one goes there for every
    // outside recipient, even where verified TLS would reach their mailbox.
    let portal = proof
        .as_ref()
        .map(|_| "the sender asked for a passphrase or the date of birth and surname".to_string());
    if let Some((kind, secret)) = proof {
        let (state2, id, all, actor, message_id) = (
            state.clone(),
            account.id,
            recipients.clone(),
            actor_of(&account, &peer),
            message_id.clone(),
        );
        let kept = blocking(move || {
            all.iter().try_for_each(|r| {
                state2
                    .store
                    .set_pickup_proof(id, &message_id, r, kind, &secret, &actor)
            })
        })
        .await;
        if !matches!(kept, Some(Ok(()))) {
            return form_page(
                &found.session.csrf,
                &account,
                draft,
                Some("Not sent: the passphrase could not be kept just now; try again.".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    }
    let outgoing = Outgoing {
        raw,
        recipients,
        peer: peer.0.ip().to_string(),
        portal,
    };
    match state.sending.outbox.send(&account, outgoing).await {
        Ok(sent) => {
            let (state2, id) = (state.clone(), account.id);
            let answered = parse_reference(&draft.answered);
            blocking(move || {
                if let Some((mailbox, uid)) = old_draft {
                    remove_draft(&state2.store, id, mailbox, uid);
                }
                if let Some((mailbox, uid)) = answered {
                    let answered = FlagChange::Add(Flags::new().with(SystemFlag::Answered));
                    let _ = state2
                        .store
                        .store_flags(id, mailbox, &[uid], &answered, None);
                }
            })
            .await;
            match sent.queue {
                Some(queue) => see_other(&format!("/sent/{queue}")),
                None => see_other("/sent?done=sent"),
            }
        }
        Err(error) => {
            let text = if uploads.is_empty() {
                format!("Not sent: {error}")
            } else {
                format!("Not sent: {error} Attach the files again before sending.")
            };
            let status = match error {
                NotSent::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
                NotSent::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
                NotSent::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            form_page(&found.session.csrf, &account, draft, Some(text), status)
        }
    }
}

/// Keeps the message in Drafts (replacing the draft it was opened from) and shows Drafts.
async fn save_draft(
    state: &Arc<WebState>,
    account: &Account,
    raw: Vec<u8>,
    old: Option<(MailboxId, u32)>,
) -> Response {
    let (state2, id) = (state.clone(), account.id);
    let saved = blocking(move || {
        let store = &state2.store;
        let drafts = store
            .mailbox_by_special_use(id, SpecialUse::Drafts)
            .ok()??;
        let index = sealpost_mime::Indexed::of(&raw);
        let (summary, text) = (index.summary_bytes(), index.search_bytes());
        store
            .append(
                id,
                drafts.id,
                &NewMessage {
                    raw: &raw,
                    flags: Flags::new().with(SystemFlag::Draft).with(SystemFlag::Seen),
                    internal_date: InternalDate::now(),
                    summary: &summary,
                    search_text: &text,
                },
            )
            .ok()?;
        if let Some((mailbox, uid)) = old {
            remove_draft(store, id, mailbox, uid);
        }
        Some(drafts.id)
    })
    .await
    .flatten();
    match saved {
        Some(drafts) => see_other(&format!("/mail/{}?done=draft", drafts.0)),
        None => crate::html::message_page_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not saved",
            "The draft could not be saved; try again.",
        ),
    }
}

/// Removes a draft once it was sent or saved anew (only from Drafts).
fn remove_draft(
    store: &sealpost_storage::Store,
    account: sealpost_storage::AccountId,
    mailbox: MailboxId,
    uid: u32,
) {
    let is_drafts = store
        .mailbox(account, mailbox)
        .is_ok_and(|m| m.special_use == Some(SpecialUse::Drafts));
    if !is_drafts {
        return;
    }
    let deleted = FlagChange::Add(Flags::new().with(SystemFlag::Deleted));
    if store
        .store_flags(account, mailbox, &[uid], &deleted, None)
        .is_ok()
    {
        let _ = store.expunge_deleted(account, mailbox, Some(&[uid]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_with_and_without_names() {
        assert_eq!(
            split_addresses(
                "Pat Doe <pat@example.org>, bob@example.org; \"Dr. X\" <x@clinic.example>,,"
            ),
            vec![
                ("Pat Doe".to_string(), "pat@example.org".to_string()),
                (String::new(), "bob@example.org".to_string()),
                ("Dr. X".to_string(), "x@clinic.example".to_string()),
            ]
        );
        assert!(split_addresses("  ").is_empty());
    }

    #[test]
    fn replies_quote_and_keep_the_thread() {
        let raw = b"From: Pat <pat@example.org>\r\nTo: alice@clinic.example, Bob <bob@clinic.example>\r\n\
Cc: carol@example.org\r\nSubject: Results\r\nMessage-ID: <m1@example.org>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\nLine one\r\nLine two\r\n";
        let reply = prefill(raw, &ComposeQuery::default(), "alice@clinic.example");
        assert_eq!(reply.to, "Pat <pat@example.org>");
        assert_eq!(reply.cc, "");
        assert_eq!(reply.subject, "Re: Results");
        assert!(
            reply.body.contains("> Line one\n> Line two\n"),
            "{}",
            reply.body
        );
        assert_eq!(reply.in_reply_to, "<m1@example.org>");
        let all = prefill(
            raw,
            &ComposeQuery {
                all: Some("1".into()),
                ..ComposeQuery::default()
            },
            "alice@clinic.example",
        );
        assert_eq!(all.cc, "Bob <bob@clinic.example>, carol@example.org");
        let forward = prefill(
            raw,
            &ComposeQuery {
                forward: Some("1/5".into()),
                ..ComposeQuery::default()
            },
            "alice@clinic.example",
        );
        assert_eq!(forward.subject, "Fwd: Results");
        assert_eq!(forward.to, "");
        assert_eq!(forward.forward, "1/5");
        assert_eq!(with_prefix("Re:", "RE: x"), "RE: x");
    }
}
