//! SMTP end to end: the real `sealpost serve` with a real DNS server (dnsmasq) on loopback
//! publishing SPF, DKIM and DMARC records, driven by smtplib (with dkimpy signing), swaks and
//! msmtp (`tests/scripts/smtp_scenario.py`); then the outbound queue and the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{sealpost, sealpost_ok, start_dns, DataDir};

const PASSWORD: &str = "harness-pw";

/// A 1024-bit RSA DKIM key: (PEM private key path, base64 public key for the TXT record).
fn dkim_key(dir: &Path) -> (String, String) {
    let key = dir.join("dkim.pem");
    let made = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("1024")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    let encoded = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&public.stdout)?;
            child.wait_with_output()
        })
        .unwrap();
    (
        key.display().to_string(),
        String::from_utf8(encoded.stdout).unwrap(),
    )
}

#[test]
fn real_clients_send_inbound_and_submitted_mail_checked_by_dns_and_read_back_over_imap() {
    let work = tempfile::tempdir().unwrap();
    let (key, public) = dkim_key(work.path());
    let dns = start_dns(&[
        (
            "sender.test",
            "v=spf1 ip4:127.0.0.1 ~ip4:127.0.0.2 -all".into(),
        ),
        (
            "sel._domainkey.sender.test",
            format!("v=DKIM1; k=rsa; p={public}"),
        ),
        ("_dmarc.sender.test", "v=DMARC1; p=none".into()),
        ("strict.test", "v=spf1 ip4:127.0.0.1 -all".into()),
        ("_dmarc.strict.test", "v=DMARC1; p=reject".into()),
    ]);
    let data = DataDir::init_with("harness.test", &["--hostname", "localhost"]);
    let config_path = data.path().join("sealpost.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("dns_servers = []"), "{config}");
    let config = config.replace(
        "dns_servers = []",
        &format!("dns_servers = [\"127.0.0.1:{}\"]", dns.port),
    );
    std::fs::write(&config_path, config).unwrap();
    data.add_accounts(&["user1@harness.test", "user2@harness.test"], PASSWORD);
    let mut server = data.serve();
    let base = data.port_base;
    let output = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scripts/smtp_scenario.py"
        ))
        .env("SMTP_PORT", (base + 25).to_string())
        .env("SUBMISSION_PORT", (base + 587).to_string())
        .env("SUBMISSIONS_PORT", (base + 465).to_string())
        .env("IMAPS_PORT", (base + 993).to_string())
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("DKIM_KEY", &key)
        .env("WORK", work.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("PASS signed message: INBOX says dkim=pass"),
        "{text}"
    );
    drop(dns);

    // The outside recipient waits in the queue, sealed, for the outbound issue's delivery.
    let listed = sealpost(&["queue", "list", "--json", "--data", &data.arg()], "");
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let entries: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(
        entries[0]["recipients"],
        serde_json::json!(["someone@elsewhere.example"])
    );
    assert_eq!(entries[0]["from"], "user1@harness.test");
    // DSN parameters kept for the outbound delivery.
    assert_eq!(
        entries[0]["notify"],
        serde_json::json!([["SUCCESS", "FAILURE"]])
    );
    assert_eq!(
        entries[0]["orcpt"],
        serde_json::json!(["rfc822;someone@elsewhere.example"])
    );
    assert_eq!(entries[0]["env_id"], "env-587");
    assert_eq!(entries[0]["ret"], "HDRS");

    // Deliveries, submissions and the refusal are in the audit log, whose chain holds.
    let exported = sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    assert!(
        exported.contains("message.deliver") && exported.contains("spf=pass dkim=pass dmarc=pass")
    );
    assert!(exported.contains("message.submit") && exported.contains("message.refuse"));
    assert!(exported.contains("login.smtp"));
    assert!(sealpost_ok(&["audit", "verify", "--data", &data.arg()], "").contains("intact"));
}

#[test]
fn mail_acknowledged_before_a_crash_is_there_after_it() {
    let work = tempfile::tempdir().unwrap();
    let data = DataDir::init_with("harness.test", &["--hostname", "localhost"]);
    data.add_accounts(&["user1@harness.test", "user2@harness.test"], PASSWORD);
    let base = data.port_base;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/scripts/smtp_crash.py"
    );
    let acks = work.path().join("acks");
    let run = |mode: &str| {
        Command::new("/usr/bin/python3")
            .args([script, mode])
            .arg(&acks)
            .env("SUBMISSIONS_PORT", (base + 465).to_string())
            .env("IMAPS_PORT", (base + 993).to_string())
            .env("CAFILE", data.path().join("tls/cert.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let server = data.serve();
    let sender = run("send");
    // Let some messages through, then kill the server without warning (SIGKILL on drop).
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&acks)
        .unwrap_or_default()
        .lines()
        .count()
        < 20
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no message acknowledged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let sent = sender.wait_with_output().unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let mut server = data.serve();
    let checked = run("check").wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    assert!(checked.status.success(), "{text}");
    assert!(sealpost_ok(&["audit", "verify", "--data", &data.arg()], "").contains("intact"));
}

#[test]
fn connections_per_address_are_limited_with_a_421() {
    use std::io::{BufRead, BufReader};
    let data = DataDir::init_with("harness.test", &["--hostname", "localhost"]);
    data.set(&[("smtp.connections_per_address_max", "2")]);
    let mut server = data.serve();
    let port = data.port_base + 25;
    let greeting = |stream: &std::net::TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    };
    let first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(greeting(&first).starts_with("220 "));
    assert!(greeting(&second).starts_with("220 "));
    let third = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(
        greeting(&third),
        "421 4.7.0 too many connections from your address (limit 2)\r\n"
    );
    drop(first);
    // The slot is free once the first session has seen its client go.
    let started = std::time::Instant::now();
    loop {
        let again = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        if greeting(&again).starts_with("220 ") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slot was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}
