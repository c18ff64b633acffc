//! `sealpost serve`: opens the store, loads the TLS certificate, runs the services until
//! SIGTERM or SIGINT, and closes the store cleanly.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::config::Loaded;

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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(data: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    // Installed first: a SIGTERM that comes while we start must stop us cleanly, not kill us.
    let shutdown = ShutdownSignals::install()?;
    let opened = tokio::task::spawn_blocking(move || crate::cli::open_store(&data))
        .await
        .context("opening the store")?;
    let (loaded, store) = opened?;
    let _tls = load_tls(&loaded)?;
    let cfg = &loaded.config;
    info!(
        domain = %cfg.server.domain,
        store = %loaded.path(&cfg.paths.store).display(),
        "store open"
    );
    for (name, port) in cfg.listeners.named() {
        // The protocol services arrive with their issues; until then they are not started.
        info!(listener = name, address = %cfg.server.listen_host, port, "listener configured, service not built yet");
    }
    info!("sealpost is running; SIGTERM or SIGINT stops it");
    shutdown.wait().await;
    info!("shutting down");
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

/// Loads the certificate chain and key, so a bad file is reported at start, not at the
/// first connection.
pub(crate) fn load_tls(loaded: &Loaded) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_path = loaded.path(&loaded.config.paths.tls_certificate);
    let key_path = loaded.path(&loaded.config.paths.tls_private_key);
    let cert_pem = std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key_pem = std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert_path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: holds no certificate", cert_path.display());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{}: not a PEM private key", key_path.display()))?
        .with_context(|| format!("{}: holds no private key", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate",
                cert_path.display(),
                key_path.display()
            )
        })?;
    Ok(Arc::new(config))
}
