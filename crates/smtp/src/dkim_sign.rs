//! DKIM signing of everything that leaves: one Ed25519 and one RSA-SHA256 signature
//! (RFC 8463 recommends both while receivers learn Ed25519).

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

/// The header fields signed (those present; a signature also covers their absence).
const SIGNED_FIELDS: [&str; 10] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

/// The signing domain, its selectors and its two keys (PKCS#8 DER).
pub struct DkimSigning {
    pub domain: String,
    pub selector_ed25519: String,
    pub selector_rsa: String,
    ed25519: Vec<u8>,
    rsa: Vec<u8>,
}

impl DkimSigning {
    /// Checks that both keys load.
    pub fn new(
        domain: &str,
        selector_ed25519: &str,
        ed25519_pkcs8: Vec<u8>,
        selector_rsa: &str,
        rsa_pkcs8: Vec<u8>,
    ) -> Result<Self, String> {
        Ed25519Key::from_pkcs8_maybe_unchecked_der(&ed25519_pkcs8)
            .map_err(|e| format!("the Ed25519 DKIM key does not load: {e}"))?;
        RsaKey::<Sha256>::from_key_der(pkcs8(&rsa_pkcs8))
            .map_err(|e| format!("the RSA DKIM key does not load: {e}"))?;
        Ok(Self {
            domain: domain.to_string(),
            selector_ed25519: selector_ed25519.to_string(),
            selector_rsa: selector_rsa.to_string(),
            ed25519: ed25519_pkcs8,
            rsa: rsa_pkcs8,
        })
    }

    /// The two DKIM-Signature fields for `raw`, to put in front of it.
    pub(crate) fn sign(&self, raw: &[u8]) -> Result<String, String> {
        let ed =
            Ed25519Key::from_pkcs8_maybe_unchecked_der(&self.ed25519).map_err(|e| e.to_string())?;
        let rsa = RsaKey::<Sha256>::from_key_der(pkcs8(&self.rsa)).map_err(|e| e.to_string())?;
        let ed = DkimSigner::from_key(ed)
            .domain(&self.domain)
            .selector(&self.selector_ed25519)
            .headers(SIGNED_FIELDS)
            .sign(raw)
            .map_err(|e| e.to_string())?;
        let rsa = DkimSigner::from_key(rsa)
            .domain(&self.domain)
            .selector(&self.selector_rsa)
            .headers(SIGNED_FIELDS)
            .sign(raw)
            .map_err(|e| e.to_string())?;
        Ok(format!("{}{}", ed.to_header(), rsa.to_header()))
    }
}

fn pkcs8(der: &[u8]) -> rustls::pki_types::PrivateKeyDer<'_> {
    rustls::pki_types::PrivateKeyDer::Pkcs8(der.into())
}
