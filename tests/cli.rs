//! The `sealpost` binary as an administrator uses it: init, accounts, audit, keys, serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{sealpost, sealpost_ok, DataDir, Server};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_lays_out_the_data_folder_with_private_keys_and_offset_ports() {
    let data = DataDir::init("clinic.example");
    let dir = data.path();
    assert_eq!(mode(&dir.join("keys/master.key")), 0o600);
    assert_eq!(mode(&dir.join("keys")), 0o700);
    assert_eq!(mode(&dir.join("tls/key.pem")), 0o600);
    assert!(std::fs::read_to_string(dir.join("tls/cert.pem"))
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(dir.join("store/CURRENT").exists());
    let config = std::fs::read_to_string(dir.join("sealpost.toml")).unwrap();
    let base = data.port_base;
    for (name, offset) in [
        ("imap", 143),
        ("imaps", 993),
        ("smtp", 25),
        ("submission", 587),
        ("submissions", 465),
        ("https", 443),
    ] {
        assert!(
            config.contains(&format!("{name} = {}", base + offset)),
            "{name} in {config}"
        );
    }
    assert!(config.contains("domain = \"clinic.example\""));
    // The DKIM keys live sealed in the store: the keys folder holds the master key and the
    // backup identity (to be moved off the machine), both private.
    let mut keys: Vec<String> = std::fs::read_dir(dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["backup.key".to_string(), "master.key".to_string()]
    );
    assert_eq!(mode(&dir.join("keys/backup.key")), 0o600);

    let again = sealpost(
        &["init", "--data", &data.arg(), "--domain", "clinic.example"],
        "",
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let standard = tempfile::tempdir().unwrap();
    let standard_dir = standard.path().join("d");
    sealpost_ok(
        &[
            "init",
            "--data",
            standard_dir.to_str().unwrap(),
            "--domain",
            "clinic.example",
        ],
        "",
    );
    let config = std::fs::read_to_string(standard_dir.join("sealpost.toml")).unwrap();
    assert!(
        config.contains("imap = 143")
            && config.contains("smtp = 25")
            && config.contains("https = 443"),
        "{config}"
    );
}

#[test]
fn accounts_are_added_listed_disabled_and_deleted_from_the_command_line() {
    let data = DataDir::init("clinic.example");
    let d = data.arg();
    let added = sealpost_ok(
        &[
            "account",
            "add",
            "alice",
            "--password-stdin",
            "--name",
            "Alice A",
            "--data",
            &d,
        ],
        "tulip anvil orbit\n",
    );
    assert!(
        added.contains("created account alice@clinic.example"),
        "{added}"
    );
    assert!(
        !added.contains("tulip anvil orbit"),
        "a password given on stdin is not echoed"
    );
    let generated = sealpost_ok(
        &[
            "account",
            "add",
            "root@clinic.example",
            "--role",
            "admin",
            "--data",
            &d,
        ],
        "",
    );
    let password_line = generated
        .lines()
        .find(|l| l.starts_with("password: "))
        .unwrap();
    assert_eq!(password_line.trim_start_matches("password: ").len(), 20);

    let short = sealpost(
        &["account", "add", "bob", "--password-stdin", "--data", &d],
        "short\n",
    );
    assert!(!short.status.success());
    // On the shipped list of common passwords, or guessable from the account's own name.
    for weak in ["leavemealone\n", "bobbobbob123\n"] {
        let refused = sealpost(
            &["account", "add", "bob", "--password-stdin", "--data", &d],
            weak,
        );
        assert!(!refused.status.success(), "{weak}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("too weak"),
            "{weak}"
        );
    }
    let bad_role = sealpost(
        &["account", "add", "bob", "--role", "owner", "--data", &d],
        "",
    );
    assert!(!bad_role.status.success());

    let list = sealpost_ok(&["account", "list", "--json", "--data", &d], "");
    let rows: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["address"], "alice@clinic.example");
    assert_eq!(rows[0]["name"], "Alice A");
    assert_eq!(rows[1]["role"], "admin");

    sealpost_ok(&["account", "disable", "alice", "--data", &d], "");
    let list = sealpost_ok(&["account", "list", "--data", &d], "");
    assert!(
        list.lines()
            .any(|l| l.contains("alice@clinic.example") && l.contains("disabled")),
        "{list}"
    );
    sealpost_ok(
        &["account", "enable", "alice@clinic.example", "--data", &d],
        "",
    );
    sealpost_ok(
        &["account", "password", "alice", "--data", &d],
        "kettle sonar magpie\n",
    );

    let unconfirmed = sealpost(&["account", "delete", "alice", "--data", &d], "");
    assert!(!unconfirmed.status.success());
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    sealpost_ok(&["account", "delete", "alice", "--yes", "--data", &d], "");
    let missing = sealpost(&["account", "disable", "alice", "--data", &d], "");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account alice"));

    let export = sealpost_ok(&["audit", "export", "--data", &d], "");
    let actions: Vec<String> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        actions,
        [
            "store.create",
            "secret.set",
            "secret.set",
            "account.create",
            "account.create",
            "account.disable",
            "auth.session.end_all",
            "account.enable",
            "account.password",
            "auth.session.end_all",
            "account.delete"
        ]
    );
    let first: serde_json::Value = serde_json::from_str(export.lines().nth(3).unwrap()).unwrap();
    assert!(first["object"]
        .as_str()
        .unwrap()
        .contains("alice@clinic.example"));
    assert!(
        first["at"].as_str().unwrap().contains('T'),
        "RFC 3339 time: {first}"
    );
    assert_eq!(first["outcome"], "ok");
    assert_eq!(
        sealpost_ok(
            &["audit", "export", "--since", "2999-01-01", "--data", &d],
            ""
        ),
        ""
    );
    let verified = sealpost_ok(&["audit", "verify", "--data", &d], "");
    assert!(
        verified.contains("audit chain intact: 11 records verified"),
        "{verified}"
    );
}

#[test]
fn key_rotation_replaces_the_key_file_and_keeps_the_store_open() {
    let data = DataDir::init("clinic.example");
    let d = data.arg();
    sealpost_ok(&["account", "add", "alice", "--data", &d], "");
    let key = data.path().join("keys/master.key");
    let before = std::fs::read(&key).unwrap();
    let rotated = sealpost_ok(&["key", "rotate", "--data", &d], "");
    assert!(
        rotated.contains("1 account key sets re-wrapped"),
        "{rotated}"
    );
    assert_ne!(std::fs::read(&key).unwrap(), before);
    assert_eq!(mode(&key), 0o600);
    let retired: Vec<_> = std::fs::read_dir(data.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("master.key.retired-"))
        .collect();
    assert_eq!(retired.len(), 1);
    assert!(sealpost_ok(&["account", "list", "--data", &d], "").contains("alice@clinic.example"));
    assert!(sealpost_ok(&["audit", "export", "--data", &d], "").contains("key.rotate"));
    // The DKIM keys, sealed with the store keys, come through the rotation.
    let records = sealpost_ok(&["dns", "records", "--data", &d], "");
    assert!(
        records.contains("sealpost-ed25519._domainkey.clinic.example.")
            && records.contains("k=rsa; p=MII"),
        "{records}"
    );
    // The TLSA record pins the certificate's public key, as openssl computes it.
    let pin = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1")
        .arg("sh")
        .arg(data.path().join("tls/cert.pem"))
        .output()
        .unwrap();
    let pin = String::from_utf8_lossy(&pin.stdout).trim().to_string();
    assert_eq!(pin.len(), 64, "openssl: {pin}");
    assert!(
        records.contains(&format!(
            "_25._tcp.mail.clinic.example.\tIN TLSA 3 1 1 {pin}"
        )),
        "{records}"
    );

    // The retired key no longer opens the store.
    std::fs::copy(data.path().join("keys").join(&retired[0]), &key).unwrap();
    let refused = sealpost(&["account", "list", "--data", &d], "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not open this store"));
}

#[test]
fn a_wrong_or_loose_master_key_is_refused_with_a_clear_error() {
    let data = DataDir::init("clinic.example");
    let d = data.arg();
    let other = DataDir::init("other.example");
    std::fs::copy(
        other.path().join("keys/master.key"),
        data.path().join("keys/master.key"),
    )
    .unwrap();
    let refused = sealpost(&["account", "list", "--data", &d], "");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("master.key") && stderr.contains("does not open this store"),
        "{stderr}"
    );

    std::fs::set_permissions(
        data.path().join("keys/master.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let loose = sealpost(&["account", "list", "--data", &d], "");
    assert!(String::from_utf8_lossy(&loose.stderr).contains("chmod 600"));
    std::fs::remove_file(data.path().join("keys/master.key")).unwrap();
    let missing = sealpost(&["serve", "--data", &d], "");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("master.key"));
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let data = DataDir::init("clinic.example");
    let file = data.path().join("sealpost.toml");
    let config = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        config.replace("[listeners]", "[listeners]\npop3 = 110"),
    )
    .unwrap();
    let output = sealpost(&["serve", "--data", &data.arg()], "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("sealpost.toml") && stderr.contains("pop3"),
        "{stderr}"
    );
    let no_folder = sealpost(&["serve", "--data", "/nonexistent/sealpost"], "");
    assert!(String::from_utf8_lossy(&no_folder.stderr).contains("sealpost init"));
    // Sign-in and portal settings belong to [auth], [limits] and [outbound] in this file: a
    // [policy.portal] here would be ignored, so it is refused, saying where they go.
    assert!(
        !config.contains("[policy.sign_in]") && !config.contains("[policy.portal]"),
        "{config}"
    );
    std::fs::write(
        &file,
        format!("{config}\n[policy.portal]\npickup_ttl_ms = 5\n"),
    )
    .unwrap();
    let refused = sealpost(&["serve", "--data", &data.arg()], "");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("[outbound] pickup_ttl_ms"), "{stderr}");
}

#[test]
fn serve_runs_until_sigterm_and_holds_the_store() {
    let data = DataDir::init("clinic.example");
    let d = data.arg();
    sealpost_ok(&["account", "add", "alice", "--data", &d], "");
    let mut server = Server::start(&["serve", "--data", &d]);
    assert!(
        server.wait_for("sealpost is running", Duration::from_secs(30)),
        "{:?}",
        server.seen
    );
    // What needs the store to itself is refused while the server holds it; the console's
    // commands go through the server (tested below).
    let busy = sealpost(&["key", "rotate", "--data", &d], "");
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    assert!(sealpost_ok(&["account", "list", "--data", &d], "").contains("alice@clinic.example"));
    assert_eq!(
        server.terminate(Duration::from_secs(20)),
        Some(true),
        "{:?}",
        server.seen
    );
    assert!(
        server.seen.iter().any(|l| l.contains("store closed")),
        "{:?}",
        server.seen
    );
    // Nothing identifying in the log.
    assert!(
        !server.seen.iter().any(|l| l.contains("alice")),
        "{:?}",
        server.seen
    );
    assert!(sealpost_ok(&["account", "list", "--data", &d], "").contains("alice@clinic.example"));
}

#[test]
fn demo_makes_a_ready_data_folder_prints_how_to_log_in_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let base = common::free_port_base().to_string();
    let mut server = Server::start(&[
        "demo",
        "--data",
        data.to_str().unwrap(),
        "--port-base",
        &base,
    ]);
    assert!(
        server.wait_for("sealpost is running", Duration::from_secs(30)),
        "{:?}",
        server.seen
    );
    let printed = |label: &str| {
        server
            .seen
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap()
            .trim()
            .split("  ")
            .next()
            .unwrap()
            .split(" (")
            .next()
            .unwrap()
            .to_string()
    };
    let password = printed("password");
    let app_password = printed("app password");
    assert_eq!(password.len(), 20);
    assert_eq!(app_password.replace(' ', "").len(), 24, "{app_password}");
    // A second factor is required by default: the app password opens IMAP and SMTP, the
    // account password opens neither, and the refusal says what to use.
    let logins = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, smtplib, ssl, os, sys\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             base = int(os.environ['BASE'])\n\
             for secret in (os.environ['APP'], os.environ['PASSWORD']):\n\
             \x20   m = imaplib.IMAP4_SSL('localhost', base + 993, ssl_context=ctx)\n\
             \x20   try:\n\
             \x20       print('imap', m.login('demo@sealpost.test', secret)[0])\n\
             \x20   except imaplib.IMAP4.error as e:\n\
             \x20       print('imap refused', e)\n\
             \x20   s = smtplib.SMTP_SSL('localhost', base + 465, context=ctx)\n\
             \x20   try:\n\
             \x20       print('smtp', s.login('demo@sealpost.test', secret)[0])\n\
             \x20   except smtplib.SMTPAuthenticationError as e:\n\
             \x20       print('smtp refused', e.smtp_code, e.smtp_error.decode())\n",
        )
        .env("CAFILE", data.join("tls/cert.pem"))
        .env("BASE", &base)
        .env("APP", &app_password)
        .env("PASSWORD", &password)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&logins.stdout).to_string()
        + &String::from_utf8_lossy(&logins.stderr);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 4, "{said}");
    assert_eq!(lines[0], "imap OK", "{said}");
    assert_eq!(lines[1], "smtp 235", "{said}");
    assert!(
        lines[2].starts_with("imap refused") && lines[2].contains("app password"),
        "{said}"
    );
    assert!(
        lines[3].starts_with("smtp refused 535") && lines[3].contains("app password"),
        "{said}"
    );
    // A sign-in from another network (127.0.5.0/24) puts a notice into INBOX; one from the
    // known network does not.
    let notices = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, smtplib, ssl, os\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             base = int(os.environ['BASE'])\n\
             s = smtplib.SMTP_SSL('localhost', base + 465, context=ctx, source_address=('127.0.5.1', 0))\n\
             s.login('demo@sealpost.test', os.environ['APP'])\n\
             s.quit()\n\
             m = imaplib.IMAP4_SSL('localhost', base + 993, ssl_context=ctx)\n\
             m.login('demo@sealpost.test', os.environ['APP'])\n\
             m.select('INBOX', readonly=True)\n\
             typ, found = m.search(None, 'SUBJECT', '\"New sign-in\"')\n\
             print(len(found[0].split()))\n\
             typ, body = m.fetch(found[0].split()[-1], '(BODY.PEEK[TEXT])')\n\
             print(body[0][1].decode())\n",
        )
        .env("CAFILE", data.join("tls/cert.pem"))
        .env("BASE", &base)
        .env("APP", &app_password)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&notices.stdout).to_string()
        + &String::from_utf8_lossy(&notices.stderr);
    assert!(notices.status.success(), "{said}");
    assert!(said.starts_with("1\n"), "one notice: {said}");
    assert!(
        said.contains("127.0.5.0/24") && said.contains("SMTP, app password Demo mail client"),
        "{said}"
    );
    assert!(server.seen.iter().any(|l| l.contains("demo@sealpost.test")));
    assert!(server
        .seen
        .iter()
        .any(|l| l.contains(&format!("localhost:{}", base.parse::<u16>().unwrap() + 993))));
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let list = sealpost_ok(&["account", "list", "--data", data.to_str().unwrap()], "");
    assert!(list.contains("demo@sealpost.test"), "{list}");
    // A second start reuses the folder and prints the same credentials.
    let mut again = Server::start(&[
        "demo",
        "--data",
        data.to_str().unwrap(),
        "--port-base",
        &base,
    ]);
    assert!(
        again.wait_for("sealpost is running", Duration::from_secs(30)),
        "{:?}",
        again.seen
    );
    assert!(
        again.seen.iter().any(|l| l.contains(&password)),
        "{:?}",
        again.seen
    );
    assert_eq!(again.terminate(Duration::from_secs(20)), Some(true));
}

#[test]
fn audit_verify_exits_1_and_names_the_record_someone_altered_on_disk() {
    let data = DataDir::init("clinic.example");
    let d = data.arg();
    sealpost_ok(&["account", "add", "alice", "--data", &d], "");
    sealpost_ok(&["account", "disable", "alice", "--data", &d], "");
    {
        let cfs =
            rocksdb::DB::list_cf(&rocksdb::Options::default(), data.path().join("store")).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), data.path().join("store"), cfs)
            .unwrap();
        let audit = db.cf_handle("audit").unwrap();
        let mut record = db.get_cf(audit, 2u64.to_be_bytes()).unwrap().unwrap();
        record[40] ^= 0x20;
        db.put_cf(audit, 2u64.to_be_bytes(), record).unwrap();
    }
    let verified = sealpost(&["audit", "verify", "--data", &d], "");
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(verified.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("BROKEN at record 2"), "{stdout}");
}

/// The attacker with the disk and the master key: removes every audit record after `keep`
/// and seals a head over record `keep` as the store would (the derivation ARCHITECTURE.md
/// documents: the audit key from the age-wrapped store keys, a MAC key from it).
fn cut_the_audit_log_with_the_master_key(data: &std::path::Path, keep: u64) {
    use std::str::FromStr;
    let store = data.join("store");
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &store).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &store, cfs).unwrap();
    let (meta, audit) = (
        db.cf_handle("meta").unwrap(),
        db.cf_handle("audit").unwrap(),
    );
    let text = std::fs::read_to_string(data.join("keys/master.key")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let identity = age::x25519::Identity::from_str(line).unwrap();
    let keys = age::decrypt(&identity, &db.get_cf(meta, b"store_keys").unwrap().unwrap()).unwrap();
    let hmac = |key: &[u8], domain: &[u8], data: &[u8]| {
        let mut mac =
            ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key));
        mac.update(domain);
        mac.update(&[0]);
        mac.update(data);
        mac.sign().as_ref().to_vec()
    };
    // Store keys: index, directory, audit, 32 bytes each.
    let mac_key = hmac(&keys[64..96], b"sealpost.audit.mac-key", b"");
    for seq in keep + 1..keep + 10_000 {
        if db.get_cf(audit, seq.to_be_bytes()).unwrap().is_none() {
            break;
        }
        db.delete_cf(audit, seq.to_be_bytes()).unwrap();
    }
    let kept = db.get_cf(audit, keep.to_be_bytes()).unwrap().unwrap();
    let mut input = kept[..32].to_vec();
    input.extend_from_slice(&keep.to_be_bytes());
    input.extend_from_slice(&kept);
    let link = hmac(&mac_key, b"sealpost.audit.v2", &input);
    let mut head = keep.to_be_bytes().to_vec();
    head.extend_from_slice(&link);
    head.extend_from_slice(&1u64.to_be_bytes());
    let mac = hmac(&mac_key, b"sealpost.audit.head", &head);
    head.extend_from_slice(&mac);
    db.put_cf(meta, b"audit_head", head).unwrap();
}

#[test]
fn a_tail_cut_with_the_master_key_is_shown_by_a_count_the_log_anchor_and_a_backup() {
    let data = DataDir::init("clinic.example");
    let d = data.arg();
    for name in ["alice", "bob", "carol"] {
        sealpost_ok(&["account", "add", name, "--data", &d], "");
    }
    let mut server = data.serve();
    assert!(
        server.wait_for("audit anchor ", Duration::from_secs(10)),
        "{:?}",
        server.seen
    );
    let line = server
        .seen
        .iter()
        .find(|l| l.contains("audit anchor "))
        .unwrap()
        .clone();
    let logged = line
        .split("audit anchor ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let logged_seq: u64 = logged.split(':').next().unwrap().parse().unwrap();
    assert!(logged_seq >= 4, "{line}");
    assert!(
        !line.contains("alice"),
        "the anchor line names no one: {line}"
    );
    // More records, then a backup through the running server: its manifest keeps the head.
    sealpost_ok(&["account", "add", "dave", "--data", &d], "");
    let backup = data.dir.path().join("anchored.backup");
    let identity = data.path().join("keys/backup.key");
    let (backup_arg, identity_arg) = (backup.to_str().unwrap(), identity.to_str().unwrap());
    sealpost_ok(&["backup", "--data", &d, "--to", backup_arg], "");
    let verified = sealpost_ok(
        &["backup", "verify", backup_arg, "--identity", identity_arg],
        "",
    );
    assert!(verified.contains("audit anchor: "), "{verified}");
    let against = [
        "audit",
        "verify",
        "--data",
        d.as_str(),
        "--backup",
        backup_arg,
        "--identity",
        identity_arg,
    ];
    let held = sealpost_ok(&against, "");
    assert!(
        held.contains("audit chain intact") && held.contains("holds"),
        "{held}"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));

    let intact = sealpost_ok(&["audit", "verify", "--data", &d, "--anchor", &logged], "");
    let count: u64 = intact
        .split("intact: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(count > logged_seq, "{intact}");
    let count = count.to_string();
    assert!(sealpost_ok(
        &["audit", "verify", "--data", &d, "--expect-at-least", &count],
        ""
    )
    .contains("intact"));

    cut_the_audit_log_with_the_master_key(&data.path(), logged_seq - 1);
    let plain = sealpost(&["audit", "verify", "--data", &d], "");
    let plain_out = String::from_utf8_lossy(&plain.stdout);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "with the key the chain itself holds: {plain_out}"
    );
    for (args, expected) in [
        (
            vec!["--expect-at-least", count.as_str()],
            "SHORTER than expected",
        ),
        (vec!["--anchor", logged.as_str()], "does NOT hold"),
        (
            vec!["--backup", backup_arg, "--identity", identity_arg],
            "does NOT hold",
        ),
    ] {
        let mut full = vec!["audit", "verify", "--data", d.as_str()];
        full.extend(&args);
        let out = sealpost(&full, "");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}");
        assert!(stdout.contains(expected), "{args:?}: {stdout}");
    }
    // A malformed anchor is refused, not taken for a pass.
    let bad = sealpost(
        &["audit", "verify", "--data", &d, "--anchor", "12:beef"],
        "",
    );
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SEQ:LINK"));

    // Without the key: one more record removed and a SHA-256 head as the old code accepted.
    {
        use sha2::Digest;
        let store = data.path().join("store");
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &store).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &store, cfs).unwrap();
        let audit = db.cf_handle("audit").unwrap();
        let last = logged_seq - 1;
        db.delete_cf(audit, last.to_be_bytes()).unwrap();
        let kept = db.get_cf(audit, (last - 1).to_be_bytes()).unwrap().unwrap();
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"sealpost.audit.v1");
        hasher.update(&kept[..32]);
        hasher.update((last - 1).to_be_bytes());
        hasher.update(&kept);
        let mut head = (last - 1).to_be_bytes().to_vec();
        head.extend_from_slice(&hasher.finalize());
        db.put_cf(db.cf_handle("meta").unwrap(), b"audit_head", head)
            .unwrap();
    }
    let forged = sealpost(&["audit", "verify", "--data", &d], "");
    let forged_out = String::from_utf8_lossy(&forged.stdout);
    assert_eq!(forged.status.code(), Some(1), "{forged_out}");
    assert!(forged_out.contains("BROKEN"), "{forged_out}");
}

#[test]
fn connections_past_the_per_address_limit_are_told_why_and_closed() {
    let data = DataDir::init("clinic.example");
    let config = data.path().join("sealpost.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // Written as earlier versions wrote it, in [limits]: still read, where it lives now
    // ([imap] connections_per_address_max), and the log says so.
    // (An earlier version's file has no [imap] section: its key there goes.)
    assert!(text.contains("\n[limits]\n"), "{text}");
    let earlier: Vec<&str> = text
        .lines()
        .filter(|line| *line != "connections_per_address_max = 200")
        .collect();
    assert_eq!(earlier.len() + 1, text.lines().count(), "{text}");
    let limited = earlier.join("\n").replacen(
        "\n[limits]\n",
        "\n[limits]\nimap_connections_per_address_max = 2\n",
        1,
    );
    std::fs::write(&config, limited).unwrap();
    let mut server = Server::start(&["serve", "--data", &data.arg()]);
    assert!(
        server.wait_for("sealpost is running", Duration::from_secs(30)),
        "{:?}",
        server.seen
    );
    assert!(
        server.seen.iter().any(|line| line.contains(
            "[limits] imap_connections_per_address_max is read as [imap] connections_per_address_max"
        )),
        "{:?}",
        server.seen
    );
    let port = data.port_base + 143;
    let greeting = |stream: &mut std::net::TcpStream| {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line).unwrap();
        line
    };
    let mut first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(greeting(&mut first).starts_with("* OK"));
    assert!(greeting(&mut second).starts_with("* OK"));
    let mut third = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(
        greeting(&mut third),
        "* BYE too many connections from your address (limit 2)\r\n"
    );
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(
        greeting(&mut fourth).starts_with("* OK"),
        "a slot comes free when a connection ends"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

#[test]
fn mbox_and_maildir_imports_arrive_whole_with_flags_and_a_second_run_copies_nothing() {
    const PASSWORD: &str = "import harbor lantern";
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    data.add_accounts(&["alice@clinic.test"], PASSWORD);
    let work = tempfile::tempdir().unwrap();
    // An mbox of three messages: quoted "From " lines, Status and X-Status flags.
    let binary: String = (0..3000u32)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let mbox = format!(
        "From alice@example.org Mon Dec  1 12:00:00 2025\n\
         Message-ID: <m1@example.org>\nSubject: one\nStatus: RO\nX-Status: F\n\nbody\n>From the start\n\n\
         From bob@example.org Tue Dec  2 08:30:00 2025\n\
         Message-ID: <m2@example.org>\nSubject: two\n\n{binary}\n\n\
         From carol@example.org Wed Dec  3 09:00:00 2025\n\
         Message-ID: <m3@example.org>\nSubject: three\nX-Status: A\n\nthird\n"
    );
    let mbox_path = work.path().join("archive.mbox");
    std::fs::write(&mbox_path, &mbox).unwrap();
    // A Maildir++: INBOX with seen, flagged and new messages; a nested folder.
    let maildir = work.path().join("Maildir");
    for sub in [
        "cur",
        "new",
        "tmp",
        ".Work.Projects/cur",
        ".Work.Projects/new",
        ".Work.Projects/tmp",
    ] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let files = [
        (
            "cur/1.host:2,S",
            "Message-ID: <d1@example.org>\r\nSubject: seen\r\n\r\nhello\r\n",
        ),
        (
            "cur/2.host:2,FS",
            "Message-ID: <d2@example.org>\r\nSubject: flagged\r\n\r\nhello\r\n",
        ),
        (
            "new/3.host",
            "Message-ID: <d3@example.org>\r\nSubject: new\r\n\r\nhello\r\n",
        ),
        (
            ".Work.Projects/cur/4.host:2,RS",
            "Message-ID: <d4@example.org>\r\nSubject: project\r\n\r\nplan\r\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(maildir.join(name), text).unwrap();
    }
    let run = |args: &[&str]| sealpost_ok(args, "");
    let (mbox_arg, maildir_arg, data_arg) = (
        mbox_path.to_str().unwrap().to_string(),
        maildir.to_str().unwrap().to_string(),
        data.arg(),
    );
    let mbox_import = [
        "import",
        "mbox",
        &mbox_arg,
        "--account",
        "alice@clinic.test",
        "--folder",
        "Archive/2025",
        "--data",
        &data_arg,
    ];
    let maildir_import = [
        "import",
        "maildir",
        &maildir_arg,
        "--account",
        "alice@clinic.test",
        "--data",
        &data_arg,
    ];
    assert_eq!(
        run(&mbox_import).trim(),
        "Archive/2025: 3 copied, 0 already there"
    );
    assert_eq!(
        run(&maildir_import).trim(),
        "INBOX: 3 copied, 0 already there\nWork/Projects: 1 copied, 0 already there"
    );
    assert_eq!(
        run(&mbox_import).trim(),
        "Archive/2025: 0 copied, 3 already there"
    );
    assert_eq!(
        run(&maildir_import).trim(),
        "INBOX: 0 copied, 3 already there\nWork/Projects: 0 copied, 1 already there"
    );
    // Over IMAP: each folder's messages, bytes and flags, and the mbox's dates.
    let mut server = data.serve();
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, json, os, ssl, re\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             m = imaplib.IMAP4_SSL('localhost', int(os.environ['PORT']), ssl_context=ctx)\n\
             m.login('alice@clinic.test', os.environ['PASSWORD'])\n\
             out = {}\n\
             for folder in ('Archive/2025', 'INBOX', 'Work/Projects'):\n\
             \x20   m.select(folder, readonly=True)\n\
             \x20   rows = []\n\
             \x20   for num in m.search(None, 'ALL')[1][0].split():\n\
             \x20       typ, data = m.fetch(num, '(FLAGS INTERNALDATE BODY.PEEK[])')\n\
             \x20       meta = data[0][0].decode()\n\
             \x20       flags = sorted(f for f in re.search(r'FLAGS \\(([^)]*)\\)', meta).group(1).split() if f != '\\\\Recent')\n\
             \x20       date = re.search(r'INTERNALDATE \"([^\"]+)\"', meta).group(1)\n\
             \x20       rows.append([flags, date, data[0][1].decode()])\n\
             \x20   out[folder] = rows\n\
             print(json.dumps(out))\n",
        )
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("PORT", (data.port_base + 993).to_string())
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let folders: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let archive = folders["Archive/2025"].as_array().unwrap();
    assert_eq!(archive.len(), 3);
    assert_eq!(archive[0][0], serde_json::json!(["\\Flagged", "\\Seen"]));
    assert_eq!(archive[0][1], "01-Dec-2025 12:00:00 +0000");
    assert_eq!(
        archive[0][2],
        "Message-ID: <m1@example.org>\nSubject: one\nStatus: RO\nX-Status: F\n\nbody\nFrom the start\n"
    );
    assert_eq!(
        archive[1][2],
        format!("Message-ID: <m2@example.org>\nSubject: two\n\n{binary}\n")
    );
    assert_eq!(archive[2][0], serde_json::json!(["\\Answered"]));
    // (A notice of the first sign-in from a new network may be there too.)
    let inbox: Vec<&serde_json::Value> = folders["INBOX"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m[2].as_str().unwrap().starts_with("Message-ID: <d"))
        .collect();
    let flags: Vec<&serde_json::Value> = inbox.iter().map(|m| &m[0]).collect();
    assert_eq!(
        flags,
        [
            &serde_json::json!(["\\Seen"]),
            &serde_json::json!(["\\Flagged", "\\Seen"]),
            &serde_json::json!([])
        ]
    );
    assert_eq!(inbox[1][2], files[1].1);
    let projects = folders["Work/Projects"].as_array().unwrap();
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0][0], serde_json::json!(["\\Answered", "\\Seen"]));
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let exported = sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    assert!(
        exported
            .lines()
            .filter(|l| l.contains("\"import\""))
            .count()
            >= 6,
        "imports not audited"
    );
}

#[test]
fn the_consoles_quota_enrolment_link_and_audit_search_work_from_the_command_line() {
    let data = DataDir::init_with("clinic.test", &[]);
    data.add_accounts(&["nina@clinic.test"], "copper willow brisk anthem");
    let arg = data.arg();
    let quota = sealpost_ok(
        &[
            "account",
            "quota",
            "nina@clinic.test",
            "--mb",
            "2",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(
        quota.trim(),
        "nina@clinic.test: The quota is 2097152 bytes."
    );
    let link = sealpost_ok(
        &[
            "account",
            "enrolment-link",
            "nina@clinic.test",
            "--data",
            &arg,
        ],
        "",
    );
    let (account, secret) = link
        .trim()
        .strip_prefix("/enrol/")
        .unwrap()
        .split_once('.')
        .unwrap();
    assert!(
        account.parse::<u64>().is_ok() && secret.len() == 64,
        "{link}"
    );
    let refused = sealpost(
        &[
            "account",
            "quota",
            "nina@clinic.test",
            "--mb",
            "-1",
            "--data",
            &arg,
        ],
        "",
    );
    assert!(!refused.status.success());
    let lifted = sealpost_ok(
        &[
            "account",
            "quota",
            "nina@clinic.test",
            "--none",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(
        lifted.trim(),
        "nina@clinic.test: No quota: the account may store without a limit."
    );
    // The console's search, here: newest first, the count on standard error.
    let found = sealpost(
        &[
            "audit",
            "search",
            "--action",
            "account.quota",
            "--data",
            &arg,
        ],
        "",
    );
    assert!(found.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["detail"], "none");
    assert_eq!(lines[1]["detail"], "2097152 bytes");
    assert_eq!(
        String::from_utf8_lossy(&found.stderr).trim(),
        "2 records match"
    );
    let links = sealpost(
        &[
            "audit",
            "search",
            "--action",
            "auth.enrolment_link",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(
        String::from_utf8_lossy(&links.stderr).trim(),
        "1 records match"
    );
}

/// Signs nina in over IMAPS, prints "idling" once in IDLE, then every line the server sends
/// until it closes (at most 30 s).
const IDLE_SCRIPT: &str = "import imaplib, os, ssl, sys\n\
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
m = imaplib.IMAP4_SSL('localhost', int(os.environ['BASE']) + 993, ssl_context=ctx)\n\
m.login('nina@clinic.test', os.environ['PASSWORD'])\n\
m.select('INBOX')\n\
m.send(b'i1 IDLE\\r\\n')\n\
assert m.readline().startswith(b'+')\n\
print('idling', flush=True)\n\
m.sock.settimeout(30)\n\
while True:\n\
\x20   line = m.readline()\n\
\x20   if not line: break\n\
\x20   print(line.decode().strip(), flush=True)\n";

/// Tries one IMAPS login as nina; prints OK or the server's refusal.
const LOGIN_SCRIPT: &str = "import imaplib, os, ssl\n\
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
m = imaplib.IMAP4_SSL('localhost', int(os.environ['BASE']) + 993, ssl_context=ctx)\n\
try:\n\
\x20   m.login('nina@clinic.test', os.environ['TRY'])\n\
\x20   print('OK')\n\
except imaplib.IMAP4.error as e:\n\
\x20   print(e)\n";

fn imap_login(data: &DataDir, password: &str) -> String {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(LOGIN_SCRIPT)
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("TRY", password)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn a_running_server_takes_the_consoles_commands_through_its_control_socket() {
    use std::io::BufRead;
    const PASSWORD: &str = "copper willow brisk anthem";
    let data = DataDir::init("clinic.test");
    data.add_accounts(&["nina@clinic.test", "omar@clinic.test"], PASSWORD);
    let arg = data.arg();
    let mut server = data.serve();
    let socket = data.path().join("control.sock");
    assert_eq!(
        mode(&socket) & 0o777,
        0o600,
        "the control socket is the server user's only"
    );

    // Nina idles; the disable that comes through the socket ends her session at once.
    let mut idle = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(IDLE_SCRIPT)
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(idle.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "idling");
    let listed = sealpost_ok(&["account", "list", "--search", "nina", "--data", &arg], "");
    assert!(
        listed.contains("nina@clinic.test") && !listed.contains("omar"),
        "{listed}"
    );
    let disabled = sealpost_ok(
        &["account", "disable", "nina@clinic.test", "--data", &arg],
        "",
    );
    assert_eq!(
        disabled.trim(),
        "nina@clinic.test: Disabled; its web sessions and 1 mail sessions were ended."
    );
    let bye = lines.next().unwrap().unwrap();
    assert!(bye.starts_with("* BYE [UNAVAILABLE]"), "{bye}");
    assert!(idle.wait().unwrap().success());
    assert!(imap_login(&data, PASSWORD).contains("disabled"));
    sealpost_ok(
        &["account", "enable", "nina@clinic.test", "--data", &arg],
        "",
    );
    assert_eq!(imap_login(&data, PASSWORD), "OK");

    // The policy round-trips through show and set, and a saved version is in force at once:
    // two wrong passwords now lock nina out, until an admin lifts it.
    let shown = sealpost_ok(&["policy", "show", "--data", &arg], "");
    assert!(shown.contains("failures_per_account_max = 10"), "{shown}");
    let stricter = shown.replace(
        "failures_per_account_max = 10",
        "failures_per_account_max = 2",
    );
    let saved = sealpost_ok(&["policy", "set", "--data", &arg], &stricter);
    assert_eq!(saved.trim(), "saved as version 1; in force from now on");
    let refused = sealpost(
        &["policy", "set", "--data", &arg],
        "[sign_in]\nsession_idle_ms = 5\n",
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("session_idle_ms = 5 is outside"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        sealpost_ok(&["policy", "history", "--data", &arg], "")
            .lines()
            .count(),
        1,
        "a refused policy is not a version"
    );
    assert!(imap_login(&data, "wrong one").contains("invalid credentials"));
    assert!(imap_login(&data, "wrong two").contains("invalid credentials"));
    assert!(imap_login(&data, PASSWORD).contains("too many failed logins"));
    let locked = sealpost_ok(&["lockout", "list", "--data", &arg], "");
    assert!(locked.starts_with("nina@clinic.test  2 failed"), "{locked}");
    let lifted = sealpost_ok(&["lockout", "lift", "nina@clinic.test", "--data", &arg], "");
    assert_eq!(lifted.trim(), "nina@clinic.test's lockout is lifted");
    assert_eq!(imap_login(&data, PASSWORD), "OK");

    // Aliases are in force for SMTP at once (the console's code), and refused when foreign.
    let alias = sealpost_ok(
        &[
            "account",
            "alias-add",
            "omar@clinic.test",
            "front-desk@clinic.test",
            "--data",
            &arg,
        ],
        "",
    );
    assert!(
        alias.contains("front-desk@clinic.test now reaches omar@clinic.test"),
        "{alias}"
    );
    let foreign = sealpost(
        &[
            "account",
            "alias-add",
            "omar@clinic.test",
            "x@elsewhere.test",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(foreign.status.code(), Some(1));
    let mut smtp = std::net::TcpStream::connect(("127.0.0.1", data.port_base + 25)).unwrap();
    smtp.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(smtp.try_clone().unwrap());
    let mut say = |line: &str| -> String {
        use std::io::Write;
        if !line.is_empty() {
            smtp.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        }
        let mut reply = String::new();
        loop {
            let mut one = String::new();
            reader.read_line(&mut one).unwrap();
            reply.push_str(&one);
            if one.len() < 4 || one.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    };
    assert!(say("").starts_with("220"));
    assert!(say("EHLO partner.test").starts_with("250"));
    assert!(say("MAIL FROM:<someone@partner.test>").starts_with("250"));
    let rcpt = say("RCPT TO:<front-desk@clinic.test>");
    assert!(rcpt.starts_with("250"), "{rcpt}");
    say("QUIT");

    // Every page's command answers from the running server.
    let health = sealpost_ok(&["health", "--data", &arg], "");
    assert!(health.starts_with("server: running"), "{health}");
    assert!(
        health.contains("days left") && health.contains("queue 0 waiting"),
        "{health}"
    );
    let shown = sealpost_ok(&["account", "show", "omar@clinic.test", "--data", &arg], "");
    assert!(
        shown.contains("aliases         front-desk@clinic.test"),
        "{shown}"
    );
    let tried = sealpost_ok(
        &["policy", "try", "--text", "SSN 123-45-6789", "--data", &arg],
        "",
    );
    assert!(tried.contains("matches: portal"), "{tried}");
    let trace = sealpost(&["trace", "--sender", "nina", "--data", &arg], "");
    assert!(trace.status.success());
    let key = sealpost(&["key", "rotate", "--data", &arg], "");
    assert!(
        !key.status.success(),
        "the master key is not rotated under a running server"
    );

    // The audit log names the command line, through the socket, as the actor.
    let found = sealpost_ok(
        &[
            "audit",
            "search",
            "--action",
            "account.disable",
            "--data",
            &arg,
        ],
        "",
    );
    let record: serde_json::Value = serde_json::from_str(found.lines().next().unwrap()).unwrap();
    // The actor is named from the socket's peer credentials (this test runs as some user
    // whose passwd name the kernel's uid gives), not from what the client claims.
    let uid = rustix::process::geteuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let name = sealpost_control::user_of_uid(&passwd, uid);
    assert_eq!(
        record["actor"].as_str().unwrap(),
        format!("cli:{name}"),
        "{record}"
    );
    assert!(
        record["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("control socket, uid {uid}, says ")),
        "{record}"
    );
    let csv = sealpost_ok(
        &[
            "audit",
            "export",
            "--format",
            "csv",
            "--action",
            "policy.change",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(csv.lines().count(), 2, "a header and the one change: {csv}");

    // A second factor required from now on: a mail client's account password no longer opens
    // mail (an app password does), at once.
    let strict = sealpost_ok(&["policy", "show", "--data", &arg], "").replace(
        "second_factor_required = false",
        "second_factor_required = true",
    );
    let saved = sealpost_ok(&["policy", "set", "--data", &arg], &strict);
    assert_eq!(saved.trim(), "saved as version 2; in force from now on");
    let refused = imap_login(&data, PASSWORD);
    assert!(refused.contains("app password"), "{refused}");

    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    assert!(!socket.exists(), "the socket goes with the server");
    // Without the server the same commands open the store themselves.
    let offline = sealpost_ok(&["policy", "history", "--data", &arg], "");
    assert_eq!(offline.lines().count(), 2);
    let lockouts = sealpost(&["lockout", "list", "--data", &arg], "");
    assert!(String::from_utf8_lossy(&lockouts.stderr).contains("not running"));
}

/// Every message of nina's INBOX as JSON lines: subject and the whole message (base64).
const INBOX_DUMP: &str = "import base64, email, imaplib, json, os, ssl\n\
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
m = imaplib.IMAP4_SSL('localhost', int(os.environ['BASE']) + 993, ssl_context=ctx)\n\
m.login('nina@clinic.test', os.environ['PASSWORD'])\n\
m.select('INBOX', readonly=True)\n\
for num in m.search(None, 'ALL')[1][0].split():\n\
\x20   raw = m.fetch(num, '(BODY.PEEK[])')[1][0][1]\n\
\x20   subject = email.message_from_bytes(raw)['Subject']\n\
\x20   print(json.dumps({'subject': subject, 'raw': base64.b64encode(raw).decode()}))\n";

#[test]
fn a_backup_taken_under_load_restores_every_acknowledged_message_and_the_audit_chain() {
    use std::io::BufRead;
    const PASSWORD: &str = "copper willow brisk anthem";
    let data = DataDir::init("clinic.test");
    data.add_accounts(&["nina@clinic.test"], PASSWORD);
    let arg = data.arg();
    let identity = data.path().join("keys/backup.key");
    assert_eq!(
        mode(&identity),
        0o600,
        "init makes the backup identity private"
    );
    let config = std::fs::read_to_string(data.path().join("sealpost.toml")).unwrap();
    assert!(config.contains("recipient = \"age1"), "{config}");
    let mut server = data.serve();

    // A load of APPENDs and submissions; the backup is taken in the middle of it.
    let stop = data.dir.path().join("stop-load");
    let mut load = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scripts/backup_load.py"
        ))
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("PASSWORD", PASSWORD)
        .env("STOP", &stop)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::io::BufReader::new(load.stdout.take().unwrap());
    let (sender, received) = std::sync::mpsc::channel::<serde_json::Value>();
    let collector = std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let _ = sender.send(serde_json::from_str(&line).unwrap());
        }
    });
    let mut acked = Vec::new();
    let started = std::time::Instant::now();
    // At least 40 acknowledged, and both kinds among them: on a loaded machine the APPENDs
    // can reach 40 before the first submission's TLS and AUTH are done.
    let both_kinds = |acked: &[serde_json::Value]| {
        acked.iter().any(|a| a["kind"] == "append") && acked.iter().any(|a| a["kind"] == "smtp")
    };
    while (acked.len() < 40 || !both_kinds(&acked)) && started.elapsed() < Duration::from_secs(30) {
        if let Ok(line) = received.recv_timeout(Duration::from_secs(1)) {
            acked.push(line);
        }
    }
    assert!(
        acked.len() >= 40 && both_kinds(&acked),
        "the load did not get going: {acked:?}"
    );
    let snapshot_began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let file = data.dir.path().join("nightly.backup");
    let file_arg = file.to_str().unwrap().to_string();
    let taken = sealpost(&["backup", "--data", &arg, "--to", &file_arg], "");
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert!(
        String::from_utf8_lossy(&taken.stderr).starts_with("backup of "),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    // The load goes on a little after the snapshot, then stops.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"").unwrap();
    assert!(load.wait().unwrap().success());
    collector.join().unwrap();
    acked.extend(received.try_iter());
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let before: Vec<&serde_json::Value> = acked
        .iter()
        .filter(|a| a["acked_at"].as_f64().is_some_and(|t| t < snapshot_began))
        .collect();
    let after = acked
        .iter()
        .filter(|a| a["acked_at"].as_f64().is_some_and(|t| t > snapshot_began))
        .count();
    assert!(
        before.iter().any(|a| a["kind"] == "append") && before.iter().any(|a| a["kind"] == "smtp"),
        "both kinds of load before the snapshot"
    );
    assert!(after > 0, "the load ran past the snapshot's start");

    // Nothing of the mail, the account or the keys is readable in the file.
    let bytes = std::fs::read(&file).unwrap();
    for marker in [
        &b"backup-load"[..],
        b"nina@clinic.test",
        b"PRIVATE KEY",
        b"clinic.test",
        b"SQLite",
        b"rocksdb",
    ] {
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{} in the backup file",
            String::from_utf8_lossy(marker)
        );
    }
    let verified = sealpost_ok(
        &[
            "backup",
            "verify",
            &file_arg,
            "--identity",
            identity.to_str().unwrap(),
        ],
        "",
    );
    assert!(verified.starts_with("backup intact: "), "{verified}");

    // A wrong identity, a damaged file and a file cut short are refused.
    let stranger = data.dir.path().join("stranger.key");
    let other = DataDir::init("other.test");
    std::fs::copy(other.path().join("keys/backup.key"), &stranger).unwrap();
    let wrong = sealpost(
        &[
            "backup",
            "verify",
            &file_arg,
            "--identity",
            stranger.to_str().unwrap(),
        ],
        "",
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("cannot decrypt"));
    for (name, damaged) in [
        ("flipped.backup", {
            let mut b = bytes.clone();
            let at = b.len() / 2;
            b[at] ^= 0x40;
            b
        }),
        ("short.backup", bytes[..bytes.len() * 3 / 4].to_vec()),
    ] {
        let path = data.dir.path().join(name);
        std::fs::write(&path, damaged).unwrap();
        let refused = sealpost(
            &[
                "backup",
                "verify",
                path.to_str().unwrap(),
                "--identity",
                identity.to_str().unwrap(),
            ],
            "",
        );
        assert!(!refused.status.success(), "{name} verified");
    }
    let full = data.dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("something"), b"x").unwrap();
    let refused = sealpost(
        &[
            "restore",
            &file_arg,
            "--identity",
            identity.to_str().unwrap(),
            "--data",
            full.to_str().unwrap(),
        ],
        "",
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));

    // Restored into a new folder: ready to serve, the audit chain whole, and every message
    // acknowledged before the snapshot began is there, byte for byte.
    let restored = data.dir.path().join("restored");
    let out = sealpost_ok(
        &[
            "restore",
            &file_arg,
            "--identity",
            identity.to_str().unwrap(),
            "--data",
            restored.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.contains("audit chain intact"), "{out}");
    assert_eq!(mode(&restored.join("keys/master.key")), 0o600);
    assert!(
        !restored.join("keys/backup.key").exists(),
        "the backup identity is not in the backup"
    );
    let restored_arg = restored.to_str().unwrap().to_string();
    let mut again = Server::start(&["serve", "--data", &restored_arg]);
    assert!(
        again.wait_for("sealpost is running", Duration::from_secs(30)),
        "{:?}",
        again.seen
    );
    let dump = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(INBOX_DUMP)
        .env("CAFILE", restored.join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert_eq!(again.terminate(Duration::from_secs(20)), Some(true));
    use base64::Engine as _;
    let decode = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let inbox: std::collections::HashMap<String, Vec<u8>> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["subject"].as_str().unwrap().to_string(),
                decode(&v["raw"]),
            )
        })
        .collect();
    for sent in &before {
        let subject = sent["subject"].as_str().unwrap();
        let raw = decode(&sent["raw"]);
        let stored = inbox.get(subject).unwrap_or_else(|| {
            panic!("{subject}, acknowledged before the snapshot, is not restored")
        });
        if sent["kind"] == "append" {
            assert_eq!(stored, &raw, "{subject} differs");
        } else {
            assert!(
                stored.ends_with(&raw),
                "{subject} differs (beyond the trace fields added on receipt)"
            );
        }
    }
    let verified = sealpost_ok(&["audit", "verify", "--data", &restored_arg], "");
    assert!(verified.starts_with("audit chain intact"), "{verified}");
    let audit = sealpost_ok(
        &[
            "audit",
            "search",
            "--action",
            "backup.create",
            "--data",
            &restored_arg,
        ],
        "",
    );
    assert!(
        audit.is_empty(),
        "the backup's own record comes after its snapshot"
    );
    let audit = sealpost_ok(
        &[
            "audit",
            "search",
            "--action",
            "backup.create",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(audit.lines().count(), 1, "{audit}");
}

/// Appends nina's (and omar's) test messages over IMAPS, then as nina expunges one and deletes
/// a folder; prints each appended message as a JSON line (owner, subject, base64 bytes).
const HOLD_SCRIPT: &str = "import base64, imaplib, json, os, ssl, time\n\
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
def session(user):\n\
\x20   m = imaplib.IMAP4_SSL('localhost', int(os.environ['BASE']) + 993, ssl_context=ctx)\n\
\x20   m.login(user, os.environ['PASSWORD'])\n\
\x20   return m\n\
def put(m, user, folder, subject, days_old):\n\
\x20   raw = (f'From: {user}\\r\\nTo: counsel@partner.test\\r\\nSubject: {subject}\\r\\nMessage-ID: <{subject.replace(\" \", \".\")}@clinic.test>\\r\\n\\r\\nFacts of {subject}.\\r\\n').encode()\n\
\x20   typ, _ = m.append(folder, None, imaplib.Time2Internaldate(time.time() - days_old * 86400), raw)\n\
\x20   assert typ == 'OK'\n\
\x20   print(json.dumps({'owner': user, 'subject': subject, 'raw': base64.b64encode(raw).decode()}))\n\
nina = session('nina@clinic.test')\n\
nina.create('Casefiles')\n\
put(nina, 'nina@clinic.test', 'INBOX', 'held old inbox', 100)\n\
put(nina, 'nina@clinic.test', 'Casefiles', 'held old case', 100)\n\
put(nina, 'nina@clinic.test', 'Casefiles', 'held new case', 1)\n\
omar = session('omar@clinic.test')\n\
put(omar, 'omar@clinic.test', 'INBOX', 'free old inbox', 100)\n\
nina.select('INBOX')\n\
nina.store('1', '+FLAGS', '\\\\Deleted')\n\
assert nina.expunge()[0] == 'OK'\n\
assert nina.select('INBOX')[1][0] == b'0'\n\
nina.select('Casefiles')\n\
nina.close()\n\
assert nina.delete('Casefiles')[0] == 'OK'\n\
assert not any(b'Casefiles' in l for l in nina.list()[1])\n";

#[test]
fn a_held_accounts_mail_survives_every_path_and_comes_out_of_an_ediscovery_export_byte_identical() {
    use base64::Engine as _;
    use std::io::Read;
    const PASSWORD: &str = "copper willow brisk anthem";
    let data = DataDir::init("clinic.test");
    data.add_accounts(&["nina@clinic.test", "omar@clinic.test"], PASSWORD);
    let arg = data.arg();
    let mut server = data.serve();
    assert_eq!(
        sealpost_ok(
            &[
                "hold",
                "open",
                "Case 17",
                "--reason",
                "litigation",
                "--data",
                &arg
            ],
            ""
        )
        .trim(),
        "hold 1 opened"
    );
    sealpost_ok(
        &["hold", "add", "1", "nina@clinic.test", "--data", &arg],
        "",
    );
    // Everything goes after 30 days, by the policy.
    let policy =
        sealpost_ok(&["policy", "show", "--data", &arg], "").replace("retention = []\n", "");
    let policy = format!("{policy}\n[[retention]]\nname = \"month\"\nmax_age_days = 30\n");
    sealpost_ok(&["policy", "set", "--data", &arg], &policy);
    assert!(sealpost_ok(&["retention", "rules", "--data", &arg], "").contains("name = \"month\""));

    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(HOLD_SCRIPT)
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decode = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let appended: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(appended.len(), 4);

    // The sweeper takes omar's old message and nothing of nina's.
    let dry = sealpost(&["retention", "run", "--dry-run", "--data", &arg], "");
    assert!(String::from_utf8_lossy(&dry.stderr).contains("1 messages would be destroyed"));
    let swept = sealpost(&["retention", "run", "--data", &arg], "");
    let swept_out = String::from_utf8_lossy(&swept.stdout);
    assert!(
        swept_out.starts_with("destroyed  omar@clinic.test  INBOX") && !swept_out.contains("nina"),
        "{swept_out}"
    );
    // Deleting the held account is refused, clearly.
    let refused = sealpost(
        &[
            "account",
            "delete",
            "nina@clinic.test",
            "--yes",
            "--data",
            &arg,
        ],
        "",
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("legal hold"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // eDiscovery: counted, then exported encrypted, byte-identical to what was appended.
    let found = sealpost(&["ediscovery", "search", "--held-only", "--data", &arg], "");
    assert_eq!(
        String::from_utf8_lossy(&found.stderr).trim(),
        "3 messages match"
    );
    let narrowed = sealpost(
        &[
            "ediscovery",
            "search",
            "--subject",
            "old case",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(
        String::from_utf8_lossy(&narrowed.stderr).trim(),
        "1 messages match"
    );
    let config = std::fs::read_to_string(data.path().join("sealpost.toml")).unwrap();
    let recipient = config
        .lines()
        .find_map(|l| l.strip_prefix("recipient = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let file = data.dir.path().join("case17.zip.age");
    let exported = sealpost(
        &[
            "ediscovery",
            "export",
            "--held-only",
            "--format",
            "eml",
            "--encrypt-to",
            &recipient,
            "--to",
            file.to_str().unwrap(),
            "--data",
            &arg,
        ],
        "",
    );
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let sealed = std::fs::read(&file).unwrap();
    assert!(
        !sealed.windows(4).any(|w| w == b"held"),
        "the export is encrypted"
    );
    let key = std::fs::read_to_string(data.path().join("keys/backup.key")).unwrap();
    let identity: age::x25519::Identity = key
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .parse()
        .unwrap();
    let mut zip = Vec::new();
    age::Decryptor::new_buffered(sealed.as_slice())
        .unwrap()
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut zip)
        .unwrap();
    let zip_path = data.dir.path().join("case17.zip");
    std::fs::write(&zip_path, &zip).unwrap();
    let listing = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import base64, json, sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             assert z.testzip() is None\n\
             for n in z.namelist():\n\
             \x20   print(json.dumps({'name': n, 'raw': base64.b64encode(z.read(n)).decode()}))\n",
        )
        .arg(&zip_path)
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let files: std::collections::BTreeMap<String, Vec<u8>> =
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["name"].as_str().unwrap().to_string(), decode(&v["raw"]))
            })
            .collect();
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["messages"], 3);
    let emls: Vec<&Vec<u8>> = files
        .iter()
        .filter(|(n, _)| n.ends_with(".eml"))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(emls.len(), 3);
    for sent in appended.iter().filter(|a| a["owner"] == "nina@clinic.test") {
        let raw = decode(&sent["raw"]);
        assert!(
            emls.contains(&&raw),
            "{} is not in the export byte for byte",
            sent["subject"]
        );
        use sha2::Digest as _;
        let sha: String = sha2::Sha256::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            manifest["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["sha256"] == sha.as_str()),
            "the manifest lacks {}",
            sent["subject"]
        );
    }
    // The same result as one mbox (mboxrd), in a zip with its manifest.
    let mbox_file = data.dir.path().join("case17-mbox.zip.age");
    sealpost_ok(
        &[
            "ediscovery",
            "export",
            "--held-only",
            "--format",
            "mbox",
            "--encrypt-to",
            &recipient,
            "--to",
            mbox_file.to_str().unwrap(),
            "--data",
            &arg,
        ],
        "",
    );
    let mut mbox_zip = Vec::new();
    age::Decryptor::new_buffered(std::fs::read(&mbox_file).unwrap().as_slice())
        .unwrap()
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut mbox_zip)
        .unwrap();
    let mbox_zip_path = data.dir.path().join("case17-mbox.zip");
    std::fs::write(&mbox_zip_path, &mbox_zip).unwrap();
    let mbox = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import mailbox, sys, tempfile, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             assert z.testzip() is None and sorted(z.namelist()) == ['manifest.json', 'messages.mbox']\n\
             f = tempfile.NamedTemporaryFile(delete=False)\n\
             f.write(z.read('messages.mbox')); f.close()\n\
             for m in mailbox.mbox(f.name):\n\
             \x20   print(m['Subject'])\n",
        )
        .arg(&mbox_zip_path)
        .output()
        .unwrap();
    assert!(
        mbox.status.success(),
        "{}",
        String::from_utf8_lossy(&mbox.stderr)
    );
    let mut subjects: Vec<String> = String::from_utf8_lossy(&mbox.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["held new case", "held old case", "held old inbox"]
    );
    let audit = sealpost_ok(
        &[
            "audit",
            "search",
            "--action",
            "ediscovery.export",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(audit.lines().count(), 2, "{audit}");
    assert!(audit.contains("3 messages"), "{audit}");

    // Released: the expunged and deleted messages go at the next sweep; the new one stays kept
    // until... no rule keeps it, so it goes too, as its owner removed it.
    sealpost_ok(&["hold", "release", "1", "--data", &arg], "");
    let swept = sealpost(&["retention", "run", "--data", &arg], "");
    assert!(
        String::from_utf8_lossy(&swept.stderr).contains("3 messages destroyed"),
        "{}",
        String::from_utf8_lossy(&swept.stderr)
    );
    sealpost_ok(
        &[
            "account",
            "delete",
            "nina@clinic.test",
            "--yes",
            "--data",
            &arg,
        ],
        "",
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

#[test]
fn scheduled_backups_come_at_their_interval_and_only_the_newest_are_kept() {
    let data = DataDir::init("clinic.test");
    data.add_accounts(&["nina@clinic.test"], "copper willow brisk anthem");
    data.configure(|config| {
        assert!(config.contains("interval_ms = 86400000"), "{config}");
        config
            .replace("interval_ms = 86400000", "interval_ms = 400")
            .replace("keep = 7", "keep = 2")
    });
    let mut server = data.serve();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server
        .seen
        .iter()
        .filter(|l| l.contains("scheduled backup written"))
        .count()
        < 4
    {
        assert!(std::time::Instant::now() < deadline, "{:?}", server.seen);
        server.wait_for("no such line", Duration::from_millis(200));
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let folder = data.path().join("backups");
    assert_eq!(mode(&folder), 0o700);
    let mut kept: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "backup"))
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let identity = data.path().join("keys/backup.key");
    let verified = sealpost_ok(
        &[
            "backup",
            "verify",
            kept[1].to_str().unwrap(),
            "--identity",
            identity.to_str().unwrap(),
        ],
        "",
    );
    assert!(verified.starts_with("backup intact"), "{verified}");
    let audited = sealpost_ok(
        &[
            "audit",
            "search",
            "--action",
            "backup.create",
            "--data",
            &data.arg(),
        ],
        "",
    );
    assert!(audited.lines().count() >= 4, "{audited}");
}

#[test]
fn doctor_passes_a_fresh_install_and_names_what_is_wrong_with_a_broken_one() {
    let data = DataDir::init("clinic.test");
    let dns = common::start_dns_for(&[], &["clinic.test"]);
    data.configure(|config| common::with_dns_port(config, dns.port));
    let arg = data.arg();
    let healthy = sealpost(&["doctor", "--data", &arg], "");
    let said = String::from_utf8_lossy(&healthy.stdout).to_string();
    assert!(healthy.status.success(), "{said}");
    assert!(!said.contains("FAIL"), "{said}");
    for line in [
        "ok    configuration",
        "ok    master key",
        "ok    certificate valid for",
        "ok    TLS key",
        "ok    imaps port",
        "warn  the backup identity",
        "warn  DNS clinic.test MX is missing",
    ] {
        assert!(
            said.lines().any(|l| l.starts_with(line)),
            "no {line:?} in\n{said}"
        );
    }

    // With the server running: its ports answer, and it checks the DNS records itself.
    let mut server = data.serve();
    let running = sealpost(&["doctor", "--data", &arg], "");
    let said = String::from_utf8_lossy(&running.stdout).to_string();
    assert!(running.status.success(), "{said}");
    for line in [
        "ok    the server is running",
        "ok    imaps answers on",
        "warn  DNS clinic.test MX missing",
    ] {
        assert!(
            said.lines().any(|l| l.starts_with(line)),
            "no {line:?} in\n{said}"
        );
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));

    // Broken: a master key others can read, and an expired certificate.
    let key = data.path().join("keys/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mail.clinic.test".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(90);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let signing = rcgen::KeyPair::generate().unwrap();
    std::fs::write(
        data.path().join("tls/cert.pem"),
        params.self_signed(&signing).unwrap().pem(),
    )
    .unwrap();
    let broken = sealpost(&["doctor", "--data", &arg], "");
    let said = String::from_utf8_lossy(&broken.stdout).to_string();
    assert_eq!(broken.status.code(), Some(1), "{said}");
    assert!(
        said.lines().any(|l| l.starts_with("FAIL  master key")
            && l.contains("mode 644")
            && l.contains("chmod 600")),
        "{said}"
    );
    assert!(
        said.lines()
            .any(|l| l.starts_with("FAIL  certificate") && l.contains("EXPIRED")),
        "{said}"
    );
    assert!(
        said.trim_end().ends_with("to look at") && said.contains("to fix"),
        "{said}"
    );
}

#[test]
fn every_subcommand_has_help_text() {
    // `sealpost --help` lists the commands; each, and each of theirs, explains itself.
    let top = sealpost_ok(&["--help"], "");
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    for expected in [
        "init",
        "demo",
        "serve",
        "account",
        "lockout",
        "policy",
        "audit",
        "queue",
        "trace",
        "health",
        "dns",
        "pickup",
        "retention",
        "hold",
        "ediscovery",
        "quarantine",
        "certificate",
        "backup",
        "key",
        "doctor",
        "restore",
        "import",
    ] {
        assert!(
            commands.iter().any(|c| c == expected),
            "{expected} missing from --help:\n{top}"
        );
    }
    let mut checked = 0;
    for command in &commands {
        let text = sealpost_ok(&[command, "--help"], "");
        assert!(
            text.lines().next().is_some_and(|l| !l.trim().is_empty()),
            "{command} has no description"
        );
        for sub in text
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
        {
            let help = sealpost_ok(&[command, sub, "--help"], "");
            assert!(help.contains("Usage:"), "{command} {sub}");
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} subcommands");
}
