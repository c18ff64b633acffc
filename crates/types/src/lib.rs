//! Vocabulary shared by the store and the crates that configure it. The store keeps and
//! applies retention rules; the policy crate reads and checks them in the organisation's
//! policy file; neither needs the other for that.

use serde::{Deserialize, Serialize};

/// Rules one store may hold.
pub const RETENTION_RULES_MAX: usize = 200;
/// Longest age a rule may name, in days (100 years).
pub const RETENTION_DAYS_MAX: u32 = 36_500;

/// A retention rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub name: String,
    /// Folder names (case-insensitive) or special uses (`Trash`, `Junk`, `Sent`, `Drafts`,
    /// `Archive`, `BACKUP`); empty: every folder.
    #[serde(default)]
    pub folders: Vec<String>,
    /// Account addresses (the group the rule is for); empty: every account.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Messages older than this are destroyed by the sweeper, in days.
    #[serde(default)]
    pub max_age_days: Option<u32>,
    /// No message younger than this is destroyed by anything, in days.
    #[serde(default)]
    pub min_age_days: Option<u32>,
}

/// Checks a set of rules: names, bounds, and each rule saying something.
pub fn check_retention_rules(rules: &[RetentionRule]) -> std::result::Result<(), String> {
    if rules.len() > RETENTION_RULES_MAX {
        return Err(format!("at most {RETENTION_RULES_MAX} retention rules"));
    }
    let mut names = std::collections::BTreeSet::new();
    for rule in rules {
        if rule.name.trim().is_empty() || rule.name.len() > 100 {
            return Err("every retention rule needs a name of at most 100 bytes".into());
        }
        if !names.insert(rule.name.as_str()) {
            return Err(format!(
                "retention rule {}: the name is used twice",
                rule.name
            ));
        }
        if rule.max_age_days.is_none() && rule.min_age_days.is_none() {
            return Err(format!(
                "retention rule {}: give max_age_days, min_age_days or both",
                rule.name
            ));
        }
        for days in [rule.max_age_days, rule.min_age_days].into_iter().flatten() {
            if days == 0 || days > RETENTION_DAYS_MAX {
                return Err(format!(
                    "retention rule {}: {days} days is outside 1..={RETENTION_DAYS_MAX}",
                    rule.name
                ));
            }
        }
        if let (Some(max), Some(min)) = (rule.max_age_days, rule.min_age_days) {
            if max < min {
                return Err(format!(
                    "retention rule {}: max_age_days {max} is below min_age_days {min}",
                    rule.name
                ));
            }
        }
    }
    Ok(())
}

/// A setting a configuration may not hold: which key, and why. The key is as written in its
/// section (`line_bytes_max`); `in_section` puts the section in front (`imap.line_bytes_max`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidSetting {
    /// A number outside the range it may take, bounds included.
    OutOfRange {
        key: String,
        value: u64,
        min: u64,
        max: u64,
    },
    /// Anything else wrong with it.
    Wrong { key: String, reason: String },
}

impl InvalidSetting {
    /// The same error with `section.` in front of its key.
    pub fn in_section(self, section: &str) -> Self {
        match self {
            Self::OutOfRange {
                key,
                value,
                min,
                max,
            } => Self::OutOfRange {
                key: format!("{section}.{key}"),
                value,
                min,
                max,
            },
            Self::Wrong { key, reason } => Self::Wrong {
                key: format!("{section}.{key}"),
                reason,
            },
        }
    }

    /// `key` is wrong because `reason`.
    pub fn wrong(key: &str, reason: impl Into<String>) -> Self {
        Self::Wrong {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfRange {
                key,
                value,
                min,
                max,
            } => write!(f, "{key} = {value} is outside {min}..={max}"),
            Self::Wrong { key, reason } => write!(f, "{key}: {reason}"),
        }
    }
}

impl std::error::Error for InvalidSetting {}

/// Refuses `value` outside `min..=max`.
pub fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), InvalidSetting> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InvalidSetting::OutOfRange {
            key: key.into(),
            value,
            min,
            max,
        })
    }
}

/// Bounds on the sign-in settings, each in its unit.
pub mod sign_in_bounds {
    /// Longest web session idle time and absolute lifetime, in milliseconds (7 days).
    pub const SESSION_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
    /// Shortest web session idle time, in milliseconds (1 minute).
    pub const SESSION_MS_MIN: u64 = 60 * 1000;
    /// Most failures either lockout counter may allow.
    pub const FAILURES_MAX: u32 = 10_000;
    /// Shortest failure window, in milliseconds (a second).
    pub const FAILURE_WINDOW_MS_MIN: u64 = 1000;
    /// Longest failure window, in milliseconds (1 day).
    pub const FAILURE_WINDOW_MS_MAX: u64 = 24 * 3600 * 1000;
}

/// Sign-in settings, the one type for them: the second factors asked for, how long a web
/// session lasts, and when failed sign-ins (IMAP, SMTP, the web) lock a client address or an
/// account out. `sealpost.toml`'s `[auth]` is version 0; the console's policy versions
/// (`sign_in`) replace them live. The identity crate enforces them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignInSettings {
    /// A second factor for everyone on the web; with it, mail clients need app passwords.
    pub second_factor_required: bool,
    /// The second factor of staff must be a passkey (admins and auditors always need one).
    pub passkey_required_for_staff: bool,
    /// A web session unused this long ends, in milliseconds.
    pub session_idle_ms: u64,
    /// A web session ends this long after sign-in whatever its use, in milliseconds.
    pub session_absolute_ms: u64,
    /// Failed sign-ins from one client address within the window before it is locked out.
    pub failures_per_address_max: u32,
    /// Failed sign-ins for one account within the window before it is locked out.
    pub failures_per_account_max: u32,
    /// How long failures are remembered and a lockout lasts, in milliseconds.
    pub failure_window_ms: u64,
}

impl Default for SignInSettings {
    fn default() -> Self {
        Self {
            second_factor_required: true,
            passkey_required_for_staff: false,
            session_idle_ms: 30 * 60 * 1000,
            session_absolute_ms: 12 * 3600 * 1000,
            failures_per_address_max: 20,
            failures_per_account_max: 10,
            failure_window_ms: 15 * 60 * 1000,
        }
    }
}

impl SignInSettings {
    /// Refuses settings outside `sign_in_bounds`.
    pub fn check(&self) -> Result<(), InvalidSetting> {
        use sign_in_bounds::*;
        in_range(
            "session_idle_ms",
            self.session_idle_ms,
            SESSION_MS_MIN,
            SESSION_MS_MAX,
        )?;
        in_range(
            "session_absolute_ms",
            self.session_absolute_ms,
            self.session_idle_ms,
            SESSION_MS_MAX,
        )?;
        in_range(
            "failures_per_address_max",
            u64::from(self.failures_per_address_max),
            1,
            u64::from(FAILURES_MAX),
        )?;
        in_range(
            "failures_per_account_max",
            u64::from(self.failures_per_account_max),
            1,
            u64::from(FAILURES_MAX),
        )?;
        in_range(
            "failure_window_ms",
            self.failure_window_ms,
            FAILURE_WINDOW_MS_MIN,
            FAILURE_WINDOW_MS_MAX,
        )
    }

    /// A web session unused this long ends, in milliseconds as the clock counts them.
    pub fn session_idle_ms_signed(&self) -> i64 {
        i64::try_from(self.session_idle_ms).unwrap_or(i64::MAX)
    }

    /// A web session ends this long after sign-in, in milliseconds as the clock counts them.
    pub fn session_absolute_ms_signed(&self) -> i64 {
        i64::try_from(self.session_absolute_ms).unwrap_or(i64::MAX)
    }
}

/// Refuses `value` below `min` (a bound with no upper end but the type's).
pub fn at_least(key: &str, value: u64, min: u64) -> Result<(), InvalidSetting> {
    if value >= min {
        Ok(())
    } else {
        Err(InvalidSetting::wrong(
            key,
            format!("{value} is below {min}"),
        ))
    }
}
