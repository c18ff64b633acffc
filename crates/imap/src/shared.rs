//! State shared by every session of a server: open sessions per account, and recent login
//! failures per client address and per account (growing delays, then a lockout).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealpost_storage::AccountId;

/// Bounds on logins and sessions, each with its unit.
#[derive(Clone, Debug)]
pub struct LoginLimits {
    /// Sessions one account may have open at once.
    pub sessions_per_account_max: usize,
    /// Failed logins from one address within the window before that address is locked out.
    pub failures_per_address_max: u32,
    /// Failed logins for one account within the window before the account is locked out.
    pub failures_per_account_max: u32,
    /// How long failures are remembered, and how long a lockout lasts.
    pub failure_window_ms: u64,
    /// The pause after the first failure; it doubles with each further one.
    pub failure_delay_ms: u64,
    /// The longest pause.
    pub failure_delay_max_ms: u64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            sessions_per_account_max: 100,
            failures_per_address_max: 20,
            failures_per_account_max: 10,
            failure_window_ms: 15 * 60 * 1000,
            failure_delay_ms: 250,
            failure_delay_max_ms: 8_000,
        }
    }
}

/// Most distinct addresses and accounts whose failures are remembered; the oldest go first.
const REMEMBERED_FAILURES_MAX: usize = 100_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Shared by the sessions of one server.
pub struct ImapShared {
    limits: LoginLimits,
    sessions: Mutex<HashMap<AccountId, usize>>,
    by_address: Mutex<HashMap<String, Failures>>,
    by_account: Mutex<HashMap<String, Failures>>,
}

/// Why a login may not proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    AddressLockedOut,
    AccountLockedOut,
}

/// One open session of an account; counted until dropped.
pub(crate) struct SessionSlot {
    shared: Arc<ImapShared>,
    account: AccountId,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = sessions.get_mut(&self.account) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                sessions.remove(&self.account);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ImapShared {
    pub fn new(limits: LoginLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            sessions: Mutex::new(HashMap::new()),
            by_address: Mutex::new(HashMap::new()),
            by_account: Mutex::new(HashMap::new()),
        })
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.limits.failure_window_ms)
    }

    fn recent(&self, map: &Mutex<HashMap<String, Failures>>, key: &str) -> u32 {
        let map = lock(map);
        map.get(key)
            .filter(|f| f.last.elapsed() < self.window())
            .map_or(0, |f| f.count)
    }

    /// Whether a login from `address` for `login` may be tried at all.
    pub fn check(&self, address: &str, login: &str) -> Result<(), Refusal> {
        if self.recent(&self.by_address, address) >= self.limits.failures_per_address_max {
            return Err(Refusal::AddressLockedOut);
        }
        if self.recent(&self.by_account, login) >= self.limits.failures_per_account_max {
            return Err(Refusal::AccountLockedOut);
        }
        Ok(())
    }

    /// Records a failure and returns how long to pause before answering.
    pub fn failed(&self, address: &str, login: &str) -> Duration {
        let window = self.window();
        let mut count = 0;
        for (map, key) in [(&self.by_address, address), (&self.by_account, login)] {
            let mut map = lock(map);
            if map.len() >= REMEMBERED_FAILURES_MAX {
                map.retain(|_, f| f.last.elapsed() < window);
                if map.len() >= REMEMBERED_FAILURES_MAX {
                    map.clear();
                }
            }
            let entry = map.entry(key.to_string()).or_insert(Failures {
                count: 0,
                last: Instant::now(),
            });
            if entry.last.elapsed() >= window {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = Instant::now();
            count = count.max(entry.count);
        }
        let doublings = count.saturating_sub(1).min(16);
        let delay = self.limits.failure_delay_ms.saturating_mul(1 << doublings);
        Duration::from_millis(delay.min(self.limits.failure_delay_max_ms))
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, login: &str) {
        lock(&self.by_account).remove(login);
    }

    /// Takes a session slot for the account, or `None` when it has too many open.
    pub(crate) fn open_session(self: &Arc<Self>, account: AccountId) -> Option<SessionSlot> {
        let mut sessions = lock(&self.sessions);
        let count = sessions.entry(account).or_insert(0);
        if *count >= self.limits.sessions_per_account_max {
            return None;
        }
        *count += 1;
        Some(SessionSlot {
            shared: self.clone(),
            account,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_grow_the_delay_then_lock_out_and_sessions_are_counted() {
        let shared = ImapShared::new(LoginLimits {
            sessions_per_account_max: 2,
            failures_per_address_max: 5,
            failures_per_account_max: 3,
            failure_window_ms: 60_000,
            failure_delay_ms: 100,
            failure_delay_max_ms: 300,
        });
        assert_eq!(shared.check("a", "alice"), Ok(()));
        assert_eq!(shared.failed("a", "alice"), Duration::from_millis(100));
        assert_eq!(shared.failed("a", "alice"), Duration::from_millis(200));
        assert_eq!(shared.failed("b", "alice"), Duration::from_millis(300), "capped");
        assert_eq!(
            shared.check("c", "alice"),
            Err(Refusal::AccountLockedOut),
            "from any address"
        );
        assert_eq!(shared.check("a", "bob"), Ok(()));
        for _ in 0..3 {
            shared.failed("a", "carol");
        }
        assert_eq!(
            shared.check("a", "dave"),
            Err(Refusal::AddressLockedOut),
            "five failures from a"
        );

        let account = AccountId(7);
        let first = shared.open_session(account);
        let second = shared.open_session(account);
        assert!(first.is_some() && second.is_some());
        assert!(shared.open_session(account).is_none());
        drop(first);
        assert!(shared.open_session(account).is_some());
    }
}
