//! The accept path every submitted or received message takes, whoever hands it in: an SMTP
//! session at the end of DATA, or the webmail's send button. One parse (`Analysed`), the From
//! check, recipient resolution, the content rules, and one atomic delivery (`deliver`: local
//! INBOX and BACKUP copies, the sender's BACKUP and, from the web, Sent copy, the queue entry
//! and the audit records). The web gets no shortcut: the same protection choice, queue, DKIM
//! at departure and BACKUP copy apply.

use sealpost_mime::{HeaderWalk, Indexed};
use sealpost_storage::{
    Account, AccountStatus, Actor, AuditEvent, AuditOutcome, DeliveryTarget, Error as StoreError,
    Flags, Held, InternalDate, NewMessage, Outbound, OutboundRecipient, Placement, QueueId, Role,
    Store,
};
use tracing::warn;

use crate::shared::SmtpShared;

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// A recipient accepted at RCPT.
#[derive(Clone, Debug)]
pub(crate) enum Recipient {
    /// Delivered to these local accounts (more than one for an alias).
    Local {
        address: String,
        accounts: Vec<Account>,
    },
    /// Queued for outside delivery (submission only).
    Outside(OutboundRecipient),
}

/// Why a message or recipient was not taken: the SMTP reply line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A refusal counted against the session's error budget (5xx, and 4xx for its client).
    Error(String),
    /// A temporary failure on our side, not the client's fault.
    Transient(String),
}

impl Refused {
    pub(crate) fn reply(&self) -> &str {
        match self {
            Refused::Error(r) | Refused::Transient(r) => r,
        }
    }
}

/// A message ready to be accepted: its envelope and who hands it in.
pub(crate) struct Accept {
    /// The fields this server writes first (Received; for inbound mail Authentication-Results
    /// and the spam verdict), each ending in CRLF. A submission's missing Date and
    /// Message-ID are added after them here.
    pub(crate) prefix: String,
    /// This server's name: inbound Authentication-Results fields that claim it are forged,
    /// and a Message-ID this server adds names it.
    pub(crate) hostname: String,
    pub(crate) from: String,
    pub(crate) env_id: Option<String>,
    pub(crate) ret: Option<String>,
    pub(crate) recipients: Vec<Recipient>,
    /// The submitting account; `None` for inbound mail.
    pub(crate) submission: Option<Account>,
    pub(crate) actor: Actor,
    pub(crate) id: String,
    /// `spf=... dkim=... dmarc=...` for inbound mail; empty for submissions.
    pub(crate) auth_summary: String,
    /// Also keep a copy in the sender's Sent folder (the web; mail clients save their own).
    pub(crate) sent_copy: bool,
    /// Where inbound mail goes for its local recipients, by its spam score.
    pub(crate) placement: crate::spam::Placement,
    /// The spam filter's verdict in words (what the X-Sealpost-Spam field says), kept with a
    /// quarantined message; empty when the message was not scored.
    pub(crate) verdict: String,
}

/// What was done with an accepted message.
#[derive(Clone, Debug)]
pub(crate) struct Accepted {
    pub(crate) queue: Option<QueueId>,
    pub(crate) outside: Vec<OutboundRecipient>,
}

/// Where `address` (normalised) goes for a message from `account` (`None` for inbound mail on
/// port 25), or the reply that refuses it. `outside` carries the DSN parameters of an
/// outside recipient.
pub(crate) async fn classify_recipient(
    store: &Store,
    shared: &SmtpShared,
    account: Option<&Account>,
    address: String,
    outside: OutboundRecipient,
) -> Result<Recipient, Refused> {
    let local_domain = address
        .rsplit_once('@')
        .is_some_and(|(_, domain)| domain == store.config().primary_domain);
    if !local_domain {
        let Some(account) = account else {
            return Err(Refused::Error(
                "550 5.7.1 relaying denied: this server takes mail only for its own domain".into(),
            ));
        };
        if !shared.policy.current().may_send_outside(&account.address) {
            return Err(Refused::Error(
                "550 5.7.1 this account may not send outside the organisation".into(),
            ));
        }
        return Ok(Recipient::Outside(OutboundRecipient { address, ..outside }));
    }
    let (lookup_store, aliases, lookup) = (store.clone(), shared.aliases(), address.clone());
    match blocking(move || resolve_local(&lookup_store, &aliases, &lookup)).await {
        Ok(accounts) if accounts.is_empty() => {
            Err(Refused::Error("550 5.1.1 no such mailbox here".into()))
        }
        Ok(accounts) => {
            if accounts.iter().all(|a| a.status != AccountStatus::Active) {
                return Err(Refused::Error("550 5.2.1 the mailbox is disabled".into()));
            }
            let active: Vec<Account> = accounts
                .into_iter()
                .filter(|a| a.status == AccountStatus::Active)
                .collect();
            // Accounts over their quota take nothing new (the sender may try again later).
            let (store, candidates) = (store.clone(), active);
            let with_room = blocking(move || {
                let mut kept = Vec::new();
                for account in candidates {
                    match store.quota(account.id)? {
                        Some(limit) if store.quota_usage(account.id)? >= limit => {}
                        _ => kept.push(account),
                    }
                }
                Ok::<_, StoreError>(kept)
            })
            .await;
            match with_room {
                Ok(accounts) if accounts.is_empty() => Err(Refused::Transient(
                    "452 4.2.2 the mailbox is full; try again later".into(),
                )),
                Ok(accounts) => Ok(Recipient::Local { address, accounts }),
                Err(error) => {
                    warn!(%error, "quota look-up failed");
                    Err(Refused::Transient(
                        "451 4.3.0 temporary failure; try again later".into(),
                    ))
                }
            }
        }
        Err(error) => {
            warn!(%error, "recipient lookup failed");
            Err(Refused::Transient(
                "451 4.3.0 temporary failure; try again later".into(),
            ))
        }
    }
}

/// Accepts a whole message (trace fields already added): checks, content rules, and one
/// durable delivery with its audit records; wakes the queue and counts the submission.
pub(crate) async fn accept(
    store: &Store,
    shared: &SmtpShared,
    body: Vec<u8>,
    accept: Accept,
) -> Result<Accepted, Refused> {
    let result = accept_counted(store, shared, body, accept).await;
    let counter = if result.is_ok() {
        &shared.accepted
    } else {
        &shared.refused
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    result
}

async fn accept_counted(
    store: &Store,
    shared: &SmtpShared,
    body: Vec<u8>,
    accept: Accept,
) -> Result<Accepted, Refused> {
    let Accept {
        prefix,
        hostname,
        from,
        env_id,
        ret,
        recipients,
        submission,
        actor,
        id,
        auth_summary,
        sent_copy,
        placement,
        verdict,
    } = accept;
    let submitted = submission.is_some();
    // Mail from outside that pretends to come from inside is marked. The staff's names are
    // read from the directory at most once a minute (briefly on this thread).
    let impersonation = match (&submission, shared.spam()) {
        (None, Some(spam)) => Some((
            shared.staff_names(store),
            vec![store.config().primary_domain.clone()],
            spam.config.external_subject_prefix.clone(),
        )),
        _ => None,
    };
    // What a staff member submits may be relayed: every line ends in CRLF before anything
    // reads or keeps it. A bare CR or LF could end the message early at a lenient receiver,
    // and what follows would be taken as commands (SMTP smuggling). Then one pass over the
    // header and one copy of the message: the trace fields first, forged verdicts and
    // X-Sealpost-* fields out, the impersonation warning in. Then one parse, off the async
    // threads: the From check, the content rules and the stored summary and search text all
    // come from it.
    let origin_host = hostname.clone();
    let hostname = (!submitted).then_some(hostname);
    let (raw, analysed, normalised) = blocking(move || {
        // A copy only when a line ends bare; first, so that the edits see the fields every
        // later reader will see.
        let (body, normalised) = if submitted {
            let length = body.len();
            let body = crate::headers::with_crlf_line_ends(body);
            let copied = body.len() != length;
            (body, copied)
        } else {
            (body, false)
        };
        let walk = HeaderWalk::of(&body);
        // A submission's missing Date and Message-ID (RFC 6409 §8), after Received.
        let prefix = if submitted {
            prefix + &crate::headers::missing_origin_fields(&body, &walk, &origin_host)
        } else {
            prefix
        };
        let warning = impersonation.and_then(|(staff, ours, subject_prefix)| {
            let (address, name) = sealpost_mime::sender(&body)?;
            let why = crate::spam::impersonation(&address, &name, &ours, &staff)?;
            Some((why, subject_prefix))
        });
        let edits = crate::headers::Edits {
            prefix: &prefix,
            forged_results_of: hostname.as_deref(),
            own_fields: true,
            warning: warning.as_ref().map(|(why, p)| (why.as_str(), p.as_str())),
        };
        let raw = crate::headers::edited(&body, &walk, &edits);
        drop(body);
        let analysed = Analysed::of(&raw);
        (raw, analysed, normalised)
    })
    .await;
    // One copy of the body (two when its line ends were made CRLF), and one parse by each
    // of the two parsers (`Indexed`); the impersonation check reads the header alone.
    shared.count_pipeline(1 + u64::from(normalised), 2);
    let bytes_max = store.config().limits.message_bytes_max;
    if raw.len() as u64 > bytes_max {
        return Err(Refused::Error(if submitted {
            // Each bare LF became two bytes: the bound holds for what is kept and relayed.
            format!("552 5.3.4 the message is larger than the {bytes_max} bytes accepted once its lines end in CRLF")
        } else {
            "552 5.3.4 the message with its trace headers is too large".into()
        }));
    }
    // One From, one Subject...: which of two fields a receiver shows (or a filter, a DKIM
    // verifier, the From check here) is anyone's guess (RFC 5322 §3.6).
    if submitted {
        if let Some((name, count)) = repeated_field(&raw, &HeaderWalk::of(&raw)) {
            return Err(Refused::Error(format!(
                "550 5.6.0 message has {count} {name} fields; RFC 5322 allows one"
            )));
        }
    }
    if let Some(account) = &submission {
        // The From header must be the account's too: MAIL FROM alone is not what people see.
        let aliases = shared.aliases();
        let owned = !analysed.from.is_empty()
            && analysed
                .from
                .iter()
                .all(|e| aliases.may_send_as(&account.address, e));
        if !owned {
            return Err(Refused::Error(
                "550 5.7.1 the From header must be your own address".into(),
            ));
        }
    }

    let store = store.clone();
    let outbound_recipients: Vec<OutboundRecipient> = recipients
        .iter()
        .filter_map(|r| match r {
            Recipient::Outside(r) => Some(r.clone()),
            Recipient::Local { .. } => None,
        })
        .collect();
    let mut local_accounts: Vec<Account> = Vec::new();
    for recipient in &recipients {
        if let Recipient::Local { accounts, .. } = recipient {
            for account in accounts {
                if !local_accounts.iter().any(|a| a.id == account.id) {
                    local_accounts.push(account.clone());
                }
            }
        }
    }
    // The content rules decide, per outside recipient, before anything is written.
    let mut outbound_recipients = outbound_recipients;
    if !outbound_recipients.is_empty() {
        let policy = shared.policy.current();
        let findings = analysed.scan(&policy);
        if let Some(block) = findings
            .iter()
            .find(|f| f.action == sealpost_policy::Action::Block)
        {
            let event = AuditEvent::new(&actor, "message.block", format!("from <{from}>"))
                .outcome(AuditOutcome::Denied)
                .detail(format!("content rule {}", block.rule));
            audit(&store, event).await;
            return Err(Refused::Error(format!(
                "550 5.7.1 not sent: content rule {} matched, and policy blocks such mail to outside recipients",
                block.rule
            )));
        }
        for recipient in &mut outbound_recipients {
            if let sealpost_policy::Route::Portal(why) = policy.route(&recipient.address, &findings)
            {
                recipient.portal = Some(why);
            }
        }
    }
    let outbound = (!outbound_recipients.is_empty()).then(|| Outbound {
        from: from.clone(),
        recipients: outbound_recipients,
        env_id,
        ret,
        notice: false,
    });
    let quarantine_days = shared.spam().map_or(30, |s| s.config.quarantine_days);
    let context = AuditContext {
        placement,
        verdict,
        quarantine_days,
        actor,
        from: from.clone(),
        id: id.clone(),
        auth_summary,
        sent_copy,
    };
    let outside: Vec<OutboundRecipient> =
        outbound.iter().flat_map(|o| o.recipients.clone()).collect();
    let sender = submission.clone();
    let queued = outbound.is_some();
    let result = blocking(move || {
        deliver(
            &store,
            &raw,
            &analysed,
            sender.as_ref(),
            &local_accounts,
            outbound,
            &context,
        )
    })
    .await;
    match result {
        Ok(queue) => {
            if let (true, Some(waker)) = (queued, &shared.queue_waker) {
                waker.notify_one();
            }
            if let Some(account) = &submission {
                shared.count_submission(account.id);
            }
            Ok(Accepted { queue, outside })
        }
        // A mailbox filled up since RCPT: the store refuses every copy, the sender retries.
        Err(StoreError::OverQuota { .. }) => Err(Refused::Transient(
            "452 4.2.2 a recipient's mailbox is full; nothing was delivered, try again later"
                .into(),
        )),
        Err(StoreError::LimitExceeded { what, .. }) => Err(Refused::Error(format!(
            "552 5.3.4 refused: {what} over the limit"
        ))),
        Err(error) => {
            warn!(%error, "delivery failed");
            Err(Refused::Transient(
                "451 4.3.0 temporary failure; nothing was delivered, try again later".into(),
            ))
        }
    }
}

async fn audit(store: &Store, event: AuditEvent) {
    let store = store.clone();
    if let Err(error) = blocking(move || store.audit(event)).await {
        warn!(%error, "audit write failed");
    }
}

/// What the receiver needs to know of a message, from one parse: the From addresses, the
/// Message-ID, what the content rules read, and the summary and search text it stores.
pub(crate) struct Analysed {
    /// Every From address, lower-cased.
    from: Vec<String>,
    message_id: String,
    summary: Vec<u8>,
    /// Decoded headers and text, as written (the content rules' patterns are case-sensitive
    /// where case matters, ICD-10 codes for one); stored lower-cased.
    text: sealpost_mime::SearchText,
    attachment_names: Vec<String>,
}

impl Analysed {
    fn of(raw: &[u8]) -> Analysed {
        let Indexed {
            structure,
            summary,
            text,
        } = Indexed::of(raw);
        let attachment_names = structure
            .parts
            .iter()
            .flat_map(|part| {
                let from_disposition = part
                    .disposition
                    .iter()
                    .flat_map(|(_, params)| params.iter())
                    .filter(|(k, _)| k.eq_ignore_ascii_case("filename"));
                let from_type = part
                    .params
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("name"));
                from_disposition
                    .chain(from_type)
                    .map(|(_, v)| v.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        Analysed {
            from: structure
                .envelope
                .from
                .iter()
                .filter_map(|a| a.email().map(|e| e.to_lowercase()))
                .collect(),
            message_id: structure.envelope.message_id.clone().unwrap_or_default(),
            summary: summary.to_bytes(),
            text,
            attachment_names,
        }
    }

    /// What the content rules find: in the subject, the decoded text, attachment names.
    fn scan(&self, policy: &sealpost_policy::Policy) -> Vec<sealpost_policy::Finding> {
        let subject = self.text.header("subject").next().unwrap_or("");
        policy.scan(&sealpost_policy::Content {
            subject,
            text: &self.text.body,
            attachment_names: self.attachment_names.iter().map(String::as_str).collect(),
        })
    }
}

/// The accounts a local address reaches: the account itself, an alias's accounts, or the
/// admins for postmaster@ and abuse@.
fn resolve_local(
    store: &Store,
    aliases: &crate::shared::Aliases,
    address: &str,
) -> Result<Vec<Account>, StoreError> {
    if let Some(targets) = aliases.targets(address) {
        let mut accounts = Vec::new();
        for target in targets {
            if let Some(account) = store.find_account(target)? {
                accounts.push(account);
            }
        }
        return Ok(accounts);
    }
    if let Some(account) = store.find_account(address)? {
        return Ok(vec![account]);
    }
    let local = address.split('@').next().unwrap_or_default();
    if local == "postmaster" || local == "abuse" {
        return Ok(store
            .list_accounts()?
            .into_iter()
            .filter(|a| a.role == Role::Admin && a.status == AccountStatus::Active)
            .collect());
    }
    Ok(Vec::new())
}

/// What the audit records of a delivery say besides the accounts, and where it goes.
struct AuditContext {
    placement: crate::spam::Placement,
    verdict: String,
    quarantine_days: u32,
    actor: Actor,
    from: String,
    id: String,
    /// `spf=... dkim=... dmarc=...` for inbound mail; empty for submissions.
    auth_summary: String,
    /// The sender's Sent folder gets a copy too (the web).
    sent_copy: bool,
}

/// One atomic, durable write: every local recipient's copy where the spam verdict places it
/// (the store adds BACKUP, or holds it in the quarantine), the sender's copy for a
/// submission, the queue entry for outside recipients, and their audit records.
fn deliver(
    store: &Store,
    raw: &[u8],
    analysed: &Analysed,
    sender: Option<&Account>,
    local: &[Account],
    outbound: Option<Outbound>,
    audit: &AuditContext,
) -> Result<Option<QueueId>, StoreError> {
    let message_id = &analysed.message_id;
    let search_text = analysed.text.to_lowercased().to_bytes();
    let message = NewMessage {
        raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: &analysed.summary,
        search_text: &search_text,
    };
    let placement = match audit.placement {
        // Held by the server: no folder of the recipient has it until it is released.
        crate::spam::Placement::Quarantine if sender.is_none() && outbound.is_none() => {
            Placement::Quarantine(Held {
                actor: audit.actor.clone(),
                verdict: audit.verdict.clone(),
                sender: analysed
                    .from
                    .first()
                    .cloned()
                    .unwrap_or_else(|| audit.from.clone()),
                subject: analysed
                    .text
                    .header("subject")
                    .next()
                    .unwrap_or("")
                    .to_string(),
                expires_ms: sealpost_storage::now_ms()
                    .saturating_add(i64::from(audit.quarantine_days) * 24 * 3600 * 1000),
            })
        }
        crate::spam::Placement::Junk => Placement::Junk,
        _ => Placement::Inbox,
    };
    let mut targets: Vec<DeliveryTarget> = local
        .iter()
        .map(|account| DeliveryTarget {
            account: account.id,
            placement: placement.clone(),
            outbound: None,
        })
        .collect();
    if let Some(sender) = sender {
        // Writing to oneself: the store keeps one copy in INBOX, BACKUP (and Sent).
        targets.push(DeliveryTarget {
            account: sender.id,
            placement: Placement::Sender {
                sent: audit.sent_copy,
            },
            outbound,
        });
    }
    let AuditContext {
        actor,
        from,
        id,
        auth_summary,
        ..
    } = audit;
    // One result per account, local recipients first: a held copy has no folder copies
    // (the store audits the hold itself).
    let events = |done: &[sealpost_storage::Delivered]| {
        let mut events = Vec::new();
        for (account, (copies, _)) in local.iter().zip(done) {
            if copies.is_empty() {
                continue;
            }
            events.push(
                AuditEvent::new(
                    actor,
                    "message.deliver",
                    format!("account {}", account.address),
                )
                .detail(format!(
                    "message-id {message_id}; from <{from}>; id {id}; {auth_summary}"
                )),
            );
        }
        if let Some(account) = sender {
            let mut detail = format!("message-id {message_id}; from <{from}>; id {id}");
            if let Some(queue) = done.iter().find_map(|(_, queued)| *queued) {
                detail.push_str(&format!("; queued {queue}"));
            }
            events.push(
                AuditEvent::new(
                    actor,
                    "message.submit",
                    format!("account {}", account.address),
                )
                .detail(detail),
            );
        }
        events
    };
    let done = store.deliver_all(&targets, &message, &events)?;
    Ok(done.iter().find_map(|(_, queued)| *queued))
}

/// Lower-cased address with a local part and a domain, within `ADDRESS_BYTES_MAX`, that can
/// be written on a command line as it is (`wire_safe_address`); `None` for what is not one.
pub(crate) fn normalize_address(address: &str) -> Option<String> {
    let address = address.trim().to_lowercase();
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || address.len() > sealpost_storage::ADDRESS_BYTES_MAX
        || !wire_safe_address(&address)
    {
        return None;
    }
    Some(address)
}

/// Whether an address can go between the `<` and `>` of a MAIL or RCPT command as it is: no
/// control character (a CR or LF would end the command and start another one), no angle
/// bracket, and white space only in a quoted local part.
pub(crate) fn wire_safe_address(address: &str) -> bool {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    let allowed = |c: char| !c.is_control() && c != '<' && c != '>';
    local
        .chars()
        .all(|c| allowed(c) && (quoted || !c.is_whitespace()))
        && domain.chars().all(|c| allowed(c) && !c.is_whitespace())
}

/// Whether a DSN parameter's value, decoded from xtext (ENVID, ORCPT's address), is one we
/// keep: printable US-ASCII without spaces (RFC 3461 §4.2, §4.4), so that it can be shown in
/// a report and relayed as xtext again.
pub(crate) fn dsn_text_ok(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The fields a message may have at most once (RFC 5322 §3.6), as replies name them.
const ONCE_ONLY_FIELDS: [&str; 11] = [
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
];

/// The first once-only field the message's header has more than once, and how many times
/// ("From :", the obsolete syntax of RFC 5322 §4.5, is a From field too).
fn repeated_field(raw: &[u8], walk: &HeaderWalk) -> Option<(&'static str, usize)> {
    ONCE_ONLY_FIELDS
        .iter()
        .map(|field| (*field, walk.named(raw, field).count()))
        .find(|(_, count)| *count > 1)
}

/// A message composed in the webmail by its signed-in author.
#[derive(Clone, Debug)]
pub struct WebMessage {
    /// The whole message, From its author's address.
    pub raw: Vec<u8>,
    /// To, Cc and Bcc together.
    pub recipients: Vec<String>,
    /// The browser's address.
    pub peer: String,
    /// Why every outside recipient gets the pickup portal whatever their server offers (the
    /// sender asked for a proof apart from email, which only the portal can ask for).
    pub portal: Option<String>,
}

/// What became of a message sent from the web.
#[derive(Clone, Debug)]
pub struct WebSent {
    /// The id in its Received field and the audit records.
    pub id: String,
    /// The queue entry (and delivery record) of its outside recipients.
    pub queue: Option<QueueId>,
    /// Outside recipients, with the rule that chose the portal for them, if one did.
    pub outside: Vec<(String, Option<String>)>,
}

/// Why a message from the web was not sent, each a sentence for the author: what callers
/// answer differs (the web: 429, 422, 503).
#[derive(Debug, thiserror::Error)]
pub enum WebSendError {
    /// The account's hourly budget is spent.
    #[error("{0}")]
    TooMany(String),
    /// The message or a recipient is refused (an address, a rule, the size): the author can
    /// change it.
    #[error("{0}")]
    Refused(String),
    /// The server cannot take it now (a recipient's full mailbox, the store): nothing the
    /// author can change; try again later.
    #[error("{0}")]
    Unavailable(String),
}

impl WebSendError {
    /// SMTP's refusal as the author reads it, `before` its text.
    fn of(refused: &Refused, before: &str) -> Self {
        let text = format!("{before}{}", reply_text(refused.reply()));
        match refused {
            Refused::Error(_) => Self::Refused(text),
            Refused::Transient(_) => Self::Unavailable(text),
        }
    }
}

/// Sends a message from the web exactly as a submission over SMTP would go (the From check,
/// recipient rules, content rules, queue, BACKUP), and keeps a copy in Sent. Errors are
/// sentences for the author.
pub async fn submit_from_web(
    store: &Store,
    shared: &SmtpShared,
    config: &crate::SmtpConfig,
    account: &Account,
    message: WebMessage,
) -> Result<WebSent, WebSendError> {
    let max = config.messages_per_hour_per_account_max;
    if !shared.may_submit(account.id, max) {
        return Err(WebSendError::TooMany(format!(
            "You sent {max} messages in the last hour, the most allowed; try again later."
        )));
    }
    let mut recipients: Vec<String> = Vec::new();
    for written in &message.recipients {
        let Some(address) = normalize_address(written) else {
            return Err(WebSendError::Refused(format!(
                "\"{}\" is not an email address.",
                written.trim()
            )));
        };
        if !recipients.contains(&address) {
            recipients.push(address);
        }
    }
    if recipients.is_empty() {
        return Err(WebSendError::Refused("Name at least one recipient.".into()));
    }
    if recipients.len() > config.recipients_per_message_max {
        return Err(WebSendError::Refused(format!(
            "A message may have at most {} recipients.",
            config.recipients_per_message_max
        )));
    }
    let mut classified = Vec::with_capacity(recipients.len());
    for address in recipients {
        match classify_recipient(
            store,
            shared,
            Some(account),
            address.clone(),
            OutboundRecipient {
                portal: message.portal.clone(),
                ..OutboundRecipient::default()
            },
        )
        .await
        {
            Ok(recipient) => classified.push(recipient),
            Err(refused) => return Err(WebSendError::of(&refused, &format!("{address}: "))),
        }
    }
    let id = crate::headers::session_id();
    let prefix = crate::headers::received(
        "webmail",
        &message.peer,
        &config.hostname,
        "HTTPS",
        None,
        &id,
        None,
    );
    if (prefix.len() + message.raw.len()) as u64 > config.message_bytes_max {
        return Err(WebSendError::Refused(format!(
            "The message is larger than the {} bytes allowed.",
            config.message_bytes_max
        )));
    }
    let accept_ = Accept {
        prefix,
        hostname: config.hostname.clone(),
        from: account.address.clone(),
        env_id: None,
        ret: None,
        recipients: classified,
        submission: Some(account.clone()),
        actor: Actor {
            name: account.address.clone(),
            peer: message.peer,
        },
        id: id.clone(),
        auth_summary: String::new(),
        sent_copy: true,
        placement: crate::spam::Placement::Inbox,
        verdict: String::new(),
    };
    match accept(store, shared, message.raw, accept_).await {
        Ok(accepted) => Ok(WebSent {
            id,
            queue: accepted.queue,
            outside: accepted
                .outside
                .into_iter()
                .map(|r| (r.address, r.portal))
                .collect(),
        }),
        Err(refused) => Err(WebSendError::of(&refused, "")),
    }
}

/// The human part of an SMTP reply line ("550 5.7.1 text" → "Text.").
fn reply_text(reply: &str) -> String {
    let text = reply.splitn(3, ' ').nth(2).unwrap_or(reply);
    let mut chars = text.chars();
    let first = chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>())
        .unwrap_or_default();
    format!("{first}{}.", chars.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_repeated(header: &str, expected: Option<(&str, usize)>) {
        let raw = format!("{header}\r\nbody\r\nFrom: in the body\r\nFrom: twice\r\n");
        assert_eq!(
            repeated_field(raw.as_bytes(), &HeaderWalk::of(raw.as_bytes())),
            expected,
            "{header:?}"
        );
    }

    #[test]
    fn each_once_only_field_counts_and_others_do_not() {
        for field in ONCE_ONLY_FIELDS {
            let header = format!(
                "{field}: one\r\nX-Other: x\r\n{}: two\r\n",
                field.to_uppercase()
            );
            check_repeated(&header, Some((field, 2)));
            check_repeated(&format!("{field}: one\r\n"), None);
        }
        check_repeated("From: a\r\nFrom : b\r\nFrom:c\r\n", Some(("From", 3)));
        check_repeated("Subject: a\r\n Subject: folded, not a field\r\n", None);
        check_repeated(
            "Received: a\r\nReceived: b\r\nComments: c\r\nComments: d\r\n",
            None,
        );
        check_repeated(
            "Resent-From: a\r\nResent-From: b\r\nX-From: c\r\nFrom: d\r\n",
            None,
        );
    }

    #[test]
    fn bare_cr_and_lf_become_crlf_and_crlf_stays() {
        let check = |input: &[u8], expected: &[u8]| {
            assert_eq!(
                crate::headers::with_crlf_line_ends(input.to_vec()),
                expected,
                "{input:?}"
            );
        };
        check(b"a\r\nb\r\n", b"a\r\nb\r\n");
        check(b"a\nb\n", b"a\r\nb\r\n");
        check(b"a\rb\r", b"a\r\nb\r\n");
        check(b"\n.\n", b"\r\n.\r\n");
        check(b"x\r.\ny", b"x\r\n.\r\ny");
        check(b"x\n.\r\ny", b"x\r\n.\r\ny");
        check(b"x\r\r\n\n", b"x\r\n\r\n\r\n");
        check(b"", b"");
    }

    #[test]
    fn addresses_that_could_break_a_command_line_are_refused() {
        for good in [
            "a@b.example",
            "\"two words\"@b.example",
            "o'neil+x@b.example",
            "\u{e9}@b.example",
        ] {
            assert!(normalize_address(good).is_some(), "{good:?}");
        }
        for bad in [
            "a@b.example>\r\nRCPT TO:<c@d.example",
            "a\r@b.example",
            "a\u{0}@b.example",
            "a\u{7f}@b.example",
            "a\u{85}@b.example",
            "a>@b.example",
            "<a@b.example",
            "two words@b.example",
            "\"a\"@b. example",
            "a\t@b.example",
        ] {
            assert_eq!(normalize_address(bad), None, "{bad:?}");
        }
        assert!(dsn_text_ok("a+b=c!~"));
        for bad in ["", "a b", "a\r\nb", "caf\u{e9}", "tab\t", "\u{7f}"] {
            assert!(!dsn_text_ok(bad), "{bad:?}");
        }
    }
}
