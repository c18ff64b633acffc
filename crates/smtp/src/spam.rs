//! Inbound scoring by rspamd over its HTTP protocol (`/checkv2`), learning through its
//! controller (`/learnspam`, `/learnham`), and the warnings Sealpost adds itself when a
//! message from outside pretends to come from inside (a staff member's display name, a
//! domain that looks like ours).
//!
//! rspamd runs beside Sealpost on loopback; the client speaks plain HTTP/1.1 to it (one
//! request per connection), bounded in time and size.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest rspamd answer body read, in bytes.
pub const SPAM_REPLY_BYTES_MAX: usize = 1024 * 1024;
/// Largest header section of an rspamd answer, in bytes.
pub const SPAM_REPLY_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Symbols kept with a message's verdict, the highest scores first.
pub const SPAM_SYMBOLS_KEPT_MAX: usize = 20;

/// What to do with mail while rspamd does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Deliver unscored (the default: mail is not lost).
    Accept,
    /// Answer 451 so the sender tries again later.
    Tempfail,
}

/// What rspamd's own "reject" (GTUBE, known spam) becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectAction {
    Reject,
    Quarantine,
}

/// `[spam]` in sealpost.toml.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpamConfig {
    /// rspamd's normal worker, `host:port`; empty: no scoring.
    pub rspamd: String,
    /// rspamd's controller, `host:port`, for learning; empty: no learning.
    pub controller: String,
    /// The controller's password, if it asks for one (not from loopback by default).
    pub controller_password: String,
    pub on_error: OnError,
    /// Scores from this deliver to Junk.
    pub junk_score: f64,
    /// Scores from this are quarantined.
    pub quarantine_score: f64,
    /// Scores from this are refused at DATA.
    pub reject_score: f64,
    /// What rspamd's own "reject" action does here.
    pub rspamd_reject: RejectAction,
    /// How long a scan or a learning request may take, in ms.
    pub timeout_ms: u64,
    /// How long a quarantined message is kept, in days.
    pub quarantine_days: u32,
    /// Put in front of the subject of mail from outside that impersonates us (empty: none;
    /// the `X-Sealpost-Warning` header is added always).
    pub external_subject_prefix: String,
    /// The console's quarantine shows subjects (a subject can be PHI).
    pub admin_sees_subjects: bool,
}

impl Default for SpamConfig {
    fn default() -> Self {
        Self {
            rspamd: String::new(),
            controller: String::new(),
            controller_password: String::new(),
            on_error: OnError::Accept,
            junk_score: 6.0,
            quarantine_score: 10.0,
            reject_score: 15.0,
            rspamd_reject: RejectAction::Quarantine,
            timeout_ms: 5_000,
            quarantine_days: 30,
            external_subject_prefix: "[EXTERNAL]".into(),
            admin_sees_subjects: false,
        }
    }
}

/// Where a scored message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Inbox,
    Junk,
    Quarantine,
    Reject,
}

/// rspamd's verdict on one message.
#[derive(Clone, Debug)]
pub struct Scored {
    pub score: f64,
    pub action: String,
    /// Symbol names, highest score first.
    pub symbols: Vec<String>,
    pub placement: Placement,
}

impl Scored {
    /// The verdict as kept with the message: score, action and symbols.
    pub fn summary(&self) -> String {
        let mut symbols = self.symbols.clone();
        symbols.truncate(SPAM_SYMBOLS_KEPT_MAX);
        format!(
            "score={:.2}; action={}; placement={:?}; symbols={}",
            self.score,
            self.action,
            self.placement,
            symbols.join(",")
        )
        .to_lowercase()
    }
}

#[derive(Deserialize)]
struct CheckReply {
    score: f64,
    action: String,
    #[serde(default)]
    symbols: std::collections::BTreeMap<String, SymbolReply>,
}

#[derive(Deserialize)]
struct SymbolReply {
    #[serde(default)]
    score: f64,
}

/// The rspamd client and its state for the health page.
pub struct Spam {
    pub config: SpamConfig,
    /// The last failure to reach rspamd (ms, why), cleared by the next success.
    down: Mutex<Option<(i64, String)>>,
}

use sealpost_storage::now_ms;

/// What the envelope says, for rspamd.
pub struct Envelope<'a> {
    pub ip: &'a str,
    pub helo: &'a str,
    pub from: &'a str,
    pub recipients: &'a [String],
    pub user: Option<&'a str>,
}

impl Spam {
    pub fn new(config: SpamConfig) -> Self {
        Self {
            config,
            down: Mutex::new(None),
        }
    }

    /// Whether scoring is on.
    pub fn enabled(&self) -> bool {
        !self.config.rspamd.trim().is_empty()
    }

    /// When and why rspamd last failed to answer, if it has not answered since.
    pub fn down_since(&self) -> Option<(i64, String)> {
        self.down.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note(&self, result: &Result<(), String>) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => *down = None,
            Err(why) => {
                if down.is_none() {
                    *down = Some((now_ms(), why.clone()));
                }
            }
        }
    }

    /// Scores a message. `Err` when rspamd cannot be asked (the caller applies `on_error`).
    pub async fn check(&self, raw: &[u8], envelope: &Envelope<'_>) -> Result<Scored, String> {
        let mut headers = vec![
            ("IP".to_string(), envelope.ip.to_string()),
            ("Helo".to_string(), envelope.helo.to_string()),
            ("From".to_string(), envelope.from.to_string()),
        ];
        for rcpt in envelope.recipients {
            headers.push(("Rcpt".to_string(), rcpt.clone()));
        }
        if let Some(user) = envelope.user {
            headers.push(("User".to_string(), user.to_string()));
        }
        let answer = post(
            &self.config.rspamd,
            "/checkv2",
            &headers,
            raw,
            self.config.timeout_ms,
        )
        .await;
        self.note(&answer.as_ref().map(|_| ()).map_err(Clone::clone));
        let body = answer?;
        let reply: CheckReply = serde_json::from_slice(&body)
            .map_err(|e| format!("rspamd's answer does not read: {e}"))?;
        let mut symbols: Vec<(String, f64)> = reply
            .symbols
            .into_iter()
            .map(|(n, s)| (n, s.score))
            .collect();
        symbols.sort_by(|a, b| b.1.total_cmp(&a.1));
        let placement = placement(&self.config, reply.score, &reply.action);
        Ok(Scored {
            score: reply.score,
            action: reply.action,
            symbols: symbols.into_iter().map(|(n, _)| n).collect(),
            placement,
        })
    }

    /// Trains rspamd with a message a user filed into Junk (`spam`) or out of it.
    pub async fn learn(&self, raw: &[u8], spam: bool) -> Result<(), String> {
        let controller = self.config.controller.trim();
        if controller.is_empty() {
            return Err("no [spam] controller".into());
        }
        let mut headers = Vec::new();
        if !self.config.controller_password.is_empty() {
            headers.push((
                "Password".to_string(),
                self.config.controller_password.clone(),
            ));
        }
        let path = if spam { "/learnspam" } else { "/learnham" };
        let body = post(controller, path, &headers, raw, self.config.timeout_ms).await?;
        let reply: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("rspamd's answer does not read: {e}"))?;
        if reply.get("success").and_then(serde_json::Value::as_bool) == Some(true) {
            Ok(())
        } else {
            Err(format!("rspamd did not learn: {reply}"))
        }
    }
}

/// Where a message with rspamd's `score` and `action` goes under `config`.
pub fn placement(config: &SpamConfig, score: f64, action: &str) -> Placement {
    if action == "reject" {
        match config.rspamd_reject {
            RejectAction::Reject => Placement::Reject,
            RejectAction::Quarantine => Placement::Quarantine,
        }
    } else if score >= config.reject_score {
        Placement::Reject
    } else if score >= config.quarantine_score {
        Placement::Quarantine
    } else if score >= config.junk_score {
        Placement::Junk
    } else {
        Placement::Inbox
    }
}

/// One HTTP/1.1 POST to `host:port` + `path`; the body of a 2xx answer.
async fn post(
    address: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address.trim())
            .await
            .map_err(|e| format!("rspamd at {address}: {e}"))?;
        let request = crate::http::request(
            hyper::Method::POST,
            address.trim(),
            path,
            headers,
            body.to_vec(),
        )?;
        let answer = crate::http::exchange(
            stream,
            request,
            SPAM_REPLY_HEAD_BYTES_MAX,
            SPAM_REPLY_BYTES_MAX,
        )
        .await
        .map_err(|e| format!("rspamd's answer does not read: {e}"))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!(
                "rspamd answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
        Ok(answer.body)
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), exchange)
        .await
        .map_err(|_| format!("rspamd did not answer within {timeout_ms} ms"))?
}

/// Maps look-alike characters to the letters they imitate, so that `c1inic` and `сlinic`
/// (Cyrillic с) read as `clinic`.
fn skeleton(domain: &str) -> String {
    let lowered = domain.to_lowercase();
    let mapped: String = lowered
        .chars()
        .map(|c| match c {
            '0' | 'о' | 'ο' => 'o',
            '1' | 'l' | 'і' | 'ı' | '|' => 'l',
            'а' | 'α' => 'a',
            'е' | 'ε' => 'e',
            'р' | 'ρ' => 'p',
            'с' | 'ϲ' => 'c',
            'х' | 'χ' => 'x',
            'у' => 'y',
            'ѕ' => 's',
            'ј' => 'j',
            'ԁ' => 'd',
            'ɡ' => 'g',
            'ո' => 'n',
            other => other,
        })
        .collect();
    mapped
        .replace("rn", "m")
        .replace("vv", "w")
        .replace('i', "l")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

/// Why a message from outside looks like it comes from inside, if it does: its domain looks
/// like one of `ours` (within 2 edits, or the same once look-alike letters are mapped), or
/// its display name is a staff member's (`staff`: lower-cased display names).
pub fn impersonation(
    from_address: &str,
    from_name: &str,
    ours: &[String],
    staff: &std::collections::HashSet<String>,
) -> Option<String> {
    let domain = from_address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_lowercase();
    if domain.is_empty() || ours.iter().any(|d| d.eq_ignore_ascii_case(&domain)) {
        return None;
    }
    for own in ours {
        let (mine, theirs) = (skeleton(own), skeleton(&domain));
        if mine == theirs
            || edit_distance(&own.to_lowercase(), &domain) <= 2
            || edit_distance(&mine, &theirs) <= 1
        {
            return Some(format!(
                "the sender's domain {domain} looks like {own} but is not ours"
            ));
        }
    }
    let name = from_name.trim().trim_matches('"').to_lowercase();
    if !name.is_empty() && staff.contains(&name) {
        return Some(format!(
            "the sender uses the name of a member of staff ({}) but writes from outside ({domain})",
            from_name.trim().trim_matches('"')
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_domains_and_borrowed_names_are_caught_and_real_ones_pass() {
        let ours = vec!["clinic.test".to_string()];
        let staff: std::collections::HashSet<String> =
            ["doc holliday".to_string()].into_iter().collect();
        for fake in [
            "c1inic.test",
            "clinlc.test",
            "cIinic.test",
            "сlinic.test",
            "clinic.tset",
            "clinnic.test",
        ] {
            assert!(
                impersonation(&format!("ceo@{fake}"), "", &ours, &staff).is_some(),
                "{fake}"
            );
        }
        for real in ["partner.test", "hospital.example", "clinic.test"] {
            assert!(
                impersonation(&format!("a@{real}"), "Someone", &ours, &staff).is_none(),
                "{real}"
            );
        }
        assert!(
            impersonation("x@evil.test", "\"Doc Holliday\"", &ours, &staff)
                .unwrap()
                .contains("name of a member of staff")
        );
    }

    #[test]
    fn scores_place_mail_by_the_configured_thresholds() {
        let mut config = SpamConfig::default();
        assert_eq!(placement(&config, 2.0, "no action"), Placement::Inbox);
        assert_eq!(placement(&config, 6.0, "add header"), Placement::Junk);
        assert_eq!(
            placement(&config, 12.0, "add header"),
            Placement::Quarantine
        );
        assert_eq!(placement(&config, 15.0, "add header"), Placement::Reject);
        assert_eq!(placement(&config, 0.0, "reject"), Placement::Quarantine);
        config.rspamd_reject = RejectAction::Reject;
        config.junk_score = 1.0;
        assert_eq!(placement(&config, 0.0, "reject"), Placement::Reject);
        assert_eq!(placement(&config, 2.0, "no action"), Placement::Junk);
    }
}
