//! The TLS certificate every listener shows, swappable while the server runs, and ACME:
//! Sealpost obtains and renews the certificate for its host name from an ACME CA, answering
//! TLS-ALPN-01 on its HTTPS listener (RFC 8737), writes it to `[paths]`, and puts it in force
//! for new handshakes without dropping a connection. Open sessions keep the certificate they
//! began with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Loaded;
use crate::now_ms;

/// The ALPN protocol of TLS-ALPN-01 challenges.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The store secret holding the ACME account's credentials.
const ACCOUNT_SECRET: &str = "acme.account";
/// How long one issuance may take, in ms (orders, challenges, finalisation).
pub(crate) const ACME_ORDER_TIMEOUT_MS: u64 = 120_000;
/// The shortest time between two looks at the certificate, in ms.
pub(crate) const ACME_CHECK_MS_MIN: u64 = 1_000;
/// The wait before trying again after a failed issuance, in ms.
pub(crate) const ACME_RETRY_MS: u64 = 3_600_000;

/// `[acme]` in sealpost.toml; off while `directory` is empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AcmeSection {
    /// The CA's directory URL (`https://…/directory`); empty: no ACME.
    pub(crate) directory: String,
    /// The account's contact (`mailto:it@clinic.example`); may be empty.
    pub(crate) contact: String,
    /// A PEM file of a CA to trust for the directory's own HTTPS besides the usual ones
    /// (a private or test CA); empty: none.
    pub(crate) ca_file: String,
    /// Renew when the certificate has fewer days left than this.
    pub(crate) renew_before_days: u32,
    /// Time between looks at the certificate, in milliseconds (12 hours).
    pub(crate) check_interval_ms: u64,
}

impl Default for AcmeSection {
    fn default() -> Self {
        Self {
            directory: String::new(),
            contact: String::new(),
            ca_file: String::new(),
            renew_before_days: 30,
            check_interval_ms: 12 * 3600 * 1000,
        }
    }
}

/// The certificate in force, and the TLS-ALPN-01 challenge certificates being answered.
#[derive(Debug)]
pub(crate) struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn certified(
    provider: &rustls::crypto::CryptoProvider,
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> anyhow::Result<CertifiedKey> {
    let chain = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: not a PEM certificate chain"))?;
    if chain.is_empty() {
        bail!("{what}: holds no certificate");
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .with_context(|| format!("{what}: not a PEM private key"))?
        .with_context(|| format!("{what}: holds no private key"))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| anyhow::anyhow!("{what}: the certificate and key do not make a pair: {e}"))?;
    Ok(certified)
}

impl Certificates {
    /// Reads `[paths] tls_certificate` and `tls_private_key`.
    pub(crate) fn load(loaded: &Loaded) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = Self::read(loaded, &provider)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(current)),
            challenges: Mutex::new(HashMap::new()),
            provider,
        }))
    }

    fn read(
        loaded: &Loaded,
        provider: &rustls::crypto::CryptoProvider,
    ) -> anyhow::Result<CertifiedKey> {
        let cert_path = loaded.path(&loaded.config.paths.tls_certificate);
        let key_path = loaded.path(&loaded.config.paths.tls_private_key);
        let cert_pem = std::fs::read(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem =
            std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        certified(
            provider,
            &cert_pem,
            &key_pem,
            &format!("{} and {}", cert_path.display(), key_path.display()),
        )
    }

    /// Reads the files again and puts them in force for new handshakes.
    pub(crate) fn reload(&self, loaded: &Loaded) -> anyhow::Result<()> {
        let fresh = Self::read(loaded, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// A TLS configuration that shows the certificate in force; `alpn` are the protocols a
    /// listener speaks (the HTTPS listener adds `acme-tls/1`).
    pub(crate) fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    fn set_challenge(&self, domain: &str, key: CertifiedKey) {
        self.challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_lowercase(), Arc::new(key));
    }

    fn clear_challenges(&self) {
        self.challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if challenge {
            let name = hello.server_name()?.to_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned();
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The certificate for a TLS-ALPN-01 challenge: self-signed for `domain`, carrying the
/// key authorisation's digest in the acmeIdentifier extension.
fn challenge_certificate(
    provider: &rustls::crypto::CryptoProvider,
    domain: &str,
    digest: &[u8],
) -> anyhow::Result<CertifiedKey> {
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string()]).context("challenge names")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context("a challenge key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the challenge certificate")?;
    // Not `certified`: its pairing check parses the certificate, and webpki refuses the
    // critical acmeIdentifier extension that only the CA's validator reads.
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the challenge key: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| anyhow::anyhow!("the challenge key: {e}"))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// When the certificate in `[paths]` ends, in ms, if it reads.
fn not_after_ms(loaded: &Loaded) -> Option<i64> {
    crate::serve::certificate_facts(&loaded.path(&loaded.config.paths.tls_certificate))
        .map(|(_, at)| at)
}

/// Obtains a certificate for the host name from the configured CA (TLS-ALPN-01 answered by
/// `certs` on the HTTPS listener, which must be listening), writes it and its key to
/// `[paths]`, and puts it in force. Returns when it ends (ms). Audited.
pub(crate) async fn obtain(
    loaded: &Loaded,
    store: &sealpost_storage::Store,
    certs: &Certificates,
) -> anyhow::Result<i64> {
    let acme = &loaded.config.acme;
    if acme.directory.trim().is_empty() {
        bail!("[acme] directory is empty: ACME is off");
    }
    let obtained = tokio::time::timeout(
        Duration::from_millis(ACME_ORDER_TIMEOUT_MS),
        order(loaded, store, certs),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the ACME order took over {ACME_ORDER_TIMEOUT_MS} ms"))
    .and_then(|r| r);
    certs.clear_challenges();
    let (chain, key) = obtained?;
    let fresh = certified(
        &certs.provider,
        chain.as_bytes(),
        key.as_bytes(),
        "the ACME certificate",
    )?;
    for (path, bytes, mode) in [
        (&loaded.config.paths.tls_private_key, key.as_bytes(), 0o600),
        (
            &loaded.config.paths.tls_certificate,
            chain.as_bytes(),
            0o644,
        ),
    ] {
        crate::files::write_whole(&loaded.path(path), mode, |file| Ok(file.write_all(bytes)?))?;
    }
    *certs.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
    let ends = not_after_ms(loaded).unwrap_or(0);
    let store2 = store.clone();
    let host = loaded.config.server.hostname.clone();
    let directory = acme.directory.clone();
    tokio::task::spawn_blocking(move || {
        store2.audit(
            sealpost_storage::AuditEvent::new(
                &sealpost_storage::Actor::system(),
                "certificate.issue",
                host,
            )
            .detail(format!("from {directory}; valid until {ends} (ms)")),
        )
    })
    .await
    .context("auditing")??;
    info!(until_ms = ends, "certificate obtained and in force");
    Ok(ends)
}

async fn order(
    loaded: &Loaded,
    store: &sealpost_storage::Store,
    certs: &Certificates,
) -> anyhow::Result<(String, String)> {
    use instant_acme::{
        Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
        NewOrder, OrderStatus, RetryPolicy,
    };
    let acme = &loaded.config.acme;
    let builder = || -> anyhow::Result<instant_acme::AccountBuilder> {
        Ok(if acme.ca_file.trim().is_empty() {
            Account::builder().context("the ACME HTTP client")?
        } else {
            Account::builder_with_root(loaded.path(Path::new(acme.ca_file.trim())))
                .context("[acme] ca_file")?
        })
    };
    let reading = store.clone();
    let saved = tokio::task::spawn_blocking(move || reading.secret(ACCOUNT_SECRET)).await??;
    let account = match saved {
        Some(bytes) => {
            let credentials: AccountCredentials =
                serde_json::from_slice(&bytes).context("the saved ACME account does not read")?;
            builder()?
                .from_credentials(credentials)
                .await
                .context("the ACME account")?
        }
        None => {
            let contact = acme.contact.trim();
            let contacts: Vec<&str> = if contact.is_empty() {
                vec![]
            } else {
                vec![contact]
            };
            let (account, credentials) = builder()?
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    acme.directory.trim().to_string(),
                    None,
                )
                .await
                .context("creating the ACME account")?;
            let bytes = serde_json::to_vec(&credentials).context("the ACME account")?;
            let writing = store.clone();
            tokio::task::spawn_blocking(move || {
                writing.set_secret(ACCOUNT_SECRET, &bytes, &sealpost_storage::Actor::system())
            })
            .await??;
            account
        }
    };
    let identifiers = [Identifier::Dns(
        loaded.config.server.hostname.to_lowercase(),
    )];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("the ACME order")?;
    let mut authorizations = order.authorizations();
    while let Some(result) = authorizations.next().await {
        let mut authorization = result.context("an ACME authorization")?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => bail!("an ACME authorization is {other:?}"),
        }
        let mut challenge = authorization
            .challenge(ChallengeType::TlsAlpn01)
            .context("the CA offers no tls-alpn-01 challenge")?;
        let domain = challenge.identifier().to_string();
        let digest = challenge.key_authorization().digest();
        certs.set_challenge(
            &domain,
            challenge_certificate(&certs.provider, &domain, digest.as_ref())?,
        );
        challenge
            .set_ready()
            .await
            .context("answering the challenge")?;
    }
    let retries = RetryPolicy::default().timeout(Duration::from_millis(ACME_ORDER_TIMEOUT_MS / 2));
    let status = order
        .poll_ready(&retries)
        .await
        .context("waiting for the CA's validation")?;
    if status != OrderStatus::Ready {
        bail!(
            "the ACME order is {status:?}, not ready: the CA could not validate {}",
            loaded.config.server.hostname
        );
    }
    let key = order
        .finalize()
        .await
        .context("finalising the ACME order")?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .context("fetching the certificate")?;
    Ok((chain, key))
}

/// Keeps the certificate: obtains one when the one in `[paths]` is not the CA's or ends
/// within `renew_before_days`, at start and every `check_interval_ms`, until shutdown.
pub(crate) async fn keep(
    loaded: Loaded,
    store: sealpost_storage::Store,
    certs: Arc<Certificates>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acme = loaded.config.acme.clone();
    if acme.directory.trim().is_empty() {
        return;
    }
    let renew_before_ms = i64::from(acme.renew_before_days) * 24 * 3600 * 1000;
    loop {
        let due = not_after_ms(&loaded).is_none_or(|ends| ends - now_ms() < renew_before_ms)
            || !issued_by_ca(&loaded);
        let mut wait = Duration::from_millis(acme.check_interval_ms.max(ACME_CHECK_MS_MIN));
        if due {
            match obtain(&loaded, &store, &certs).await {
                Ok(_) => {}
                Err(error) => {
                    warn!(error = %format!("{error:#}"), "ACME: no certificate this time");
                    wait = wait.min(Duration::from_millis(ACME_RETRY_MS));
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Whether the certificate in `[paths]` came from a CA (not `sealpost init`'s self-signed one).
fn issued_by_ca(loaded: &Loaded) -> bool {
    let Ok(pem) = std::fs::read(loaded.path(&loaded.config.paths.tls_certificate)) else {
        return false;
    };
    let Some(Ok(der)) = rustls_pemfile::certs(&mut pem.as_slice()).next() else {
        return false;
    };
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert.issuer() != cert.subject())
        .unwrap_or(false)
}
