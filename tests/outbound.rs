//! Outbound delivery against real receiving SMTP servers (aiosmtpd, `tests/scripts/
//! smtp_receiver.py`) on loopback addresses, found through MX records served by dnsmasq:
//! verified TLS with a certificate from a test CA, no STARTTLS, a certificate for another
//! name, an expired certificate, a server answering 451 first, one answering 550, a partner
//! with verified TLS that content rules still keep from SMTP, a smarthost, MTA-STS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    free_port_on, mx_records, sealpost, sealpost_ok, start_dns_with, with_dns_port, DataDir,
    Receiver, Server,
};

const PASSWORD: &str = "harness-pw";

/// A test CA, and certificates it signs: (CA PEM, [(cert PEM path, key PEM path)]).
fn test_ca(
    dir: &Path,
    names: &[&str],
) -> (
    std::path::PathBuf,
    Vec<(std::path::PathBuf, std::path::PathBuf)>,
) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sealpost test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let mut leaves = Vec::new();
    for name in names {
        // "expired:NAME": a certificate for NAME whose validity ended yesterday.
        let (name, expired) = match name.strip_prefix("expired:") {
            Some(name) => (name, true),
            None => (*name, false),
        };
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        if expired {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(30);
            params.not_after = now - time::Duration::days(1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        leaves.push((cert_path, key_path));
    }
    (ca_path, leaves)
}

fn queue(data: &DataDir) -> Vec<serde_json::Value> {
    let listed = sealpost(&["queue", "list", "--json", "--data", &data.arg()], "");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn each_recipient_gets_verified_tls_or_waits_and_nothing_goes_in_plaintext() {
    let work = tempfile::tempdir().unwrap();
    let ips = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.8",
        "127.0.0.16",
    ];
    let port = free_port_on(&ips);
    // mx.badcert.test presents a certificate for another name.
    let (ca, leaves) = test_ca(
        work.path(),
        &[
            "mx.tls.test",
            "somewhere-else.test",
            "mx.flaky.test",
            "mx.reject.test",
            "mx.partner.test",
            "expired:mx.expired.test",
        ],
    );
    let mx = mx_records(&[
        ("tls.test", "mx.tls.test", "127.0.0.2"),
        ("plain.test", "mx.plain.test", "127.0.0.3"),
        ("badcert.test", "mx.badcert.test", "127.0.0.4"),
        ("flaky.test", "mx.flaky.test", "127.0.0.5"),
        ("reject.test", "mx.reject.test", "127.0.0.6"),
        ("down.test", "mx.down.test", "127.0.0.7"),
        ("partner.test", "mx.partner.test", "127.0.0.8"),
        ("expired.test", "mx.expired.test", "127.0.0.16"),
    ]);
    let dns = start_dns_with(&[], &["test"], &mx);
    let tls_args = |i: usize| {
        vec![
            "--cert".to_string(),
            leaves[i].0.display().to_string(),
            "--key".to_string(),
            leaves[i].1.display().to_string(),
        ]
    };
    let start = |ip: &str, name: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Receiver::start(ip, port, &work.path().join(name), &args)
    };
    let tls = start(ips[0], "tls", tls_args(0));
    let plain = start(ips[1], "plain", vec![]);
    let badcert = start(ips[2], "badcert", tls_args(1));
    let flaky = start(
        ips[3],
        "flaky",
        [tls_args(2), vec!["--tempfail".into(), "1".into()]].concat(),
    );
    let reject = start(
        ips[4],
        "reject",
        [tls_args(3), vec!["--reject".into()]].concat(),
    );
    let partner = start(ips[5], "partner", tls_args(4));
    let expired = start(ips[6], "expired", tls_args(5));

    let (data, mut server) = sender(
        dns.port,
        &ca,
        &[
            ("port = 25\n", format!("port = {port}\n")),
            ("retry_first_ms = 60000", "retry_first_ms = 300".into()),
        ],
    );
    let config_path = data.path().join("sealpost.toml");
    let recipients = [
        "alice@tls.test",
        "bob@plain.test",
        "carol@badcert.test",
        "dan@flaky.test",
        "eve@reject.test",
        "frank@down.test",
        "gina@expired.test",
    ];
    submit(
        &data,
        &[
            (
                &recipients,
                "From: doc@clinic.test\r\nSubject: results\r\n\r\nThe patient record.\r\n",
            ),
            (
                &["zoe@partner.test"],
                "From: doc@clinic.test\r\nSubject: lab\r\n\r\nSSN 123-45-6789\r\n",
            ),
        ],
    );

    // Wait until tls.test and flaky.test have it (flaky after one retry).
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&tls, &flaky, &plain, &badcert, &partner, &expired]
        .iter()
        .any(|r| r.received().is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "no delivery: {:?}",
            server.seen.iter().rev().take(20).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
        server.wait_for("never", Duration::from_millis(1));
    }
    // Give a wrong second delivery the chance to show.
    std::thread::sleep(Duration::from_secs(2));
    // The 550 came back to the sender as a delivery status report, in INBOX and BACKUP.
    let bounce = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import imaplib, ssl\n\
             ctx = ssl.create_default_context(cafile={cafile:?})\n\
             m = imaplib.IMAP4_SSL('localhost', {port}, ssl_context=ctx)\n\
             m.login('doc@clinic.test', {PASSWORD:?})\n\
             for box in ('INBOX', 'BACKUP'):\n\
             \x20   m.select(box, readonly=True)\n\
             \x20   typ, data = m.search(None, 'FROM', 'MAILER-DAEMON')\n\
             \x20   uid = data[0].split()[-1]\n\
             \x20   typ, data = m.fetch(uid, '(BODY.PEEK[])')\n\
             \x20   print(box, data[0][1].decode())\n",
            cafile = data.path().join("tls/cert.pem").display().to_string(),
            port = data.port_base + 993,
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bounce.stdout).to_string()
        + &String::from_utf8_lossy(&bounce.stderr);
    assert!(bounce.status.success(), "{text}");
    assert_eq!(
        text.matches("Final-Recipient: rfc822; eve@reject.test")
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("report-type=delivery-status") && text.contains("Status: 5.1.1"),
        "{text}"
    );
    assert!(
        !text.contains("frank@down.test"),
        "only failures are reported: {text}"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    drop(dns);

    let got = tls.received();
    assert_eq!(got.len(), 1, "tls.test: one delivery");
    assert_eq!(got[0].0["tls"], true, "tls.test: over TLS");
    assert_eq!(got[0].0["to"], serde_json::json!(["alice@tls.test"]));
    assert!(String::from_utf8_lossy(&got[0].1).contains("The patient record."));
    // Both DKIM signatures (Ed25519 and RSA) verify at the receiver, by dkimpy, with the keys
    // `sealpost dns records` says to publish.
    let records = work.path().join("records.txt");
    std::fs::write(
        &records,
        sealpost_ok(&["dns", "records", "--data", &data.arg()], ""),
    )
    .unwrap();
    let message = work.path().join("received.eml");
    std::fs::write(&message, &got[0].1).unwrap();
    let verified = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scripts/dkim_verify.py"
        ))
        .args([&message, &records])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // An altered message does not.
    std::fs::write(
        &message,
        String::from_utf8_lossy(&got[0].1).replace("patient record", "patient recorb"),
    )
    .unwrap();
    let altered = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scripts/dkim_verify.py"
        ))
        .args([&message, &records])
        .output()
        .unwrap();
    assert!(!altered.status.success(), "an altered message verified");
    let got = flaky.received();
    assert_eq!(got.len(), 1, "flaky.test: delivered once, after the 451");
    assert_eq!(got[0].0["tls"], true);
    // plain.test (no STARTTLS) and badcert.test (a certificate for another name) get only a
    // notice, in plaintext, with a link and nothing of the message.
    let mut tokens = Vec::new();
    // zoe@partner.test's server has verified TLS, but the message holds an SSN: the default
    // content rule sends it to the portal, so zoe too gets only the notice.
    for (receiver, who) in [
        (&plain, "bob@plain.test"),
        (&badcert, "carol@badcert.test"),
        (&partner, "zoe@partner.test"),
        (&expired, "gina@expired.test"),
    ] {
        let got = receiver.received();
        assert_eq!(got.len(), 1, "{who}: one notice, nothing else");
        assert_eq!(got[0].0["to"], serde_json::json!([who]));
        // A notice goes over STARTTLS wherever the server offers it, verified or not (a
        // passive listener sees no link); in plaintext only to plain.test, which offers none.
        assert_eq!(
            got[0].0["tls"],
            who != "bob@plain.test",
            "{who}: how the notice went"
        );
        let notice = String::from_utf8_lossy(&got[0].1).to_string();
        assert!(notice.contains("has sent you a secure message"), "{notice}");
        assert!(
            !notice.contains("patient") && !notice.contains("results") && !notice.contains("6789"),
            "the notice leaks: {notice}"
        );
        let link = notice
            .lines()
            .find(|l| l.starts_with("https://localhost:"))
            .unwrap_or_else(|| panic!("no link: {notice}"));
        tokens.push(link.rsplit('/').next().unwrap().to_string());
    }
    assert!(reject.received().is_empty());

    // What stays queued: plain.test and badcert.test held for the portal, with the reason;
    // reject.test failed for good; the delivered ones are done.
    let entries = queue(&data);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let states = entries[0]["states"].as_array().unwrap().clone();
    let by_recipient: std::collections::HashMap<String, serde_json::Value> = entries[0]
        ["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .zip(states)
        .collect();
    let state = |r: &str| by_recipient[r].to_string();
    assert!(
        state("alice@tls.test").contains("Delivered")
            && state("alice@tls.test").contains("mx.tls.test over TLSv1_3"),
        "{}",
        state("alice@tls.test")
    );
    assert!(
        state("dan@flaky.test").contains("Delivered"),
        "{}",
        state("dan@flaky.test")
    );
    assert!(
        state("eve@reject.test").contains("Failed") && state("eve@reject.test").contains("550"),
        "{}",
        state("eve@reject.test")
    );
    assert!(
        state("bob@plain.test").contains("Portal")
            && state("bob@plain.test").contains("STARTTLS not offered"),
        "{}",
        state("bob@plain.test")
    );
    assert!(
        state("carol@badcert.test").contains("Portal")
            && state("carol@badcert.test").contains("no verified TLS"),
        "{}",
        state("carol@badcert.test")
    );
    assert!(
        state("frank@down.test").contains("Pending"),
        "{}",
        state("frank@down.test")
    );

    // The link leads to the message, for the portal; a made-up one leads nowhere.
    let shown = sealpost_ok(&["pickup", "show", &tokens[0], "--data", &data.arg()], "");
    assert!(
        shown.contains("pickup for <bob@plain.test> from <doc@clinic.test>"),
        "{shown}"
    );
    let message = sealpost_ok(
        &[
            "pickup",
            "show",
            &tokens[1],
            "--message",
            "--data",
            &data.arg(),
        ],
        "",
    );
    assert!(message.contains("The patient record."), "{message}");
    let made_up = "0".repeat(64);
    assert!(
        !sealpost(&["pickup", "show", &made_up, "--data", &data.arg()], "")
            .status
            .success()
    );

    // A restart mid-queue: what waits is tried again, what was delivered is not sent twice.
    let attempts_before = entries[0]["attempts"].as_u64().unwrap();
    // The same records, on a new DNS server (the old one went with the first run).
    let dns = start_dns_with(&[], &["test"], &mx);
    let config = std::fs::read_to_string(&config_path).unwrap();
    let config = with_dns_port(&config, dns.port);
    std::fs::write(&config_path, config).unwrap();
    let mut server = data.serve();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.wait_for("delivery attempt recorded", Duration::from_millis(200)) {
        assert!(Instant::now() < deadline, "no attempt after the restart");
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    drop(dns);
    let entries = queue(&data);
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0]["attempts"].as_u64().unwrap() > attempts_before,
        "{entries:?}"
    );
    for receiver in [&tls, &flaky, &plain, &badcert, &partner, &expired] {
        assert_eq!(receiver.received().len(), 1, "sent again after the restart");
    }

    // The sender's view: `queue show` says where each recipient stands and why.
    let id = entries[0]["id"].as_str().unwrap().to_string();
    let shown = sealpost_ok(&["queue", "show", &id, "--data", &data.arg()], "");
    assert!(
        shown.contains("to <alice@tls.test>: delivered")
            && shown.contains("verified TLS, mx.tls.test over TLSv1_3"),
        "{shown}"
    );
    assert!(
        shown.contains("to <eve@reject.test>: failed") && shown.contains("550"),
        "{shown}"
    );
    assert!(
        shown.contains("to <bob@plain.test>: kept for the pickup portal")
            && shown.contains("STARTTLS not offered"),
        "{shown}"
    );
    assert!(
        shown.contains("to <frank@down.test>: waiting; last:"),
        "{shown}"
    );
    sealpost_ok(&["queue", "retry", &id, "--data", &data.arg()], "");
    assert!(
        !sealpost(&["queue", "show", "0000", "--data", &data.arg()], "")
            .status
            .success()
    );
    sealpost_ok(&["queue", "delete", &id, "--data", &data.arg()], "");
    assert!(queue(&data).is_empty());

    // Every choice is in the audit log, and the deletion.
    let exported = sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    assert!(
        exported.contains("queue.delete")
            && exported.contains("queue.retry")
            && exported.contains("queue.bounce")
    );
    assert!(exported.contains("pickup.read"));
    // The notices' deliveries say how each went: unverified STARTTLS, or plaintext where the
    // server offers no TLS; never "verified".
    let notice_to = |who: &str| {
        exported
            .lines()
            .find(|l| {
                l.contains("queue.deliver") && l.contains(who) && l.contains("a pickup notice")
            })
            .unwrap_or_else(|| panic!("no notice delivery to {who}"))
            .to_string()
    };
    assert!(notice_to("bob@plain.test").contains("plaintext: the server offers no STARTTLS"));
    let badcert = notice_to("carol@badcert.test");
    assert!(
        badcert.contains("STARTTLS")
            && badcert.contains("certificate not verified")
            && !badcert.contains("verified TLS"),
        "{badcert}"
    );
    for (what, who) in [
        ("queue.deliver", "alice@tls.test"),
        ("queue.deliver", "dan@flaky.test"),
        ("queue.defer", "dan@flaky.test"),
        ("queue.fail", "eve@reject.test"),
        ("queue.portal", "bob@plain.test"),
        ("queue.portal", "carol@badcert.test"),
        ("queue.portal", "zoe@partner.test"),
        ("queue.portal", "gina@expired.test"),
        ("pickup.create", "bob@plain.test"),
        ("queue.defer", "frank@down.test"),
    ] {
        assert!(
            exported
                .lines()
                .any(|l| l.contains(what) && l.contains(who)),
            "no {what} for {who} in the audit log"
        );
    }
}

#[test]
fn a_smarthost_relays_everything_over_verified_tls_and_connections_per_domain_are_limited() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port_on(&["127.0.0.9"]);
    let (ca, leaves) = test_ca(work.path(), &["relay.smarthost.test"]);
    let dns = start_dns_with(
        &[],
        &["test"],
        &["--host-record=relay.smarthost.test,127.0.0.9".to_string()],
    );
    // Each DATA is held a while, so that parallel deliveries would overlap at the relay.
    let relay = Receiver::start(
        "127.0.0.9",
        port,
        &work.path().join("relay"),
        &[
            "--cert",
            leaves[0].0.to_str().unwrap(),
            "--key",
            leaves[0].1.to_str().unwrap(),
            "--slow",
            "0.3",
        ],
    );
    let (data, mut server) = sender(
        dns.port,
        &ca,
        &[
            (
                "smarthost = \"\"",
                format!("smarthost = \"relay.smarthost.test:{port}\""),
            ),
            (
                "connections_per_domain_max = 5",
                "connections_per_domain_max = 1".into(),
            ),
        ],
    );
    // Four messages to domains without any DNS records: only the smarthost can take them.
    let to: Vec<String> = (0..4).map(|n| format!("x{n}@nowhere{n}.example")).collect();
    let to: Vec<[&str; 1]> = to.iter().map(|t| [t.as_str()]).collect();
    let messages: Vec<(&[&str], &str)> = to
        .iter()
        .map(|t| {
            (
                t.as_slice(),
                "From: doc@clinic.test\r\nSubject: n\r\n\r\nbody\r\n",
            )
        })
        .collect();
    submit(&data, &messages);
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.received().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the relay got {} of 4",
            relay.received().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    for (envelope, _) in relay.received() {
        assert_eq!(envelope["tls"], true, "to the smarthost over TLS");
    }
    let concurrency = std::fs::read_to_string(work.path().join("relay/concurrency")).unwrap();
    assert_eq!(
        concurrency.trim(),
        "1",
        "connections at once to the smarthost"
    );
}

/// A file served over HTTPS; killed when dropped.
struct HttpsFile(Child);

impl Drop for HttpsFile {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_https(ip: &str, port: u16, cert: &Path, key: &Path, body: &str, dir: &Path) -> HttpsFile {
    let file = dir.join(format!("policy-{ip}.txt"));
    std::fs::write(&file, body).unwrap();
    let mut child = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scripts/https_file.py"
        ))
        .args([ip, &port.to_string()])
        .args([cert, key])
        .arg("/.well-known/mta-sts.txt")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    HttpsFile(child)
}

#[test]
fn an_mta_sts_policy_in_enforce_mode_chooses_the_mx_hosts() {
    let work = tempfile::tempdir().unwrap();
    let ips = [
        "127.0.0.11",
        "127.0.0.12",
        "127.0.0.13",
        "127.0.0.14",
        "127.0.0.15",
    ];
    let port = free_port_on(&ips);
    let https_port = free_port_on(&ips);
    let (ca, leaves) = test_ca(
        work.path(),
        &[
            "mx1.sts.test",
            "mx2.sts.test",
            "mx1.nomatch.test",
            "mta-sts.sts.test",
            "mta-sts.nomatch.test",
        ],
    );
    let options: Vec<String> = [
        "--mx-host=sts.test,mx1.sts.test,10",
        "--mx-host=sts.test,mx2.sts.test,20",
        "--mx-host=nomatch.test,mx1.nomatch.test,10",
        "--host-record=mx1.sts.test,127.0.0.11",
        "--host-record=mx2.sts.test,127.0.0.12",
        "--host-record=mx1.nomatch.test,127.0.0.13",
        "--host-record=mta-sts.sts.test,127.0.0.14",
        "--host-record=mta-sts.nomatch.test,127.0.0.15",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dns = start_dns_with(
        &[
            ("_mta-sts.sts.test", "v=STSv1; id=20261123".into()),
            ("_mta-sts.nomatch.test", "v=STSv1; id=20261123".into()),
        ],
        &["test"],
        &options,
    );
    let receiver = |i: usize, name: &str| {
        let (cert, key) = (leaves[i].0.to_str().unwrap(), leaves[i].1.to_str().unwrap());
        Receiver::start(
            ips[i],
            port,
            &work.path().join(name),
            &["--cert", cert, "--key", key],
        )
    };
    let mx1 = receiver(0, "mx1");
    let mx2 = receiver(1, "mx2");
    let nomatch = receiver(2, "nomatch");
    let _policy = serve_https(
        ips[3],
        https_port,
        &leaves[3].0,
        &leaves[3].1,
        "version: STSv1\r\nmode: enforce\r\nmx: mx2.sts.test\r\nmax_age: 86400\r\n",
        work.path(),
    );
    let _nomatch_policy = serve_https(
        ips[4],
        https_port,
        &leaves[4].0,
        &leaves[4].1,
        "version: STSv1\r\nmode: enforce\r\nmx: *.elsewhere.test\r\nmax_age: 86400\r\n",
        work.path(),
    );
    let (data, mut server) = sender(
        dns.port,
        &ca,
        &[
            ("port = 25\n", format!("port = {port}\n")),
            ("mta_sts_port = 443", format!("mta_sts_port = {https_port}")),
        ],
    );
    submit(
        &data,
        &[(
            &["a@sts.test", "b@nomatch.test"],
            "From: doc@clinic.test\r\nSubject: s\r\n\r\nbody\r\n",
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while mx2.received().is_empty() {
        assert!(Instant::now() < deadline, "nothing reached mx2.sts.test");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the notice for nomatch.test be tried too (it must wait, not spawn notices).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let exported = sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    // The policy names only mx2: the preferred mx1 is passed over.
    assert_eq!(mx2.received().len(), 1, "{exported}\n{:?}", server.seen);
    assert!(
        mx1.received().is_empty(),
        "mx1.sts.test is not in the policy"
    );
    // nomatch.test's policy names none of its MX hosts: nothing goes there, not even a notice.
    assert!(nomatch.received().is_empty());
    assert!(
        exported
            .lines()
            .any(|l| l.contains("queue.deliver") && l.contains("mx2.sts.test (MTA-STS enforced)")),
        "{exported}"
    );
    assert!(
        exported
            .lines()
            .any(|l| l.contains("queue.portal") && l.contains("names none of its MX hosts")),
        "{exported}"
    );
    assert_eq!(
        exported
            .lines()
            .filter(|l| l.contains("pickup.create"))
            .count(),
        1,
        "one pickup, one notice: {exported}"
    );
    assert!(exported
        .lines()
        .any(|l| l.contains("queue.defer") && l.contains("names none of its MX hosts")));

    // The policy is kept in the store: after a restart, with its HTTPS server gone (a
    // downgrade attempt), mail for sts.test still goes only to mx2.
    drop(_policy);
    let mut server = data.serve();
    submit(
        &data,
        &[(
            &["a@sts.test"],
            "From: doc@clinic.test\r\nSubject: again\r\n\r\nbody\r\n",
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while mx2.received().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "nothing more reached mx2.sts.test"
        );
        assert!(mx1.received().is_empty(), "mx1 got mail after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    assert!(mx1.received().is_empty());
}

/// A sending Sealpost for clinic.test with the account doc@clinic.test, asking the DNS server
/// on `dns_port`, trusting `ca`, and its configuration changed further by `edits` (each
/// must apply).
fn sender(dns_port: u16, ca: &Path, edits: &[(&str, String)]) -> (DataDir, Server) {
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    let config_path = data.path().join("sealpost.toml");
    let mut config = with_dns_port(&std::fs::read_to_string(&config_path).unwrap(), dns_port);
    let trust = (
        "ca_files = [\"/etc/ssl/certs/ca-certificates.crt\"]",
        format!("ca_files = [\"{}\"]", ca.display()),
    );
    for (from, to) in std::iter::once(&trust).chain(edits) {
        assert!(config.contains(from), "{from:?} is not in {config}");
        config = config.replace(from, to);
    }
    std::fs::write(&config_path, &config).unwrap();
    data.add_accounts(&["doc@clinic.test"], PASSWORD);
    let server = data.serve();
    (data, server)
}

/// Submits each (recipients, message) as doc@clinic.test over implicit TLS, with smtplib.
fn submit(data: &DataDir, messages: &[(&[&str], &str)]) {
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|(to, raw)| serde_json::json!([to, raw]))
        .collect();
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import json, os, smtplib, ssl\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             s = smtplib.SMTP_SSL('localhost', int(os.environ['PORT']), context=ctx)\n\
             s.login('doc@clinic.test', os.environ['PASSWORD'])\n\
             for to, raw in json.loads(os.environ['MESSAGES']):\n\
             \x20   s.sendmail('doc@clinic.test', to, raw.encode())\n\
             s.quit()\n",
        )
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("PORT", (data.port_base + 465).to_string())
        .env("PASSWORD", PASSWORD)
        .env("MESSAGES", serde_json::Value::Array(messages).to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An authoritative server (nsd) for `zones` — (origin, records, signed) — each signed zone
/// with its own keys (ldns-keygen, ldns-signzone), behind a validating resolver (unbound)
/// that trusts exactly those keys: the local resolver a site runs for DANE. Each (from, to)
/// of `forged` is replaced in the signed zones after signing, as an attacker would change
/// an answer: its signature no longer holds. Killed when dropped.
struct SignedDns {
    children: Vec<Child>,
    port: u16,
}

impl Drop for SignedDns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`; false if `child`
/// exits first or 5 s pass.
fn listening(child: &mut Child, port: u16) -> bool {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn start_signed_dns(
    dir: &Path,
    zones: &[(&str, &str, bool)],
    forged: &[(&str, &str)],
) -> SignedDns {
    let mut anchors = String::new();
    let mut nsd_zones = String::new();
    let mut stubs = String::new();
    for (origin, records, signed) in zones {
        let file = format!("{origin}zone");
        std::fs::write(
            dir.join(&file),
            format!(
                "$ORIGIN {origin}\n$TTL 300\n@ SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 300\n\
                 @ NS ns.{origin}\nns A 127.0.0.1\n{records}"
            ),
        )
        .unwrap();
        let served = if *signed {
            let ksk = run_in(dir, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", origin]);
            let zsk = run_in(dir, "ldns-keygen", &["-a", "ECDSAP256SHA256", origin]);
            run_in(dir, "ldns-signzone", &[&file, &ksk, &zsk]);
            let signed_path = dir.join(format!("{file}.signed"));
            let mut text = std::fs::read_to_string(&signed_path).unwrap();
            for (from, to) in forged {
                text = text.replace(from, to);
            }
            std::fs::write(&signed_path, text).unwrap();
            // "origin IN DS tag alg type digest": unbound takes it without the class.
            let ds = std::fs::read_to_string(dir.join(format!("{ksk}.ds"))).unwrap();
            let fields: Vec<&str> = ds.split_whitespace().collect();
            anchors += &format!(
                "  trust-anchor: \"{} DS {}\"\n",
                fields[0],
                fields[3..].join(" ")
            );
            format!("{file}.signed")
        } else {
            file
        };
        nsd_zones += &format!(
            "zone:\n  name: \"{origin}\"\n  zonefile: \"{}\"\n",
            dir.join(served).display()
        );
        stubs += &format!("stub-zone:\n  name: \"{origin}\"\n  stub-addr: 127.0.0.1@NSD_PORT\n");
    }
    // A port taken between choosing and binding it makes a server exit: start again on
    // others, at most five times.
    for _ in 0..5 {
        let (nsd_port, port) = (common::free_udp_port(), common::free_udp_port());
        let nsd_conf = dir.join("nsd.conf");
        std::fs::write(
            &nsd_conf,
            format!(
                "server:\n  ip-address: 127.0.0.1@{nsd_port}\n  port: {nsd_port}\n  database: \"\"\n  \
                 username: \"\"\n  chroot: \"\"\n  zonesdir: \"{dir}\"\n  pidfile: \"{dir}/nsd.pid\"\n  \
                 xfrdfile: \"{dir}/xfrd.state\"\n  zonelistfile: \"{dir}/zone.list\"\n  \
                 logfile: \"{dir}/nsd.log\"\nremote-control:\n  control-enable: no\n{nsd_zones}",
                dir = dir.display()
            ),
        )
        .unwrap();
        let unbound_conf = dir.join("unbound.conf");
        std::fs::write(
            &unbound_conf,
            format!(
                "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  \
                 chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  \
                 logfile: \"{dir}/unbound.log\"\n  num-threads: 1\n  do-not-query-localhost: no\n  \
                 local-zone: \"test.\" nodefault\n{anchors}remote-control:\n  control-enable: no\n{}",
                stubs.replace("NSD_PORT", &nsd_port.to_string()),
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut nsd = Command::new("nsd")
            .args(["-d", "-c"])
            .arg(&nsd_conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if !listening(&mut nsd, nsd_port) {
            let _ = nsd.kill();
            let _ = nsd.wait();
            continue;
        }
        let mut unbound = Command::new("unbound")
            .arg("-c")
            .arg(&unbound_conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = listening(&mut unbound, port);
        let dns = SignedDns {
            children: vec![nsd, unbound],
            port,
        };
        if up {
            return dns;
        }
    }
    panic!("nsd and unbound did not start");
}

/// A key and a self-signed certificate for `name`, written to DIR/FILE.pem and .key; and the
/// SHA-256 of its public key (what a TLSA 3 1 1 record holds), in hex.
fn self_signed(
    dir: &Path,
    name: &str,
    file: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path,
        key_path,
        sha256_hex(&key.subject_public_key_info()),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn dnssec_signed_tlsa_records_decide_the_certificate_a_server_must_present() {
    let work = tempfile::tempdir().unwrap();
    let ips = [
        "127.0.0.41",
        "127.0.0.42",
        "127.0.0.43",
        "127.0.0.44",
        "127.0.0.45",
        "127.0.0.47",
    ];
    let port = free_port_on(&ips);
    // mx.pkix, mx.mismatch and mx.bogus (.secure.test): certificates from the CA Sealpost trusts.
    let (ca, leaves) = test_ca(
        work.path(),
        &[
            "mx.pkix.secure.test",
            "mx.mismatch.secure.test",
            "mx.bogus.secure.test",
        ],
    );
    // mx.ee.secure.test: a self-signed certificate for another name, pinned by DANE-EE.
    let (ee_cert, ee_key, ee_pin) = self_signed(work.path(), "elsewhere.test", "ee");
    // mx.ee.plain.test: the same kind, pinned by a TLSA record in a zone that is not signed.
    let (plain_cert, plain_key, plain_pin) = self_signed(work.path(), "elsewhere.test", "plain");
    // mismatch.secure.test's TLSA names a key its server does not have.
    let (_, _, stranger_pin) = self_signed(work.path(), "stranger.test", "stranger");
    // mx.ta.secure.test: a certificate from a private CA that only its DANE-TA record names;
    // the server sends the CA along.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let private_ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
    let ta_key = rcgen::KeyPair::generate().unwrap();
    let ta_leaf = rcgen::CertificateParams::new(vec!["mx.ta.secure.test".to_string()])
        .unwrap()
        .signed_by(&ta_key, &private_ca)
        .unwrap();
    let (ta_cert, ta_key_path) = (work.path().join("ta.pem"), work.path().join("ta.key"));
    std::fs::write(&ta_cert, ta_leaf.pem() + &private_ca.pem()).unwrap();
    std::fs::write(&ta_key_path, ta_key.serialize_pem()).unwrap();
    let ta_hash = sha256_hex(private_ca.der());

    let dns_dir = work.path().join("dns");
    std::fs::create_dir(&dns_dir).unwrap();
    let tlsa = |host: &str, record: String| format!("_{port}._tcp.{host} TLSA {record}\n");
    let secure = [
        "ee MX 10 mx.ee\nmx.ee A 127.0.0.41\n".to_string(),
        tlsa("mx.ee", format!("3 1 1 {ee_pin}")),
        "mismatch MX 10 mx.mismatch\nmx.mismatch A 127.0.0.42\n".to_string(),
        tlsa("mx.mismatch", format!("3 1 1 {stranger_pin}")),
        "ta MX 10 mx.ta\nmx.ta A 127.0.0.43\n".to_string(),
        tlsa("mx.ta", format!("2 0 1 {ta_hash}")),
        "pkix MX 10 mx.pkix\nmx.pkix A 127.0.0.45\n".to_string(),
        "down MX 10 mx.down\nmx.down A 127.0.0.46\n".to_string(),
        // A TLSA record changed after signing (below): the resolver answers SERVFAIL.
        "bogus MX 10 mx.bogus\nmx.bogus A 127.0.0.47\n".to_string(),
        tlsa("mx.bogus", format!("3 1 1 {}", "ab".repeat(32))),
        // A signed MX answer naming a host whose zone (and so its TLSA record) is not signed.
        "unsignedhost MX 10 mx.ee.plain.test.\n".to_string(),
    ]
    .concat();
    let plain = [
        "ee MX 10 mx.ee\nmx.ee A 127.0.0.44\n".to_string(),
        // An unsigned MX answer naming a host with a signed TLSA record: DANE does not apply
        // (the MX could be forged), the CAs do.
        "viaplain MX 10 mx.mismatch.secure.test.\n".to_string(),
        tlsa("mx.ee", format!("3 1 1 {plain_pin}")),
    ]
    .concat();
    let dns = start_signed_dns(
        &dns_dir,
        &[
            ("secure.test.", &secure, true),
            ("plain.test.", &plain, false),
        ],
        &[(&"ab".repeat(32), &"cd".repeat(32))],
    );

    let tls_args = |cert: &Path, key: &Path| {
        vec![
            "--cert".to_string(),
            cert.display().to_string(),
            "--key".to_string(),
            key.display().to_string(),
        ]
    };
    let start = |ip: &str, name: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Receiver::start(ip, port, &work.path().join(name), &args)
    };
    let ee = start(ips[0], "ee", tls_args(&ee_cert, &ee_key));
    let mismatch = start(ips[1], "mismatch", tls_args(&leaves[1].0, &leaves[1].1));
    let ta = start(ips[2], "ta", tls_args(&ta_cert, &ta_key_path));
    let unsigned = start(ips[3], "unsigned", tls_args(&plain_cert, &plain_key));
    let pkix = start(ips[4], "pkix", tls_args(&leaves[0].0, &leaves[0].1));
    let bogus = start(ips[5], "bogus", tls_args(&leaves[2].0, &leaves[2].1));

    let (data, mut server) = sender(
        dns.port,
        &ca,
        &[("port = 25\n", format!("port = {port}\n"))],
    );
    assert!(
        server.wait_for("DANE: TLSA records apply", Duration::from_secs(10)),
        "DANE is not on with a resolver on loopback"
    );
    let recipients = [
        "a@ee.secure.test",
        "b@mismatch.secure.test",
        "c@ta.secure.test",
        "d@ee.plain.test",
        "e@pkix.secure.test",
        "f@down.secure.test",
        "g@unsignedhost.secure.test",
        "h@viaplain.plain.test",
        "i@bogus.secure.test",
    ];
    submit(
        &data,
        &[(
            &recipients,
            "From: doc@clinic.test\r\nSubject: results\r\n\r\nThe patient record.\r\n",
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while [
        (&ee, 1),
        (&mismatch, 2),
        (&ta, 1),
        (&unsigned, 2),
        (&pkix, 1),
        (&bogus, 1),
    ]
    .iter()
    .any(|(r, n)| r.received().len() < *n)
    {
        assert!(
            Instant::now() < deadline,
            "no delivery: {:?}",
            server.seen.iter().rev().take(20).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
        server.wait_for("never", Duration::from_millis(1));
    }
    // Give a wrong second delivery the chance to show.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));

    // The message went over TLS to the servers whose certificates the signed records (or,
    // without records, the CAs) vouch for.
    for (receiver, who) in [
        (&ee, "a@ee.secure.test"),
        (&ta, "c@ta.secure.test"),
        (&pkix, "e@pkix.secure.test"),
    ] {
        let got = receiver.received();
        assert_eq!(got.len(), 1, "{who}: one delivery");
        assert_eq!(got[0].0["tls"], true, "{who}: over TLS");
        assert_eq!(got[0].0["to"], serde_json::json!([who]));
        assert!(String::from_utf8_lossy(&got[0].1).contains("The patient record."));
    }
    // A certificate the CAs vouch for but the signed record does not name, one only an
    // unsigned record names (found through an unsigned MX answer, or through a signed one),
    // and one whose TLSA answer fails validation: the portal; those servers got notices (over
    // TLS the CAs vouch for, or in plaintext) and nothing else.
    for (receiver, notices) in [(&mismatch, 1), (&unsigned, 2), (&bogus, 1)] {
        let got: Vec<_> = receiver
            .received()
            .into_iter()
            .filter(|(envelope, _)| envelope["to"] != serde_json::json!(["h@viaplain.plain.test"]))
            .collect();
        assert_eq!(
            got.len(),
            notices,
            "{:?}: notices, nothing else",
            receiver.dir
        );
        for (_, message) in got {
            let notice = String::from_utf8_lossy(&message).to_string();
            assert!(notice.contains("has sent you a secure message"), "{notice}");
            assert!(
                !notice.contains("patient") && !notice.contains("results"),
                "{notice}"
            );
        }
    }

    // Each recipient's record says which evidence held.
    let entries = queue(&data);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let states = entries[0]["states"].as_array().unwrap().clone();
    let by_recipient: std::collections::HashMap<String, String> = entries[0]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .zip(states.iter().map(|s| s.to_string()))
        .collect();
    let expect = [
        (
            "a@ee.secure.test",
            "Delivered",
            "certificate matched DANE-EE 3 1 1",
        ),
        (
            "c@ta.secure.test",
            "Delivered",
            "certificate matched DANE-TA 2 0 1",
        ),
        (
            "b@mismatch.secure.test",
            "Portal",
            "matches none of the host's DNSSEC-signed TLSA records",
        ),
        ("d@ee.plain.test", "Portal", "no verified TLS"),
        ("g@unsignedhost.secure.test", "Portal", "no verified TLS"),
        (
            "i@bogus.secure.test",
            "Portal",
            "TLSA look-up for mx.bogus.secure.test failed: Server Failure",
        ),
        ("f@down.secure.test", "Pending", ""),
    ];
    for (who, status, why) in expect {
        let state = &by_recipient[who];
        assert!(
            state.contains(status) && state.contains(why),
            "{who}: {state}"
        );
    }
    for (who, host) in [
        ("e@pkix.secure.test", "mx.pkix.secure.test"),
        ("h@viaplain.plain.test", "mx.mismatch.secure.test"),
    ] {
        let state = &by_recipient[who];
        assert!(
            state.contains("Delivered")
                && state.contains(&format!("{host} over TLS"))
                && !state.contains("DANE"),
            "{who}: {state}"
        );
    }
}

/// A receiving server as lenient as the ones SMTP smuggling exploits, written for this test
/// (aiosmtpd is strict): it ends a message at a dot alone on a line whatever ends the lines
/// around it (`<LF>.<LF>`, `<CR>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR><LF>` as well as
/// `<CRLF>.<CRLF>`) and takes what follows as commands. It offers STARTTLS and, with
/// `--dsn`, DSN. Every command line goes to DIR/commands.jsonl and every message (its MAIL
/// and RCPT lines, and its data) to DIR/messages.jsonl. Prints "ready" once listening.
const LENIENT_RECEIVER: &str = r#"
import json, os, re, socketserver, ssl, sys, threading
host, port, cert, key, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dsn = '--dsn' in sys.argv[6:]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
END = re.compile(rb'(?:\r\n|\r|\n)\.(?:\r\n|\r|\n)')
lock = threading.Lock()

def log(name, record):
    with lock, open(os.path.join(out, name), 'a') as f:
        f.write(json.dumps(record) + '\n')

class Session(socketserver.BaseRequestHandler):
    def handle(self):
        self.sock, self.buf = self.request, b''
        self.sock.settimeout(30)
        self.send('220 lenient ESMTP')
        mail, rcpts = None, []
        try:
            while True:
                line = self.line()
                log('commands.jsonl', line.decode('latin-1'))
                verb = line[:4].upper()
                if verb in (b'EHLO', b'HELO'):
                    caps = ['lenient', 'PIPELINING', 'SIZE 10000000', '8BITMIME']
                    caps += ['DSN'] if dsn else []
                    caps += [] if isinstance(self.sock, ssl.SSLSocket) else ['STARTTLS']
                    for i, cap in enumerate(caps):
                        self.send(('250 ' if i == len(caps) - 1 else '250-') + cap)
                    mail, rcpts = None, []
                elif verb == b'STAR':
                    self.send('220 go ahead')
                    self.sock = context.wrap_socket(self.sock, server_side=True)
                    self.buf = b''
                elif verb == b'MAIL':
                    mail, rcpts = line.decode('latin-1'), []
                    self.send('250 ok')
                elif verb == b'RCPT':
                    if mail is None:
                        self.send('503 need MAIL')
                    else:
                        rcpts.append(line.decode('latin-1'))
                        self.send('250 ok')
                elif verb == b'DATA':
                    if not rcpts:
                        self.send('503 need RCPT')
                        continue
                    self.send('354 go ahead')
                    data = self.data()
                    log('messages.jsonl', {'mail': mail, 'rcpts': rcpts, 'data': data.decode('latin-1')})
                    mail, rcpts = None, []
                    self.send('250 queued')
                elif verb == b'RSET':
                    mail, rcpts = None, []
                    self.send('250 ok')
                elif verb == b'NOOP':
                    self.send('250 ok')
                elif verb == b'QUIT':
                    self.send('221 bye')
                    return
                else:
                    self.send('500 what')
        except (EOFError, OSError):
            pass

    def send(self, line):
        self.sock.sendall(line.encode() + b'\r\n')

    def more(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def line(self):
        while b'\n' not in self.buf:
            self.more()
        line, self.buf = self.buf.split(b'\n', 1)
        return line.rstrip(b'\r')

    def data(self):
        while True:
            # The data starts at the beginning of a line.
            found = END.search(b'\n' + self.buf)
            if found and not (found.end() - 1 == len(self.buf) and self.buf.endswith(b'\r')):
                start, end = max(found.start() - 1, 0), found.end() - 1
                data, self.buf = self.buf[:start], self.buf[end:]
                return data
            self.more()

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

server = Server((host, port), Session)
print('ready', flush=True)
server.serve_forever()
"#;

/// The lenient receiver above, on `ip`:`port` with a certificate; killed when dropped.
struct Lenient {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Lenient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lenient {
    fn start(
        ip: &str,
        port: u16,
        dir: &Path,
        (cert, key): &(std::path::PathBuf, std::path::PathBuf),
        dsn: bool,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut command = Command::new("/usr/bin/python3");
        command
            .arg("-c")
            .arg(LENIENT_RECEIVER)
            .args([ip, &port.to_string()])
            .args([cert, key])
            .arg(dir);
        if dsn {
            command.arg("--dsn");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the lenient receiver on {ip}:{port} did not start"
        );
        Lenient {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn lines(&self, file: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every message taken: {"mail": MAIL line, "rcpts": [RCPT lines], "data": text}.
    fn messages(&self) -> Vec<serde_json::Value> {
        self.lines("messages.jsonl")
    }

    /// Every command line received, in order.
    fn commands(&self) -> Vec<String> {
        self.lines("commands.jsonl")
            .into_iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    }
}

/// Runs `script` (Python) with an smtplib session `s` signed in as doc@clinic.test over
/// implicit TLS; the script's standard output.
fn submission_script(data: &DataDir, script: &str) -> String {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import json, os, smtplib, ssl\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             s = smtplib.SMTP_SSL('localhost', int(os.environ['PORT']), context=ctx)\n\
             s.login('doc@clinic.test', os.environ['PASSWORD'])\n\
             {script}\n\
             s.quit()\n"
        ))
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("PORT", (data.port_base + 465).to_string())
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn dsn_parameters_a_staff_member_submits_never_become_commands_to_another_server() {
    let work = tempfile::tempdir().unwrap();
    let ips = ["127.0.0.61", "127.0.0.62"];
    let port = free_port_on(&ips);
    let (ca, leaves) = test_ca(work.path(), &["mx.dsn.test", "mx.nodsn.test"]);
    let dns = start_dns_with(
        &[],
        &["test"],
        &mx_records(&[
            ("dsn.test", "mx.dsn.test", "127.0.0.61"),
            ("nodsn.test", "mx.nodsn.test", "127.0.0.62"),
        ]),
    );
    // A server that offers DSN, as Postfix and Exchange do; and aiosmtpd, which does not.
    let dsn = Lenient::start(ips[0], port, &work.path().join("dsn"), &leaves[0], true);
    let nodsn = Receiver::start(
        ips[1],
        port,
        &work.path().join("nodsn"),
        &[
            "--cert",
            leaves[1].0.to_str().unwrap(),
            "--key",
            leaves[1].1.to_str().unwrap(),
        ],
    );
    let (data, mut server) = sender(
        dns.port,
        &ca,
        &[("port = 25\n", format!("port = {port}\n"))],
    );

    // xtext that decodes to CR LF and a command, in ENVID and in ORCPT: refused at receipt.
    let message = "From: doc@clinic.test\r\nSubject: dsn\r\n\r\nbody\r\n";
    let replies = submission_script(
        &data,
        &format!(
            "def data(raw):\n\
             \x20   code, text = s.docmd('DATA')\n\
             \x20   if code != 354:\n\
             \x20       return code, text\n\
             \x20   s.send(raw.encode() + b'.\\r\\n')\n\
             \x20   return s.getreply()\n\
             out = []\n\
             out.append(s.docmd('MAIL FROM:<doc@clinic.test> ENVID=x+0D+0ARCPT+20TO:<spy@dsn.test>'))\n\
             out.append(s.docmd('RCPT TO:<alice@dsn.test>'))\n\
             out.append(data({message:?}))\n\
             s.rset()\n\
             out.append(s.docmd('MAIL FROM:<doc@clinic.test>'))\n\
             out.append(s.docmd('RCPT TO:<alice@dsn.test> ORCPT=rfc822;x+0D+0ARCPT+20TO:<spy@dsn.test>'))\n\
             out.append(s.docmd('RCPT TO:<carol@dsn.test>'))\n\
             out.append(data({message:?}))\n\
             s.rset()\n\
             # Printable values that need encoding (+ and =) are kept, and relayed encoded.\n\
             out.append(s.docmd('MAIL FROM:<doc@clinic.test> RET=HDRS ENVID=a+2Bb+3Dc'))\n\
             out.append(s.docmd('RCPT TO:<bob@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@dsn.test'))\n\
             out.append(s.docmd('RCPT TO:<dan@nodsn.test> NOTIFY=FAILURE ORCPT=rfc822;dan@nodsn.test'))\n\
             out.append(data({message:?}))\n\
             print(json.dumps([[code, text.decode()] for code, text in out]))"
        ),
    );
    let replies: Vec<(u16, String)> = serde_json::from_str(&replies).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dsn.messages().len() < 2 || nodsn.received().is_empty() {
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        server.wait_for("never", Duration::from_millis(1));
    }
    // Give a wrong extra delivery the chance to show.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));

    // The receiving server never saw a command that no queue entry names.
    let commands = dsn.commands();
    assert!(
        !commands.iter().any(|c| c.contains("spy@")),
        "an injected command reached the receiving server: {commands:#?}"
    );
    let codes: Vec<u16> = replies.iter().map(|(code, _)| *code).collect();
    assert_eq!(
        codes,
        [501, 503, 503, 250, 501, 250, 250, 250, 250, 250, 250],
        "{replies:#?}"
    );
    assert!(
        replies[0].1.contains("ENVID must be printable US-ASCII"),
        "{replies:?}"
    );
    assert!(
        replies[4].1.contains("ORCPT must be printable US-ASCII"),
        "{replies:?}"
    );
    let messages = dsn.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let envelope = |rcpt: &str| {
        let message = messages
            .iter()
            .find(|m| m["rcpts"].to_string().contains(rcpt))
            .unwrap_or_else(|| panic!("no message for {rcpt}: {messages:#?}"));
        let rcpts: Vec<String> = message["rcpts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        (message["mail"].as_str().unwrap().to_string(), rcpts)
    };
    // MAIL carries SIZE (offered) and, where DSN is offered, RET and the ENVID as xtext;
    // RCPT carries NOTIFY and ORCPT as xtext.
    let (plain_mail, plain_rcpts) = envelope("carol@");
    assert!(
        plain_mail.starts_with("MAIL FROM:<doc@clinic.test> SIZE="),
        "{plain_mail}"
    );
    assert!(
        !plain_mail.contains("ENVID") && !plain_mail.contains("RET="),
        "{plain_mail}"
    );
    assert_eq!(plain_rcpts, ["RCPT TO:<carol@dsn.test>"]);
    let (dsn_mail, dsn_rcpts) = envelope("bob@");
    assert!(
        dsn_mail.ends_with(" RET=HDRS ENVID=a+2Bb+3Dc"),
        "{dsn_mail}"
    );
    assert_eq!(
        dsn_rcpts,
        ["RCPT TO:<bob@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@dsn.test"]
    );
    // A server without DSN gets no DSN parameters (aiosmtpd would refuse them with 555),
    // and takes the message.
    let got = nodsn.received();
    assert_eq!(got.len(), 1, "nodsn.test: one delivery");
    assert_eq!(got[0].0["to"], serde_json::json!(["dan@nodsn.test"]));
}

#[test]
fn bare_cr_and_lf_in_a_submitted_message_never_smuggle_a_second_message() {
    let work = tempfile::tempdir().unwrap();
    let ips = ["127.0.0.63"];
    let port = free_port_on(&ips);
    let (ca, leaves) = test_ca(work.path(), &["mx.lenient.test"]);
    let dns = start_dns_with(
        &[],
        &["test"],
        &mx_records(&[("lenient.test", "mx.lenient.test", "127.0.0.63")]),
    );
    let lenient = Lenient::start(ips[0], port, &work.path().join("lenient"), &leaves[0], true);
    let (data, mut server) = sender(
        dns.port,
        &ca,
        &[("port = 25\n", format!("port = {port}\n"))],
    );
    // Each payload ends the message for a lenient receiver and starts a second transaction
    // to spy@lenient.test; sent raw (smtplib would mend the line ends) in DATA and in BDAT.
    let separators = ["\n.\n", "\r.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r\n.\n"];
    let script = format!(
        "separators = {separators:?}\n\
         out = []\n\
         for n, sep in enumerate(separators):\n\
         \x20   for how in ('DATA', 'BDAT'):\n\
         \x20       body = ('From: doc@clinic.test\\r\\nSubject: payload %d %s\\r\\n\\r\\nfirst part' % (n, how)\n\
         \x20               + sep + 'MAIL FROM:<doc@clinic.test>\\r\\nRCPT TO:<spy@lenient.test>\\r\\nDATA\\r\\n'\n\
         \x20               + 'From: doc@clinic.test\\r\\nSubject: smuggled\\r\\n\\r\\nsecret\\r\\n').encode()\n\
         \x20       out.append(s.docmd('MAIL FROM:<doc@clinic.test>'))\n\
         \x20       out.append(s.docmd('RCPT TO:<alice@lenient.test>'))\n\
         \x20       if how == 'DATA':\n\
         \x20           out.append(s.docmd('DATA'))\n\
         \x20           s.send(body + b'\\r\\n.\\r\\n')\n\
         \x20       else:\n\
         \x20           s.send(b'BDAT %d LAST\\r\\n' % len(body) + body)\n\
         \x20       out.append(s.getreply())\n\
         print(json.dumps([[code, text.decode()] for code, text in out]))"
    );
    let replies: Vec<(u16, String)> =
        serde_json::from_str(&submission_script(&data, &script)).unwrap();
    let submitted = separators.len() * 2;
    assert!(
        replies.iter().all(|(code, _)| matches!(code, 250 | 354)),
        "{replies:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while lenient.messages().len() < submitted {
        assert!(
            Instant::now() < deadline,
            "the receiver got {} of {submitted}",
            lenient.messages().len()
        );
        std::thread::sleep(Duration::from_millis(100));
        server.wait_for("never", Duration::from_millis(1));
    }
    // Give a smuggled extra message the chance to show.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let messages = lenient.messages();
    for message in &messages {
        assert_eq!(
            message["rcpts"],
            serde_json::json!(["RCPT TO:<alice@lenient.test>"]),
            "a message with other recipients: {messages:#?}"
        );
        let text = message["data"].as_str().unwrap();
        assert!(
            text.contains("first part") && text.contains("secret"),
            "cut short: {text:?}"
        );
    }
    assert_eq!(
        messages.len(),
        submitted,
        "one message per submission: {messages:#?}"
    );
    assert!(!lenient.commands().iter().any(|c| c.contains("spy@")));
}

#[test]
fn an_mta_sts_policy_seen_stays_in_force_when_its_dns_record_is_withheld() {
    let work = tempfile::tempdir().unwrap();
    let ips = ["127.0.0.71", "127.0.0.72", "127.0.0.73"];
    let port = free_port_on(&ips);
    let https_port = free_port_on(&ips);
    // The rogue MX has a certificate the CAs vouch for, for its own name.
    let (ca, leaves) = test_ca(
        work.path(),
        &["mx.guarded.test", "mx.rogue.test", "mta-sts.guarded.test"],
    );
    let receiver = |i: usize, name: &str| {
        let (cert, key) = (leaves[i].0.to_str().unwrap(), leaves[i].1.to_str().unwrap());
        Receiver::start(
            ips[i],
            port,
            &work.path().join(name),
            &["--cert", cert, "--key", key],
        )
    };
    let good = receiver(0, "good");
    let rogue = receiver(1, "rogue");
    let policy = serve_https(
        ips[2],
        https_port,
        &leaves[2].0,
        &leaves[2].1,
        "version: STSv1\r\nmode: enforce\r\nmx: mx.guarded.test\r\nmax_age: 86400\r\n",
        work.path(),
    );
    let published: Vec<String> = [
        "--mx-host=guarded.test,mx.guarded.test,10",
        "--host-record=mx.guarded.test,127.0.0.71",
        "--host-record=mx.rogue.test,127.0.0.72",
        "--host-record=mta-sts.guarded.test,127.0.0.73",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dns = start_dns_with(
        &[("_mta-sts.guarded.test", "v=STSv1; id=20261207".into())],
        &["test"],
        &published,
    );
    let (data, mut server) = sender(
        dns.port,
        &ca,
        &[
            ("port = 25\n", format!("port = {port}\n")),
            ("mta_sts_port = 443", format!("mta_sts_port = {https_port}")),
        ],
    );
    submit(
        &data,
        &[(
            &["a@guarded.test"],
            "From: doc@clinic.test\r\nSubject: one\r\n\r\nfirst\r\n",
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while good.received().is_empty() {
        assert!(Instant::now() < deadline, "nothing reached mx.guarded.test");
        std::thread::sleep(Duration::from_millis(100));
        server.wait_for("never", Duration::from_millis(1));
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    drop(dns);
    drop(policy);

    // Whoever controls the network now withholds the _mta-sts record (and the policy host)
    // and points the MX at a server of theirs.
    let hijacked: Vec<String> = [
        "--mx-host=guarded.test,mx.rogue.test,10",
        "--host-record=mx.rogue.test,127.0.0.72",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dns = start_dns_with(&[], &["test"], &hijacked);
    data.configure(|config| with_dns_port(config, dns.port));
    let mut server = data.serve();
    submit(
        &data,
        &[(
            &["b@guarded.test"],
            "From: doc@clinic.test\r\nSubject: two\r\n\r\nsecond, confidential\r\n",
        )],
    );
    // Two attempts: the message's, and the pickup notice's (which must wait, not go to the
    // rogue server either).
    let deadline = Instant::now() + Duration::from_secs(30);
    let attempts = |server: &Server| {
        server
            .seen
            .iter()
            .filter(|l| l.contains("delivery attempt recorded"))
            .count()
    };
    while rogue.received().is_empty() && attempts(&server) < 2 {
        assert!(Instant::now() < deadline, "no attempts for b@guarded.test");
        server.wait_for("never", Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let got = rogue.received();
    assert!(
        got.is_empty(),
        "the rogue MX received mail: {:?}",
        got.iter()
            .map(|(e, m)| (e, String::from_utf8_lossy(m).to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(good.received().len(), 1);
    // As any enforce-mode policy naming none of the MX hosts: a delivery failure, kept in the
    // queue to be tried again (RFC 8461 §5), never sent to the host the policy does not name.
    let entries = queue(&data);
    let held = entries
        .iter()
        .find(|e| e["recipients"] == serde_json::json!(["b@guarded.test"]))
        .unwrap_or_else(|| panic!("b@guarded.test is not in the queue: {entries:#?}"));
    let state = held["states"].to_string();
    assert!(state.contains("\"Pending\""), "{state}");
    assert!(state.contains("names none of its MX hosts"), "{state}");
}
