//! Failed sign-ins counted per client address and per account, across the web, IMAP and
//! SMTP (one `Lockout` per server): each failure makes the next answer wait longer, and past
//! a bound the address or the account is locked out for a while. An admin can lift an
//! account's lockout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Why a sign-in may not proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    AddressLockedOut,
    AccountLockedOut,
}

/// The failure counters of one server.
pub struct Lockout {
    limits: std::sync::RwLock<LoginLimits>,
    by_address: Mutex<HashMap<String, Failures>>,
    by_account: Mutex<HashMap<String, Failures>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lockout {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits: std::sync::RwLock::new(limits),
            by_address: Mutex::new(HashMap::new()),
            by_account: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force now.
    pub fn limits(&self) -> LoginLimits {
        self.limits.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts new limits in force (the console's sign-in settings); counts so far are kept.
    pub fn set_limits(&self, limits: LoginLimits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.limits().failure_window_ms)
    }

    fn recent(&self, map: &Mutex<HashMap<String, Failures>>, key: &str) -> u32 {
        let map = lock(map);
        map.get(key)
            .filter(|f| f.last.elapsed() < self.window())
            .map_or(0, |f| f.count)
    }

    /// Whether a sign-in from `address` for `login` may be tried at all.
    pub fn check(&self, address: &str, login: &str) -> Result<(), Refusal> {
        if self.recent(&self.by_address, address) >= self.limits().failures_per_address_max {
            return Err(Refusal::AddressLockedOut);
        }
        if self.recent(&self.by_account, &login.to_lowercase()) >= self.limits().failures_per_account_max {
            return Err(Refusal::AccountLockedOut);
        }
        Ok(())
    }

    /// Records a failure and returns how long to pause before answering.
    pub fn failed(&self, address: &str, login: &str) -> Duration {
        let window = self.window();
        let mut count = 0;
        let login = login.to_lowercase();
        for (map, key) in [(&self.by_address, address), (&self.by_account, login.as_str())] {
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
        let limits = self.limits();
        let delay = limits.failure_delay_ms.saturating_mul(1 << doublings);
        Duration::from_millis(delay.min(limits.failure_delay_max_ms))
    }

    /// A successful sign-in clears the account's failures (not the address's).
    pub fn succeeded(&self, login: &str) {
        lock(&self.by_account).remove(&login.to_lowercase());
    }

    /// Whether the account is locked out now.
    pub fn locked(&self, login: &str) -> bool {
        self.recent(&self.by_account, &login.to_lowercase()) >= self.limits().failures_per_account_max
    }

    /// The accounts locked out now, with their failure counts, by name.
    pub fn locked_accounts(&self) -> Vec<(String, u32)> {
        let window = self.window();
        let mut locked: Vec<(String, u32)> = lock(&self.by_account)
            .iter()
            .filter(|(_, f)| f.last.elapsed() < window && f.count >= self.limits().failures_per_account_max)
            .map(|(login, f)| (login.clone(), f.count))
            .collect();
        locked.sort();
        locked
    }

    /// An admin lifts the account's lockout (and forgets its failures); true if it was locked.
    pub fn lift(&self, login: &str) -> bool {
        let was = self.locked(login);
        lock(&self.by_account).remove(&login.to_lowercase());
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_grow_the_delay_then_lock_out_until_lifted() {
        let lockout = Lockout::new(LoginLimits {
            sessions_per_account_max: 2,
            failures_per_address_max: 5,
            failures_per_account_max: 3,
            failure_window_ms: 60_000,
            failure_delay_ms: 100,
            failure_delay_max_ms: 300,
        });
        assert_eq!(lockout.check("a", "alice"), Ok(()));
        assert_eq!(lockout.failed("a", "alice"), Duration::from_millis(100));
        assert_eq!(lockout.failed("a", "Alice"), Duration::from_millis(200));
        assert_eq!(lockout.failed("b", "alice"), Duration::from_millis(300), "capped");
        assert_eq!(
            lockout.check("c", "ALICE"),
            Err(Refusal::AccountLockedOut),
            "from any address"
        );
        assert_eq!(lockout.check("a", "bob"), Ok(()));
        for _ in 0..3 {
            lockout.failed("a", "carol");
        }
        assert_eq!(
            lockout.check("a", "dave"),
            Err(Refusal::AddressLockedOut),
            "five failures from a"
        );
        assert_eq!(
            lockout.locked_accounts(),
            vec![("alice".to_string(), 3), ("carol".to_string(), 3)]
        );
        assert!(lockout.lift("alice"));
        assert_eq!(lockout.locked_accounts(), vec![("carol".to_string(), 3)]);
        assert_eq!(lockout.check("c", "alice"), Ok(()), "lifted");
        assert!(!lockout.lift("alice"), "nothing left to lift");
    }

    #[test]
    fn a_lockout_ends_with_its_window() {
        let lockout = Lockout::new(LoginLimits {
            failures_per_account_max: 1,
            failure_window_ms: 50,
            ..LoginLimits::default()
        });
        lockout.failed("a", "alice");
        assert!(lockout.locked("alice"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!lockout.locked("alice"));
        assert_eq!(lockout.check("a", "alice"), Ok(()));
    }
}
