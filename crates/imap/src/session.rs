//! One client connection: the greeting, the read-parse-execute loop, the states, and the
//! commands of the not-authenticated and authenticated states. Selected-state commands live
//! in `selected.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sealpost_auth::{LoginOutcome, LoginRefusal, Protocol};
use sealpost_storage::{
    Account, Actor, AuditEvent, Error as StoreError, InternalDate, Mailbox, MailboxId, NewMessage,
    SpecialUse, Store,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::command::{Command, CommandBody, List, StatusItem};
use crate::framer::{Frame, FrameLimits, Framer};
use crate::parse::{parse_command, NameEncoding};
use crate::response;
use crate::selected::Selected;

/// Bytes read from the client at a time.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Capacity of the response buffer kept between commands.
const OUT_BUFFER_KEPT_BYTES: usize = 64 * 1024;
/// Most steps one LIST or LSUB may spend matching its patterns against the account's folder
/// names (the sum over patterns and names of pattern tokens x name characters): about a
/// second of one core. Listing 10,000 folders with a few ordinary patterns takes a hundredth.
pub(crate) const LIST_MATCH_STEPS_MAX: u64 = 300_000_000;

pub use sealpost_net::{BoxedStream, Stream, TlsUpgrade};

/// Bounds and settings of IMAP sessions, each named with its unit: `sealpost.toml`'s
/// `[imap]` section, as it is written there. `message_bytes_max` is the store's (`[limits]`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImapConfig {
    /// Longest command line (between literals), CRLF included.
    pub line_bytes_max: usize,
    /// Largest message APPEND accepts (the store's `message_bytes_max`), also the literal limit.
    #[serde(skip)]
    pub message_bytes_max: u64,
    /// A session that sends nothing for this long is closed; IDLE counts as activity.
    pub idle_timeout_ms: u64,
    /// Commands a session may issue per second. Past it the session is paced: the next
    /// command waits for the next second, so a bulk upload or flag sync just takes longer.
    pub commands_per_second_max: u32,
    /// A session paced for this long in a row (a flood, not a client catching up) gets
    /// NO [LIMIT] for every command past the rate until it slows down, in milliseconds.
    pub commands_paced_ms_max: u64,
    /// Failed logins one connection may make before it is closed.
    pub login_failures_per_connection_max: u32,
    /// Sessions one account may have open at once (the login gate counts them).
    pub sessions_per_account_max: usize,
    /// Storage quota reported by GETQUOTAROOT where an account has none set, in bytes. Not a
    /// file key: it enforces nothing (the store's per-account quota does), so an operator must
    /// not be led to think it caps mailboxes.
    #[serde(skip)]
    pub quota_bytes: u64,
    /// Largest literal before login, in bytes (a LOGIN needs a few hundred): a stranger may
    /// not make the server hold `message_bytes_max`. A larger synchronising literal is refused
    /// before it is sent; a larger non-synchronising one ends the connection.
    pub prelogin_literal_bytes_max: u64,
    /// Before login, each command (with its literals) must arrive whole within this long, or
    /// the connection is closed: trickling bytes is not progress. In milliseconds.
    pub prelogin_idle_ms_max: u64,
    /// Connections each IMAP listener holds open at once, from everyone; past it a client is
    /// told `* BYE [UNAVAILABLE]` and closed (the server's listener enforces it).
    pub connections_max: usize,
    /// Connections one client address may hold open on one IMAP listener.
    pub connections_per_address_max: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        Self {
            line_bytes_max: 64 * 1024,
            message_bytes_max: 64 * 1024 * 1024,
            idle_timeout_ms: 30 * 60 * 1000,
            commands_per_second_max: 500,
            commands_paced_ms_max: 60_000,
            login_failures_per_connection_max: 3,
            sessions_per_account_max: 100,
            quota_bytes: 10 * 1024 * 1024 * 1024,
            prelogin_literal_bytes_max: 8 * 1024,
            prelogin_idle_ms_max: 60_000,
            // An idle IMAP session holds about 17 KiB: 5,000 on a listener is ~85 MiB.
            connections_max: 5_000,
            // A clinic behind one NAT address runs many clients, each with several connections.
            connections_per_address_max: 200,
        }
    }
}

impl ImapConfig {
    /// Refuses settings no server should run with; keys as written in `[imap]`.
    pub fn check(&self) -> Result<(), sealpost_types::InvalidSetting> {
        use sealpost_types::at_least;
        at_least("line_bytes_max", self.line_bytes_max as u64, 1024)?;
        at_least("idle_timeout_ms", self.idle_timeout_ms, 60_000)?;
        at_least(
            "commands_per_second_max",
            self.commands_per_second_max.into(),
            1,
        )?;
        at_least(
            "sessions_per_account_max",
            self.sessions_per_account_max as u64,
            1,
        )?;
        // A LOGIN with literals needs a few hundred bytes.
        at_least(
            "prelogin_literal_bytes_max",
            self.prelogin_literal_bytes_max,
            1024,
        )?;
        at_least("prelogin_idle_ms_max", self.prelogin_idle_ms_max, 100)?;
        at_least("connections_max", self.connections_max as u64, 1)?;
        at_least(
            "connections_per_address_max",
            self.connections_per_address_max as u64,
            1,
        )
    }
}

impl ImapConfig {
    /// The framer's bounds before login (small) or after.
    fn frame_limits(&self, logged_in: bool) -> FrameLimits {
        let literal_bytes_max = if logged_in {
            self.message_bytes_max
        } else {
            self.prelogin_literal_bytes_max.min(self.message_bytes_max)
        };
        FrameLimits {
            line_bytes_max: self.line_bytes_max,
            literal_bytes_max,
            command_bytes_max: literal_bytes_max + 64 * 1024,
        }
    }
}

/// What the server knows about one connection.
pub struct Connection {
    /// The client's address, for the audit log.
    pub peer: String,
    /// Whether the stream is already encrypted (IMAPS).
    pub tls: bool,
    /// How to start TLS on a cleartext listener; `None` where STARTTLS is not offered.
    pub starttls: Option<TlsUpgrade>,
    /// Sessions per account and login failures, shared by the server's sessions.
    pub shared: Arc<crate::ImapShared>,
}

/// Runs one IMAP session to its end: LOGOUT, the client closing, a timeout, or `shutdown`.
pub async fn serve_session(
    stream: BoxedStream,
    store: Store,
    config: Arc<ImapConfig>,
    connection: Connection,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let limits = config.frame_limits(false);
    let mut session = Session {
        stream: Some(stream),
        read_buffer: vec![0u8; READ_BUFFER_BYTES],
        framer: Framer::new(limits),
        out: Vec::new(),
        store,
        config,
        peer: connection.peer,
        tls_active: connection.tls,
        starttls: connection.starttls,
        shared: connection.shared,
        session_slot: None,
        account: None,
        enabled: Enabled::default(),
        selected: None,
        login_failures: 0,
        command_deadline: None,
        compressed: false,
        rate: RateWindow {
            started: Instant::now(),
            commands: 0,
            paced_since: None,
        },
        shutdown,
    };
    if let Err(error) = session.run().await {
        debug!(%error, "session ended with an I/O error");
    }
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Enabled {
    pub(crate) rev2: bool,
    pub(crate) condstore: bool,
    pub(crate) qresync: bool,
    pub(crate) utf8: bool,
}

/// Commands of the current one-second window, and since when the session has been paced.
struct RateWindow {
    started: Instant,
    commands: u32,
    paced_since: Option<Instant>,
}

pub(crate) struct Session {
    stream: Option<BoxedStream>,
    /// Reused for every read: an idle session holds only this much.
    read_buffer: Vec<u8>,
    pub(crate) framer: Framer,
    /// Responses waiting to be written; flushed after each command.
    pub(crate) out: Vec<u8>,
    pub(crate) store: Store,
    pub(crate) config: Arc<ImapConfig>,
    pub(crate) peer: String,
    tls_active: bool,
    starttls: Option<TlsUpgrade>,
    shared: Arc<crate::ImapShared>,
    /// Counts this session against its account's limit while it is logged in.
    session_slot: Option<crate::shared::SessionSlot>,
    pub(crate) account: Option<Account>,
    pub(crate) enabled: Enabled,
    pub(crate) selected: Option<Selected>,
    login_failures: u32,
    /// Before login: when the command being read must be complete (`prelogin_idle_ms_max`).
    command_deadline: Option<Instant>,
    /// COMPRESS=DEFLATE is on (it stays on for the rest of the connection).
    compressed: bool,
    rate: RateWindow,
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
}

/// What the loop does after a command.
pub(crate) enum Flow {
    Continue,
    Close,
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        // A panic in store code is a bug; the session ends and the listener lives on.
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// A store error as a tagged NO: response code and text, never message contents.
pub(crate) fn store_failure(error: &StoreError) -> String {
    match error {
        StoreError::MailboxNotFound => "NO [NONEXISTENT] no such mailbox".into(),
        StoreError::MailboxExists => "NO [ALREADYEXISTS] the mailbox exists already".into(),
        StoreError::ReadOnly { reason } => format!("NO [CANNOT] {reason}"),
        StoreError::MailboxProtected { action, reason } => {
            format!("NO [CANNOT] the mailbox cannot be {action}: {reason}")
        }
        StoreError::InvalidMailboxName { reason } => {
            format!("NO [CANNOT] invalid mailbox name: {reason}")
        }
        StoreError::LimitExceeded {
            what: "message bytes",
            max,
            ..
        } => {
            format!("NO [TOOBIG] the message is larger than {max} bytes")
        }
        StoreError::LimitExceeded { what, max, .. } => {
            format!("NO [LIMIT] {what} over the limit of {max}")
        }
        StoreError::OverQuota { used, limit, .. } => format!(
            "NO [OVERQUOTA] the mailbox is full ({used} of {limit} bytes used); delete or move some mail"
        ),
        StoreError::InvalidInput { what } => format!("NO {what}"),
        other => {
            warn!(error = %other, "store error");
            "NO [SERVERBUG] the server failed; the administrator can find the details in its log"
                .into()
        }
    }
}

const NAME_ALIASES: [(&str, SpecialUse); 10] = [
    ("Sent Items", SpecialUse::Sent),
    ("Sent Messages", SpecialUse::Sent),
    ("Sent Mail", SpecialUse::Sent),
    ("Deleted Items", SpecialUse::Trash),
    ("Deleted Messages", SpecialUse::Trash),
    ("Junk E-mail", SpecialUse::Junk),
    ("Junk Email", SpecialUse::Junk),
    ("Spam", SpecialUse::Junk),
    ("Archives", SpecialUse::Archive),
    ("Draft", SpecialUse::Drafts),
];

impl Session {
    async fn run(&mut self) -> std::io::Result<()> {
        let greeting = format!(
            "* OK [CAPABILITY {}] Sealpost IMAP ready\r\n",
            self.capabilities()
        );
        self.out.extend_from_slice(greeting.as_bytes());
        self.flush().await?;
        loop {
            let frame = match self.read_frame().await? {
                ReadOutcome::Frame(frame) => frame,
                ReadOutcome::Closed => return Ok(()),
                ReadOutcome::PreloginTimedOut => {
                    let limit = self.config.prelogin_idle_ms_max;
                    self.out.extend_from_slice(
                        format!(
                            "* BYE no complete command within {limit} ms before login, closing\r\n"
                        )
                        .as_bytes(),
                    );
                    return self.flush().await;
                }
                ReadOutcome::TimedOut => {
                    self.out
                        .extend_from_slice(b"* BYE idle for too long, closing\r\n");
                    return self.flush().await;
                }
                ReadOutcome::Shutdown => {
                    let bye = self.stop_reason();
                    self.out.extend_from_slice(bye);
                    return self.flush().await;
                }
            };
            let flow = match frame {
                Frame::NeedContinuation => {
                    self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                    Flow::Continue
                }
                Frame::LineTooLong { tag } => {
                    let limit = self.config.line_bytes_max;
                    self.tagged_line(
                        tag.as_deref(),
                        &format!("BAD [LIMIT] command line longer than {limit} bytes"),
                    );
                    Flow::Continue
                }
                Frame::LiteralTooBig {
                    tag,
                    synchronizing,
                    size,
                } => {
                    let limit = self.framer.limits().literal_bytes_max;
                    let when = if self.account.is_none() {
                        " before login"
                    } else {
                        ""
                    };
                    if synchronizing {
                        self.tagged_line(
                            tag.as_deref(),
                            &format!("NO [TOOBIG] {size} bytes is over the limit of {limit}{when}"),
                        );
                        Flow::Continue
                    } else {
                        self.out.extend_from_slice(
                            format!("* BYE [TOOBIG] a literal of {size} bytes is over the limit of {limit}{when}\r\n")
                                .as_bytes(),
                        );
                        Flow::Close
                    }
                }
                Frame::Command(bytes) => self.command(&bytes).await?,
            };
            self.flush().await?;
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    fn tagged_line(&mut self, tag: Option<&str>, text: &str) {
        self.out
            .extend_from_slice(format!("{} {text}\r\n", tag.unwrap_or("*")).as_bytes());
    }

    pub(crate) fn names(&self) -> NameEncoding {
        if self.enabled.rev2 || self.enabled.utf8 {
            NameEncoding::Utf8
        } else {
            NameEncoding::Utf7
        }
    }

    async fn command(&mut self, bytes: &[u8]) -> std::io::Result<Flow> {
        let command = match parse_command(bytes, self.names()) {
            Ok(command) => command,
            Err(error) => {
                self.tagged_line(error.tag.as_deref(), &format!("BAD {}", error.message));
                return Ok(Flow::Continue);
            }
        };
        if !self.admit().await {
            let limit = self.config.commands_per_second_max;
            self.tagged_line(
                Some(&command.tag),
                &format!("NO [LIMIT] more than {limit} commands a second for too long; slow down"),
            );
            return Ok(Flow::Continue);
        }
        let span = tracing::debug_span!("command", tag = %command.tag);
        let _entered = span.enter();
        let (name, started) = (command.body.name(), Instant::now());
        let flow = self.execute(command).await;
        self.shared.record_command(name, started.elapsed());
        flow
    }

    /// Counts one command against the rate; past it, waits for the next second. False when
    /// the session has been paced for longer than commands_paced_ms_max: refuse the command.
    async fn admit(&mut self) -> bool {
        const WINDOW: Duration = Duration::from_secs(1);
        let limit = self.config.commands_per_second_max;
        let now = Instant::now();
        if now.duration_since(self.rate.started) >= WINDOW {
            // A whole window within the rate ends the pacing.
            let paced_since = self.rate.paced_since.filter(|_| self.rate.commands > limit);
            self.rate = RateWindow {
                started: now,
                commands: 0,
                paced_since,
            };
        }
        self.rate.commands += 1;
        if self.rate.commands <= limit {
            return true;
        }
        let paced_since = *self.rate.paced_since.get_or_insert(now);
        if now.duration_since(paced_since)
            >= Duration::from_millis(self.config.commands_paced_ms_max)
        {
            return false;
        }
        let next = self.rate.started + WINDOW;
        tokio::time::sleep_until(next.into()).await;
        self.rate = RateWindow {
            started: next,
            commands: 1,
            paced_since: Some(paced_since),
        };
        true
    }

    pub(crate) fn capabilities(&self) -> String {
        // Before login, LITERAL- (RFC 7888 section 5): non-synchronising literals only up to
        // 4,096 bytes, under prelogin_literal_bytes_max, so a well-behaved client sends a larger
        // one synchronising and gets NO [TOOBIG] before sending it, never a BYE.
        let literal = if self.account.is_none() {
            "LITERAL-"
        } else {
            "LITERAL+"
        };
        let mut caps = vec![
            "IMAP4rev1",
            "IMAP4rev2",
            literal,
            "SASL-IR",
            "ID",
            "ENABLE",
            "IDLE",
        ];
        if self.account.is_none() {
            if !self.tls_active {
                if self.starttls.is_some() {
                    caps.push("STARTTLS");
                }
                caps.push("LOGINDISABLED");
            } else {
                caps.push("AUTH=PLAIN");
            }
            return caps.join(" ");
        }
        caps.extend([
            "NAMESPACE",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "STATUS=SIZE",
            "ESEARCH",
            "SEARCHRES",
            "CONDSTORE",
            "QRESYNC",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "QUOTA=RES-MESSAGE",
            "BINARY",
            "UTF8=ACCEPT",
        ]);
        if !self.compressed {
            caps.push("COMPRESS=DEFLATE");
        }
        let mut text = caps.join(" ");
        text.push_str(&format!(" APPENDLIMIT={}", self.config.message_bytes_max));
        text
    }

    async fn read_frame(&mut self) -> std::io::Result<ReadOutcome> {
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        // Before login the whole command, continuations and literals included, has one
        // deadline: a stranger who trickles a byte at a time holds the connection no longer.
        let deadline = if self.account.is_none() {
            let prelogin = Duration::from_millis(self.config.prelogin_idle_ms_max);
            Some(
                *self
                    .command_deadline
                    .get_or_insert_with(|| Instant::now() + prelogin),
            )
        } else {
            None
        };
        let mut buffer = std::mem::take(&mut self.read_buffer);
        if buffer.is_empty() {
            buffer = vec![0u8; READ_BUFFER_BYTES];
        }
        let outcome = self.read_frame_into(&mut buffer, idle, deadline).await;
        self.read_buffer = buffer;
        if !matches!(outcome, Ok(ReadOutcome::Frame(Frame::NeedContinuation))) {
            self.command_deadline = None;
        }
        outcome
    }

    async fn read_frame_into(
        &mut self,
        buffer: &mut [u8],
        idle: Duration,
        deadline: Option<Instant>,
    ) -> std::io::Result<ReadOutcome> {
        loop {
            if let Some(frame) = self.framer.next_frame() {
                return Ok(ReadOutcome::Frame(frame));
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(ReadOutcome::Closed);
            };
            let timeout = match deadline {
                Some(deadline) => idle.min(deadline.saturating_duration_since(Instant::now())),
                None => idle,
            };
            let mut shutdown = self.shutdown.clone();
            let read = tokio::select! {
                read = tokio::time::timeout(timeout, stream.read(buffer)) => read,
                () = until_stopped(&mut shutdown) => return Ok(ReadOutcome::Shutdown),
            };
            match read {
                Err(_) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                    return Ok(ReadOutcome::PreloginTimedOut)
                }
                Err(_) => return Ok(ReadOutcome::TimedOut),
                Ok(Ok(0)) => return Ok(ReadOutcome::Closed),
                Ok(Ok(n)) => self.framer.push(&buffer[..n]),
                Ok(Err(error)) => return Err(error),
            }
        }
    }

    /// From now on the session also stops when the account's sessions are ended (disabled by
    /// an admin): one small task merges that signal into the session's own stop signal, and
    /// ends with the session.
    fn stop_with_account(&mut self, slot: &crate::shared::SessionSlot) {
        let (merged, stop) = tokio::sync::watch::channel(false);
        let mut server = self.shutdown.clone();
        let mut ended = slot.ended.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = until_stopped(&mut server) => {}
                _ = ended.wait_for(|end| *end) => {}
                () = merged.closed() => return,
            }
            let _ = merged.send(true);
        });
        self.shutdown = stop;
    }

    /// The BYE for a session told to stop: its account's sessions were ended, or the server
    /// is shutting down.
    pub(crate) fn stop_reason(&self) -> &'static [u8] {
        if self
            .session_slot
            .as_ref()
            .is_some_and(|slot| *slot.ended.borrow())
        {
            b"* BYE [UNAVAILABLE] an administrator ended this account's sessions\r\n"
        } else {
            b"* BYE the server is shutting down\r\n"
        }
    }

    /// Reads one line (AUTHENTICATE continuations, IDLE's DONE) as a frame.
    pub(crate) async fn read_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match self.read_frame().await? {
            ReadOutcome::Frame(Frame::Command(line)) => Ok(Some(line)),
            _ => Ok(None),
        }
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        // A client that stops reading its replies holds the connection no longer than it may
        // sit idle (before login, prelogin_idle_ms_max): the write is given up and the session
        // ends, instead of waiting in write_all for ever.
        let limit = Duration::from_millis(if self.account.is_none() {
            self.config.prelogin_idle_ms_max
        } else {
            self.config.idle_timeout_ms
        });
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
        // One large FETCH must not pin megabytes for the rest of the session.
        if self.out.capacity() > OUT_BUFFER_KEPT_BYTES {
            self.out.shrink_to(OUT_BUFFER_KEPT_BYTES);
        }
        Ok(())
    }

    /// Gives back what an idling session does not need (IDLE reads with a small buffer).
    pub(crate) fn release_buffers(&mut self) {
        self.read_buffer = Vec::new();
        self.out.shrink_to(0);
        self.framer.shrink();
    }

    /// The stream, for IDLE, which waits on it and on mailbox events at once.
    pub(crate) fn stream_mut(&mut self) -> Option<&mut BoxedStream> {
        self.stream.as_mut()
    }

    pub(crate) fn ok(&mut self, tag: &str, text: &str) {
        self.out
            .extend_from_slice(format!("{tag} OK {text}\r\n").as_bytes());
    }

    pub(crate) fn no(&mut self, tag: &str, text: &str) {
        self.out
            .extend_from_slice(format!("{tag} NO {text}\r\n").as_bytes());
    }

    pub(crate) fn bad(&mut self, tag: &str, text: &str) {
        self.out
            .extend_from_slice(format!("{tag} BAD {text}\r\n").as_bytes());
    }

    pub(crate) fn untagged(&mut self, text: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(crate) fn actor(&self) -> Actor {
        let name = self
            .account
            .as_ref()
            .map_or_else(|| "anonymous".to_string(), |a| a.address.clone());
        Actor {
            name,
            peer: self.peer.clone(),
        }
    }

    async fn execute(&mut self, command: Command) -> std::io::Result<Flow> {
        let Command { tag, body } = command;
        let authenticated = self.account.is_some();
        let selected = self.selected.is_some();
        match body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.untagged(&format!("CAPABILITY {caps}"));
                self.ok(&tag, "CAPABILITY completed");
            }
            CommandBody::Noop | CommandBody::Check => {
                if selected {
                    self.announce_changes(true).await;
                }
                self.ok(&tag, "completed");
            }
            CommandBody::Logout => {
                self.untagged("BYE logging out");
                self.ok(&tag, "LOGOUT completed");
                return Ok(Flow::Close);
            }
            CommandBody::Id => {
                self.untagged("ID (\"name\" \"Sealpost\")");
                self.ok(&tag, "ID completed");
            }
            CommandBody::StartTls => return self.start_tls(&tag).await,
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if authenticated => {
                self.bad(&tag, "already logged in");
            }
            CommandBody::Login { user, password } => {
                return self.login(&tag, &user, &password).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                return self.authenticate(&tag, &mechanism, initial_response).await;
            }
            _ if !authenticated => self.bad(&tag, "log in first"),
            CommandBody::Enable(capabilities) => self.enable(&tag, &capabilities),
            CommandBody::Namespace => {
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                self.ok(&tag, "NAMESPACE completed");
            }
            CommandBody::Select {
                mailbox,
                read_only,
                condstore,
                qresync,
            } => {
                self.select(&tag, &mailbox, read_only, condstore, qresync)
                    .await;
            }
            CommandBody::Create {
                mailbox,
                special_use,
            } => self.create(&tag, &mailbox, &special_use).await,
            CommandBody::Delete { mailbox } => self.delete(&tag, &mailbox).await,
            CommandBody::Rename { from, to } => self.rename(&tag, &from, &to).await,
            CommandBody::Subscribe { mailbox } => self.subscribe(&tag, &mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&tag, &mailbox, false).await,
            CommandBody::List(list) => self.list(&tag, list).await,
            CommandBody::Status { mailbox, items } => self.status(&tag, &mailbox, &items).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                self.append(&tag, &mailbox, &flags, date, message).await;
            }
            CommandBody::Idle => return self.idle(&tag).await,
            CommandBody::GetQuota { root } => self.get_quota(&tag, Some(&root), None).await,
            CommandBody::GetQuotaRoot { mailbox } => {
                self.get_quota(&tag, None, Some(&mailbox)).await
            }
            CommandBody::SetQuota => self.no(&tag, "[NOPERM] quotas are set by the administrator"),
            CommandBody::Compress { mechanism } => return self.compress(&tag, &mechanism).await,
            _ if !selected => self.bad(&tag, "select a mailbox first"),
            other => self.execute_selected(&tag, other).await,
        }
        Ok(Flow::Continue)
    }

    /// COMPRESS DEFLATE (RFC 4978): after the OK, both directions are raw DEFLATE; every
    /// response flush is a sync flush, so the client can read it at once.
    async fn compress(&mut self, tag: &str, mechanism: &str) -> std::io::Result<Flow> {
        if mechanism != "DEFLATE" {
            self.bad(tag, "only COMPRESS DEFLATE is offered");
            return Ok(Flow::Continue);
        }
        if self.compressed {
            self.no(tag, "[COMPRESSIONACTIVE] compression is already on");
            return Ok(Flow::Continue);
        }
        self.ok(tag, "DEFLATE active");
        self.flush().await?;
        let Some(plain) = self.stream.take() else {
            return Ok(Flow::Close);
        };
        // Whatever the client sent after the command is already compressed.
        let early = self.framer.take_buffered();
        let (read, write) = tokio::io::split(plain);
        let read = tokio::io::BufReader::new(std::io::Cursor::new(early).chain(read));
        let reader = async_compression::tokio::bufread::DeflateDecoder::new(read);
        let writer = async_compression::tokio::write::DeflateEncoder::new(write);
        self.stream = Some(Box::new(tokio::io::join(reader, writer)));
        self.compressed = true;
        Ok(Flow::Continue)
    }

    async fn start_tls(&mut self, tag: &str) -> std::io::Result<Flow> {
        let Some(upgrade) = self.starttls.clone().filter(|_| !self.tls_active) else {
            self.bad(tag, "STARTTLS is not available here");
            return Ok(Flow::Continue);
        };
        if self.framer.buffered() > 0 {
            // Bytes sent before the handshake would be taken as if they came over TLS.
            self.out
                .extend_from_slice(b"* BYE commands pipelined after STARTTLS\r\n");
            return Ok(Flow::Close);
        }
        self.ok(tag, "begin TLS negotiation now");
        self.flush().await?;
        let Some(plain) = self.stream.take() else {
            return Ok(Flow::Close);
        };
        match upgrade(plain).await {
            Ok((tls, _)) => {
                self.stream = Some(tls);
                self.tls_active = true;
                Ok(Flow::Continue)
            }
            Err(error) => {
                debug!(%error, "TLS handshake failed");
                Ok(Flow::Close)
            }
        }
    }

    async fn login(&mut self, tag: &str, user: &str, password: &str) -> std::io::Result<Flow> {
        if !self.tls_active {
            self.no(tag, "[PRIVACYREQUIRED] start TLS before logging in");
            return Ok(Flow::Continue);
        }
        self.check_credentials(tag, user, password).await
    }

    async fn authenticate(
        &mut self,
        tag: &str,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> std::io::Result<Flow> {
        if !self.tls_active {
            self.no(tag, "[PRIVACYREQUIRED] start TLS before authenticating");
            return Ok(Flow::Continue);
        }
        if mechanism != "PLAIN" {
            self.no(tag, "[CANNOT] only AUTHENTICATE PLAIN is offered");
            return Ok(Flow::Continue);
        }
        let encoded = match initial {
            Some(initial) => initial,
            None => {
                self.out.extend_from_slice(b"+ \r\n");
                self.flush().await?;
                let Some(line) = self.read_line().await? else {
                    return Ok(Flow::Close);
                };
                line.strip_suffix(b"\r\n")
                    .or_else(|| line.strip_suffix(b"\n"))
                    .unwrap_or(&line)
                    .to_vec()
            }
        };
        if encoded == b"*" {
            self.bad(tag, "authentication cancelled");
            return Ok(Flow::Continue);
        }
        let decoded = if encoded == b"=" {
            Vec::new()
        } else {
            match base64::engine::general_purpose::STANDARD.decode(&encoded) {
                Ok(decoded) => decoded,
                Err(_) => {
                    self.bad(tag, "the response is not base64");
                    return Ok(Flow::Continue);
                }
            }
        };
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.bad(tag, "a PLAIN response is authzid NUL user NUL password");
            return Ok(Flow::Continue);
        };
        let (Ok(authzid), Ok(user), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(user),
            std::str::from_utf8(password),
        ) else {
            self.bad(tag, "the credentials are not UTF-8");
            return Ok(Flow::Continue);
        };
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(user) {
            self.no(
                tag,
                "[AUTHORIZATIONFAILED] acting as another user is not allowed",
            );
            return Ok(Flow::Continue);
        }
        let (user, password) = (user.to_string(), password.to_string());
        self.check_credentials(tag, &user, &password).await
    }

    async fn check_credentials(
        &mut self,
        tag: &str,
        user: &str,
        password: &str,
    ) -> std::io::Result<Flow> {
        let (store, shared) = (self.store.clone(), self.shared.clone());
        let (user, password, peer) = (user.to_string(), password.to_string(), self.peer.clone());
        // The gate checks, counts and audits; a session slot is the admission IMAP adds.
        let outcome = blocking(move || {
            shared
                .logins()
                .attempt(&store, &peer, &user, &password, Protocol::Imap, |account| {
                    shared.open_session(account.id)
                })
        })
        .await;
        let (reason, pause) = match outcome {
            LoginOutcome::Accepted {
                account,
                admitted: slot,
                ..
            } => {
                info!("login");
                self.framer.set_limits(self.config.frame_limits(true));
                self.stop_with_account(&slot);
                self.session_slot = Some(slot);
                self.account = Some(account);
                let caps = self.capabilities();
                self.ok(tag, &format!("[CAPABILITY {caps}] logged in"));
                return Ok(Flow::Continue);
            }
            LoginOutcome::Refused { reason, pause } => (reason, pause),
        };
        // A pause that doubles with each wrong guess makes guessing slow.
        tokio::time::sleep(pause).await;
        self.login_failures += 1;
        self.no(tag, login_refusal_text(reason));
        if self.login_failures >= self.config.login_failures_per_connection_max {
            self.untagged("BYE too many failed logins");
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    fn enable(&mut self, tag: &str, capabilities: &[String]) {
        let mut enabled = Vec::new();
        for capability in capabilities {
            match capability.as_str() {
                "IMAP4REV2" if !self.enabled.rev2 => {
                    self.enabled.rev2 = true;
                    // IMAP4rev2 has no \Recent, from now on (ENABLE is meant for the
                    // authenticated state, but a client may send it with a mailbox selected).
                    if let Some(selected) = self.selected.as_mut() {
                        selected.drop_recent();
                    }
                    enabled.push("IMAP4rev2");
                }
                "CONDSTORE" if !self.enabled.condstore => {
                    self.enabled.condstore = true;
                    enabled.push("CONDSTORE");
                }
                "QRESYNC" if !self.enabled.qresync => {
                    self.enabled.qresync = true;
                    self.enabled.condstore = true;
                    enabled.push("QRESYNC");
                }
                "UTF8=ACCEPT" if !self.enabled.utf8 => {
                    self.enabled.utf8 = true;
                    enabled.push("UTF8=ACCEPT");
                }
                _ => {}
            }
        }
        self.untagged(format!("ENABLED {}", enabled.join(" ")).trim_end());
        self.ok(tag, "ENABLE completed");
    }

    /// Finds a mailbox by name, or by the names Outlook and others use for special folders.
    pub(crate) async fn find_mailbox(&self, name: &str) -> Result<Option<Mailbox>, StoreError> {
        let store = self.store.clone();
        let account = self.account_id();
        let name = name.to_string();
        blocking(move || {
            if let Some(found) = store.mailbox_by_name(account, &name)? {
                return Ok(Some(found));
            }
            match NAME_ALIASES
                .iter()
                .find(|(alias, _)| alias.eq_ignore_ascii_case(&name))
            {
                Some((_, special_use)) => store.mailbox_by_special_use(account, *special_use),
                None => Ok(None),
            }
        })
        .await
    }

    pub(crate) fn account_id(&self) -> sealpost_storage::AccountId {
        self.account
            .as_ref()
            .map_or(sealpost_storage::AccountId(0), |a| a.id)
    }

    async fn create(&mut self, tag: &str, name: &str, special_use: &[String]) {
        let use_ = match special_use {
            [] => None,
            [one] => match special_use_of(one) {
                Some(SpecialUse::Backup) | None => {
                    self.no(
                        tag,
                        &format!("[USEATTR] {one} is not a special use Sealpost can give"),
                    );
                    return;
                }
                found => found,
            },
            _ => {
                self.no(tag, "[USEATTR] one special use per mailbox");
                return;
            }
        };
        let name = name.trim_end_matches('/').to_string();
        if name.eq_ignore_ascii_case("INBOX") {
            self.no(tag, "[ALREADYEXISTS] INBOX always exists");
            return;
        }
        let (store, account) = (self.store.clone(), self.account_id());
        match blocking(move || store.create_mailbox(account, &name, use_)).await {
            Ok(_) => self.ok(tag, "CREATE completed"),
            Err(error) => {
                let text = store_failure(&error);
                self.tagged_line(Some(tag), &text);
            }
        }
    }

    async fn delete(&mut self, tag: &str, name: &str) {
        let selected_here = self.selected.as_ref().is_some_and(|s| s.name == name);
        let (store, account, name) = (self.store.clone(), self.account_id(), name.to_string());
        match blocking(move || store.delete_mailbox(account, &name)).await {
            Ok(()) => {
                if selected_here {
                    self.selected = None;
                }
                self.ok(tag, "DELETE completed");
            }
            Err(error) => {
                let text = store_failure(&error);
                self.tagged_line(Some(tag), &text);
            }
        }
    }

    async fn rename(&mut self, tag: &str, from: &str, to: &str) {
        let (store, account, from_name, to_name) = (
            self.store.clone(),
            self.account_id(),
            from.to_string(),
            to.to_string(),
        );
        match blocking(move || store.rename_mailbox(account, &from_name, &to_name)).await {
            Ok(()) => {
                if let Some(selected) = self.selected.as_mut().filter(|s| s.name == from) {
                    selected.name = to.to_string();
                }
                self.ok(tag, "RENAME completed");
            }
            Err(error) => {
                let text = store_failure(&error);
                self.tagged_line(Some(tag), &text);
            }
        }
    }

    async fn subscribe(&mut self, tag: &str, name: &str, subscribed: bool) {
        let found = match self.find_mailbox(name).await {
            Ok(Some(found)) => found.name,
            // A name kept subscribed after its mailbox was deleted can still be unsubscribed
            // (the store answers NONEXISTENT for any other).
            Ok(None) if !subscribed => name.to_string(),
            Ok(None) => return self.no(tag, "[NONEXISTENT] no such mailbox"),
            Err(error) => return self.tagged_line(Some(tag), &store_failure(&error)),
        };
        let (store, account) = (self.store.clone(), self.account_id());
        match blocking(move || store.set_subscribed(account, &found, subscribed)).await {
            Ok(()) => self.ok(
                tag,
                if subscribed {
                    "SUBSCRIBE completed"
                } else {
                    "UNSUBSCRIBE completed"
                },
            ),
            Err(error) => self.tagged_line(Some(tag), &store_failure(&error)),
        }
    }

    async fn list(&mut self, tag: &str, list: List) {
        let kind = if list.lsub { "LSUB" } else { "LIST" };
        // No name is longer, and the matcher's work grows with the pattern's length.
        let name_bytes_max = self.store.config().limits.mailbox_name_bytes_max;
        if list
            .patterns
            .iter()
            .any(|pattern| list.reference.len().saturating_add(pattern.len()) > name_bytes_max)
        {
            // A valid command past an implementation limit: NO, not BAD (RFC 9051 section
            // 7.1.2; RFC 5530's LIMIT).
            return self.no(
                tag,
                &format!(
                    "[LIMIT] a {kind} reference and pattern longer than {name_bytes_max} bytes (mailbox_name_bytes_max)"
                ),
            );
        }
        if list.patterns.len() == 1 && list.patterns[0].is_empty() {
            self.untagged(&format!("{kind} (\\Noselect) \"/\" \"\""));
            return self.ok(tag, &format!("{kind} completed"));
        }
        let (store, account) = (self.store.clone(), self.account_id());
        let patterns: Vec<String> = list
            .patterns
            .iter()
            .map(|pattern| format!("{}{}", list.reference, pattern))
            .collect();
        // Matching costs names x patterns: on the blocking pool, with the store's read.
        let selection = crate::list::Selection {
            lsub: list.lsub,
            subscribed: list.select_subscribed,
            recursive: list.recursive_match,
        };
        let listed = blocking(move || {
            let mailboxes = store.list_mailboxes(account)?;
            let lost = if selection.lsub || selection.subscribed {
                store.lost_subscriptions(account)?
            } else {
                Vec::new()
            };
            let compiled: Vec<crate::list::Pattern> = patterns
                .iter()
                .map(|p| crate::list::Pattern::new(p))
                .collect();
            // The matching's worst case, counted before any of it: every pattern against every
            // name and every level above each name (listed when no mailbox has it). Past
            // LIST_MATCH_STEPS_MAX the command is refused, not run for minutes.
            let names = mailboxes
                .iter()
                .map(|m| m.name.as_str())
                .chain(lost.iter().map(String::as_str));
            let levels = names.clone().flat_map(crate::list::parents);
            let steps = crate::list::match_steps(&compiled, names)
                .saturating_add(crate::list::match_steps(&compiled, levels));
            if steps > LIST_MATCH_STEPS_MAX {
                return Ok(None);
            }
            Ok::<_, StoreError>(Some(crate::list::select(
                mailboxes, &lost, &compiled, selection,
            )))
        })
        .await;
        let listed = match listed {
            Ok(Some(listed)) => listed,
            Ok(None) => {
                return self.no(
                    tag,
                    &format!(
                        "[LIMIT] that {kind} would take too long over your folders; use fewer or simpler patterns"
                    ),
                )
            }
            Err(error) => return self.tagged_line(Some(tag), &store_failure(&error)),
        };
        let names = self.names();
        for entry in &listed {
            let special_use = entry.mailbox.as_ref().and_then(|m| m.special_use);
            if list.select_special_use && special_use.and_then(SpecialUse::attribute).is_none() {
                continue;
            }
            let mut attributes: Vec<&str> = Vec::new();
            match (&entry.mailbox, list.lsub) {
                // RFC 3501 6.3.9: a parent listed for its subscribed children.
                (_, true) if entry.lsub_parent => attributes.push("\\Noselect"),
                (_, true) => {}
                // A level above mailboxes that is none itself (RFC 3501 6.3.8).
                (None, false) if !list.select_subscribed => {
                    attributes.extend(["\\Noselect", "\\HasChildren"]);
                }
                // RFC 5258 3.4: a subscribed name, or a parent, with no mailbox.
                (None, false) => {
                    attributes.push("\\NonExistent");
                    if entry.has_children && list.return_children {
                        attributes.push("\\HasChildren");
                    }
                }
                (Some(_), false) => attributes.push(if entry.has_children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                }),
            }
            if let Some(attribute) = special_use.and_then(SpecialUse::attribute) {
                attributes.push(attribute);
            }
            if !list.lsub && entry.subscribed && (list.return_subscribed || list.select_subscribed)
            {
                attributes.push("\\Subscribed");
            }
            let mut line = format!("* {kind} ({}) \"/\" ", attributes.join(" ")).into_bytes();
            response::mailbox(&mut line, &entry.name, names);
            if entry.child_subscribed {
                line.extend_from_slice(b" (CHILDINFO (\"SUBSCRIBED\"))");
            }
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
            if let (Some(items), Some(mailbox)) = (&list.return_status, &entry.mailbox) {
                let status = self.status_line(mailbox, &mailbox.name, items).await;
                self.out.extend_from_slice(&status);
            }
        }
        self.ok(tag, &format!("{kind} completed"));
    }

    /// A STATUS response for `mailbox`, under the name the client used for it.
    pub(crate) async fn status_line(
        &self,
        mailbox: &Mailbox,
        shown_as: &str,
        items: &[StatusItem],
    ) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut deleted = None;
        for item in items {
            let value = match item {
                StatusItem::Messages => ("MESSAGES", u64::from(mailbox.messages)),
                // The messages no session has claimed yet; IMAP4rev2 has no \Recent.
                StatusItem::Recent if self.enabled.rev2 => ("RECENT", 0),
                StatusItem::Recent => {
                    let (store, account, id) = (self.store.clone(), self.account_id(), mailbox.id);
                    let count = blocking(move || store.recent_count(account, id))
                        .await
                        .unwrap_or(0);
                    ("RECENT", u64::from(count))
                }
                StatusItem::UidNext => ("UIDNEXT", u64::from(mailbox.uid_next)),
                StatusItem::UidValidity => ("UIDVALIDITY", u64::from(mailbox.uid_validity)),
                StatusItem::Unseen => ("UNSEEN", u64::from(mailbox.unseen)),
                StatusItem::Size => ("SIZE", mailbox.bytes),
                StatusItem::HighestModSeq => ("HIGHESTMODSEQ", mailbox.highest_modseq),
                StatusItem::Deleted => {
                    if deleted.is_none() {
                        let (store, account, id) =
                            (self.store.clone(), self.account_id(), mailbox.id);
                        let count = blocking(move || store.messages(account, id))
                            .await
                            .map(|all| {
                                all.iter()
                                    .filter(|m| m.flags.has(sealpost_storage::SystemFlag::Deleted))
                                    .count()
                            })
                            .unwrap_or(0);
                        deleted = Some(count as u64);
                    }
                    ("DELETED", deleted.unwrap_or(0))
                }
            };
            parts.push(format!("{} {}", value.0, value.1));
        }
        let mut line = b"* STATUS ".to_vec();
        response::mailbox(&mut line, shown_as, self.names());
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        line
    }

    async fn status(&mut self, tag: &str, name: &str, items: &[StatusItem]) {
        match self.find_mailbox(name).await {
            Ok(Some(mailbox)) => {
                let line = self.status_line(&mailbox, name, items).await;
                self.out.extend_from_slice(&line);
                self.ok(tag, "STATUS completed");
            }
            Ok(None) => self.no(tag, "[NONEXISTENT] no such mailbox"),
            Err(error) => self.tagged_line(Some(tag), &store_failure(&error)),
        }
    }

    async fn append(
        &mut self,
        tag: &str,
        name: &str,
        flags: &[String],
        date: Option<crate::command::ImapDate>,
        message: Vec<u8>,
    ) {
        let mailbox = match self.find_mailbox(name).await {
            Ok(Some(mailbox)) => mailbox,
            Ok(None) => return self.no(tag, "[TRYCREATE] no such mailbox"),
            Err(error) => return self.tagged_line(Some(tag), &store_failure(&error)),
        };
        let flags = match response::parse_flags(flags) {
            Ok(flags) => flags,
            Err(error) => return self.bad(tag, &error),
        };
        if message.is_empty() {
            return self.no(tag, "an empty message");
        }
        let internal_date = date
            .map(|d| InternalDate {
                unix_seconds: d.unix_seconds,
                offset_minutes: d.offset_minutes,
            })
            .unwrap_or_else(InternalDate::now);
        let (store, account, id) = (self.store.clone(), self.account_id(), mailbox.id);
        let result = blocking(move || {
            // The store refuses what would pass the account's quota (Error::OverQuota).
            let index = sealpost_mime::Indexed::of(&message);
            let (summary, search_text) = (index.summary_bytes(), index.search_bytes());
            store.append(
                account,
                id,
                &NewMessage {
                    raw: &message,
                    flags,
                    internal_date,
                    summary: &summary,
                    search_text: &search_text,
                },
            )
        })
        .await;
        match result {
            Ok(appended) => {
                if self
                    .selected
                    .as_ref()
                    .is_some_and(|s| s.id == appended.mailbox)
                {
                    self.announce_changes(false).await;
                }
                self.ok(
                    tag,
                    &format!(
                        "[APPENDUID {} {}] APPEND completed",
                        appended.uid_validity, appended.uid
                    ),
                );
            }
            Err(error) => self.tagged_line(Some(tag), &store_failure(&error)),
        }
    }

    async fn get_quota(&mut self, tag: &str, root: Option<&str>, mailbox: Option<&str>) {
        if let Some(root) = root.filter(|r| !r.is_empty()) {
            return self.no(tag, &format!("[NONEXISTENT] no quota root {root}"));
        }
        if let Some(name) = mailbox {
            match self.find_mailbox(name).await {
                Ok(Some(_)) => {}
                Ok(None) => return self.no(tag, "[NONEXISTENT] no such mailbox"),
                Err(error) => return self.tagged_line(Some(tag), &store_failure(&error)),
            }
            let mut line = b"* QUOTAROOT ".to_vec();
            response::mailbox(&mut line, name, self.names());
            line.extend_from_slice(b" \"\"\r\n");
            self.out.extend_from_slice(&line);
        }
        let (store, account) = (self.store.clone(), self.account_id());
        let figures = blocking(move || {
            Ok::<_, sealpost_storage::Error>((store.quota_usage(account)?, store.quota(account)?))
        })
        .await;
        let (used, limit) = match figures {
            Ok(figures) => figures,
            Err(error) => return self.tagged_line(Some(tag), &store_failure(&error)),
        };
        // The account's own limit where an admin set one; the server's otherwise.
        let limit_kib = limit.unwrap_or(self.config.quota_bytes) / 1024;
        self.untagged(&format!(
            "QUOTA \"\" (STORAGE {} {limit_kib})",
            used.div_ceil(1024)
        ));
        self.ok(tag, "GETQUOTA completed");
    }

    pub(crate) async fn audit(&self, event: AuditEvent) {
        let store = self.store.clone();
        if let Err(error) = blocking(move || store.audit(event)).await {
            warn!(%error, "audit write failed");
        }
    }

    pub(crate) fn selected_mailbox_id(&self) -> Option<MailboxId> {
        self.selected.as_ref().map(|s| s.id)
    }
}

/// Resolves once the server asks every session to stop.
pub(crate) async fn until_stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pub(crate) enum ReadOutcome {
    Frame(Frame),
    Closed,
    TimedOut,
    /// Before login, a command did not arrive whole within `prelogin_idle_ms_max`.
    PreloginTimedOut,
    Shutdown,
}

pub(crate) fn special_use_of(attribute: &str) -> Option<SpecialUse> {
    match attribute.to_ascii_lowercase().as_str() {
        "\\sent" => Some(SpecialUse::Sent),
        "\\drafts" => Some(SpecialUse::Drafts),
        "\\trash" => Some(SpecialUse::Trash),
        "\\junk" => Some(SpecialUse::Junk),
        "\\archive" => Some(SpecialUse::Archive),
        _ => None,
    }
}

/// The NO of a refused login (RFC 5530 response codes).
fn login_refusal_text(reason: LoginRefusal) -> &'static str {
    match reason {
        LoginRefusal::AddressLockedOut => "[UNAVAILABLE] too many failed logins from your address; try later",
        LoginRefusal::AccountLockedOut => "[UNAVAILABLE] too many failed logins for this account; try later",
        LoginRefusal::Paused => {
            "[UNAVAILABLE] a failed login from your address or for this account is still in its pause; \
             try again in a few seconds"
        }
        LoginRefusal::Busy => "[UNAVAILABLE] too many logins are being checked right now; try again shortly",
        LoginRefusal::Invalid {
            app_password_needed: true,
        } => {
            "[AUTHENTICATIONFAILED] invalid credentials (mail clients sign in with an app password \
             from the account security page)"
        }
        LoginRefusal::Invalid { .. } => "[AUTHENTICATIONFAILED] invalid credentials",
        LoginRefusal::Disabled => "[AUTHENTICATIONFAILED] the account is disabled",
        LoginRefusal::SessionLimit => "[LIMIT] too many sessions open for this account",
        LoginRefusal::Unavailable => "[UNAVAILABLE] try again later",
    }
}
