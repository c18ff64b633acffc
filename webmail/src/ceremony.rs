//! Passkey ceremonies between their start and finish requests: the webauthn-rs state, kept in
//! memory under a random id for a few minutes. A passwordless sign-in has no session yet to
//! hold it, and writing one per attempt would let anyone push an account's real sessions
//! out; so it lives here, bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sealpost_storage::AccountId;

/// How long a ceremony may take, in ms (the browser's own timeout is 5 minutes).
pub(crate) const CEREMONY_MS: u64 = 5 * 60 * 1000;
/// Most ceremonies under way at once; past it the oldest are dropped.
pub(crate) const CEREMONIES_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    SignIn,
    Register,
    /// A portal visitor registering a passkey for their address.
    PortalRegister,
    /// A portal visitor opening a pickup with their passkey.
    PortalSignIn,
}

struct Pending {
    kind: Kind,
    account: AccountId,
    state: String,
    started: Instant,
}

#[derive(Default)]
pub(crate) struct Ceremonies {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Ceremonies {
    /// Keeps `state`; the id to hand to the browser.
    pub(crate) fn start(&self, kind: Kind, account: AccountId, state: String) -> String {
        let id = sealpost_auth::secrets::token(24);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = Duration::from_millis(CEREMONY_MS);
        pending.retain(|_, p| p.started.elapsed() < ttl);
        if pending.len() >= CEREMONIES_MAX {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            id.clone(),
            Pending {
                kind,
                account,
                state,
                started: Instant::now(),
            },
        );
        id
    }

    /// Takes the ceremony (once): its account and state, if it is of `kind` and not too old.
    pub(crate) fn finish(&self, id: &str, kind: Kind) -> Option<(AccountId, String)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let found = pending.remove(id)?;
        (found.kind == kind && found.started.elapsed() < Duration::from_millis(CEREMONY_MS))
            .then_some((found.account, found.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ceremony_finishes_once_and_only_as_its_kind() {
        let ceremonies = Ceremonies::default();
        let id = ceremonies.start(Kind::SignIn, AccountId(3), "state".into());
        assert_eq!(
            ceremonies.finish(&id, Kind::Register),
            None,
            "wrong kind, and gone"
        );
        let id = ceremonies.start(Kind::SignIn, AccountId(3), "state".into());
        assert_eq!(
            ceremonies.finish(&id, Kind::SignIn),
            Some((AccountId(3), "state".into()))
        );
        assert_eq!(ceremonies.finish(&id, Kind::SignIn), None, "once");
        assert_eq!(ceremonies.finish("made-up", Kind::SignIn), None);
    }
}
