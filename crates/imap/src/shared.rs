//! State shared by every session of a server: open sessions per account, command figures,
//! and the server's mail-login gate (`sealpost_auth::MailLogins`, shared with SMTP).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealpost_auth::{LoginLimits, MailLogins, SignInSettings};
use sealpost_storage::AccountId;

/// Shared by the sessions of one server.
pub struct ImapShared {
    logins: Arc<MailLogins>,
    /// Open sessions per account, and the signal that ends them all (an admin disabled the
    /// account or ended its sessions).
    sessions: Mutex<HashMap<AccountId, Sessions>>,
    /// Numbers each account's set of sessions, so that a session ended with its set does not
    /// count against the next.
    generations: std::sync::atomic::AtomicU64,
    /// Commands run and how long they took, by command, for /metrics.
    commands: Mutex<std::collections::BTreeMap<&'static str, CommandStats>>,
}

/// Upper bounds of the command latency histogram's buckets, in seconds.
pub const COMMAND_SECONDS_BUCKETS: [f64; 6] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5];

/// How often one command ran and how long it took.
#[derive(Clone, Debug, Default)]
pub struct CommandStats {
    pub count: u64,
    /// Runs at or under each bound of `COMMAND_SECONDS_BUCKETS`.
    pub buckets: [u64; 6],
    pub seconds: f64,
}

struct Sessions {
    count: usize,
    ender: tokio::sync::watch::Sender<bool>,
    generation: u64,
}

/// One open session of an account; counted until dropped.
pub(crate) struct SessionSlot {
    shared: Arc<ImapShared>,
    account: AccountId,
    generation: u64,
    /// Turns true when the account's sessions are to end.
    pub(crate) ended: tokio::sync::watch::Receiver<bool>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut sessions = lock(&self.shared.sessions);
        if let Some(set) = sessions.get_mut(&self.account) {
            if set.generation != self.generation {
                return;
            }
            set.count = set.count.saturating_sub(1);
            if set.count == 0 {
                sessions.remove(&self.account);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ImapShared {
    /// Sessions with a gate of their own that writes no new-network notice: for tests (the
    /// server builds one `MailLogins` for IMAP and SMTP and uses `with_logins`). `settings` say
    /// whether the account password opens a mail session and when failures lock a client
    /// out; `hostname` names this server.
    pub fn new(limits: LoginLimits, settings: SignInSettings, hostname: &str) -> Arc<Self> {
        Self::with_logins(MailLogins::new(
            limits,
            settings,
            hostname,
            MailLogins::no_notice(),
        ))
    }

    /// Sessions that pass `logins`, the server's one mail-login gate.
    pub fn with_logins(logins: Arc<MailLogins>) -> Arc<Self> {
        Arc::new(Self {
            logins,
            sessions: Mutex::new(HashMap::new()),
            generations: std::sync::atomic::AtomicU64::new(0),
            commands: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// The mail-login gate the sessions pass.
    pub fn logins(&self) -> Arc<MailLogins> {
        self.logins.clone()
    }

    /// Takes a session slot for the account, or `None` when it has too many open.
    pub(crate) fn open_session(self: &Arc<Self>, account: AccountId) -> Option<SessionSlot> {
        let mut sessions = lock(&self.sessions);
        let set = sessions.entry(account).or_insert_with(|| Sessions {
            count: 0,
            ender: tokio::sync::watch::channel(false).0,
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        if set.count >= self.logins.lockout().limits().sessions_per_account_max {
            return None;
        }
        set.count += 1;
        Some(SessionSlot {
            shared: self.clone(),
            account,
            generation: set.generation,
            ended: set.ender.subscribe(),
        })
    }

    /// Counts one command and how long it ran.
    pub(crate) fn record_command(&self, name: &'static str, took: Duration) {
        let seconds = took.as_secs_f64();
        let mut commands = lock(&self.commands);
        let stats = commands.entry(name).or_default();
        stats.count += 1;
        stats.seconds += seconds;
        for (bound, bucket) in COMMAND_SECONDS_BUCKETS.iter().zip(stats.buckets.iter_mut()) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
    }

    /// Every command's figures so far, by name.
    pub fn command_stats(&self) -> Vec<(&'static str, CommandStats)> {
        lock(&self.commands)
            .iter()
            .map(|(name, stats)| (*name, stats.clone()))
            .collect()
    }

    /// Ends every open session of the account (each says BYE at once, in IDLE too); returns
    /// how many there were. Sessions opened afterwards are not affected.
    pub fn end_sessions(&self, account: AccountId) -> usize {
        let mut sessions = lock(&self.sessions);
        match sessions.remove(&account) {
            Some(set) => {
                let _ = set.ender.send(true);
                set.count
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_per_account() {
        let shared = ImapShared::new(
            LoginLimits {
                sessions_per_account_max: 2,
                ..LoginLimits::default()
            },
            SignInSettings::default(),
            "localhost",
        );
        let account = AccountId(7);
        let first = shared.open_session(account);
        let second = shared.open_session(account);
        assert!(!*first.as_ref().unwrap().ended.borrow());
        assert!(first.is_some() && second.is_some());
        assert!(shared.open_session(account).is_none());
        drop(first);
        assert!(shared.open_session(account).is_some());
        assert!(shared.open_session(AccountId(8)).is_some());
    }

    #[test]
    fn ending_an_accounts_sessions_signals_each_and_frees_its_slots() {
        let shared = ImapShared::new(
            LoginLimits {
                sessions_per_account_max: 2,
                ..LoginLimits::default()
            },
            SignInSettings::default(),
            "localhost",
        );
        let account = AccountId(7);
        let first = shared.open_session(account).unwrap();
        let second = shared.open_session(account).unwrap();
        let other = shared.open_session(AccountId(8)).unwrap();
        assert_eq!(shared.end_sessions(account), 2);
        assert!(*first.ended.borrow() && *second.ended.borrow());
        assert!(!*other.ended.borrow(), "another account's session goes on");
        // New sessions count afresh; the ended ones leaving does not free their slots twice.
        let third = shared.open_session(account).unwrap();
        let _fourth = shared.open_session(account).unwrap();
        drop((first, second));
        assert!(shared.open_session(account).is_none());
        assert!(!*third.ended.borrow());
        assert_eq!(shared.end_sessions(AccountId(9)), 0);
    }
}
