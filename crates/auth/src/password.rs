//! Whether a new password is strong enough: long enough, not on the list of common passwords
//! that ships with the project (`data/common-passwords.txt`), and hard to guess by zxcvbn's
//! estimate, which knows dictionaries, keyboard walks, dates, repeats and l33t spellings and
//! is told the account's own words (its address and name).

use std::collections::HashSet;
use std::sync::OnceLock;

/// Shortest password accepted, in characters.
pub const PASSWORD_CHARS_MIN: usize = 12;
/// Longest password accepted, in bytes (hashing a longer one is work for nothing).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Lowest zxcvbn score accepted (0–4; 3: about 10^10 guesses, "safely unguessable" for a
/// slow hash).
pub const ZXCVBN_SCORE_MIN: u8 = 3;

const COMMON: &str = include_str!("../data/common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Why a password was refused, in words for the person choosing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Weakness {
    TooShort,
    TooLong,
    Common,
    Guessable(String),
}

impl std::fmt::Display for Weakness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weakness::TooShort => write!(f, "use at least {PASSWORD_CHARS_MIN} characters"),
            Weakness::TooLong => write!(f, "use at most {PASSWORD_BYTES_MAX} bytes"),
            Weakness::Common => f.write_str("this is one of the most common passwords"),
            Weakness::Guessable(hint) => write!(f, "this is easy to guess: {hint}"),
        }
    }
}

/// Checks a new password; `context` holds the account's own words (address, name), which
/// must not carry the password.
pub fn check(password: &str, context: &[&str]) -> Result<(), Weakness> {
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(Weakness::TooLong);
    }
    if password.chars().count() < PASSWORD_CHARS_MIN {
        return Err(Weakness::TooShort);
    }
    let lower = password.to_lowercase();
    // The list holds passwords as people type them; "Password123!" is "password123" with a
    // capital and a mark added.
    let core = lower.trim_end_matches(|c: char| !c.is_alphanumeric());
    if common().contains(lower.as_str()) || common().contains(core) {
        return Err(Weakness::Common);
    }
    // The address's parts as words of their own ("alice", "clinic", "example").
    let words: Vec<&str> = context
        .iter()
        .flat_map(|w| w.split(|c: char| !c.is_alphanumeric()))
        .filter(|w| w.len() >= 3)
        .chain(context.iter().copied())
        .collect();
    let estimate = zxcvbn::zxcvbn(password, &words);
    if u8::from(estimate.score()) < ZXCVBN_SCORE_MIN {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning().map(|w| w.to_string()))
            .unwrap_or_else(|| "add more words that do not belong together".to_string());
        return Err(Weakness::Guessable(hint));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_list_is_read_and_used() {
        assert!(common().len() >= 10_000, "{}", common().len());
        assert!(common().contains("password1"));
        assert_eq!(
            check("trustno1trustno1", &[]),
            Err(Weakness::Guessable(check_hint("trustno1trustno1")))
        );
    }

    fn check_hint(password: &str) -> String {
        match check(password, &[]) {
            Err(Weakness::Guessable(hint)) => hint,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason_and_strong_ones_pass() {
        assert_eq!(check("short", &[]), Err(Weakness::TooShort));
        assert_eq!(check(&"x".repeat(1025), &[]), Err(Weakness::TooLong));
        // On the list (the 12-character ones), as typed and with a mark added.
        assert_eq!(check("leavemealone", &[]), Err(Weakness::Common));
        assert_eq!(check("1qaz2wsx3edc!", &[]), Err(Weakness::Common));
        // Long enough, but patterns: a repeat, a keyboard walk, the account's own name.
        for weak in ["aaaaaaaaaaaaaaa", "qwertyuiopasdf", "abcdefghijklm"] {
            assert!(
                matches!(check(weak, &[]), Err(Weakness::Guessable(_))),
                "{weak}"
            );
        }
        assert!(matches!(
            check(
                "alicewonderland",
                &["alice.wonderland@clinic.example", "Alice Wonderland"]
            ),
            Err(Weakness::Guessable(_))
        ));
        for strong in [
            "correct horse battery staple",
            "Tulip-Anvil-Orbit-47",
            "velvet kettle sonar magpie",
        ] {
            assert_eq!(check(strong, &["alice@clinic.example"]), Ok(()), "{strong}");
        }
    }
}
