//! `/metrics` in Prometheus text: connections by listener (counted here, in the accept loop),
//! IMAP commands and their latency (the IMAP registry), SMTP messages accepted and refused,
//! outbound recipients by outcome, and the queue's depth (read from the store when asked).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use sealpost_imap::{ImapShared, COMMAND_SECONDS_BUCKETS};
use sealpost_smtp::{OutboundAgent, SmtpShared};
use sealpost_storage::Store;

/// Connections accepted and open, by listener.
#[derive(Default)]
pub(crate) struct Connections {
    by_listener: Mutex<BTreeMap<&'static str, (u64, u64)>>,
}

/// One open connection, counted until dropped.
pub(crate) struct Open {
    connections: Arc<Connections>,
    listener: &'static str,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut by = self
            .connections
            .by_listener
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, open)) = by.get_mut(self.listener) {
            *open = open.saturating_sub(1);
        }
    }
}

impl Connections {
    pub(crate) fn opened(self: &Arc<Self>, listener: &'static str) -> Open {
        let mut by = self.by_listener.lock().unwrap_or_else(|e| e.into_inner());
        let (total, open) = by.entry(listener).or_default();
        *total += 1;
        *open += 1;
        Open {
            connections: self.clone(),
            listener,
        }
    }

    fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        let by = self.by_listener.lock().unwrap_or_else(|e| e.into_inner());
        by.iter()
            .map(|(name, (total, open))| (*name, *total, *open))
            .collect()
    }
}

/// What /metrics reads.
pub(crate) struct Sources {
    pub(crate) connections: Arc<Connections>,
    pub(crate) imap: Arc<ImapShared>,
    pub(crate) smtp: Arc<SmtpShared>,
    pub(crate) outbound: Arc<OutboundAgent>,
    pub(crate) store: Store,
}

impl Sources {
    pub(crate) async fn render(&self) -> String {
        let store = self.store.clone();
        let queue_depth = tokio::task::spawn_blocking(move || store.queued().map(|q| q.len()))
            .await
            .ok()
            .and_then(Result::ok);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP sealpost_connections_total Connections accepted, by listener."
        );
        let _ = writeln!(out, "# TYPE sealpost_connections_total counter");
        let connections = self.connections.snapshot();
        for (name, total, _) in &connections {
            let _ = writeln!(
                out,
                "sealpost_connections_total{{listener=\"{name}\"}} {total}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sealpost_connections_open Connections open now, by listener."
        );
        let _ = writeln!(out, "# TYPE sealpost_connections_open gauge");
        for (name, _, open) in &connections {
            let _ = writeln!(
                out,
                "sealpost_connections_open{{listener=\"{name}\"}} {open}"
            );
        }
        let commands = self.imap.command_stats();
        let _ = writeln!(
            out,
            "# HELP sealpost_imap_commands_total IMAP commands run, by command."
        );
        let _ = writeln!(out, "# TYPE sealpost_imap_commands_total counter");
        for (name, stats) in &commands {
            let _ = writeln!(
                out,
                "sealpost_imap_commands_total{{command=\"{name}\"}} {}",
                stats.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP sealpost_imap_command_seconds How long IMAP commands took (IDLE: until DONE)."
        );
        let _ = writeln!(out, "# TYPE sealpost_imap_command_seconds histogram");
        for (name, stats) in &commands {
            for (bound, count) in COMMAND_SECONDS_BUCKETS.iter().zip(stats.buckets) {
                let _ = writeln!(
                    out,
                    "sealpost_imap_command_seconds_bucket{{command=\"{name}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "sealpost_imap_command_seconds_bucket{{command=\"{name}\",le=\"+Inf\"}} {}",
                stats.count
            );
            let _ = writeln!(
                out,
                "sealpost_imap_command_seconds_sum{{command=\"{name}\"}} {}",
                stats.seconds
            );
            let _ = writeln!(
                out,
                "sealpost_imap_command_seconds_count{{command=\"{name}\"}} {}",
                stats.count
            );
        }
        let (accepted, refused) = self.smtp.message_counts();
        let _ = writeln!(
            out,
            "# HELP sealpost_smtp_messages_total Messages accepted or refused whole (SMTP and the web)."
        );
        let _ = writeln!(out, "# TYPE sealpost_smtp_messages_total counter");
        let _ = writeln!(
            out,
            "sealpost_smtp_messages_total{{outcome=\"accepted\"}} {accepted}"
        );
        let _ = writeln!(
            out,
            "sealpost_smtp_messages_total{{outcome=\"refused\"}} {refused}"
        );
        let _ = writeln!(
            out,
            "# HELP sealpost_outbound_recipients_total Outside recipients' delivery attempts, by outcome."
        );
        let _ = writeln!(out, "# TYPE sealpost_outbound_recipients_total counter");
        for (outcome, count) in ["delivered", "portal", "failed", "deferred"]
            .iter()
            .zip(self.outbound.outcome_counts())
        {
            let _ = writeln!(
                out,
                "sealpost_outbound_recipients_total{{outcome=\"{outcome}\"}} {count}"
            );
        }
        if let Some(depth) = queue_depth {
            let _ = writeln!(
                out,
                "# HELP sealpost_queue_depth Outbound queue entries waiting."
            );
            let _ = writeln!(out, "# TYPE sealpost_queue_depth gauge");
            let _ = writeln!(out, "sealpost_queue_depth {depth}");
        }
        out
    }
}
