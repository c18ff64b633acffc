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
