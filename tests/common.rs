//! Helpers for end-to-end tests: run the built `sealpost` binary, start a server in a data
//! folder of its own on free loopback ports, and stop it. Included by each test file.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `sealpost` binary cargo built for these tests.
pub fn sealpost_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sealpost"))
}

/// Runs `sealpost ARGS` to completion, with `stdin` as standard input.
pub fn sealpost(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(sealpost_binary())
        .args(args)
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
    child.wait_with_output().unwrap()
}

/// Runs `sealpost ARGS`, asserts success, and returns standard output.
pub fn sealpost_ok(args: &[&str], stdin: &str) -> String {
    let output = sealpost(args, stdin);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "sealpost {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// A port base N such that N+25, N+143, N+443, N+465, N+587 and N+993 are free on loopback
/// right now. Bounded: tries at most 200 bases.
pub fn free_port_base() -> u16 {
    let offsets = [25u16, 143, 443, 465, 587, 993];
    // Tests in one process run at once: each call starts from a different point.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for attempt in 0..200u16 {
        let seed = (std::process::id() as u16)
            .wrapping_mul(31)
            .wrapping_add(call.wrapping_mul(7919))
            .wrapping_add(attempt.wrapping_mul(1009));
        let base = 20_000 + seed % 40_000;
        let free = offsets
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port base found on loopback");
}

/// A data folder made by `sealpost init`, on free ports.
pub struct DataDir {
    pub dir: tempfile::TempDir,
    pub port_base: u16,
}

impl DataDir {
    pub fn init(domain: &str) -> Self {
        Self::init_with(domain, &[])
    }

    /// `sealpost init` with extra arguments.
    pub fn init_with(domain: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port_base = free_port_base();
        let data = dir.path().join("data");
        let base = port_base.to_string();
        let mut args = vec![
            "init",
            "--data",
            data.to_str().unwrap(),
            "--domain",
            domain,
            "--port-base",
            &base,
        ];
        args.extend_from_slice(extra);
        sealpost_ok(&args, "");
        let made = Self { dir, port_base };
        // These folders serve the protocol tests, whose clients sign in with the account
        // password; app passwords and second factors are tested with the default policy
        // (`tests/cli.rs`'s demo test, `crates/auth`).
        made.configure(|config| {
            assert!(config.contains("second_factor_required = true"), "{config}");
            config.replace(
                "second_factor_required = true",
                "second_factor_required = false",
            )
        });
        made
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn arg(&self) -> String {
        self.path().to_str().unwrap().to_string()
    }

    /// Adds each account with the same password.
    pub fn add_accounts(&self, addresses: &[&str], password: &str) {
        for address in addresses {
            sealpost_ok(
                &[
                    "account",
                    "add",
                    address,
                    "--password-stdin",
                    "--allow-weak-password",
                    "--data",
                    &self.arg(),
                ],
                &format!("{password}\n"),
            );
        }
    }

    /// Rewrites `sealpost.toml` through `edit`.
    pub fn configure(&self, edit: impl FnOnce(&str) -> String) {
        let path = self.path().join("sealpost.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(&config)).unwrap();
    }

    /// Sets keys of `sealpost.toml`, each named `section.key`; each must be in the file
    /// `init` wrote (a misspelt key fails here, not silently).
    pub fn set(&self, settings: &[(&str, &str)]) {
        let path = self.path().join("sealpost.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut file: toml::Table = toml::from_str(&text).unwrap();
        for (name, value) in settings {
            let (section, key) = name.split_once('.').unwrap();
            let table = file
                .get_mut(section)
                .and_then(toml::Value::as_table_mut)
                .unwrap_or_else(|| panic!("no [{section}] in sealpost.toml:\n{text}"));
            assert!(
                table.contains_key(key),
                "{name} is not in sealpost.toml:\n{text}"
            );
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .unwrap()
                .remove("v")
                .unwrap();
            table.insert(key.to_string(), value);
        }
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    }

    /// Starts `sealpost serve` on this folder and waits until it runs.
    pub fn serve(&self) -> Server {
        let mut server = Server::start(&["serve", "--data", &self.arg()]);
        assert!(
            server.wait_for("sealpost is running", Duration::from_secs(30)),
            "{:?}",
            server.seen
        );
        server
    }
}

/// A running `sealpost serve` (or `demo`); stopped with SIGTERM when dropped.
pub struct Server {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Server {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(sealpost_binary())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until some output line contains `needle`, for at most `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> Option<bool> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Collect what it printed while stopping.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return Some(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// dnsmasq answering on a loopback port from the records given; killed when dropped.
pub struct Dns {
    child: Child,
    pub port: u16,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_udp_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for the DNS server");
}

pub fn start_dns(records: &[(&str, String)]) -> Dns {
    start_dns_for(records, &["test"])
}

/// As `start_dns`, authoritative (NXDOMAIN for unknown names) for each of `zones`.
pub fn start_dns_for(records: &[(&str, String)], zones: &[&str]) -> Dns {
    start_dns_with(records, zones, &[])
}

/// As `start_dns_for`, with more dnsmasq options (`--mx-host=`, `--host-record=`). A port
/// taken between choosing and binding it (other tests make connections from ephemeral ports)
/// makes dnsmasq exit: then it starts again on another, at most five times.
pub fn start_dns_with(records: &[(&str, String)], zones: &[&str], options: &[String]) -> Dns {
    for _ in 0..5 {
        let port = free_udp_port();
        let mut command = Command::new("dnsmasq");
        command.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            &format!("--port={port}"),
            "--log-facility=-",
        ]);
        // Authoritative for the zones: NXDOMAIN for every other name in them (DMARC's tree
        // walk asks for _dmarc.test), where a forwarder without upstreams would answer with
        // an error.
        for zone in zones {
            command.arg(format!("--local=/{zone}/"));
        }
        command.args(options);
        for (name, text) in records {
            // On the command line quotes would be part of the text; a comma would split it.
            assert!(!text.contains(','), "{text}");
            command.arg(format!("--txt-record={name},{text}"));
        }
        let mut dns = Dns {
            child: command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            port,
        };
        // Ready when it answers over TCP; dropped (and killed) if it never does.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return dns;
            }
            if let Ok(Some(_)) = dns.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("dnsmasq did not start");
}

/// A receiving server; killed when dropped.
pub struct Receiver {
    child: Child,
    pub dir: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    pub fn start(ip: &str, port: u16, dir: &std::path::Path, args: &[&str]) -> Receiver {
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/scripts/smtp_receiver.py"
            ))
            .args([ip, &port.to_string()])
            .arg(dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "receiver on {ip}:{port} did not start"
        );
        Receiver {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// (envelope JSON, message) of every message received.
    pub fn received(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut out = Vec::new();
        for n in 1.. {
            let Ok(envelope) = std::fs::read_to_string(self.dir.join(format!("{n}.json"))) else {
                break;
            };
            let message = std::fs::read(self.dir.join(format!("{n}.eml"))).unwrap();
            out.push((serde_json::from_str(&envelope).unwrap(), message));
        }
        out
    }
}

pub fn free_port_on(ips: &[&str]) -> u16 {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on every receiver address");
}

/// dnsmasq options for MX records: (domain, MX host, its address).
pub fn mx_records(records: &[(&str, &str, &str)]) -> Vec<String> {
    records
        .iter()
        .flat_map(|(domain, mx, ip)| {
            [
                format!("--mx-host={domain},{mx},10"),
                format!("--host-record={mx},{ip}"),
            ]
        })
        .collect()
}

/// The configuration with its DNS server moved to `port`.
pub fn with_dns_port(config: &str, port: u16) -> String {
    config
        .lines()
        .map(|line| {
            if line.starts_with("dns_servers = ") {
                format!("dns_servers = [\"127.0.0.1:{port}\"]")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

pub fn browser_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/browser"))
}

/// playwright-core from the lock file, once (`npm ci`; the registry is reachable, the
/// browser is Debian's).
pub fn ensure_playwright() {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `tests/browser/SCRIPT` in node against the server of `data`, with BASE and ARTIFACTS
/// set and `vars`; its report lines, once it succeeded (else the test fails with its output
/// and the server's last log lines).
pub fn run_browser(
    script: &str,
    data: &DataDir,
    server: &Server,
    vars: &[(&str, &std::ffi::OsStr)],
) -> String {
    let mut command = Command::new("node");
    command
        .arg(browser_dir().join(script))
        .env(
            "BASE",
            format!("https://localhost:{}", data.port_base + 443),
        )
        .env("ARTIFACTS", browser_dir().join("artifacts"));
    for (name, value) in vars {
        command.env(name, value);
    }
    let run = command.output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{said}\n{}\n{:?}",
        String::from_utf8_lossy(&run.stderr),
        server.seen.iter().rev().take(30).collect::<Vec<_>>()
    );
    said
}
