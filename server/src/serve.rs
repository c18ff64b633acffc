//! `sealpost serve`: opens the store, loads the TLS certificate, runs the services until
//! SIGTERM or SIGINT, and closes the store cleanly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sealpost_auth::{LoginLimits, MailLogins};
use sealpost_imap::{BoxedStream, Connection, ImapConfig, ImapShared};
use sealpost_smtp::{
    Aliases, InboundAuth, InboundPolicy, ListenerRole, OutboundAgent, OutboundConfig, SmtpConfig,
    SmtpConnection, SmtpShared, TlsUpgrade,
};
use sealpost_storage::Store;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::config::Loaded;

/// How long a refused TLS connection gets for its handshake, so that it can read why (or
/// `tls_handshake_ms_max` if shorter).
const REFUSAL_HANDSHAKE_MS: Duration = Duration::from_millis(5_000);
/// Refusals being told at once on one listener (each may need a TLS handshake to be read);
/// past it a refused connection is closed without a word, so that a flood cannot make the
/// refusals themselves the cost.
const REFUSALS_IN_FLIGHT_MAX: usize = 64;
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
    // One certificate for every listener, swapped in place when ACME renews it.
    let certs = crate::acme::Certificates::load(&loaded)?;
    let tls = tokio_rustls::TlsAcceptor::from(certs.server_config(&[])?);
    let cfg = &loaded.config;
    info!(
        domain = %cfg.server.domain,
        store = %loaded.path(&cfg.paths.store).display(),
        "store open"
    );
    let limits = &cfg.limits;
    let imap_config = Arc::new(ImapConfig {
        message_bytes_max: limits.message_bytes_max,
        line_bytes_max: limits.imap_line_bytes_max,
        idle_timeout_ms: limits.imap_idle_timeout_ms,
        commands_per_second_max: limits.imap_commands_per_second_max,
        commands_paced_ms_max: limits.imap_commands_paced_ms_max,
        login_failures_per_connection_max: limits.imap_login_failures_per_connection_max,
        prelogin_literal_bytes_max: limits.prelogin_literal_bytes_max,
        prelogin_idle_ms_max: limits.prelogin_idle_ms_max,
        ..ImapConfig::default()
    });
    // One mail-login gate for IMAP and SMTP: limits on login failures span every listener.
    let logins = MailLogins::new(
        LoginLimits {
            sessions_per_account_max: limits.imap_sessions_per_account_max,
            failures_per_address_max: limits.login_failures_per_address_max,
            failures_per_account_max: limits.login_failures_per_account_max,
            failure_window_ms: limits.login_failure_window_ms,
            ..LoginLimits::default()
        },
        cfg.auth.clone(),
        &cfg.server.hostname,
        // The web crate builds the new-network notice; the gate only calls it.
        Arc::new(sealpost_console::notice::new_network),
    );
    // One registry for both IMAP listeners: the session bound per account spans them.
    let imap_shared = ImapShared::with_logins(logins.clone());
    // IMAP, SMTP and the web hash passwords through this one queue (the lockout is theirs).
    logins
        .lockout()
        .hash_queue()
        .set_queue_max(limits.password_hash_queue_max);
    let handshake_max = Duration::from_millis(limits.tls_handshake_ms_max);
    let (stop, stopped) = watch::channel(false);
    let connections = Arc::new(crate::metrics::Connections::default());
    let mut listeners = JoinSet::new();
    for (name, port, implicit_tls) in [
        ("imap", cfg.listeners.imap, false),
        ("imaps", cfg.listeners.imaps, true),
    ] {
        let address = SocketAddr::new(cfg.server.listen_host, port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address} ({name})"))?;
        info!(listener = name, %address, "listening");
        let service = Listener {
            connections: connections.clone(),
            name,
            tls: tls.clone(),
            implicit_tls,
            per_address: AddressLimiter::new(limits.imap_connections_per_address_max),
            refusal: "* BYE too many connections from your address",
            cap: ConnectionCap::new(limits.imap_connections_max),
            full_refusal:
                "* BYE [UNAVAILABLE] the server has too many connections; try again later",
            handshake_max,
            refusing: Arc::new(AtomicUsize::new(0)),
        };
        let (store, config, shared) = (store.clone(), imap_config.clone(), imap_shared.clone());
        let session = move |stream, _, peer: SocketAddr, starttls: Option<TlsUpgrade>, stopped| {
            let connection = Connection {
                peer: peer.ip().to_string(),
                tls: implicit_tls,
                starttls,
                shared: shared.clone(),
            };
            sealpost_imap::serve_session(stream, store.clone(), config.clone(), connection, stopped)
        };
        listeners.spawn(service.serve(listener, stopped.clone(), session));
    }
    let smtp_config = Arc::new(SmtpConfig {
        hostname: cfg.server.hostname.clone(),
        message_bytes_max: limits.message_bytes_max,
        recipients_per_message_max: limits.smtp_recipients_per_message_max,
        line_bytes_max: limits.smtp_line_bytes_max,
        errors_per_session_max: limits.smtp_errors_per_session_max,
        messages_per_hour_per_account_max: limits.smtp_messages_per_hour_per_account_max,
        command_timeout_ms: limits.smtp_command_timeout_ms,
        auth_failures_per_connection_max: limits.smtp_auth_failures_per_connection_max,
        prelogin_idle_ms_max: limits.prelogin_idle_ms_max,
    });
    let aliases = Aliases {
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
    };
    // AUTH failures count with the IMAP server's: a guesser cannot switch protocols.
    let inbound_auth = InboundAuth::new(
        &cfg.smtp.dns_servers,
        &cfg.server.hostname,
        InboundPolicy {
            reject_dmarc_reject: cfg.smtp.reject_dmarc_reject,
        },
    )
    .context("setting up SPF/DKIM/DMARC checks (smtp.dns_servers)")?;
    let outbound = OutboundAgent::new(
        store.clone(),
        OutboundConfig {
            hostname: cfg.server.hostname.clone(),
            port: cfg.outbound.port,
            retry_first_ms: cfg.outbound.retry_first_ms,
            retry_max_ms: cfg.outbound.retry_max_ms,
            retry_window_ms: cfg.outbound.retry_window_ms,
            portal_url: match cfg.listeners.https {
                443 => format!("https://{}/pickup/", cfg.server.hostname),
                port => format!("https://{}:{port}/pickup/", cfg.server.hostname),
            },
            organisation: if cfg.outbound.organisation.is_empty() {
                cfg.server.domain.clone()
            } else {
                cfg.outbound.organisation.clone()
            },
            notice_subject: cfg.outbound.notice_subject.clone(),
            notice_from: format!("postmaster@{}", cfg.server.domain),
            pickup_ttl_ms: cfg.outbound.pickup_ttl_ms,
            smarthost: cfg
                .outbound
                .smarthost
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?))),
            connections_per_domain_max: cfg.outbound.connections_per_domain_max,
            mta_sts_port: cfg.outbound.mta_sts_port,
            dane: cfg.outbound.dane,
            ..OutboundConfig::default()
        },
        &cfg.smtp.dns_servers,
        load_roots(&loaded)?,
        Some(load_dkim(&loaded, &store)?),
    )
    .context("setting up outbound delivery")?;
    let rules = sealpost_policy::LivePolicy::new(load_policy(&version_zero(cfg), &store).await?);
    // The sign-in and portal settings of the policy in force reach IMAP, SMTP and the queue.
    {
        let (logins, outbound, base) =
            (logins.clone(), outbound.clone(), logins.lockout().limits());
        rules.watch(Box::new(move |policy| {
            let config = policy.config();
            logins.set_policy(
                sealpost_console::auth_policy(&config.sign_in),
                sealpost_console::login_limits(&config.sign_in, base.clone()),
            );
            outbound.set_pickup_ttl_ms(config.portal.pickup_ttl_ms);
        }));
    }
    let smtp_shared = SmtpShared::new(
        logins.clone(),
        aliases,
        Some(inbound_auth),
        Some(outbound.waker()),
        rules.clone(),
    );
    // Inbound scoring and impersonation warnings; filing into or out of Junk trains rspamd.
    let spam = Arc::new(sealpost_smtp::spam::Spam::new(cfg.spam.clone()));
    smtp_shared.set_spam(spam.clone());
    if !cfg.spam.controller.trim().is_empty() {
        let (learner, reader, handle) = (
            spam.clone(),
            store.clone(),
            tokio::runtime::Handle::current(),
        );
        store.set_junk_hook(Arc::new(move |account, mailbox, uids, is_spam| {
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
        }));
    }
    // The console's aliases join those of sealpost.toml.
    {
        let store = store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            store.secret(sealpost_console::CONSOLE_ALIASES_SECRET)
        })
        .await
        .context("reading the console's aliases")??;
        if let Some(bytes) = saved {
            let map: std::collections::BTreeMap<String, Vec<String>> =
                serde_json::from_slice(&bytes).context("the console's aliases do not decode")?;
            smtp_shared.set_console_aliases(&map);
        }
    }
    // The web application on the HTTPS listener, with the same certificate; the control
    // socket lends the subcommands the same console.
    let _control;
    {
        let health = health_facts(&loaded, &store, Some(spam.clone()))?;
        let port = cfg.listeners.https;
        let origin = match port {
            443 => format!("https://{}", cfg.server.hostname),
            port => format!("https://{}:{port}", cfg.server.hostname),
        };
        let logo = match cfg.web.logo.trim() {
            "" => None,
            path => Some(
                sealpost_webmail::load_logo(&loaded.path(std::path::Path::new(path)))
                    .map_err(|why| anyhow::anyhow!("[web] logo: {why}"))?,
            ),
        };
        let brand = sealpost_webmail::Brand {
            organisation: if cfg.outbound.organisation.is_empty() {
                cfg.server.domain.clone()
            } else {
                cfg.outbound.organisation.clone()
            },
            logo,
        };
        let web = sealpost_webmail::WebState::new(
            store.clone(),
            sealpost_webmail::MailSessions {
                lockout: logins.lockout(),
                end_sessions: {
                    let imap = imap_shared.clone();
                    Arc::new(move |account| imap.end_sessions(account))
                },
                aliases_changed: {
                    let smtp = smtp_shared.clone();
                    Arc::new(move |map| smtp.set_console_aliases(map))
                },
            },
            sealpost_webmail::Site {
                hostname: cfg.server.hostname.clone(),
                origin: origin.clone(),
                brand,
                health: health.clone(),
                quarantine_subjects: cfg.spam.admin_sees_subjects,
                metrics: sealpost_webmail::MetricsEndpoint {
                    from: cfg
                        .web
                        .metrics_from
                        .iter()
                        .map(|n| sealpost_console::parse_network(n))
                        .collect::<Result<_, _>>()
                        .map_err(|why| anyhow::anyhow!("[web] metrics_from: {why}"))?,
                    render: {
                        let sources = Arc::new(crate::metrics::Sources {
                            connections: connections.clone(),
                            imap: imap_shared.clone(),
                            smtp: smtp_shared.clone(),
                            outbound: outbound.clone(),
                            store: store.clone(),
                        });
                        Arc::new(move || {
                            let sources = sources.clone();
                            Box::pin(async move { sources.render().await })
                        })
                    },
                },
            },
            sealpost_webmail::SendingConfig {
                outbox: Arc::new(WebOutbox {
                    store: store.clone(),
                    shared: smtp_shared.clone(),
                    config: smtp_config.clone(),
                }),
                queue_waker: Some(outbound.waker()),
                notice_from: format!("postmaster@{}", cfg.server.domain),
                upload_bytes_max: usize::try_from(limits.message_bytes_max).unwrap_or(usize::MAX),
                rules: rules.clone(),
            },
        )
        .map_err(|why| anyhow::anyhow!("setting up the web application: {why}"))?;
        _control = crate::control::listen(
            &data,
            crate::control::ServerSide {
                loaded: loaded.clone(),
                console: web.console(),
                health,
                runtime: tokio::runtime::Handle::current(),
                certs: certs.clone(),
            },
        )?;
        let app = sealpost_webmail::router(web);
        let address = SocketAddr::new(cfg.server.listen_host, port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address} (https)"))?;
        info!(listener = "https", %address, "listening");
        let service = Listener {
            connections: connections.clone(),
            name: "https",
            // HTTP/1.1, and acme-tls/1 for the CA's TLS-ALPN-01 challenges.
            tls: tokio_rustls::TlsAcceptor::from(certs.server_config(&[b"http/1.1", b"acme-tls/1"])?),
            implicit_tls: true,
            per_address: AddressLimiter::new(limits.web_connections_per_address_max),
            refusal: "HTTP/1.1 503 too many connections from your address",
            cap: ConnectionCap::new(limits.web_connections_max),
            full_refusal: "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\
                           Content-Length: 61\r\n\r\nThe server has too many connections; try again in a moment.",
            handshake_max,
            refusing: Arc::new(AtomicUsize::new(0)),
        };
        let http = sealpost_webmail::HttpLimits {
            header_read_ms_max: limits.http_header_read_ms_max,
            idle_ms_max: limits.http_idle_ms_max,
        };
        let session = move |stream, _, peer: SocketAddr, _, _| {
            sealpost_webmail::serve_connection(app.clone(), stream, peer, http)
        };
        listeners.spawn(service.serve(listener, stopped.clone(), session));
    }
    listeners.spawn(outbound.run(stopped.clone()));
    // After the HTTPS listener is bound: the CA's challenge connects to it.
    listeners.spawn(crate::acme::keep(
        loaded.clone(),
        store.clone(),
        certs.clone(),
        stopped.clone(),
    ));
    listeners.spawn(scheduled_backups(
        loaded.clone(),
        store.clone(),
        stopped.clone(),
    ));
    listeners.spawn(retention_sweeps(
        cfg.retention.sweep_interval_ms,
        store.clone(),
        stopped.clone(),
    ));
    listeners.spawn(audit_anchors(store.clone(), stopped.clone()));
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
        let address = SocketAddr::new(cfg.server.listen_host, port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address} ({name})"))?;
        info!(listener = name, %address, "listening");
        let service = Listener {
            connections: connections.clone(),
            name,
            tls: tls.clone(),
            implicit_tls,
            per_address: AddressLimiter::new(limits.smtp_connections_per_address_max),
            refusal: "421 4.7.0 too many connections from your address",
            cap: ConnectionCap::new(limits.smtp_connections_max),
            full_refusal: "421 4.7.0 the server has too many connections; try again later",
            handshake_max,
            refusing: Arc::new(AtomicUsize::new(0)),
        };
        let (store, config, shared) = (store.clone(), smtp_config.clone(), smtp_shared.clone());
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
        listeners.spawn(service.serve(listener, stopped.clone(), session));
    }
    info!("sealpost is running; SIGTERM or SIGINT stops it");
    shutdown.wait().await;
    info!("shutting down");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), async {
        while listeners.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("connections still open after the grace period; closing them");
        listeners.abort_all();
    }
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .context("closing the store")??;
    info!("store closed");
    Ok(ExitCode::SUCCESS)
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

/// Resolves once shutdown is asked for (the read guard never lives across an await).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Counts a connection against its address while it lives.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Accepts connections until shutdown and runs `connection` for each, owned by a JoinSet
/// that is drained before it returns.
async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
    connection: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut sessions = JoinSet::new();
    let mut next_id = 0u64;
    let mut stop_watch = stopped.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(listener = name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                next_id += 1;
                let span = tracing::info_span!("connection", conn_id = next_id, peer = %peer.ip(), protocol = name);
                sessions.spawn(connection(socket, peer, stopped.clone()).instrument(span));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            () = until_stopped(&mut stop_watch) => break,
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}

/// Tells a client past the per-address limit why it is refused, then closes. On a TLS port
/// the client can only read the reason after a handshake, which gets a few seconds at most.
/// The refusal of a connection past its address's limit: the protocol's line with the limit
/// named; for HTTP (`refusal` "HTTP/1.1 503 TEXT") a whole response whose Content-Length
/// counts its body (RFC 9112 §6.3).
fn per_address_refusal(refusal: &str, max: impl std::fmt::Display) -> String {
    match refusal.strip_prefix("HTTP/1.1 503 ") {
        Some(text) => {
            let body = format!("{text} (limit {max})\r\n");
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => format!("{refusal} (limit {max})\r\n"),
    }
}

#[cfg(test)]
mod refusal_tests {
    #[test]
    fn an_http_refusal_counts_its_body_and_the_others_name_the_limit() {
        let http =
            super::per_address_refusal("HTTP/1.1 503 too many connections from your address", 7);
        let (head, body) = http.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{http}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{http}"
        );
        assert_eq!(body, "too many connections from your address (limit 7)\r\n");
        assert_eq!(
            super::per_address_refusal("421 4.7.0 too many connections from your address", 2),
            "421 4.7.0 too many connections from your address (limit 2)\r\n"
        );
    }
}

async fn refuse(
    mut socket: tokio::net::TcpStream,
    tls: &tokio_rustls::TlsAcceptor,
    implicit_tls: bool,
    reason: &str,
    handshake_max: Duration,
) {
    if !implicit_tls {
        // Bounded too: a client that does not read must not hold the refusal.
        let _ = tokio::time::timeout(handshake_max, socket.write_all(reason.as_bytes())).await;
        return;
    }
    let handshake = tokio::time::timeout(handshake_max, tls.accept(socket)).await;
    if let Ok(Ok(mut stream)) = handshake {
        let _ = stream.write_all(reason.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// The session's stream: TLS at once on an implicit-TLS port (with what was negotiated), the
/// plain socket otherwise. `None` when the handshake fails.
async fn open_stream(
    socket: tokio::net::TcpStream,
    tls: &tokio_rustls::TlsAcceptor,
    implicit_tls: bool,
    handshake_max: Duration,
) -> Option<(BoxedStream, Option<String>)> {
    let socket = crate::tcp::QuickAckStream::new(socket);
    if !implicit_tls {
        return Some((Box::new(socket), None));
    }
    match tokio::time::timeout(handshake_max, tls.accept(socket)).await {
        Ok(Ok(stream)) => {
            let described = describe_tls(&stream);
            Some((Box::new(stream), Some(described)))
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake not done in time; dropped");
            None
        }
    }
}

/// Connections per client address on one listener.
#[derive(Clone)]
struct AddressLimiter {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

impl AddressLimiter {
    fn new(max: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    /// A slot for one more connection from `address`, or `None` past the limit. Counted by
    /// the address's group: an IPv6 client's whole /64 is one client.
    fn take(&self, address: IpAddr) -> Option<AddressSlot> {
        let address = sealpost_auth::address_group(address);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.counts.clone(),
            address,
        })
    }
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384": what a Received field records of a TLS session.
fn describe_tls<S>(stream: &tokio_rustls::server::TlsStream<S>) -> String {
    let (_, connection) = stream.get_ref();
    let version = connection
        .protocol_version()
        .map_or_else(|| "TLS".to_string(), |v| format!("{v:?}"));
    let cipher = connection
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_string(), |c| format!("{:?}", c.suite()));
    format!("{version} {cipher}")
}

/// Connections open on one listener, from everyone, within a bound.
#[derive(Clone)]
struct ConnectionCap {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// Counts a connection against its listener's cap while it lives.
struct CapSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCap {
    fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot for one more connection, or `None` when the listener is full.
    fn take(&self) -> Option<CapSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| CapSlot {
                open: self.open.clone(),
            })
    }
}

/// A listening port: connections per address counted and refused past the limit with
/// `refusal` (which names the limit), all connections capped with `full_refusal`, TLS
/// handshakes bounded in time, implicit TLS or not, and a session per connection.
struct Listener {
    /// Counts connections for /metrics.
    connections: Arc<crate::metrics::Connections>,
    name: &'static str,
    tls: tokio_rustls::TlsAcceptor,
    implicit_tls: bool,
    per_address: AddressLimiter,
    /// The protocol's refusal line, e.g. "421 4.7.0 too many connections" (the limit and
    /// CRLF are added).
    refusal: &'static str,
    /// Every connection of the listener, and the refusal past them (sent as it is, CRLF added).
    cap: ConnectionCap,
    full_refusal: &'static str,
    /// A handshake (implicit TLS or STARTTLS) not done within this long is dropped.
    handshake_max: Duration,
    /// Refusals being told now (`REFUSALS_IN_FLIGHT_MAX`).
    refusing: Arc<AtomicUsize>,
}

impl Listener {
    /// Serves until shutdown; `session` runs one session over the (possibly TLS) stream, with
    /// what TLS negotiated on an implicit-TLS port, the client's address, and a STARTTLS
    /// upgrade on a cleartext port.
    async fn serve<S, Fut>(self, listener: TcpListener, stopped: watch::Receiver<bool>, session: S)
    where
        S: Fn(
                BoxedStream,
                Option<String>,
                SocketAddr,
                Option<TlsUpgrade>,
                watch::Receiver<bool>,
            ) -> Fut
            + Clone
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let name = self.name;
        accept_loop(name, listener, stopped, |socket, peer, stopped| {
            let capped = self.cap.take();
            let slot = capped
                .as_ref()
                .and_then(|_| self.per_address.take(peer.ip()));
            let refusal = match capped {
                None => format!("{}\r\n", self.full_refusal),
                Some(_) => per_address_refusal(self.refusal, self.per_address.max),
            };
            // Taken here, in accept order, so that which refusals are told is deterministic.
            let telling = match (&capped, &slot) {
                (Some(_), Some(_)) => None,
                _ => RefusalSlot::take(&self.refusing),
            };
            let (tls, implicit_tls, session) =
                (self.tls.clone(), self.implicit_tls, session.clone());
            let (connections, handshake_max) = (self.connections.clone(), self.handshake_max);
            async move {
                let (Some(_capped), Some(_slot)) = (capped, slot) else {
                    let Some(_telling) = telling else {
                        return;
                    };
                    let handshake = handshake_max.min(REFUSAL_HANDSHAKE_MS);
                    return refuse(socket, &tls, implicit_tls, &refusal, handshake).await;
                };
                let _open = connections.opened(name);
                let Some((stream, described)) =
                    open_stream(socket, &tls, implicit_tls, handshake_max).await
                else {
                    return;
                };
                let starttls = (!implicit_tls).then(|| starttls_upgrade(tls, handshake_max));
                session(stream, described, peer, starttls, stopped).await;
            }
        })
        .await;
    }
}

/// One refusal being told; past `REFUSALS_IN_FLIGHT_MAX` there is none to take.
struct RefusalSlot(Arc<AtomicUsize>);

impl RefusalSlot {
    fn take(refusing: &Arc<AtomicUsize>) -> Option<Self> {
        refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < REFUSALS_IN_FLIGHT_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(refusing.clone()))
    }
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// STARTTLS on a cleartext connection: the TLS stream and what was negotiated; a handshake
/// not done within `handshake_max` fails (the session then ends).
fn starttls_upgrade(acceptor: tokio_rustls::TlsAcceptor, handshake_max: Duration) -> TlsUpgrade {
    Arc::new(move |plain: BoxedStream| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            let secured = tokio::time::timeout(handshake_max, acceptor.accept(plain))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake too slow")
                })??;
            let described = describe_tls(&secured);
            Ok((Box::new(secured) as BoxedStream, described))
        })
    })
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
            let sent = sealpost_smtp::submit_from_web(
                &self.store,
                &self.shared,
                &self.config,
                account,
                message,
            )
            .await?;
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
/// `[auth]` and `[limits]` and the portal's of `[outbound]`.
pub(crate) fn version_zero(cfg: &crate::config::Config) -> sealpost_policy::PolicyConfig {
    let mut config = cfg.policy.clone();
    config.sign_in = sealpost_policy::SignInSettings {
        second_factor_required: cfg.auth.second_factor_required,
        passkey_required_for_staff: cfg.auth.passkey_required_for_staff,
        session_idle_ms: u64::try_from(cfg.auth.session_idle_ms).unwrap_or(0),
        session_absolute_ms: u64::try_from(cfg.auth.session_absolute_ms).unwrap_or(0),
        failures_per_address_max: cfg.limits.login_failures_per_address_max,
        failures_per_account_max: cfg.limits.login_failures_per_account_max,
        failure_window_ms: cfg.limits.login_failure_window_ms,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_one_count_per_64_at_the_listener() {
        let limiter = AddressLimiter::new(1);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let first = limiter
            .take(ip("2001:db8:7:1::10"))
            .expect("the first connection");
        assert!(
            limiter.take(ip("2001:db8:7:1:ffff::20")).is_none(),
            "another address of the same /64 is the same client"
        );
        let other = limiter
            .take(ip("2001:db8:7:2::10"))
            .expect("the next /64 is another client");
        let mapped = limiter
            .take(ip("::ffff:192.0.2.1"))
            .expect("the first connection of 192.0.2.1, written IPv4-mapped");
        assert!(
            limiter.take(ip("192.0.2.1")).is_none(),
            "an IPv4-mapped address is the IPv4 one"
        );
        drop(mapped);
        drop(first);
        assert!(
            limiter.take(ip("2001:db8:7:1::99")).is_some(),
            "the slot came back"
        );
        drop(other);
    }

    #[test]
    fn a_listener_cap_refuses_past_its_bound_and_frees_on_close() {
        let cap = ConnectionCap::new(2);
        let (a, b) = (cap.take().unwrap(), cap.take().unwrap());
        assert!(cap.take().is_none());
        drop(a);
        assert!(cap.take().is_some());
        drop(b);
    }
}
