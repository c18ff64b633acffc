//! MTA-STS (RFC 8461): a domain that publishes a policy in enforce mode says which MX hosts
//! may receive its mail; delivery then goes only to those (always over verified TLS, which
//! this server requires anyway). Policies are fetched over HTTPS verified against the same
//! roots as SMTP, bounded in size and time, and cached for their max_age.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest policy body read, in bytes (RFC 8461 §3.3 suggests 64 KiB).
const POLICY_BYTES_MAX: usize = 64 * 1024;
/// Largest header of a policy's HTTP answer, in bytes.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Longest a policy is cached, in seconds (RFC 8461: max_age at most 31557600).
const MAX_AGE_MAX_S: u64 = 31_557_600;
/// Most domains whose policies are cached; expired ones go first.
const CACHED_DOMAINS_MAX: usize = 10_000;

/// A domain's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) id: String,
    pub(crate) enforce: bool,
    /// MX patterns: exact names or `*.example.com` (one label).
    pub(crate) mx: Vec<String>,
    pub(crate) max_age: Duration,
}

impl Policy {
    /// Whether `host` may receive the domain's mail.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => host == *pattern,
            })
    }
}

/// A policy and when it was fetched (Unix ms), as kept in the store across restarts.
pub(crate) fn encode(policy: &Policy, fetched_ms: i64) -> Vec<u8> {
    let mut out = format!(
        "{}\n{}\n{}\n{}\n",
        policy.id,
        u8::from(policy.enforce),
        policy.max_age.as_secs(),
        fetched_ms
    );
    for mx in &policy.mx {
        out.push_str(mx);
        out.push('\n');
    }
    out.into_bytes()
}

pub(crate) fn decode(bytes: &[u8]) -> Option<(Policy, i64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    let id = lines.next()?.to_string();
    let enforce = lines.next()? == "1";
    let max_age = Duration::from_secs(lines.next()?.parse().ok()?);
    let fetched_ms: i64 = lines.next()?.parse().ok()?;
    let mx = lines.map(str::to_string).collect();
    Some((
        Policy {
            id,
            enforce,
            mx,
            max_age,
        },
        fetched_ms,
    ))
}

/// Parses a policy body; `None` if it is not a valid STSv1 policy.
pub(crate) fn parse(id: &str, body: &str) -> Option<Policy> {
    let mut version = None;
    let mut mode = None;
    let mut mx = Vec::new();
    let mut max_age = None;
    for line in body.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => mode = Some(value.to_string()),
            "mx" => mx.push(value.trim_end_matches('.').to_lowercase()),
            "max_age" => max_age = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return None;
    }
    let mode = mode?;
    if !matches!(mode.as_str(), "enforce" | "testing" | "none") {
        return None;
    }
    Some(Policy {
        id: id.to_string(),
        enforce: mode == "enforce",
        mx,
        max_age: Duration::from_secs(max_age?.min(MAX_AGE_MAX_S)),
    })
}

/// The `id` of a `_mta-sts` TXT record (`v=STSv1; id=...`).
pub(crate) fn record_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim);
    if fields.next()? != "v=STSv1" {
        return None;
    }
    fields
        .filter_map(|f| f.strip_prefix("id="))
        .next()
        .filter(|id| {
            !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric())
        })
        .map(str::to_string)
}

/// Policies by domain, with when they were fetched.
#[derive(Default)]
pub(crate) struct Cache {
    policies: Mutex<HashMap<String, (Policy, Instant)>>,
}

/// What to do for a domain once its `_mta-sts` record has been asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// This policy, or none, is in force: nothing to fetch.
    InForce(Option<Policy>),
    /// The record names a policy not cached: fetch it (and keep the cached one if that fails).
    Fetch { id: String },
}

impl Cache {
    /// The step for `domain` given the id its record publishes now: `None` when the record
    /// is missing, unreadable or the look-up failed, and then the policy cached before stays
    /// in force while its max_age holds (RFC 8461 §5.1), so that withholding a DNS answer
    /// does not switch it off.
    pub(crate) fn step(&self, domain: &str, published: Option<&str>) -> Step {
        match published {
            None => Step::InForce(self.get_any(domain)),
            Some(id) => match self.get(domain, id) {
                Some(policy) => Step::InForce(Some(policy)),
                None => Step::Fetch { id: id.to_string() },
            },
        }
    }

    pub(crate) fn get(&self, domain: &str, id: &str) -> Option<Policy> {
        let policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        policies
            .get(domain)
            .filter(|(p, at)| p.id == id && at.elapsed() < p.max_age)
            .map(|(p, _)| p.clone())
    }

    /// The policy cached for a domain whatever its id, while its max_age holds.
    pub(crate) fn get_any(&self, domain: &str) -> Option<Policy> {
        let policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        policies
            .get(domain)
            .filter(|(p, at)| at.elapsed() < p.max_age)
            .map(|(p, _)| p.clone())
    }

    pub(crate) fn put(&self, domain: &str, policy: Policy) {
        self.put_at(domain, policy, Instant::now());
    }

    /// As `put`, for a policy fetched at `at` (one read back from the store).
    pub(crate) fn put_at(&self, domain: &str, policy: Policy, at: Instant) {
        let mut policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        if policies.len() >= CACHED_DOMAINS_MAX {
            policies.retain(|_, (p, at)| at.elapsed() < p.max_age);
        }
        policies.insert(domain.to_string(), (policy, at));
    }
}

/// GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt on `port`, the certificate verified for
/// that name; the body, or why not.
pub(crate) async fn fetch(
    tls: &tokio_rustls::TlsConnector,
    resolver: &mail_auth::MessageAuthenticator,
    domain: &str,
    port: u16,
    timeout: Duration,
) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let work = async {
        let ip = resolver
            .0
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .iter()
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let socket = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tls
            .connect(name, socket)
            .await
            .map_err(|e| format!("{host}: TLS: {e}"))?;
        let request = crate::http::request(
            hyper::Method::GET,
            &host,
            "/.well-known/mta-sts.txt",
            &[],
            Vec::new(),
        )?;
        let answer = crate::http::exchange(stream, request, HEAD_BYTES_MAX, POLICY_BYTES_MAX)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        policy_text(answer.status, answer.body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{host}: timed out"))?
}

/// The policy in a `200` answer's body, or why not (RFC 8461 §3.3: only a 200 counts).
pub(crate) fn policy_text(status: u16, body: Vec<u8>) -> Result<String, String> {
    if status != 200 {
        return Err(format!("HTTP status {status}"));
    }
    String::from_utf8(body).map_err(|_| "policy is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_match_hosts() {
        let policy = parse(
            "20260101",
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.backup.example.com\r\nmax_age: 86400\r\n",
        )
        .unwrap();
        assert!(policy.enforce);
        assert!(policy.allows("mail.example.com."));
        assert!(policy.allows("MX1.backup.example.com"));
        assert!(!policy.allows("a.b.backup.example.com"));
        assert!(!policy.allows("evil.example.com"));
        assert_eq!(policy.max_age, Duration::from_secs(86400));
        assert!(parse("x", "version: STSv2\nmode: enforce\nmax_age: 1\n").is_none());
        assert!(parse("x", "version: STSv1\nmode: maybe\nmax_age: 1\n").is_none());
        assert!(
            !parse("x", "version: STSv1\nmode: testing\nmx: a\nmax_age: 1\n")
                .unwrap()
                .enforce
        );
        assert_eq!(
            record_id("v=STSv1; id=20260101T0000"),
            Some("20260101T0000".into())
        );
        assert_eq!(record_id("v=STSv2; id=1"), None);
        assert_eq!(record_id("v=STSv1; id=bad id!"), None);
        assert_eq!(decode(&encode(&policy, 42)), Some((policy, 42)));
    }

    #[test]
    fn a_policy_seen_stays_in_force_without_its_record_until_max_age_ends() {
        let cache = Cache::default();
        let policy = parse(
            "1",
            "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 600\n",
        )
        .unwrap();
        // Nothing seen yet: a missing record means no policy; a published one is fetched.
        assert_eq!(cache.step("example.com", None), Step::InForce(None));
        assert_eq!(
            cache.step("example.com", Some("1")),
            Step::Fetch { id: "1".into() }
        );
        cache.put("example.com", policy.clone());
        assert_eq!(
            cache.step("example.com", Some("1")),
            Step::InForce(Some(policy.clone()))
        );
        // The record withheld (or not answered): the policy seen holds.
        assert_eq!(
            cache.step("example.com", None),
            Step::InForce(Some(policy.clone()))
        );
        assert_eq!(cache.step("other.example", None), Step::InForce(None));
        // A new id: fetched, the old policy still there to fall back on.
        assert_eq!(
            cache.step("example.com", Some("2")),
            Step::Fetch { id: "2".into() }
        );
        assert_eq!(cache.get_any("example.com"), Some(policy.clone()));
        // Past its max_age it is gone, record or not.
        let short = Policy {
            max_age: Duration::from_secs(1),
            ..policy
        };
        let seen_before = Instant::now().checked_sub(Duration::from_secs(2)).unwrap();
        cache.put_at("example.com", short, seen_before);
        assert_eq!(cache.step("example.com", None), Step::InForce(None));
    }

    #[test]
    fn only_a_200_answer_carries_a_policy() {
        assert_eq!(policy_text(200, b"hello".to_vec()).unwrap(), "hello");
        assert!(policy_text(404, b"version: STSv1".to_vec()).is_err());
        assert!(policy_text(200, vec![0xff]).is_err());
    }
}
