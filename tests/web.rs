//! The web application against the real binary, in a real browser: Debian's chromium,
//! headless, driven by playwright-core (`tests/browser/identity.mjs`). Sign-in with password
//! and TOTP, a passkey registered with Chrome's virtual authenticator and then used alone,
//! recovery codes, an app password used from Python's imaplib and smtplib (where the account
//! password is refused), CSRF on every form, sign out everywhere against a copied cookie;
//! and the lockout, which triggers and lifts. Screenshots of each page go to
//! `tests/browser/artifacts/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::DataDir;

const PASSWORD: &str = "velvet kettle sonar magpie";

fn browser_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/browser"))
}

/// playwright-core from the lock file, once (`npm ci`; the registry is reachable, the
/// browser is Debian's).
fn ensure_playwright() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A data folder with the default policy (a second factor required) and alice's account.
fn serve_with_second_factor_required() -> (DataDir, common::Server) {
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    data.configure(|config| config.replace("second_factor_required = false", "second_factor_required = true"));
    data.add_accounts(&["alice@clinic.test"], PASSWORD);
    let server = data.serve();
    (data, server)
}

#[test]
fn sign_in_passkeys_totp_app_passwords_and_sessions_in_a_real_browser() {
    ensure_playwright();
    let (data, mut server) = serve_with_second_factor_required();
    let artifacts = browser_dir().join("artifacts");
    let run = Command::new("node")
        .arg(browser_dir().join("identity.mjs"))
        .env("BASE", format!("https://localhost:{}", data.port_base + 443))
        .env("ADDRESS", "alice@clinic.test")
        .env("PASSWORD", PASSWORD)
        .env("ARTIFACTS", &artifacts)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{said}\n{}\n{:?}",
        String::from_utf8_lossy(&run.stderr),
        server.seen.iter().rev().take(30).collect::<Vec<_>>()
    );
    let steps: Vec<serde_json::Value> = said.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no {name}: {said}"))
    };
    for name in [
        "enrolment",
        "totp-enrolled",
        "signed-in-with-totp",
        "passkey-added",
        "signed-in-with-passkey",
        "signed-out-everywhere",
        "done",
    ] {
        step(name);
    }
    assert_eq!(step("recovery-codes")["count"], 10);
    for pair in step("csrf")["refused"].as_array().unwrap() {
        assert_eq!(pair[1], 403, "{pair} accepted a forged form");
    }
    assert!(std::fs::read_dir(&artifacts).unwrap().count() >= 10, "screenshots");

    // The app password opens IMAP and SMTP; the account password opens neither.
    let app_password = step("app-password")["password"].as_str().unwrap().to_string();
    let logins = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, smtplib, ssl, os\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             base = int(os.environ['BASE'])\n\
             for secret in (os.environ['APP'], os.environ['PASSWORD']):\n\
             \x20   m = imaplib.IMAP4_SSL('localhost', base + 993, ssl_context=ctx)\n\
             \x20   try:\n\
             \x20       print('imap', m.login('alice@clinic.test', secret)[0])\n\
             \x20   except imaplib.IMAP4.error as e:\n\
             \x20       print('imap refused')\n\
             \x20   s = smtplib.SMTP_SSL('localhost', base + 465, context=ctx)\n\
             \x20   try:\n\
             \x20       print('smtp', s.login('alice@clinic.test', secret)[0])\n\
             \x20   except smtplib.SMTPAuthenticationError as e:\n\
             \x20       print('smtp refused')\n",
        )
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("APP", &app_password)
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&logins.stdout).to_string() + &String::from_utf8_lossy(&logins.stderr);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["imap OK", "smtp 235", "imap refused", "smtp refused"],
        "{out}"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));

    // The audit log holds each step.
    let exported = common::sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    for action in [
        "auth.totp.enrol",
        "auth.passkey.add",
        "auth.recovery_codes.issue",
        "auth.app_password.issue",
        "auth.session.end_all",
        "login.web",
    ] {
        assert!(exported.contains(action), "no {action} in the audit log");
    }
    assert!(
        !exported.contains(&app_password),
        "the app password is in the audit log"
    );
}
