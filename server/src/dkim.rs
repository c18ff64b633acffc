//! DKIM keys: an Ed25519 and an RSA-2048 key, made by `sealpost init` (or by `serve` for a
//! data folder made before DKIM), kept in the store as secrets sealed with its keys (never on
//! disk in the clear, re-wrapped when the master key rotates); and the DNS records a site
//! publishes (`sealpost dns records`).

use anyhow::Context;
use base64::Engine as _;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use sealpost_storage::{Actor, Store};

use crate::config::Loaded;

/// The selectors the two keys are published under.
pub(crate) const SELECTOR_ED25519: &str = "sealpost-ed25519";
pub(crate) const SELECTOR_RSA: &str = "sealpost-rsa";
/// RSA key size, in bits.
const RSA_BITS: usize = 2048;
/// The names the keys are kept under in the store.
const SECRET_ED25519: &str = "dkim-ed25519";
const SECRET_RSA: &str = "dkim-rsa";

/// The two keys as PKCS#8 DER.
pub(crate) struct DkimKeys {
    pub(crate) ed25519: Vec<u8>,
    pub(crate) rsa: Vec<u8>,
}

/// Makes the keys unless the store has them already.
pub(crate) fn ensure_keys(store: &Store) -> anyhow::Result<()> {
    if store.secret(SECRET_ED25519)?.is_none() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("making the Ed25519 DKIM key"))?;
        store.set_secret(SECRET_ED25519, pkcs8.as_ref(), &Actor::system())?;
    }
    if store.secret(SECRET_RSA)?.is_none() {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), RSA_BITS)
            .context("making the RSA DKIM key")?;
        let der = key.to_pkcs8_der().context("encoding the RSA DKIM key")?;
        store.set_secret(SECRET_RSA, der.as_bytes(), &Actor::system())?;
    }
    Ok(())
}

pub(crate) fn load(store: &Store) -> anyhow::Result<DkimKeys> {
    let read = |name: &str| -> anyhow::Result<Vec<u8>> {
        store
            .secret(name)?
            .with_context(|| format!("the store has no {name} key"))
    };
    Ok(DkimKeys {
        ed25519: read(SECRET_ED25519)?,
        rsa: read(SECRET_RSA)?,
    })
}

/// The `p=` values: the raw Ed25519 public key (RFC 8463), the RSA SubjectPublicKeyInfo.
fn public_keys(keys: &DkimKeys) -> anyhow::Result<(String, String)> {
    use ring::signature::KeyPair;
    let ed = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&keys.ed25519)
        .map_err(|_| anyhow::anyhow!("the Ed25519 DKIM key does not load"))?;
    let rsa = <rsa::RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(&keys.rsa)
        .context("the RSA DKIM key does not load")?;
    let spki = rsa
        .to_public_key()
        .to_public_key_der()
        .context("encoding the RSA public key")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok((
        b64.encode(ed.public_key().as_ref()),
        b64.encode(spki.as_bytes()),
    ))
}

/// The records to publish for the primary domain, in zone-file syntax.
pub(crate) fn dns_records(loaded: &Loaded, store: &Store) -> anyhow::Result<String> {
    let cfg = &loaded.config;
    let (domain, host) = (&cfg.server.domain, &cfg.server.hostname);
    let (ed, rsa) = public_keys(&load(store)?)?;
    // TXT strings are at most 255 bytes: the RSA key is split.
    let rsa_record = format!("v=DKIM1; k=rsa; p={rsa}");
    let rsa_strings: Vec<String> = rsa_record
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    let mut out = String::new();
    out.push_str(&format!("; DNS records for {domain}, served by {host}\n"));
    out.push_str(&format!("{domain}.\tIN MX 10 {host}.\n"));
    out.push_str(&format!("{domain}.\tIN TXT \"v=spf1 mx -all\"\n"));
    out.push_str(&format!(
        "{SELECTOR_ED25519}._domainkey.{domain}.\tIN TXT \"v=DKIM1; k=ed25519; p={ed}\"\n"
    ));
    out.push_str(&format!(
        "{SELECTOR_RSA}._domainkey.{domain}.\tIN TXT ( {} )\n",
        rsa_strings.join(" ")
    ));
    out.push_str(&format!(
        "_dmarc.{domain}.\tIN TXT \"v=DMARC1; p=reject; adkim=s; aspf=s; rua=mailto:postmaster@{domain}\"\n"
    ));
    out.push_str(&format!(
        "_mta-sts.{domain}.\tIN TXT \"v=STSv1; id={}\"\n",
        mta_sts_id(loaded)
    ));
    out.push_str(&format!(
        "_smtp._tls.{domain}.\tIN TXT \"v=TLSRPTv1; rua=mailto:postmaster@{domain}\"\n"
    ));
    match tlsa_3_1_1(&loaded.path(&cfg.paths.tls_certificate)) {
        Some(pin) => out.push_str(&format!(
            "; DANE, only in a DNSSEC-signed zone; before a new key goes into use, publish its record beside this one\n\
             _25._tcp.{host}.\tIN TLSA 3 1 1 {pin}\n"
        )),
        None => out.push_str("; DANE: the TLS certificate could not be read, so no TLSA record\n"),
    }
    out.push_str(&format!(
        "; and serve https://mta-sts.{domain}/.well-known/mta-sts.txt with:\n;   version: STSv1\n;   mode: enforce\n;   mx: {host}\n;   max_age: 604800\n"
    ));
    Ok(out)
}

/// The records the health page asks DNS about: (name, kind, text the answer must hold).
pub(crate) fn expected_records(
    loaded: &Loaded,
    store: &Store,
) -> anyhow::Result<Vec<(String, sealpost_smtp::DnsKind, String)>> {
    use sealpost_smtp::DnsKind::{Mx, Txt};
    let cfg = &loaded.config;
    let (domain, host) = (&cfg.server.domain, &cfg.server.hostname);
    let (ed, rsa) = public_keys(&load(store)?)?;
    Ok(vec![
        (domain.clone(), Mx, host.to_lowercase()),
        (domain.clone(), Txt, "v=spf1".into()),
        (
            format!("{SELECTOR_ED25519}._domainkey.{domain}"),
            Txt,
            format!("p={ed}"),
        ),
        (
            format!("{SELECTOR_RSA}._domainkey.{domain}"),
            Txt,
            format!("p={rsa}"),
        ),
        (format!("_dmarc.{domain}"), Txt, "v=DMARC1".into()),
        (
            format!("_mta-sts.{domain}"),
            Txt,
            format!("id={}", mta_sts_id(loaded)),
        ),
        (format!("_smtp._tls.{domain}"), Txt, "v=TLSRPTv1".into()),
    ])
}

/// The TLSA 3 1 1 value of our certificate: the SHA-256 of its public key (DANE-EE), which
/// survives certificate renewals that keep the key.
fn tlsa_3_1_1(certificate: &std::path::Path) -> Option<String> {
    let pem = std::fs::read(certificate).ok()?;
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        parsed.tbs_certificate.subject_pki.raw,
    );
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// A policy id that changes when the MX host does.
fn mta_sts_id(loaded: &Loaded) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        loaded.config.server.hostname.as_bytes(),
    );
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
