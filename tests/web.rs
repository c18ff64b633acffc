//! The web application against the real binary, in a real browser: Debian's chromium,
//! headless, driven by playwright-core (`tests/browser/identity.mjs`). Sign-in with password
//! and TOTP, a passkey registered with Chrome's virtual authenticator and then used alone,
//! recovery codes, an app password used from Python's imaplib and smtplib (where the account
//! password is refused), CSRF on every form, sign out everywhere against a copied cookie;
//! and the lockout, which triggers and lifts. Screenshots of each page go to
//! `tests/browser/artifacts/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::DataDir;

const PASSWORD: &str = "velvet kettle sonar magpie";

/// A helper process, killed when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A data folder with the default policy (a second factor required) and alice's account.
fn serve_with_second_factor_required() -> (DataDir, common::Server) {
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    data.configure(|config| {
        config.replace(
            "second_factor_required = false",
            "second_factor_required = true",
        )
    });
    data.add_accounts(&["alice@clinic.test"], PASSWORD);
    let server = data.serve();
    (data, server)
}

#[test]
fn sign_in_passkeys_totp_app_passwords_and_sessions_in_a_real_browser() {
    common::ensure_playwright();
    let (data, mut server) = serve_with_second_factor_required();
    let artifacts = common::browser_dir().join("artifacts");
    let said = common::run_browser(
        "identity.mjs",
        &data,
        &server,
        &[
            ("ADDRESS", std::ffi::OsStr::new("alice@clinic.test")),
            ("PASSWORD", std::ffi::OsStr::new(PASSWORD)),
        ],
    );
    let steps: Vec<serde_json::Value> = said
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
        "recovery-code-once",
        "confirmed-with-passkey",
        "decoy",
        "done",
    ] {
        step(name);
    }
    assert_eq!(step("recovery-codes")["count"], 10);
    for pair in step("csrf")["refused"].as_array().unwrap() {
        assert_eq!(pair[1], 403, "{pair} accepted a forged form");
    }
    assert!(
        std::fs::read_dir(&artifacts).unwrap().count() >= 10,
        "screenshots"
    );

    // The app password opens IMAP and SMTP; the account password opens neither.
    let app_password = step("app-password")["password"]
        .as_str()
        .unwrap()
        .to_string();
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
    let out = String::from_utf8_lossy(&logins.stdout).to_string()
        + &String::from_utf8_lossy(&logins.stderr);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["imap OK", "smtp 235", "imap refused", "smtp refused"],
        "{out}"
    );
    // An app password opens no web session.
    let web = web_sign_ins(&data, "alice@clinic.test", &[&app_password]);
    assert!(web.starts_with("401"), "{web}");
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

/// Runs Python against the web sign-in form: each (password) in turn, a fresh form each
/// time; prints the HTTP status of each and the text of the last page.
fn web_sign_ins(data: &DataDir, address: &str, passwords: &[&str]) -> String {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import http.cookiejar, json, os, re, ssl, urllib.parse, urllib.request\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             class NoRedirect(urllib.request.HTTPRedirectHandler):\n\
             \x20   def redirect_request(self, *a, **k):\n\
             \x20       return None\n\
             base = os.environ['BASE']\n\
             for password in json.loads(os.environ['PASSWORDS']):\n\
             \x20   jar = http.cookiejar.CookieJar()\n\
             \x20   web = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), urllib.request.HTTPCookieProcessor(jar), NoRedirect())\n\
             \x20   page = web.open(base + '/sign-in').read().decode()\n\
             \x20   token = re.search(r'name=\"csrf\" value=\"([^\"]+)\"', page).group(1)\n\
             \x20   form = urllib.parse.urlencode({'csrf': token, 'address': os.environ['ADDRESS'], 'password': password}).encode()\n\
             \x20   try:\n\
             \x20       answer = web.open(base + '/sign-in', form)\n\
             \x20       status, text = answer.status, answer.read().decode()\n\
             \x20   except urllib.error.HTTPError as e:\n\
             \x20       status, text = e.code, e.read().decode()\n\
             \x20   print(status)\n\
             print(re.sub(r'<[^>]+>', ' ', text))\n",
        )
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", format!("https://localhost:{}", data.port_base + 443))
        .env("ADDRESS", address)
        .env("PASSWORDS", serde_json::to_string(passwords).unwrap())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// An IMAP login with imaplib: "OK" or the refusal's text.
fn imap_login(data: &DataDir, address: &str, password: &str) -> String {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, ssl, os\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             m = imaplib.IMAP4_SSL('localhost', int(os.environ['PORT']), ssl_context=ctx)\n\
             try:\n\
             \x20   print(m.login(os.environ['ADDRESS'], os.environ['PASSWORD'])[0])\n\
             except imaplib.IMAP4.error as e:\n\
             \x20   print(e)\n",
        )
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("PORT", (data.port_base + 993).to_string())
        .env("ADDRESS", address)
        .env("PASSWORD", password)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn failed_sign_ins_lock_the_account_on_the_web_and_imap_until_an_admin_lifts_it() {
    common::ensure_playwright();
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    // The account password opens IMAP here (no second factor required), so that IMAP shows
    // the lockout the web's failures caused.
    data.set(&[("auth.failures_per_account_max", "3")]);
    data.add_accounts(&["alice@clinic.test"], PASSWORD);
    common::sealpost_ok(
        &[
            "account",
            "add",
            "root@clinic.test",
            "--role",
            "admin",
            "--password-stdin",
            "--data",
            &data.arg(),
        ],
        "harbor lantern quiet meadow\n",
    );
    let mut server = data.serve();
    assert_eq!(imap_login(&data, "alice@clinic.test", PASSWORD), "OK");

    let tried = web_sign_ins(
        &data,
        "alice@clinic.test",
        &["wrong one", "wrong two", "wrong three", PASSWORD],
    );
    let lines: Vec<&str> = tried.lines().collect();
    assert_eq!(lines[..4], ["401", "401", "401", "429"], "{tried}");
    assert!(
        tried.contains("Too many failed sign-ins for this account"),
        "{tried}"
    );
    // The same lockout holds on IMAP, with the right password.
    let refused = imap_login(&data, "alice@clinic.test", PASSWORD);
    assert!(
        refused.contains("UNAVAILABLE") && refused.contains("too many failed"),
        "{refused}"
    );

    let said = common::run_browser(
        "admin.mjs",
        &data,
        &server,
        &[
            ("ADDRESS", std::ffi::OsStr::new("root@clinic.test")),
            (
                "PASSWORD",
                std::ffi::OsStr::new("harbor lantern quiet meadow"),
            ),
            ("LOCKED", std::ffi::OsStr::new("alice@clinic.test")),
        ],
    );
    assert!(said.contains("\"lifted\""), "{said}");

    // Lifted: the web and IMAP take alice's password again.
    let again = web_sign_ins(&data, "alice@clinic.test", &[PASSWORD]);
    assert!(again.starts_with("303"), "{again}");
    assert_eq!(imap_login(&data, "alice@clinic.test", PASSWORD), "OK");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let exported = common::sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    assert!(
        exported
            .lines()
            .any(|l| l.contains("auth.lockout.lift") && l.contains("alice@clinic.test")),
        "the lift is not audited"
    );
}

#[test]
fn reading_mail_on_the_web_marks_it_read_and_downloads_the_attachment_intact() {
    common::ensure_playwright();
    // The account password signs in here (no second factor required), as the protocol
    // tests' folders do.
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    data.add_accounts(&["alice@clinic.test", "bob@clinic.test"], PASSWORD);
    // Branding: the organisation's name and logo on every page.
    std::fs::write(
        data.path().join("logo.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"40\"><circle cx=\"20\" cy=\"20\" r=\"18\" fill=\"teal\"/></svg>",
    )
    .unwrap();
    data.configure(|config| {
        assert!(
            config.contains("organisation = \"\"") && config.contains("logo = \"\""),
            "{config}"
        );
        config
            .replace("organisation = \"\"", "organisation = \"Lakeside Clinic\"")
            .replace("logo = \"\"", "logo = \"logo.svg\"")
    });
    let mut server = data.serve();
    let work = tempfile::tempdir().unwrap();
    let attachment = work.path().join("befund.pdf");
    let bytes: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&attachment, &bytes).unwrap();
    let sent = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import os, smtplib, ssl\n\
             from email.message import EmailMessage\n\
             m = EmailMessage()\n\
             m['From'] = 'bob@clinic.test'\n\
             m['To'] = 'alice@clinic.test'\n\
             m['Subject'] = 'Blutwerte für Frau Müller'\n\
             m.set_content('Die Werte sind im Anhang.\\nGruß, Bob')\n\
             m.add_attachment(open(os.environ['FILE'], 'rb').read(), maintype='application', subtype='pdf', filename='befund.pdf')\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             s = smtplib.SMTP_SSL('localhost', int(os.environ['PORT']), context=ctx)\n\
             s.login('bob@clinic.test', os.environ['PASSWORD'])\n\
             s.send_message(m)\n\
             s.quit()\n",
        )
        .env("FILE", &attachment)
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("PORT", (data.port_base + 465).to_string())
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // An HTML message whose script, image, style and link all point at a server of the test's
    // own, which logs every connection it gets (plain HTTP or a TLS attempt, as a browser
    // upgrading mixed content would make): it must get none.
    let watcher_port = common::free_udp_port();
    let log = work.path().join("requests.log");
    let watcher = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import os, socketserver\n\
             log = open(os.environ['LOG'], 'a')\n\
             class H(socketserver.BaseRequestHandler):\n\
             \x20   def handle(self):\n\
             \x20       first = self.request.recv(4096)\n\
             \x20       line = 'tls' if first[:1] == b'\\x16' else first.split(b'\\r\\n')[0].decode('latin-1')\n\
             \x20       log.write(line + '\\n'); log.flush()\n\
             \x20       self.request.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n')\n\
             socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
             socketserver.ThreadingTCPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
        )
        .env("LOG", &log)
        .env("PORT", watcher_port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _watcher = Killed(watcher);
    std::fs::write(&log, "").unwrap();
    let remote = format!("http://127.0.0.1:{watcher_port}");
    let html = format!(
        "<p>Hello <b>bold</b></p><script>document.body.insertAdjacentHTML('beforeend','<p id=ran>ran</p>');\
         fetch('{remote}/script')</script><img src=\"{remote}/pixel.png\">\
         <div style=\"background-image: url({remote}/css)\">styled</div>\
         <link rel=stylesheet href=\"{remote}/sheet.css\"><iframe src=\"{remote}/frame\"></iframe>"
    );
    let sent = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import base64, os, smtplib, ssl\n\
             from email.message import EmailMessage\n\
             m = EmailMessage()\n\
             m['From'] = 'bob@clinic.test'\n\
             m['To'] = 'alice@clinic.test'\n\
             m['Subject'] = 'Newsletter'\n\
             m.set_content('Hello bold (text version)')\n\
             m.add_alternative(os.environ['HTML'] + '<img id=own src=\"cid:logo@clinic\">', subtype='html')\n\
             png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')\n\
             m.get_payload()[1].add_related(png, 'image', 'png', cid='<logo@clinic>')\n\
             ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
             s = smtplib.SMTP_SSL('localhost', int(os.environ['PORT']), context=ctx)\n\
             s.login('bob@clinic.test', os.environ['PASSWORD'])\n\
             s.send_message(m)\n\
             s.quit()\n",
        )
        .env("HTML", &html)
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("PORT", (data.port_base + 465).to_string())
        .env("PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // The watcher answers before the browser looks (else "no request" would prove nothing).
    let probe = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg("import os, time, urllib.request\nfor _ in range(50):\n    try:\n        urllib.request.urlopen(os.environ['URL']); break\n    except Exception:\n        time.sleep(0.1)\n")
        .env("URL", format!("{remote}/probe"))
        .output()
        .unwrap();
    assert!(probe.status.success());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "GET /probe HTTP/1.1\n",
        "the watcher logs requests"
    );
    std::fs::write(&log, "").unwrap();
    let said = common::run_browser(
        "mail.mjs",
        &data,
        &server,
        &[
            ("HTML_SUBJECT", std::ffi::OsStr::new("Newsletter")),
            ("ADDRESS", std::ffi::OsStr::new("alice@clinic.test")),
            ("PASSWORD", std::ffi::OsStr::new(PASSWORD)),
            ("SUBJECT", std::ffi::OsStr::new("Blutwerte für Frau Müller")),
            ("TEXT", std::ffi::OsStr::new("Die Werte sind im Anhang.")),
            ("ATTACHMENT", std::ffi::OsStr::new(&attachment)),
        ],
    );
    assert!(said.contains("\"filename\":\"befund.pdf\""), "{said}");
    assert!(said.contains("\"step\":\"html\""), "{said}");
    let requests = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        requests, "",
        "the HTML message made the browser fetch remote content"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let exported = common::sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    assert!(
        exported
            .lines()
            .any(|l| l.contains("message.read") && l.contains("web attachment 0")),
        "the download is not audited"
    );
    assert!(
        exported
            .lines()
            .any(|l| l.contains("message.read") && l.contains("web formatted")),
        "the formatted view is not audited"
    );
    // The folder list shows subjects and senders: every page shown is a read, with its UIDs.
    assert!(
        exported.lines().any(|l| l.contains("message.read")
            && l.contains("web folder list, page 1")
            && l.contains("uids:")),
        "the folder list is not audited"
    );
}

/// Runs a Python snippet with the test's CA, ports and password in its environment; its
/// standard output.
fn python(data: &DataDir, code: &str, vars: &[(&str, &str)]) -> String {
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg("-c")
        .arg(code)
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("BASE", data.port_base.to_string())
        .env("PASSWORD", PASSWORD);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Every message of a folder of doc@clinic.test, as (subject, whole message) JSON lines.
const IMAP_FOLDER: &str = "import imaplib, json, os, ssl, email, email.policy\n\
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
m = imaplib.IMAP4_SSL('localhost', int(os.environ['BASE']) + 993, ssl_context=ctx)\n\
m.login('doc@clinic.test', os.environ['PASSWORD'])\n\
m.select(os.environ['FOLDER'], readonly=True)\n\
for num in m.search(None, 'ALL')[1][0].split():\n\
\x20   raw = m.fetch(num, '(BODY.PEEK[])')[1][0][1]\n\
\x20   msg = email.message_from_bytes(raw, policy=email.policy.default)\n\
\x20   files = {p.get_filename(): p.get_content().hex() if isinstance(p.get_content(), bytes) else p.get_content().encode().hex() for p in msg.iter_attachments()}\n\
\x20   body = msg.get_body(('plain',))\n\
\x20   print(json.dumps({'subject': msg['Subject'], 'from': msg['From'], 'text': body.get_content() if body else '', 'files': files, 'raw': raw.decode('latin-1')}))\n";

fn imap_folder(data: &DataDir, folder: &str) -> Vec<serde_json::Value> {
    python(data, IMAP_FOLDER, &[("FOLDER", folder)])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A data folder for clinic.test whose outbound mail finds `patient.test` at a receiving
/// server without TLS (its MX, through dnsmasq on loopback): the pickup portal's case.
fn clinic_with_patients(work: &std::path::Path) -> (DataDir, common::Dns, common::Receiver) {
    let ip = "127.0.0.61";
    let port = common::free_port_on(&[ip]);
    let sink = common::Receiver::start(ip, port, &work.join("sink"), &[]);
    let dns = common::start_dns_with(
        &[],
        &["test"],
        // clinic.test's own MX is published (the health page finds it), nothing else of it.
        &common::mx_records(&[
            ("patient.test", "mx.patient.test", ip),
            ("clinic.test", "localhost", "127.0.0.1"),
        ]),
    );
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    data.configure(|config| {
        let config = common::with_dns_port(config, dns.port);
        assert!(
            config.contains("port = 25\n") && config.contains("message_bytes_max = 67108864"),
            "{config}"
        );
        config
            .replace("port = 25\n", &format!("port = {port}\n"))
            .replace("organisation = \"\"", "organisation = \"Lakeside Clinic\"")
            // Uploads and messages up to 2 MiB: a test file can exceed it.
            .replace(
                "message_bytes_max = 67108864",
                "message_bytes_max = 2097152",
            )
    });
    data.add_accounts(&["doc@clinic.test"], PASSWORD);
    (data, dns, sink)
}

#[test]
fn a_clinician_sends_to_a_patient_through_the_portal_and_gets_the_reply() {
    common::ensure_playwright();
    let work = tempfile::tempdir().unwrap();
    let (data, _dns, sink) = clinic_with_patients(work.path());
    let mut server = data.serve();
    let attachment = work.path().join("laborbefund.pdf");
    let bytes: Vec<u8> = (0..90_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&attachment, &bytes).unwrap();
    let big_file = work.path().join("scan.tiff");
    std::fs::write(&big_file, vec![7u8; 3 * 1024 * 1024]).unwrap();
    let reply_file = work.path().join("blood-pressure-log.txt");
    std::fs::write(&reply_file, "Mon 128/82\nTue 131/85\n").unwrap();
    let (subject, secret, reply_text) = (
        "Lab results SUBJECTMARKER",
        "Your HbA1c is 6.1 BODYMARKER",
        "Thank you, doctor REPLYMARKER",
    );
    let sink_dir = work.path().join("sink");
    let said = common::run_browser(
        "portal.mjs",
        &data,
        &server,
        &[
            ("DOC", std::ffi::OsStr::new("doc@clinic.test")),
            ("PASSWORD", std::ffi::OsStr::new(PASSWORD)),
            ("PATIENT", std::ffi::OsStr::new("pat@patient.test")),
            ("OTHER", std::ffi::OsStr::new("sam@patient.test")),
            ("SINK", sink_dir.as_os_str()),
            ("SUBJECT", std::ffi::OsStr::new(subject)),
            ("SECRET", std::ffi::OsStr::new(secret)),
            ("ATTACHMENT", std::ffi::OsStr::new(&attachment)),
            ("REPLY_TEXT", std::ffi::OsStr::new(reply_text)),
            ("REPLY_FILE", std::ffi::OsStr::new(&reply_file)),
            (
                "PORTAL_PASSWORD",
                std::ffi::OsStr::new("lantern orchard pebble nineteen"),
            ),
            ("BIG_FILE", std::ffi::OsStr::new(&big_file)),
        ],
    );
    for step in [
        "sent",
        "notices",
        "downloaded",
        "replied",
        "password-visit",
        "other-opened",
        "forbidden",
        "withdrawn",
        "draft",
        "too-big",
        "phone",
        "reply-forms",
        "done",
    ] {
        assert!(
            said.contains(&format!("\"step\":\"{step}\"")),
            "no {step}: {said}"
        );
    }
    assert!(said.contains("\"filename\":\"laborbefund.pdf\""), "{said}");

    // The patients' server got notices and codes only: nothing of the message, in plaintext.
    let received = sink.received();
    assert_eq!(received.len(), 4, "two notices and two codes");
    for (envelope, message) in &received {
        assert_eq!(envelope["tls"], false);
        let text = String::from_utf8_lossy(message);
        for marker in ["SUBJECTMARKER", "BODYMARKER", "laborbefund", "HbA1c"] {
            assert!(!text.contains(marker), "{marker} left in plaintext: {text}");
        }
    }

    // The reply is in the clinician's INBOX and BACKUP, over IMAP, with the patient's file.
    let inbox = imap_folder(&data, "INBOX");
    let reply = inbox
        .iter()
        .find(|m| m["subject"] == format!("Re: {subject}"))
        .unwrap_or_else(|| panic!("no reply in INBOX: {inbox:?}"));
    assert_eq!(reply["from"], "pat@patient.test");
    assert!(
        reply["text"].as_str().unwrap().contains(reply_text),
        "{reply}"
    );
    assert_eq!(
        reply["files"]["blood-pressure-log.txt"],
        hex(b"Mon 128/82\nTue 131/85\n"),
        "{reply}"
    );
    let backup = imap_folder(&data, "BACKUP");
    assert!(
        backup
            .iter()
            .any(|m| m["subject"] == format!("Re: {subject}")),
        "no reply in BACKUP"
    );
    // The sent message is in Sent and BACKUP with its attachment, and Bcc-free.
    let sent = imap_folder(&data, "Sent");
    let original = sent
        .iter()
        .find(|m| m["subject"] == subject)
        .unwrap_or_else(|| panic!("not in Sent: {sent:?}"));
    assert_eq!(original["files"]["laborbefund.pdf"], hex(&bytes));
    assert!(
        !sent.iter().any(|m| m["subject"] == "Too big"),
        "the oversized message was sent"
    );
    // The draft, once sent to the clinician's own address, is in INBOX and Sent, not Drafts.
    let subject_is = |m: &serde_json::Value| m["subject"] == "Draft for the ward round";
    assert!(
        imap_folder(&data, "Drafts").iter().all(|m| !subject_is(m)),
        "still in Drafts"
    );
    let draft = inbox
        .iter()
        .find(|m| subject_is(m))
        .expect("the sent draft is not in INBOX");
    assert!(
        draft["text"]
            .as_str()
            .unwrap()
            .contains("first words, then more"),
        "{draft}"
    );
    assert!(sent.iter().any(subject_is), "the sent draft is not in Sent");
    // The forward carried the patient's file.
    let forwarded = inbox
        .iter()
        .find(|m| m["subject"] == format!("Fwd: Re: {subject}"))
        .expect("the forward is not in INBOX");
    assert_eq!(
        forwarded["files"]["blood-pressure-log.txt"],
        hex(b"Mon 128/82\nTue 131/85\n"),
        "{forwarded}"
    );
    assert!(
        backup.iter().any(|m| m["subject"] == subject),
        "the sent message is not in BACKUP"
    );
    assert!(
        !backup
            .iter()
            .any(|m| m["raw"].as_str().unwrap().contains("Your code:")),
        "a code is in BACKUP"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let exported = common::sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    for action in [
        "message.submit",
        "pickup.create",
        "portal.code.send",
        "portal.code.verify",
        "pickup.read",
        "pickup.reply",
        "pickup.revoke",
        "portal.password.set",
        "portal.sign_in",
    ] {
        assert!(exported.contains(action), "no {action} in the audit log");
    }
    assert!(
        exported
            .lines()
            .any(|l| l.contains("pickup.read") && l.contains("portal attachment 0")),
        "the download is not audited"
    );
    assert!(
        exported
            .lines()
            .any(|l| l.contains("portal.code.verify") && l.contains("denied")),
        "the wrong code is not audited"
    );
}

#[test]
fn an_expired_pickup_link_says_so_and_asks_the_sender_for_a_new_one() {
    common::ensure_playwright();
    let work = tempfile::tempdir().unwrap();
    let (data, _dns, sink) = clinic_with_patients(work.path());
    data.configure(|config| {
        assert!(config.contains("pickup_ttl_ms = "), "{config}");
        config
            .lines()
            .map(|l| {
                if l.starts_with("pickup_ttl_ms = ") {
                    "pickup_ttl_ms = 1500".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    let mut server = data.serve();
    python(
        &data,
        "import os, smtplib, ssl\n\
         ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
         s = smtplib.SMTP_SSL('localhost', int(os.environ['BASE']) + 465, context=ctx)\n\
         s.login('doc@clinic.test', os.environ['PASSWORD'])\n\
         s.sendmail('doc@clinic.test', ['pat@patient.test'], b'From: doc@clinic.test\\r\\nTo: pat@patient.test\\r\\nSubject: Results\\r\\n\\r\\nSee you.\\r\\n')\n\
         s.quit()\n",
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let link = loop {
        let found = sink.received().iter().find_map(|(_, message)| {
            let text = String::from_utf8_lossy(message).to_string();
            text.split_whitespace()
                .find(|w| w.contains("/pickup/"))
                .map(str::to_string)
        });
        if let Some(link) = found {
            break link;
        }
        assert!(std::time::Instant::now() < deadline, "no notice arrived");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(2000));
    let sink_dir = work.path().join("sink");
    let said = common::run_browser(
        "portal.mjs",
        &data,
        &server,
        &[
            ("MODE", std::ffi::OsStr::new("expired")),
            ("LINK", std::ffi::OsStr::new(&link)),
            ("SINK", sink_dir.as_os_str()),
        ],
    );
    assert!(said.contains("\"step\":\"expired\""), "{said}");
    // The sender got the request in INBOX.
    let inbox = imap_folder(&data, "INBOX");
    assert!(
        inbox
            .iter()
            .any(|m| m["subject"] == "pat@patient.test asks for a new secure link"),
        "{inbox:?}"
    );
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_admin_creates_an_account_with_an_enrolment_link_and_disabling_it_ends_its_imap_session() {
    common::ensure_playwright();
    let work = tempfile::tempdir().unwrap();
    // patient.test's server is gone: mail to it waits in the queue.
    let (data, _dns, sink) = clinic_with_patients(work.path());
    drop(sink);
    common::sealpost_ok(
        &[
            "account",
            "add",
            "root@clinic.test",
            "--role",
            "admin",
            "--password-stdin",
            "--data",
            &data.arg(),
        ],
        "harbor lantern quiet meadow\n",
    );
    common::sealpost_ok(
        &[
            "account",
            "add",
            "audra@clinic.test",
            "--role",
            "auditor",
            "--password-stdin",
            "--data",
            &data.arg(),
        ],
        "harbor lantern quiet meadow\n",
    );
    let mut server = data.serve();
    python(
        &data,
        "import os, smtplib, ssl\n\
         ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
         s = smtplib.SMTP_SSL('localhost', int(os.environ['BASE']) + 465, context=ctx)\n\
         s.login('doc@clinic.test', os.environ['PASSWORD'])\n\
         s.sendmail('doc@clinic.test', ['pat@patient.test'], b'From: doc@clinic.test\\r\\nTo: pat@patient.test\\r\\nSubject: Biopsy STUCKSUBJECT\\r\\nMessage-ID: <trace-me-41@clinic.test>\\r\\n\\r\\nHello STUCKBODY.\\r\\n')\n\
         s.quit()\n",
        &[],
    );
    let cafile = data.path().join("tls/cert.pem");
    let imap_port = (data.port_base + 993).to_string();
    let submission_port = (data.port_base + 465).to_string();
    let said = common::run_browser(
        "admin.mjs",
        &data,
        &server,
        &[
            ("MODE", std::ffi::OsStr::new("accounts")),
            ("ADDRESS", std::ffi::OsStr::new("root@clinic.test")),
            (
                "PASSWORD",
                std::ffi::OsStr::new("harbor lantern quiet meadow"),
            ),
            ("NEW_ADDRESS", std::ffi::OsStr::new("nina@clinic.test")),
            (
                "NEW_PASSWORD",
                std::ffi::OsStr::new("copper willow brisk anthem"),
            ),
            ("CAFILE", cafile.as_os_str()),
            ("IMAP_PORT", std::ffi::OsStr::new(&imap_port)),
            ("STUCK_TO", std::ffi::OsStr::new("pat@patient.test")),
            ("STUCK_SUBJECT", std::ffi::OsStr::new("STUCKSUBJECT")),
            ("STUCK_BODY", std::ffi::OsStr::new("STUCKBODY")),
            ("TRACE_ID", std::ffi::OsStr::new("trace-me-41")),
            ("AUDITOR", std::ffi::OsStr::new("audra@clinic.test")),
            ("DOC", std::ffi::OsStr::new("doc@clinic.test")),
            ("DOC_PASSWORD", std::ffi::OsStr::new(PASSWORD)),
            ("SUBMISSION_PORT", std::ffi::OsStr::new(&submission_port)),
            ("RECIPIENT", std::ffi::OsStr::new(&backup_recipient(&data))),
        ],
    );
    for step in [
        "admin-passkey",
        "created",
        "enrolled",
        "disabled",
        "deleted",
        "queue",
        "no-mail-for-admins",
        "csrf",
        "audit",
        "auditor",
        "policy",
        "health",
        "aliases",
        "quota",
        "discovery",
        "quarantine-pages",
    ] {
        assert!(
            said.contains(&format!("\"step\":\"{step}\"")),
            "no {step}: {said}"
        );
    }
    // The export the browser downloaded opens with the backup identity: a zip holding doc's
    // held message and a manifest.
    let zip = decrypt_with_backup_key(
        &data,
        &common::browser_dir().join("artifacts/ediscovery.zip.age"),
    );
    assert!(zip.starts_with(b"PK\x03\x04"), "not a zip");
    assert!(
        zip.windows(9).any(|w| w == b"STUCKBODY"),
        "the held message is not in the export"
    );
    assert!(zip.windows(13).any(|w| w == b"manifest.json"));
    // Deleted: the account password opens nothing any more.
    let refused = imap_login(&data, "nina@clinic.test", "copper willow brisk anthem");
    assert!(refused.contains("AUTHENTICATIONFAILED"), "{refused}");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    // The saved policy is still in force after a restart.
    let mut server = data.serve();
    let after_restart = python(
        &data,
        "import os, smtplib, ssl\n\
         ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
         s = smtplib.SMTP_SSL('localhost', int(os.environ['BASE']) + 465, context=ctx)\n\
         s.login('doc@clinic.test', os.environ['PASSWORD'])\n\
         try:\n\
         \x20   s.sendmail('doc@clinic.test', ['pat@patient.test'], b'Subject: x\\r\\nFrom: doc@clinic.test\\r\\n\\r\\nBLOCKWORD\\r\\n')\n\
         \x20   print('sent')\n\
         except smtplib.SMTPDataError as e:\n\
         \x20   print('refused', e.smtp_code)\n",
        &[],
    );
    assert_eq!(after_restart.trim(), "refused 550");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    let exported = common::sealpost_ok(&["audit", "export", "--data", &data.arg()], "");
    // (actor, action): the admin's changes and the owner's enrolment, each by its actor.
    for (actor, action) in [
        ("root@clinic.test", "account.create"),
        ("root@clinic.test", "auth.enrolment_link.issue"),
        ("nina@clinic.test", "auth.enrolment_link.use"),
        ("nina@clinic.test", "account.password"),
        ("root@clinic.test", "account.disable"),
        ("root@clinic.test", "auth.session.end_all"),
        ("root@clinic.test", "account.delete"),
        ("root@clinic.test", "queue.retry"),
        ("root@clinic.test", "queue.delete"),
        ("root@clinic.test", "audit.search"),
        ("root@clinic.test", "audit.export"),
        ("root@clinic.test", "audit.verify"),
        ("root@clinic.test", "policy.change"),
        ("root@clinic.test", "alias.add"),
        ("root@clinic.test", "alias.remove"),
        ("root@clinic.test", "account.quota"),
    ] {
        assert!(
            exported
                .lines()
                .any(|l| l.contains(action) && l.contains(actor)),
            "no {action} by {actor} in the audit log"
        );
    }
}

#[test]
fn metrics_are_served_in_prometheus_text_to_the_configured_networks_only() {
    let data = DataDir::init_with("clinic.test", &["--hostname", "localhost"]);
    data.configure(|config| {
        assert!(
            config.contains("metrics_from = [\"127.0.0.1\", \"::1\"]"),
            "{config}"
        );
        config.to_string()
    });
    data.add_accounts(&["alice@clinic.test"], PASSWORD);
    let mut server = data.serve();
    assert_eq!(imap_login(&data, "alice@clinic.test", PASSWORD), "OK");
    python(
        &data,
        "import os, smtplib, ssl\n\
         ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
         s = smtplib.SMTP_SSL('localhost', int(os.environ['BASE']) + 465, context=ctx)\n\
         s.login('alice@clinic.test', os.environ['PASSWORD'])\n\
         s.sendmail('alice@clinic.test', ['alice@clinic.test'], b'Subject: hi\\r\\nFrom: alice@clinic.test\\r\\n\\r\\nhi\\r\\n')\n\
         s.quit()\n",
        &[],
    );
    // From 127.0.0.1 (configured) and from 127.0.0.7 (not): the status and the text.
    let fetched = python(
        &data,
        "import http.client, os, ssl\n\
         ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])\n\
         for source in ('127.0.0.1', '127.0.0.7'):\n\
         \x20   c = http.client.HTTPSConnection('localhost', int(os.environ['BASE']) + 443, context=ctx, source_address=(source, 0), timeout=20)\n\
         \x20   c.request('GET', '/metrics')\n\
         \x20   r = c.getresponse()\n\
         \x20   print('status', source, r.status)\n\
         \x20   if r.status == 200:\n\
         \x20       print(r.read().decode())\n",
        &[],
    );
    assert!(fetched.contains("status 127.0.0.1 200"), "{fetched}");
    assert!(fetched.contains("status 127.0.0.7 404"), "{fetched}");
    for line in [
        "sealpost_imap_commands_total{command=\"LOGIN\"} 1",
        "sealpost_imap_command_seconds_count{command=\"LOGIN\"} 1",
        "sealpost_imap_command_seconds_bucket{command=\"LOGIN\",le=\"+Inf\"} 1",
        "sealpost_smtp_messages_total{outcome=\"accepted\"} 1",
        "sealpost_smtp_messages_total{outcome=\"refused\"} 0",
        "sealpost_outbound_recipients_total{outcome=\"delivered\"} 0",
        "sealpost_queue_depth 0",
        "# TYPE sealpost_connections_total counter",
    ] {
        assert!(fetched.lines().any(|l| l == line), "no {line} in {fetched}");
    }
    // Connections: the IMAP and SMTP ones above, and this one on https.
    for listener in ["imaps", "submissions", "https"] {
        let prefix = format!("sealpost_connections_total{{listener=\"{listener}\"}} ");
        let count: u64 = fetched
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {fetched}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "{listener}: {count}");
    }
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
}

/// The age recipient of the data folder's backup identity (`[backup] recipient`).
fn backup_recipient(data: &DataDir) -> String {
    let config = std::fs::read_to_string(data.path().join("sealpost.toml")).unwrap();
    config
        .lines()
        .find_map(|l| l.strip_prefix("recipient = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

/// A file encrypted to the data folder's backup recipient, decrypted.
fn decrypt_with_backup_key(data: &DataDir, file: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let key = std::fs::read_to_string(data.path().join("keys/backup.key")).unwrap();
    let identity: age::x25519::Identity = key
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .parse()
        .unwrap();
    let sealed = std::fs::read(file).unwrap();
    let mut plain = Vec::new();
    age::Decryptor::new_buffered(sealed.as_slice())
        .unwrap()
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    plain
}
