//! One bounded queue for the password hashes of every sign-in (IMAP, SMTP, the web, the
//! pickup portal). An argon2id hash costs 19 MiB and tens of milliseconds of a core; the store
//! computes at most `PASSWORD_HASH_WORKERS` at once and the rest wait. Without a bound on the
//! waiting, an attacker's burst of logins queued every user's login behind it (and held a
//! blocking thread each). Here at most `PASSWORD_HASH_WORKERS` + `queue_max` sign-ins hold a
//! ticket; one more is refused at once, and the protocol says "try later".
//!
//! ```
//! let queue = sealpost_auth::HashQueue::new(1);
//! let held: Vec<_> = (0..sealpost_auth::PASSWORD_HASH_WORKERS + 1)
//!     .map(|_| queue.admit().unwrap())
//!     .collect();
//! assert!(queue.admit().is_none(), "full: refused at once");
//! drop(held);
//! assert!(queue.admit().is_some());
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Password hashes computed at once: the store's own bound, whose waiters this queue counts.
pub const PASSWORD_HASH_WORKERS: usize = sealpost_storage::PASSWORD_HASHES_CONCURRENT_MAX;

/// Default sign-ins that may wait for a hashing worker (`[limits] password_hash_queue_max`).
/// At ~20 ms a hash on two workers, the last of them waits about a third of a second.
pub const PASSWORD_HASH_QUEUE_MAX: usize = 32;

/// Tickets one account may hold at once (a mail client opens a few connections at once; an
/// account's owner looping their own password cannot take the whole queue, and a burst of
/// parallel guesses for one account gets at most this many past one lockout check).
pub const HASHES_PER_ACCOUNT_MAX: usize = 4;
/// Tickets one client address group (an IPv4 address, an IPv6 /64) may hold at once.
pub const HASHES_PER_ADDRESS_MAX: usize = 12;

/// The server's one queue of sign-ins waiting for, or computing, a password hash.
#[derive(Debug)]
pub struct HashQueue {
    /// Tickets held per account and per address group (`HASHES_PER_ACCOUNT_MAX`,
    /// `HASHES_PER_ADDRESS_MAX`); an entry goes when its last ticket does.
    by_key: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Tickets held now (hashing or waiting).
    held: AtomicUsize,
    /// Sign-ins that may wait beyond the workers.
    queue_max: AtomicUsize,
    /// Tickets given out since start: every hash a sign-in computed took one.
    admitted: AtomicU64,
    /// Sign-ins refused because the queue was full.
    refused: AtomicU64,
}

/// A place in the queue; the hash is computed while it is held, and it is given back when
/// dropped (also when the hashing task panics).
#[derive(Debug)]
pub struct HashTicket {
    queue: Arc<HashQueue>,
    /// The account and address keys this ticket counts against.
    keys: Vec<String>,
}

impl Drop for HashTicket {
    fn drop(&mut self) {
        self.queue.release(&self.keys);
        self.queue.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashQueue {
    /// A queue where `queue_max` sign-ins may wait behind the workers.
    pub fn new(queue_max: usize) -> Arc<Self> {
        Arc::new(Self {
            by_key: std::sync::Mutex::new(std::collections::HashMap::new()),
            held: AtomicUsize::new(0),
            queue_max: AtomicUsize::new(queue_max),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Sets the waiting room (`[limits] password_hash_queue_max`); tickets held are kept.
    pub fn set_queue_max(&self, queue_max: usize) {
        self.queue_max.store(queue_max, Ordering::Release);
    }

    /// The waiting room's size.
    pub fn queue_max(&self) -> usize {
        self.queue_max.load(Ordering::Acquire)
    }

    /// A ticket to hash one password, or `None` at once when workers and waiting room are
    /// all taken.
    pub fn admit(self: &Arc<Self>) -> Option<HashTicket> {
        let capacity = PASSWORD_HASH_WORKERS.saturating_add(self.queue_max());
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < capacity).then_some(held + 1)
            });
        if taken.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Some(HashTicket {
            queue: self.clone(),
            keys: Vec::new(),
        })
    }

    /// `admit` for a sign-in of `account` from `address` (an address group's key): also
    /// `None` when that account holds `HASHES_PER_ACCOUNT_MAX` tickets or that address
    /// `HASHES_PER_ADDRESS_MAX`.
    pub fn admit_for(self: &Arc<Self>, account: &str, address: &str) -> Option<HashTicket> {
        let keys = vec![format!("account {account}"), format!("address {address}")];
        let bounds = [HASHES_PER_ACCOUNT_MAX, HASHES_PER_ADDRESS_MAX];
        {
            let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
            if keys
                .iter()
                .zip(bounds)
                .any(|(key, max)| by_key.get(key).copied().unwrap_or(0) >= max)
            {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            for key in &keys {
                *by_key.entry(key.clone()).or_insert(0) += 1;
            }
        }
        match self.admit() {
            Some(mut ticket) => {
                ticket.keys = keys;
                Some(ticket)
            }
            None => {
                self.release(&keys);
                None
            }
        }
    }

    /// Gives back the account and address shares `keys` counted.
    fn release(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if let Some(count) = by_key.get_mut(key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    by_key.remove(key);
                }
            }
        }
    }

    /// Tickets held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Tickets given out since start (each sign-in that went on to hash took one).
    pub fn admitted_total(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Sign-ins refused because the queue was full, since start.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_account_or_one_address_cannot_hold_the_whole_queue() {
        let queue = HashQueue::new(PASSWORD_HASH_QUEUE_MAX);
        let mine: Vec<HashTicket> = (0..HASHES_PER_ACCOUNT_MAX)
            .map(|i| queue.admit_for("alice", &format!("192.0.2.{i}")).unwrap())
            .collect();
        assert!(
            queue.admit_for("alice", "198.51.100.1").is_none(),
            "alice holds her share"
        );
        assert!(
            queue.admit_for("bob", "198.51.100.1").is_some(),
            "bob still gets in"
        );
        let from_one: Vec<HashTicket> = (0..HASHES_PER_ADDRESS_MAX)
            .map(|i| {
                queue
                    .admit_for(&format!("guess{i}"), "203.0.113.9")
                    .unwrap()
            })
            .collect();
        assert!(
            queue.admit_for("carol", "203.0.113.9").is_none(),
            "the address holds its share"
        );
        assert!(queue.admit_for("carol", "203.0.113.10").is_some());
        drop(mine);
        assert!(
            queue.admit_for("alice", "198.51.100.1").is_some(),
            "alice's tickets given back"
        );
        drop(from_one);
        assert!(
            queue.by_key.lock().unwrap().is_empty(),
            "no key outlives its tickets"
        );
        assert_eq!(queue.held(), 0);
        // A full queue refuses a keyed sign-in too, and keeps no count for it.
        let all: Vec<HashTicket> = (0..PASSWORD_HASH_WORKERS + PASSWORD_HASH_QUEUE_MAX)
            .map(|_| queue.admit().unwrap())
            .collect();
        assert!(queue.admit_for("dave", "192.0.2.77").is_none());
        assert!(queue.by_key.lock().unwrap().is_empty());
        assert_eq!(queue.held(), all.len());
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_frees_places_as_tickets_drop() {
        let queue = HashQueue::new(2);
        let mut held: Vec<HashTicket> = (0..PASSWORD_HASH_WORKERS + 2)
            .map(|_| queue.admit().unwrap())
            .collect();
        assert_eq!(queue.held(), PASSWORD_HASH_WORKERS + 2);
        assert!(queue.admit().is_none());
        assert_eq!(queue.refused_total(), 1);
        held.pop();
        assert!(queue.admit().is_some(), "a place freed");
        queue.set_queue_max(0);
        assert!(queue.admit().is_none(), "a smaller room");
        drop(held);
        assert_eq!(queue.held(), 0);
        assert_eq!(queue.admitted_total(), PASSWORD_HASH_WORKERS as u64 + 3);
    }
}
