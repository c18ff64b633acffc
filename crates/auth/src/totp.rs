//! TOTP (RFC 6238) as authenticator apps do it: HMAC-SHA1, 6 digits, 30-second steps, one
//! step of clock drift either way. A code is accepted once: the step it matched is kept and
//! a code of that step or an earlier one is refused after (RFC 6238, 5.2).

use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Bytes of a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;
/// Digits of a code.
pub const DIGITS: u8 = 6;
/// Seconds per step.
pub const STEP_SECONDS: u64 = 30;
/// Steps of clock drift accepted either way.
pub const SKEW_STEPS: u16 = 1;

fn totp(secret: &[u8], digits: u8, issuer: &str, account: &str) -> Option<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(digits)
        .with_secret(Secret::from(secret))
        .with_skew(SKEW_STEPS)
        .with_step_duration(STEP_SECONDS)
        .with_issuer(Some(issuer.replace(':', " ")))
        .with_account_name(account.replace(':', " "))
        .build()
        .ok()
}

/// A new random secret.
pub fn new_secret() -> Vec<u8> {
    (0..SECRET_BYTES).map(|_| rand::random::<u8>()).collect()
}

/// The code for `secret` at `unix_seconds`, with `digits` digits (6 for people; RFC 6238's
/// test vectors use 8).
pub fn code_at(secret: &[u8], digits: u8, unix_seconds: u64) -> Option<String> {
    Some(
        totp(secret, digits, "x", "x")?
            .generate(unix_seconds)
            .to_string(),
    )
}

/// The step `code` matches at `unix_seconds`, if it is later than `last_step` (codes are
/// used once). Spaces in the code are ignored ("123 456").
pub fn verify(secret: &[u8], code: &str, unix_seconds: u64, last_step: Option<u64>) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != usize::from(DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = totp(secret, DIGITS, "x", "x")?.check(&code, unix_seconds)?;
    (last_step.is_none_or(|last| step > last)).then_some(step)
}

/// The `otpauth://` link an authenticator app takes (by QR code or pasted).
pub fn enrolment_link(secret: &[u8], issuer: &str, account: &str) -> Option<String> {
    totp(secret, DIGITS, issuer, account)?.to_url().ok()
}

/// The secret in base32, for typing into an app by hand.
pub fn secret_text(secret: &[u8]) -> String {
    Secret::from(secret).to_base32()
}

/// `text` as a QR code in SVG (no script, no image request: it can sit in the page).
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, Appendix B: SHA-1, the ASCII secret "12345678901234567890", 8 digits.
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_at(secret, 8, time).as_deref(), Some(code), "at {time}");
        }
    }

    #[test]
    fn a_code_works_within_one_step_of_drift_and_only_once() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let code = code_at(&secret, DIGITS, now).unwrap();
        let step = verify(&secret, &code, now, None).unwrap();
        assert_eq!(step, now / STEP_SECONDS);
        assert_eq!(verify(&secret, &code, now, Some(step)), None, "used once");
        assert_eq!(
            verify(&secret, &code, now + STEP_SECONDS, Some(step - 1)),
            Some(step),
            "a step late"
        );
        assert_eq!(
            verify(&secret, &code, now + 3 * STEP_SECONDS, None),
            None,
            "too late"
        );
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(verify(&secret, &spaced, now, None), Some(step));
        assert_eq!(verify(&secret, "12345", now, None), None);
        assert_eq!(verify(&secret, "abcdef", now, None), None);
        assert_eq!(
            verify(&new_secret(), &code, now, None),
            None,
            "another secret"
        );
    }

    #[test]
    fn the_enrolment_link_and_qr_code_carry_the_secret() {
        let secret = new_secret();
        let link = enrolment_link(&secret, "Clinic: Sealpost", "alice@clinic.example").unwrap();
        assert!(link.starts_with("otpauth://totp/"), "{link}");
        assert!(link.contains(&secret_text(&secret)), "{link}");
        let svg = qr_svg(&link).unwrap();
        assert!(svg.contains("<svg") && !svg.contains("<script"), "{svg}");
    }
}
