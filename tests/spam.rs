//! Inbound protection against a real rspamd (Debian's, started here on loopback with a
//! minimal configuration of this test's own, its DNS pointed at a dnsmasq that knows
//! nothing): GTUBE is quarantined and a release delivers it byte for byte into INBOX and
//! BACKUP; a clean message is delivered with its verdict; look-alike domains and borrowed
//! staff names get a warning; filing into Junk trains rspamd; with rspamd stopped, mail still
//! flows and the health page says rspamd is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sealpost, sealpost_ok, DataDir};

const PASSWORD: &str = "copper willow brisk anthem";
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

struct Rspamd {
    child: Child,
    /// Its statistics (Bayes) store.
    redis: Child,
    normal: u16,
    controller: u16,
}

impl Rspamd {
    /// Stops rspamd and its workers (SIGTERM to the main process, which ends its workers;
    /// SIGKILL would leave them answering), waiting until its port is closed.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.normal)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        self.stop();
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}

/// rspamd with Debian's rules and this test's workers, folders and DNS.
fn start_rspamd(dir: &std::path::Path, dns_port: u16) -> Rspamd {
    let (normal, controller) = (
        common::free_port_on(&["127.0.0.1"]),
        common::free_port_on(&["127.0.0.1"]),
    );
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::create_dir_all(dir.join("local/local.d")).unwrap();
    // Bayes learns into redis (Debian's redis-server, in memory only).
    let redis_port = common::free_port_on(&["127.0.0.1"]);
    let redis = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(
        dir.join("local/local.d/redis.conf"),
        format!("servers = \"127.0.0.1:{redis_port}\";\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rspamd.conf"),
        format!(
            ".include \"$CONFDIR/common.conf\"\n\
             options {{\n  pidfile = \"$RUNDIR/rspamd.pid\";\n  .include \"$CONFDIR/options.inc\"\n  \
             dns {{ nameserver = [\"127.0.0.1:{dns_port}\"]; timeout = 0.3s; retransmits = 1; }}\n}}\n\
             logging {{ type = \"file\"; filename = \"$LOGDIR/rspamd.log\"; level = \"notice\"; }}\n\
             worker \"normal\" {{ bind_socket = \"127.0.0.1:{normal}\"; .include \"$CONFDIR/worker-normal.inc\" }}\n\
             worker \"controller\" {{ bind_socket = \"127.0.0.1:{controller}\"; .include \"$CONFDIR/worker-controller.inc\" }}\n"
        ),
    )
    .unwrap();
    let var = |name: &str, value: &std::path::Path| format!("--var={name}={}", value.display());
    let child = Command::new("rspamd")
        .args(["-f", "-u", "root", "-g", "root", "-c"])
        .arg(dir.join("rspamd.conf"))
        .arg(var("CONFDIR", std::path::Path::new("/etc/rspamd")))
        .arg(var("DBDIR", &dir.join("db")))
        .arg(var("RUNDIR", dir))
        .arg(var("LOGDIR", dir))
        .arg(var("LOCAL_CONFDIR", &dir.join("local")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut rspamd = Rspamd {
        child,
        redis,
        normal,
        controller,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", normal)) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /ping HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.contains("pong") {
                return rspamd;
            }
        }
        assert!(rspamd.child.try_wait().unwrap().is_none(), "rspamd stopped");
        assert!(Instant::now() < deadline, "rspamd does not answer");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends one message over port 25; prints "accepted" or the refusal.
const SEND: &str = "import os, smtplib, sys\n\
s = smtplib.SMTP('127.0.0.1', int(os.environ['BASE']) + 25, timeout=30)\n\
s.ehlo('mx.sender.test')\n\
try:\n\
\x20   s.sendmail(os.environ['FROM'], ['doc@clinic.test'], sys.stdin.buffer.read())\n\
\x20   print('accepted')\n\
except smtplib.SMTPDataError as e:\n\
\x20   print('refused', e.smtp_code)\n\
s.quit()\n";

fn send(data: &DataDir, from: &str, message: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SEND)
        .env("BASE", data.port_base.to_string())
        .env("FROM", from)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every message of a folder of doc@, as (subject, raw) pairs; with MOVE set, copies the
/// message whose subject contains it into Junk first.
const FOLDER: &str = "import base64, email, imaplib, json, os, ssl\n\
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
m = imaplib.IMAP4_SSL('localhost', int(os.environ['BASE']) + 993, ssl_context=ctx)\n\
m.login('doc@clinic.test', os.environ['PASSWORD'])\n\
m.select(os.environ['FOLDER'], readonly=os.environ['FOLDER'] == 'BACKUP')\n\
for num in m.search(None, 'ALL')[1][0].split():\n\
\x20   raw = m.fetch(num, '(BODY.PEEK[])')[1][0][1]\n\
\x20   subject = email.message_from_bytes(raw)['Subject']\n\
\x20   if os.environ.get('JUNK') and os.environ['JUNK'] in subject:\n\
\x20       assert m.copy(num, 'Junk')[0] == 'OK'\n\
\x20   print(json.dumps({'subject': subject, 'raw': base64.b64encode(raw).decode()}))\n";

fn folder(data: &DataDir, name: &str, junk: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(FOLDER)
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("PASSWORD", PASSWORD)
        .env("FOLDER", name)
        .env("JUNK", junk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["subject"].as_str().unwrap_or("").to_string(),
                base64::engine::general_purpose::STANDARD
                    .decode(v["raw"].as_str().unwrap())
                    .unwrap(),
            )
        })
        .collect()
}

fn message(from: &str, subject: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: doc@clinic.test\r\nSubject: {subject}\r\nMessage-ID: <{}@sender.test>\r\n\
         Date: Wed, 02 Dec 2026 08:00:00 +0000\r\n\r\n{body}\r\n",
        subject.replace(' ', ".")
    )
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn gtube_is_held_a_release_delivers_it_whole_impostors_are_marked_and_mail_flows_without_rspamd() {
    let data = DataDir::init("clinic.test");
    data.add_accounts(&["doc@clinic.test"], PASSWORD);
    sealpost_ok(
        &[
            "account",
            "add",
            "holliday@clinic.test",
            "--name",
            "Doc Holliday",
            "--password-stdin",
            "--allow-weak-password",
            "--data",
            &data.arg(),
        ],
        &format!("{PASSWORD}\n"),
    );
    // A DNS server that knows nothing: rspamd's and the SPF checks' lookups end at once.
    let dns = common::start_dns_with(&[], &[], &["--address=/#/".to_string()]);
    let work = data.dir.path().join("rspamd");
    let mut rspamd = start_rspamd(&work, dns.port);
    data.configure(|config| {
        assert!(
            config.contains("rspamd = \"\"") && config.contains("controller = \"\""),
            "{config}"
        );
        common::with_dns_port(config, dns.port)
            .replace(
                "rspamd = \"\"",
                &format!("rspamd = \"127.0.0.1:{}\"", rspamd.normal),
            )
            .replace(
                "controller = \"\"",
                &format!("controller = \"127.0.0.1:{}\"", rspamd.controller),
            )
    });
    let mut server = data.serve();

    // A clean message: delivered, with its verdict; a forged warning field is removed.
    let words = "Shall we meet for lunch on Friday at the usual place near the river, \
                 and talk about the new rota, the summer holidays and the conference in \
                 October? Bring the notes from last week if you still have them.";
    let clean = message(
        "Alice <alice@partner.test>",
        "lunch on friday",
        &format!("{words}\r\n{words}\r\nX-Sealpost-Warning: not a header"),
    );
    let clean = clean.replacen(
        "Subject:",
        "X-Sealpost-Warning: impersonation: forged\r\nSubject:",
        1,
    );
    assert_eq!(send(&data, "alice@partner.test", &clean), "accepted");
    // GTUBE: held by the server, in no folder.
    let spam = message("Prize <win@lottery.test>", "you won", GTUBE);
    assert_eq!(send(&data, "win@lottery.test", &spam), "accepted");
    // Look-alike domain and a borrowed staff name.
    let lookalike = message(
        "Director <ceo@c1inic.test>",
        "urgent wire transfer",
        "Please pay the invoice today.",
    );
    assert_eq!(send(&data, "ceo@c1inic.test", &lookalike), "accepted");
    let borrowed = message(
        "\"Doc Holliday\" <doc.holliday@freemail.test>",
        "new phone number",
        "Call me on this one.",
    );
    assert_eq!(
        send(&data, "doc.holliday@freemail.test", &borrowed),
        "accepted"
    );

    let inbox = folder(&data, "INBOX", "");
    let subjects: Vec<&str> = inbox.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        !subjects.iter().any(|s| s.contains("you won")),
        "GTUBE reached the INBOX: {subjects:?}"
    );
    let lunch = &inbox
        .iter()
        .find(|(s, _)| s == "lunch on friday")
        .unwrap()
        .1;
    assert!(
        contains(lunch, "X-Sealpost-Spam: score="),
        "no verdict kept"
    );
    assert!(contains(lunch, "placement=inbox"));
    assert!(
        !contains(lunch, "impersonation: forged"),
        "a sender's warning field survived"
    );
    let wire = &inbox
        .iter()
        .find(|(s, _)| s.contains("urgent wire transfer"))
        .unwrap();
    assert!(wire.0.starts_with("[EXTERNAL] "), "{}", wire.0);
    assert!(contains(
        &wire.1,
        "X-Sealpost-Warning: impersonation: the sender's domain c1inic.test looks like clinic.test"
    ));
    let phone = &inbox
        .iter()
        .find(|(s, _)| s.contains("new phone number"))
        .unwrap();
    assert!(
        contains(&phone.1, "name of a member of staff (Doc Holliday)"),
        "{}",
        String::from_utf8_lossy(&phone.1)
    );
    assert!(!folder(&data, "BACKUP", "")
        .iter()
        .any(|(s, _)| s.contains("you won")));
    assert!(!folder(&data, "Junk", "")
        .iter()
        .any(|(s, _)| s.contains("you won")));

    // In the browser: the banner on the impostor's message, none on an honest one, and the
    // held message in the owner's digest.
    common::ensure_playwright();
    let said = common::run_browser(
        "warning.mjs",
        &data,
        &server,
        &[
            ("ADDRESS", std::ffi::OsStr::new("doc@clinic.test")),
            ("PASSWORD", std::ffi::OsStr::new(PASSWORD)),
            ("SUBJECT", std::ffi::OsStr::new("urgent wire transfer")),
            ("PLAIN", std::ffi::OsStr::new("lunch on friday")),
            ("HELD_FROM", std::ffi::OsStr::new("win@lottery.test")),
        ],
    );
    assert!(said.contains("\"step\":\"digest\""), "{said}");

    // The quarantine lists it (no subject unless asked), a release delivers it whole.
    let listed = sealpost_ok(
        &[
            "quarantine",
            "list",
            "--account",
            "doc@clinic.test",
            "--json",
            "--data",
            &data.arg(),
        ],
        "",
    );
    let held: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(held["subject"], "(not shown)");
    assert_eq!(held["sender"], "win@lottery.test");
    assert!(
        held["verdict"].as_str().unwrap().contains("action=reject"),
        "{held}"
    );
    let id = held["id"].as_str().unwrap().to_string();
    sealpost_ok(
        &[
            "quarantine",
            "release",
            "doc@clinic.test",
            &id,
            "--data",
            &data.arg(),
        ],
        "",
    );
    let released = folder(&data, "INBOX", "lunch");
    let won = &released
        .iter()
        .find(|(s, _)| s == "you won")
        .expect("released into INBOX")
        .1;
    let backup = folder(&data, "BACKUP", "");
    let won_backup = &backup
        .iter()
        .find(|(s, _)| s == "you won")
        .expect("released into BACKUP")
        .1;
    assert_eq!(won, won_backup, "INBOX and BACKUP copies differ");
    assert!(
        won.ends_with(spam.as_bytes()),
        "the released message differs from what was sent"
    );
    assert!(sealpost_ok(&["quarantine", "list", "--data", &data.arg()], "").is_empty());

    // Copying "lunch on friday" into Junk (above) trained rspamd.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let learned = sealpost_ok(
            &[
                "audit",
                "search",
                "--action",
                "spam.learn_spam",
                "--data",
                &data.arg(),
            ],
            "",
        );
        if let Some(line) = learned.lines().next() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["outcome"], "ok", "{record}");
            break;
        }
        assert!(Instant::now() < deadline, "no learning recorded");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A message taken out of Junk trains rspamd the other way.
    let ham = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, os, ssl, time\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             m = imaplib.IMAP4_SSL('localhost', int(os.environ['BASE']) + 993, ssl_context=ctx)\n\
             m.login('doc@clinic.test', os.environ['PASSWORD'])\n\
             words = ' '.join(['The ward round moves to Thursday morning; the night team hands over at seven.'] * 4)\n\
             raw = ('From: nurse@partner.test\\r\\nTo: doc@clinic.test\\r\\nSubject: rota change\\r\\nMessage-ID: <rota.1@partner.test>\\r\\n\\r\\n' + words + '\\r\\n').encode()\n\
             assert m.append('Junk', None, None, raw)[0] == 'OK'\n\
             m.select('Junk')\n\
             num = m.search(None, 'SUBJECT', 'rota')[1][0].split()[0]\n\
             assert m.copy(num, 'INBOX')[0] == 'OK'\n",
        )
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        ham.status.success(),
        "{}",
        String::from_utf8_lossy(&ham.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let learned = sealpost_ok(
            &[
                "audit",
                "search",
                "--action",
                "spam.learn_ham",
                "--data",
                &data.arg(),
            ],
            "",
        );
        if let Some(line) = learned.lines().next() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["outcome"], "ok", "{record}");
            break;
        }
        assert!(Instant::now() < deadline, "no ham learning recorded");
        std::thread::sleep(Duration::from_millis(200));
    }
    for action in ["quarantine.hold", "quarantine.release", "quarantine.search"] {
        let found = sealpost(
            &["audit", "search", "--action", action, "--data", &data.arg()],
            "",
        );
        assert!(!found.stdout.is_empty(), "no {action} record");
    }

    // With the Junk threshold below any score, an ordinary message goes to Junk (and BACKUP).
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    data.configure(|config| {
        assert!(config.contains("junk_score = 6.0"), "{config}");
        config.replace("junk_score = 6.0", "junk_score = -1000.0")
    });
    let mut server = data.serve();
    assert_eq!(
        send(
            &data,
            "alice@partner.test",
            &message(
                "Alice <alice@partner.test>",
                "minutes attached",
                "Here are the minutes."
            )
        ),
        "accepted"
    );
    assert!(
        folder(&data, "Junk", "")
            .iter()
            .any(|(s, _)| s == "minutes attached"),
        "not in Junk"
    );
    assert!(
        !folder(&data, "INBOX", "")
            .iter()
            .any(|(s, _)| s == "minutes attached"),
        "in the INBOX"
    );
    assert!(
        folder(&data, "BACKUP", "")
            .iter()
            .any(|(s, _)| s == "minutes attached"),
        "not in BACKUP"
    );

    // rspamd stopped: mail still flows, unscored, and the health check says so.
    rspamd.stop();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", rspamd.normal)).is_err(),
        "rspamd still answers"
    );
    assert_eq!(
        send(
            &data,
            "alice@partner.test",
            &message("Alice <alice@partner.test>", "still here", "Hello again.")
        ),
        "accepted"
    );
    let inbox = folder(&data, "INBOX", "");
    let still = &inbox.iter().find(|(s, _)| s == "still here").unwrap().1;
    assert!(
        contains(still, "X-Sealpost-Spam: unscored"),
        "{}",
        String::from_utf8_lossy(still)
    );
    let health = sealpost_ok(&["health", "--data", &data.arg()], "");
    assert!(health.contains("spam filter: DOWN since"), "{health}");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}
