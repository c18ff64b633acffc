//! `sealpost serve`: opens the store, sets up what the listeners share (`Server::start`),
//! starts each listener and job (`spawn_imap`, `spawn_web`, `spawn_jobs`, `spawn_smtp`), runs
//! until SIGTERM or SIGINT, and closes the store cleanly.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sealpost_auth::{LoginLimits, MailLogins};
use sealpost_imap::{Connection, ImapConfig, ImapShared};
use sealpost_smtp::{
    Aliases, InboundAuth, InboundPolicy, ListenerRole, OutboundAgent, OutboundConfig, SmtpConfig,
    SmtpConnection, SmtpShared, TlsUpgrade,
};
use sealpost_storage::Store;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Loaded;
use crate::listener::{self, Bounds, Common, Listener};

/// How long connections get to finish after SIGTERM before they are cut.
const SHUTDOWN_GRACE_MS: u64 = 10_000;

pub(crate) fn run(data: &Path) -> anyhow::Result<ExitCode> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(data.to_path_buf()))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (demo → serve) finds a subscriber in place, which is fine.
    // Colours only for a person at a terminal, never in files or journals.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// What the listeners and jobs of one running server share.
struct Server {
    loaded: Loaded,
    store: Store,
    certs: Arc<crate::acme::Certificates>,
    /// The TLS every mail listener shows (the web's adds ACME's protocol).
    tls: tokio_rustls::TlsAcceptor,
    common: Common,
    stopped: watch::Receiver<bool>,
    logins: Arc<MailLogins>,
    /// One registry for both IMAP listeners: the session bound per account spans them.
    imap: Arc<ImapShared>,
    smtp: Arc<SmtpShared>,
    smtp_config: Arc<SmtpConfig>,
    outbound: Arc<OutboundAgent>,
    rules: Arc<sealpost_policy::LivePolicy>,
    spam: Arc<sealpost_smtp::spam::Spam>,
}

async fn serve(data: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    // Installed first: a SIGTERM that comes while we start must stop us cleanly, not kill us.
    let shutdown = ShutdownSignals::install()?;
    // Each connection is a descriptor; the common soft default of 1,024 would refuse clients
    // near a thousand sessions. Raise it as far as the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(open_files_max = limit, "open file limit"),
        Err(error) => warn!(%error, "could not raise the open file limit"),
    }
    let opened = tokio::task::spawn_blocking({
        let data = data.clone();
        move || crate::key::open_store(&data)
    })
    .await
    .context("opening the store")?;
    let (loaded, store) = opened?;
    for moved in &loaded.moved {
        warn!("{}: {moved}", loaded.file.display());
    }
    info!(
        domain = %loaded.config.server.domain,
        store = %loaded.path(&loaded.config.paths.store).display(),
        "store open"
    );
    let (stop, stopped) = watch::channel(false);
    let server = Arc::new(Server::set_up(loaded, store, stopped).await?);
    let mut tasks = JoinSet::new();
    spawn_imap(&server, &mut tasks).await?;
    let _control = spawn_web(&server, &data, &mut tasks).await?;
    spawn_jobs(&server, &mut tasks);
    spawn_smtp(&server, &mut tasks).await?;
    info!("sealpost is running; SIGTERM or SIGINT stops it");
    shutdown.wait().await;
    info!("shutting down");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("connections still open after the grace period; closing them");
        tasks.abort_all();
    }
    let store = server.store.clone();
    drop(server);
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .context("closing the store")??;
    info!("store closed");
    Ok(ExitCode::SUCCESS)
}

impl Server {
    /// Everything the listeners share, set up before any of them binds.
    async fn set_up(
        loaded: Loaded,
        store: Store,
        stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Server> {
        // One certificate for every listener, swapped in place when ACME renews it.
        let certs = crate::acme::Certificates::load(&loaded)?;
        let tls = tokio_rustls::TlsAcceptor::from(certs.server_config(&[])?);
        let cfg = &loaded.config;
        let limits = &cfg.limits;
        // One mail-login gate for IMAP and SMTP: limits on login failures span every listener.
        let logins = MailLogins::new(
            LoginLimits {
                sessions_per_account_max: cfg.imap.sessions_per_account_max,
                ..LoginLimits::default()
            },
            // The policy in force replaces these at once (below), and again whenever it does.
            cfg.auth.clone(),
            &cfg.server.hostname,
            // The console crate builds the new-network notice; the gate only calls it.
            Arc::new(sealpost_console::notice::new_network),
        );
        // IMAP, SMTP and the web hash passwords through this one queue (the lockout is theirs).
        logins
            .lockout()
            .hash_queue()
            .set_queue_max(limits.password_hash_queue_max);
        let imap = ImapShared::with_logins(logins.clone());
        let outbound = OutboundAgent::new(
            store.clone(),
            outbound_config(cfg),
            &cfg.smtp.dns_servers,
            load_roots(&loaded)?,
            Some(load_dkim(&loaded, &store)?),
        )
        .context("setting up outbound delivery")?;
        let rules =
            sealpost_policy::LivePolicy::new(load_policy(&version_zero(cfg), &store).await?);
        // The sign-in and portal settings of the policy in force reach IMAP, SMTP and the queue.
        {
            let (logins, outbound) = (logins.clone(), outbound.clone());
            rules.watch(Box::new(move |policy| {
                let config = policy.config();
                logins.set_settings(config.sign_in.clone());
                outbound.set_pickup_ttl_ms(config.portal.pickup_ttl_ms);
            }));
        }
        // AUTH failures count with the IMAP server's: a guesser cannot switch protocols.
        let inbound_auth = InboundAuth::new(
            &cfg.smtp.dns_servers,
            &cfg.server.hostname,
            InboundPolicy {
                reject_dmarc_reject: cfg.smtp.reject_dmarc_reject,
            },
        )
        .context("setting up SPF/DKIM/DMARC checks (smtp.dns_servers)")?;
        let smtp = SmtpShared::new(
            logins.clone(),
            aliases(cfg),
            Some(inbound_auth),
            Some(outbound.waker()),
            rules.clone(),
        );
        // Inbound scoring and impersonation warnings; filing into or out of Junk trains rspamd.
        let spam = Arc::new(sealpost_smtp::spam::Spam::new(cfg.spam.clone()));
        smtp.set_spam(spam.clone());
        if !cfg.spam.controller.trim().is_empty() {
            store.set_junk_hook(junk_learning(&spam, &store));
        }
        // The console's aliases join those of sealpost.toml.
        let reader = store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            reader.secret(sealpost_console::CONSOLE_ALIASES_SECRET)
        })
        .await
        .context("reading the console's aliases")??;
        if let Some(bytes) = saved {
            let map: std::collections::BTreeMap<String, Vec<String>> =
                serde_json::from_slice(&bytes).context("the console's aliases do not decode")?;
            smtp.set_console_aliases(&map);
        }
        let common = Common {
            connections: Arc::new(crate::metrics::Connections::default()),
            handshake_max: Duration::from_millis(limits.tls_handshake_ms_max),
        };
        Ok(Server {
            smtp_config: Arc::new(smtp_config(cfg)),
            loaded,
            store,
            certs,
            tls,
            common,
            stopped,
            logins,
            imap,
            smtp,
            outbound,
            rules,
            spam,
        })
    }
}

/// `[imap]`, with the store's largest message.
fn imap_config(cfg: &crate::config::Config) -> ImapConfig {
    ImapConfig {
        message_bytes_max: cfg.limits.message_bytes_max,
        ..cfg.imap.clone()
    }
}

/// `[smtp]`, with the server's name and the store's largest message.
fn smtp_config(cfg: &crate::config::Config) -> SmtpConfig {
    SmtpConfig {
        hostname: cfg.server.hostname.clone(),
        message_bytes_max: cfg.limits.message_bytes_max,
        ..cfg.smtp.clone()
    }
}

/// `[outbound]`, with the server's name, the portal's address, the organisation's name and
/// the notices' sender.
fn outbound_config(cfg: &crate::config::Config) -> OutboundConfig {
    OutboundConfig {
        hostname: cfg.server.hostname.clone(),
        portal_url: format!("{}/pickup/", cfg.origin()),
        organisation: cfg.organisation(),
        notice_from: cfg.postmaster(),
        ..cfg.outbound.clone()
    }
}

/// `[aliases]`, addresses lower-cased.
fn aliases(cfg: &crate::config::Config) -> Aliases {
    Aliases {
        map: cfg
            .aliases
            .iter()
            .map(|(alias, targets)| {
                (
                    alias.trim().to_lowercase(),
                    targets.iter().map(|t| t.trim().to_lowercase()).collect(),
                )
            })
            .collect(),
    }
}

/// Filing into or out of Junk teaches rspamd, each lesson audited.
fn junk_learning(
    spam: &Arc<sealpost_smtp::spam::Spam>,
    store: &Store,
) -> sealpost_storage::JunkHook {
    let (learner, reader, handle) = (
        spam.clone(),
        store.clone(),
        tokio::runtime::Handle::current(),
    );
    Arc::new(move |account, mailbox, uids, is_spam| {
        let (learner, reader) = (learner.clone(), reader.clone());
        handle.spawn(async move {
            for uid in uids {
                let reading = reader.clone();
                let Ok(Ok(raw)) = tokio::task::spawn_blocking(move || {
                    reading.read_message(account, mailbox, uid)
                })
                .await
                else {
                    continue;
                };
                let learned = learner.learn(&raw, is_spam).await;
                let event = sealpost_storage::AuditEvent::new(
                    &sealpost_storage::Actor::system(),
                    if is_spam {
                        "spam.learn_spam"
                    } else {
                        "spam.learn_ham"
                    },
                    format!("account:{} mailbox:{} uid:{uid}", account.0, mailbox.0),
                );
                let event = match learned {
                    Ok(()) => event.detail("rspamd learned it"),
                    Err(why) => event
                        .outcome(sealpost_storage::AuditOutcome::Failed)
                        .detail(why),
                };
                let auditing = reader.clone();
                let _ = tokio::task::spawn_blocking(move || auditing.audit(event)).await;
            }
        });
    })
}

/// IMAP with STARTTLS and IMAPS.
async fn spawn_imap(server: &Arc<Server>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let cfg = &server.loaded.config;
    let config = Arc::new(imap_config(cfg));
    for (name, port, implicit_tls) in [
        ("imap", cfg.listeners.imap, false),
        ("imaps", cfg.listeners.imaps, true),
    ] {
        let listener = listener::bind(name, SocketAddr::new(cfg.server.listen_host, port)).await?;
        let service = Listener::new(
            &server.common,
            name,
            server.tls.clone(),
            implicit_tls,
            Bounds {
                per_address_max: cfg.imap.connections_per_address_max,
                per_address_refusal: "* BYE too many connections from your address",
                max: cfg.imap.connections_max,
                full_refusal:
                    "* BYE [UNAVAILABLE] the server has too many connections; try again later",
            },
        );
        let (store, config, shared) = (server.store.clone(), config.clone(), server.imap.clone());
        let session = move |stream, _, peer: SocketAddr, starttls: Option<TlsUpgrade>, stopped| {
            let connection = Connection {
                peer: peer.ip().to_string(),
                tls: implicit_tls,
                starttls,
                shared: shared.clone(),
            };
            sealpost_imap::serve_session(stream, store.clone(), config.clone(), connection, stopped)
        };
        tasks.spawn(service.serve(listener, server.stopped.clone(), session));
    }
    Ok(())
}

/// SMTP on 25, submission on 587 (STARTTLS) and 465 (implicit TLS).
async fn spawn_smtp(server: &Arc<Server>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let cfg = &server.loaded.config;
    for (name, port, role, implicit_tls) in [
        ("smtp", cfg.listeners.smtp, ListenerRole::Inbound, false),
        (
            "submission",
            cfg.listeners.submission,
            ListenerRole::Submission,
            false,
        ),
        (
            "submissions",
            cfg.listeners.submissions,
            ListenerRole::Submission,
            true,
        ),
    ] {
        let listener = listener::bind(name, SocketAddr::new(cfg.server.listen_host, port)).await?;
        let service = Listener::new(
            &server.common,
            name,
            server.tls.clone(),
            implicit_tls,
            Bounds {
                per_address_max: cfg.smtp.connections_per_address_max,
                per_address_refusal: "421 4.7.0 too many connections from your address",
                max: cfg.smtp.connections_max,
                full_refusal: "421 4.7.0 the server has too many connections; try again later",
            },
        );
        let (store, config, shared) = (
            server.store.clone(),
            server.smtp_config.clone(),
            server.smtp.clone(),
        );
        let session = move |stream, described, peer: SocketAddr, starttls, stopped| {
            let connection = SmtpConnection {
                peer_ip: peer.ip().to_string(),
                tls: described,
                starttls,
                role,
                shared: shared.clone(),
            };
            sealpost_smtp::serve_session(stream, store.clone(), config.clone(), connection, stopped)
        };
        tasks.spawn(service.serve(listener, server.stopped.clone(), session));
    }
    Ok(())
}

/// The web application on the HTTPS listener, with the same certificate, and the control
/// socket, which lends the subcommands the same console (kept open while it is held).
async fn spawn_web(
    server: &Arc<Server>,
    data: &Path,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<crate::control::Listening> {
    let cfg = &server.loaded.config;
    let health = health_facts(&server.loaded, &server.store, Some(server.spam.clone()))?;
    let web = sealpost_webmail::WebState::new(
        server.store.clone(),
        sealpost_webmail::MailSessions {
            lockout: server.logins.lockout(),
            end_sessions: {
                let imap = server.imap.clone();
                Arc::new(move |account| imap.end_sessions(account))
            },
            aliases_changed: {
                let smtp = server.smtp.clone();
                Arc::new(move |map| smtp.set_console_aliases(map))
            },
        },
        site(server, health.clone())?,
        sealpost_webmail::SendingConfig {
            outbox: Arc::new(WebOutbox {
                store: server.store.clone(),
                shared: server.smtp.clone(),
                config: server.smtp_config.clone(),
            }),
            queue_waker: Some(server.outbound.waker()),
            notice_from: cfg.postmaster(),
            upload_bytes_max: usize::try_from(cfg.limits.message_bytes_max).unwrap_or(usize::MAX),
            rules: server.rules.clone(),
        },
    )
    .map_err(|why| anyhow::anyhow!("setting up the web application: {why}"))?;
    let control = crate::control::listen(
        data,
        crate::control::ServerSide {
            loaded: server.loaded.clone(),
            console: web.console(),
            health,
            runtime: tokio::runtime::Handle::current(),
            certs: server.certs.clone(),
        },
    )?;
    let app = sealpost_webmail::router(web);
    let address = SocketAddr::new(cfg.server.listen_host, cfg.listeners.https);
    let listener = listener::bind("https", address).await?;
    let service = Listener::new(
        &server.common,
        "https",
        // HTTP/1.1, and acme-tls/1 for the CA's TLS-ALPN-01 challenges.
        tokio_rustls::TlsAcceptor::from(
            server
                .certs
                .server_config(&[b"http/1.1", b"acme-tls/1"])?,
        ),
        true,
        Bounds {
            per_address_max: cfg.limits.web_connections_per_address_max,
            per_address_refusal: "HTTP/1.1 503 too many connections from your address",
            max: cfg.limits.web_connections_max,
            full_refusal: "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\
                           Content-Length: 61\r\n\r\nThe server has too many connections; try again in a moment.",
        },
    );
    let http = sealpost_webmail::HttpLimits {
        header_read_ms_max: cfg.limits.http_header_read_ms_max,
        idle_ms_max: cfg.limits.http_idle_ms_max,
    };
    let session = move |stream, _, peer: SocketAddr, _, _| {
        sealpost_webmail::serve_connection(app.clone(), stream, peer, http)
    };
    tasks.spawn(service.serve(listener, server.stopped.clone(), session));
    Ok(control)
}

/// What the web shows of the site: its name, origin, brand, health facts and /metrics.
fn site(
    server: &Arc<Server>,
    health: sealpost_console::HealthInfo,
) -> anyhow::Result<sealpost_webmail::Site> {
    let cfg = &server.loaded.config;
    let logo = match cfg.web.logo.trim() {
        "" => None,
        path => Some(
            sealpost_webmail::load_logo(&server.loaded.path(Path::new(path)))
                .map_err(|why| anyhow::anyhow!("[web] logo: {why}"))?,
        ),
    };
    let sources = Arc::new(crate::metrics::Sources {
        connections: server.common.connections.clone(),
        imap: server.imap.clone(),
        smtp: server.smtp.clone(),
        outbound: server.outbound.clone(),
        store: server.store.clone(),
    });
    Ok(sealpost_webmail::Site {
        hostname: cfg.server.hostname.clone(),
        origin: cfg.origin(),
        brand: sealpost_webmail::Brand {
            organisation: cfg.organisation(),
            logo,
        },
        health,
        quarantine_subjects: cfg.spam.admin_sees_subjects,
        metrics: sealpost_webmail::MetricsEndpoint {
            from: cfg
                .web
                .metrics_from
                .iter()
                .map(|n| sealpost_console::parse_network(n))
                .collect::<Result<_, _>>()
                .map_err(|why| anyhow::anyhow!("[web] metrics_from: {why}"))?,
            render: Arc::new(move || {
                let sources = sources.clone();
                Box::pin(async move { sources.render().await })
            }),
        },
    })
}

/// The queue runner, ACME, scheduled backups, retention sweeps and audit anchors.
fn spawn_jobs(server: &Arc<Server>, tasks: &mut JoinSet<()>) {
    let (loaded, store, stopped) = (&server.loaded, &server.store, &server.stopped);
    tasks.spawn(server.outbound.clone().run(stopped.clone()));
    // After the HTTPS listener is bound: the CA's challenge connects to it.
    tasks.spawn(crate::acme::keep(
        loaded.clone(),
        store.clone(),
        server.certs.clone(),
        stopped.clone(),
    ));
    tasks.spawn(scheduled_backups(
        loaded.clone(),
        store.clone(),
        stopped.clone(),
    ));
    tasks.spawn(retention_sweeps(
        loaded.config.retention.sweep_interval_ms,
        store.clone(),
        stopped.clone(),
    ));
    tasks.spawn(audit_anchors(store.clone(), stopped.clone()));
}

struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// The certificate authorities outbound TLS trusts: every certificate in `outbound.ca_files`.
/// A missing file is skipped with a warning (a machine without the system bundle still
/// delivers to partners whose CA is configured); a file that is not PEM stops the start.
fn load_roots(loaded: &Loaded) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for file in &loaded.config.outbound.ca_files {
        let path = loaded.path(file);
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(error) => {
                warn!(path = %path.display(), %error, "outbound CA file not read");
                continue;
            }
        };
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: not PEM certificates", path.display()))?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        info!(path = %path.display(), added, ignored, "outbound CAs loaded");
    }
    Ok(roots)
}

/// The DKIM keys, made first if this data folder predates them.
fn load_dkim(loaded: &Loaded, store: &Store) -> anyhow::Result<sealpost_smtp::DkimSigning> {
    crate::dkim::ensure_keys(store)?;
    let keys = crate::dkim::load(store)?;
    sealpost_smtp::DkimSigning::new(
        &loaded.config.server.domain,
        crate::dkim::SELECTOR_ED25519,
        keys.ed25519,
        crate::dkim::SELECTOR_RSA,
        keys.rsa,
    )
    .map_err(|e| anyhow::anyhow!(e))
}

/// The web's send button: the SMTP crate's submission path, as for a mail client.
struct WebOutbox {
    store: sealpost_storage::Store,
    shared: Arc<SmtpShared>,
    config: Arc<SmtpConfig>,
}

impl sealpost_webmail::Outbox for WebOutbox {
    fn send<'a>(
        &'a self,
        account: &'a sealpost_storage::Account,
        message: sealpost_webmail::Outgoing,
    ) -> sealpost_webmail::Sending<'a> {
        Box::pin(async move {
            let message = sealpost_smtp::WebMessage {
                raw: message.raw,
                recipients: message.recipients,
                peer: message.peer,
                portal: message.portal,
            };
            use sealpost_smtp::WebSendError as Why;
            use sealpost_webmail::NotSent;
            let sent = sealpost_smtp::submit_from_web(
                &self.store,
                &self.shared,
                &self.config,
                account,
                message,
            )
            .await
            .map_err(|why| match why {
                Why::TooMany(text) => NotSent::TooMany(text),
                Why::Refused(text) => NotSent::Refused(text),
                Why::Unavailable(text) => NotSent::Unavailable(text),
            })?;
            Ok(sealpost_webmail::Sent { queue: sent.queue })
        })
    }
}

/// Runs `job` (blocking store work, which logs its own outcome) off the async threads every
/// `interval_ms` until shutdown; none when 0.
async fn every(
    interval_ms: u64,
    mut stop: watch::Receiver<bool>,
    job: Arc<dyn Fn() + Send + Sync>,
) {
    if interval_ms == 0 {
        return;
    }
    let pause = std::time::Duration::from_millis(interval_ms);
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let job = job.clone();
        if tokio::task::spawn_blocking(move || job()).await.is_err() {
            warn!("a scheduled job stopped");
        }
    }
}

/// Expires quarantined mail and applies the retention rules every `interval_ms`.
/// How often the server writes the audit chain's head to its log, in ms.
const AUDIT_ANCHOR_LOG_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// Writes the audit chain's head (record number and link, no content) to the log at start and
/// every `AUDIT_ANCHOR_LOG_INTERVAL_MS`: logs shipped off the machine keep anchors that
/// `sealpost audit verify --anchor SEQ:LINK` checks a store against.
async fn audit_anchors(store: sealpost_storage::Store, stop: watch::Receiver<bool>) {
    let job = move || {
        let anchor = store.audit_anchor();
        info!(seq = anchor.seq, link = %anchor.link_hex(), "audit anchor {anchor}");
    };
    let job: Arc<dyn Fn() + Send + Sync> = Arc::new(job);
    let first = job.clone();
    if tokio::task::spawn_blocking(move || first()).await.is_err() {
        warn!("the audit anchor could not be logged");
    }
    every(AUDIT_ANCHOR_LOG_INTERVAL_MS, stop, job).await;
}

async fn retention_sweeps(
    interval_ms: u64,
    store: sealpost_storage::Store,
    stop: watch::Receiver<bool>,
) {
    let job = move || {
        let now = crate::now_ms();
        let system = sealpost_storage::Actor::system();
        match store.expire_quarantine(now, &system) {
            Ok(0) => {}
            Ok(expired) => info!(expired, "quarantine expiry"),
            Err(error) => warn!(%error, "quarantine expiry failed"),
        }
        match store.retention_sweep(now, false, &system) {
            Ok(gone) if !gone.is_empty() => info!(destroyed = gone.len(), "retention sweep"),
            Ok(_) => {}
            Err(error) => warn!(%error, "retention sweep failed"),
        }
    };
    every(interval_ms, stop, Arc::new(job)).await;
}

/// Takes a backup every `[backup] interval_ms` until shutdown (none when 0 or without a
/// recipient); a failure is logged and tried again at the next interval.
async fn scheduled_backups(
    loaded: Loaded,
    store: sealpost_storage::Store,
    stop: watch::Receiver<bool>,
) {
    let cfg = &loaded.config.backup;
    if cfg.interval_ms > 0 && cfg.recipient.trim().is_empty() {
        warn!("no scheduled backups: [backup] recipient is empty (sealpost init sets it)");
        return;
    }
    let interval_ms = cfg.interval_ms;
    let job = move || match crate::backup::scheduled(&loaded, &store) {
        Ok(path) => info!(path = %path.display(), "scheduled backup written"),
        Err(error) => warn!(error = %format!("{error:#}"), "scheduled backup failed"),
    };
    every(interval_ms, stop, Arc::new(job)).await;
}

/// Version 0 of the policy: `[policy]` of sealpost.toml, with the sign-in settings of
/// `[auth]` and the portal's of `[outbound]`.
pub(crate) fn version_zero(cfg: &crate::config::Config) -> sealpost_policy::PolicyConfig {
    let mut config = cfg.policy.clone();
    config.sign_in = cfg.auth.clone();
    config.portal.pickup_ttl_ms = cfg.outbound.pickup_ttl_ms;
    config
}

/// The rules in force: the last version saved in the console, if any, else `[policy]` of
/// `sealpost.toml`.
async fn load_policy(
    configured: &sealpost_policy::PolicyConfig,
    store: &sealpost_storage::Store,
) -> anyhow::Result<sealpost_policy::Policy> {
    let reading = store.clone();
    let saved = tokio::task::spawn_blocking(move || {
        reading.secret(sealpost_policy::PolicyVersion::CURRENT)
    })
    .await
    .context("reading the saved policy")??;
    let config = match saved {
        Some(bytes) => {
            let saved: sealpost_policy::PolicyVersion = serde_json::from_slice(&bytes)
                .context("the policy saved in the console does not decode")?;
            info!(
                version = saved.version,
                "policy: the version saved in the console"
            );
            saved.config
        }
        None => configured.clone(),
    };
    let policy =
        sealpost_policy::Policy::new(config).map_err(|e| anyhow::anyhow!("[policy]: {e}"))?;
    // The store enforces the retention rules of the policy in force.
    let (store, rules) = (store.clone(), policy.config().retention.clone());
    tokio::task::spawn_blocking(move || {
        store.set_retention_rules(&rules, &sealpost_storage::Actor::system())
    })
    .await
    .context("putting the retention rules in force")??;
    Ok(policy)
}

/// What the console's health page shows of this server: its listeners, its certificate, the
/// DNS records to publish and a look-up of each.
pub(crate) fn health_facts(
    loaded: &Loaded,
    store: &sealpost_storage::Store,
    spam: Option<Arc<sealpost_smtp::spam::Spam>>,
) -> anyhow::Result<sealpost_console::HealthInfo> {
    let cfg = &loaded.config;
    let host = cfg.server.listen_host;
    let listeners = [
        ("imap (STARTTLS)", cfg.listeners.imap),
        ("imaps", cfg.listeners.imaps),
        ("smtp (MX)", cfg.listeners.smtp),
        ("submission (STARTTLS)", cfg.listeners.submission),
        ("submissions", cfg.listeners.submissions),
        ("https", cfg.listeners.https),
    ]
    .into_iter()
    .map(|(name, port)| (name.to_string(), SocketAddr::new(host, port).to_string()))
    .collect();
    let certificate = certificate_facts(&loaded.path(&cfg.paths.tls_certificate));
    let dns_zone = crate::dkim::dns_records(loaded, store)?;
    let expected = Arc::new(crate::dkim::expected_records(loaded, store)?);
    let servers = cfg.smtp.dns_servers.clone();
    let dns_check: sealpost_console::DnsCheck = Arc::new(move || {
        let (expected, servers) = (expected.clone(), servers.clone());
        Box::pin(async move {
            let questions: Vec<(String, sealpost_smtp::DnsKind)> = expected
                .iter()
                .map(|(name, kind, _)| (name.clone(), *kind))
                .collect();
            let answers = sealpost_smtp::dns_answers(&servers, &questions).await;
            expected
                .iter()
                .zip(answers)
                .map(|((name, kind, wanted), answer)| {
                    let record = format!(
                        "{name} {}",
                        if *kind == sealpost_smtp::DnsKind::Mx {
                            "MX"
                        } else {
                            "TXT"
                        }
                    );
                    match answer {
                        Ok(texts)
                            if texts
                                .iter()
                                .any(|t| t.to_lowercase().contains(&wanted.to_lowercase())) =>
                        {
                            sealpost_console::DnsFinding {
                                record,
                                expected: wanted.clone(),
                                state: Ok(true),
                                answer: texts.join(" "),
                            }
                        }
                        Ok(texts) if !texts.is_empty() => sealpost_console::DnsFinding {
                            record,
                            expected: wanted.clone(),
                            state: Ok(false),
                            answer: texts.join(" "),
                        },
                        Ok(_) => sealpost_console::DnsFinding {
                            record,
                            expected: wanted.clone(),
                            state: Err("no record".into()),
                            answer: String::new(),
                        },
                        Err(why) => sealpost_console::DnsFinding {
                            record,
                            expected: wanted.clone(),
                            state: Err(why),
                            answer: String::new(),
                        },
                    }
                })
                .collect()
        })
    });
    Ok(sealpost_console::HealthInfo {
        listeners,
        certificate,
        dns_zone,
        dns_check,
        spam_status: Arc::new(move || match &spam {
            None => "unknown: the server is not running".into(),
            Some(spam) if !spam.enabled() => "off ([spam] rspamd is empty)".into(),
            Some(spam) => match spam.down_since() {
                None => format!("rspamd at {} answering", spam.config.rspamd),
                Some((at, why)) => format!(
                    "DOWN since {} ({why}); mail is {}",
                    crate::cli::format_ms(at),
                    match spam.config.on_error {
                        sealpost_smtp::spam::OnError::Accept => "delivered unscored",
                        sealpost_smtp::spam::OnError::Tempfail => "deferred (451)",
                    }
                ),
            },
        }),
    })
}

/// The names a PEM certificate is for and when it expires (ms), if it reads.
pub(crate) fn certificate_facts(path: &std::path::Path) -> Option<(Vec<String>, i64)> {
    let pem = std::fs::read(path).ok()?;
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.dedup();
    if names.is_empty() {
        names.push(parsed.subject().to_string());
    }
    Some((names, parsed.validity().not_after.timestamp() * 1000))
}
