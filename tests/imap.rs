//! IMAP end to end: the real `sealpost serve` over TLS on loopback, driven by real clients:
//! the shared conformance harness (both TLS modes), its real_clients.sh (mbsync, interimap,
//! and swaks and msmtp for SMTP), a Python imaplib scenario and an mbsync round trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{sealpost_ok, DataDir, Server};

const PASSWORD: &str = "harness-pw";

/// The shared harness, beside the checkout (`../shared/harness`), as on every machine here.
fn harness_dir() -> PathBuf {
    let dir = match std::env::var_os("SEALPOST_HARNESS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/harness"),
    };
    assert!(
        dir.join("imap_conformance.py").exists(),
        "{} is missing: the shared harness must sit beside the checkout",
        dir.display()
    );
    dir
}

/// A data folder with user1..user10@harness.test and a server running on it.
fn harness_server() -> (DataDir, Server) {
    harness_server_with(|config| config.to_string())
}

/// As `harness_server`, with `sealpost.toml` rewritten by `configure` first.
fn harness_server_with(configure: impl Fn(&str) -> String) -> (DataDir, Server) {
    let data = DataDir::init_with("harness.test", &["--hostname", "localhost"]);
    let config_path = data.path().join("sealpost.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, configure(&config)).unwrap();
    for n in 1..=10 {
        data.add_accounts(&[&format!("user{n}@harness.test")], PASSWORD);
    }
    let server = data.serve();
    (data, server)
}

fn run_python(args: &[String], envs: &[(&str, String)]) -> (bool, String) {
    let output = Command::new("python3")
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn shared_conformance_harness_passes_over_starttls_and_implicit_tls() {
    let (data, mut server) = harness_server();
    let base = data.port_base;
    let envs = [
        ("HARNESS_HOST", "127.0.0.1".to_string()),
        ("HARNESS_IMAP_PORT", (base + 143).to_string()),
        ("HARNESS_IMAPS_PORT", (base + 993).to_string()),
        (
            "HARNESS_CAFILE",
            data.path().join("tls/cert.pem").display().to_string(),
        ),
        ("HARNESS_DOMAIN", "harness.test".to_string()),
        ("HARNESS_USER", "user1@harness.test".to_string()),
        ("HARNESS_PASS", PASSWORD.to_string()),
        ("HARNESS_USER2", "user2@harness.test".to_string()),
        ("HARNESS_PASS2", PASSWORD.to_string()),
    ];
    let script = harness_dir()
        .join("imap_conformance.py")
        .display()
        .to_string();
    for mode in ["starttls", "implicit"] {
        let (ok, text) = run_python(&[script.clone(), "--tls".into(), mode.into()], &envs);
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("passed"))
            .unwrap_or_default()
            .to_string();
        assert!(
            ok && last.ends_with(" 0 failed") && last.contains("passed"),
            "harness over {mode} (exit status {}): {last}\n{text}",
            if ok { "0" } else { "not 0" }
        );
        // A skipped check is a failed one: the harness skips an extension that is not
        // advertised, so an extension Sealpost lost would otherwise pass unseen.
        let skipped: Vec<&str> = text.lines().filter(|l| l.starts_with("SKIP")).collect();
        assert!(
            skipped.is_empty(),
            "harness over {mode} skipped: {skipped:#?}\n{text}"
        );
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

#[test]
fn imaplib_scenario_runs_and_logins_and_reads_are_audited() {
    let (data, mut server) = harness_server();
    let base = data.port_base;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/imap_scenario.py");
    let args = vec![
        script.display().to_string(),
        "127.0.0.1".into(),
        (base + 143).to_string(),
        (base + 993).to_string(),
        data.path().join("tls/cert.pem").display().to_string(),
        "user3@harness.test".into(),
        PASSWORD.into(),
    ];
    let (ok, text) = run_python(&args, &[]);
    assert!(ok, "{text}");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    // The log names no user and no subject.
    assert!(
        !server
            .seen
            .iter()
            .any(|l| l.contains("user3") || l.contains("Referral")),
        "{:?}",
        server.seen
    );

    let export = sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    let records: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let logins = |outcome: &str| {
        records
            .iter()
            .filter(|r| {
                r["action"] == "login.imap"
                    && r["outcome"] == outcome
                    && r["actor"] == "user3@harness.test"
            })
            .count()
    };
    assert_eq!(logins("ok"), 3, "three connections logged in: {export}");
    assert_eq!(logins("denied"), 1, "the failed login audited: {export}");
    let reads: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["action"] == "message.read")
        .collect();
    assert!(!reads.is_empty(), "the body fetch audited");
    // One record for the FETCH of ENVELOPE and BODYSTRUCTURE (subjects and addresses are
    // patient data), none for the FETCH of flags, size and date.
    let summaries = reads
        .iter()
        .filter(|r| r["detail"] == "imap fetch of the envelope or structure")
        .count();
    assert_eq!(summaries, 1, "{reads:#?}");
    assert!(
        reads
            .iter()
            .all(|r| r["object"].as_str().unwrap().contains("uids:")),
        "{reads:?}"
    );
    assert!(reads.iter().all(|r| r["peer"] == "127.0.0.1"), "{reads:?}");
    assert!(sealpost_ok(&["audit", "verify", "--data", &data.arg()], "").contains("intact"));
}

#[test]
fn mbsync_syncs_an_account_to_a_maildir_and_back() {
    let (data, mut server) = harness_server();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/mbsync_roundtrip.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(["127.0.0.1", &(data.port_base + 993).to_string()])
        .arg(data.path().join("tls/cert.pem"))
        .args(["user4@harness.test", PASSWORD])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("mbsync roundtrip passed"),
        "{text}"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

/// The one change made to a private copy of the harness for `real_clients_script_passes`:
/// imap_tool.py's `reset` SELECTs every mailbox read-write to empty it, and Python's imaplib
/// raises on `[READ-ONLY]`, which the BACKUP folder must answer. The patched reset passes
/// over read-only mailboxes. Where the harness no longer has the line, nothing is patched.
const RESET_SELECT: &str = "                typ, dat = M.select(quote(name))\n";
const RESET_SELECT_TOLERANT: &str = "                try:\n                    typ, dat = M.select(quote(name))\n                except M.readonly:\n                    continue\n";

/// The whole of `real_clients.sh`: mbsync and interimap over IMAP, swaks and msmtp over
/// SMTP (submission with STARTTLS and implicit TLS, inbound), both IMAP TLS modes.
#[test]
fn real_clients_script_passes() {
    // The inbound checks send from example.org: a DNS server on loopback answers for it.
    let dns = common::start_dns_for(&[], &["org", "test", "example"]);
    let (data, mut server) = harness_server_with(|config| {
        config.replace(
            "dns_servers = []",
            &format!("dns_servers = [\"127.0.0.1:{}\"]", dns.port),
        )
    });
    let base = data.port_base;
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(harness_dir())
        .arg(copy.path().join("harness"))
        .status()
        .unwrap();
    assert!(status.success());
    let tool = copy.path().join("harness/imap_tool.py");
    let text = std::fs::read_to_string(&tool).unwrap();
    std::fs::write(&tool, text.replacen(RESET_SELECT, RESET_SELECT_TOLERANT, 1)).unwrap();
    let state = copy.path().join("state");
    let mut results = Vec::new();
    for mode in ["starttls", "implicit"] {
        let output = Command::new("bash")
            .arg(copy.path().join("harness/real_clients.sh"))
            .env("HARNESS_STATE", &state)
            .env("HARNESS_HOST", "127.0.0.1")
            .env("HARNESS_TLS_HOST", "localhost")
            .env("HARNESS_IMAP_PORT", (base + 143).to_string())
            .env("HARNESS_IMAPS_PORT", (base + 993).to_string())
            .env("HARNESS_IMAP_TLS", mode)
            .env("HARNESS_CAFILE", data.path().join("tls/cert.pem"))
            .env("HARNESS_DOMAIN", "harness.test")
            .env("HARNESS_PASS", PASSWORD)
            .env("HARNESS_RC_USER", "user3")
            .env("HARNESS_RC_USER2", "user4")
            .env("HARNESS_SMTP_PORT", (base + 25).to_string())
            .env("HARNESS_SUBMISSION_PORT", (base + 587).to_string())
            .env("HARNESS_SMTPS_PORT", (base + 465).to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        results.push((mode, output.status.success(), text));
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    for (mode, success, text) in results {
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains(" passed, "))
            .unwrap_or_default();
        let skipped: Vec<&str> = text.lines().filter(|l| l.starts_with("SKIP")).collect();
        assert!(
            success && last.ends_with(" 0 failed") && skipped.is_empty(),
            "real_clients.sh over {mode}: {last}, skipped {skipped:?}\n{text}"
        );
        for part in [
            "PASS mbsync",
            "PASS interimap",
            "PASS swaks",
            "PASS msmtp",
            "PASS inbound SMTP",
        ] {
            assert!(
                text.contains(part),
                "real_clients.sh over {mode}: no {part:?}\n{text}"
            );
        }
    }
}

/// Runs `tests/scripts/imap_fidelity.py` against a server over implicit TLS: its output, and
/// whether nothing failed.
fn fidelity(port: u16, cafile: &std::path::Path, user: &str, password: &str) -> (bool, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/imap_fidelity.py");
    run_python(
        &[
            script.display().to_string(),
            "localhost".into(),
            port.to_string(),
            cafile.display().to_string(),
            user.into(),
            password.into(),
        ],
        &[],
    )
}

/// RFC behaviour checked from the RFC's text, on Sealpost and, to prove the checks
/// right, on the harness's Dovecot: atoms that start with "~", a parse error that leaves the
/// session (and what was pipelined after it) going, SENT* dates as written.
#[test]
fn rfc_behaviour_checked_from_the_rfc_holds_on_sealpost_and_on_dovecot() {
    let dovecot = Dovecot::start();
    let (ok, text) = fidelity(dovecot.imaps_port, &dovecot.cafile(), "user1", "harness-pw");
    assert!(
        ok && text.contains(" 0 failed"),
        "Dovecot: the checks are wrong\n{text}"
    );
    drop(dovecot);
    let (data, mut server) = harness_server();
    let (ok, text) = fidelity(
        data.port_base + 993,
        &data.path().join("tls/cert.pem"),
        "user2@harness.test",
        PASSWORD,
    );
    assert!(ok && text.contains(" 0 failed"), "Sealpost:\n{text}");
    assert!(
        text.contains("PASS SEARCH SENTON 25-Mar-2007") && text.contains("58 passed"),
        "{text}"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

fn stress(port: u16, cafile: &std::path::Path, user_format: &str, seconds: u32) -> (bool, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/imap_stress.py");
    run_python(
        &[
            script.display().to_string(),
            "localhost".into(),
            port.to_string(),
            cafile.display().to_string(),
            user_format.into(),
            PASSWORD.into(),
            "--seconds".into(),
            seconds.to_string(),
        ],
        &[],
    )
}

/// Ten sessions over ten accounts for 20 s each, every untagged reply checked against a
/// model of what the session must know: first on the harness's Dovecot, which
/// must come out clean (else the model is wrong), then on Sealpost.
#[test]
fn ten_concurrent_sessions_keep_every_reply_consistent_on_dovecot_and_on_sealpost() {
    let dovecot = Dovecot::start();
    let (ok, text) = stress(dovecot.imaps_port, &dovecot.cafile(), "user{}", 20);
    assert!(
        ok && text.contains("\n0 violations"),
        "Dovecot: the model is wrong\n{text}"
    );
    drop(dovecot);
    let (data, mut server) = harness_server();
    let (ok, text) = stress(
        data.port_base + 993,
        &data.path().join("tls/cert.pem"),
        "user{}@harness.test",
        20,
    );
    assert!(ok && text.contains("\n0 violations"), "Sealpost:\n{text}");
    // It ran: commands of every kind went through.
    for kind in [
        "APPEND",
        "COPY/MOVE",
        "EXPUNGE",
        "FETCH",
        "IDLE",
        "NOOP",
        "SEARCH",
        "STORE",
    ] {
        assert!(
            text.contains(&format!("{kind} ")),
            "{kind} never ran:\n{text}"
        );
    }
    eprintln!("{text}");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

/// The harness's Dovecot on free ports with a state folder of its own; stopped when dropped.
struct Dovecot {
    state: tempfile::TempDir,
    imaps_port: u16,
}

impl Dovecot {
    fn env(&self, command: &mut Command) {
        let ports = common::free_port_base();
        command
            .env("HARNESS_STATE", self.state.path())
            .env("HARNESS_IMAP_PORT", (ports + 143).to_string())
            .env("HARNESS_IMAPS_PORT", self.imaps_port.to_string())
            .env("HARNESS_LMTP_PORT", (ports + 24).to_string())
            .env("HARNESS_AUTH_PORT", (ports + 26).to_string())
            .env("HARNESS_NUSERS", "10");
    }

    fn start() -> Dovecot {
        let dovecot = Dovecot {
            state: tempfile::tempdir().unwrap(),
            imaps_port: common::free_port_base() + 993,
        };
        // Its output goes to a file: the daemon keeps the descriptors it inherits, so a pipe
        // would never close.
        let log = dovecot.state.path().join("start.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new("bash");
        command
            .arg(harness_dir().join("peers/start_dovecot.sh"))
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        dovecot.env(&mut command);
        let status = command.status().unwrap();
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        dovecot
    }

    fn cafile(&self) -> std::path::PathBuf {
        self.state.path().join("tls/cert.pem")
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let mut command = Command::new("bash");
        command
            .arg(harness_dir().join("peers/stop_dovecot.sh"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.env(&mut command);
        let _ = command.status();
    }
}

/// Every message of every folder of an IMAP account, as JSON {folder: [[flags, date, sha256]]}
/// sorted, over implicit TLS.
const MAILBOX_DIGEST: &str = "import hashlib, imaplib, json, os, re, ssl\n\
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
m = imaplib.IMAP4_SSL('localhost', int(os.environ['PORT']), ssl_context=ctx)\n\
m.login(os.environ['USER'], os.environ['PASS'])\n\
out = {}\n\
for line in m.list()[1]:\n\
\x20   name = line.decode().rsplit(' ', 1)[-1].strip('\"')\n\
\x20   if name in ('BACKUP', 'Sent', 'Drafts', 'Trash', 'Junk', 'Archive') and os.environ.get('SKIP_DEFAULTS'):\n\
\x20       continue\n\
\x20   m.select('\"' + name + '\"', readonly=True)\n\
\x20   rows = []\n\
\x20   nums = m.search(None, 'ALL')[1][0].split()\n\
\x20   for i in range(0, len(nums), 200):\n\
\x20       typ, data = m.fetch(b','.join(nums[i:i + 200]), '(FLAGS INTERNALDATE BODY.PEEK[])')\n\
\x20       for item in data:\n\
\x20           if not isinstance(item, tuple):\n\
\x20               continue\n\
\x20           meta = item[0].decode()\n\
\x20           flags = sorted(f for f in re.search(r'FLAGS \\(([^)]*)\\)', meta).group(1).split() if f != '\\\\Recent')\n\
\x20           date = re.search(r'INTERNALDATE \"([^\"]+)\"', meta).group(1)\n\
\x20           rows.append([flags, date, hashlib.sha256(item[1]).hexdigest()])\n\
\x20   if rows:\n\
\x20       out[name] = sorted(rows)\n\
print(json.dumps(out, sort_keys=True))\n";

fn mailbox_digest(
    cafile: &std::path::Path,
    port: u16,
    user: &str,
    pass: &str,
    skip_defaults: bool,
) -> serde_json::Value {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(MAILBOX_DIGEST)
        .env("CAFILE", cafile)
        .env("PORT", port.to_string())
        .env("USER", user)
        .env("PASS", pass)
        .env("SKIP_DEFAULTS", if skip_defaults { "1" } else { "" })
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn an_import_from_dovecot_of_2000_messages_in_nested_folders_arrives_whole_and_runs_again_copying_nothing(
) {
    let dovecot = Dovecot::start();
    // 2,000 messages over INBOX and three nested folders, with flags, dates and sizes.
    let filled = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, os, ssl, time\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             m = imaplib.IMAP4_SSL('localhost', int(os.environ['PORT']), ssl_context=ctx)\n\
             m.login('user1', 'harness-pw')\n\
             folders = ['INBOX', 'Clinic', 'Clinic/Cardiology', 'Clinic/Cardiology/2025']\n\
             for f in folders[1:]:\n\
             \x20   m.create('\"' + f + '\"')\n\
             flags = ['', '\\\\Seen', '\\\\Seen \\\\Flagged', '\\\\Answered \\\\Seen', '\\\\Draft']\n\
             for i in range(2000):\n\
             \x20   body = ('line %d of message %d\\r\\n' % (i, i)) * (1 + (i * 37) % 200)\n\
             \x20   raw = ('Message-ID: <imp%d@example.org>\\r\\nFrom: a%d@example.org\\r\\nSubject: message %d\\r\\n\\r\\n' % (i, i % 13, i) + body).encode()\n\
             \x20   date = imaplib.Time2Internaldate(1700000000 + i * 3600)\n\
             \x20   typ, _ = m.append('\"' + folders[i % 4] + '\"', '(' + flags[i % 5] + ')', date, raw)\n\
             \x20   assert typ == 'OK'\n\
             print('filled')\n",
        )
        .env("CAFILE", dovecot.cafile())
        .env("PORT", dovecot.imaps_port.to_string())
        .output()
        .unwrap();
    assert!(
        filled.status.success(),
        "{}",
        String::from_utf8_lossy(&filled.stderr)
    );
    // The import runs before the server (the store must not be in use).
    let data = DataDir::init_with("harness.test", &["--hostname", "localhost"]);
    data.add_accounts(&["user1@harness.test"], PASSWORD);
    let run = || {
        sealpost_ok(
            &[
                "import",
                "imap",
                "--host",
                "localhost",
                "--port",
                &dovecot.imaps_port.to_string(),
                "--ca-file",
                dovecot.cafile().to_str().unwrap(),
                "--user",
                "user1",
                "--account",
                "user1@harness.test",
                "--data",
                &data.arg(),
            ],
            "harness-pw\n",
        )
    };
    let first = run();
    for line in [
        "INBOX: 500 copied, 0 already there",
        "Clinic: 500 copied, 0 already there",
        "Clinic/Cardiology: 500 copied, 0 already there",
        "Clinic/Cardiology/2025: 500 copied, 0 already there",
    ] {
        assert!(first.lines().any(|l| l == line), "no {line:?} in {first}");
    }
    let second = run();
    assert!(
        second.lines().all(|l| l.contains(": 0 copied")),
        "a second run copied again: {second}"
    );
    // Every folder arrives with the same bytes, flags and dates.
    let mut server = data.serve();
    let theirs = mailbox_digest(
        &dovecot.cafile(),
        dovecot.imaps_port,
        "user1",
        "harness-pw",
        false,
    );
    let ours = mailbox_digest(
        &data.path().join("tls/cert.pem"),
        data.port_base + 993,
        "user1@harness.test",
        PASSWORD,
        true,
    );
    assert_eq!(theirs.as_object().unwrap().len(), 4, "{theirs}");
    assert_eq!(ours, theirs);
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}
