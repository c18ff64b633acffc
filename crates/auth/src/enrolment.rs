//! Enrolment links: an admin creates an account without a password and hands the new user a
//! one-time link (`/enrol/ACCOUNT.SECRET`); the user opens it, chooses the password, and
//! signs in to set up the second factor. Whoever holds the password first no longer gets to
//! choose the factor: the account has no password until its owner follows the link.
//!
//! The secret is kept as its SHA-256 in the account's credential record, used once, and
//! dies after `ENROLMENT_LINK_MS`. A new link replaces the old one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use sealpost_storage::{AccountId, Actor, AuditEvent, Store};

use crate::credentials::Credentials;

/// How long an enrolment link works, in ms (7 days).
pub const ENROLMENT_LINK_MS: i64 = 7 * 24 * 3600 * 1000;

/// An unused enrolment link, as kept in the credential record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentLink {
    secret_hash: [u8; 32],
    pub expires_ms: i64,
}

/// What an enrolment link's secret came to.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkCheck {
    Valid,
    /// Unknown, used, replaced or wrong.
    Invalid,
    Expired,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Makes a new enrolment link for `account` (replacing any before), audited; returns the
/// path part to append to the site's origin: `/enrol/ACCOUNT.SECRET`.
pub fn issue(
    store: &Store,
    account: AccountId,
    actor: &Actor,
    now_ms: i64,
) -> sealpost_storage::Result<String> {
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let link = EnrolmentLink {
        secret_hash: digest(&secret),
        expires_ms: now_ms.saturating_add(ENROLMENT_LINK_MS),
    };
    Credentials::update(store, account, |record| {
        record.enrolment = Some(link);
        Some(vec![AuditEvent::new(
            actor,
            "auth.enrolment_link.issue",
            format!("account:{}", account.0),
        )])
    })?;
    Ok(format!("/enrol/{}.{secret}", account.0))
}

/// Splits `ACCOUNT.SECRET`.
pub fn parse(text: &str) -> Option<(AccountId, String)> {
    let (account, secret) = text.split_once('.')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((AccountId(account.parse().ok()?), secret.to_string()))
}

/// Whether `secret` is the account's live enrolment link (nothing is changed).
pub fn check(
    store: &Store,
    account: AccountId,
    secret: &str,
    now_ms: i64,
) -> sealpost_storage::Result<LinkCheck> {
    let record = match Credentials::load(store, account) {
        Ok(record) => record,
        Err(sealpost_storage::Error::AccountNotFound { .. }) => return Ok(LinkCheck::Invalid),
        Err(error) => return Err(error),
    };
    Ok(judge(record.enrolment.as_ref(), secret, now_ms))
}

fn judge(link: Option<&EnrolmentLink>, secret: &str, now_ms: i64) -> LinkCheck {
    let Some(link) = link else {
        return LinkCheck::Invalid;
    };
    if !bool::from(digest(secret).ct_eq(&link.secret_hash)) {
        return LinkCheck::Invalid;
    }
    if link.expires_ms < now_ms {
        return LinkCheck::Expired;
    }
    LinkCheck::Valid
}

/// Uses the link: sets the password (the caller judged its strength) and forgets the link,
/// audited. `false` when the link was not valid (then nothing changed).
pub fn complete(
    store: &Store,
    account: AccountId,
    secret: &str,
    password: &str,
    actor: &Actor,
    now_ms: i64,
) -> sealpost_storage::Result<bool> {
    let mut valid = false;
    Credentials::update(store, account, |record| {
        valid = judge(record.enrolment.as_ref(), secret, now_ms) == LinkCheck::Valid;
        if !valid {
            return None;
        }
        record.enrolment = None;
        Some(vec![AuditEvent::new(
            actor,
            "auth.enrolment_link.use",
            format!("account:{}", account.0),
        )])
    })?;
    if valid {
        store.set_password(account, password, actor)?;
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_its_secret_until_it_expires() {
        let link = EnrolmentLink {
            secret_hash: digest("a".repeat(64).as_str()),
            expires_ms: 1_000,
        };
        assert_eq!(judge(Some(&link), &"a".repeat(64), 999), LinkCheck::Valid);
        assert_eq!(
            judge(Some(&link), &"a".repeat(64), 1_001),
            LinkCheck::Expired
        );
        assert_eq!(judge(Some(&link), &"b".repeat(64), 999), LinkCheck::Invalid);
        assert_eq!(judge(None, &"a".repeat(64), 999), LinkCheck::Invalid);
        assert_eq!(
            parse(&format!("12.{}", "f".repeat(64))),
            Some((AccountId(12), "f".repeat(64)))
        );
        assert_eq!(parse("12.short"), None);
        assert_eq!(parse(&format!("x.{}", "f".repeat(64))), None);
    }
}
