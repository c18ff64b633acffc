//! Change notification: every session watching a mailbox hears of its new, changed and
//! expunged messages right after they are durable.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::store::{lock, Store};
use crate::types::{AccountId, MailboxId};

/// Something that happened in a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxEvent {
    Appended {
        uid: u32,
        modseq: u64,
    },
    FlagsChanged {
        uid: u32,
        modseq: u64,
    },
    Expunged {
        uid: u32,
        modseq: u64,
    },
    /// The mailbox itself was deleted (or renamed away, for INBOX's messages).
    Deleted,
}

/// Receives a mailbox's events. A receiver that falls more than `mailbox_events_max` events
/// behind gets `RecvError::Lagged` and must re-read the mailbox.
pub type MailboxEvents = broadcast::Receiver<MailboxEvent>;

pub(crate) struct Notifier {
    capacity: usize,
    channels: Mutex<HashMap<(AccountId, MailboxId), broadcast::Sender<MailboxEvent>>>,
}

impl Notifier {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn publish(&self, account: AccountId, mailbox: MailboxId, events: &[MailboxEvent]) {
        if events.is_empty() {
            return;
        }
        let mut channels = lock(&self.channels);
        let Some(sender) = channels.get(&(account, mailbox)) else {
            return;
        };
        if sender.receiver_count() == 0 {
            // Nobody listens any more: drop the channel so the map stays as small as the set
            // of watched mailboxes.
            channels.remove(&(account, mailbox));
            return;
        }
        for event in events {
            // Sending fails only when every receiver is gone, which was just checked.
            let _ = sender.send(*event);
        }
    }
}

impl Store {
    /// Subscribes to a mailbox's events. Subscribe before reading the mailbox's state, so
    /// that nothing falls between the read and the first event.
    pub fn subscribe(&self, account: AccountId, mailbox: MailboxId) -> MailboxEvents {
        let notifier = &self.inner.notifier;
        let mut channels = lock(&notifier.channels);
        channels
            .entry((account, mailbox))
            .or_insert_with(|| broadcast::channel(notifier.capacity).0)
            .subscribe()
    }
}
