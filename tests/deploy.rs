//! Deployment: certificates from an ACME CA (Debian's pebble on loopback, its own test CA for
//! its HTTPS, dnsmasq answering for the host name) obtained at start and renewed on demand,
//! swapped in while an IMAP session stays open; the systemd unit's hardening as
//! `systemd-analyze security` rates it; the Debian package built, installed on this machine,
//! its service started as the packaged user, and an IMAP login and an SMTP submission
//! against it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{sealpost, sealpost_ok, DataDir};

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SHA-256 of the certificate a TLS server at 127.0.0.1:`port` shows for `name`.
fn served_fingerprint(port: u16, name: &str) -> String {
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import hashlib, socket, ssl, sys\n\
             ctx = ssl.create_default_context()\n\
             ctx.check_hostname = False\n\
             ctx.verify_mode = ssl.CERT_NONE\n\
             with socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10) as raw:\n\
             \x20   with ctx.wrap_socket(raw, server_hostname=sys.argv[2]) as tls:\n\
             \x20       print(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())\n",
        )
        .args([port.to_string(), name.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// SHA-256 of the first certificate of a PEM file.
fn file_fingerprint(path: &std::path::Path) -> String {
    use sha2::Digest as _;
    let pem = std::fs::read(path).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    sha2::Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_certificate_comes_from_the_acme_ca_and_a_renewal_swaps_it_under_an_open_imap_session() {
    let data = DataDir::init("clinic.test");
    data.add_accounts(&["nina@clinic.test"], "copper willow brisk anthem");
    let work = data.dir.path().join("pebble");
    std::fs::create_dir_all(&work).unwrap();
    // Pebble's own HTTPS: a test CA and a certificate for 127.0.0.1 from it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sealpost test ACME directory CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
    std::fs::write(work.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(work.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(work.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    // DNS: the host name is this machine, for the CA's validation.
    let dns = common::start_dns_with(
        &[],
        &["clinic.test"],
        &["--address=/mail.clinic.test/127.0.0.1".to_string()],
    );
    let (directory_port, management_port) = (
        common::free_port_on(&["127.0.0.1"]),
        common::free_port_on(&["127.0.0.1"]),
    );
    let https_port = data.port_base + 443;
    std::fs::write(
        work.join("pebble.json"),
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{directory_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": work.join("cert.pem"), "privateKey": work.join("key.pem"),
            "httpPort": 5002, "tlsPort": https_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let mut pebble = Killed(
        Command::new("pebble")
            .args(["-config", work.join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{}", dns.port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", directory_port)).is_ok() {
            up = true;
            break;
        }
        assert!(pebble.0.try_wait().unwrap().is_none(), "pebble stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "pebble does not listen");
    data.configure(|config| {
        let blank = "[acme]\ndirectory = \"\"\ncontact = \"\"\nca_file = \"\"\n";
        assert!(config.contains(blank), "{config}");
        common::with_dns_port(config, dns.port).replace(
            blank,
            &format!(
                "[acme]\ndirectory = \"https://127.0.0.1:{directory_port}/dir\"\ncontact = \"mailto:it@clinic.test\"\nca_file = \"{}\"\n",
                work.join("ca.pem").display()
            ),
        )
    });
    let self_signed = file_fingerprint(&data.path().join("tls/cert.pem"));

    // At start the self-signed certificate is replaced by the CA's, on every listener.
    let mut server = data.serve();
    assert!(
        server.wait_for("certificate obtained and in force", Duration::from_secs(60)),
        "{:?}",
        server.seen
    );
    let issued = file_fingerprint(&data.path().join("tls/cert.pem"));
    assert_ne!(issued, self_signed);
    assert_eq!(served_fingerprint(https_port, "mail.clinic.test"), issued);
    assert_eq!(
        served_fingerprint(data.port_base + 993, "mail.clinic.test"),
        issued
    );
    let shown = sealpost_ok(&["certificate", "show", "--data", &data.arg()], "");
    assert!(shown.contains("Pebble"), "{shown}");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.path().join("tls/key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    // An IMAP session opened before the renewal goes on after it.
    let mut session = Killed(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(
                "import imaplib, os, ssl, sys\n\
                 ctx = ssl.create_default_context()\n\
                 ctx.check_hostname = False\n\
                 ctx.verify_mode = ssl.CERT_NONE\n\
                 m = imaplib.IMAP4_SSL('127.0.0.1', int(os.environ['PORT']), ssl_context=ctx)\n\
                 m.login('nina@clinic.test', 'copper willow brisk anthem')\n\
                 m.select('INBOX')\n\
                 print('open', flush=True)\n\
                 sys.stdin.readline()\n\
                 print(m.noop()[0], flush=True)\n",
            )
            .env("PORT", (data.port_base + 993).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(session.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "open");
    let renewed = sealpost(&["certificate", "renew", "--data", &data.arg()], "");
    assert!(
        renewed.status.success(),
        "{}",
        String::from_utf8_lossy(&renewed.stderr)
    );
    let again = file_fingerprint(&data.path().join("tls/cert.pem"));
    assert_ne!(again, issued, "the renewal brought a new certificate");
    assert_eq!(
        served_fingerprint(data.port_base + 993, "mail.clinic.test"),
        again
    );
    session.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "OK",
        "the open session was dropped"
    );
    let audit = sealpost_ok(
        &[
            "audit",
            "search",
            "--action",
            "certificate.issue",
            "--data",
            &data.arg(),
        ],
        "",
    );
    assert_eq!(audit.lines().count(), 2, "{audit}");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(true));
    drop(pebble);
}

#[test]
fn the_systemd_unit_is_rated_ok_or_better_by_systemd_analyze() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/sealpost.service");
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", unit])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    let verdict = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for sealpost.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| {
            panic!(
                "no rating in {said}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let mut words = verdict.split_whitespace();
    let level: f64 = words.next().unwrap().parse().unwrap();
    let rating = words.next().unwrap();
    assert!(matches!(rating, "OK" | "SAFE"), "rated {verdict}");
    assert!(level < 4.0, "exposure {level}");
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ReadWritePaths=/var/lib/sealpost",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "User=sealpost",
    ] {
        assert!(
            std::fs::read_to_string(unit)
                .unwrap()
                .lines()
                .any(|l| l == line),
            "{line}"
        );
    }
}

const DATA: &str = "/var/lib/sealpost";
const MARK: &str = "/var/lib/sealpost/.made-by-sealpost-tests";

/// Removes the package and the folder this test installed (and only that).
fn uninstall() {
    let _ = Command::new("dpkg").args(["--purge", "sealpost"]).output();
    if std::path::Path::new(MARK).exists() {
        std::fs::remove_dir_all(DATA).unwrap();
    }
}

#[test]
fn the_debian_package_installs_and_its_service_serves_imap_and_smtp() {
    assert!(
        !std::path::Path::new(DATA).exists() || std::path::Path::new(MARK).exists(),
        "{DATA} exists and was not made by this test: not touching it"
    );
    uninstall();
    let built = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/build-deb"
        ))
        .arg("--dev")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    assert!(
        deb.ends_with(".deb") && std::path::Path::new(&deb).exists(),
        "{deb}"
    );
    let contents = Command::new("dpkg-deb")
        .args(["--contents", &deb])
        .output()
        .unwrap();
    let contents = String::from_utf8_lossy(&contents.stdout);
    for path in [
        "./usr/bin/sealpost",
        "./lib/systemd/system/sealpost.service",
        "./usr/share/doc/sealpost/README.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }

    let base = common::free_port_base();
    let install = |deb: &str| {
        Command::new("dpkg")
            .args(["-i", deb])
            .env("SEALPOST_DOMAIN", "deb.test")
            .env("SEALPOST_HOSTNAME", "mail.deb.test")
            .env("SEALPOST_PORT_BASE", base.to_string())
            .output()
            .unwrap()
    };
    let installed = install(&deb);
    assert!(
        installed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&installed.stderr)
    );
    std::fs::write(MARK, b"").unwrap();
    let owner = |path: &str| {
        let out = Command::new("stat")
            .args(["-c", "%U %a", path])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(owner(DATA), "sealpost 750");
    assert_eq!(owner("/var/lib/sealpost/keys/master.key"), "sealpost 600");
    assert_eq!(
        std::fs::read_link("/etc/sealpost/sealpost.toml").unwrap(),
        std::path::PathBuf::from("/var/lib/sealpost/sealpost.toml")
    );
    // Installing again keeps the configuration and keys.
    let key_before = std::fs::read("/var/lib/sealpost/keys/master.key").unwrap();
    let config_before = std::fs::read("/var/lib/sealpost/sealpost.toml").unwrap();
    assert!(install(&deb).status.success());
    assert_eq!(
        std::fs::read("/var/lib/sealpost/keys/master.key").unwrap(),
        key_before
    );
    assert_eq!(
        std::fs::read("/var/lib/sealpost/sealpost.toml").unwrap(),
        config_before
    );

    // The service: under systemd where it runs, else as the packaged user.
    let systemd = std::path::Path::new("/run/systemd/system").exists();
    let _server = if systemd {
        None
    } else {
        // setpriv runs the server itself as the user (runuser would stay in between).
        Some(Killed(
            Command::new("setpriv")
                .args([
                    "--reuid=sealpost",
                    "--regid=sealpost",
                    "--init-groups",
                    "--",
                ])
                .args(["/usr/bin/sealpost", "serve", "--data", DATA])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    };
    let mut ready = false;
    for _ in 0..200 {
        if std::path::Path::new("/var/lib/sealpost/control.sock").exists()
            && std::net::TcpStream::connect(("127.0.0.1", base + 993)).is_ok()
        {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "the packaged service does not listen");
    let as_sealpost = |args: &[&str], stdin: &str| {
        let mut child = Command::new("runuser")
            .args(["-u", "sealpost", "--", "/usr/bin/sealpost"])
            .args(args)
            .args(["--data", DATA])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    as_sealpost(
        &[
            "account",
            "add",
            "nina@deb.test",
            "--password-stdin",
            "--allow-weak-password",
        ],
        "copper willow brisk anthem\n",
    );
    let issued = as_sealpost(
        &[
            "account",
            "app-password",
            "nina@deb.test",
            "--name",
            "package test",
        ],
        "",
    );
    let app_password = issued
        .lines()
        .next()
        .and_then(|l| l.rsplit(": ").next())
        .unwrap()
        .to_string();
    let client = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import imaplib, os, smtplib, ssl\n\
             ctx = ssl.create_default_context()\n\
             ctx.check_hostname = False\n\
             ctx.verify_mode = ssl.CERT_NONE\n\
             base = int(os.environ['BASE'])\n\
             m = imaplib.IMAP4_SSL('127.0.0.1', base + 993, ssl_context=ctx)\n\
             print('imap', m.login('nina@deb.test', os.environ['APP'])[0])\n\
             s = smtplib.SMTP_SSL('127.0.0.1', base + 465, context=ctx)\n\
             s.login('nina@deb.test', os.environ['APP'])\n\
             print('smtp', s.sendmail('nina@deb.test', ['nina@deb.test'], b'From: nina@deb.test\\r\\nTo: nina@deb.test\\r\\nSubject: from the package\\r\\n\\r\\nhello\\r\\n'))\n\
             m.select('INBOX')\n\
             print('inbox', m.search(None, 'SUBJECT', 'package')[1][0].decode())\n",
        )
        .env("BASE", base.to_string())
        .env("APP", &app_password)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(
        said.contains("imap OK") && said.contains("smtp {}") && said.contains("inbox 1"),
        "{said}"
    );
    if let Some(mut server) = _server {
        let _ = Command::new("kill")
            .args(["-TERM", &server.0.id().to_string()])
            .status();
        let stopped = server.0.wait().unwrap();
        assert!(
            stopped.success(),
            "the packaged server did not stop cleanly: {stopped}"
        );
    }
    uninstall();
    assert!(
        Command::new("getent")
            .args(["passwd", "sealpost"])
            .output()
            .unwrap()
            .stdout
            .is_empty(),
        "purging removes the user"
    );
}
