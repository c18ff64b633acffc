//! What the console's health page shows of the server: the listeners and certificate (the
//! binary's), the store's size and growth, the queue's depth, recent delivery failures by
//! domain, recent failed sign-ins, and what DNS answers for the records to publish. The
//! networks that may read `/metrics` are parsed here too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sealpost_storage::{now_ms, AuditSearch, RecipientStatus};

/// How far back failures are shown, in ms (7 days).
pub const FAILURES_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;
/// How far back failed sign-ins are counted, in ms (a day).
pub const SIGN_IN_FAILURES_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Rows of each "by domain" or "by account" list.
pub const HEALTH_ROWS_MAX: usize = 20;
/// Store size samples kept for the growth figure (one an hour at most).
pub const SIZE_SAMPLES_MAX: usize = 24 * 30;
const SIZE_SAMPLE_EVERY_MS: i64 = 3600 * 1000;

/// One record to publish, and what DNS answers for it now.
#[derive(Clone, Debug)]
pub struct DnsFinding {
    /// `clinic.example MX`, `_dmarc.clinic.example TXT`, …
    pub record: String,
    pub expected: String,
    /// `Ok(true)`: published as expected; `Ok(false)`: DNS answers something else (`answer`);
    /// `Err`: no answer, and why.
    pub state: Result<bool, String>,
    pub answer: String,
}

/// Asks DNS about each record to publish (the binary wires it to a resolver).
pub type DnsCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<DnsFinding>> + Send>> + Send + Sync>;

/// What the health page knows of the server beyond the store.
#[derive(Clone)]
pub struct HealthInfo {
    /// (name, address) of each listener.
    pub listeners: Vec<(String, String)>,
    /// The names the TLS certificate is for, and when it expires (ms).
    pub certificate: Option<(Vec<String>, i64)>,
    /// The records to publish, in zone-file syntax (`sealpost dns records`).
    pub dns_zone: String,
    pub dns_check: DnsCheck,
    /// The spam filter's state in words ("answering", "DOWN since …", "off").
    pub spam_status: SpamStatus,
}

/// Says how the spam filter is (the binary wires it to the rspamd client).
pub type SpamStatus = Arc<dyn Fn() -> String + Send + Sync>;

/// The size samples, as kept (sealed) in the store's cache: (ms, bytes) pairs.
fn samples(store: &sealpost_storage::Store) -> Vec<(i64, u64)> {
    store
        .cached("health", "store-size")
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1_048_576 => format!("{:.0} KB", bytes as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MB", bytes as f64 / 1_048_576.0),
        _ => format!("{:.2} GB", bytes as f64 / 1_073_741_824.0),
    }
}

/// What the health page shows of the store.
pub struct Figures {
    pub store_bytes: u64,
    /// Bytes grown (or shrunk) over ms, from the oldest size sample kept.
    pub growth: Option<(i64, i64)>,
    pub queue_depth: usize,
    pub oldest_queued_ms: Option<i64>,
    /// Failed deliveries in the last `FAILURES_WINDOW_MS`, by domain, most first.
    pub failures: Vec<(String, usize)>,
    /// Refused sign-ins in the last `SIGN_IN_FAILURES_WINDOW_MS`, by account, most first.
    pub sign_in_failures: Vec<(String, usize)>,
    pub sign_in_failures_total: usize,
}

/// The health page's figures from the store (and a store size sample kept for growth).
pub fn figures(store: &sealpost_storage::Store) -> Option<Figures> {
    let now = now_ms();
    let store_bytes = store.disk_bytes().ok()?;
    let mut kept = samples(store);
    if kept
        .last()
        .is_none_or(|(at, _)| now - at >= SIZE_SAMPLE_EVERY_MS)
    {
        kept.push((now, store_bytes));
        if kept.len() > SIZE_SAMPLES_MAX {
            kept.remove(0);
        }
        if let Ok(bytes) = serde_json::to_vec(&kept) {
            let _ = store.cache("health", "store-size", &bytes);
        }
    }
    let growth = kept
        .first()
        .filter(|(at, _)| now - at >= SIZE_SAMPLE_EVERY_MS)
        .map(|(at, bytes)| (store_bytes as i64 - *bytes as i64, now - at));
    let queued = store.queued().ok()?;
    let oldest_queued_ms = queued.iter().map(|e| e.created_ms).min();
    let mut failures: std::collections::BTreeMap<String, usize> = Default::default();
    for account in store.list_accounts().ok()? {
        for delivery in store.deliveries(account.id).ok()? {
            for line in &delivery.lines {
                if let RecipientStatus::Failed { at_ms, .. } = line.status {
                    if now - at_ms <= FAILURES_WINDOW_MS {
                        let domain = line
                            .address
                            .rsplit_once('@')
                            .map_or("", |(_, d)| d)
                            .to_string();
                        *failures.entry(domain).or_default() += 1;
                    }
                }
            }
        }
    }
    let mut failures: Vec<(String, usize)> = failures.into_iter().collect();
    failures.sort_by_key(|(domain, count)| (std::cmp::Reverse(*count), domain.clone()));
    failures.truncate(HEALTH_ROWS_MAX);
    let denied = store
        .audit_search(&AuditSearch {
            action: Some("login".into()),
            text: Some("denied".into()),
            since_ms: Some(now - SIGN_IN_FAILURES_WINDOW_MS),
            limit: sealpost_storage::AUDIT_COUNT_EXACT_MAX,
            ..AuditSearch::default()
        })
        .ok()?;
    let mut by_account: std::collections::BTreeMap<String, usize> = Default::default();
    for record in &denied.records {
        *by_account.entry(record.event.object.clone()).or_default() += 1;
    }
    let mut sign_in_failures: Vec<(String, usize)> = by_account.into_iter().collect();
    sign_in_failures.sort_by_key(|(who, count)| (std::cmp::Reverse(*count), who.clone()));
    sign_in_failures.truncate(HEALTH_ROWS_MAX);
    Some(Figures {
        store_bytes,
        growth,
        queue_depth: queued.len(),
        oldest_queued_ms,
        failures,
        sign_in_failures,
        sign_in_failures_total: denied.matched,
    })
}

/// Reads `192.0.2.0/24`, `::1` or `10.1.2.3` (a whole address) as a network.
pub fn parse_network(text: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (address, length) = match text.trim().split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text.trim(), None),
    };
    let address: std::net::IpAddr = address
        .parse()
        .map_err(|_| format!("{text}: not an IP address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let length = match length {
        Some(length) => length
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{text}: bad prefix length"))?,
        None => max,
    };
    Ok((address, length))
}

/// Whether `ip` is in the network (`parse_network`'s answer); IPv4-mapped IPv6 counts as IPv4.
pub fn in_network(ip: std::net::IpAddr, (network, length): (std::net::IpAddr, u8)) -> bool {
    let bits = |ip: std::net::IpAddr| -> (u128, u8) {
        match ip.to_canonical() {
            std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((ip, width), (network, network_width)) = (bits(ip), bits(network));
    if width != network_width {
        return false;
    }
    let length = u32::from(length.min(width));
    let shift = u32::from(width) - length;
    length == 0 || (ip >> shift) == (network >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_admit_their_addresses_only() {
        let loopback = parse_network("127.0.0.0/8").unwrap();
        assert!(in_network("127.0.0.5".parse().unwrap(), loopback));
        assert!(
            in_network("::ffff:127.0.0.1".parse().unwrap(), loopback),
            "mapped IPv4"
        );
        assert!(!in_network("10.0.0.1".parse().unwrap(), loopback));
        let one = parse_network("10.1.2.3").unwrap();
        assert!(
            in_network("10.1.2.3".parse().unwrap(), one)
                && !in_network("10.1.2.4".parse().unwrap(), one)
        );
        assert!(in_network(
            "::1".parse().unwrap(),
            parse_network("::1").unwrap()
        ));
        assert!(
            !in_network("::1".parse().unwrap(), loopback),
            "families differ"
        );
        assert!(in_network(
            "203.0.113.9".parse().unwrap(),
            parse_network("0.0.0.0/0").unwrap()
        ));
        assert!(parse_network("10.0.0.0/33").is_err() && parse_network("nonsense").is_err());
    }
}
