//! One SMTP connection: greeting, command loop with PIPELINING, STARTTLS, AUTH, the mail
//! transaction (MAIL, RCPT, DATA or BDAT), and delivery into the store.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sealpost_auth::{LoginOutcome, LoginRefusal, Protocol};
use sealpost_net::BoxedStream;
use sealpost_storage::{Account, Actor, AuditEvent, AuditOutcome, OutboundRecipient, Store};
use serde::{Deserialize, Serialize};
use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::headers;
use crate::shared::SmtpShared;
use crate::submit::{Accept, Recipient, Refused};

/// Characters of an unsupported parameter repeated in the reply.
const ECHOED_PARAMETER_CHARS_MAX: usize = 32;
/// The most of a BDAT chunk's announced size reserved before its bytes arrive, in bytes.
const BDAT_RESERVE_BYTES_MAX: usize = 1 << 20;

/// Bytes read from the client at a time.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Bounds and settings of SMTP sessions, each named with its unit: `sealpost.toml`'s
/// `[smtp]` section, as it is written there. The host name is `[server]`'s and the largest
/// message the store's (`[limits]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// The server's name in the greeting, EHLO and Received.
    #[serde(skip)]
    pub hostname: String,
    /// Largest message, in bytes (SIZE, and enforced while reading DATA and BDAT).
    #[serde(skip)]
    pub message_bytes_max: u64,
    /// Recipients one message may have.
    pub recipients_per_message_max: usize,
    /// Longest command line, CRLF included, in bytes.
    pub line_bytes_max: usize,
    /// Error replies one session may cause before it is closed.
    pub errors_per_session_max: u32,
    /// Messages one authenticated account may submit per hour.
    pub messages_per_hour_per_account_max: u32,
    /// A client silent this long is disconnected (RFC 5321 suggests 5 minutes), in ms.
    pub command_timeout_ms: u64,
    /// Failed AUTH attempts one connection may make before it is closed.
    pub auth_failures_per_connection_max: u32,
    /// Until a client has authenticated or sent MAIL, each command line must arrive whole
    /// within this long, or the connection is closed (421): trickling bytes is not progress.
    /// In milliseconds.
    pub prelogin_idle_ms_max: u64,
    /// DNS servers for SPF, DKIM, DMARC, MX, MTA-STS and DANE lookups (`"192.0.2.53:53"`);
    /// empty: the system's (/etc/resolv.conf).
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Refuse inbound mail that fails DMARC when its domain publishes p=reject.
    pub reject_dmarc_reject: bool,
    /// Connections each SMTP listener holds open at once; past it, `421 4.7.0` (the server's
    /// listener enforces it).
    pub connections_max: usize,
    /// Connections one client address may hold open on one SMTP listener.
    pub connections_per_address_max: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            message_bytes_max: 64 * 1024 * 1024,
            recipients_per_message_max: 100,
            line_bytes_max: 4096,
            errors_per_session_max: 10,
            messages_per_hour_per_account_max: 500,
            command_timeout_ms: 5 * 60 * 1000,
            auth_failures_per_connection_max: 3,
            prelogin_idle_ms_max: 60_000,
            dns_servers: Vec::new(),
            reject_dmarc_reject: true,
            connections_max: 1_000,
            connections_per_address_max: 50,
        }
    }
}

impl SmtpConfig {
    /// Refuses settings no server should run with; keys as written in `[smtp]`.
    pub fn check(&self) -> Result<(), sealpost_types::InvalidSetting> {
        use sealpost_types::at_least;
        // RFC 5321 4.5.3.1.4: a command line of 512 octets must be taken.
        at_least("line_bytes_max", self.line_bytes_max as u64, 512)?;
        at_least(
            "recipients_per_message_max",
            self.recipients_per_message_max as u64,
            1,
        )?;
        at_least(
            "errors_per_session_max",
            self.errors_per_session_max.into(),
            1,
        )?;
        at_least(
            "auth_failures_per_connection_max",
            self.auth_failures_per_connection_max.into(),
            1,
        )?;
        at_least("command_timeout_ms", self.command_timeout_ms, 10_000)?;
        at_least("prelogin_idle_ms_max", self.prelogin_idle_ms_max, 100)?;
        at_least("connections_max", self.connections_max as u64, 1)?;
        at_least(
            "connections_per_address_max",
            self.connections_per_address_max as u64,
            1,
        )
    }
}

/// Which service a listener offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerRole {
    /// Port 25: mail for local recipients from anyone; no AUTH, no relaying.
    Inbound,
    /// Ports 587 and 465: authenticated accounts send to anyone; AUTH only over TLS.
    Submission,
}

pub use sealpost_net::{TlsDescription, TlsUpgrade};

/// What the server knows about one connection.
pub struct SmtpConnection {
    /// The client's IP address.
    pub peer_ip: String,
    /// The TLS version and cipher when the stream is already encrypted (port 465).
    pub tls: Option<TlsDescription>,
    /// How to start TLS; `None` where STARTTLS is not offered.
    pub starttls: Option<TlsUpgrade>,
    pub role: ListenerRole,
    pub shared: Arc<SmtpShared>,
}

#[derive(Default)]
struct Transaction {
    from: Option<String>,
    env_id: Option<String>,
    ret: Option<String>,
    recipients: Vec<Recipient>,
    /// BDAT chunks received so far.
    chunks: Vec<u8>,
    /// A BDAT chunk or DATA went over the size limit: the rest is read and dropped.
    oversized: bool,
}

/// Why the loop stops.
enum Flow {
    Continue,
    Close,
}

struct Session {
    stream: Option<BoxedStream>,
    input: Vec<u8>,
    read_buffer: Vec<u8>,
    out: Vec<u8>,
    store: Store,
    config: Arc<SmtpConfig>,
    connection: SmtpConnection,
    helo: Option<String>,
    esmtp: bool,
    account: Option<Account>,
    transaction: Transaction,
    errors: u32,
    auth_failures: u32,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Runs one SMTP session to its end: QUIT, the client closing, a timeout, too many errors,
/// or `shutdown`.
pub async fn serve_session(
    stream: BoxedStream,
    store: Store,
    config: Arc<SmtpConfig>,
    connection: SmtpConnection,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut session = Session {
        stream: Some(stream),
        input: Vec::new(),
        read_buffer: vec![0u8; READ_BUFFER_BYTES],
        out: Vec::new(),
        store,
        config,
        connection,
        helo: None,
        esmtp: false,
        account: None,
        transaction: Transaction::default(),
        errors: 0,
        auth_failures: 0,
        shutdown,
    };
    if let Err(error) = session.run().await {
        debug!(%error, "smtp session ended with an I/O error");
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// What reading one line gave.
enum Line {
    Complete(Vec<u8>),
    TooLong,
    Closed,
}

impl Session {
    async fn run(&mut self) -> std::io::Result<()> {
        let greeting = format!("220 {} ESMTP Sealpost ready", self.config.hostname);
        self.reply(&greeting);
        self.flush().await?;
        loop {
            let line = match self.read_line().await? {
                Some(Line::Complete(line)) => line,
                Some(Line::TooLong) => {
                    self.reply("500 5.5.2 line too long");
                    if let Flow::Close = self.count_error() {
                        break;
                    }
                    continue;
                }
                Some(Line::Closed) | None => break,
            };
            if let Flow::Close = self.command(&line).await? {
                break;
            }
        }
        self.flush().await?;
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.shutdown().await;
        }
        Ok(())
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        // A client that stops reading its replies holds the connection no longer than a
        // command may take to arrive (before AUTH or MAIL, prelogin_idle_ms_max): the write is
        // given up and the session ends, instead of waiting in write_all for ever.
        let limit = Duration::from_millis(
            if self.account.is_none() && self.transaction.from.is_none() {
                self.config.prelogin_idle_ms_max
            } else {
                self.config.command_timeout_ms
            },
        );
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let written = tokio::time::timeout(limit, async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not read its replies in time",
                ))
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Counts an error reply; past the limit the session says so and ends.
    fn count_error(&mut self) -> Flow {
        self.errors += 1;
        if self.errors >= self.config.errors_per_session_max {
            self.reply("421 4.7.0 too many errors; closing the connection");
            return Flow::Close;
        }
        Flow::Continue
    }

    fn error(&mut self, line: &str) -> Flow {
        self.reply(line);
        self.count_error()
    }

    /// Reads more input: flushes replies first when nothing complete is buffered
    /// (PIPELINING: a group of commands gets its replies together). `None` on timeout or
    /// shutdown, after telling the client.
    async fn fill(&mut self) -> std::io::Result<Option<usize>> {
        self.fill_until(None).await
    }

    /// `fill`, and before `deadline` (the pre-login bound on a whole line) if one is given.
    async fn fill_until(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> std::io::Result<Option<usize>> {
        self.flush().await?;
        let idle = Duration::from_millis(self.config.command_timeout_ms);
        let timeout = match deadline {
            Some(deadline) => {
                idle.min(deadline.saturating_duration_since(std::time::Instant::now()))
            }
            None => idle,
        };
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Some(0));
        };
        let read = stream.read(&mut self.read_buffer);
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            result = tokio::time::timeout(timeout, read) => match result {
                Ok(Ok(n)) => {
                    self.input.extend_from_slice(&self.read_buffer[..n]);
                    Ok(Some(n))
                }
                Ok(Err(error)) => Err(error),
                Err(_) if deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline) => {
                    let limit = self.config.prelogin_idle_ms_max;
                    self.reply(&format!(
                        "421 4.4.2 no complete command within {limit} ms before AUTH or MAIL; closing the connection"
                    ));
                    Ok(None)
                }
                Err(_) => {
                    self.reply("421 4.4.2 idle too long; closing the connection");
                    Ok(None)
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => {
                self.reply("421 4.3.2 the server is shutting down");
                Ok(None)
            }
        }
    }

    /// One line, CRLF (or LF) included; lines past line_bytes_max are skipped to their end.
    async fn read_line(&mut self) -> std::io::Result<Option<Line>> {
        let max = self.config.line_bytes_max;
        let mut skipping = false;
        // A client that has neither authenticated nor begun a transaction gets one deadline
        // for the whole line from its first byte: a stranger who trickles bytes holds the
        // connection no longer. Between commands it may wait command_timeout_ms (five
        // minutes, as RFC 5321 section 4.5.3.2.7 asks of a server).
        let prelogin = self.account.is_none() && self.transaction.from.is_none();
        let mut deadline = None;
        loop {
            if prelogin && deadline.is_none() && !self.input.is_empty() {
                deadline = Some(
                    std::time::Instant::now()
                        + Duration::from_millis(self.config.prelogin_idle_ms_max),
                );
            }
            if let Some(at) = self.input.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.input.drain(..=at).collect();
                if skipping || line.len() > max {
                    return Ok(Some(Line::TooLong));
                }
                return Ok(Some(Line::Complete(line)));
            }
            if self.input.len() > max {
                self.input.clear();
                skipping = true;
            }
            match self.fill_until(deadline).await? {
                None => return Ok(None),
                Some(0) => return Ok(Some(Line::Closed)),
                Some(_) => {}
            }
        }
    }

    fn tls_active(&self) -> bool {
        self.connection.tls.is_some()
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(error) => {
                let reply = match error {
                    ProtoError::UnknownCommand => "500 5.5.1 unknown command".to_string(),
                    ProtoError::InvalidSenderAddress => {
                        "501 5.1.7 bad sender address syntax".to_string()
                    }
                    ProtoError::InvalidRecipientAddress => {
                        "501 5.1.3 bad recipient address syntax".to_string()
                    }
                    ProtoError::SyntaxError { syntax } => format!("501 5.5.4 syntax: {syntax}"),
                    ProtoError::InvalidParameter { param } => {
                        format!("501 5.5.4 invalid parameter {param}")
                    }
                    ProtoError::UnsupportedParameter { param } => {
                        // Echoed back shortened: a reply line stays short whatever was sent.
                        let param: String = param
                            .chars()
                            .filter(|c| c.is_ascii_graphic())
                            .take(ECHOED_PARAMETER_CHARS_MAX)
                            .collect();
                        format!("555 5.5.4 unsupported parameter {param}")
                    }
                    _ => "500 5.5.2 syntax error".to_string(),
                };
                return Ok(self.error(&reply));
            }
        };
        match request {
            Request::Ehlo { host } => Ok(self.ehlo(host, true)),
            Request::Helo { host } => Ok(self.ehlo(host, false)),
            Request::Lhlo { .. } => Ok(self.error("500 5.5.1 LHLO is for LMTP")),
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Request::Mail { from } => Ok(self.mail(from).await),
            Request::Rcpt { to } => Ok(self.rcpt(to).await),
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.transaction = Transaction::default();
                self.reply("250 2.0.0 reset");
                Ok(Flow::Continue)
            }
            Request::Noop { .. } => {
                self.reply("250 2.0.0 ok");
                Ok(Flow::Continue)
            }
            Request::Quit => {
                self.reply("221 2.0.0 bye");
                Ok(Flow::Close)
            }
            // Whether an address exists is not told to strangers.
            Request::Vrfy { .. } => {
                self.reply("252 2.5.0 cannot verify; send the message and see");
                Ok(Flow::Continue)
            }
            Request::Expn { .. } => Ok(self.error("502 5.5.1 EXPN is not offered")),
            Request::Help { .. } => {
                self.reply("214 2.0.0 see RFC 5321");
                Ok(Flow::Continue)
            }
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Ok(self.error("502 5.5.1 command not implemented"))
            }
        }
    }

    fn ehlo(&mut self, host: String, esmtp: bool) -> Flow {
        self.transaction = Transaction::default();
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(headers::HEADER_TEXT_BYTES_MAX)
            .collect();
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        let name = self.config.hostname.clone();
        if !esmtp {
            self.reply(&format!("250 {name} greets {host}"));
            return Flow::Continue;
        }
        let mut lines = vec![
            format!("{name} greets {host}"),
            "PIPELINING".to_string(),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            format!("SIZE {}", self.config.message_bytes_max),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ];
        if !self.tls_active() && self.connection.starttls.is_some() {
            lines.push("STARTTLS".to_string());
        }
        if self.connection.role == ListenerRole::Submission
            && self.tls_active()
            && self.account.is_none()
        {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
        Flow::Continue
    }

    async fn starttls(&mut self) -> std::io::Result<Flow> {
        if self.tls_active() {
            return Ok(self.error("503 5.5.1 TLS is already active"));
        }
        let Some(upgrade) = self.connection.starttls.clone() else {
            return Ok(self.error("502 5.5.1 STARTTLS is not offered here"));
        };
        self.reply("220 2.0.0 ready to start TLS");
        self.flush().await?;
        // Anything the client sent after STARTTLS in the clear must not be taken as sent
        // under TLS (the command injection of CVE-2011-0411).
        self.input.clear();
        let Some(stream) = self.stream.take() else {
            return Ok(Flow::Close);
        };
        match upgrade(stream).await {
            Ok((stream, description)) => {
                self.stream = Some(stream);
                self.connection.tls = Some(description);
                self.helo = None;
                self.esmtp = false;
                self.transaction = Transaction::default();
                Ok(Flow::Continue)
            }
            Err(error) => {
                debug!(%error, "STARTTLS handshake failed");
                Ok(Flow::Close)
            }
        }
    }

    /// Reads one line of an AUTH exchange; `None` when the client went away.
    async fn auth_line(&mut self, challenge: &str) -> std::io::Result<Option<Vec<u8>>> {
        self.reply(&format!("334 {challenge}"));
        match self.read_line().await? {
            Some(Line::Complete(line)) => {
                let trimmed = line
                    .strip_suffix(b"\r\n")
                    .or_else(|| line.strip_suffix(b"\n"))
                    .unwrap_or(&line);
                Ok(Some(trimmed.to_vec()))
            }
            Some(Line::TooLong) => Ok(Some(b"\x00too long".to_vec())),
            Some(Line::Closed) | None => Ok(None),
        }
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> std::io::Result<Flow> {
        if self.connection.role != ListenerRole::Submission {
            return Ok(self.error("503 5.5.1 AUTH is offered only on the submission ports"));
        }
        if !self.tls_active() {
            return Ok(self.error("530 5.7.0 must issue a STARTTLS command first"));
        }
        if self.helo.is_none() {
            return Ok(self.error("503 5.5.1 send EHLO first"));
        }
        if self.account.is_some() {
            return Ok(self.error("503 5.5.1 already authenticated"));
        }
        if self.transaction.from.is_some() {
            return Ok(self.error("503 5.5.1 AUTH is not allowed during a mail transaction"));
        }
        let decode = |bytes: &[u8]| -> Option<Vec<u8>> {
            if bytes == b"=" {
                return Some(Vec::new());
            }
            base64::engine::general_purpose::STANDARD.decode(bytes).ok()
        };
        let (user, password) = if mechanism == smtp_proto::AUTH_PLAIN {
            let encoded = if initial.is_empty() {
                match self.auth_line("").await? {
                    Some(line) => line,
                    None => return Ok(Flow::Close),
                }
            } else {
                initial.into_bytes()
            };
            if encoded == b"*" {
                return Ok(self.error("501 5.0.0 authentication cancelled"));
            }
            let Some(decoded) = decode(&encoded) else {
                return Ok(self.error("501 5.5.2 the response is not base64"));
            };
            let mut parts = decoded.split(|&b| b == 0);
            let (Some(authzid), Some(user), Some(password), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Ok(
                    self.error("501 5.5.2 a PLAIN response is authzid NUL user NUL password")
                );
            };
            if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(user) {
                return Ok(self.error("535 5.7.8 acting as another user is not allowed"));
            }
            (user.to_vec(), password.to_vec())
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user = if initial.is_empty() {
                match self.auth_line("VXNlcm5hbWU6").await? {
                    Some(line) => line,
                    None => return Ok(Flow::Close),
                }
            } else {
                initial.into_bytes()
            };
            if user == b"*" {
                return Ok(self.error("501 5.0.0 authentication cancelled"));
            }
            let Some(user) = decode(&user) else {
                return Ok(self.error("501 5.5.2 the response is not base64"));
            };
            let password = match self.auth_line("UGFzc3dvcmQ6").await? {
                Some(line) => line,
                None => return Ok(Flow::Close),
            };
            if password == b"*" {
                return Ok(self.error("501 5.0.0 authentication cancelled"));
            }
            let Some(password) = decode(&password) else {
                return Ok(self.error("501 5.5.2 the response is not base64"));
            };
            (user, password)
        } else {
            return Ok(self.error("504 5.5.4 only AUTH PLAIN and LOGIN are offered"));
        };
        let (Ok(user), Ok(password)) = (String::from_utf8(user), String::from_utf8(password))
        else {
            return Ok(self.error("501 5.5.2 the credentials are not UTF-8"));
        };
        self.check_credentials(&user, &password).await
    }

    async fn check_credentials(&mut self, user: &str, password: &str) -> std::io::Result<Flow> {
        let (store, logins) = (self.store.clone(), self.connection.shared.logins.clone());
        let (user, password, peer) = (
            user.to_string(),
            password.to_string(),
            self.connection.peer_ip.clone(),
        );
        // The gate checks, counts and audits; SMTP adds no admission of its own.
        let outcome = blocking(move || {
            logins.attempt(
                &store,
                &peer,
                &user,
                &password,
                Protocol::Smtp,
                |_| Some(()),
            )
        })
        .await;
        let (reason, pause) = match outcome {
            LoginOutcome::Accepted { account, .. } => {
                info!("smtp login");
                self.account = Some(account);
                self.reply("235 2.7.0 authentication successful");
                return Ok(Flow::Continue);
            }
            LoginOutcome::Refused { reason, pause } => (reason, pause),
        };
        // A pause that doubles with each wrong guess makes guessing slow.
        tokio::time::sleep(pause).await;
        self.auth_failures += 1;
        self.reply(login_refusal_reply(reason));
        if self.auth_failures >= self.config.auth_failures_per_connection_max {
            self.reply("421 4.7.0 too many failed logins; closing the connection");
            return Ok(Flow::Close);
        }
        Ok(self.count_error())
    }

    async fn audit(&self, event: AuditEvent) {
        let store = self.store.clone();
        if let Err(error) = blocking(move || store.audit(event)).await {
            warn!(%error, "audit write failed");
        }
    }

    fn actor(&self) -> Actor {
        Actor {
            name: self
                .account
                .as_ref()
                .map_or_else(|| "smtp".to_string(), |a| a.address.clone()),
            peer: self.connection.peer_ip.clone(),
        }
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Flow {
        if self.helo.is_none() {
            return self.error("503 5.5.1 send EHLO first");
        }
        if self.connection.role == ListenerRole::Submission && self.account.is_none() {
            return self.error("530 5.7.0 authentication required");
        }
        if self.transaction.from.is_some() {
            return self.error("503 5.5.1 a mail transaction is already open");
        }
        if from.size as u64 > self.config.message_bytes_max {
            return self.error(&format!(
                "552 5.3.4 the message is larger than the {} bytes accepted",
                self.config.message_bytes_max
            ));
        }
        let address = if from.address.is_empty() {
            String::new()
        } else {
            match crate::submit::normalize_address(&from.address) {
                Some(address) => address,
                None => return self.error("501 5.1.7 bad sender address"),
            }
        };
        // smtp-proto hands ENVID over decoded from xtext: a CR LF in it would be a command of
        // its own on the next server's wire. It is relayed encoded; what is kept is what RFC
        // 3461 §4.4 allows (and no space).
        if from
            .env_id
            .as_deref()
            .is_some_and(|id| !crate::submit::dsn_text_ok(id))
        {
            return self
                .error("501 5.5.4 ENVID must be printable US-ASCII without spaces or control characters (RFC 3461)");
        }
        if let Some(account) = &self.account {
            if address.is_empty()
                || !self
                    .connection
                    .shared
                    .aliases()
                    .may_send_as(&account.address, &address)
            {
                return self.error("553 5.7.1 you may send only as your own address");
            }
            let max = self.config.messages_per_hour_per_account_max;
            if !self.connection.shared.may_submit(account.id, max) {
                self.reply(&format!(
                    "450 4.7.1 this account sent {max} messages in the last hour; try later"
                ));
                return Flow::Continue;
            }
        }
        self.transaction = Transaction {
            from: Some(address),
            env_id: from.env_id,
            ret: if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
                Some("FULL".into())
            } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
                Some("HDRS".into())
            } else {
                None
            },
            ..Transaction::default()
        };
        self.reply("250 2.1.0 sender ok");
        Flow::Continue
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Flow {
        if self.transaction.from.is_none() {
            return self.error("503 5.5.1 send MAIL first");
        }
        if self.transaction.recipients.len() >= self.config.recipients_per_message_max {
            self.reply(&format!(
                "452 4.5.3 at most {} recipients per message",
                self.config.recipients_per_message_max
            ));
            return Flow::Continue;
        }
        let Some(address) = crate::submit::normalize_address(&to.address) else {
            return self.error("501 5.1.3 bad recipient address");
        };
        // As ENVID: ORCPT's address arrives decoded, and is relayed encoded.
        if to
            .orcpt
            .as_deref()
            .is_some_and(|o| !crate::submit::dsn_text_ok(o))
        {
            return self
                .error("501 5.5.4 ORCPT must be printable US-ASCII without spaces or control characters (RFC 3461)");
        }
        // NEVER stands alone (RFC 3461 section 4.1: "NEVER" / 1#notify-list-element).
        let never = to.flags & smtp_proto::RCPT_NOTIFY_NEVER != 0;
        let others = smtp_proto::RCPT_NOTIFY_SUCCESS
            | smtp_proto::RCPT_NOTIFY_FAILURE
            | smtp_proto::RCPT_NOTIFY_DELAY;
        if never && to.flags & others != 0 {
            return self.error("501 5.5.4 NOTIFY=NEVER cannot be combined with SUCCESS, FAILURE or DELAY (RFC 3461)");
        }
        let mut notify = Vec::new();
        for (flag, name) in [
            (smtp_proto::RCPT_NOTIFY_SUCCESS, "SUCCESS"),
            (smtp_proto::RCPT_NOTIFY_FAILURE, "FAILURE"),
            (smtp_proto::RCPT_NOTIFY_DELAY, "DELAY"),
            (smtp_proto::RCPT_NOTIFY_NEVER, "NEVER"),
        ] {
            if to.flags & flag != 0 {
                notify.push(name.to_string());
            }
        }
        let outside = OutboundRecipient {
            address: String::new(),
            notify,
            // smtp-proto gives the address without its type, and takes only rfc822 ones.
            orcpt: to.orcpt.map(|o| format!("rfc822;{o}")),
            portal: None,
        };
        // Port 25 relays for nobody, whoever authenticated (AUTH is not offered there).
        let sender = match self.connection.role {
            ListenerRole::Inbound => None,
            ListenerRole::Submission => self.account.as_ref(),
        };
        match crate::submit::classify_recipient(
            &self.store,
            &self.connection.shared,
            sender,
            address,
            outside,
        )
        .await
        {
            Ok(recipient) => {
                self.transaction.recipients.push(recipient);
                self.reply("250 2.1.5 recipient ok");
                Flow::Continue
            }
            Err(Refused::Error(reply)) => self.error(&reply),
            Err(Refused::Transient(reply)) => {
                self.reply(&reply);
                Flow::Continue
            }
        }
    }

    fn transaction_ready(&mut self) -> Option<&'static str> {
        if self.transaction.from.is_none() {
            return Some("503 5.5.1 send MAIL first");
        }
        if self.transaction.recipients.is_empty() {
            return Some("554 5.5.1 no valid recipients");
        }
        None
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        if !self.transaction.chunks.is_empty() {
            return Ok(self.error("503 5.5.1 DATA cannot follow BDAT"));
        }
        if let Some(reply) = self.transaction_ready() {
            return Ok(self.error(reply));
        }
        self.reply("354 2.0.0 send the message, end with <CRLF>.<CRLF>");
        let max = self.config.message_bytes_max;
        let mut receiver = smtp_proto::request::receiver::DataReceiver::new();
        let mut message = Vec::new();
        let mut oversized = false;
        loop {
            let input = std::mem::take(&mut self.input);
            let mut bytes = input.iter();
            let done = if oversized {
                let mut discard = Vec::new();
                receiver.ingest(&mut bytes, &mut discard)
            } else {
                receiver.ingest(&mut bytes, &mut message)
            };
            self.input = bytes.as_slice().to_vec();
            if message.len() as u64 > max {
                oversized = true;
                message = Vec::new();
            }
            if done {
                break;
            }
            match self.fill().await? {
                // The client went away or fell silent mid-DATA: nothing was acknowledged and
                // nothing is delivered.
                None | Some(0) => return Ok(Flow::Close),
                Some(_) => {}
            }
        }
        if oversized {
            self.transaction = Transaction::default();
            return Ok(self.error(&format!(
                "552 5.3.4 the message is larger than the {max} bytes accepted"
            )));
        }
        self.accept_message(message).await
    }

    async fn bdat(&mut self, size: usize, last: bool) -> std::io::Result<Flow> {
        // The chunk follows the command whatever the answer, so it is read first.
        let max = self.config.message_bytes_max;
        let keep = !self.transaction.oversized
            && (self.transaction.chunks.len() as u64).saturating_add(size as u64) <= max;
        let mut left = size;
        if keep {
            self.transaction
                .chunks
                .reserve(size.min(BDAT_RESERVE_BYTES_MAX));
        }
        loop {
            let take = left.min(self.input.len());
            if keep {
                self.transaction
                    .chunks
                    .extend_from_slice(&self.input[..take]);
            }
            self.input.drain(..take);
            left -= take;
            if left == 0 {
                break;
            }
            match self.fill().await? {
                None | Some(0) => return Ok(Flow::Close),
                Some(_) => {}
            }
        }
        if let Some(reply) = self.transaction_ready() {
            self.transaction.chunks.clear();
            return Ok(self.error(reply));
        }
        if !keep {
            self.transaction.oversized = true;
            self.transaction.chunks = Vec::new();
        }
        if !last {
            if self.transaction.oversized {
                self.reply(&format!(
                    "552 5.3.4 the message is larger than the {max} bytes accepted"
                ));
            } else {
                self.reply(&format!("250 2.0.0 {size} bytes received"));
            }
            return Ok(Flow::Continue);
        }
        if self.transaction.oversized {
            self.transaction = Transaction::default();
            return Ok(self.error(&format!(
                "552 5.3.4 the message is larger than the {max} bytes accepted"
            )));
        }
        let message = std::mem::take(&mut self.transaction.chunks);
        self.accept_message(message).await
    }

    /// The end of DATA or the last BDAT: checks, headers, delivery, and the reply.
    async fn accept_message(&mut self, body: Vec<u8>) -> std::io::Result<Flow> {
        let transaction = std::mem::take(&mut self.transaction);
        let from = transaction.from.clone().unwrap_or_default();
        let id = headers::session_id();
        let submission = self.account.clone();
        // What this server writes first, besides Received: for inbound mail the verdicts (a
        // submission's missing Date and Message-ID are added in `submit::accept`, once its
        // line ends are CRLF). The message is copied once, with every header edit, there.
        let mut prefix = String::new();
        let protocol = match (self.esmtp, self.tls_active(), submission.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, _) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, true, true) => "ESMTPSA",
        };
        let single = match transaction.recipients.as_slice() {
            [Recipient::Local { address, .. }] => Some(address.clone()),
            [Recipient::Outside(r)] => Some(r.address.clone()),
            _ => None,
        };
        let received = headers::received(
            self.helo.as_deref().unwrap_or("unknown"),
            &self.connection.peer_ip,
            &self.config.hostname,
            protocol,
            self.connection.tls.as_deref(),
            &id,
            single.as_deref(),
        );
        // Inbound mail: who sent it, as far as SPF, DKIM and DMARC can tell, read from the
        // message as it came (forged verdicts in our name are dropped when it is kept).
        let mut auth_summary = String::new();
        if submission.is_none() {
            if let Some(auth) = &self.connection.shared.inbound_auth {
                let peer = self
                    .connection
                    .peer_ip
                    .parse()
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                let helo = self.helo.clone().unwrap_or_default();
                let verdict = auth.check(&body, peer, &helo, &from).await;
                if let Some(refusal) = verdict.refusal {
                    let actor = self.actor();
                    let event = AuditEvent::new(&actor, "message.refuse", format!("from <{from}>"))
                        .outcome(AuditOutcome::Denied)
                        .detail(verdict.summary.clone());
                    self.audit(event).await;
                    return Ok(self.error(&refusal));
                }
                prefix.push_str(&verdict.header);
                auth_summary = verdict.summary;
            }
        }
        // Inbound mail is scored; where it goes follows from the score.
        let mut placement = crate::spam::Placement::Inbox;
        let mut spam_verdict = String::new();
        if submission.is_none() {
            if let Some(spam) = self.connection.shared.spam().filter(|s| s.enabled()) {
                let recipients: Vec<String> = transaction
                    .recipients
                    .iter()
                    .map(|r| match r {
                        Recipient::Local { address, .. } => address.clone(),
                        Recipient::Outside(r) => r.address.clone(),
                    })
                    .collect();
                let envelope = crate::spam::Envelope {
                    ip: &self.connection.peer_ip,
                    helo: self.helo.as_deref().unwrap_or(""),
                    from: &from,
                    recipients: &recipients,
                    user: None,
                };
                match spam.check(&body, &envelope).await {
                    Ok(scored) => {
                        if scored.placement == crate::spam::Placement::Reject {
                            let actor = self.actor();
                            let event =
                                AuditEvent::new(&actor, "message.refuse", format!("from <{from}>"))
                                    .outcome(AuditOutcome::Denied)
                                    .detail(format!("spam: {}", scored.summary()));
                            self.audit(event).await;
                            return Ok(
                                self.error("550 5.7.1 refused: the message was classified as spam")
                            );
                        }
                        placement = scored.placement;
                        spam_verdict = scored.summary();
                        prefix.push_str(&format!("X-Sealpost-Spam: {spam_verdict}\r\n"));
                    }
                    Err(why) => {
                        warn!(%why, "spam scoring unavailable");
                        if spam.config.on_error == crate::spam::OnError::Tempfail {
                            self.reply(
                                "451 4.7.1 the message cannot be checked now; try again later",
                            );
                            return Ok(Flow::Continue);
                        }
                        spam_verdict = "unscored (the filter did not answer)".into();
                        prefix.push_str(&format!("X-Sealpost-Spam: {spam_verdict}\r\n"));
                    }
                }
            }
        }
        let accept = Accept {
            prefix: received + &prefix,
            hostname: self.config.hostname.clone(),
            from,
            env_id: transaction.env_id.clone(),
            ret: transaction.ret.clone(),
            recipients: transaction.recipients,
            submission: submission.clone(),
            actor: self.actor(),
            id: id.clone(),
            auth_summary,
            sent_copy: false,
            placement,
            verdict: spam_verdict,
        };
        match crate::submit::accept(&self.store, &self.connection.shared, body, accept).await {
            Ok(_) => {
                info!(id, "message accepted");
                self.reply(&format!("250 2.0.0 accepted as {id}"));
                Ok(Flow::Continue)
            }
            Err(Refused::Error(reply)) => Ok(self.error(&reply)),
            Err(Refused::Transient(reply)) => {
                self.reply(&reply);
                Ok(Flow::Continue)
            }
        }
    }
}

/// The reply to a refused AUTH (RFC 4954 section 6: 535 for credentials, 454 for a temporary
/// refusal).
fn login_refusal_reply(reason: LoginRefusal) -> &'static str {
    match reason {
        LoginRefusal::AddressLockedOut => {
            "454 4.7.0 too many failed logins from your address; try later"
        }
        LoginRefusal::AccountLockedOut => {
            "454 4.7.0 too many failed logins for this account; try later"
        }
        LoginRefusal::Paused => {
            "454 4.7.0 a failed login from your address or for this account is still in its pause; \
             try again in a few seconds"
        }
        LoginRefusal::Busy => {
            "454 4.7.0 too many logins are being checked right now; try again shortly"
        }
        LoginRefusal::Invalid {
            app_password_needed: true,
        } => {
            "535 5.7.8 authentication credentials invalid (mail clients sign in with an app \
             password from the account security page)"
        }
        LoginRefusal::Invalid { .. } => "535 5.7.8 authentication credentials invalid",
        LoginRefusal::Disabled => "535 5.7.8 the account is disabled",
        // SMTP admits every accepted login; kept for completeness.
        LoginRefusal::SessionLimit => "454 4.7.0 too many sessions for this account; try later",
        LoginRefusal::Unavailable => "454 4.7.0 temporary authentication failure",
    }
}
