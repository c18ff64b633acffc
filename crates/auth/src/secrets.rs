//! Random secrets people handle: recovery codes and app passwords (shown once, kept only as
//! SHA-256 hashes: at 60 and 120 random bits a slow hash adds nothing), and tokens.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Recovery codes issued at a time.
pub const RECOVERY_CODES: usize = 10;

/// Letters of the secrets people type: 32 of them, without i, l, o and 1 (which look alike).
const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz023456789";

fn random_text(chars: usize) -> String {
    // 32 letters: each takes 5 random bits, no bias.
    (0..chars)
        .map(|_| char::from(ALPHABET[usize::from(rand::random::<u8>() & 31)]))
        .collect()
}

/// `chars` random letters in groups of four joined by `separator`.
fn grouped(chars: usize, separator: &str) -> String {
    random_text(chars)
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(separator)
}

/// What is hashed: the letters only, lower case (spaces and dashes as typed do not matter).
fn normalise(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

pub fn hash(text: &str) -> [u8; 32] {
    Sha256::digest(normalise(text).as_bytes()).into()
}

/// Whether `text` is the secret behind `stored`, in constant time.
pub fn matches(text: &str, stored: &[u8; 32]) -> bool {
    hash(text).ct_eq(stored).into()
}

/// New recovery codes ("abcd-efgh-jkmn", 60 bits each) and their hashes.
pub fn recovery_codes() -> (Vec<String>, Vec<[u8; 32]>) {
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| grouped(12, "-")).collect();
    let hashes = codes.iter().map(|c| hash(c)).collect();
    (codes, hashes)
}

/// A new app password ("abcd efgh jkmn pqrs tuvw xyz2", 120 bits) and its hash.
pub fn app_password() -> (String, [u8; 32]) {
    let password = grouped(24, " ");
    let hashed = hash(&password);
    (password, hashed)
}

/// `bytes` random bytes as URL-safe base64 without padding.
pub fn token(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_app_passwords_are_random_and_match_as_typed() {
        let (codes, hashes) = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        assert_eq!(codes[0].len(), 14, "{}", codes[0]);
        assert!(matches(&codes[0], &hashes[0]));
        assert!(
            matches(&codes[0].to_uppercase().replace('-', " "), &hashes[0]),
            "as typed"
        );
        assert!(!matches(&codes[1], &hashes[0]));

        let (password, hashed) = app_password();
        assert_eq!(normalise(&password).len(), 24);
        assert!(matches(&password, &hashed));
        assert!(
            matches(&password.replace(' ', ""), &hashed),
            "pasted without spaces"
        );
        assert!(!matches(&app_password().0, &hashed));
        assert_eq!(token(32).len(), 43);
    }
}
