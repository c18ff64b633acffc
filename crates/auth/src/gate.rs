//! The one gate every mail login passes, IMAP and SMTP alike: the lockout's check, a place in
//! the hashing queue, the credential check, the failure bookkeeping and the audit record. The
//! protocols only turn the outcome into their reply; a login rule changes here alone.

use std::sync::Arc;
use std::time::Duration;

use sealpost_storage::{Account, Actor, AuditEvent, AuditOutcome, Store};

use crate::credentials::{MailLogin, Protocol};
use crate::lockout::{Lockout, LoginLimits, Refusal};
use sealpost_types::SignInSettings;

/// Why a mail login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Too many failures from the client's address (its /64 for IPv6).
    AddressLockedOut,
    /// Too many failures for the account.
    AccountLockedOut,
    /// A failure's pause is still running, for the address or the account.
    Paused,
    /// Too many logins are being checked at once (the hashing queue is full).
    Busy,
    /// Wrong or unknown credentials, all alike; `app_password_needed` when the account takes
    /// only app passwords, so the reply can say where to get one.
    Invalid { app_password_needed: bool },
    /// The account exists, the credentials are right, and the account is disabled.
    Disabled,
    /// The protocol refused the session itself (IMAP: too many sessions for the account).
    SessionLimit,
    /// The store failed; the client should try later.
    Unavailable,
}

impl LoginRefusal {
    /// What the audit record says, in no protocol's words.
    fn detail(self) -> &'static str {
        match self {
            LoginRefusal::AddressLockedOut => "too many failed logins from the address",
            LoginRefusal::AccountLockedOut => "too many failed logins for the account",
            LoginRefusal::Paused => "a failed login's pause was still running",
            LoginRefusal::Busy => "too many logins were being checked",
            LoginRefusal::Invalid {
                app_password_needed: true,
            } => "invalid credentials (the account takes app passwords only)",
            LoginRefusal::Invalid { .. } => "invalid credentials",
            LoginRefusal::Disabled => "the account is disabled",
            LoginRefusal::SessionLimit => "too many sessions open for the account",
            LoginRefusal::Unavailable => "the login could not be checked",
        }
    }

    /// A wrong guess: counted, and answered after a pause that doubles with each one.
    fn is_guess(self) -> bool {
        matches!(self, LoginRefusal::Invalid { .. } | LoginRefusal::Disabled)
    }
}

/// The outcome of one mail login.
pub enum LoginOutcome<T> {
    /// The account, how it signed in ("app password NAME", "password"), and what the
    /// protocol's admission gave (an IMAP session slot).
    Accepted {
        account: Account,
        method: String,
        admitted: T,
    },
    /// Why not, and how long to wait before answering (zero unless it was a wrong guess).
    Refused {
        reason: LoginRefusal,
        pause: Duration,
    },
}

/// Writes the notice of a sign-in from a network the account had not used: (store, account,
/// client address, how it signed in, this server's host name). The server supplies it; this
/// crate builds no mail.
pub type NewNetworkNotice =
    Arc<dyn Fn(&Store, &Account, &str, &str, &str) -> sealpost_storage::Result<()> + Send + Sync>;

/// The mail logins of one server: its lockout (shared with the web, so that a guesser cannot
/// switch protocols), which holds the sign-in settings in force, and the new-network notice
/// with the host name it names.
pub struct MailLogins {
    lockout: Arc<Lockout>,
    hostname: String,
    notice: NewNetworkNotice,
}

impl MailLogins {
    /// `notice` writes the new-network notice: the server gives the web crate's
    /// (`sealpost_webmail::notice::new_network`), the protocol crates' tests `no_notice()`.
    pub fn new(
        limits: LoginLimits,
        settings: SignInSettings,
        hostname: &str,
        notice: NewNetworkNotice,
    ) -> Arc<Self> {
        Arc::new(Self {
            lockout: Arc::new(Lockout::new(limits, settings)),
            hostname: hostname.to_string(),
            notice,
        })
    }

    /// A notice that writes nothing: for tests of the protocol crates, which run without the
    /// web crate that builds the real one.
    pub fn no_notice() -> NewNetworkNotice {
        Arc::new(|_, _, _, _, _| Ok(()))
    }

    /// A mail client's login (`mail_login`), and the new-network notice when it opened a
    /// session from a network the account had not used.
    fn login_noticed(
        &self,
        store: &Store,
        settings: &SignInSettings,
        user: &str,
        secret: &str,
        protocol: Protocol,
        peer: &str,
    ) -> sealpost_storage::Result<MailLogin> {
        let result = crate::credentials::mail_login(store, settings, user, secret, protocol, peer)?;
        if let MailLogin::Accepted {
            account,
            method,
            new_network: true,
        } = &result
        {
            let how = match protocol {
                Protocol::Imap => format!("IMAP, {method}"),
                Protocol::Smtp => format!("SMTP, {method}"),
            };
            (self.notice)(store, account, peer, &how, &self.hostname)?;
        }
        Ok(result)
    }

    /// The failure counters, for the web's sign-in and the console.
    pub fn lockout(&self) -> Arc<Lockout> {
        self.lockout.clone()
    }

    /// The sign-in settings in force now.
    pub fn settings(&self) -> SignInSettings {
        self.lockout.settings()
    }

    /// Puts the console's sign-in settings in force (second factors and lockout counters).
    pub fn set_settings(&self, settings: SignInSettings) {
        self.lockout.set_settings(settings);
    }

    /// One mail login, from start to audit record. Blocking (a password hash): run it on the
    /// blocking pool. `admit` runs once the credentials are right, before anything is
    /// recorded, and may still refuse (IMAP's session bound). The caller sleeps `pause`
    /// before it answers a refusal.
    pub fn attempt<T>(
        &self,
        store: &Store,
        peer: &str,
        user: &str,
        secret: &str,
        protocol: Protocol,
        admit: impl FnOnce(&Account) -> Option<T>,
    ) -> LoginOutcome<T> {
        let attempted = user.trim().to_lowercase();
        let outcome = self.check(store, peer, user, &attempted, secret, protocol, admit);
        let action = match protocol {
            Protocol::Imap => "login.imap",
            Protocol::Smtp => "login.smtp",
        };
        let actor = Actor {
            name: attempted.clone(),
            peer: peer.to_string(),
        };
        let (result, detail) = match &outcome {
            LoginOutcome::Accepted { method, .. } => (AuditOutcome::Ok, format!("with {method}")),
            LoginOutcome::Refused {
                reason: LoginRefusal::Unavailable,
                ..
            } => (
                AuditOutcome::Failed,
                LoginRefusal::Unavailable.detail().to_string(),
            ),
            LoginOutcome::Refused { reason, .. } => {
                (AuditOutcome::Denied, reason.detail().to_string())
            }
        };
        let event = AuditEvent::new(&actor, action, format!("account {attempted}"))
            .outcome(result)
            .detail(detail);
        if let Err(error) = store.audit(event) {
            tracing::warn!(%error, "audit write failed");
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn check<T>(
        &self,
        store: &Store,
        peer: &str,
        user: &str,
        attempted: &str,
        secret: &str,
        protocol: Protocol,
        admit: impl FnOnce(&Account) -> Option<T>,
    ) -> LoginOutcome<T> {
        let refused = |reason| LoginOutcome::Refused {
            reason,
            pause: Duration::ZERO,
        };
        // Refused before any hash: a lockout, a failure's pause, or a full hashing queue.
        if let Err(refusal) = self.lockout.check(peer, attempted) {
            return refused(match refusal {
                Refusal::AddressLockedOut => LoginRefusal::AddressLockedOut,
                Refusal::AccountLockedOut => LoginRefusal::AccountLockedOut,
                Refusal::Paused => LoginRefusal::Paused,
            });
        }
        let Some(ticket) = self.lockout.admit_hash(peer, attempted) else {
            return refused(LoginRefusal::Busy);
        };
        let settings = self.settings();
        let checked = self.login_noticed(store, &settings, user, secret, protocol, peer);
        drop(ticket);
        let reason = match checked {
            Ok(MailLogin::Accepted {
                account, method, ..
            }) => match admit(&account) {
                Some(admitted) => {
                    self.lockout.succeeded(attempted);
                    return LoginOutcome::Accepted {
                        account,
                        method,
                        admitted,
                    };
                }
                None => LoginRefusal::SessionLimit,
            },
            Ok(MailLogin::Disabled(_)) => LoginRefusal::Disabled,
            Ok(MailLogin::Rejected {
                app_password_needed,
            }) => LoginRefusal::Invalid {
                app_password_needed,
            },
            Err(error) => {
                tracing::warn!(%error, "login check failed");
                LoginRefusal::Unavailable
            }
        };
        let pause = if reason.is_guess() {
            self.lockout.failed(peer, attempted)
        } else {
            Duration::ZERO
        };
        LoginOutcome::Refused { reason, pause }
    }
}
