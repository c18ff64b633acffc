//! State shared by the SMTP sessions of a server: the mail-login gate (the one IMAP passes too,
//! so a password guesser cannot switch protocols), messages submitted per account per hour,
//! and the address aliases.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealpost_auth::MailLogins;
use sealpost_storage::AccountId;

/// Extra addresses: each alias delivers to the accounts listed, and those accounts may send
/// as it. `postmaster@` and `abuse@` of the primary domain always exist and go to the admins
/// unless listed here.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    /// Normalised alias address → normalised account addresses.
    pub map: BTreeMap<String, Vec<String>>,
}

impl Aliases {
    pub fn targets(&self, address: &str) -> Option<&[String]> {
        self.map.get(address).map(Vec::as_slice)
    }

    /// Whether `account` (its address) may send as `address`.
    pub fn may_send_as(&self, account: &str, address: &str) -> bool {
        account == address
            || self
                .targets(address)
                .is_some_and(|t| t.iter().any(|a| a == account))
    }
}

/// Most accounts whose hourly submissions are remembered; the oldest windows go first.
const REMEMBERED_SENDERS_MAX: usize = 100_000;
const HOUR: Duration = Duration::from_secs(3600);

/// Shared by the sessions of one server.
pub struct SmtpShared {
    pub(crate) logins: Arc<MailLogins>,
    /// The aliases of `sealpost.toml`, fixed, and those in force: these and the console's.
    configured: Aliases,
    aliases: std::sync::RwLock<Aliases>,
    /// SPF, DKIM and DMARC for inbound mail; `None` only where no DNS is configured (tests of
    /// the state machine), and then no Authentication-Results field is added.
    pub(crate) inbound_auth: Option<crate::InboundAuth>,
    /// Woken when a submission queued mail for outside recipients.
    pub(crate) queue_waker: Option<Arc<tokio::sync::Notify>>,
    /// Who may send outside, and how each outside recipient is reached (the version in force).
    pub(crate) policy: Arc<sealpost_policy::LivePolicy>,
    submitted: Mutex<HashMap<AccountId, (Instant, u32)>>,
    /// Whole messages accepted and refused at the end of DATA or from the web, for /metrics.
    pub(crate) accepted: std::sync::atomic::AtomicU64,
    pub(crate) refused: std::sync::atomic::AtomicU64,
    /// Messages through `submit::accept`'s edits, and the whole-message copies and parses
    /// made on the way (`pipeline_counts`).
    pipeline: [std::sync::atomic::AtomicU64; 3],
    /// Inbound scoring (rspamd) and impersonation warnings, when configured.
    spam: std::sync::RwLock<Option<Arc<crate::spam::Spam>>>,
    /// Staff display names (lower-cased), refreshed every `STAFF_NAMES_REFRESH`.
    staff_names: Mutex<(Option<Instant>, Arc<std::collections::HashSet<String>>)>,
}

/// How long the staff display names are reused before they are read again.
const STAFF_NAMES_REFRESH: Duration = Duration::from_secs(60);

impl SmtpShared {
    pub fn new(
        logins: Arc<MailLogins>,
        aliases: Aliases,
        inbound_auth: Option<crate::InboundAuth>,
        queue_waker: Option<Arc<tokio::sync::Notify>>,
        policy: Arc<sealpost_policy::LivePolicy>,
    ) -> Arc<Self> {
        Arc::new(Self {
            logins,
            configured: aliases.clone(),
            aliases: std::sync::RwLock::new(aliases),
            inbound_auth,
            queue_waker,
            policy,
            submitted: Mutex::new(HashMap::new()),
            accepted: std::sync::atomic::AtomicU64::new(0),
            refused: std::sync::atomic::AtomicU64::new(0),
            pipeline: Default::default(),
            spam: std::sync::RwLock::new(None),
            staff_names: Mutex::new((None, Arc::new(std::collections::HashSet::new()))),
        })
    }

    /// Turns on inbound scoring and impersonation warnings.
    pub fn set_spam(&self, spam: Arc<crate::spam::Spam>) {
        *self.spam.write().unwrap_or_else(|e| e.into_inner()) = Some(spam);
    }

    pub fn spam(&self) -> Option<Arc<crate::spam::Spam>> {
        self.spam.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The staff's display names, lower-cased (read from the directory at most once a minute).
    pub(crate) fn staff_names(
        &self,
        store: &sealpost_storage::Store,
    ) -> Arc<std::collections::HashSet<String>> {
        let mut cached = self.staff_names.lock().unwrap_or_else(|e| e.into_inner());
        if cached
            .0
            .is_none_or(|at| at.elapsed() >= STAFF_NAMES_REFRESH)
        {
            if let Ok(accounts) = store.list_accounts() {
                let names = accounts
                    .iter()
                    .map(|a| a.display_name.trim().to_lowercase())
                    .filter(|n| n.contains(' '))
                    .collect();
                *cached = (Some(Instant::now()), Arc::new(names));
            }
        }
        cached.1.clone()
    }

    /// The aliases in force.
    pub(crate) fn aliases(&self) -> Aliases {
        self.aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts the console's aliases (alias → account addresses) in force beside those of
    /// `sealpost.toml`, which keep their targets and gain the console's.
    pub fn set_console_aliases(&self, console: &BTreeMap<String, Vec<String>>) {
        let mut merged = self.configured.clone();
        for (alias, targets) in console {
            let entry = merged.map.entry(alias.clone()).or_default();
            for target in targets {
                if !entry.contains(target) {
                    entry.push(target.clone());
                }
            }
        }
        *self.aliases.write().unwrap_or_else(|e| e.into_inner()) = merged;
    }

    /// Messages accepted and refused so far (end of DATA, BDAT or the web's send button).
    pub fn message_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.accepted.load(Relaxed), self.refused.load(Relaxed))
    }

    /// One message through the edits, with the copies of it and the parses it took.
    pub(crate) fn count_pipeline(&self, copies: u64, parses: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.pipeline[0].fetch_add(1, Relaxed);
        self.pipeline[1].fetch_add(copies, Relaxed);
        self.pipeline[2].fetch_add(parses, Relaxed);
    }

    /// (messages, whole-message copies, whole-message parses) between the socket's buffer
    /// and the store since the start; the store's own compressed and sealed chunks are not
    /// counted.
    pub fn pipeline_counts(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.pipeline[0].load(Relaxed),
            self.pipeline[1].load(Relaxed),
            self.pipeline[2].load(Relaxed),
        )
    }

    /// Whether the account has sent fewer than `max` messages in its current hour.
    pub(crate) fn may_submit(&self, account: AccountId, max: u32) -> bool {
        let map = self.submitted.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&account)
            .is_none_or(|(start, count)| start.elapsed() >= HOUR || *count < max)
    }

    /// Counts one accepted message against the account's hourly budget.
    pub(crate) fn count_submission(&self, account: AccountId) {
        let mut map = self.submitted.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED_SENDERS_MAX {
            map.retain(|_, (start, _)| start.elapsed() < HOUR);
        }
        let entry = map.entry(account).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= HOUR {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}
