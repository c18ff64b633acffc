//! How a message reaches each outside recipient, decided by the server, never by the
//! sender's memory: admin rules per domain or address, content rules that find patient
//! information (PHI) and force the pickup portal or block the message, and accounts barred
//! from sending outside the organisation. The transport itself (verified TLS, or the portal
//! when that cannot be had) is the outbound queue's; this crate says what is allowed.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde::{Deserialize, Serialize};

/// An admin rule for a domain or an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainRule {
    /// Never by SMTP: always the pickup portal.
    AlwaysPortal,
    /// Verified TLS where the server offers it, else the portal; content rules may force the
    /// portal (the default).
    TlsAllowed,
    /// A partner whose verified TLS is trusted for anything: content rules do not force the
    /// portal (without verified TLS it is still the portal, never plaintext).
    TlsRequired,
}

/// What a content rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Portal,
    Block,
}

/// What a content rule looks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "detector")]
pub enum Detector {
    /// US Social Security numbers (ddd-dd-dddd, valid area, group and serial).
    Ssn,
    /// Medical record numbers, by the site's patterns (regular expressions).
    Mrn { patterns: Vec<String> },
    /// A date next to "DOB", "date of birth" or "born".
    DateOfBirth,
    /// ICD-10 codes in their dotted form (E11.9), or after "ICD", "diagnosis" or "dx".
    Icd10,
    /// Any of these words or phrases (case-insensitive, whole words).
    Keywords { words: Vec<String> },
    /// A `[secure]` tag in the subject, which the sender may add.
    SecureTag,
}

/// A named content rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRule {
    pub name: String,
    #[serde(flatten)]
    pub detector: Detector,
    pub action: Action,
    /// A disabled rule is kept in the policy but matches nothing.
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// A message composed on the web that this rule matches must carry a proof apart from
    /// email (a passphrase or the patient's date of birth and surname) for the portal.
    #[serde(default)]
    pub proof_required: bool,
}

fn enabled_default() -> bool {
    true
}

/// The sign-in settings of a policy version (the one type for them, from the types crate).
pub use sealpost_types::SignInSettings;

/// The pickup portal's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortalSettings {
    /// How long a pickup link opens its message, in milliseconds (30 days).
    pub pickup_ttl_ms: u64,
    /// Every message with an outside recipient sent from the web must carry a proof besides
    /// the mailed code (a passphrase told apart from email, or the patient's date of birth
    /// and surname): whoever reads the patient's mail then still cannot open it.
    pub proof_required: bool,
    /// The same for messages to these recipient domains only.
    pub proof_required_domains: Vec<String>,
}

impl Default for PortalSettings {
    fn default() -> Self {
        Self {
            pickup_ttl_ms: 30 * 24 * 3600 * 1000,
            proof_required: false,
            proof_required_domains: Vec::new(),
        }
    }
}

/// Bounds on the settings an admin may save, each in its unit.
pub mod settings_bounds {
    pub use sealpost_types::sign_in_bounds::*;
    /// Longest pickup link lifetime, in milliseconds (365 days).
    pub const PICKUP_TTL_MS_MAX: u64 = 365 * 24 * 3600 * 1000;
}

/// The site's rules, as configured. By default: no admin rules, the default content rules
/// (patient identifiers send mail to the portal), nobody barred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Domain (`partner.example`) or address (`someone@partner.example`) → rule.
    pub domains: BTreeMap<String, DomainRule>,
    pub content: Vec<ContentRule>,
    /// Accounts (addresses) that may not send outside the organisation at all.
    pub barred_accounts: BTreeSet<String>,
    pub sign_in: SignInSettings,
    pub portal: PortalSettings,
    /// Retention rules (folders and accounts, maximum and minimum ages), which the store
    /// enforces once this version is in force.
    pub retention: Vec<sealpost_types::RetentionRule>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            domains: BTreeMap::new(),
            content: Self::default_content_rules(),
            barred_accounts: BTreeSet::new(),
            sign_in: SignInSettings::default(),
            portal: PortalSettings::default(),
            retention: Vec::new(),
        }
    }
}

impl PolicyConfig {
    /// Content rules that send what looks like patient information to the portal.
    pub fn default_content_rules() -> Vec<ContentRule> {
        let rule = |name: &str, detector| ContentRule {
            name: name.into(),
            enabled: true,
            proof_required: false,
            detector,
            action: Action::Portal,
        };
        vec![
            rule("ssn", Detector::Ssn),
            rule(
                "mrn",
                Detector::Mrn {
                    patterns: vec![r"(?i)\b(?:MRN|medical record (?:number|no\.?))[:#]?\s*[A-Z]{0,3}\d{5,12}\b".into()],
                },
            ),
            rule("date-of-birth", Detector::DateOfBirth),
            rule("icd-10", Detector::Icd10),
            rule("secure-tag", Detector::SecureTag),
        ]
    }
}

/// The parts of a message the content rules read.
#[derive(Clone, Debug, Default)]
pub struct Content<'a> {
    pub subject: &'a str,
    /// The decoded text of the body and of text attachments.
    pub text: &'a str,
    pub attachment_names: Vec<&'a str>,
}

/// A content rule that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: String,
    pub action: Action,
}

/// How one outside recipient is to be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// By SMTP over verified TLS, or the portal when that cannot be had.
    TlsOrPortal,
    /// The portal, for the reason given.
    Portal(String),
}

enum Compiled {
    Ssn(Regex),
    Patterns(Vec<Regex>),
    DateOfBirth(Regex),
    Icd10(Regex, Regex),
    Keywords(Regex),
    SecureTag,
}

/// The rules, compiled.
pub struct Policy {
    config: PolicyConfig,
    compiled: Vec<(ContentRule, Compiled)>,
}

/// The policy in force: replaced whole when an admin saves a new version in the console,
/// without a restart. Each decision takes the current one (`current`), so a message is
/// judged by one version from start to end.
pub struct LivePolicy {
    current: std::sync::RwLock<std::sync::Arc<Policy>>,
    /// Told of each new version after it is in force (the sign-in settings live elsewhere).
    watchers: std::sync::Mutex<Vec<PolicyWatcher>>,
}

/// Called with each policy put in force.
pub type PolicyWatcher = Box<dyn Fn(&Policy) + Send + Sync>;

impl LivePolicy {
    pub fn new(policy: Policy) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(policy)),
            watchers: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn current(&self) -> std::sync::Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `policy` in force and tells the watchers.
    pub fn replace(&self, policy: Policy) {
        let policy = std::sync::Arc::new(policy);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = policy.clone();
        for watcher in self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            watcher(&policy);
        }
    }

    /// Calls `watcher` with the policy in force now and with every later one.
    pub fn watch(&self, watcher: PolicyWatcher) {
        watcher(&self.current());
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(watcher);
    }
}

/// A version of the rules saved in the console (kept in the store as a server secret, its
/// history beside it): which, by whom, when, and the rules themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub saved_ms: i64,
    pub saved_by: String,
    pub config: PolicyConfig,
}

impl PolicyVersion {
    /// The store's secret holding the version in force.
    pub const CURRENT: &'static str = "policy";

    /// The store's secret holding version `n`.
    pub fn history_name(version: u64) -> String {
        format!("policy.v{version}")
    }
}

/// Longest text a content scan reads, in bytes; past it the rest is not scanned (the
/// search text is bounded the same way).
pub const SCANNED_TEXT_BYTES_MAX: usize = 16 * 1024 * 1024;

impl Policy {
    /// Compiles the rules; a pattern that is not a regular expression is an error naming it.
    pub fn new(config: PolicyConfig) -> Result<Policy, String> {
        config
            .sign_in
            .check()
            .map_err(|e| e.in_section("sign_in").to_string())?;
        sealpost_types::check_retention_rules(&config.retention)?;
        if !(1..=settings_bounds::PICKUP_TTL_MS_MAX).contains(&config.portal.pickup_ttl_ms) {
            return Err(format!(
                "portal.pickup_ttl_ms = {} is outside 1..={}",
                config.portal.pickup_ttl_ms,
                settings_bounds::PICKUP_TTL_MS_MAX
            ));
        }
        let mut compiled = Vec::new();
        for rule in config.content.iter().filter(|rule| rule.enabled) {
            let regex = |pattern: &str| {
                Regex::new(pattern).map_err(|e| format!("content rule {}: {e}", rule.name))
            };
            let c = match &rule.detector {
                Detector::Ssn => Compiled::Ssn(regex(r"\b(\d{3})-(\d{2})-(\d{4})\b")?),
                Detector::Mrn { patterns } => Compiled::Patterns(
                    patterns
                        .iter()
                        .map(|p| regex(p))
                        .collect::<Result<_, _>>()?,
                ),
                Detector::DateOfBirth => Compiled::DateOfBirth(regex(
                    r"(?i)(?:\bdob\b|\bd\.o\.b\.?|\bdate of birth\b|\bborn(?: on)?\b)[\s:]*(?:\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}|\d{4}-\d{2}-\d{2}|\d{1,2} (?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{4}|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2},? \d{4})",
                )?),
                Detector::Icd10 => Compiled::Icd10(
                    regex(r"\b[A-TV-Z][0-9][0-9AB]\.[0-9A-TV-Z]{1,4}\b")?,
                    regex(r"(?i)\b(?:icd-?10|icd|diagnosis|dx)\b[\s:#-]*[A-TV-Z][0-9][0-9AB]\b")?,
                ),
                Detector::Keywords { words } => {
                    let escaped: Vec<String> = words
                        .iter()
                        .filter(|w| !w.is_empty())
                        .map(|w| regex::escape(w))
                        .collect();
                    if escaped.is_empty() {
                        continue;
                    }
                    Compiled::Keywords(regex(&format!(r"(?i)\b(?:{})\b", escaped.join("|")))?)
                }
                Detector::SecureTag => Compiled::SecureTag,
            };
            compiled.push((rule.clone(), c));
        }
        Ok(Policy { config, compiled })
    }

    /// Whether `account` may send outside the organisation.
    /// The rules as configured.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn may_send_outside(&self, account: &str) -> bool {
        !self
            .config
            .barred_accounts
            .contains(&account.to_lowercase())
    }

    /// Every content rule that matches.
    pub fn scan(&self, content: &Content<'_>) -> Vec<Finding> {
        let text = truncate(content.text, SCANNED_TEXT_BYTES_MAX);
        let names = content.attachment_names.join("\n");
        let fields = [content.subject, text, names.as_str()];
        let mut findings = Vec::new();
        for (rule, compiled) in &self.compiled {
            let hit = match compiled {
                Compiled::Ssn(re) => fields
                    .iter()
                    .any(|f| re.captures_iter(f).any(|c| valid_ssn(&c[1], &c[2], &c[3]))),
                Compiled::Patterns(res) => {
                    res.iter().any(|re| fields.iter().any(|f| re.is_match(f)))
                }
                Compiled::DateOfBirth(re) | Compiled::Keywords(re) => {
                    fields.iter().any(|f| re.is_match(f))
                }
                Compiled::Icd10(dotted, context) => fields
                    .iter()
                    .any(|f| dotted.is_match(f) || context.is_match(f)),
                Compiled::SecureTag => content.subject.to_lowercase().contains("[secure]"),
            };
            if hit {
                findings.push(Finding {
                    rule: rule.name.clone(),
                    action: rule.action,
                });
            }
        }
        findings
    }

    /// The admin rule for a recipient: its address's, else its domain's, else TLS allowed.
    pub fn rule_for(&self, recipient: &str) -> DomainRule {
        let recipient = recipient.to_lowercase();
        if let Some(rule) = self.config.domains.get(&recipient) {
            return *rule;
        }
        let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
        self.config
            .domains
            .get(domain)
            .copied()
            .unwrap_or(DomainRule::TlsAllowed)
    }

    /// How a recipient is reached, given the message's findings.
    pub fn route(&self, recipient: &str, findings: &[Finding]) -> Route {
        match self.rule_for(recipient) {
            DomainRule::AlwaysPortal => {
                Route::Portal("an admin rule sends this recipient's mail to the portal".into())
            }
            DomainRule::TlsRequired => Route::TlsOrPortal,
            DomainRule::TlsAllowed => match findings.iter().find(|f| f.action == Action::Portal) {
                Some(finding) => Route::Portal(format!("content rule {} matched", finding.rule)),
                None => Route::TlsOrPortal,
            },
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The Social Security Administration never issues area 000, 666 or 900–999, group 00 or
/// serial 0000.
fn valid_ssn(area: &str, group: &str, serial: &str) -> bool {
    let area: u32 = area.parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && group != "00" && serial != "0000"
}
