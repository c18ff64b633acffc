//! Outbound delivery of the queue: MX look-up, an SMTP client that delivers only over TLS
//! whose certificate verifies for the MX name, retries with growing back-off, and the record
//! of what was done per recipient. Never plaintext: a recipient whose servers offer no
//! verified TLS waits for the pickup portal.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::{RData, RecordType};
use mail_auth::MessageAuthenticator;
use sealpost_storage::{
    Actor, AuditEvent, Outbound as Envelope, OutboundRecipient, QueuedMessage, RecipientState,
    RecipientStatus, Store,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// Bounds and settings of outbound delivery, each named with its unit: `sealpost.toml`'s
/// `[outbound]` section, as it is written there. The host name, the portal's address and the
/// notices' sender are the server's (from `[server]` and `[listeners]`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Our name in EHLO.
    #[serde(skip)]
    pub hostname: String,
    /// The port of receiving servers (25; tests point it at loopback servers).
    pub port: u16,
    /// PEM files of the certificate authorities a receiving server's certificate may chain
    /// to: the system's bundle, plus any a site adds for its partners' private CAs (the
    /// server reads them).
    pub ca_files: Vec<std::path::PathBuf>,
    /// How long a connection, a handshake or one reply may take, in ms.
    pub timeout_ms: u64,
    /// The first retry after a temporary failure, in ms; each next one waits twice as long.
    pub retry_first_ms: u64,
    /// The longest wait between two attempts, in ms.
    pub retry_max_ms: u64,
    /// After this long in the queue a recipient still not delivered fails, in ms (5 days).
    pub retry_window_ms: u64,
    /// How often the queue is looked at when nothing wakes it, in ms.
    pub poll_ms: u64,
    /// Queue entries delivered at the same time.
    pub parallel_max: usize,
    /// The pickup link is this followed by the token.
    #[serde(skip)]
    pub portal_url: String,
    /// The organisation's name, in pickup notices; empty: the server names its primary domain.
    pub organisation: String,
    /// The subject of pickup notices (no patient information belongs here).
    pub notice_subject: String,
    /// The address pickup notices come from.
    #[serde(skip)]
    pub notice_from: String,
    /// How long a pickup link works, in ms (30 days).
    pub pickup_ttl_ms: u64,
    /// Relay everything through this host and port instead of the recipients' MX hosts
    /// (still only over TLS verified for that host's name). In the file `"host:port"`;
    /// empty: deliver to each recipient's MX.
    #[serde(with = "host_port")]
    pub smarthost: Option<(String, u16)>,
    /// Connections open at once to one recipient domain (or the smarthost).
    pub connections_per_domain_max: usize,
    /// The HTTPS port MTA-STS policies are fetched from (443; tests point it elsewhere).
    pub mta_sts_port: u16,
    /// Honour DANE TLSA records (RFC 7672) when the resolver validates DNSSEC and runs on
    /// this machine (see `dane.rs`).
    pub dane: bool,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            port: 25,
            ca_files: vec!["/etc/ssl/certs/ca-certificates.crt".into()],
            timeout_ms: 60_000,
            retry_first_ms: 60_000,
            retry_max_ms: 4 * 3600 * 1000,
            retry_window_ms: 5 * 24 * 3600 * 1000,
            poll_ms: 5_000,
            parallel_max: 8,
            portal_url: "https://localhost/pickup/".into(),
            organisation: String::new(),
            notice_subject: "You have a secure message".into(),
            notice_from: "postmaster@localhost".into(),
            pickup_ttl_ms: 30 * 24 * 3600 * 1000,
            smarthost: None,
            connections_per_domain_max: 5,
            mta_sts_port: 443,
            dane: true,
        }
    }
}

impl OutboundConfig {
    /// Refuses settings no server should run with; keys as written in `[outbound]`.
    pub fn check(&self) -> Result<(), sealpost_types::InvalidSetting> {
        use sealpost_types::{at_least, in_range};
        at_least(
            "connections_per_domain_max",
            self.connections_per_domain_max as u64,
            1,
        )?;
        at_least("parallel_max", self.parallel_max as u64, 1)?;
        at_least("timeout_ms", self.timeout_ms, 1000)?;
        at_least("poll_ms", self.poll_ms, 10)?;
        at_least("retry_first_ms", self.retry_first_ms, 1)?;
        in_range(
            "retry_max_ms",
            self.retry_max_ms,
            self.retry_first_ms,
            u64::MAX,
        )?;
        at_least("pickup_ttl_ms", self.pickup_ttl_ms, 1)
    }
}

/// `"host:port"` in the file for `Option<(host, port)>`; the empty string for none.
mod host_port {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<(String, u16)>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some((host, port)) => serializer.serialize_str(&format!("{host}:{port}")),
            None => serializer.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<(String, u16)>, D::Error> {
        let text = String::deserialize(deserializer)?;
        // Only the empty string means none: `" "` is a mistake, not a choice to deliver
        // straight to the recipients' servers past a relay the site requires.
        if text.is_empty() {
            return Ok(None);
        }
        text.rsplit_once(':')
            .and_then(|(host, port)| {
                let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
                (!host.is_empty()).then(|| (host.to_string(), port))
            })
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not host:port")))
    }
}

/// Lines one reply of a receiving server may have, and bytes one line may have.
const REPLY_LINES_MAX: usize = 100;
const REPLY_LINE_BYTES_MAX: usize = 2048;
/// Sending a message body may take this many times `timeout_ms`.
const DATA_TIMEOUT_FACTOR: u32 = 4;
/// MX hosts tried per domain in one attempt, and addresses tried per host.
const MX_HOSTS_TRIED_MAX: usize = 5;
const ADDRESSES_PER_HOST_TRIED_MAX: usize = 4;

/// What one delivery attempt to one host gave.
#[derive(Debug)]
enum HostOutcome {
    /// Per recipient (in the order given): the reply to RCPT, or to DATA when RCPT was taken.
    Replies { replies: Vec<Reply>, tls: String },
    /// No TLS that verifies: STARTTLS not offered, refused, or a bad certificate.
    NoVerifiedTls(String),
    /// The host could not be reached or broke off: try the next one, or later.
    Unreachable(String),
}

#[derive(Clone, Debug)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

/// A connection to a receiving server, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conversation {
    io: BufReader<Box<dyn Io>>,
    timeout: Duration,
    /// What the server's last EHLO reply offered.
    extensions: Extensions,
}

/// The SMTP extensions of a receiving server that decide which parameters we may send: none
/// it did not offer (RFC 1870, RFC 3461 §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Extensions {
    size: bool,
    dsn: bool,
    /// 8BITMIME (RFC 6152): only then may a message with 8-bit bytes go.
    eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531): only then may UTF-8 addresses or header fields go.
    smtputf8: bool,
}

/// What a message and its envelope need of the next server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Needs {
    /// A byte past US-ASCII anywhere: BODY=8BITMIME.
    eight_bit: bool,
    /// A UTF-8 address or header field: SMTPUTF8.
    utf8: bool,
}

impl Needs {
    fn of(from: &str, recipients: &[OutboundRecipient], raw: &[u8]) -> Needs {
        let header = &raw[..sealpost_mime::HeaderWalk::of(raw).body];
        Needs {
            eight_bit: !raw.is_ascii(),
            utf8: !from.is_ascii()
                || recipients.iter().any(|r| !r.address.is_ascii())
                || !header.is_ascii(),
        }
    }

    /// Why `extensions` cannot take the message (a permanent failure), if they cannot.
    fn refused_by(self, extensions: Extensions) -> Option<Reply> {
        if self.utf8 && !extensions.smtputf8 {
            return Some(Reply {
                code: 553,
                text: "5.6.7 the receiving server does not take internationalised addresses or header fields \
                       (SMTPUTF8), which this message has"
                    .into(),
            });
        }
        if self.eight_bit && !extensions.eight_bit_mime {
            return Some(Reply {
                code: 554,
                text: "5.6.3 the receiving server does not take 8-bit content (8BITMIME), which this message has"
                    .into(),
            });
        }
        None
    }
}

impl Extensions {
    /// From the lines of an EHLO reply ("250-SIZE 1000", "250 DSN").
    fn of_ehlo(lines: &[String]) -> Extensions {
        let offered = |name: &str| {
            lines.iter().skip(1).any(|line| {
                line.get(4..)
                    .and_then(|text| text.split_whitespace().next())
                    .is_some_and(|keyword| keyword.eq_ignore_ascii_case(name))
            })
        };
        Extensions {
            size: offered("SIZE"),
            dsn: offered("DSN"),
            eight_bit_mime: offered("8BITMIME"),
            smtputf8: offered("SMTPUTF8"),
        }
    }
}

/// `value` as xtext (RFC 3461 §4): printable US-ASCII as itself but "+" and "=", and every
/// other byte (a CR, an LF, a space) as "+" and two hex digits, so that nothing in it can end
/// or split a command line.
fn xtext(value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_graphic() && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "+{byte:02X}");
        }
    }
    out
}

/// The MAIL command for `envelope`: SIZE where the server offers it; BODY=8BITMIME and
/// SMTPUTF8 where the message needs them (and the server offers them: the transaction checks
/// first); RET and ENVID (as xtext) where it offers DSN. Only checked or encoded values are
/// written.
fn mail_command(envelope: &Envelope, size: usize, extensions: Extensions, needs: Needs) -> String {
    let mut mail = format!("MAIL FROM:<{}>", envelope.from);
    if extensions.size {
        mail.push_str(&format!(" SIZE={size}"));
    }
    if needs.eight_bit && extensions.eight_bit_mime {
        mail.push_str(" BODY=8BITMIME");
    }
    if needs.utf8 && extensions.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if extensions.dsn {
        if let Some(ret @ ("FULL" | "HDRS")) = envelope.ret.as_deref() {
            mail.push_str(&format!(" RET={ret}"));
        }
        if let Some(env_id) = envelope.env_id.as_deref().filter(|id| !id.is_empty()) {
            mail.push_str(&format!(" ENVID={}", xtext(env_id)));
        }
    }
    mail
}

/// The RCPT command for `recipient`: NOTIFY (its keywords only) and ORCPT (the address as
/// xtext) where the server offers DSN.
fn rcpt_command(recipient: &OutboundRecipient, extensions: Extensions) -> String {
    let mut rcpt = format!("RCPT TO:<{}>", recipient.address);
    if !extensions.dsn {
        return rcpt;
    }
    let notify: Vec<&str> = recipient
        .notify
        .iter()
        .map(String::as_str)
        .filter(|keyword| matches!(*keyword, "SUCCESS" | "FAILURE" | "DELAY" | "NEVER"))
        .collect();
    // NEVER stands alone (RFC 3461 §4.1).
    let notify = if notify.contains(&"NEVER") {
        vec!["NEVER"]
    } else {
        notify
    };
    if !notify.is_empty() {
        rcpt.push_str(&format!(" NOTIFY={}", notify.join(",")));
    }
    if let Some((kind, address)) = recipient.orcpt.as_deref().and_then(|o| o.split_once(';')) {
        if kind.eq_ignore_ascii_case("rfc822") && !address.is_empty() {
            rcpt.push_str(&format!(" ORCPT=rfc822;{}", xtext(address)));
        }
    }
    rcpt
}

impl Conversation {
    async fn reply(&mut self) -> std::io::Result<(Reply, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(self.timeout, self.io.read_line(&mut line)).await;
            let n = read.map_err(|_| std::io::Error::other("timed out waiting for a reply"))??;
            if n == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            if lines.len() >= REPLY_LINES_MAX || line.len() > REPLY_LINE_BYTES_MAX {
                return Err(std::io::Error::other("reply too long"));
            }
            let line = line.trim_end().to_string();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if let (Some(code), true) = (code, last) {
                let text = lines
                    .last()
                    .map(|l| l.get(4..).unwrap_or("").to_string())
                    .unwrap_or_default();
                return Ok((Reply { code, text }, lines));
            }
            if code.is_none() {
                return Err(std::io::Error::other("not an SMTP reply"));
            }
        }
    }

    async fn send(&mut self, line: &str) -> std::io::Result<()> {
        // One write: a command in two segments waits for the first one's delayed ACK (Nagle),
        // 40 ms a command.
        let framed = format!("{line}\r\n");
        let write = async {
            self.io.get_mut().write_all(framed.as_bytes()).await?;
            self.io.get_mut().flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| std::io::Error::other("timed out sending"))?
    }

    async fn command(&mut self, line: &str) -> std::io::Result<(Reply, Vec<String>)> {
        self.send(line).await?;
        self.reply().await
    }
}

/// Dot-stuffs a message for DATA and ends it with CRLF.CRLF. Its lines end in CRLF (made so at
/// submission, and again by `attempt` for what was queued before): a dot after a bare CR
/// would not be stuffed.
fn dot_stuffed(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 64 + 5);
    let mut line_start = true;
    for &byte in raw {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The outbound side: resolver, TLS client configuration and store.
pub struct Outbound {
    store: Store,
    config: OutboundConfig,
    resolver: MessageAuthenticator,
    /// The resolver whose DNSSEC validation is trusted, when DANE is on.
    dane: Option<crate::dane::SecureDns>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    tls: tokio_rustls::TlsConnector,
    wake: Arc<tokio::sync::Notify>,
    dkim: Option<crate::DkimSigning>,
    /// One semaphore per domain being delivered to: connections_per_domain_max permits.
    domain_slots: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    mta_sts: crate::mta_sts::Cache,
    /// Verified-TLS sessions left open after a delivery, by host and port, for the next
    /// message to the same server: a TLS handshake per message cost most of the delivery time.
    idle: std::sync::Mutex<IdleSessions>,
    /// Recipients' outcomes so far (delivered, portal, failed, deferred), for /metrics.
    outcomes: [std::sync::atomic::AtomicU64; 4],
    /// How long a pickup link lasts, in ms: `pickup_ttl_ms` of the config until the console's
    /// portal settings replace it.
    pickup_ttl_ms: std::sync::atomic::AtomicU64,
}

/// Open sessions by (host, port): the conversation, its TLS description, since when idle.
type IdleSessions =
    std::collections::HashMap<(String, u16), Vec<(Conversation, String, std::time::Instant)>>;

/// How long an open session waits for the next message, and how many wait per server.
const IDLE_SESSION_MS: u64 = 10_000;
const IDLE_SESSIONS_PER_HOST_MAX: usize = 8;

/// Most domains whose connection semaphores are kept; idle ones go first.
const DOMAIN_SLOTS_KEPT_MAX: usize = 10_000;

impl Outbound {
    /// `roots`: the certificate authorities a receiving server's certificate must chain to.
    pub fn new(
        store: Store,
        config: OutboundConfig,
        dns_servers: &[SocketAddr],
        roots: rustls::RootCertStore,
        dkim: Option<crate::DkimSigning>,
    ) -> std::io::Result<Arc<Self>> {
        let resolver = crate::verify::make_resolver(dns_servers)?;
        let dane = if config.dane {
            let servers = crate::verify::resolver_addresses(dns_servers)?;
            let timeout = Duration::from_millis(crate::verify::DNS_TIMEOUT_MS);
            match crate::dane::SecureDns::for_servers(servers, timeout) {
                Ok(dns) => {
                    info!("DANE: TLSA records apply where the resolver on this machine validates them");
                    Some(dns)
                }
                Err(why) => {
                    warn!("DANE is off: {why}; certificates are checked against the CAs alone");
                    None
                }
            }
        } else {
            None
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(Self {
            store,
            pickup_ttl_ms: std::sync::atomic::AtomicU64::new(config.pickup_ttl_ms),
            config,
            resolver,
            dane,
            provider,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            wake: Arc::new(tokio::sync::Notify::new()),
            dkim,
            domain_slots: std::sync::Mutex::new(std::collections::HashMap::new()),
            mta_sts: crate::mta_sts::Cache::default(),
            idle: std::sync::Mutex::new(std::collections::HashMap::new()),
            outcomes: Default::default(),
        }))
    }

    /// Puts a pickup link lifetime in force for the links made from now on, in ms.
    pub fn set_pickup_ttl_ms(&self, ms: u64) {
        self.pickup_ttl_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Recipients' outcomes of delivery attempts so far: delivered over verified TLS, kept
    /// for the portal, failed, deferred (to be tried again).
    pub fn outcome_counts(&self) -> [u64; 4] {
        let [a, b, c, d] = &self.outcomes;
        [a, b, c, d].map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Runs the queue until `shutdown`: due entries are delivered, at most parallel_max at a
    /// time.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.config.parallel_max.max(1)));
        let mut running = tokio::task::JoinSet::new();
        let mut busy = std::collections::HashSet::new();
        loop {
            let store = self.store.clone();
            let entries = match tokio::task::spawn_blocking(move || store.queued()).await {
                Ok(Ok(entries)) => entries,
                Ok(Err(error)) => {
                    warn!(%error, "reading the queue failed");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            let now = now_ms();
            // Expired pickup links go, and release their messages.
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.expire_pickups(now)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => info!(expired = n, "pickups expired"),
                other => warn!("expiring pickups failed: {other:?}"),
            }
            for entry in entries {
                if !entry.pending() || entry.next_attempt_ms > now || busy.contains(&entry.id) {
                    continue;
                }
                let Ok(permit) = semaphore.clone().acquire_owned().await else {
                    break;
                };
                busy.insert(entry.id);
                let this = self.clone();
                running.spawn(async move {
                    let id = entry.id;
                    this.attempt(entry).await;
                    drop(permit);
                    id
                });
            }
            let poll = Duration::from_millis(self.config.poll_ms);
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(id) = done {
                        busy.remove(&id);
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            while let Some(done) = running.try_join_next() {
                if let Ok(id) = done {
                    busy.remove(&id);
                }
            }
        }
        // Attempts in flight end at their next reply's timeout at the latest; a delivery cut
        // off here is retried after the restart (the recipient's state was not yet changed).
        running.abort_all();
    }

    /// One attempt at every pending recipient of one entry, recorded in one write.
    async fn attempt(&self, entry: QueuedMessage) {
        let (store, account, id) = (self.store.clone(), entry.account, entry.id);
        let raw = match tokio::task::spawn_blocking(move || store.read_queued(account, id)).await {
            // Only CRLF line ends on the wire, whenever the message was queued: no lenient
            // receiver can be told the message ended early (SMTP smuggling).
            Ok(Ok(raw)) => crate::headers::with_crlf_line_ends(raw),
            other => {
                warn!(queue = %entry.id, "reading a queued message failed: {other:?}");
                return;
            }
        };
        // Signed as it leaves, so that a key rotation applies to what is still queued.
        let signed = match &self.dkim {
            Some(dkim) => match dkim.sign(&raw) {
                Ok(fields) => [fields.as_bytes(), &raw].concat(),
                Err(error) => {
                    warn!(queue = %entry.id, %error, "DKIM signing failed; the message waits");
                    return;
                }
            },
            None => raw.clone(),
        };
        let mut states = entry.states.clone();
        let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let actor = Actor {
            name: "outbound".into(),
            peer: String::new(),
        };
        let mut events = Vec::new();
        let now = now_ms();
        for (index, recipient) in entry.envelope.recipients.iter().enumerate() {
            // A rule chose the portal at submission: no SMTP for this one.
            if let (RecipientStatus::Pending, Some(why)) =
                (&states[index].status, &recipient.portal)
            {
                let address = &recipient.address;
                let (state, event) = match self.to_portal(&entry, address).await {
                    Ok(()) => (
                        RecipientState {
                            status: RecipientStatus::Portal {
                                at_ms: now,
                                why: why.clone(),
                            },
                            last_reply: None,
                        },
                        AuditEvent::new(&actor, "queue.portal", format!("to {address}")).detail(
                            format!("queue {}; {why}; kept for pickup, notice sent", entry.id),
                        ),
                    ),
                    Err(error) => deferred(&actor, &entry, address, format!("{why}; {error}")),
                };
                states[index] = state;
                events.push(event);
                continue;
            }
            if states[index].status == RecipientStatus::Pending {
                let domain = recipient
                    .address
                    .rsplit_once('@')
                    .map_or("", |(_, d)| d)
                    .to_string();
                by_domain.entry(domain).or_default().push(index);
            }
        }
        for (domain, indexes) in by_domain {
            let recipients: Vec<OutboundRecipient> = indexes
                .iter()
                .map(|&i| entry.envelope.recipients[i].clone())
                .collect();
            let outcome = self
                .deliver_domain(&domain, &entry, &recipients, &signed)
                .await;
            for (slot, &index) in indexes.iter().enumerate() {
                let address = &entry.envelope.recipients[index].address;
                let (state, event) = match &outcome {
                    DomainOutcome::Replies { replies, tls, host } => {
                        let reply = &replies[slot];
                        match reply.code {
                            200..=299 => (
                                RecipientState {
                                    status: RecipientStatus::Delivered {
                                        at_ms: now,
                                        how: format!("{host} over {tls}"),
                                    },
                                    last_reply: Some(reply.line()),
                                },
                                AuditEvent::new(&actor, "queue.deliver", format!("to {address}"))
                                    .detail(format!(
                                        "queue {}; {host} over {}{tls}; {}",
                                        entry.id,
                                        if entry.envelope.notice && tls.contains("a pickup notice")
                                        {
                                            ""
                                        } else {
                                            "verified "
                                        },
                                        reply.line()
                                    )),
                            ),
                            500..=599 => (
                                RecipientState {
                                    status: RecipientStatus::Failed {
                                        at_ms: now,
                                        reply: reply.line(),
                                    },
                                    last_reply: Some(reply.line()),
                                },
                                AuditEvent::new(&actor, "queue.fail", format!("to {address}"))
                                    .outcome(sealpost_storage::AuditOutcome::Failed)
                                    .detail(format!(
                                        "queue {}; {host}; {}",
                                        entry.id,
                                        reply.line()
                                    )),
                            ),
                            _ => deferred(&actor, &entry, address, reply.line()),
                        }
                    }
                    // A notice that cannot go (an MTA-STS policy naming none of the MX hosts)
                    // waits: a notice about a notice would never end.
                    DomainOutcome::NoVerifiedTls(why) if entry.envelope.notice => {
                        deferred(&actor, &entry, address, why.clone())
                    }
                    DomainOutcome::NoVerifiedTls(why) => {
                        match self.to_portal(&entry, address).await {
                            Ok(()) => (
                                RecipientState {
                                    status: RecipientStatus::Portal {
                                        at_ms: now,
                                        why: format!("no verified TLS: {why}"),
                                    },
                                    last_reply: Some(why.clone()),
                                },
                                AuditEvent::new(&actor, "queue.portal", format!("to {address}"))
                                    .detail(format!(
                                "queue {}; no verified TLS ({why}); kept for pickup, notice sent",
                                entry.id
                            )),
                            ),
                            Err(error) => deferred(
                                &actor,
                                &entry,
                                address,
                                format!("no verified TLS ({why}); {error}"),
                            ),
                        }
                    }
                    DomainOutcome::Unreachable(why) => {
                        deferred(&actor, &entry, address, why.clone())
                    }
                };
                states[index] = state;
                events.push(event);
            }
        }
        // Out of time: what is still pending fails.
        if now - entry.created_ms > i64::try_from(self.config.retry_window_ms).unwrap_or(i64::MAX) {
            for (index, state) in states.iter_mut().enumerate() {
                if state.status == RecipientStatus::Pending {
                    let reply = state
                        .last_reply
                        .clone()
                        .unwrap_or_else(|| "retry window ran out".into());
                    state.status = RecipientStatus::Failed { at_ms: now, reply };
                    let address = &entry.envelope.recipients[index].address;
                    events.push(
                        AuditEvent::new(&actor, "queue.fail", format!("to {address}"))
                            .outcome(sealpost_storage::AuditOutcome::Failed)
                            .detail(format!("queue {}; retry window ran out", entry.id)),
                    );
                }
            }
        }
        for (new, old) in states.iter().zip(&entry.states) {
            if old.status != RecipientStatus::Pending {
                continue;
            }
            let slot = match new.status {
                RecipientStatus::Delivered { .. } => 0,
                RecipientStatus::Portal { .. } => 1,
                RecipientStatus::Failed { .. } => 2,
                RecipientStatus::Pending => 3,
            };
            self.outcomes[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Bounce what failed in this attempt to the sender, before the attempt is recorded:
        // after a crash in between, a failure may be reported twice, never not at all.
        let failures: Vec<crate::bounce::Failure<'_>> = states
            .iter()
            .zip(&entry.states)
            .zip(&entry.envelope.recipients)
            .filter_map(|((new, old), recipient)| match (&new.status, &old.status) {
                (RecipientStatus::Failed { reply, .. }, RecipientStatus::Pending)
                    if crate::bounce::wanted(recipient) =>
                {
                    Some(crate::bounce::Failure { recipient, reply })
                }
                _ => None,
            })
            .collect();
        if !failures.is_empty() && !entry.envelope.from.is_empty() {
            let report = crate::bounce::report(&self.config.hostname, &entry, &raw, &failures);
            let (store, account, actor) = (self.store.clone(), entry.account, actor.clone());
            let detail = format!("queue {}; {} recipients", entry.id, failures.len());
            let done = tokio::task::spawn_blocking(move || {
                deliver_report(&store, account, &report, &actor, detail)
            })
            .await;
            if !matches!(done, Ok(Ok(()))) {
                warn!(queue = %entry.id, "delivering a bounce failed: {done:?}");
            }
        }
        drop(failures);
        let shift = entry.attempts.min(20);
        let wait = self
            .config
            .retry_first_ms
            .saturating_mul(1u64 << shift)
            .min(self.config.retry_max_ms);
        let next = now.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX));
        let (store, account, id) = (self.store.clone(), entry.account, entry.id);
        let written = tokio::task::spawn_blocking(move || {
            store.queue_update(account, id, states, next, events)
        })
        .await;
        match written {
            Ok(Ok(())) => info!(queue = %entry.id, "delivery attempt recorded"),
            other => warn!(queue = %entry.id, "recording a delivery attempt failed: {other:?}"),
        }
    }

    /// MAIL, RCPT for each recipient, DATA: the reply for each recipient.
    async fn transaction(
        &self,
        talk: &mut Conversation,
        ehlo_again: bool,
        ehlo: &str,
        entry: &QueuedMessage,
        recipients: &[OutboundRecipient],
        raw: &[u8],
    ) -> std::io::Result<Vec<Reply>> {
        let timeout = talk.timeout;
        let envelope = &entry.envelope;
        if ehlo_again {
            let (reply, lines) = talk.command(ehlo).await?;
            if reply.code != 250 {
                return Ok(vec![reply; recipients.len()]);
            }
            talk.extensions = Extensions::of_ehlo(&lines);
        }
        // Addresses are checked at receipt; one queued before that was, and that could break
        // a command line, fails here rather than being written.
        if !crate::submit::wire_safe_address(&envelope.from) {
            let refused = Reply {
                code: 553,
                text: "5.1.7 the sender address cannot be written in a MAIL command".into(),
            };
            return Ok(vec![refused; recipients.len()]);
        }
        // 8-bit content or UTF-8 addresses and fields go only to a server that takes them
        // (RFC 6152 section 3, RFC 6531 section 3.4); otherwise the recipients fail now.
        let needs = Needs::of(&envelope.from, recipients, raw);
        if let Some(refused) = needs.refused_by(talk.extensions) {
            return Ok(vec![refused; recipients.len()]);
        }
        let (reply, _) = talk
            .command(&mail_command(envelope, raw.len(), talk.extensions, needs))
            .await?;
        if reply.code != 250 {
            return Ok(vec![reply; recipients.len()]);
        }
        let mut replies = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            if !crate::submit::wire_safe_address(&recipient.address) {
                replies.push(Reply {
                    code: 553,
                    text: "5.1.3 the recipient address cannot be written in a RCPT command".into(),
                });
                continue;
            }
            let (reply, _) = talk
                .command(&rcpt_command(recipient, talk.extensions))
                .await?;
            replies.push(reply);
        }
        if replies.iter().all(|r| r.code != 250 && r.code != 251) {
            return Ok(replies);
        }
        let (reply, _) = talk.command("DATA").await?;
        if reply.code != 354 {
            return Ok(replies
                .into_iter()
                .map(|r| if r.code / 100 == 2 { reply.clone() } else { r })
                .collect());
        }
        let body = dot_stuffed(raw);
        tokio::time::timeout(
            timeout.saturating_mul(DATA_TIMEOUT_FACTOR),
            talk.io.get_mut().write_all(&body),
        )
        .await
        .map_err(|_| std::io::Error::other("timed out sending the message"))??;
        talk.io.get_mut().flush().await?;
        let (data_reply, _) = talk.reply().await?;
        Ok::<_, std::io::Error>(
            replies
                .into_iter()
                .map(|r| {
                    if r.code / 100 == 2 {
                        data_reply.clone()
                    } else {
                        r
                    }
                })
                .collect(),
        )
    }

    /// An open session to `key` that has not waited too long.
    fn take_idle(&self, key: &(String, u16)) -> Option<(Conversation, String)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = idle.get_mut(key)?;
        while let Some((talk, tls, since)) = sessions.pop() {
            if since.elapsed() < Duration::from_millis(IDLE_SESSION_MS) {
                return Some((talk, tls));
            }
        }
        None
    }

    /// Resets a session after a transaction and keeps it for the next message to the same
    /// server, or ends it (QUIT) when enough wait already.
    async fn keep_idle(&self, key: (String, u16), mut talk: Conversation, tls: String) {
        match talk.command("RSET").await {
            Ok((reply, _)) if reply.code == 250 => {}
            _ => return,
        }
        let mut talk = Some(talk);
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|_, sessions| {
                sessions.retain(|(_, _, since)| {
                    since.elapsed() < Duration::from_millis(IDLE_SESSION_MS)
                });
                !sessions.is_empty()
            });
            let sessions = idle.entry(key).or_default();
            if sessions.len() < IDLE_SESSIONS_PER_HOST_MAX {
                if let Some(talk) = talk.take() {
                    sessions.push((talk, tls, std::time::Instant::now()));
                }
            }
        }
        if let Some(mut talk) = talk {
            let _ = talk.send("QUIT").await;
        }
    }

    /// Keeps the message for `recipient`'s pickup and queues the notice with the link.
    async fn to_portal(&self, entry: &QueuedMessage, recipient: &str) -> Result<(), String> {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut secret);
        let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let ttl_ms = self
            .pickup_ttl_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let expires_ms = now_ms().saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let notice = crate::headers::pickup_notice(&self.config, recipient, &token, expires_ms);
        let envelope = sealpost_storage::Outbound {
            from: entry.envelope.from.clone(),
            recipients: vec![sealpost_storage::OutboundRecipient {
                address: recipient.to_string(),
                notify: vec![],
                orcpt: None,
                portal: None,
            }],
            env_id: None,
            ret: None,
            notice: true,
        };
        let (store, account, id, recipient) = (
            self.store.clone(),
            entry.account,
            entry.id,
            recipient.to_string(),
        );
        let done = tokio::task::spawn_blocking(move || {
            store.create_pickup(account, id, &recipient, &token, expires_ms)?;
            let summary = sealpost_mime::Indexed::of(&notice).summary_bytes();
            let message = sealpost_storage::NewMessage {
                raw: &notice,
                flags: sealpost_storage::Flags::new(),
                internal_date: sealpost_storage::InternalDate::now(),
                summary: &summary,
                search_text: b"",
            };
            // The sender's BACKUP keeps the notice (the store adds it), the queue sends it.
            let target = sealpost_storage::DeliveryTarget {
                account,
                placement: sealpost_storage::Placement::Sender { sent: false },
                outbound: Some(envelope),
            };
            store.deliver_all(&[target], &message, &|_| Vec::new())
        })
        .await;
        match done {
            Ok(Ok(_)) => {
                // No recipient, domain or host in logs: the audit record says who and why.
                debug!(queue = %entry.id, "kept for pickup");
                self.wake.notify_one();
                Ok(())
            }
            Ok(Err(error)) => Err(format!("keeping it for pickup failed: {error}")),
            Err(error) => Err(format!("keeping it for pickup failed: {error}")),
        }
    }

    /// The domain's MTA-STS policy: cached while its id and max_age hold, else fetched. A
    /// fetch that fails keeps the policy cached before, if any; so does a `_mta-sts` record
    /// that is missing, unreadable or not answered (RFC 8461 §5.1): whoever can withhold a
    /// DNS answer cannot switch off a policy already seen, before its max_age ends.
    async fn mta_sts_policy(&self, domain: &str) -> Option<crate::mta_sts::Policy> {
        let published = match self
            .resolver
            .txt_raw_lookup(format!("_mta-sts.{domain}."))
            .await
        {
            Ok(txt) => crate::mta_sts::record_id(&String::from_utf8_lossy(&txt)),
            Err(_) => None,
        };
        let mut step = self.mta_sts.step(domain, published.as_deref());
        if let crate::mta_sts::Step::InForce(Some(policy)) = step {
            return Some(policy);
        }
        // Nothing in memory: after a restart, the policy kept in the store while its max_age
        // holds.
        if self.kept_mta_sts_policy(domain).await {
            step = self.mta_sts.step(domain, published.as_deref());
        }
        let id = match step {
            crate::mta_sts::Step::InForce(policy) => return policy,
            crate::mta_sts::Step::Fetch { id } => id,
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match crate::mta_sts::fetch(
            &self.tls,
            &self.resolver,
            domain,
            self.config.mta_sts_port,
            timeout,
        )
        .await
        {
            Ok(body) => match crate::mta_sts::parse(&id, &body) {
                Some(policy) => {
                    self.mta_sts.put(domain, policy.clone());
                    let (store, name, bytes) = (
                        self.store.clone(),
                        domain.to_string(),
                        crate::mta_sts::encode(&policy, now_ms()),
                    );
                    if let Ok(Err(error)) =
                        tokio::task::spawn_blocking(move || store.cache("mta-sts", &name, &bytes))
                            .await
                    {
                        warn!(%error, "keeping an MTA-STS policy failed");
                    }
                    Some(policy)
                }
                None => {
                    warn!("an MTA-STS policy does not parse; the one cached before (if any) stays in force");
                    self.mta_sts.get_any(domain)
                }
            },
            Err(_) => {
                // The domain and the reason stay out of the log (which domains a clinic writes
                // to is itself sensitive); delivery goes on with the cached policy, if any.
                debug!("an MTA-STS policy fetch failed");
                self.mta_sts.get_any(domain)
            }
        }
    }

    /// Puts the policy the store keeps for `domain` into the memory cache, if there is one
    /// whose max_age holds; whether there was.
    async fn kept_mta_sts_policy(&self, domain: &str) -> bool {
        let (store, name) = (self.store.clone(), domain.to_string());
        let kept = tokio::task::spawn_blocking(move || store.cached("mta-sts", &name))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .and_then(|bytes| crate::mta_sts::decode(&bytes));
        let Some((policy, fetched_ms)) = kept else {
            return false;
        };
        let age = Duration::from_millis(u64::try_from(now_ms() - fetched_ms).unwrap_or(u64::MAX));
        if age >= policy.max_age {
            return false;
        }
        let at = std::time::Instant::now()
            .checked_sub(age)
            .unwrap_or_else(std::time::Instant::now);
        self.mta_sts.put_at(domain, policy, at);
        true
    }

    /// The MX hosts of a domain by preference (the domain itself when it has none), and
    /// whether the answer was DNSSEC-signed (always no with DANE off).
    async fn mx_hosts(&self, domain: &str) -> Result<(Vec<String>, bool), String> {
        let name = format!("{}.", domain.trim_end_matches('.'));
        let (records, secure) = match &self.dane {
            Some(dns) => {
                let answer = dns.query(&name, RecordType::MX).await?;
                match answer.code {
                    ResponseCode::NoError | ResponseCode::NXDomain => {
                        (answer.records, answer.authentic)
                    }
                    code => return Err(format!("MX look-up for {domain} failed: {code}")),
                }
            }
            None => match self.resolver.0.mx_lookup(name.as_str()).await {
                Ok(lookup) => (lookup.answers().to_vec(), false),
                Err(error) if error.is_no_records_found() => (Vec::new(), false),
                Err(error) => return Err(format!("MX look-up for {domain} failed: {error}")),
            },
        };
        let mut hosts: Vec<(u16, String)> = records
            .iter()
            .filter_map(|record| match &record.data {
                RData::MX(mx) => Some((
                    mx.preference,
                    mx.exchange.to_ascii().trim_end_matches('.').to_lowercase(),
                )),
                _ => None,
            })
            .collect();
        hosts.sort();
        if hosts.is_empty() {
            return Ok((vec![domain.to_string()], secure));
        }
        if hosts.len() == 1 && hosts[0].1.is_empty() {
            return Err(format!("{domain} accepts no mail (null MX)"));
        }
        Ok((hosts.into_iter().map(|(_, h)| h).collect(), secure))
    }

    async fn deliver_domain(
        &self,
        domain: &str,
        entry: &QueuedMessage,
        recipients: &[OutboundRecipient],
        raw: &[u8],
    ) -> DomainOutcome {
        // With the MX answer signed (or the smarthost, which configuration names), a signed
        // TLSA answer for a host says which certificate it must present.
        let (mut hosts, port, hosts_secure) = match &self.config.smarthost {
            Some((host, port)) => (vec![host.clone()], *port, true),
            None => match self.mx_hosts(domain).await {
                Ok((hosts, secure)) => (hosts, self.config.port, secure),
                Err(why) => return DomainOutcome::Unreachable(why),
            },
        };
        // MTA-STS in enforce mode: only the MX hosts the domain's policy names.
        let mut sts_note = "";
        if self.config.smarthost.is_none() {
            if let Some(policy) = self.mta_sts_policy(domain).await {
                if policy.enforce {
                    hosts.retain(|h| policy.allows(h));
                    if hosts.is_empty() {
                        return DomainOutcome::NoVerifiedTls(format!(
                            "{domain}'s MTA-STS policy names none of its MX hosts"
                        ));
                    }
                    sts_note = " (MTA-STS enforced)";
                }
            }
        }
        // At most connections_per_domain_max connections to one domain at a time.
        let slot_key = match &self.config.smarthost {
            Some((host, _)) => host.clone(),
            None => domain.to_string(),
        };
        let semaphore = {
            let mut slots = self.domain_slots.lock().unwrap_or_else(|e| e.into_inner());
            let max = self.config.connections_per_domain_max.max(1);
            if slots.len() >= DOMAIN_SLOTS_KEPT_MAX {
                slots.retain(|_, s| s.available_permits() < max);
            }
            slots
                .entry(slot_key)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max)))
                .clone()
        };
        let Ok(_permit) = semaphore.acquire_owned().await else {
            return DomainOutcome::Unreachable("shutting down".into());
        };
        let mut no_tls = None;
        let mut unreachable = format!("no server for {domain}");
        for host in hosts.iter().take(MX_HOSTS_TRIED_MAX) {
            let addresses: Vec<IpAddr> =
                match self.resolver.0.lookup_ip(format!("{host}.").as_str()).await {
                    Ok(found) => found.iter().take(ADDRESSES_PER_HOST_TRIED_MAX).collect(),
                    Err(error) => {
                        unreachable = format!("{host}: address look-up failed: {error}");
                        continue;
                    }
                };
            let tlsa = match &self.dane {
                Some(dns) if hosts_secure => match dns.tlsa(host, port).await {
                    Ok(records) => records,
                    // A pickup notice may go in plaintext anyway: the CAs decide its TLS.
                    Err(_) if entry.envelope.notice => None,
                    // A failed look-up in a signed zone may be an attack on it: no TLS to this
                    // host can be trusted.
                    Err(why) => {
                        no_tls = Some(format!("{host}: {why}"));
                        continue;
                    }
                },
                _ => None,
            };
            let check = match &tlsa {
                Some(records) => TlsCheck::Dane(records),
                None => TlsCheck::Pkix,
            };
            for ip in addresses {
                let address = SocketAddr::new(ip, port);
                match self
                    .deliver_host(host, address, check, entry, recipients, raw)
                    .await
                {
                    HostOutcome::Replies { replies, tls } => {
                        return DomainOutcome::Replies {
                            replies,
                            tls,
                            host: format!("{host}{sts_note}"),
                        }
                    }
                    HostOutcome::NoVerifiedTls(why) => no_tls = Some(format!("{host}: {why}")),
                    HostOutcome::Unreachable(why) => unreachable = format!("{host} [{ip}]: {why}"),
                }
            }
        }
        match no_tls {
            Some(why) => DomainOutcome::NoVerifiedTls(why),
            None => DomainOutcome::Unreachable(unreachable),
        }
    }

    /// Delivers over verified TLS; a pickup notice (no patient information) that cannot have
    /// it goes on a second connection over STARTTLS without checking the certificate (so a
    /// passive listener sees nothing), or in plaintext only where the server offers no TLS.
    async fn deliver_host(
        &self,
        host: &str,
        address: SocketAddr,
        check: TlsCheck<'_>,
        entry: &QueuedMessage,
        recipients: &[OutboundRecipient],
        raw: &[u8],
    ) -> HostOutcome {
        let outcome = self
            .deliver_host_once(host, address, check, entry, recipients, raw)
            .await;
        match outcome {
            HostOutcome::NoVerifiedTls(why) if entry.envelope.notice => {
                match self
                    .deliver_host_once(
                        host,
                        address,
                        TlsCheck::Opportunistic,
                        entry,
                        recipients,
                        raw,
                    )
                    .await
                {
                    HostOutcome::Replies { replies, tls } => HostOutcome::Replies {
                        replies,
                        tls: format!("{tls}, a pickup notice without patient information ({why})"),
                    },
                    other => other,
                }
            }
            other => other,
        }
    }

    /// A TLS client that checks certificates against `records` alone, and its verifier (which
    /// tells the record that matched).
    fn dane_connector(
        &self,
        records: &[crate::dane::Tlsa],
    ) -> Result<
        (
            tokio_rustls::TlsConnector,
            Option<Arc<crate::dane::DaneVerifier>>,
        ),
        rustls::Error,
    > {
        let verifier = Arc::new(crate::dane::DaneVerifier::new(
            records.to_vec(),
            self.provider.clone(),
        ));
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok((
            tokio_rustls::TlsConnector::from(Arc::new(config)),
            Some(verifier),
        ))
    }

    /// One connection, with STARTTLS and the certificate checked as `check` says.
    async fn deliver_host_once(
        &self,
        host: &str,
        address: SocketAddr,
        check: TlsCheck<'_>,
        entry: &QueuedMessage,
        recipients: &[OutboundRecipient],
        raw: &[u8],
    ) -> HostOutcome {
        let opportunistic = matches!(check, TlsCheck::Opportunistic);
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let key = (host.to_string(), address.port());
        // A kept session was verified (an unverified one is never kept): any message may use it.
        while let Some((mut talk, tls)) = self.take_idle(&key) {
            // A session the server closed meanwhile fails here; then the next, or a new one.
            if let Ok(replies) = self
                .transaction(&mut talk, false, "", entry, recipients, raw)
                .await
            {
                self.keep_idle(key, talk, tls.clone()).await;
                return HostOutcome::Replies { replies, tls };
            }
        }
        let socket = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(socket)) => {
                // Commands are small and each waits for its reply: no Nagle delay.
                let _ = socket.set_nodelay(true);
                socket
            }
            Ok(Err(error)) => return HostOutcome::Unreachable(format!("connect: {error}")),
            Err(_) => return HostOutcome::Unreachable("connect: timed out".into()),
        };
        let mut talk = Conversation {
            io: BufReader::new(Box::new(socket)),
            timeout,
            extensions: Extensions::default(),
        };
        let ehlo = format!("EHLO {}", self.config.hostname);
        let plain = async {
            let (greeting, _) = talk.reply().await?;
            if greeting.code != 220 {
                return Ok(Err(format!("greeting {}", greeting.line())));
            }
            let (reply, lines) = talk.command(&ehlo).await?;
            if reply.code != 250 {
                return Ok(Err(format!("EHLO: {}", reply.line())));
            }
            talk.extensions = Extensions::of_ehlo(&lines);
            let starttls = lines.iter().any(|l| {
                l.get(4..)
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("STARTTLS"))
            });
            if !starttls {
                // Plaintext only for a notice, and only where no TLS is offered at all.
                if opportunistic {
                    return Ok(Ok(false));
                }
                return Ok(Err("STARTTLS not offered".to_string()));
            }
            let (reply, _) = talk.command("STARTTLS").await?;
            if reply.code != 220 {
                return Ok(Err(format!("STARTTLS refused: {}", reply.line())));
            }
            Ok::<_, std::io::Error>(Ok(true))
        };
        match plain.await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                let outcome = match self
                    .transaction(&mut talk, false, &ehlo, entry, recipients, raw)
                    .await
                {
                    Ok(replies) => HostOutcome::Replies {
                        replies,
                        tls: "plaintext: the server offers no STARTTLS".into(),
                    },
                    Err(error) => HostOutcome::Unreachable(error.to_string()),
                };
                // Plaintext sessions (notices only) are never kept.
                let _ = talk.send("QUIT").await;
                return outcome;
            }
            Ok(Err(why)) => {
                let _ = talk.send("QUIT").await;
                return HostOutcome::NoVerifiedTls(why);
            }
            Err(error) => return HostOutcome::Unreachable(error.to_string()),
        }
        let Ok(server_name) = rustls::pki_types::ServerName::try_from(host.to_string()) else {
            return HostOutcome::NoVerifiedTls(format!(
                "{host} is not a name a certificate can have"
            ));
        };
        let plain_stream = talk.io.into_inner();
        let (connector, dane) = match check {
            TlsCheck::Dane(records) => match self.dane_connector(records) {
                Ok(pair) => pair,
                Err(error) => return HostOutcome::NoVerifiedTls(format!("TLS: {error}")),
            },
            TlsCheck::Pkix => (self.tls.clone(), None),
            TlsCheck::Opportunistic => match any_certificate(self.provider.clone()) {
                Ok(connector) => (connector, None),
                Err(error) => return HostOutcome::NoVerifiedTls(format!("TLS: {error}")),
            },
        };
        let secured =
            match tokio::time::timeout(timeout, connector.connect(server_name, plain_stream)).await
            {
                Ok(Ok(secured)) => secured,
                Ok(Err(error)) => return HostOutcome::NoVerifiedTls(format!("TLS: {error}")),
                Err(_) => return HostOutcome::Unreachable("TLS handshake timed out".into()),
            };
        let tls = {
            let (_, connection) = secured.get_ref();
            let version = connection
                .protocol_version()
                .map_or_else(|| "TLS".into(), |v| format!("{v:?}"));
            let cipher = connection
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite()));
            match dane.and_then(|verifier| verifier.matched()) {
                Some(record) => format!("{version} {cipher}, certificate matched {record}"),
                None if opportunistic => {
                    format!("STARTTLS {version} {cipher}, certificate not verified")
                }
                None => format!("{version} {cipher}"),
            }
        };
        // What the server offers is asked again under TLS (the EHLO in `transaction`).
        let mut talk = Conversation {
            io: BufReader::new(Box::new(secured)),
            timeout,
            extensions: Extensions::default(),
        };
        let result = self.transaction(&mut talk, true, &ehlo, entry, recipients, raw);
        match result.await {
            Ok(replies) => {
                debug!("delivery conversation done");
                // A session whose certificate was not checked is never kept: the next message
                // to this server may need a verified one.
                if opportunistic {
                    let _ = talk.send("QUIT").await;
                } else {
                    self.keep_idle(key, talk, tls.clone()).await;
                }
                HostOutcome::Replies { replies, tls }
            }
            Err(error) => HostOutcome::Unreachable(format!("after TLS: {error}")),
        }
    }
}

/// What a connection's TLS must prove.
#[derive(Clone, Copy, Debug)]
enum TlsCheck<'a> {
    /// A certificate the CAs vouch for, for the host's name.
    Pkix,
    /// A certificate one of these DNSSEC-signed TLSA records names.
    Dane(&'a [crate::dane::Tlsa]),
    /// For a pickup notice that could not have verified TLS: STARTTLS whenever offered, its
    /// certificate unchecked (a passive listener then sees nothing); plaintext only when the
    /// server offers no STARTTLS.
    Opportunistic,
}

/// A TLS client that takes any certificate (the handshake's signatures are still checked):
/// only for pickup notices, which hold no patient information, against passive listeners.
fn any_certificate(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What delivering to one domain gave.
enum DomainOutcome {
    Replies {
        replies: Vec<Reply>,
        tls: String,
        host: String,
    },
    NoVerifiedTls(String),
    Unreachable(String),
}

fn deferred(
    actor: &Actor,
    entry: &QueuedMessage,
    address: &str,
    why: String,
) -> (RecipientState, AuditEvent) {
    (
        RecipientState {
            status: RecipientStatus::Pending,
            last_reply: Some(why.clone()),
        },
        AuditEvent::new(actor, "queue.defer", format!("to {address}"))
            .detail(format!("queue {}; {why}", entry.id)),
    )
}

/// A delivery status report into the sending account's INBOX and BACKUP, audited.
fn deliver_report(
    store: &Store,
    account: sealpost_storage::AccountId,
    report: &[u8],
    actor: &Actor,
    detail: String,
) -> Result<(), sealpost_storage::Error> {
    let index = sealpost_mime::Indexed::of(report);
    let (summary, search_text) = (index.summary_bytes(), index.search_bytes());
    let message = sealpost_storage::NewMessage {
        raw: report,
        flags: sealpost_storage::Flags::new(),
        internal_date: sealpost_storage::InternalDate::now(),
        summary: &summary,
        search_text: &search_text,
    };
    // A bounce reaches a full mailbox too: the sender must hear that mail did not go.
    let target = sealpost_storage::DeliveryTarget {
        account,
        placement: sealpost_storage::Placement::Notice,
        outbound: None,
    };
    let events = |_: &[sealpost_storage::Delivered]| {
        vec![
            AuditEvent::new(actor, "queue.bounce", format!("account:{}", account.0))
                .detail(detail.clone()),
        ]
    };
    store.deliver_all(&[target], &message, &events)?;
    Ok(())
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_dot_stuffed_and_terminated() {
        assert_eq!(dot_stuffed(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuffed(b"no newline"), b"no newline\r\n.\r\n");
    }

    /// What goes on the wire for a message with a smuggling payload: only CRLF line ends, and
    /// the one line that is a lone dot is the end.
    #[test]
    fn smuggling_payloads_leave_one_end_of_data_on_the_wire() {
        for payload in [
            "\n.\n", "\r.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r\n.\n", "\r.\r",
        ] {
            let raw = format!("Subject: x\r\n\r\nfirst{payload}MAIL FROM:<a@b.example>\r\nRCPT TO:<spy@b.example>\r\n");
            let wire = dot_stuffed(&crate::headers::with_crlf_line_ends(raw.into_bytes()));
            let text = String::from_utf8(wire).unwrap();
            let lines: Vec<&str> = text.split("\r\n").collect();
            assert!(
                !text.replace("\r\n", "").contains(['\r', '\n']),
                "{payload:?}: {text:?}"
            );
            assert_eq!(
                lines.iter().filter(|l| **l == ".").count(),
                1,
                "{payload:?}: {text:?}"
            );
            assert!(text.ends_with("\r\n.\r\n"), "{payload:?}: {text:?}");
        }
    }

    #[test]
    fn xtext_round_trips_through_the_parser_and_never_breaks_a_line() {
        let all_ascii: String = (1u8..=127).map(char::from).collect();
        let mut values: Vec<String> = vec![
            "QQ314159".into(),
            "a+b=c".into(),
            "x\r\nRCPT TO:<spy@evil.example>".into(),
            " leading and trailing ".into(),
        ];
        // smtp-proto takes ENVID values of at most 100 characters.
        values.extend(
            all_ascii
                .as_bytes()
                .chunks(40)
                .map(|c| String::from_utf8(c.to_vec()).unwrap()),
        );
        for value in values {
            let encoded = xtext(&value);
            assert!(
                encoded.bytes().all(|b| b.is_ascii_graphic() && b != b'='),
                "{value:?} -> {encoded:?}"
            );
            let line = format!("MAIL FROM:<a@b.example> ENVID={encoded}\r\n");
            match smtp_proto::Request::parse(&mut line.as_bytes().iter()) {
                Ok(smtp_proto::Request::Mail { from }) => {
                    assert_eq!(from.env_id.as_deref(), Some(value.as_str()), "{encoded}")
                }
                other => panic!("{value:?} -> {encoded:?}: {other:?}"),
            }
        }
        assert_eq!(xtext("x\r\nRCPT TO:<s@e>"), "x+0D+0ARCPT+20TO:<s@e>");
    }

    #[test]
    fn dsn_parameters_are_written_encoded_and_only_where_offered() {
        let envelope = Envelope {
            from: "doc@clinic.example".into(),
            recipients: vec![],
            env_id: Some("x\r\nRCPT TO:<spy@evil.example>".into()),
            ret: Some("HDRS".into()),
            notice: false,
        };
        let recipient = OutboundRecipient {
            address: "pat@example.org".into(),
            notify: vec!["SUCCESS".into(), "FAILURE".into(), "BOGUS\r\n".into()],
            orcpt: Some("rfc822;pat+x\r\nDATA@example.org".into()),
            portal: None,
        };
        let all = Extensions {
            size: true,
            dsn: true,
            eight_bit_mime: true,
            smtputf8: true,
        };
        let ascii = Needs::default();
        assert_eq!(
            mail_command(&envelope, 42, all, ascii),
            "MAIL FROM:<doc@clinic.example> SIZE=42 RET=HDRS ENVID=x+0D+0ARCPT+20TO:<spy@evil.example>"
        );
        assert_eq!(
            rcpt_command(&recipient, all),
            "RCPT TO:<pat@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;pat+2Bx+0D+0ADATA@example.org"
        );
        let none = Extensions::default();
        assert_eq!(
            mail_command(&envelope, 42, none, ascii),
            "MAIL FROM:<doc@clinic.example>"
        );
        assert_eq!(rcpt_command(&recipient, none), "RCPT TO:<pat@example.org>");
        let odd = Envelope {
            ret: Some("FULL\r\nRSET".into()),
            env_id: None,
            ..envelope
        };
        assert_eq!(
            mail_command(&odd, 1, all, ascii),
            "MAIL FROM:<doc@clinic.example> SIZE=1"
        );
        let never = OutboundRecipient {
            notify: vec!["FAILURE".into(), "NEVER".into()],
            orcpt: Some("x400;whatever".into()),
            ..recipient
        };
        assert_eq!(
            rcpt_command(&never, all),
            "RCPT TO:<pat@example.org> NOTIFY=NEVER"
        );
    }

    #[test]
    fn extensions_are_read_from_the_ehlo_reply() {
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Extensions::of_ehlo(&lines(&[
                "250-mx greets",
                "250-SIZE 1000",
                "250-PIPELINING",
                "250 dsn"
            ])),
            Extensions {
                size: true,
                dsn: true,
                ..Extensions::default()
            }
        );
        assert_eq!(
            Extensions::of_ehlo(&lines(&[
                "250-DSN.example greets",
                "250-DSNX",
                "250 8BITMIME"
            ])),
            Extensions {
                eight_bit_mime: true,
                ..Extensions::default()
            }
        );
        assert_eq!(
            Extensions::of_ehlo(&lines(&["250-mx greets", "250-8bitmime", "250 SMTPUTF8"])),
            Extensions {
                eight_bit_mime: true,
                smtputf8: true,
                ..Extensions::default()
            }
        );
    }

    #[test]
    fn eight_bit_and_utf8_messages_say_so_and_go_only_where_taken() {
        let recipient = |address: &str| OutboundRecipient {
            address: address.into(),
            ..OutboundRecipient::default()
        };
        let envelope = Envelope {
            from: "doc@clinic.example".into(),
            recipients: vec![],
            env_id: None,
            ret: None,
            notice: false,
        };
        let ascii = Needs::of(
            "doc@clinic.example",
            &[recipient("pat@example.org")],
            b"Subject: hi\r\n\r\nhello\r\n",
        );
        assert_eq!(ascii, Needs::default());
        let latin = "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nGr\u{fc}\u{df}e\r\n".as_bytes();
        let eight_bit = Needs::of("doc@clinic.example", &[recipient("pat@example.org")], latin);
        assert_eq!((eight_bit.eight_bit, eight_bit.utf8), (true, false));
        let header = Needs::of(
            "doc@clinic.example",
            &[],
            "Subject: Grüße\r\n\r\nx\r\n".as_bytes(),
        );
        assert_eq!((header.eight_bit, header.utf8), (true, true));
        let address = Needs::of(
            "doc@clinic.example",
            &[recipient("jos\u{e9}@example.org")],
            b"x\r\n\r\ny\r\n",
        );
        assert_eq!((address.eight_bit, address.utf8), (false, true));
        let all = Extensions {
            size: false,
            dsn: false,
            eight_bit_mime: true,
            smtputf8: true,
        };
        assert_eq!(
            mail_command(&envelope, 9, all, header),
            "MAIL FROM:<doc@clinic.example> BODY=8BITMIME SMTPUTF8"
        );
        assert!(header.refused_by(all).is_none());
        let old = Extensions::default();
        assert!(ascii.refused_by(old).is_none());
        assert!(eight_bit
            .refused_by(old)
            .unwrap()
            .text
            .starts_with("5.6.3 "));
        assert!(address
            .refused_by(Extensions {
                eight_bit_mime: true,
                ..old
            })
            .unwrap()
            .text
            .starts_with("5.6.7 "));
    }
}
