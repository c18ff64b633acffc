//! Failed sign-ins counted per client address and per account, across the web, IMAP and
//! SMTP (one `Lockout` per server): each failure makes the next answer wait longer, and past
//! a bound the address or the account is locked out for a while. An admin can lift an
//! account's lockout.
//!
//! Addresses are counted by group (`address_group`): an IPv6 client owns a whole /64, so
//! counting each of its 2^64 addresses apart would count nothing. While an address or an
//! account is in the pause after a failure, a further sign-in is refused before any password
//! is hashed, and an account has at most `HASHES_PER_ACCOUNT_MAX` hashes in flight (an address
//! group `HASHES_PER_ADDRESS_MAX`): parallel connections buy at most that many guesses past
//! one check. A full failure map never drops a locked-out entry to make room.
//! Every password hash of a sign-in goes through the one bounded `HashQueue` held here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hashing::{HashQueue, PASSWORD_HASH_QUEUE_MAX};
use sealpost_types::SignInSettings;

/// Fixed bounds on logins and sessions, each with its unit. How many failures lock a client
/// out, and for how long, are sign-in settings (`SignInSettings`), which the console changes
/// live.
#[derive(Clone, Debug)]
pub struct LoginLimits {
    /// Sessions one account may have open at once.
    pub sessions_per_account_max: usize,
    /// The pause after the first failure; it doubles with each further one.
    pub failure_delay_ms: u64,
    /// The longest pause.
    pub failure_delay_max_ms: u64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            sessions_per_account_max: 100,
            failure_delay_ms: 250,
            failure_delay_max_ms: 8_000,
        }
    }
}

/// Most distinct address groups, and most accounts, whose failures are remembered; past it
/// the expired go, then the least recently failed (never all at once: a flood of new
/// addresses must not wipe the counts of an address already locked out).
const REMEMBERED_FAILURES_MAX: usize = 100_000;

/// The group of addresses counted as one client: an IPv4 address is itself (an IPv4-mapped
/// IPv6 address too), an IPv6 address is its /64, the block one site or host is given.
pub fn address_group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

/// The key an address is counted under: its group when it is an IP address (as every caller
/// passes it), else the text itself.
fn address_key(address: &str) -> String {
    match address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => address_group(ip).to_string(),
        Err(_) => address.to_string(),
    }
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// Until then a sign-in for this key is refused unhashed (the pause after a failure).
    paused_until: Instant,
}

/// Why a sign-in may not proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    AddressLockedOut,
    AccountLockedOut,
    /// A failure from this address, or for this account, is still in its pause.
    Paused,
}

/// The failure counters of one server.
pub struct Lockout {
    limits: LoginLimits,
    settings: std::sync::RwLock<SignInSettings>,
    by_address: Mutex<HashMap<String, Failures>>,
    by_account: Mutex<HashMap<String, Failures>>,
    /// Bound on each map's entries (`REMEMBERED_FAILURES_MAX`; smaller in tests).
    remembered_max: usize,
    hashes: Arc<HashQueue>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lockout {
    pub fn new(limits: LoginLimits, settings: SignInSettings) -> Self {
        Self {
            limits,
            settings: std::sync::RwLock::new(settings),
            by_address: Mutex::new(HashMap::new()),
            by_account: Mutex::new(HashMap::new()),
            remembered_max: REMEMBERED_FAILURES_MAX,
            hashes: HashQueue::new(PASSWORD_HASH_QUEUE_MAX),
        }
    }

    /// The one queue every sign-in's password hash goes through.
    pub fn hash_queue(&self) -> Arc<HashQueue> {
        self.hashes.clone()
    }

    /// A ticket to hash a password of `login` from `address`, within the queue's bound and
    /// the account's and address group's shares of it (`HashQueue::admit_for`); `None` at
    /// once when any is full.
    pub fn admit_hash(&self, address: &str, login: &str) -> Option<crate::HashTicket> {
        self.hashes
            .admit_for(&login.to_lowercase(), &address_key(address))
    }

    /// The fixed bounds.
    pub fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    /// The sign-in settings in force now.
    pub fn settings(&self) -> SignInSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts new sign-in settings in force (the console's); counts so far are kept.
    pub fn set_settings(&self, settings: SignInSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.settings().failure_window_ms)
    }

    fn recent(&self, map: &Mutex<HashMap<String, Failures>>, key: &str) -> u32 {
        let map = lock(map);
        map.get(key)
            .filter(|f| f.last.elapsed() < self.window())
            .map_or(0, |f| f.count)
    }

    fn paused(map: &Mutex<HashMap<String, Failures>>, key: &str) -> bool {
        lock(map)
            .get(key)
            .is_some_and(|f| f.paused_until > Instant::now())
    }

    /// Whether a sign-in from `address` for `login` may be tried at all. Answered without
    /// hashing anything, so it comes before any password is looked at.
    pub fn check(&self, address: &str, login: &str) -> Result<(), Refusal> {
        let (address, login) = (address_key(address), login.to_lowercase());
        if self.recent(&self.by_address, &address) >= self.settings().failures_per_address_max {
            return Err(Refusal::AddressLockedOut);
        }
        if self.recent(&self.by_account, &login) >= self.settings().failures_per_account_max {
            return Err(Refusal::AccountLockedOut);
        }
        if Self::paused(&self.by_address, &address) || Self::paused(&self.by_account, &login) {
            return Err(Refusal::Paused);
        }
        Ok(())
    }

    /// Records a failure and returns how long to pause before answering; until the pause
    /// ends, `check` refuses the address and the account.
    pub fn failed(&self, address: &str, login: &str) -> Duration {
        let window = self.window();
        let (address, login) = (address_key(address), login.to_lowercase());
        let mut count = 0;
        let (settings, limits) = (self.settings(), &self.limits);
        for (map, key, locked_at) in [
            (
                &self.by_address,
                &address,
                settings.failures_per_address_max,
            ),
            (&self.by_account, &login, settings.failures_per_account_max),
        ] {
            let mut map = lock(map);
            if !map.contains_key(key.as_str()) && map.len() >= self.remembered_max {
                make_room(&mut map, self.remembered_max, window, locked_at);
            }
            let now = Instant::now();
            let entry = map.entry(key.clone()).or_insert(Failures {
                count: 0,
                last: now,
                paused_until: now,
            });
            if entry.last.elapsed() >= window {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            count = count.max(entry.count);
        }
        let doublings = count.saturating_sub(1).min(16);
        let delay = limits.failure_delay_ms.saturating_mul(1 << doublings);
        let pause = Duration::from_millis(delay.min(limits.failure_delay_max_ms));
        // A pause never outlasts the memory of the failure that caused it.
        let until = Instant::now() + pause.min(window);
        for (map, key) in [(&self.by_address, &address), (&self.by_account, &login)] {
            if let Some(entry) = lock(map).get_mut(key.as_str()) {
                entry.paused_until = entry.paused_until.max(until);
            }
        }
        pause
    }

    /// A successful sign-in clears the account's failures (not the address's).
    pub fn succeeded(&self, login: &str) {
        lock(&self.by_account).remove(&login.to_lowercase());
    }

    /// Whether the account is locked out now.
    pub fn locked(&self, login: &str) -> bool {
        self.recent(&self.by_account, &login.to_lowercase())
            >= self.settings().failures_per_account_max
    }

    /// The accounts locked out now, with their failure counts, by name.
    pub fn locked_accounts(&self) -> Vec<(String, u32)> {
        let window = self.window();
        let mut locked: Vec<(String, u32)> = lock(&self.by_account)
            .iter()
            .filter(|(_, f)| {
                f.last.elapsed() < window && f.count >= self.settings().failures_per_account_max
            })
            .map(|(login, f)| (login.clone(), f.count))
            .collect();
        locked.sort();
        locked
    }

    /// How long the account's lockout lasts from now (its failures are forgotten then), if it
    /// is locked out.
    pub fn lock_ends_in(&self, login: &str) -> Option<Duration> {
        let login = login.to_lowercase();
        if !self.locked(&login) {
            return None;
        }
        let window = self.window();
        lock(&self.by_account)
            .get(&login)
            .map(|f| window.saturating_sub(f.last.elapsed()))
    }

    /// An admin lifts the account's lockout (and forgets its failures); true if it was locked.
    pub fn lift(&self, login: &str) -> bool {
        let was = self.locked(login);
        lock(&self.by_account).remove(&login.to_lowercase());
        was
    }
}

/// Frees room in a full map: the expired entries first, then the least recently failed
/// eighth (one sort per eighth of the bound, not one per insertion).
fn make_room(map: &mut HashMap<String, Failures>, max: usize, window: Duration, locked_at: u32) {
    map.retain(|_, f| f.last.elapsed() < window);
    if map.len() < max {
        return;
    }
    let keep = max - (max / 8).max(1);
    // Locked-out entries go last (a flood of fresh addresses must not push a locked-out one
    // out and so lift its lockout); among the rest, the least recently failed first.
    let mut by_age: Vec<(bool, Instant, String)> = map
        .iter()
        .map(|(key, f)| (f.count >= locked_at, f.last, key.clone()))
        .collect();
    by_age.sort_unstable();
    let by_age = by_age.into_iter().map(|(_, last, key)| (last, key));
    let surplus = map.len().saturating_sub(keep);
    for (_, key) in by_age.take(surplus) {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_grow_the_delay_then_lock_out_until_lifted() {
        let lockout = Lockout::new(
            LoginLimits {
                sessions_per_account_max: 2,
                failure_delay_ms: 100,
                failure_delay_max_ms: 300,
            },
            SignInSettings {
                failures_per_address_max: 5,
                failures_per_account_max: 3,
                failure_window_ms: 60_000,
                ..SignInSettings::default()
            },
        );
        assert_eq!(lockout.check("a", "alice"), Ok(()));
        assert_eq!(lockout.failed("a", "alice"), Duration::from_millis(100));
        assert_eq!(lockout.failed("a", "Alice"), Duration::from_millis(200));
        assert_eq!(
            lockout.failed("b", "alice"),
            Duration::from_millis(300),
            "capped"
        );
        assert_eq!(
            lockout.check("c", "ALICE"),
            Err(Refusal::AccountLockedOut),
            "from any address"
        );
        assert_eq!(lockout.check("d", "bob"), Ok(()));
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
        let ends = lockout.lock_ends_in("Carol").expect("carol is locked out");
        assert!(
            ends > Duration::ZERO
                && ends <= Duration::from_millis(lockout.settings().failure_window_ms)
        );
        assert_eq!(lockout.lock_ends_in("dave"), None);
        assert_eq!(lockout.check("c", "alice"), Ok(()), "lifted");
        assert!(!lockout.lift("alice"), "nothing left to lift");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let group = |text: &str| address_group(text.parse().unwrap()).to_string();
        assert_eq!(group("192.0.2.7"), "192.0.2.7");
        assert_eq!(group("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(group("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(group("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_eq!(group("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(group("::1"), "::");

        let lockout = Lockout::new(
            LoginLimits {
                failure_delay_ms: 0,
                ..LoginLimits::default()
            },
            SignInSettings {
                failures_per_address_max: 2,
                ..SignInSettings::default()
            },
        );
        lockout.failed("2001:db8:1:2::1", "alice");
        lockout.failed("2001:db8:1:2:ffff::9", "bob");
        assert_eq!(
            lockout.check("2001:db8:1:2:1234::5", "carol"),
            Err(Refusal::AddressLockedOut),
            "one /64, one counter"
        );
        assert_eq!(
            lockout.check("2001:db8:1:3::1", "carol"),
            Ok(()),
            "the next /64 is another client"
        );
        lockout.failed("::ffff:198.51.100.4", "dave");
        lockout.failed("198.51.100.4", "erin");
        assert_eq!(
            lockout.check("198.51.100.4", "frank"),
            Err(Refusal::AddressLockedOut)
        );
    }

    #[test]
    fn a_full_map_drops_its_oldest_entries_and_keeps_a_locked_out_address() {
        let mut lockout = Lockout::new(
            LoginLimits {
                failure_delay_ms: 0,
                ..LoginLimits::default()
            },
            SignInSettings {
                failures_per_address_max: 3,
                ..SignInSettings::default()
            },
        );
        lockout.remembered_max = 16;
        for _ in 0..3 {
            lockout.failed("203.0.113.1", "target");
        }
        assert_eq!(
            lockout.check("203.0.113.1", "x"),
            Err(Refusal::AddressLockedOut)
        );
        // The attacker's flood of fresh addresses, each failure newer than the lockout's; the
        // locked-out address is refused by `check` (as the sessions do) and fails no more, so
        // it is the oldest entry: kept because it is locked out.
        for i in 0..40u32 {
            lockout.failed(&format!("198.51.100.{i}"), &format!("guess{i}"));
            assert_eq!(
                lockout.check("203.0.113.1", "target"),
                Err(Refusal::AddressLockedOut)
            );
        }
        assert!(lock(&lockout.by_address).len() <= 16, "bounded");
        assert_eq!(
            lockout.check("203.0.113.1", "x"),
            Err(Refusal::AddressLockedOut),
            "still locked out after the map filled"
        );
        assert_eq!(
            lockout.recent(&lockout.by_address, "198.51.100.39"),
            1,
            "the newest kept"
        );
        assert_eq!(
            lockout.recent(&lockout.by_address, "198.51.100.0"),
            0,
            "the oldest dropped"
        );
    }

    #[test]
    fn a_sign_in_during_the_pause_is_refused_without_hashing() {
        let lockout = Lockout::new(
            LoginLimits {
                failure_delay_ms: 60_000,
                failure_delay_max_ms: 60_000,
                ..LoginLimits::default()
            },
            SignInSettings {
                ..SignInSettings::default()
            },
        );
        assert_eq!(
            lockout.failed("192.0.2.1", "alice"),
            Duration::from_secs(60)
        );
        assert_eq!(
            lockout.check("192.0.2.1", "bob"),
            Err(Refusal::Paused),
            "the address"
        );
        assert_eq!(
            lockout.check("192.0.2.2", "ALICE"),
            Err(Refusal::Paused),
            "the account"
        );
        assert_eq!(lockout.check("192.0.2.2", "bob"), Ok(()));
        let short = Lockout::new(
            LoginLimits {
                failure_delay_ms: 20,
                ..LoginLimits::default()
            },
            SignInSettings {
                ..SignInSettings::default()
            },
        );
        short.failed("192.0.2.1", "alice");
        let deadline = Instant::now() + Duration::from_secs(5);
        while short.check("192.0.2.1", "alice").is_err() {
            assert!(Instant::now() < deadline, "the pause ends");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_lockout_ends_with_its_window() {
        let lockout = Lockout::new(
            LoginLimits {
                ..LoginLimits::default()
            },
            SignInSettings {
                failures_per_account_max: 1,
                failure_window_ms: 50,
                ..SignInSettings::default()
            },
        );
        lockout.failed("a", "alice");
        assert!(lockout.locked("alice"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!lockout.locked("alice"));
        assert_eq!(lockout.check("a", "alice"), Ok(()));
    }
}
